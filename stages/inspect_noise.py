"""`repo inspect-noise RUN|SCORES`: the labels believed wrong, and how reliable each annotator is.

Reads either
- the run folder of `repo train --robust` (data/run_folder.py): posteriors/epoch-000K.parquet and
  annotators/epoch-000K.parquet of the inspected epoch (default: the last), eta_steps.parquet (plots),
  config.json (names the score cache); or
- a score cache of `repo score`, before any training: the noise estimate of data/estimate.py (a cross-fitted
  probe on the reference model's embeddings, or --prior-col, then EM with one true order per pair), written to
  out_dir as posteriors.parquet and annotators.parquet (epoch 0).
The posteriors are joined on row_id with the score cache (data/schema.read_scores, without its embeddings and token
ids), which carries the pair texts and every input column. The estimate reads the cache part by part
(data/estimate.run_streamed: memory flat in the pairs), or whole for a --prior-col.

Writes into out_dir: report.txt (also printed) and summary.json. On request: --dump FILE (the flagged
pairs, every column but the token ids), --export-clean FILE (the input dataset with the flagged pairs
dropped or their labels swapped, readable by `repo score`), --plots DIR (data/noise_plots.py), --html FILE
(one self-contained page: data/noise_report.py), --review FILE (Label Studio tasks: data/review.py).

A pair is flagged when w < threshold, or, with top_k, when it is among the k lowest w. When the data
carries the truth (a boolean column, True where the label is wrong, e.g. `is_flipped`), the flags are
scored against it (pipeline/noise_metrics.py) and each annotator's η is shown beside its accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl

from re_po.data import estimate, folders, noise_plots, noise_report, review, run_folder, schema
from re_po.data.atomic import atomic_write_text
from re_po.data.columns import TRUTH, Columns, table_format
from re_po.data.pairs import pair_values, read_pairs
from re_po.data.tables import (
    read_table,
    swap_where,
    swapped_column_pairs,
    truth_column,
    write_table,
)
from re_po.pipeline import noise_metrics
from re_po.stages.configs import CleanAction, InspectConfig

EXCERPT_CHARS = 100
MAX_ANNOTATOR_ROWS = 40  # the report's table; summary.json lists every annotator
REPORT_FILES = ("report.txt", "summary.json", "posteriors.parquet", "annotators.parquet")  # what out_dir holds


def run(cfg: InspectConfig) -> Path:
    for folder, kind in ((cfg.out_dir, "inspect"), (cfg.plots, "plots")):
        if folder is not None:  # before any work: never the user's folder (made only once there is output)
            folders.check(folder, kind)
    from_cache = is_score_cache(cfg.run)
    record = None if from_cache else run_folder.read_record(cfg.run, made_by="repo train --robust")
    epoch = 0 if from_cache else pick_epoch(cfg.run, cfg.epoch, record["config"])
    scores_dir = Path(cfg.run) if from_cache else Path(cfg.scores or record["config"]["scores"])
    if cfg.out_dir is None:  # one folder per report: before and after training apart
        cfg = dataclasses.replace(cfg, out_dir=default_out_dir(Path(cfg.run), None if from_cache else epoch))
        folders.check(cfg.out_dir, "inspect")
    check_outputs(cfg, scores_dir)  # nothing written over or into what is read
    written = [cfg.out_dir, cfg.plots, cfg.dump, cfg.export_clean, cfg.html, *review_files(cfg.review)]
    with folders.removed_on_failure(written):  # a failed inspect leaves nothing
        return report(cfg, record, epoch, scores_dir)


def report(cfg: InspectConfig, record: dict | None, epoch: int, scores_dir: Path) -> Path:
    """Read (and for a score cache, estimate) the posteriors, write every output asked for; returns cfg.out_dir."""
    outputs: dict[str, object] = {"report": str(cfg.out_dir / "report.txt"),
                                  "summary": str(cfg.out_dir / "summary.json")}
    if record is None:
        epochs = [0]
        found = estimate_cache(cfg, scores_dir)
        cached, cache_key = schema.read_scores(scores_dir, embeddings=False, token_ids=False)
        posteriors, eta = found.posteriors, found.annotators
        outputs["posteriors"] = str(cfg.out_dir / "posteriors.parquet")
        outputs["annotators"] = str(cfg.out_dir / "annotators.parquet")
        pairs = join_rows(posteriors, cached, scores_dir)
        source = {"model": found.model, "seconds": round(found.seconds, 3), "probe_log_loss": found.log_loss}
    else:
        epochs = run_folder.epochs_written(cfg.run, run_folder.POSTERIORS)
        posteriors = run_folder.read_epoch(cfg.run, run_folder.POSTERIORS, epoch)
        pairs, cache_key = join_scores(posteriors, scores_dir, record.get("cache_key"))
        eta = run_folder.read_epoch(cfg.run, run_folder.ANNOTATORS, epoch)
        source = None
    pairs = pairs.with_columns(flagged=flags(pairs["w"], cfg.threshold, cfg.top_k)).sort("w", "row_id")
    truth_col = resolve_truth_col(cfg.truth_col, pairs)
    noisy = truth_column(pairs, truth_col, scores_dir).to_numpy() if truth_col else None
    annotators = annotator_table(pairs, eta, noisy)
    folders.claim(cfg.out_dir, "inspect")  # the inputs are read and checked: from here on there is output
    if source is not None:  # the estimate of a score cache: its tables, as a run folder's epoch 0
        run_folder.write_parquet(posteriors, cfg.out_dir / "posteriors.parquet")
        run_folder.write_parquet(eta, cfg.out_dir / "annotators.parquet")

    flagged = pairs.filter("flagged")
    if cfg.dump is not None:
        outputs["dump"] = str(write_dump(flagged, cfg.dump))
    if cfg.export_clean is not None:
        outputs["export_clean"] = str(export_clean(cfg, set(flagged["row_id"]), cache_key, truth_col, scores_dir))
    if cfg.plots is not None:
        plots_folder = folders.claim(cfg.plots, "plots")
        outputs["plots"] = [str(p) for p in make_plots(cfg, plots_folder, pairs, noisy, epoch, source is None,
                                                        annotators)]
        folders.remove_stale(plots_folder, PLOTS, outputs["plots"])
    if cfg.review is not None:
        outputs["review"] = [str(p) for p in write_review(flagged, cfg.review)]
    if cfg.html is not None:
        outputs["html"] = str(cfg.html)

    summary = {
        "run": str(cfg.run), "scores": str(scores_dir), "epoch": epoch, "epochs": epochs, "estimate": source,
        "labels": pairs.height, "pairs": pairs["pair_id"].n_unique(), "flag_rule": flag_rule(cfg),
        "flagged": flagged.height, "flagged_frac": flagged.height / max(pairs.height, 1),
        "w_mean": float(pairs["w"].mean()), "annotators": annotators.to_dicts(),
        "unidentified": estimate.unidentified_reasons(eta, pairs, source and source["model"]),
        "truth": truth_summary(truth_col, pairs, noisy, annotators) if noisy is not None else None,
        "suspicious": pairs.head(cfg.show).select("row_id", "pair_id", "annotator", "w", "z").to_dicts(),
        "outputs": outputs,
    }
    if cfg.html is not None:
        write_html(cfg, summary, pairs, flagged, noisy, epoch, source is None, annotators, truth_col)
    text = format_report(summary, pairs.head(cfg.show), truth_col)
    atomic_write_text(cfg.out_dir / "report.txt", text)
    run_folder.write_json(summary, cfg.out_dir / "summary.json")
    folders.remove_stale(cfg.out_dir, REPORT_FILES, written_paths(outputs))
    print(text, end="")
    return cfg.out_dir


def default_out_dir(inspected: Path, epoch: int | None) -> Path:
    """Beside the inspected folder, one folder per report: <workspace>/inspect/estimate for a score cache (the estimate
    before training), <workspace>/inspect/epoch-N for epoch N of a run; so no report replaces another."""
    if inspected.name in ("", ".", ".."):
        inspected = inspected.resolve()
    return inspected.parent / "inspect" / ("estimate" if epoch is None else f"epoch-{epoch}")


def check_outputs(cfg: InspectConfig, scores_dir: Path) -> None:
    """Every path inspect-noise writes, against what it reads (data/folders.check_outputs)."""
    writes = {"--out-dir": cfg.out_dir, **{f"--out-dir's {name}": cfg.out_dir / name for name in REPORT_FILES},
              "--plots": cfg.plots, "--dump": cfg.dump, "--html": cfg.html, "--export-clean": cfg.export_clean,
              **dict(zip(("--review", "--review's labeling config"), review_files(cfg.review)))}
    reads = {"the score cache": scores_dir, "the input dataset": cfg.data}
    if not is_score_cache(cfg.run):
        reads["the run folder"] = cfg.run
    folders.check_outputs(writes, reads)


# ---- reading the run --------------------------------------------------------------------------------------

def pick_epoch(run: Path, epoch: int | None, run_config: dict) -> int:
    """The epoch to inspect; refuses a run without posteriors, saying what to run."""
    written = run_folder.epochs_written(run, run_folder.POSTERIORS)
    if not written:
        if not run_config.get("robust", True):
            raise FileNotFoundError(
                f"{run}: a plain (non-robust) run has no posteriors to inspect; "
                "train with `repo train --robust` to get them")
        raise FileNotFoundError(
            f"{run}: no posteriors yet ({run}/{run_folder.POSTERIORS}/ is empty): they are written at the end of "
            "each epoch; let `repo train --robust` finish its first epoch (or rerun it with --resume)")
    if epoch is None:
        return written[-1]
    if epoch not in written:
        raise ValueError(f"{run}: no posteriors for epoch {epoch}; epochs written: {written}")
    return epoch


def is_score_cache(folder: Path) -> bool:
    return (Path(folder) / schema.MANIFEST).exists() and not run_folder.is_run(folder)


def join_scores(posteriors: pl.DataFrame, scores_dir: Path, run_key: dict | None) -> tuple[pl.DataFrame, dict]:
    """The posteriors with the cached pair texts and input columns, one row per row_id; and the cache key.

    run_key: the key of the cache the run was trained on; another cache is refused, showing both keys.
    """
    cached, key = schema.read_scores(scores_dir, expect=run_key, embeddings=False, token_ids=False)
    return join_rows(posteriors, cached, scores_dir), key


def estimate_cache(cfg: InspectConfig, scores_dir: Path) -> estimate.NoiseEstimate:
    """The estimate of a score cache, read part by part (memory flat in the pairs), or, for a --prior-col, whole
    but without its states."""
    if cfg.estimate.prior_col is None:
        return estimate.run_streamed(cfg.estimate, scores_dir, str(scores_dir))
    cached, cache_key = schema.read_scores(scores_dir, embeddings=False)  # the column is the model, not the states
    return estimate.run(cfg.estimate, cached, cache_key, str(scores_dir))


def join_rows(posteriors: pl.DataFrame, cached: pl.DataFrame, scores_dir: Path) -> pl.DataFrame:
    """Posteriors and cache rows (read without their embeddings and token ids) joined on row_id; refused unless they
    hold the same rows."""
    cached = cached.drop("pair_id", "annotator")  # the posteriors carry both
    joined = posteriors.join(cached, on="row_id", how="inner")
    if joined.height != posteriors.height or joined.height != cached.height:
        raise ValueError(
            f"the run's posteriors ({posteriors.height} pairs) and the score cache {scores_dir} "
            f"({cached.height} pairs) share {joined.height} row_ids: the run was not trained on this cache; "
            "name the right one with --scores")
    return joined


def flags(w: pl.Series, threshold: float, top_k: int | None) -> pl.Series:
    """True for the pairs believed mislabeled: w < threshold, or the top_k lowest w (ties by row order)."""
    if top_k is None:
        return w < threshold
    flagged = np.zeros(w.len(), dtype=bool)
    flagged[np.argsort(w.to_numpy(), kind="stable")[:top_k]] = True
    return pl.Series("flagged", flagged)


def flag_rule(cfg: InspectConfig) -> dict:
    return {"top_k": cfg.top_k} if cfg.top_k is not None else {"threshold": cfg.threshold}


def resolve_truth_col(name: str | None, pairs: pl.DataFrame) -> str | None:
    if name is None:
        return TRUTH if TRUTH in pairs.columns else None
    if name not in pairs.columns:
        raise ValueError(f"truth column {name!r} is not in the data; the columns are: {', '.join(pairs.columns)}")
    return name


# ---- the tables -------------------------------------------------------------------------------------------

def annotator_table(pairs: pl.DataFrame, eta: pl.DataFrame, noisy: np.ndarray | None) -> pl.DataFrame:
    """annotator, labels, eta[, eta_se], w_mean, flagged[, accuracy, eta_abs_error], least reliable first.

    eta_se, identified: the estimate's standard error of η (null where infinite), where `eta`
    has them."""
    names, index = np.unique(pairs["annotator"].to_numpy(), return_inverse=True)
    found = noise_metrics.annotator_stats(index, pairs["w"].to_numpy(), pairs["flagged"].to_numpy(), names.size)
    stats = pl.DataFrame({"annotator": names.astype(str), "labels": found.labels, "w_mean": found.w_mean,
                          "flagged": found.flagged})
    se = ["eta_se", "identified"] if "eta_se" in eta.columns else []
    table = eta.select("annotator", "eta", *se).join(stats, on="annotator", how="inner")
    if noisy is not None:
        accuracy = noise_metrics.annotator_accuracy(pairs["annotator"].to_numpy(), noisy)
        table = table.with_columns(accuracy=pl.col("annotator").replace_strict(accuracy, return_dtype=pl.Float64))
        table = table.with_columns(eta_abs_error=(pl.col("eta") - pl.col("accuracy")).abs())
    truth = ["accuracy", "eta_abs_error"] if noisy is not None else []
    return table.select("annotator", "labels", "eta", *se, "w_mean", "flagged", *truth).sort(
        "eta", "w_mean", "annotator")


def truth_summary(name: str, pairs: pl.DataFrame, noisy: np.ndarray, annotators: pl.DataFrame) -> dict:
    scores = noise_metrics.flag_scores(pairs["flagged"].to_numpy(), noisy)
    return {
        "column": name, "noisy": int(noisy.sum()), "noisy_frac": float(noisy.mean()) if noisy.size else None,
        **asdict(scores),
        "roc_auc": noise_metrics.roc_auc(1.0 - pairs["w"].to_numpy(), noisy),  # suspicion 1 − w vs wrong label
        "eta_abs_error_mean": float(annotators["eta_abs_error"].mean()),
    }


def headline(summary: dict) -> str:
    """What was inspected, and how many pairs are flagged by which rule."""
    rule = summary["flag_rule"]
    rule_text = f"w < {rule['threshold']}" if "threshold" in rule else f"the {rule['top_k']} lowest w"
    estimated = summary["estimate"]
    where = (f"score cache {summary['run']}, estimate before training (model: {estimated['model']})" if estimated
             else f"run {summary['run']}, epoch {summary['epoch']} (of {len(summary['epochs'])})")
    return (f"{where}: {labels_of_pairs(summary['labels'], summary['pairs'])}, "
            f"{summary['flagged']} {'labels ' if summary['labels'] != summary['pairs'] else ''}flagged ({rule_text}), "
            f"mean w {summary['w_mean']:.3f}")


def labels_of_pairs(labels: int, pairs: int) -> str:
    """A count that says labels and pairs where they differ (several labels of a pair): "40 labels of 15 pairs"."""
    return f"{pairs} pairs" if labels == pairs else f"{labels} labels of {pairs} pairs"


def truth_line(truth: dict) -> str:
    """The flags scored against the truth column."""
    def show(x):
        return "n/a" if x is None else f"{x:.3f}"
    return (f"truth ({truth['column']}): {truth['noisy']} wrong labels; flags precision "
            f"{show(truth['precision'])}, recall {show(truth['recall'])}, F1 {show(truth['f1'])}; "
            f"ROC-AUC of 1 - w {show(truth['roc_auc'])}")


def format_report(summary: dict, suspicious: pl.DataFrame, truth_col: str | None) -> str:
    with_se = any("eta_se" in a for a in summary["annotators"])  # the estimate's table: a cache's, a run's epoch 0
    lines = [headline(summary), ""]
    truth = summary["truth"]
    header = f"{'annotator':<24} {'labels':>7} {'eta':>7}" + (f" {'± se':>7}" if with_se else "")
    lines.append(header + f" {'mean w':>7} {'flagged':>8}" + (f" {'accuracy':>9}" if truth else ""))
    for a in summary["annotators"][:MAX_ANNOTATOR_ROWS]:
        line = f"{a['annotator'][:24]:<24} {a['labels']:>7} {a['eta']:>7.3f}"
        if with_se:
            line += f" {'n/i':>7}" if not a["identified"] else f" {a['eta_se']:>7.3f}"
        line += f" {a['w_mean']:>7.3f} {a['flagged']:>8}"
        lines.append(line + (f" {a['accuracy']:>9.3f}" if truth else ""))
    unidentified = list(summary["unidentified"].items())
    if unidentified:
        lines.append("n/i: not identified by the data, η stays where it started (eta0): " + "; ".join(
            f"{name}: {why}" for name, why in unidentified[:5]) + (" ..." if len(unidentified) > 5 else ""))
    if len(summary["annotators"]) > MAX_ANNOTATOR_ROWS:
        lines.append(f"... and {len(summary['annotators']) - MAX_ANNOTATOR_ROWS} more (all in summary.json)")
    if truth:
        lines += ["", truth_line(truth)]
    lines += ["", f"the {suspicious.height} most suspicious pairs (lowest w):"]
    values = pair_values(suspicious) if suspicious.height else []
    for rank, (row, texts) in enumerate(zip(suspicious.iter_rows(named=True), values), start=1):
        known = f", {truth_col}={row[truth_col]}" if truth_col else ""
        lines.append(f"{rank:>3}. w {row['w']:.4f}  z {row['z']:+.3f}  annotator {row['annotator']}  "
                     f"row_id {row['row_id']}{known}{'  FLAGGED' if row['flagged'] else ''}")
        for role, text in zip(("prompt", "chosen", "rejected"), texts):
            lines.append(f"     {role + ':':<9} {excerpt(text)}")
    written = written_paths(summary["outputs"])
    lines += ["", "wrote " + ", ".join(written)]
    return "\n".join(lines) + "\n"


def written_paths(outputs: dict[str, object]) -> list[str]:
    """Every path of summary.json's outputs (a value is one path or a list of them)."""
    return [p for value in outputs.values() for p in ([value] if isinstance(value, str) else value)]


def excerpt(value: str | list[dict]) -> str:
    """One line of a text or of a message list's last message."""
    if isinstance(value, list):
        value = f"[{value[-1].get('role')}] {value[-1].get('content')}" if value else ""
    return textwrap.shorten(str(value), EXCERPT_CHARS, placeholder=" …") or '""'


# ---- the outputs ------------------------------------------------------------------------------------------

def write_dump(flagged: pl.DataFrame, path: Path) -> Path:
    """The flagged pairs in the format of path's extension; CSV gets nested values as JSON text."""
    if table_format(path) == ".csv":
        flagged = flagged.with_columns(
            pl.Series(name, [None if v is None else json.dumps(v) for v in flagged[name].to_list()], pl.String)
            for name, dtype in flagged.schema.items() if dtype.is_nested())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(flagged, path)
    return path


def export_clean(cfg: InspectConfig, flagged_rows: set[int], cache_key: dict, truth_col: str | None,
                 scores_dir: Path) -> Path:
    """The input rows in order, the flagged ones dropped or with their labels swapped, written as
    cfg.export_clean's extension says. `flip` swaps what `repo make-noisy` swaps (chosen/rejected and
    every chosen_<x>/rejected_<x>) and negates the truth column, which then still says "label wrong".
    """
    read = read_pairs(cfg.data, cfg.columns, on_bad_row="skip")  # the row_ids and fingerprint the scorer saw
    if read.dataset_sha != cache_key.get("dataset_sha"):
        raise ValueError(f"{cfg.data} is not the dataset the run's score cache was made from (dataset_sha "
                         f"{read.dataset_sha}, the cache's {cache_key.get('dataset_sha')}); name it with --data")
    if any(s.file.startswith("hf://") for s in read.shards):
        raise ValueError(f"--export-clean needs a local copy of {cfg.data}; download it and pass it with --data")
    raw = pl.concat([read_table(s.file) for s in read.shards], how="diagonal_relaxed")
    if raw.height != sum(s.num_rows for s in read.shards):
        raise ValueError(f"{cfg.data}: read {raw.height} rows, but `repo score` saw "
                         f"{sum(s.num_rows for s in read.shards)}")
    hit = pl.Series(np.isin(np.arange(raw.height), list(flagged_rows)))
    if cfg.action == CleanAction.drop:
        clean = raw.filter(~hit)
    else:
        clean = swap_where(raw, hit, Path(cfg.data), label_columns(raw, cfg.columns, Path(cfg.data)))
        if truth_col in raw.columns:
            clean = clean.with_columns(truth_column(raw, truth_col, cfg.data) ^ hit)
    cfg.export_clean.parent.mkdir(parents=True, exist_ok=True)
    write_table(clean, cfg.export_clean)
    return cfg.export_clean


def label_columns(raw: pl.DataFrame, columns: Columns, source: Path) -> list[tuple[str, str]]:
    """The (chosen, rejected) column pairs a flip swaps: make-noisy's rule under the default names."""
    if (columns.chosen, columns.rejected) == ("chosen", "rejected"):
        return swapped_column_pairs(raw, source)
    return [(columns.chosen, columns.rejected)]


def review_files(path: Path | None) -> list[Path]:
    """--review's tasks and the labeling config beside them; none without --review."""
    return [] if path is None else [path, path.with_suffix(".xml")]


def write_review(flagged: pl.DataFrame, path: Path) -> list[Path]:
    """The flagged pairs as Label Studio tasks, and the labeling config beside them (data/review.py)."""
    tasks = review.tasks(flagged, pair_values(flagged) if flagged.height else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks_file, config_file = review_files(path)
    atomic_write_text(tasks_file, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(config_file, review.LABEL_CONFIG)
    return [tasks_file, config_file]


def write_html(cfg: InspectConfig, summary: dict, pairs: pl.DataFrame, flagged: pl.DataFrame,
               noisy: np.ndarray | None, epoch: int, from_run: bool, annotators: pl.DataFrame,
               truth_col: str | None) -> None:
    """The page of data/noise_report.py, with the plots of --plots, or drawn for it alone; the texts are decoded
    only for the pairs the page shows."""
    shown = flagged.head(noise_report.MAX_PAIRS)
    texts = pair_values(shown) if shown.height else []
    with tempfile.TemporaryDirectory() as scratch:
        plots = ([Path(p) for p in summary["outputs"]["plots"]] if cfg.plots is not None else
                 make_plots(cfg, Path(scratch), pairs, noisy, epoch, from_run, annotators))
        page = noise_report.page(headline(summary), truth_line(summary["truth"]) if summary["truth"] else None,
                                 annotators, plots, flagged, texts, truth_col)
    cfg.html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.html, page)


PLOTS = ("w_hist.png", "annotators.png", "reliability.png", "eta_steps.png", "w_flagged.png")  # what --plots holds


def make_plots(cfg: InspectConfig, folder: Path, pairs: pl.DataFrame, noisy: np.ndarray | None, epoch: int,
               from_run: bool, annotators: pl.DataFrame) -> list[Path]:
    """The w histogram and the annotators' η̂ (with the truth: beside their measured reliability, and the
    reliability diagram of w); for a run also η over its steps and w over its epochs for the flagged pairs."""
    w = pairs["w"].to_numpy()
    cutoff = cfg.threshold if cfg.top_k is None else float(pairs.filter("flagged")["w"].max() or 0.0)
    w_hist, etas, reliability, eta_steps_plot, w_flagged = (folder / name for name in PLOTS)
    made = [noise_plots.w_histogram(w, noisy, cutoff, w_hist), noise_plots.annotator_etas(annotators, etas)]
    if noisy is not None:
        made.append(noise_plots.reliability_diagram(w, noisy, reliability))
    if not from_run:
        return made
    annotator_epochs = [run_folder.read_epoch(cfg.run, run_folder.ANNOTATORS, e)
                        for e in run_folder.epochs_written(cfg.run, run_folder.ANNOTATORS) if e <= epoch]
    eta_steps = run_folder.read_eta_steps(cfg.run).filter(pl.col("epoch") <= epoch)
    flagged_rows = pairs.filter("flagged")["row_id"]  # lowest w first
    history = pl.concat([
        run_folder.read_epoch(cfg.run, run_folder.POSTERIORS, e).select("row_id", "epoch", "w")
        for e in run_folder.epochs_written(cfg.run, run_folder.POSTERIORS) if e <= epoch
    ]).join(pl.DataFrame({"row_id": flagged_rows, "rank": range(flagged_rows.len())}), on="row_id")
    noisy_of = None if noisy is None else dict(zip(pairs["row_id"].to_list(), noisy.tolist()))
    measured = dict(zip(annotators["annotator"], annotators["accuracy"])) if noisy is not None else None
    return made + [
        noise_plots.eta_over_steps(eta_steps, pl.concat(annotator_epochs, how="diagonal_relaxed"), eta_steps_plot,
                                   measured),
        noise_plots.w_over_epochs(history.sort("rank", "epoch"), noisy_of, w_flagged),
    ]
