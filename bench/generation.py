"""Controlled-sentiment benchmark: what each method's policy writes, judged by a known true reward.

The DPO paper's controlled-sentiment setting on real text (data/sample/continuations, built by
bench/build_generation_data.py): prompts are neutral starts of human-written sentences, the pairs are two
continuations sampled from the reference (SmolLM2-135M-Instruct), the true reward is VADER's compound score of a
continuation, and the labels come from simulated annotators whose noise is known (Bradley–Terry on the true reward,
then flips: a careful one, a hasty one, a spammer, an adversary).
Variants:  1label (one label on each of the 432 pairs, as UltraFeedback or HH-RLHF) | 3labels (three on each, as
           MultiPref: 1,296 labels, three times the steps) | 3labels-144 (three on each of 144 of them: the single
           label's 432 labels, so the same annotation budget and training steps)
Methods (one `repo train` run each, on the variant's labels unless said):
  dpo-true     DPO on the true labels (train-true.jsonl): the ceiling
  dpo          DPO on the noisy labels
  re-dpo       --robust as it defaults (the estimate first, then RE-DPO, each label's loss scaled by its w)
  re-dpo-induced  the same with --robust-form induced (Eq. 5's BCE, the default before the validation below)
  re-dpo-alg1  the paper's Algorithm 1 (--robust-mode paper)
  ipo          IPO on the noisy labels (what re-ipo wraps)
  re-ipo, re-ipo-induced  --robust --loss ipo, as it defaults and with --robust-form induced
  cdpo, rdpo   the baselines, told the variant's true flip rate (an oracle the robust methods lack)
  dpo-clean    DPO on `inspect-noise SCORES --export-clean`: the labels the estimate flags dropped
  re-dpo-judge --robust with a judge (--prior-col) in the probe's place: a stand-in for a modest reward model,
               simulated from the true reward (each pair's true margin plus Gaussian noise as wide as the margins'
               spread, one fixed draw: it orders 76% of the 1label pairs right), never shown to the policy
  re-dpo-judge-induced  the same with --robust-form induced
  dpo-clean-judge  DPO on --export-clean of the estimate with that judge: its flagged labels dropped
Per run: `repo generate` on the held-out prompts (policy against the reference, the same seeds, judged by
re_po.data.judges:vader_compound): the win rate against the reference [95% interval], the mean true reward, KL; `repo
evaluate` on the held-out pairs (their true order): the implicit reward's accuracy; for the robust runs (and the
estimate behind dpo-clean) max |η̂ − measured reliability| and the flags' ROC-AUC; the minutes it all took. The
learning rate, epochs and β were chosen on DPO alone (dpo-true against dpo), before any robust method was run, and
nothing is tuned on the held-out prompts or pairs (bench/README.md says what was chosen and why).

    .venv/bin/python bench/generation.py                       # both variants, every method, seeds 0 and 1
    .venv/bin/python bench/generation.py --variants 1label --methods dpo-true dpo --seeds 0 1 2
Writes  --out (default workspace/bench-generation): a folder per run, results.json (resumable), results.md, and
        reward_kl.png (each policy's mean true reward against its KL from the reference).
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from robustness import _load, _mean_sd, _save, noise_record

from re_po.data import scoring as score
from re_po.data.atomic import atomic_write_text
from re_po.data.columns import TRUTH
from re_po.data.noise_plots import new_figure, save_figure
from re_po.data.project import SAMPLE_DIR
from re_po.data.tables import read_table, sample_pairs, write_table
from re_po.stages import configs, evaluate, generate, prepare_model, train

DATA = SAMPLE_DIR / "continuations"
# variant -> (its labels, how many of its pairs: 0 all). Three labels on 144 pairs are the single-label variant's
# 432 labels: the same annotation budget and the same number of training steps.
VARIANTS = {"1label": ("train-1label.jsonl", 0), "3labels": ("train-3labels.jsonl", 0),
            "3labels-144": ("train-3labels.jsonl", 144)}
ALGORITHM_1 = {"robust_mode": str(configs.RobustMode.paper)}  # configs.ALGORITHM_1, by its name
WITH_JUDGE = configs.EstimateConfig(prior_col="judge_logit")  # the estimate with the simulated judge as its model
INDUCED = {"robust_form": str(configs.RobustForm.induced)}  # Eq. 5's BCE: --robust's form before scaled
# method -> (loss, the --robust settings or None, which labels it trains on)
METHODS = {
    "dpo-true": ("dpo", None, "true"),
    "dpo": ("dpo", None, "noisy"),
    "re-dpo": ("dpo", {}, "noisy"),
    "re-dpo-induced": ("dpo", INDUCED, "noisy"),
    "re-dpo-alg1": ("dpo", ALGORITHM_1, "noisy"),
    "ipo": ("ipo", None, "noisy"),
    "re-ipo": ("ipo", {}, "noisy"),
    "re-ipo-induced": ("ipo", INDUCED, "noisy"),
    "cdpo": ("cdpo", None, "noisy"),
    "rdpo": ("rdpo", None, "noisy"),
    "dpo-clean": ("dpo", None, "clean"),
    "re-dpo-judge": ("dpo", {"estimate": WITH_JUDGE}, "judged"),
    "re-dpo-judge-induced": ("dpo", {"estimate": WITH_JUDGE, **INDUCED}, "judged"),
    "dpo-clean-judge": ("dpo", None, "clean-judged"),
}
JUDGE = "re_po.data.judges:vader_compound"
JUDGE_SEED = 0  # the simulated judge is one fixed model, the same for every training seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--methods", nargs="*", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1])
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=128, help="held-out prompts answered by each policy")
    parser.add_argument("--validation", action="store_true",
                        help="also answer the held-out prompts after the first --prompts (which the table never "
                             "answers): the split on which a default may be chosen without tuning on the table's")
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt and side")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, prepared locally)")
    parser.add_argument("--embed-width", type=int, default=128, help="repo score --embed-width (0: full width)")
    parser.add_argument("--out", type=Path, default=Path("workspace/bench-generation"))
    args = parser.parse_args()

    model = args.model or str(prepare_model.ensure_default_model())
    out = args.out
    results = _load(out / "results.json")
    started = time.perf_counter()
    scoring = {"embed_width": args.embed_width}
    validation = validation_prompts(out / "data", args.prompts) if args.validation else None
    true_cache = score.run(score.ScoreConfig(data=str(DATA / "train-true.jsonl"), model=model, **scoring,
                                             out=out / "scores" / "true"))
    for variant in args.variants:
        labels = variant_labels(variant, out / "data")
        noisy_cache = score.run(score.ScoreConfig(data=str(labels), model=model, out=out / "scores" / variant,
                                                  **scoring))
        flip_rate = float(pl.read_ndjson(labels)[TRUTH].mean())
        for method in args.methods:
            for seed in args.seeds:
                # the true labels are the same pairs in every variant: their ceiling is trained once per seed
                name = f"{'true' if method == 'dpo-true' else variant}/{method}/seed{seed}"
                if name not in results:  # a rerun resumes: finished runs are kept
                    results[name] = one_run(variant, method, seed, labels, noisy_cache, true_cache, flip_rate,
                                            out / "runs" / name, out, model, args)
                    _save(results, out / "results.json")
                if args.validation and "validation_win_rate" not in results[name]:
                    results[name].update(validation_record(out / "runs" / name, validation, args))
                    _save(results, out / "results.json")
    table = markdown(results, args)
    atomic_write_text(out / "results.md", table)
    reward_kl_plot(results, args, out / "reward_kl.png")
    print(table)
    print(f"\n{len(results)} runs in {out}; this invocation took {time.perf_counter() - started:.0f} s", file=sys.stderr)


def variant_labels(variant: str, folder: Path) -> Path:
    """The variant's label file: the bundled one, or `count` of its pairs (a fixed draw) with all their labels."""
    name, count = VARIANTS[variant]
    if not count:
        return DATA / name
    path = folder / f"{variant}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(sample_pairs(read_table(DATA / name), count), path)
    return path


def one_run(variant: str, method: str, seed: int, labels: Path, noisy_cache: Path, true_cache: Path,
            flip_rate: float, folder: Path, out: Path, model: str, args) -> dict:
    loss, robust, data = METHODS[method]
    record = {"variant": "true" if data == "true" else variant, "method": method, "seed": seed,
              "train_flip_rate": flip_rate, "epochs": args.epochs, "lr": args.lr}
    started = time.perf_counter()
    cache = true_cache if data == "true" else noisy_cache  # the runs on other labels replace it below
    if data in ("judged", "clean-judged"):  # the labels with the simulated judge's column, scored
        labels = with_simulated_judge(labels, folder / "judged.jsonl")
        cache = score.run(score.ScoreConfig(data=str(labels), model=model, out=folder / "judged-scores",
                                            embed_width=args.embed_width))
    if data in ("clean", "clean-judged"):  # the estimate of the noisy cache flags labels; DPO trains on the rest
        clean, judge = folder / "clean.jsonl", {"estimate": WITH_JUDGE} if data == "clean-judged" else {}
        record.update(noise_record(cache, folder / "estimate", export_clean=clean, data=str(labels), **judge))
        cache = score.run(score.ScoreConfig(data=str(clean), model=model, out=folder / "scores",
                                            embed_width=args.embed_width))
    epsilon = min(flip_rate, 0.45)  # the baselines' ε: the true flip rate (an oracle)
    extra = {"cdpo": {"label_smoothing": epsilon}, "rdpo": {"flip_rate": epsilon}}.get(loss, {})
    run_dir = train.run(train.TrainConfig(
        scores=cache, out_dir=folder / "train", loss=loss, robust=robust is not None, epochs=args.epochs, lr=args.lr,
        beta=args.beta, batch_size=args.batch_size, seed=seed, resume=(folder / "train" / "checkpoints").exists(),
        **extra, **(robust or {})))
    record["train_seconds"] = time.perf_counter() - started
    evaluation = json.loads(evaluate.run(evaluate.EvaluateConfig(
        data=str(DATA / "heldout-pairs.jsonl"), run=run_dir, out=folder / "heldout",
        ref_out=out / "heldout-ref")).read_text())
    written = json.loads(generate.run(configs.GenerateConfig(
        data=str(DATA / "heldout-prompts.jsonl"), run=run_dir, out=folder / "generate", judge=JUDGE,
        num_samples=args.samples, max_new_tokens=args.max_new_tokens, max_prompts=args.prompts)).read_text())
    record.update(heldout_accuracy=evaluation["reward_accuracy_after"], win_rate=written["win_rate"],
                  win_rate_ci=written["win_rate_ci"], reward=written["reward_policy"],
                  reference_reward=written["reward_reference"], kl=written["kl"])
    if robust is not None:
        record.update(noise_record(run_dir, folder / "inspect"))
    record["wall_seconds"] = time.perf_counter() - started
    return record


def validation_prompts(folder: Path, answered: int) -> Path:
    """The held-out prompts after the first `answered`: the table never answers them."""
    path = folder / "validation-prompts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(read_table(DATA / "heldout-prompts.jsonl").unique("prompt", maintain_order=True)[answered:], path)
    return path


def validation_record(folder: Path, prompts: Path, args) -> dict:
    """A finished run's policy on the validation prompts, with the table's sampling settings and judge."""
    written = json.loads(generate.run(configs.GenerateConfig(
        data=str(prompts), run=folder / "train", out=folder / "validate",
        judge=JUDGE, num_samples=args.samples, max_new_tokens=args.max_new_tokens)).read_text())
    return {"validation_win_rate": written["win_rate"], "validation_win_rate_ci": written["win_rate_ci"],
            "validation_reward": written["reward_policy"], "validation_kl": written["kl"]}


def with_simulated_judge(labels: Path, path: Path) -> Path:
    """`labels` with a column judge_logit: the log-odds that each row's order is right, from a judge simulated on
    the true reward (the row's margin chosen − rejected plus Gaussian noise whose SD is the margins' SD, drawn once
    per pair with JUDGE_SEED), at a fixed scale: the estimate calibrates it."""
    table = read_table(labels)
    margin = (table["chosen_reward"] - table["rejected_reward"]).to_numpy()
    pair_ids = table["pair_id"].unique(maintain_order=True).to_list()
    noise = dict(zip(pair_ids, np.random.default_rng(JUDGE_SEED).normal(0.0, float(margin.std()), len(pair_ids))))
    # a pair's noise is the same whichever order a row states: for a row in the reference order it adds, reversed
    # it subtracts (the order of the pair's first row is the reference here)
    first = {pid: c for pid, c in zip(reversed(table["pair_id"].to_list()), reversed(table["chosen"].to_list()))}
    sign = np.array([1.0 if first[p] == c else -1.0 for p, c in zip(table["pair_id"], table["chosen"])])
    judged = table.with_columns(judge_logit=4.0 * (margin + sign * np.array([noise[p] for p in table["pair_id"]])))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(judged, path)
    return path


def markdown(results: dict, args) -> str:
    """Mean ± standard deviation over seeds per variant and method."""
    rows = ["| labels | method | epochs | seeds | win rate vs reference | mean true reward | KL (nats) | held-out accuracy "
            "| max abs(η̂ − measured) | flag ROC-AUC | minutes/run | validation win rate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, method in [("true", "dpo-true")] + [(v, m) for v in args.variants for m in args.methods]:
        runs = [r for r in results.values() if (r["variant"], r["method"]) == (variant, method)]
        if runs:

            def column(key: str) -> str:
                values = [r[key] for r in runs if r.get(key) is not None]
                return _mean_sd(values) if values else "-"

            labels = "true labels" if method == "dpo-true" else f"{variant} ({runs[0]['train_flip_rate']:.0%} wrong)"
            epochs = "/".join(sorted({str(r.get("epochs", "?")) for r in runs}))
            rows.append(f"| {labels} | {method} | {epochs} | {len(runs)} "
                        f"| {column('win_rate')} | {column('reward')} | {column('kl')} | {column('heldout_accuracy')} "
                        f"| {column('eta_abs_error_max')} | {column('flag_auc')} "
                        f"| {statistics.mean(r['wall_seconds'] for r in runs) / 60:.1f} "
                        f"| {column('validation_win_rate')} |")
    return "\n".join(rows) + "\n"


def reward_kl_plot(results: dict, args, path: Path) -> Path:
    fig, ax = new_figure()
    colors = matplotlib.colormaps["tab20"]  # a colour a method: more methods than the default cycle's ten
    for (variant, marker) in zip(["true"] + args.variants, "Dos^"):
        for i, method in enumerate(args.methods):
            runs = [r for r in results.values() if (r["variant"], r["method"]) == (variant, method)]
            if runs:
                ax.scatter([r["kl"] for r in runs], [r["reward"] for r in runs], marker=marker, color=colors(i),
                           label=f"{method} ({variant})")
    reference = [r["reference_reward"] for r in results.values()]
    if reference:
        ax.axhline(float(np.mean(reference)), color="black", linestyle="--", label="reference")
    ax.set(xlabel="KL(π‖π_ref) per sequence (nats)", ylabel="mean true reward (VADER compound)",
           title="What each policy writes: reward against KL")
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
