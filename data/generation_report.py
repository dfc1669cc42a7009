"""What `repo generate` shows: the terminal summary, rewards.png and report.html.

The page is self-contained like inspect-noise's (data/noise_report.py, whose styles, table cells and sorting
script it shares): the comparison, the plot, and every face (sample s of the policy against sample s of the
reference for one prompt) side by side with both rewards, sortable and filterable by text and by winner.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from string import Template

import numpy as np
import polars as pl

from re_po.data.atomic import atomic_write_text
from re_po.data.noise_plots import new_figure, save_figure
from re_po.data.noise_report import SCRIPT, STYLE, cell, header, plot_figure, text_block

PLOT = "rewards.png"
REPORT = "report.html"
MAX_FACES = 2000  # rows of the page's table; samples/ holds every one


def write(out: Path, summary: dict, frame: pl.DataFrame) -> Path:
    """rewards.png and report.html into `out`; returns the page."""
    faces_of = faces(frame)
    plot = reward_plot(faces_of, summary, out / PLOT)
    return _write_page(out / REPORT, summary, faces_of, [plot], conversational="prompt_json" in frame.columns)


def faces(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (prompt, sample): the prompt, both responses, both rewards, the winner and the policy sample's
    log-ratio log π − log π_ref."""
    prompt = "prompt_json" if "prompt_json" in frame.columns else "prompt"
    policy = frame.filter(pl.col("side") == "policy").select(
        "prompt_index", "sample", prompt, pl.col("response").alias("policy_response"),
        pl.col("reward").alias("policy_reward"), (pl.col("policy_logps") - pl.col("ref_logps")).alias("log_ratio"))
    reference = frame.filter(pl.col("side") == "reference").select(
        "prompt_index", "sample", pl.col("response").alias("reference_response"),
        pl.col("reward").alias("reference_reward"))
    joined = policy.join(reference, on=["prompt_index", "sample"]).sort("prompt_index", "sample")
    margin = pl.col("policy_reward") - pl.col("reference_reward")
    winner = (pl.when(margin > 0).then(pl.lit("policy")).when(margin < 0).then(pl.lit("reference"))
              .when(margin == 0).then(pl.lit("tie")).otherwise(pl.lit(None)))
    return joined.with_columns(winner.alias("winner")).rename({prompt: "prompt"})


def reward_plot(faces_of: pl.DataFrame, summary: dict, path: Path) -> Path:
    """Rewards of both sides (histograms), or with no judge the policy samples' log-ratios alone."""
    fig, ax = new_figure()
    if summary.get("win_rate") is None:
        ax.hist(faces_of["log_ratio"].to_numpy(), bins=30, color="tab:blue")
        ax.set(xlabel="log π(y) − log π_ref(y) of the policy's samples (nats)", ylabel="samples",
               title=f"KL(π‖π_ref) ≈ {summary['kl']:.2f} nats per sequence (no judge)")
        return save_figure(fig, path)
    policy, reference = faces_of["policy_reward"].to_numpy(), faces_of["reference_reward"].to_numpy()
    bins = np.histogram_bin_edges(np.concatenate([policy, reference]), bins=30)
    ax.hist(reference, bins=bins, color="tab:gray", alpha=0.6, label=f"reference (mean {reference.mean():.3f})")
    ax.hist(policy, bins=bins, color="tab:blue", alpha=0.6, label=f"policy (mean {policy.mean():.3f})")
    low, high = summary["win_rate_ci"]
    ax.set(xlabel="reward (the judge's)", ylabel="samples",
           title=f"win rate {summary['win_rate']:.3f} [{low:.3f}, {high:.3f}], KL {summary['kl']:.2f} nats")
    ax.legend()
    return save_figure(fig, path)


def format_summary(summary: dict) -> str:
    """The terminal's lines."""
    lines = [f"generation: {summary['prompts']} prompts × {summary['samples_per_prompt']} samples; policy "
             f"{summary['policy']} against reference {summary['reference']}"]
    if summary.get("win_rate") is not None:
        low, high = summary["win_rate_ci"]
        lines += [f"  win rate of the policy, judged by {summary['judge']}: {summary['win_rate']:.3f} "
                  f"[{low:.3f}, {high:.3f}] (95% bootstrap over prompts; ties {summary['ties']:.3f}, counted ½)",
                  f"  mean reward: policy {summary['reward_policy']:.4f}, reference {summary['reward_reference']:.4f}"]
    else:
        lines.append("  no --judge: no win rate")
    lines += [f"  KL(π‖π_ref): {summary['kl']:.3f} ± {summary['kl_se']:.3f} nats per sequence (policy samples)",
              f"  mean length: policy {summary['length_policy']:.1f} tokens, reference "
              f"{summary['length_reference']:.1f}"]
    return "\n".join(lines)


def _write_page(path: Path, summary: dict, faces_of: pl.DataFrame, plots: list[Path], conversational: bool) -> Path:
    shown = faces_of.head(MAX_FACES)
    numbers = ["prompt_index", "sample", "policy_reward", "reference_reward", "log_ratio"]
    head = ("".join(header(n, True) for n in numbers) + header("winner", False)
            + "".join(header(n, False, "text") for n in ("prompt", "policy_response", "reference_response")))
    rows = []
    for row in shown.iter_rows(named=True):
        prompt = json.loads(row["prompt"]) if conversational else row["prompt"]
        cells = "".join(cell(row[n]) for n in numbers) + cell(row["winner"])
        cells += "".join(f"<td class='text'>{text_block(v)}</td>"
                         for v in (prompt, row["policy_response"], row["reference_response"]))
        rows.append(f"<tr data-group='{html.escape(str(row['winner']))}'>{cells}</tr>")
    capped = (f"<p class='note'>The first {MAX_FACES} of {faces_of.height} are shown; samples/ holds every one.</p>"
              if faces_of.height > MAX_FACES else "")
    text = PAGE.substitute(
        summary="".join(f"<p>{html.escape(line.strip())}</p>" for line in format_summary(summary).splitlines()),
        plots="".join(plot_figure(p) for p in plots), count=faces_of.height, capped=capped,
        faces=f"<table class='sortable' id='pairs'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    atomic_write_text(path, text)
    return path


PAGE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>re-po: what the policy writes</title><style>""" + STYLE.replace("$", "$$") + """</style></head>
<body>
<h1>What the policy writes, against the reference</h1>
$summary
<div class="plots">$plots</div>
<h2>Each sample against the reference's ($count)</h2>
$capped
<div class="controls"><input id="filter" type="search" placeholder="filter: any text in the row">
<select id="who"><option value="">every outcome</option><option>policy</option><option>reference</option>
<option>tie</option></select><span id="shown"></span></div>
$faces
<script>""" + SCRIPT.replace("$", "$$") + """</script>
</body></html>
""")
