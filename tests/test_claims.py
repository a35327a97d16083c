"""The claims page (issue #15): verdicts from per-seed numbers, a page that regenerates byte for
byte from the results JSON, and the shipped docs/claims.md kept up to date."""

import json

import pytest

from recipes import claims


def experiment_json(rows):
    """A recipes.experiment results.json with these variants' per-seed accuracies."""
    return {
        "meta": {"model": "m", "dataset": "d", "epochs": 3, "batch_size": 8, "seeds": [0, 1, 2],
                 "optimizer": {"name": "sgd", "learning_rate": 0.1, "schedule": "cosine", "weight_decay": 1e-4,
                               "weight_decay_mode": "coupled"},
                 "backend": "jax", "device": "CPU", "date": "2026-12-03", "command": "python -m recipes.experiment x"},
        "rows": [{"variant": v, "accuracies": accs, "seeds": [{"seed": i, "test_accuracy": a} for i, a in enumerate(accs)]}
                 for v, accs in rows.items()],
    }


def test_compare_verdicts_follow_the_spread():
    assert claims.compare_verdict([0.90, 0.91, 0.92], [0.80, 0.81, 0.82])[0] == claims.REPRODUCED
    assert claims.compare_verdict([0.80, 0.81, 0.82], [0.90, 0.91, 0.92])[0] == claims.NOT_REPRODUCED
    # a mean difference of 0.01 against seeds that spread 0.05: cannot tell
    assert claims.compare_verdict([0.85, 0.90, 0.95], [0.84, 0.89, 0.94])[0] == claims.INCONCLUSIVE
    _, d, se = claims.compare_verdict([1.0, 3.0, 2.0], [0.0, 0.0, 0.0])
    assert d == pytest.approx(2.0) and se == pytest.approx(1 / 3**0.5)  # sample std 1, over sqrt(3)


def test_fewer_than_three_seeds_give_no_verdict():
    """One seed (the old README's tables) is a reading: far apart or not, it stays inconclusive."""
    assert claims.compare_verdict([0.82], [0.67])[0] == claims.INCONCLUSIVE
    assert claims.compare_verdict([0.90, 0.91], [0.80, 0.81])[0] == claims.INCONCLUSIVE
    assert claims.threshold_verdict([0.95, 0.97], ">=", 0.9) == claims.INCONCLUSIVE


def test_threshold_verdicts_need_every_seed():
    assert claims.threshold_verdict([0.95, 0.97, 0.96], ">=", 0.9) == claims.REPRODUCED
    assert claims.threshold_verdict([0.95, 0.85, 0.96], ">=", 0.9) == claims.INCONCLUSIVE
    assert claims.threshold_verdict([0.5, 0.6, 0.7], ">=", 0.9) == claims.NOT_REPRODUCED


def write(root, study, data):
    (root / study).mkdir(parents=True, exist_ok=True)
    (root / study / "results.json").write_text(json.dumps(data))


def test_page_from_results_is_deterministic_and_says_what_was_measured(tmp_path):
    write(tmp_path, "park_droppath_mlp", experiment_json({
        "plain": [0.80, 0.81, 0.80], "droppath_0.2": [0.82, 0.80, 0.81], "droppathfreeze_0.2": [0.86, 0.87, 0.86]}))
    write(tmp_path, "ra_converged", {
        "settings": {"width": 16, "depths": [2, 4], "train_size": 100, "lr": 1e-3, "epochs": 5, "batch": 8,
                     "seeds": [0, 1, 2], "backend": "jax", "target_loss": 0.001, "command": "python -m recipes.ra_study"},
        "results": [{"skip": s, "depth": d, "seed": seed, "train_loss": 0.001, "ra1_variance_share": share,
                     "ra2_within_unit": 0.9, "ra3_mean_rank": 4.0}
                    for s, share in (("identity", 0.95), ("none", 0.5)) for d in (2, 4) for seed in (0, 1, 2)],
        "ra4_slopes_per_seed": {"identity": {"0": -0.9, "1": -1.1, "2": -1.0}, "none": {"0": 0.1, "1": 0.2, "2": 0.1}},
    })
    table1 = experiment_json({"identity": [0.80, 0.82, 0.81], "conv1x1": [0.70, 0.72, 0.71]})
    for row, losses in zip(table1["rows"], ([0.5, 0.6, 0.7], [0.9, 1.0, 1.1])):
        for seed, loss in zip(row["seeds"], losses):
            seed["train_loss"] = loss
    write(tmp_path, "he_table1_cpu", table1)
    page = claims.render(tmp_path)
    assert page == claims.render(tmp_path)  # byte for byte
    # He Table 1's claims are about optimisation: the training loss stands beside the accuracy.
    assert "final training loss identity 0.6000 ± 0.1000 vs conv1x1 1.0000 ± 0.1000" in page
    assert "| [he-identity-vs-conv1x1](#he-identity-vs-conv1x1) | He et al. | **reproduced** |" in page
    assert "| [park-dpf-vs-droppath](#park-dpf-vs-droppath) | Park | **reproduced** |" in page
    assert "droppathfreeze_0.2 0.8633 ± 0.0058 (n=3) vs droppath_0.2 0.8100 ± 0.0100 (n=3)" in page
    for claim_id in ("ra1-line", "ra2-alignment", "ra3-rank", "ra4-depth", "ra-none-control"):
        assert f"| [{claim_id}](#{claim_id}) | Li & Papyan | **reproduced** |" in page
    assert "**not measured yet**" in page and "recipes/experiments/lechner_rnn_time.json" in page
    assert "no finished run of droppathfreeze_0.2_2x_epochs" in page  # a variant the results lack
    assert "coupled" in page and "python -m recipes.experiment x" in page
    out = tmp_path / "claims.md"
    assert claims.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    assert claims.main(["--results", str(tmp_path), "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert claims.main(["--results", str(tmp_path), "--out", str(out), "--check"]) == 1


def test_the_shipped_claims_page_is_what_the_shipped_results_give():
    assert claims.OUT.is_file(), "docs/claims.md is missing: run python -m recipes.claims"
    assert claims.OUT.read_text() == claims.render(), "docs/claims.md is stale: run python -m recipes.claims"
    page = claims.OUT.read_text()
    assert all(f"## {c['id']}" in page for c in claims.CLAIMS)
