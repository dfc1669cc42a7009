"""PNG plots of a robust run's posteriors and reliabilities, for `repo inspect-noise --plots DIR`.

Writes (atomically) into DIR:
    w_hist.png           histogram of w at the inspected epoch (split by the truth when it is known)
    annotators.png       each annotator's η̂ (± its standard error where the estimate gives one), beside its
                         measured reliability when the truth is known
    reliability.png      with the truth only: w against the observed share of right labels per bin of w
    eta_steps.png        (a run) η per annotator over the training steps, epoch ends marked, and its measured
                         reliability as a dashed line of the same colour when the truth is known
    w_flagged.png        (a run) w over the epochs for the flagged pairs (the lowest MAX_LINES of them)
Matplotlib's object API with the Agg canvas: no pyplot, no global backend, no display needed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from re_po.data.atomic import atomic_write
from re_po.pipeline.noise_metrics import reliability_bins

MAX_LINES = 12  # annotators in the η plot (the least reliable) and, ×4, pairs in the w plot
RIGHT, WRONG = "tab:blue", "tab:red"


def w_histogram(w: np.ndarray, noisy: np.ndarray | None, cutoff: float, path: Path) -> Path:
    """w (N,); noisy (N,) bool or None; cutoff: the w below which pairs are flagged."""
    fig, ax = new_figure()
    bins = np.linspace(0.0, 1.0, 41)
    if noisy is None:
        ax.hist(w, bins=bins, color="tab:gray", label=f"all pairs ({w.size})")
    else:
        ax.hist(w[~noisy], bins=bins, color=RIGHT, alpha=0.6, label=f"label right ({int((~noisy).sum())})")
        ax.hist(w[noisy], bins=bins, color=WRONG, alpha=0.6, label=f"label wrong ({int(noisy.sum())})")
    ax.axvline(cutoff, color="black", linestyle="--", label=f"flag below {cutoff:.3g}")
    ax.set(xlabel="w = P(label correct)", ylabel="pairs", title="Posterior of each label", yscale="log")
    ax.legend()
    return save_figure(fig, path)


def annotator_etas(annotators: pl.DataFrame, path: Path) -> Path:
    """annotators: inspect's table (annotator, eta[, eta_se][, accuracy]), least reliable first; the first
    MAX_LINES · 2 of them."""
    fig, ax = new_figure()
    shown = annotators.head(2 * MAX_LINES)
    y = np.arange(shown.height)
    se = shown["eta_se"].fill_null(0.0).to_numpy() if "eta_se" in shown.columns else None
    ax.errorbar(shown["eta"].to_numpy(), y, xerr=se, fmt="o", color=RIGHT, capsize=3, label="η̂ (± SE)")
    if "accuracy" in shown.columns:
        ax.scatter(shown["accuracy"].to_numpy(), y, marker="x", color="black", zorder=3, label="measured")
    ax.set_yticks(y, shown["annotator"].to_list())
    ax.invert_yaxis()
    title = "Reliability of each annotator"
    if annotators.height > shown.height:
        title += f"; the {shown.height} least reliable of {annotators.height}"
    ax.set(xlabel="η (share of right labels)", title=title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def reliability_diagram(w: np.ndarray, noisy: np.ndarray, path: Path) -> Path:
    """w (N,) against the truth noisy (N,): is a label with w = 0.8 right 80% of the time?"""
    fig, ax = new_figure()
    found = reliability_bins(w, noisy)
    ax.plot([0, 1], [0, 1], color="lightgray", linestyle="--", label="calibrated")
    ax.plot(found.w_mean, found.right_share, marker="o", color=RIGHT, label="observed")
    for x, y, n in zip(found.w_mean, found.right_share, found.labels):
        ax.annotate(str(int(n)), (x, y), textcoords="offset points", xytext=(4, -10), fontsize="x-small")
    ax.set(xlabel="w = P(label correct), bin mean", ylabel="share of right labels", xlim=(0, 1), ylim=(0, 1.02),
           title="Reliability of w (labels per bin beside each point)")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def eta_over_steps(eta_steps: pl.DataFrame, eta_epochs: pl.DataFrame, path: Path,
                   measured: dict[str, float] | None = None) -> Path:
    """eta_steps: (step, epoch, annotator, eta) rows; eta_epochs: (annotator, eta, epoch) of every epoch file;
    measured: each annotator's share of right labels, when the truth is known.

    One line per annotator (the MAX_LINES least reliable at the last epoch when there are more), with
    each epoch file's η as a dot at the epoch's last step and the measured reliability dashed.
    """
    fig, ax = new_figure()
    eta_steps, eta_epochs = (t.with_columns(pl.col("epoch").cast(pl.Int64)) for t in (eta_steps, eta_epochs))
    last = eta_epochs.filter(pl.col("epoch") == eta_epochs["epoch"].max()).sort("eta")
    shown = last["annotator"].head(MAX_LINES).to_list()
    epoch_end = eta_steps.group_by("epoch").agg(pl.col("step").max().alias("end_step"))
    dots = eta_epochs.join(epoch_end, on="epoch", how="inner")
    for end in epoch_end["end_step"].sort().to_list()[:-1]:
        ax.axvline(end, color="lightgray", linestyle=":")
    for name in shown:
        line = eta_steps.filter(pl.col("annotator") == name).sort("step")
        (drawn,) = ax.plot(line["step"], line["eta"], label=name)
        at = dots.filter(pl.col("annotator") == name)
        ax.scatter(at["end_step"], at["eta"], color=drawn.get_color(), zorder=3)
        if measured is not None and name in measured:
            ax.axhline(measured[name], color=drawn.get_color(), linestyle="--", linewidth=1)
    title = "η per annotator (dots: end of each epoch" + ("; dashed: measured)" if measured else ")")
    if last.height > len(shown):
        title += f"; the {len(shown)} least reliable of {last.height}"
    ax.set(xlabel="optimizer step", ylabel="η (reliability)", title=title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def w_over_epochs(history: pl.DataFrame, noisy_of: dict[int, bool] | None, path: Path) -> Path:
    """history: (row_id, epoch, w) of the flagged pairs over every epoch, lowest first by the caller."""
    fig, ax = new_figure()
    rows = history["row_id"].unique(maintain_order=True).head(4 * MAX_LINES).to_list()
    for row_id in rows:
        line = history.filter(pl.col("row_id") == row_id).sort("epoch")
        color = None if noisy_of is None else (WRONG if noisy_of[row_id] else RIGHT)
        ax.plot(line["epoch"], line["w"], marker="o", color=color, alpha=0.6, linewidth=1)
    epochs = history["epoch"].unique().sort().to_list()
    ax.set_xticks(epochs)
    note = "" if noisy_of is None else " (red: label wrong, blue: label right)"
    ax.set(xlabel="epoch", ylabel="w", ylim=(-0.02, 1.02),
           title=f"w of {len(rows)} flagged pairs over the epochs{note}")
    return save_figure(fig, path)


def new_figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    return path
