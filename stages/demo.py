"""`repo demo`: the whole pipeline on the embedded default, with a closing summary.

Reads   the bundled controlled-sentiment data (data/sample/continuations: two continuations of each prompt sampled
        from SmolLM2 itself, three labels per pair by simulated annotators whose noise is known, a careful one, a
        hasty one, a spammer and an adversary; the true reward is VADER's sentiment of the continuation) and
        SmolLM2-135M-Instruct prepared locally.
Writes  under `workspace`: scores/ (stage one), train/ (stage two, RE-DPO with --robust's defaults: the noise
        estimate of the cache first, as epoch 0), train-dpo/ (plain DPO on the same labels, with
        --compare-dpo), heldout/ (stages/evaluate.py: the held-out pairs scored by the reference and the policy),
        generate/ and generate-dpo/ (stages/generate.py: what each policy writes to the held-out prompts against
        what the reference writes, judged by the true reward), inspect/epoch-0/ (the estimate before training),
        inspect/epoch-E/ (after training, with plots/ and report.html) and demo-summary.json.
Run     repo demo [--train-pairs N] [--epochs E] [--compare-dpo]

The summary compares each annotator's η̂ before training (the estimate) and after it with its measured reliability,
scores the flags of both against the truth, and judges the policies by what they write: each one's win rate against
the reference and RE-DPO's against DPO (sample s of one against sample s of the other, drawn with the same seeds),
with 95% intervals, the mean true reward and the KL from the reference; and the held-out accuracy of the implicit
reward β·(ρ(a) − ρ(b)) against the truth, before and after training.
"""

import json
import sys
from pathlib import Path

import polars as pl

from re_po.data import checkpoint, folders, run_folder
from re_po.data import scoring as score
from re_po.data.tables import read_table, sample_pairs, write_table
from re_po.pipeline import generation_metrics
from re_po.stages import evaluate, generate, inspect_noise, prepare_model, train
from re_po.stages.configs import DemoConfig, GenerateConfig

SAMPLES = 2  # per prompt and policy


def run(cfg: DemoConfig) -> Path:
    """Score, train with --robust (and plain DPO), judge what each writes, evaluate, inspect; returns
    demo-summary.json."""
    folders.check_outputs({"--workspace": cfg.workspace}, {
        "--train-data": cfg.train_data, "--heldout-data": cfg.heldout_data, "--prompts": cfg.prompts,
        "--model": cfg.model})
    ws = folders.claim(Path(cfg.workspace), "demo")
    model = cfg.model or str(prepare_model.ensure_default_model())
    train_file = _sample_pairs(cfg.train_data, cfg.train_pairs, ws / "data" / "train.jsonl")
    heldout_file = _sample_pairs(cfg.heldout_data, cfg.heldout_pairs, ws / "data" / "heldout.jsonl")

    _step("stage one: reference log-probs of the training pairs")
    scores = score.run(score.ScoreConfig(data=str(train_file), model=model, out=ws / "scores"))
    runs = {"re-dpo": _train(cfg, scores, model, ws / "train", robust=True)}
    if cfg.compare_dpo:
        runs["dpo"] = _train(cfg, scores, model, ws / "train-dpo", robust=False)

    _step("what each policy writes to the held-out prompts, against the reference, judged by the true reward")
    written = {name: _generate(cfg, run_dir, ws / ("generate" if name == "re-dpo" else f"generate-{name}"))
               for name, run_dir in runs.items()}
    generation = {name: {key: result[key] for key in ("win_rate", "win_rate_ci", "ties", "reward_policy",
                                                     "reward_reference", "kl", "length_policy")}
                  for name, (result, _) in written.items()}
    if "dpo" in written:  # the same prompts and seeds: sample s of RE-DPO against sample s of DPO
        rate, interval, ties = generation_metrics.win_rate(
            generate.grid(written["re-dpo"][1], "policy", "reward"), generate.grid(written["dpo"][1], "policy", "reward"),
            cfg.seed)
        generation["re-dpo_vs_dpo"] = {"win_rate": rate, "win_rate_ci": list(interval), "ties": ties}

    _step("held-out pairs: reference and trained policy")
    evaluation = json.loads(evaluate.run(evaluate.EvaluateConfig(
        data=str(heldout_file), run=runs["re-dpo"], out=ws / "heldout", truth_col=cfg.truth_col)).read_text())

    _step("inspect-noise: before training (epoch 0, the estimate) and after it")
    run_dir = runs["re-dpo"]
    before_dir, after_dir = (inspect_noise.default_out_dir(run_dir, epoch) for epoch in (0, cfg.epochs))
    before = _inspect(run_dir, before_dir, cfg.truth_col, epoch=0)
    after = _inspect(run_dir, after_dir, cfg.truth_col, plots=after_dir / "plots", html=after_dir / "report.html")
    summary = {
        "train_labels": after["labels"],
        "train_pairs": after["pairs"],
        "generation": {**generation["re-dpo"], "by_method": generation},
        "heldout": evaluation,
        "annotators": _annotators(after),
        "flags": after["truth"],
        "before_training": {"annotators": _annotators(before), "flags": before["truth"]},
        "outputs": {"run": str(run_dir), "inspect": str(after_dir), "plots": str(after_dir / "plots"),
                    "report": str(after_dir / "report.html"), "inspect_before": str(before_dir),
                    "generation_report": str(ws / "generate" / "report.html")},
    }
    path = ws / "demo-summary.json"
    run_folder.write_json(summary, path)
    print(format_summary(summary), file=sys.stderr)
    return path


def _train(cfg: DemoConfig, scores: Path, model: str, out: Path, robust: bool) -> Path:
    _step(f"stage two: {cfg.loss}{' --robust' if robust else ' (plain, on the same labels)'}")
    return train.run(train.TrainConfig(
        scores=scores, out_dir=out, policy=model, loss=cfg.loss, robust=robust, epochs=cfg.epochs, lr=cfg.lr,
        batch_size=cfg.batch_size, seed=cfg.seed, resume=checkpoint.latest(out / run_folder.CHECKPOINTS) is not None))


def _generate(cfg: DemoConfig, run_dir: Path, out: Path) -> tuple[dict, pl.DataFrame]:
    """generation.json's content and the samples of one policy against the reference."""
    path = generate.run(GenerateConfig(data=str(cfg.prompts), run=run_dir, out=out, judge=cfg.judge,
                                       num_samples=SAMPLES, max_new_tokens=cfg.max_new_tokens,
                                       max_prompts=cfg.generate_prompts, seed=cfg.seed))
    return json.loads(path.read_text()), generate.read_samples(out)


def _inspect(run_dir: Path, out_dir: Path, truth_col: str, epoch: int | None = None,
             plots: Path | None = None, html: Path | None = None) -> dict:
    folder = inspect_noise.run(inspect_noise.InspectConfig(run=run_dir, out_dir=out_dir, epoch=epoch, plots=plots,
                                                           html=html, truth_col=truth_col))
    return json.loads((folder / "summary.json").read_text())


def _annotators(noise: dict) -> list[dict]:
    keys = ("annotator", "labels", "eta", "identified", "accuracy", "eta_abs_error", "flagged")
    return [{k: a.get(k) for k in keys} for a in noise["annotators"]]


def format_summary(summary: dict) -> str:
    h, before = summary["heldout"], summary["before_training"]
    eta_before = {a["annotator"]: a for a in before["annotators"]}
    lines = [
        "",
        "=" * 78,
        "re-po demo: RE-DPO on noisy labels (a careful, a hasty, a spamming and an adversarial annotator)",
        "=" * 78,
        "annotator reliability: η̂ before training (the estimate) and after it (the EM), against the reliability",
        f"measured on the truth; {summary['train_labels']} training labels of {summary['train_pairs']} pairs",
        f"  {'annotator':<14}{'labels':>7}{'measured':>10}{'η̂ before':>12}{'|error|':>9}"
        f"{'η̂ after':>12}{'|error|':>9}{'flagged':>9}",
    ]
    for a in summary["annotators"]:
        b = eta_before[a["annotator"]]
        lines.append(
            f"  {a['annotator']:<14}{a['labels']:>7}{_num(a['accuracy']):>10}{_eta(b):>12}"
            f"{_num(b['eta_abs_error']):>9}{_eta(a):>12}{_num(a['eta_abs_error']):>9}{a['flagged']:>9}"
        )
    if any(b.get("identified") is False for b in before["annotators"]):
        lines.append("  n/i: the data do not identify this η (inspect/epoch-0/report.txt says why): it stays at eta0")
    for when, flags in (("before", before["flags"]), ("after", summary["flags"])):
        if flags:
            lines.append(
                f"flags {when:<6} (w < 0.5): {flags['noisy']} wrong labels of {summary['train_labels']}; "
                f"precision {_num(flags['precision'])}, recall {_num(flags['recall'])}, "
                f"ROC-AUC of 1 − w {_num(flags['roc_auc'])}"
            )
    lines += _generation_lines(summary["generation"]["by_method"])
    lines += [
        f"held-out accuracy against the truth ({h['pairs']} pairs of held-out prompts):",
        f"  implicit reward β·(ρ(a) − ρ(b)):   before {h['reward_accuracy_before']:.3f}"
        f"  after {h['reward_accuracy_after']:.3f}",
        f"  per-token log-likelihood margin:   before {h['loglik_accuracy_before']:.3f}"
        f"  after {h['loglik_accuracy_after']:.3f}",
        f"reports to open in a browser: {summary['outputs']['generation_report']} (what the policy writes), "
        f"{summary['outputs']['report']} (which labels to trust)",
        "=" * 78,
    ]
    return "\n".join(lines)


def _generation_lines(by_method: dict) -> list[str]:
    lines = ["what the policies write to the held-out prompts, judged by the true reward (VADER sentiment):"]
    for name, g in by_method.items():
        low, high = g["win_rate_ci"]
        if name.endswith("_vs_dpo"):
            lines.append(f"  RE-DPO against DPO:        win rate {g['win_rate']:.3f} [{low:.3f}, {high:.3f}]")
            continue
        lines.append(f"  {name.upper():<6} against the reference: win rate {g['win_rate']:.3f} [{low:.3f}, {high:.3f}], "
                     f"mean reward {g['reward_policy']:.3f} (reference {g['reward_reference']:.3f}), "
                     f"KL {g['kl']:.2f} nats")
    return lines


def _eta(annotator: dict) -> str:
    """η̂, or η0 marked n/i where the estimate did not identify it (training holds it there)."""
    return f"{annotator['eta']:.3f}{' n/i' if annotator.get('identified') is False else ''}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _sample_pairs(source: Path, n: int, dest: Path) -> Path:
    """`source` itself, or n of its pairs with all their labels (tables.sample_pairs), written to `dest`."""
    if n <= 0:
        return Path(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_table(sample_pairs(read_table(Path(source)), n), dest)
    return dest


def _step(text: str) -> None:
    print(f"\n== {text}", file=sys.stderr)
