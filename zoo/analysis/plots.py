"""PNG plots of a Residual Alignment report (matplotlib, Agg; imported only when plotting).

    plot_report(report, out_dir) -> [paths]:
      spectra.png     singular values of every unit's Jacobian (one line a unit, by depth)
      alignment.png   |u_1^i . u_1^j| across depth (RA2 heatmap)
      trajectory.png  h_0..h_L of each input on its top-2 principal directions (RA1)
      sigma1.png      sigma_1 of every unit against its depth
    plot_sigma1_against_depth(depths, sigma_1, path): RA4 over models of several depths.
"""

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return Path(path)


def plot_spectra(report, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    units = report["units"]
    cmap = plt.get_cmap("viridis")
    for j, unit in enumerate(units):
        s = np.mean([np.asarray(v[: min(map(len, unit["singular_values"]))]) for v in unit["singular_values"]], axis=0)
        ax.semilogy(np.arange(1, len(s) + 1), np.maximum(s, 1e-12), color=cmap(j / max(len(units) - 1, 1)), lw=1)
    if report.get("num_classes"):
        ax.axvline(report["num_classes"], color="k", ls=":", lw=1, label=f"C = {report['num_classes']}")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("index")
    ax.set_ylabel("singular value of J_i")
    ax.set_title(f"{report['model']}: spectra (dark = early unit)", fontsize=9)
    return _save(fig, path)


def plot_alignment(report, path):
    plt = _pyplot()
    matrix = np.array([[np.nan if v is None else v for v in row] for row in report["ra2"]["alignment_matrix"]])
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xlabel("unit j")
    ax.set_ylabel("unit i")
    ax.set_title("|u_1^i . u_1^j| (RA2)", fontsize=9)
    return _save(fig, path)


def plot_trajectory(report, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    for s, runs in enumerate(report["ra1"]["per_input"]):
        for r, run in enumerate(runs):
            p = np.asarray(run["projection"])
            ax.plot(p[:, 0], p[:, 1], "-o", ms=2.5, lw=1, label=f"input {s}" if r == 0 else None)
            ax.plot(p[0, 0], p[0, 1], "k^", ms=4)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    share = report["ra1"]["variance_share"]
    ax.set_title(f"trajectory h_0..h_L (RA1 share {share:.3f})" if share is not None else "trajectory", fontsize=9)
    if len(report["ra1"]["per_input"]) <= 8:
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_sigma1(report, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    units = report["units"]
    ax.plot([u["index"] for u in units], [u["sigma_1"] for u in units], "-o", ms=3)
    ax.set_xlabel("unit (depth)")
    ax.set_ylabel("sigma_1 of J_i")
    ax.set_yscale("log")
    ax.set_title(f"{report['model']}: sigma_1 against depth", fontsize=9)
    return _save(fig, path)


def plot_sigma1_against_depth(depths, sigma_1, path, labels=None, title="RA4: sigma_1 against depth L"):
    """Log-log sigma_1 (mean over units) against depth L; one line per series (e.g. skip).

    depths, sigma_1: dict label -> list, or two lists for one series.
    """
    plt = _pyplot()
    if not isinstance(depths, dict):
        depths, sigma_1 = {labels or "model": depths}, {labels or "model": sigma_1}
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    for name in depths:
        ax.loglog(depths[name], sigma_1[name], "-o", ms=4, label=name)
    ax.set_xlabel("depth L (residual units)")
    ax.set_ylabel("mean sigma_1")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_report(report, out_dir):
    out_dir = Path(out_dir)
    paths = [plot_spectra(report, out_dir / "spectra.png"), plot_sigma1(report, out_dir / "sigma1.png")]
    if len(report["units"]) > 1:
        paths.append(plot_alignment(report, out_dir / "alignment.png"))
    if report["ra1"]["per_input"] and any(report["ra1"]["per_input"]):
        paths.append(plot_trajectory(report, out_dir / "trajectory.png"))
    return paths
