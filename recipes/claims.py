"""docs/claims.md: each paper's claim, what the zoo measured, and a verdict, from results JSON.

    python -m recipes.claims                  # writes docs/claims.md from docs/results/*/results.json
    python -m recipes.claims --check          # exit 1 if docs/claims.md is not what the JSON gives

Nothing here trains: every number comes from a study's results.json (every seed's numbers and
the command that made them), so the page regenerates byte for byte.

Verdicts, from the per-seed numbers (n seeds, sample standard deviation):
- a comparison "A beats B" (accuracy): the difference of means d and its standard error
  se = sqrt(s_A^2 / n_A + s_B^2 / n_B). Reproduced when d > 2 se, not reproduced when d < -2 se
  (the opposite holds), inconclusive in between (the spread does not separate them).
- a property with a threshold (e.g. RA3: rank <= C): reproduced when every seed meets it, not
  reproduced when none does, inconclusive otherwise.
A verdict needs at least 3 seeds on every side (MIN_SEEDS): fewer give "inconclusive", whatever
the numbers. A claim whose study has not been run is listed as "not measured yet", with the command.
"""

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
OUT = ROOT / "docs" / "claims.md"

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED = "reproduced", "not reproduced", "inconclusive", "not measured yet"
MIN_SEEDS = 3  # fewer seeds make a reading, not a claim
FEW_SEEDS = f"; fewer than {MIN_SEEDS} seeds: a reading, not a verdict"

SOURCES = {
    "he": "He et al., \"Identity Mappings in Deep Residual Networks\", ECCV 2016, arXiv 1603.05027, Tables 1-2",
    "lechner": "Lechner et al., \"Entangled Residual Mappings\", arXiv 2206.01261, abstract",
    "park": "Park, \"ResidualDroppath: Enhancing Feature Reuse over Residual Connections\", arXiv 2411.09475",
    "li_papyan": "Li & Papyan, \"Residual Alignment\", NeurIPS 2023, arXiv 2401.09018, section 3",
    "zoo": "this zoo (issue #15: zoo.swap_skip with warmup_steps)",
    "zoo_finetune": "this zoo's former README (issue #8), one seed on 1000 images: \"fine-tuning beats scratch by 14.7 points\"",
    "question": "a question Li & Papyan leave open (issue #15), does RA hold with an entangled skip?",
}

# The command that (re)makes each study's docs/results/<study>/results.json: a recipes.experiment
# study by its name and the backend it runs on, the Residual Alignment studies by their options.
EXPERIMENT_BACKENDS = {
    "lechner_rnn_time": "jax", "park_droppath_mlp": "jax", "skip_swap_warmup": "jax", "lechner_cnn": "jax",
    "he_table1_cpu": "tensorflow", "he_table2_r20": "jax", "he_table2_r56": "tensorflow", "lechner_vit": "tensorflow",
    "park_droppath_resnet20": "jax", "finetune_cifar10_to_fmnist": "jax",
}
STUDY_COMMANDS = {
    **{study: f"KERAS_BACKEND={backend} python -m recipes.experiment recipes/experiments/{study}.json "
              f"--publish docs/results/{study}" for study, backend in EXPERIMENT_BACKENDS.items()},
    "ra_entangled": "KERAS_BACKEND=jax python -m recipes.ra_study --out docs/results/ra_entangled --seeds 0 1 2 "
                    "--skips orthogonal sparse correlation --depths 4 8 16 32 --train-size 1000 --epochs 300 "
                    "--target-loss 0.001",
    "ra_converged": "KERAS_BACKEND=jax python -m recipes.ra_study --out docs/results/ra_converged --seeds 0 1 2 "
                    "--skips identity none --depths 4 8 16 32 --train-size 1000 --epochs 300 --target-loss 0.001",
    "ra_converged_wd": "KERAS_BACKEND=jax python -m recipes.ra_study --out docs/results/ra_converged_wd --seeds 0 1 2 "
                       "--skips identity none --depths 4 8 16 32 --train-size 1000 --epochs 300 --weight-decay 0.0005",
}

# Each claim: the paper's statement, the study (a folder of docs/results) and the test.
#   compare: variant `a` has higher mean test accuracy than variant `b`
#   threshold: `metric` of `rows` (filter) compared with `value` (op "<=" or ">=") on every seed
#   slope: the per-seed RA4 log-log slope of `skip` lies in [low, high]
#   compare_rows: `metric` of rows `a` above rows `b` (per seed, deepest models)
#   compare_gain: the gain a[0] - a[1] above the gain b[0] - b[1] (accuracies paired by seed)
# `note`: what the measurement cannot show, printed with it.
VIT_NOTE = ("The ViT is vit_tiny_patch4_28 at half width (embed_dim 96, 0.53 M parameters) so that 24 runs fit "
            "the study budget, and it is far from converged: 256 AdamW steps leave every variant at training "
            "accuracy 0.69-0.73 (training loss 0.77-0.87). Every mapping ends within 1 point of identity, "
            "under both norms; a difference here is about how fast each starts to learn.")

CLAIMS = [
    *[dict(id=f"lechner-rnn-variant-T{t}", source="lechner", study="lechner_rnn_time",
           claim=f"In RNNs, orthogonal mappings help on time-variant sequences (T = {t} steps).",
           test="compare", a=f"time_variant_T{t}/orthogonal", b=f"time_variant_T{t}/identity",
           note="At T = 32 the identity recurrence trains poorly on both tasks (about 0.7): a large gain there "
                "may be trainability (orthogonal keeps the state's norm), not an inductive bias for time.")
      for t in (16, 32)],
    *[dict(id=f"lechner-rnn-invariant-T{t}", source="lechner", study="lechner_rnn_time",
           claim=f"... and they degrade performance on time-invariant sequences (T = {t} steps).",
           test="compare", a=f"time_invariant_T{t}/identity", b=f"time_invariant_T{t}/orthogonal")
      for t in (16, 32)],
    *[dict(id=f"lechner-rnn-bias-T{t}", source="lechner", study="lechner_rnn_time",
           claim=f"Orthogonal is an inductive bias for time-variance: its gain over identity is larger on the "
                 f"time-variant task than on the time-invariant one (T = {t} steps; same inputs, same model).",
           test="compare_gain", a=(f"time_variant_T{t}/orthogonal", f"time_variant_T{t}/identity"),
           b=(f"time_invariant_T{t}/orthogonal", f"time_invariant_T{t}/identity"))
      for t in (16, 32)],
    dict(id="park-dpf-vs-droppath", source="park",
         study="park_droppath_mlp",
         claim="Training with the ResidualDroppath iterations (droppath, then train the dropped parts and "
               "freeze the rest) improves on plain droppath training.",
         test="compare", a="droppathfreeze_0.2", b="droppath_0.2",
         note="Here every DropPathFreeze iteration (A or B) takes its own batch, so equal epochs are equal "
              "optimizer steps (optimizer_steps in results.json); both drop per batch, so only the B steps differ."),
    dict(id="park-dpf-equal-droppath-steps", source="park", study="park_droppath_mlp",
         claim="... also when DropPathFreeze gets as many droppath (A) steps as plain droppath takes in all "
               "(twice the epochs, so as many A steps plus as many B steps).",
         test="compare", a="droppathfreeze_0.2_2x_epochs", b="droppath_0.2"),
    dict(id="park-dpf-vs-plain", source="park", study="park_droppath_mlp",
         claim="... and on training without droppath.",
         test="compare", a="droppathfreeze_0.2", b="plain"),
    dict(id="zoo-swap-warmup-orthogonal", source="zoo", study="skip_swap_warmup",
         claim="Swapping a trained model's identity skip for orthogonal with a one-epoch warm-up (40 steps) "
               "fine-tunes to a higher test accuracy than swapping at once.",
         test="compare", a="orthogonal_warmup_40", b="orthogonal_at_once"),
    dict(id="zoo-swap-warmup-sparse", source="zoo", study="skip_swap_warmup",
         claim="... and for a sparse (k = 4) skip.",
         test="compare", a="sparse_warmup_40", b="sparse_at_once",
         note="Swapped at once, the sparse skip already fine-tunes to the accuracy of the identity kept "
              "(identity_kept in results.json): there is nothing for the warm-up to repair."),
    dict(id="lechner-cnn-sparse", source="lechner", study="lechner_cnn",
         claim="In CNNs, sparse skip mappings improve on identity.",
         test="compare", a="sparse", b="identity"),
    dict(id="lechner-cnn-orthogonal", source="lechner", study="lechner_cnn",
         claim="In CNNs, orthogonal skip mappings degrade performance against identity.",
         test="compare", a="identity", b="orthogonal",
         note="All four mappings (correlation too) end within 0.6 points of each other after 6 epochs on 4,000 "
              "images: at this scale the skip mapping makes no difference the seeds can resolve."),
    *[dict(id=f"lechner-vit-sparse-{norm}", source="lechner", study="lechner_vit",
           claim=f"In ViTs, sparse skip mappings improve on identity ({name}).",
           test="compare", a=f"{norm}_sparse", b=f"{norm}_identity", note=VIT_NOTE)
      for norm, name in (("layer", "LayerNorm, timm's ViT"), ("rms", "RMSNorm: the LayerNorm confound removed"))],
    *[dict(id=f"lechner-vit-orthogonal-{norm}", source="lechner", study="lechner_vit",
           claim=f"In ViTs, orthogonal skip mappings degrade performance against identity ({name}).",
           test="compare", a=f"{norm}_identity", b=f"{norm}_orthogonal", note=VIT_NOTE)
      for norm, name in (("layer", "LayerNorm"), ("rms", "RMSNorm"))],
    dict(id="finetune-beats-scratch", source="zoo_finetune", study="finetune_cifar10_to_fmnist",
         claim="Fine-tuning the CIFAR-10 ResNet on Fashion-MNIST beats training the same net from scratch.",
         test="compare", a="cifar10_identity", b="scratch_identity",
         note="Measured on ResNet-20 and 4,000 images, where the former claim had ResNet-56 and 1,000 images; "
              "the gap here is 6 points, not 14.7."),
    dict(id="finetune-survives-a-swap", source="zoo", study="finetune_cifar10_to_fmnist",
         claim="The pretrained model with its skip swapped for orthogonal (40-step warm-up) still beats an "
               "orthogonal-skip model trained from scratch: the pretraining survives the swap.",
         test="compare", a="cifar10_orthogonal_warmup_40", b="scratch_orthogonal",
         note="The learned (Cayley) orthogonal skip, swapped at once (it starts at the identity) and trained "
              "at the same learning rate, ends below scratch (cifar10_orthogonal_learned in results.json)."),
]

# He et al.: the identity shortcut against each variant (Table 1), the placements' ranking (Table 2).
BN_AFTER_ADD_NOTES = {56: dict(note=(
    "96 optimiser steps (6 epochs of 2,000 images at batch 128): the post-activation placements are far "
    "from converged (final training loss: original 1.09-1.39, BN after addition 0.73-0.98, full "
    "pre-activation 0.43-0.48), so this ranks how fast each starts to train. BN after the addition "
    "starts faster than the original placement here; the paper's claim is about the error at the end of "
    "64k steps, which this budget cannot reach."))}
CLAIMS += [
    dict(id=f"he-identity-vs-{variant}", source="he", study="he_table1_cpu",
         claim=f"In a deep (54-unit) ResNet the identity shortcut beats {what}.",
         test="compare", a="identity", b=variant, with_train_loss=True)
    for variant, what in (("scale_0.5_shortcut", "scaling the shortcut by 0.5"),
                          ("gate_exclusive_b-6", "exclusive gating (b_g = -6)"),
                          ("conv1x1", "a 1x1 convolution shortcut"), ("dropout_0.5", "a dropout shortcut"))
] + [
    claim for depth in (20, 56) for claim in (
        dict(id=f"he-full-preact-r{depth}", source="he", study=f"he_table2_r{depth}",
             claim=f"Full pre-activation beats the original placement (ResNet-{depth}).",
             test="compare", a="full_preact", b="original"),
        dict(id=f"he-bn-after-add-r{depth}", source="he", study=f"he_table2_r{depth}",
             claim=f"BN after the addition hurts against the original placement (ResNet-{depth}).",
             test="compare", a="original", b="bn_after_add", **BN_AFTER_ADD_NOTES.get(depth, {})))
]

# Park's claims again on a CNN: ResNet-20.
CLAIMS += [dict(c, id=c["id"].replace("park-", "park-resnet20-"), study="park_droppath_resnet20",
                claim=c["claim"] + " (ResNet-20.)")
           for c in CLAIMS if c["study"] == "park_droppath_mlp"]

# Li & Papyan: in the converged regime without and with weight decay (their training used it).
RA_CLAIMS = [
    dict(id="ra1-line", source="li_papyan", study="ra_converged",
         claim="RA1: in a trained ResNet, the intermediate representations of an input lie on a line "
               "(first principal direction > 90% of the trajectory's variance).",
         test="threshold", metric="ra1_variance_share", op=">=", value=0.9, rows={"skip": "identity"}),
    dict(id="ra2-alignment", source="li_papyan", study="ra_converged",
         claim="RA2: the top singular vectors of the Residual Jacobians align, within and across units "
               "(|u_1 . v_1| > 0.5 within a unit).",
         test="threshold", metric="ra2_within_unit", op=">=", value=0.5, rows={"skip": "identity"},
         note="Two random unit vectors in 64 dimensions have |u . v| about 0.1 (sqrt(2 / (pi 64))): values near "
              "that mean no alignment."),
    dict(id="ra3-rank", source="li_papyan", study="ra_converged",
         claim="RA3: Residual Jacobians have rank at most C, the number of classes (C = 10).",
         test="threshold", metric="ra3_mean_rank", op="<=", value=10.0, rows={"skip": "identity"}),
    dict(id="ra4-depth", source="li_papyan", study="ra_converged",
         claim="RA4: the top singular value of the Residual Jacobians scales inversely with depth "
               "(log-log slope of sigma_1 against L in [-1.5, -0.5]).",
         test="slope", skip="identity", low=-1.5, high=-0.5),
    dict(id="ra-none-control", source="li_papyan", study="ra_converged",
         claim="Without skip connections (skip='none') RA does not occur: the trajectory is less of a line "
               "(RA1 variance share of identity above none's).",
         test="compare_rows", metric="ra1_variance_share", a={"skip": "identity"}, b={"skip": "none"}),
]
CLAIMS += RA_CLAIMS + [
    dict(c, id=c["id"] + "-wd", study="ra_converged_wd", claim=c["claim"] + " With weight decay, as the paper trained.")
    for c in RA_CLAIMS
] + [
    dict(id=f"ra4-depth-{skip}", source="question", study="ra_entangled",
         claim=f"RA4, the property the identity nets show here, with the {skip} skip{options}: sigma_1 scales "
               "inversely with depth (log-log slope in [-1.5, -0.5]).",
         test="slope", skip=skip, low=-1.5, high=-0.5,
         note="RA1-RA3 stay absent as with identity (table.md: rank about 31, |u1.v1| about 0.1); the RA1 line "
              "share at depth 32 is about 0.1 with orthogonal, against about 0.7 with sparse, correlation and "
              "identity.")
    for skip, options in (("orthogonal", " (fixed)"), ("sparse", " (k = 4)"), ("correlation", " (rho = 0.5)"))
]


# === Statistics ===
def mean_std(values):
    """Mean and sample standard deviation (ddof=1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def compare_verdict(a, b):
    """Verdict that mean(a) > mean(b), from per-seed values: (verdict, d, se)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    d = ma - mb
    se = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
    if min(len(a), len(b)) < MIN_SEEDS:
        return INCONCLUSIVE, d, se
    if d > 2 * se:
        return REPRODUCED, d, se
    if d < -2 * se:
        return NOT_REPRODUCED, d, se
    return INCONCLUSIVE, d, se


def threshold_verdict(values, op, value):
    ok = [_holds(v, op, value) for v in values]
    if len(values) < MIN_SEEDS:
        return INCONCLUSIVE
    return REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE


def _holds(v, op, value):
    return {"<=": v <= value, ">=": v >= value, "<": v < value, ">": v > value}[op]


def fmt(mean, std, digits=4):
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# === Reading a study ===
def load_study(study, results=RESULTS):
    path = Path(results) / study / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def experiment_accuracies(data, variant):
    for row in data["rows"]:
        if row["variant"] == variant:
            return [s["test_accuracy"] for s in row.get("seeds", [])] or list(row["accuracies"])
    return []  # a variant the study's results do not hold yet: "not measured yet"


def experiment_values(data, variant, key):
    """Each seed's `key` (e.g. train_loss) of a variant; [] when any seed lacks it."""
    for row in data["rows"]:
        if row["variant"] == variant:
            values = [s.get(key) for s in row.get("seeds", [])]
            return values if values and all(v is not None for v in values) else []
    return []


def study_setting(data):
    """One line: data, schedule, seeds, backend and the command, from the results JSON."""
    if "settings" in data:  # recipes.ra_study
        s = data["settings"]
        losses = [r["train_loss"] for r in data["results"]]
        by_skip = {}
        for r in data["results"]:
            by_skip[r["skip"]] = max(by_skip.get(r["skip"], 0.0), r["train_loss"])
        worst = ", ".join(f"{k} {v:.2g}" for k, v in sorted(by_skip.items()))
        opt = f"AdamW lr {s['lr']} weight decay {s['weight_decay']} (decoupled)" if s.get("weight_decay") else f"Adam lr {s['lr']}, no weight decay"
        return (f"ResidualMLP width {s['width']}, depths {s['depths']}, Fashion-MNIST ({s['train_size']} training "
                f"images), {opt}, up to {s['epochs']} epochs (stopped below training loss "
                f"{s.get('target_loss')}), batch {s['batch']}, seeds {s['seeds']}; final training loss "
                f"{min(losses):.2g} to {max(losses):.2g} over the {len(losses)} models (worst by skip: {worst}); "
                f"{s['backend']} backend, "
                f"{s.get('device', 'CPU')}; command: `{s['command']}`")
    meta = data["meta"]  # recipes.experiment
    opt = meta.get("optimizer") or {}
    decay = opt.get("weight_decay_mode", "decoupled")
    datasets = sorted({r["dataset"] for r in data.get("rows", []) if r.get("dataset")})
    dataset = f"{', '.join(datasets)} (by variant)" if len(datasets) > 1 else meta.get("dataset")
    return (f"{meta.get('model')} on {dataset}"
            + (f" ({meta['train_subset']} training images)" if meta.get("train_subset") else "")
            + f", {meta.get('epochs')} epochs, batch {meta.get('batch_size')}, {opt.get('name')} lr "
            f"{opt.get('learning_rate')} ({opt.get('schedule')}), weight decay {opt.get('weight_decay')} ({decay}), "
            f"seeds {meta.get('seeds')}, {meta.get('backend')} backend on {meta.get('device')}, {meta.get('date')}; "
            f"command: `{meta.get('command')}`")


def ra_values(data, metric, rows):
    out = []
    for r in data["results"]:
        if all(r.get(k) == v for k, v in rows.items()) and r["depth"] == max(data["settings"]["depths"]):
            out.append(r[metric])
    return out


def ra_slopes(data, skip):
    return [v for k, v in sorted(data.get("ra4_slopes_per_seed", {}).get(skip, {}).items())]


# === Evaluating a claim ===
def evaluate(claim, results=RESULTS):
    """(measured text, verdict, setting line) of one claim."""
    data = load_study(claim["study"], results)
    if data is None:
        return ("not measured yet", NOT_MEASURED,
                f"study `{claim['study']}` has no results.json yet; run `{STUDY_COMMANDS[claim['study']]}`")
    setting = study_setting(data)
    if claim["test"] in ("compare", "compare_gain"):
        names = [claim["a"], claim["b"]] if claim["test"] == "compare" else [*claim["a"], *claim["b"]]
        missing = [v for v in names if not experiment_accuracies(data, v)]
        if missing:
            return (f"no finished run of {', '.join(missing)} yet", NOT_MEASURED,
                    setting + f"; rerun `{STUDY_COMMANDS[claim['study']]}` (finished runs are kept)")
    if claim["test"] == "compare":
        a, b = experiment_accuracies(data, claim["a"]), experiment_accuracies(data, claim["b"])
        verdict, d, se = compare_verdict(a, b)
        measured = (f"test accuracy {claim['a']} {fmt(*mean_std(a))} (n={len(a)}) vs {claim['b']} "
                    f"{fmt(*mean_std(b))} (n={len(b)}); difference {d:+.4f}, standard error {se:.4f}")
        if claim.get("with_train_loss"):  # the mechanism a claim about optimisation rests on
            la, lb = experiment_values(data, claim["a"], "train_loss"), experiment_values(data, claim["b"], "train_loss")
            if la and lb:
                measured += (f"; final training loss {claim['a']} {fmt(*mean_std(la))} vs {claim['b']} "
                             f"{fmt(*mean_std(lb))}")
        return measured + (FEW_SEEDS if min(len(a), len(b)) < MIN_SEEDS else ""), verdict, setting
    if claim["test"] == "compare_gain":
        (a1, a0), (b1, b0) = claim["a"], claim["b"]
        gain_a = [x - y for x, y in zip(experiment_accuracies(data, a1), experiment_accuracies(data, a0))]
        gain_b = [x - y for x, y in zip(experiment_accuracies(data, b1), experiment_accuracies(data, b0))]
        verdict, d, se = compare_verdict(gain_a, gain_b)
        measured = (f"gain in test accuracy, {a1} - {a0}: {fmt(*mean_std(gain_a))} (n={len(gain_a)}) vs {b1} - {b0}: "
                    f"{fmt(*mean_std(gain_b))} (n={len(gain_b)}); difference {d:+.4f}, standard error {se:.4f} "
                    "(gains paired by seed)")
        return measured + (FEW_SEEDS if min(len(gain_a), len(gain_b)) < MIN_SEEDS else ""), verdict, setting
    if claim["test"] == "threshold":
        values = ra_values(data, claim["metric"], claim["rows"])
        if not values:
            return "no rows for " + json.dumps(claim["rows"]), NOT_MEASURED, setting
        depth = max(data["settings"]["depths"])
        measured = (f"{claim['metric']} at depth {depth}, {', '.join(f'{k}={v}' for k, v in claim['rows'].items())}: "
                    f"{fmt(*mean_std(values), digits=3)} (n={len(values)}; seeds: "
                    f"{', '.join(f'{v:.3f}' for v in values)}); criterion {claim['op']} {claim['value']}")
        measured += FEW_SEEDS if len(values) < MIN_SEEDS else ""
        return measured, threshold_verdict(values, claim["op"], claim["value"]), setting
    if claim["test"] == "compare_rows":
        a, b = ra_values(data, claim["metric"], claim["a"]), ra_values(data, claim["metric"], claim["b"])
        if not a or not b:
            return "no rows for " + json.dumps([claim["a"], claim["b"]]), NOT_MEASURED, setting
        verdict, d, se = compare_verdict(a, b)
        depth = max(data["settings"]["depths"])
        name = lambda rows: ", ".join(f"{k}={v}" for k, v in rows.items())  # noqa: E731
        measured = (f"{claim['metric']} at depth {depth}: {name(claim['a'])} {fmt(*mean_std(a), digits=3)} (n={len(a)}) "
                    f"vs {name(claim['b'])} {fmt(*mean_std(b), digits=3)} (n={len(b)}); difference {d:+.3f}, "
                    f"standard error {se:.3f}")
        return measured + (FEW_SEEDS if min(len(a), len(b)) < MIN_SEEDS else ""), verdict, setting
    if claim["test"] == "slope":
        slopes = ra_slopes(data, claim["skip"])
        if not slopes:
            return "no per-seed slopes", NOT_MEASURED, setting
        inside = [claim["low"] <= s <= claim["high"] for s in slopes]
        verdict = REPRODUCED if all(inside) else NOT_REPRODUCED if not any(inside) else INCONCLUSIVE
        verdict = verdict if len(slopes) >= MIN_SEEDS else INCONCLUSIVE
        measured = (f"slope of log sigma_1 against log L ({claim['skip']}): {fmt(*mean_std(slopes), digits=3)} "
                    f"(n={len(slopes)}; seeds: {', '.join(f'{s:.3f}' for s in slopes)}); "
                    f"criterion in [{claim['low']}, {claim['high']}]")
        return measured + (FEW_SEEDS if len(slopes) < MIN_SEEDS else ""), verdict, setting
    raise ValueError(f"Received test={claim['test']!r}; allowed: 'compare', 'compare_gain', 'compare_rows', "
                     "'threshold', 'slope'.")


def render(results=RESULTS, claims=CLAIMS):
    evaluated = [(c, *evaluate(c, results)) for c in claims]
    counts = {}
    for _, _, verdict, _ in evaluated:
        counts[verdict] = counts.get(verdict, 0) + 1
    lines = [
        "# Claims: what the zoo measured",
        "",
        "Generated by `python -m recipes.claims` from `docs/results/<study>/results.json` (every seed's",
        "numbers and the command that made them); do not edit by hand. Verdicts: a comparison is",
        "*reproduced* when the difference of means exceeds twice its standard error (sample standard",
        "deviation over seeds), *not reproduced* when the opposite does, *inconclusive* in between; a",
        "property with a threshold is reproduced when every seed meets it. Scale: small models a",
        "2-core CPU converges in minutes, so a verdict here is about that scale, not the papers' own.",
        "",
        "Summary: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())) + ".",
        "",
        "| claim | source | verdict |",
        "|---|---|---|",
    ]
    for c, _, verdict, _ in evaluated:
        lines.append(f"| [{c['id']}](#{c['id']}) | {SOURCES[c['source']].split(',')[0]} | **{verdict}** |")
    for c, measured, verdict, setting in evaluated:
        lines += [
            "",
            f"## {c['id']}",
            "",
            f"- Claim: {c['claim']}",
            f"- Source: {SOURCES[c['source']]}",
            f"- Measured: {measured}",
            f"- Setting: {setting}",
            f"- Verdict: **{verdict}**",
        ]
        if c.get("note"):
            lines.append(f"- Note: {c['note']}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--check", action="store_true", help="exit 1 when --out differs from what the JSON gives")
    args = parser.parse_args(argv)
    text = render(Path(args.results))
    out = Path(args.out)
    if args.check:
        same = out.is_file() and out.read_text() == text
        print(f"{out}: {'up to date' if same else 'differs from the results JSON; run python -m recipes.claims'}")
        return 0 if same else 1
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
