"""Robustness benchmark: RE-PO against the plain losses and the noise-aware baselines, on real human label noise.

Data: the bundled sentiment pairs (data/sample): up to three labels per pair by disjoint rater groups
(`rater-a`, `rater-b`, `panel-of-3`), truth from the consensus of the raters no label saw. Variants of the
training labels:
  noise       clean (every label turned to the consensus order: the ceiling) | real (as bundled) |
              +20% | +40% (`repo make-noisy --flip-rate` on top of the real noise, per label)
  annotators  groups (the rater groups as annotators) | single (one annotator for every label)
Methods:
  estimate        the noise estimate of the training cache alone (`repo inspect-noise SCORES`), no training
  dpo ipo simpo cpo            the plain losses
  re-<loss>       --robust with its defaults (--robust-mode estimate, stages/configs.ROBUST_DEFAULTS: the estimate
                  first, epoch 0)
  re-<loss>-alg1  the paper's Algorithm 1 (--robust-mode paper)
  re-<loss>-seeded, re-<loss>-prior   --eta-init estimate with the E-step seeded | prior, by name
  re-<loss>-pool  the defaults, with the estimate also learning from --pool-file's pairs (the bundled pool:
                  no held-out sentence), turned into the variant the same way (merged, clean or flipped at the
                  same rate, its own draw); training still sees the training pairs only
  cdpo rdpo       the baselines with ε set to the variant's true flip rate (an oracle the robust methods lack)

Per run: held-out accuracy of the implicit reward against the consensus (stages/evaluate.py, the held-out file
shares no sentence with training), η̂ per annotator against its measured reliability (1 − flip rate of its
training labels, after injection), ROC-AUC of 1 − w for the wrong labels (robust runs and the estimate), wall
time. Several seeds give the spread; a difference smaller than it is not one. Nothing is tuned on the held-out
pairs: the learning rate and epochs are fixed below.

    .venv/bin/python bench/robustness.py --quick      # QUICK below: 4 training runs, ≈ 27 min here (5.5–6.5 min each)
    .venv/bin/python bench/robustness.py --full       # every variant and method, 3 seeds (hours on a CPU)
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

from re_po.data import scoring as score
from re_po.data.atomic import atomic_write_text
from re_po.data.columns import TRUTH
from re_po.data.project import SAMPLE_HELDOUT, SAMPLE_TRAIN
from re_po.data.tables import read_table, sample_rows, swap_where, write_table
from re_po.stages import configs, evaluate, inspect_noise, make_noisy, prepare_model, train

NOISE = {"clean": None, "real": None, "+20%": 0.2, "+40%": 0.4}
ANNOTATORS = ("groups", "single")
ROBUST = ("dpo", "ipo", "simpo", "cpo")
RULES = {"": {}, "-alg1": {"robust_mode": str(configs.RobustMode.paper)},
         "-seeded": {"eta_init": "estimate", "e_step": "seeded"}, "-prior": {"eta_init": "estimate", "e_step": "prior"},
         "-pool": {}}
POOLED = "-pool"  # the rule whose estimate also reads the variant's pool cache
RUNS = {f"re-{loss}{name}": (loss, rule) for loss in ROBUST for name, rule in RULES.items()}
METHODS = ("estimate", *ROBUST, *RUNS, "cdpo", "rdpo")
QUICK = {"noise": ["real", "+20%"], "annotators": ["groups"], "methods": ["estimate", "dpo", "re-dpo"],
         "seeds": [0], "train_pairs": 160}
FULL = {"noise": list(NOISE), "annotators": list(ANNOTATORS), "methods": list(METHODS), "seeds": [0, 1, 2],
        "train_pairs": 0}


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
    mode.add_argument("--quick", action="store_true", help="QUICK (the default)")
    mode.add_argument("--full", action="store_true")
    parser.add_argument("--noise", nargs="*", choices=list(NOISE), help="override the mode's noise levels")
    parser.add_argument("--annotators", nargs="*", choices=ANNOTATORS)
    parser.add_argument("--methods", nargs="*", choices=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int)
    parser.add_argument("--train-file", type=Path, default=SAMPLE_TRAIN, help="pairs to train on (drawn from)")
    parser.add_argument("--heldout-file", type=Path, default=SAMPLE_HELDOUT, help="pairs to evaluate on")
    parser.add_argument("--train-pairs", type=int, help="training pairs drawn from --train-file, with all their "
                        "labels (0: all; default: the mode's)")
    parser.add_argument("--heldout-pairs", type=int, default=0, help="held-out pairs (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, prepared locally)")
    parser.add_argument("--pool-file", type=Path, default=SAMPLE_TRAIN.parent / "pool.jsonl",
                        help="pairs the re-<loss>-pool methods' estimate also learns from (never the held-out ones)")
    parser.add_argument("--estimate-with", type=Path, help="a score cache of more pairs (never the held-out ones) "
                        "that the seeded methods' estimate learns from")
    parser.add_argument("--out", type=Path, default=Path("workspace/bench-robustness"))
    args = parser.parse_args()
    plan = dict(FULL if args.full else QUICK)
    for key in plan:
        if getattr(args, key, None) is not None:
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
            data = training_data(variant, args.train_file, plan["train_pairs"], out / "data")
            cache = score.run(score.ScoreConfig(data=str(data), model=model, out=out / "scores" / variant.name))
            pool = None
            if any(m.endswith(POOLED) for m in plan["methods"]):
                pool_data = training_data(variant, args.pool_file, 0, out / "data", stem=f"{variant.name}.pool")
                pool = score.run(score.ScoreConfig(data=str(pool_data), model=model,
                                                   out=out / "scores" / f"{variant.name}.pool"))
            truth = read_table(data)
            for method in plan["methods"]:
                for seed in plan["seeds"]:
                    name = f"{variant.name}/{method}/seed{seed}"
                    if name in results:
                        continue  # a rerun resumes: finished runs are kept
                    results[name] = one_run(variant, method, seed, cache, truth, heldout, out / "runs" / name, args,
                                            pool if method.endswith(POOLED) else args.estimate_with)
                    _save(results, out / "results.json")
    table = markdown(results, plan)
    (out / "results.md").write_text(table)
    print(table)
    print(f"\n{len(results)} runs in {out}; this invocation took {time.perf_counter() - started:.0f} s", file=sys.stderr)


def training_data(variant: Variant, source: Path, pairs: int, folder: Path, stem: str | None = None) -> Path:
    """The training file (or, named `stem`, the pool file) of a variant: drawn pairs (every label of each; 0: all),
    annotators merged or not, labels turned to the consensus (clean), flips injected (+20%, +40%) or as bundled."""
    base = read_table(source)
    if pairs:
        drawn = sample_rows(base.select("pair_id").unique(maintain_order=True), pairs)["pair_id"]
        base = base.filter(pl.col("pair_id").is_in(drawn.implode()))
    if variant.annotators == "single":
        base = base.with_columns(pl.col("annotator").alias("source_annotator"), pl.lit("all").alias("annotator"))
    if variant.noise == "clean":
        base = swap_where(base, base[TRUTH], source).with_columns(pl.lit(False).alias(TRUTH))
    stem = stem or variant.name
    path = folder / f"{stem}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    rate = NOISE[variant.noise]
    if rate is None:
        write_table(base, path)
        return path
    clean = folder / f"{stem}.base.jsonl"
    write_table(base, clean)
    return make_noisy.run(make_noisy.MakeNoisyConfig(source=clean, target=path, flip_rate=rate, seed=0))


def one_run(variant: Variant, method: str, seed: int, cache: Path, truth: pl.DataFrame, heldout: Path,
            folder: Path, args, estimate_with: Path | None) -> dict:
    record = {"variant": variant.name, "noise": variant.noise, "annotators": variant.annotators, "method": method,
              "seed": seed, "train_flip_rate": float(truth[TRUTH].mean())}
    started = time.perf_counter()
    if method == "estimate":  # before any training: the cache alone
        record.update(noise_record(cache, folder / "inspect"), heldout_accuracy=None, train_seconds=0.0,
                      wall_seconds=time.perf_counter() - started)
        return record
    loss, rule = RUNS.get(method, (method, None))
    epsilon = min(record["train_flip_rate"], 0.45)  # the baselines' ε: the true flip rate (an oracle)
    extra = {"cdpo": {"label_smoothing": epsilon}, "rdpo": {"flip_rate": epsilon}}.get(loss, {})
    if rule is not None:
        extra = {**rule, "estimate_with": estimate_with}
    run_dir = train.run(train.TrainConfig(
        scores=cache, out_dir=folder / "train", loss=loss, robust=rule is not None, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, seed=seed, resume=(folder / "train" / "checkpoints").exists(), **extra,
    ))
    record["train_seconds"] = time.perf_counter() - started
    evaluation = json.loads(evaluate.run(evaluate.EvaluateConfig(
        data=str(heldout), run=run_dir, out=folder / "heldout", ref_out=args.out / "heldout-ref")).read_text())
    record.update(heldout_accuracy=evaluation["reward_accuracy_after"],
                  heldout_loglik_accuracy=evaluation["loglik_accuracy_after"])
    if rule is not None:
        record.update(noise_record(run_dir, folder / "inspect"))
    record["wall_seconds"] = time.perf_counter() - started
    return record


def noise_record(source: Path, out_dir: Path, **inspect: object) -> dict:
    """η̂ against the measured reliability and the flags' ROC-AUC, from a run folder or a score cache; `inspect`:
    more InspectConfig settings (an --export-clean, say)."""
    summary = json.loads((inspect_noise.run(inspect_noise.InspectConfig(
        run=source, out_dir=out_dir, truth_col=TRUTH, **inspect)) / "summary.json").read_text())
    return {"flag_auc": (summary["truth"] or {}).get("roc_auc"),
            "eta": {a["annotator"]: {"eta": a["eta"], "measured": a["accuracy"], "abs_error": a["eta_abs_error"]}
                    for a in summary["annotators"]},
            "eta_abs_error_max": max(a["eta_abs_error"] for a in summary["annotators"])}


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
                    f"| {_mean_sd([r['heldout_accuracy'] for r in runs]) if runs[0]['heldout_accuracy'] is not None else '-'} | {eta} "
                    f"| {_mean_sd([r['eta_abs_error_max'] for r in runs]) if 'eta' in runs[0] else '-'} "
                    f"| {_mean_sd([r['flag_auc'] for r in runs]) if runs[0].get('flag_auc') is not None else '-'} "
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
