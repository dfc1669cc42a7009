"""Robustness benchmark: RE-PO against the plain losses on real human label noise, with extra flips.

Data: the bundled sentiment pairs (data/sample): labels from one rater (`one-rater`) or a panel of five
(`panel-of-5`), truth from the consensus of the raters the label never saw. Variants of the training
pairs:
  noise       real (as bundled) | +20% | +40%: `repo make-noisy --flip-rate` on top of the real noise
  annotators  groups (the two rater groups as annotators) | single (one annotator for every label)
Methods: dpo, ipo, simpo, cpo, each plain and robust (re-*), and the cDPO / rDPO baselines with ε set
to the variant's true flip rate (an oracle the robust methods do not get).

Per run: held-out accuracy of the implicit reward against the consensus (stages/evaluate.py, the
held-out file shares no sentence with training), η̂ per annotator against its measured reliability
(1 − flip rate of its training labels, after injection), ROC-AUC of 1 − w for the wrong labels
(robust runs), wall time. Several seeds give the spread; a difference smaller than it is not one.
Nothing is tuned on the held-out pairs: the learning rate and epochs are fixed below.

    .venv/bin/python bench/robustness.py --quick      # DPO and RE-DPO at +20% and +40%, 2 seeds (≤ 30 min here)
    .venv/bin/python bench/robustness.py --full       # everything above, 3 seeds (hours on a CPU; a GPU run)
Writes  --out (default workspace/bench-robustness): one folder per run, results.json, results.md.
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from data.atomic import atomic_write_text
from data.project import SAMPLE_HELDOUT, SAMPLE_TRAIN
from data.tables import read_table, sample_rows, write_table
from stages import evaluate, inspect_noise, make_noisy, prepare_model, score, train

NOISE = {"real": None, "+20%": 0.2, "+40%": 0.4}
ANNOTATORS = ("groups", "single")
ROBUST = ("dpo", "ipo", "simpo", "cpo")
# RE-PO seeded by the noise estimate of the training cache (+ --estimate-with): epoch 0, η from it, and the
# E-step's evidence the policy's logit plus the estimate's (seeded) or the estimate's alone (prior)
SEEDED = {f"re-{loss}-{rule}": {"loss": loss, "eta_init": "estimate", "e_step": rule}
          for loss in ROBUST for rule in ("seeded", "prior")}
METHODS = (*[m for loss in ROBUST for m in (loss, f"re-{loss}")], *SEEDED, "cdpo", "rdpo")
QUICK = {"noise": ["+20%", "+40%"], "annotators": ["groups"], "methods": ["dpo", "re-dpo"], "seeds": [0, 1]}
FULL = {"noise": list(NOISE), "annotators": list(ANNOTATORS), "methods": list(METHODS), "seeds": [0, 1, 2]}


@dataclass(frozen=True)
class Variant:
    noise: str
    annotators: str

    @property
    def name(self) -> str:
        return f"{self.noise.replace('%', 'pct').replace('+', 'plus')}-{self.annotators}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="DPO and RE-DPO at +20%% and +40%% (default)")
    mode.add_argument("--full", action="store_true")
    parser.add_argument("--noise", nargs="*", choices=list(NOISE), help="override the mode's noise levels")
    parser.add_argument("--annotators", nargs="*", choices=ANNOTATORS)
    parser.add_argument("--methods", nargs="*", choices=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--train-file", type=Path, default=SAMPLE_TRAIN, help="pairs to train on (drawn from)")
    parser.add_argument("--heldout-file", type=Path, default=SAMPLE_HELDOUT, help="pairs to evaluate on")
    parser.add_argument("--train-pairs", type=int, default=600, help="training pairs drawn from --train-file")
    parser.add_argument("--heldout-pairs", type=int, default=304, help="held-out pairs (all 304 by default)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, prepared locally)")
    parser.add_argument("--estimate-with", type=Path, help="a score cache of more pairs (never the held-out ones) "
                        "that the seeded methods' estimate learns from")
    parser.add_argument("--out", type=Path, default=Path("workspace/bench-robustness"))
    args = parser.parse_args()
    plan = dict(FULL if args.full else QUICK)
    for key in plan:
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)

    model = args.model or str(prepare_model.ensure_default_model())
    out = args.out
    heldout = out / "data" / "heldout.jsonl"
    heldout.parent.mkdir(parents=True, exist_ok=True)
    write_table(sample_rows(read_table(args.heldout_file), args.heldout_pairs), heldout)
    results = _load(out / "results.json")
    started = time.perf_counter()
    for noise in plan["noise"]:
        for annotators in plan["annotators"]:
            variant = Variant(noise, annotators)
            data = training_data(variant, args.train_file, args.train_pairs, out / "data")
            cache = score.run(score.ScoreConfig(data=str(data), model=model, out=out / "scores" / variant.name))
            truth = read_table(data)
            for method in plan["methods"]:
                for seed in plan["seeds"]:
                    name = f"{variant.name}/{method}/seed{seed}"
                    if name in results:
                        continue  # a rerun resumes: finished runs are kept
                    results[name] = one_run(variant, method, seed, cache, truth, heldout, out / "runs" / name, args)
                    _save(results, out / "results.json")
    table = markdown(results, plan)
    (out / "results.md").write_text(table)
    print(table)
    print(f"\n{len(results)} runs in {out}; this invocation took {time.perf_counter() - started:.0f} s", file=sys.stderr)


def training_data(variant: Variant, source: Path, pairs: int, folder: Path) -> Path:
    """The training file of a variant: drawn pairs, annotators merged or not, flips injected or not."""
    base = sample_rows(read_table(source), pairs)
    if variant.annotators == "single":
        base = base.with_columns(pl.col("annotator").alias("source_annotator"), pl.lit("all").alias("annotator"))
    path = folder / f"{variant.name}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    rate = NOISE[variant.noise]
    if rate is None:
        write_table(base, path)
        return path
    clean = folder / f"{variant.name}.base.jsonl"
    write_table(base, clean)
    return make_noisy.run(make_noisy.MakeNoisyConfig(source=clean, out=path, flip_rate=rate, seed=0))


def one_run(variant: Variant, method: str, seed: int, cache: Path, truth: pl.DataFrame, heldout: Path,
            folder: Path, args) -> dict:
    seeded = SEEDED.get(method, {})
    loss, robust = seeded.get("loss", method.removeprefix("re-")), method.startswith("re-")
    if seeded:
        extra_seeded = {"eta_init": seeded["eta_init"], "e_step": seeded["e_step"], "estimate_with": args.estimate_with}
    else:
        extra_seeded = {}
    flip_rate = float(truth["is_flipped"].mean())
    epsilon = min(flip_rate, 0.45)  # the baselines' ε: the true flip rate (an oracle)
    extra = {"cdpo": {"label_smoothing": epsilon}, "rdpo": {"flip_rate": epsilon}}.get(loss, {})
    started = time.perf_counter()
    run_dir = train.run(train.TrainConfig(
        scores=cache, out_dir=folder / "train", loss=loss, robust=robust, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, seed=seed, resume=(folder / "train" / "checkpoints").exists(), **extra,
        **extra_seeded,
    ))
    train_seconds = time.perf_counter() - started
    evaluation = json.loads(evaluate.run(evaluate.EvaluateConfig(
        data=str(heldout), run=run_dir, out=folder / "heldout", ref_out=args.out / "heldout-ref")).read_text())
    record = {"variant": variant.name, "noise": variant.noise, "annotators": variant.annotators, "method": method,
              "seed": seed, "train_flip_rate": flip_rate, "train_seconds": train_seconds,
              "heldout_accuracy": evaluation["reward_accuracy_after"],
              "heldout_loglik_accuracy": evaluation["loglik_accuracy_after"],
              "wall_seconds": time.perf_counter() - started}
    if robust:
        summary = json.loads((inspect_noise.run(inspect_noise.InspectConfig(
            run=run_dir, out_dir=folder / "inspect", truth_col="is_flipped")) / "summary.json").read_text())
        record["flag_auc"] = summary["truth"]["roc_auc"]
        record["eta"] = {a["annotator"]: {"eta": a["eta"], "measured": a["accuracy"], "abs_error": a["eta_abs_error"]}
                         for a in summary["annotators"]}
        record["eta_abs_error_max"] = max(a["eta_abs_error"] for a in summary["annotators"])
    return record


def markdown(results: dict, plan: dict) -> str:
    """Mean ± standard deviation over seeds per variant and method."""
    rows = ["| noise | annotators | method | seeds | held-out accuracy | η̂ (measured) per annotator "
            "| max abs(η̂ − measured) | flag ROC-AUC | train s/run |", "|---|---|---|---|---|---|---|---|---|"]
    for noise in plan["noise"]:
        for annotators in plan["annotators"]:
            for method in plan["methods"]:
                runs = [r for r in results.values()
                        if (r["noise"], r["annotators"], r["method"]) == (noise, annotators, method)]
                if not runs:
                    continue
                eta = "-"
                if "eta" in runs[0]:
                    eta = ", ".join(f"{k} {_mean_sd([r['eta'][k]['eta'] for r in runs])} ({v['measured']:.3f})"
                                    for k, v in runs[0]["eta"].items())
                rows.append(
                    f"| {noise} | {annotators} | {method} | {len(runs)} "
                    f"| {_mean_sd([r['heldout_accuracy'] for r in runs])} | {eta} "
                    f"| {_mean_sd([r['eta_abs_error_max'] for r in runs]) if 'eta' in runs[0] else '-'} "
                    f"| {_mean_sd([r['flag_auc'] for r in runs]) if 'flag_auc' in runs[0] else '-'} "
                    f"| {statistics.mean(r['train_seconds'] for r in runs):.0f} |")
    return "\n".join(rows) + "\n"


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(results: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
