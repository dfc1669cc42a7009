"""`repo demo`: the whole pipeline on the embedded default, with a closing summary.

Reads   the bundled sentiment pairs (data/sample: real human labels with real noise, up to three rater
        groups per pair, truth from the consensus of raters no label saw) and SmolLM2-135M-Instruct
        prepared locally.
Writes  under `workspace`: scores/ (stage one), train/ (stage two, RE-DPO with --robust's defaults: the
        noise estimate of the cache first, as epoch 0), heldout/ (stages/evaluate.py: the held-out pairs
        scored by the reference and by the trained policy), inspect/epoch-0/ (report and summary.json of epoch
        0, the estimate before training), inspect/epoch-E/ (the same after training, with plots/ and report.html)
        and demo-summary.json.
Run     repo demo [--train-pairs N] [--heldout-pairs N] [--epochs E]

The summary compares each annotator group's η̂ before training (the estimate) and after it with its
measured reliability, scores the flags of both against the truth, and measures held-out accuracy: the
share of held-out pairs whose consensus order the policy's implicit reward β·(ρ(a) − ρ(b)) reproduces
(ties count ½), before and after training (stages/evaluate.py).
"""

import json
import sys
from pathlib import Path

from re_po.data import folders, run_folder, schema
from re_po.data.tables import read_table, sample_rows, write_table
from re_po.stages import checkpoint, evaluate, inspect_noise, prepare_model, score, train
from re_po.stages.configs import DemoConfig


def run(cfg: DemoConfig) -> Path:
    """Score, train with --robust, inspect, evaluate on held-out pairs; returns demo-summary.json."""
    folders.check_outputs({"--workspace": cfg.workspace}, {"--train-data": cfg.train_data,
                                                           "--heldout-data": cfg.heldout_data, "--model": cfg.model})
    ws = folders.claim(Path(cfg.workspace), "demo", lambda f: (f / "demo-summary.json").is_file()
                       or (f / "scores" / schema.MANIFEST).is_file())
    model = cfg.model or str(prepare_model.ensure_default_model())
    train_file = _sample_rows(cfg.train_data, cfg.train_pairs, ws / "data" / "train.jsonl")
    heldout_file = _sample_rows(cfg.heldout_data, cfg.heldout_pairs, ws / "data" / "heldout.jsonl")

    _step("stage one: reference log-probs of the training pairs")
    scores = score.run(score.ScoreConfig(data=str(train_file), model=model, out=ws / "scores"))

    _step(f"stage two: {cfg.loss} --robust")
    run_dir = train.run(
        train.TrainConfig(
            scores=scores,
            out_dir=ws / "train",
            policy=model,
            loss=cfg.loss,
            robust=True,
            epochs=cfg.epochs,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            resume=checkpoint.latest(ws / "train" / run_folder.CHECKPOINTS) is not None,
        )
    )
    _step("held-out pairs: reference and trained policy")
    evaluation = json.loads(
        evaluate.run(
            evaluate.EvaluateConfig(
                data=str(heldout_file), run=run_dir, out=ws / "heldout", truth_col=cfg.truth_col
            )
        ).read_text()
    )

    _step("inspect-noise: before training (epoch 0, the estimate) and after it")
    before_dir, after_dir = (inspect_noise.default_out_dir(run_dir, epoch) for epoch in (0, cfg.epochs))
    before = _inspect(run_dir, before_dir, cfg.truth_col, epoch=0)
    after = _inspect(run_dir, after_dir, cfg.truth_col, plots=after_dir / "plots", html=after_dir / "report.html")
    summary = {
        "train_labels": after["labels"],
        "train_pairs": after["pairs"],
        "heldout": evaluation,
        "annotators": _annotators(after),
        "flags": after["truth"],
        "before_training": {"annotators": _annotators(before), "flags": before["truth"]},
        "outputs": {"run": str(run_dir), "inspect": str(after_dir), "plots": str(after_dir / "plots"),
                    "report": str(after_dir / "report.html"), "inspect_before": str(before_dir)},
    }
    path = ws / "demo-summary.json"
    run_folder.write_json(summary, path)
    print(format_summary(summary), file=sys.stderr)
    return path


def _inspect(run_dir: Path, out_dir: Path, truth_col: str, epoch: int | None = None,
             plots: Path | None = None, html: Path | None = None) -> dict:
    folder = inspect_noise.run(inspect_noise.InspectConfig(run=run_dir, out_dir=out_dir, epoch=epoch, plots=plots,
                                                           html=html, truth_col=truth_col))
    return json.loads((folder / "summary.json").read_text())


def _annotators(noise: dict) -> list[dict]:
    keys = ("annotator", "labels", "eta", "accuracy", "eta_abs_error", "flagged")
    return [{k: a.get(k) for k in keys} for a in noise["annotators"]]


def format_summary(summary: dict) -> str:
    h, before = summary["heldout"], summary["before_training"]
    eta_before = {a["annotator"]: a for a in before["annotators"]}
    lines = [
        "",
        "=" * 78,
        "re-po demo: RE-DPO on real human labels with real noise",
        "=" * 78,
        "annotator reliability: η̂ before training (the estimate) and after it (the EM), against the reliability",
        f"measured on the consensus; {summary['train_labels']} training labels of {summary['train_pairs']} pairs",
        f"  {'annotator':<14}{'labels':>7}{'measured':>10}{'η̂ before':>10}{'|error|':>9}"
        f"{'η̂ after':>10}{'|error|':>9}{'flagged':>9}",
    ]
    for a in summary["annotators"]:
        b = eta_before[a["annotator"]]
        lines.append(
            f"  {a['annotator']:<14}{a['labels']:>7}{_num(a['accuracy']):>10}{b['eta']:>10.3f}"
            f"{_num(b['eta_abs_error']):>9}{a['eta']:>10.3f}{_num(a['eta_abs_error']):>9}{a['flagged']:>9}"
        )
    for when, flags in (("before", before["flags"]), ("after", summary["flags"])):
        if flags:
            lines.append(
                f"flags {when:<6} (w < 0.5): {flags['noisy']} wrong labels of {summary['train_labels']}; "
                f"precision {_num(flags['precision'])}, recall {_num(flags['recall'])}, "
                f"ROC-AUC of 1 − w {_num(flags['roc_auc'])}"
            )
    lines += [
        f"held-out accuracy against the consensus ({h['pairs']} pairs, no training sentence among them):",
        f"  implicit reward β·(ρ(a) − ρ(b)):   before {h['reward_accuracy_before']:.3f}"
        f"  after {h['reward_accuracy_after']:.3f}",
        f"  per-token log-likelihood margin:   before {h['loglik_accuracy_before']:.3f}"
        f"  after {h['loglik_accuracy_after']:.3f}",
        f"  (the single labels themselves agree with the consensus on {h['label_accuracy']:.3f})",
        f"plots: {summary['outputs']['plots']}; the report to open in a browser: {summary['outputs']['report']}",
        "=" * 78,
    ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _sample_rows(source: Path, n: int, dest: Path) -> Path:
    """`source` itself, or n of its rows drawn with a fixed seed (the files are sorted by domain and
    annotator, so the first rows would all be of one kind), written to `dest`."""
    if n <= 0:
        return Path(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_table(sample_rows(read_table(Path(source)), n), dest)
    return dest


def _step(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr)
