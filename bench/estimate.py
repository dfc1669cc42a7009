"""Noise-estimate benchmark: how well `repo inspect-noise SCORES` finds the wrong labels before any training.

Data: every bundled sentiment pair (data/sample: train + heldout + pool, real human labels by up to three
rater groups per pair, `rater-a`, `rater-b`, `panel-of-3`; truth from the consensus of the raters no label
saw), scored once by the reference model (SmolLM2-135M-Instruct, embeddings at the middle and last layer).
Scenarios:
  real                    the labels as bundled (several per pair: one true order per pair)
  real, agreement alone   the same without the probe (--no-probe)
  +20%, +40%              extra flips of `repo make-noisy --flip-rate` (per annotator, seed 0) on top of the real noise
  one label per pair      only the first label of each pair: the single-annotator case, where the probe alone
                          carries the estimate
  3 synthetic annotators  that one label per pair's consensus order, labelled three times, each label flipped
                          with probability 5% / 20% / 35% (seed 0)
The flipped and multi-labelled variants are built from the scored rows by swapping every chosen/rejected column
(what rescoring the `repo make-noisy` output gives, bit for bit: the scorer scores each pair once in a fixed
order and orients it per row; checked here on a subset against a real rescore).

Per scenario: each annotator's η̂ beside its measured reliability (share of its labels that agree with the
consensus), the largest |η̂ − measured|, ROC-AUC of 1 − w for the wrong labels, the same ROC-AUC with the
measured η put in place of η̂ (an oracle: what the same model's scores allow when η is exactly right, so the
gap between the two is what a better estimate of η could still gain), the probe's accuracy against the
consensus, and the estimator's seconds. Then the cost: stage one with and without embeddings side by side on
the same pairs, the cache's bytes per pair, and the estimate's share of one training epoch (DPO, measured
on a few steps). Nothing here is tuned on a truth column; the estimator's settings are its defaults.

    .venv/bin/python bench/estimate.py                   # scores into workspace/bench-estimate first (~8 min)
    .venv/bin/python bench/estimate.py --scores DIR      # reuse a cache of all bundled pairs

--widths 0 128 64 (issue 26, item 2; with --scores, a cache scored at full width: `repo score --embed-width 0`):
the scenarios again with the cache's states projected to each width as `repo score --embed-width W` stores
them (the float16 states times pipeline/projection.matrix, rounded to float16 again: the scorer projects the
float32 means before their one rounding, a difference of float16 rounding), side by side with the full width (0),
and the cache's bytes per row on disk (all columns, and the states alone) at each.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from re_po.data import estimate, noise_inputs, schema
from re_po.data import scoring as score
from re_po.data.columns import TRUTH
from re_po.data.project import SAMPLE_HELDOUT, SAMPLE_TRAIN
from re_po.data.tables import swap_where, swapped_column_pairs, write_table
from re_po.pipeline import noise_metrics, projection, reliability
from re_po.stages import make_noisy, prepare_model, train

SAMPLE = SAMPLE_TRAIN.parent
SPLITS = ("train.jsonl", "heldout.jsonl", "pool.jsonl")
THREE = {"flip-5%": 0.05, "flip-20%": 0.20, "flip-35%": 0.35}
MAX_LENGTH, MAX_PROMPT_LENGTH = 128, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, help="a score cache of all bundled pairs (else scored into --out)")
    parser.add_argument("--out", type=Path, default=Path("workspace/bench-estimate"))
    parser.add_argument("--no-cost", action="store_true", help="skip the stage-one and training timings")
    parser.add_argument("--cost-only", action="store_true", help="only the timings (after a run without them)")
    parser.add_argument("--widths", nargs="+", help="the projected widths to compare (0: full width; 128s: "
                                                    "scaled by the first part's RMS first)")
    parser.add_argument("--scenarios", nargs="+", help="--widths: only these scenarios (by name)")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f} (2 cores)", file=sys.stderr)
    model = str(prepare_model.ensure_default_model())
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.scores or score_all(model, args.out)
    frame, key = schema.read_scores(cache)
    if args.widths:
        results = widths(frame, key, args.widths, args.scenarios)
        (args.out / "widths.json").write_text(json.dumps(results, indent=1))
        print(widths_markdown(results))
        return
    if args.cost_only:
        previous = json.loads((args.out / "results.json").read_text())
        previous["flip_check"] = check_flips_match_a_rescore(model, args.out)
        previous["cost"] = cost(model, args.out, previous["scenarios"][0]["seconds"], frame.height)
        (args.out / "results.json").write_text(json.dumps(previous, indent=1))
        print(markdown(previous))
        return
    rows = [scenario("real", frame, key, estimate.EstimateConfig()),
            scenario("real, agreement alone", frame, key, estimate.EstimateConfig(probe=False))]
    for rate in (0.2, 0.4):
        flipped = flip_rows(frame, make_noisy.choose_flips(frame["annotator"].to_list(),
                                                           dict.fromkeys(frame["annotator"].unique().to_list(), rate), 0))
        rows.append(scenario(f"+{rate:.0%}", flipped, key, estimate.EstimateConfig()))
    single = frame.unique("pair_id", keep="first", maintain_order=True)
    rows.append(scenario("one label per pair", single, key, estimate.EstimateConfig()))
    rows.append(scenario("3 synthetic annotators", three_annotators(single), key, estimate.EstimateConfig()))
    results = {"scenarios": rows, "cache": str(cache)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))  # kept should the timings fail
    if not args.no_cost:
        results["flip_check"] = check_flips_match_a_rescore(model, args.out)
        results["cost"] = cost(model, args.out, rows[0]["seconds"], frame.height)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(markdown(results))


def projected(frame: pl.DataFrame, key: dict, width: int, scaled: bool = False) -> tuple[pl.DataFrame, dict]:
    """The cache rows with every stored state projected to `width` as `repo score --embed-width` does, and its key.
    scaled (a variant `repo score` does not have): each layer's states first divided, dimension by dimension, by
    the RMS of chosen − rejected over the first part's 2,048 rows (a sketch fitted on the first part)."""
    names = schema.stored_embedding_columns(key)
    hidden = frame.schema[names[0]].size
    if key["embed_projection"] or not projection.projects(hidden, width):
        return frame, key
    matrix = projection.matrix(hidden, width)
    kind = pl.Array(schema.EMBEDDING_DTYPE, width)
    columns = []
    for layer in schema.embed_layers(key):
        prompt, chosen, rejected = schema.embedding_columns(layer)
        d = frame[chosen].head(2048).to_numpy().astype(np.float64) - frame[rejected].head(2048).to_numpy()
        rms = np.sqrt(np.mean(d ** 2, axis=0)).clip(min=1e-6) if scaled else np.ones(hidden)
        columns += [pl.Series(name, ((frame[name].to_numpy().astype(np.float32) / rms.astype(np.float32)) @ matrix
                                     ).astype(np.float16), dtype=kind) for name in (prompt, chosen, rejected)]
    described = projection.describe(hidden, width) + (" scaled by the first part's RMS" if scaled else "")
    return frame.with_columns(columns), {**key, "embed_projection": described}


def bytes_per_row(frame: pl.DataFrame) -> float:
    """Bytes per row of `frame` written as a cache part is (pyarrow's Parquet writer, its defaults)."""
    buffer = pa.BufferOutputStream()
    pq.write_table(frame.to_arrow(), buffer)
    return buffer.getvalue().size / frame.height


def widths(frame: pl.DataFrame, key: dict, chosen: list[str], names: list[str] | None = None) -> list[dict]:
    """Every probe scenario of main (not the agreement alone: it reads no state), or those `names`, at each width."""
    rows = []
    for spec in chosen:
        at, at_key = projected(frame, key, int(spec.rstrip("s")), scaled=spec.endswith("s"))
        columns = schema.stored_embedding_columns(at_key)
        shown = f"{at.schema[columns[0]].size}{'s' if spec.endswith('s') else ''}"
        sizes = {"bytes_per_row": bytes_per_row(at), "state_bytes_per_row": bytes_per_row(at.select(columns))}
        print(f"width {shown}: {sizes}, load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
        cases = [("real", at)]
        for rate in (0.2, 0.4):
            cases.append((f"+{rate:.0%}", flip_rows(at, make_noisy.choose_flips(
                at["annotator"].to_list(), dict.fromkeys(at["annotator"].unique().to_list(), rate), 0))))
        single = at.unique("pair_id", keep="first", maintain_order=True)
        cases += [("one label per pair", single), ("3 synthetic annotators", three_annotators(single))]
        for name, cached in cases:
            if names and name not in names:
                continue
            rows.append({"width": shown, **sizes, **scenario(name, cached, at_key, estimate.EstimateConfig())})
    return rows


def widths_markdown(rows: list[dict]) -> str:
    lines = ["| scenario | width | max abs(η̂ − measured) | flag ROC-AUC | model accuracy | seconds |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["scenario"], -int(str(r["width"]).rstrip("s")), str(r["width"]))):
        accuracy = "–" if r["model_accuracy"] is None else f"{r['model_accuracy']:.3f}"
        lines.append(f"| {r['scenario']} | {r['width']} | {r['max_abs_error']:.3f} | {r['roc_auc']:.3f} | {accuracy} | "
                     f"{r['seconds']:.1f} |")
    sizes = {r["width"]: (r["bytes_per_row"], r["state_bytes_per_row"]) for r in rows}
    lines += ["", "| width | cache bytes/row | of which the states |", "|---|---|---|"]
    lines += [f"| {w} | {b:,.0f} | {e:,.0f} |" for w, (b, e) in sizes.items()]
    return "\n".join(lines)


def score_all(model: str, out: Path) -> Path:
    data = out / "all-pairs.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    data.write_text("".join((SAMPLE / split).read_text() for split in SPLITS))
    return score.run(score.ScoreConfig(data=str(data), model=model, out=out / "scores", max_length=MAX_LENGTH,
                                       max_prompt_length=MAX_PROMPT_LENGTH))


def flip_rows(frame: pl.DataFrame, flip: np.ndarray) -> pl.DataFrame:
    """The rows with chosen and rejected swapped where `flip`: every chosen_*/rejected_* column, the reference
    log-probs and the truth, as rescoring `repo make-noisy`'s output would give them."""
    mask = pl.Series(flip)
    pairs = swapped_column_pairs(frame, "the cache") + [
        (c, c.replace("chosen", "rejected", 1)) for c in frame.columns
        if c.startswith("ref_chosen_") and c.replace("chosen", "rejected", 1) in frame.columns]
    return swap_where(frame, mask, "the cache", pairs).with_columns((pl.col(TRUTH) ^ mask).alias(TRUTH))


def check_flips_match_a_rescore(model: str, out: Path, pairs: int = 64) -> str:
    """flip_rows on a scored subset equals scoring `repo make-noisy`'s output of that subset (+40%), bit for bit."""
    folder = Path(tempfile.mkdtemp(prefix="flips-", dir=out))
    write_table(pl.read_ndjson(SAMPLE_TRAIN).head(pairs), folder / "pairs.jsonl")
    make_noisy.run(make_noisy.MakeNoisyConfig(folder / "pairs.jsonl", folder / "noisy.jsonl", flip_rate=0.4))
    settings = dict(model=model, max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH)
    clean, _ = schema.read_scores(score.run(score.ScoreConfig(data=str(folder / "pairs.jsonl"), out=folder / "a",
                                                              **settings)))
    noisy, _ = schema.read_scores(score.run(score.ScoreConfig(data=str(folder / "noisy.jsonl"), out=folder / "b",
                                                              **settings)))
    injected = noisy["injected_flip"].to_numpy()
    rebuilt = flip_rows(clean, injected)
    columns = clean.columns
    if not rebuilt.select(columns).equals(noisy.select(columns)):
        raise AssertionError("flip_rows differs from rescoring make-noisy's output")
    return f"{int(injected.sum())} of {pairs} rows flipped: identical to a rescore"


def three_annotators(frame: pl.DataFrame) -> pl.DataFrame:
    """Each row (one per pair) three times, in the consensus order, then flipped with each annotator's THREE rate."""
    consensus = flip_rows(frame, frame[TRUTH].to_numpy())
    copies = []
    for index, (name, rate) in enumerate(THREE.items()):
        flips = np.random.default_rng([0, index]).random(frame.height) < rate
        copies.append(flip_rows(consensus.with_columns(annotator=pl.lit(name)), flips)
                      .with_columns(row_id=pl.col("row_id") * len(THREE) + index))
    return pl.concat(copies).sort("row_id")


def scenario(name: str, frame: pl.DataFrame, key: dict, cfg: estimate.EstimateConfig) -> dict:
    found = estimate.run(cfg, frame, key, name)
    joined = found.posteriors.join(frame.select("row_id", TRUTH), on="row_id", maintain_order="left")
    if joined["row_id"].to_list() != frame["row_id"].to_list():
        raise RuntimeError(f"{name}: the estimate's rows are not in the cache's order")
    noisy = joined[TRUTH].to_numpy()
    measured = noise_metrics.annotator_accuracy(joined["annotator"].to_numpy(), noisy)
    eta = dict(zip(found.annotators["annotator"], found.annotators["eta"]))
    se = dict(zip(found.annotators["annotator"], found.annotators["eta_se"]))
    errors = {a: abs(eta[a] - measured[a]) for a in measured}
    z = joined["z"].to_numpy()
    inputs = noise_inputs.read_inputs(frame, key, name, embeddings=False)
    if not np.allclose(posteriors_at(inputs, z, eta), joined["w"].to_numpy(), rtol=0, atol=1e-9):
        raise RuntimeError(f"{name}: the E-step at the estimate's η does not give the estimate's w")
    row = {"scenario": name, "pairs": int(joined["pair_id"].n_unique()), "labels": joined.height,
           "model": found.model, "annotators": {a: {"eta": eta[a], "eta_se": se[a], "measured": measured[a]}
                                                for a in sorted(measured)},
           "max_abs_error": max(errors.values()), "roc_auc": noise_metrics.roc_auc(1 - joined["w"].to_numpy(), noisy),
           "roc_auc_measured_eta": noise_metrics.roc_auc(1 - posteriors_at(inputs, z, measured), noisy),
           "model_accuracy": noise_metrics.order_accuracy(z, noisy) if np.any(z) else None,
           "seconds": found.seconds}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def posteriors_at(inputs: noise_inputs.NoiseInputs, z: np.ndarray, eta_of: dict[str, float]) -> np.ndarray:
    """The estimator's E-step (reliability.row_posteriors) on its calibrated logits z of each row's order, with the
    η given by name instead of its own."""
    labels = estimate.labels_of(inputs)
    logit = torch.zeros(labels.num_pairs, dtype=torch.float64).index_put_(  # of each pair's reference order
        (labels.pair,), labels.orientation.double() * torch.from_numpy(z))
    eta = torch.tensor([eta_of[a] for a in inputs.annotators], dtype=torch.float64)
    return reliability.row_posteriors(labels, eta, logit).numpy()


def cost(model: str, out: Path, estimate_seconds: float, labels: int, pairs: int = 256, steps: int = 6) -> dict:
    """Stage one with and without embeddings on the first `pairs` bundled pairs, one after the other; a few DPO
    steps for the training rate; the estimate's share of one epoch over all `labels`."""
    folder = Path(tempfile.mkdtemp(prefix="cost-", dir=out))
    data = folder / "pairs.jsonl"
    write_table(pl.read_ndjson(SAMPLE_TRAIN).head(pairs), data)
    timings, sizes = {}, {}
    for name, embeddings in (("without", False), ("with", True)):
        started = time.perf_counter()
        cache = score.run(score.ScoreConfig(data=str(data), model=model, out=folder / name, embeddings=embeddings,
                                            max_length=MAX_LENGTH, max_prompt_length=MAX_PROMPT_LENGTH))
        timings[name] = time.perf_counter() - started
        sizes[name] = sum(p.stat().st_size for p in cache.glob("part-*.parquet")) / pairs
    started = time.perf_counter()
    run = train.run(train.TrainConfig(scores=folder / "without", out_dir=folder / "train", max_steps=steps,
                                      batch_size=8, lr=5e-5))
    train_rate = steps * 8 / (time.perf_counter() - started)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step_rate = float(np.median([m["pairs_per_s"] for m in metrics]))
    epoch_seconds = labels / step_rate
    embed_share = (timings["with"] - timings["without"]) / timings["without"]
    return {"score_seconds": timings, "embedding_share_of_stage_one": embed_share,
            "cache_bytes_per_pair": sizes, "train_pairs_per_s": step_rate, "train_end_to_end_pairs_per_s": train_rate,
            "epoch_seconds": epoch_seconds, "estimate_seconds": estimate_seconds,
            "estimate_share_of_epoch": (estimate_seconds + embed_share * labels / (pairs / timings["without"]))
            / epoch_seconds, "load_average_end": os.getloadavg()[0], "heldout_file": str(SAMPLE_HELDOUT)}


def markdown(results: dict) -> str:
    lines = ["| scenario | labels | annotator: η̂ ± se (measured) | max abs(η̂ − measured) | flag ROC-AUC | "
             "ROC-AUC at the measured η | model accuracy | seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in results["scenarios"]:
        shown = "; ".join(f"{a} {v['eta']:.3f} ± {v['eta_se'] or float('nan'):.3f} ({v['measured']:.3f})"
                          for a, v in r["annotators"].items())
        accuracy = "–" if r["model_accuracy"] is None else f"{r['model_accuracy']:.3f}"
        lines.append(f"| {r['scenario']} | {r['labels']} | {shown} | {r['max_abs_error']:.3f} | {r['roc_auc']:.3f} | "
                     f"{r['roc_auc_measured_eta']:.3f} | {accuracy} | {r['seconds']:.1f} |")
    if "cost" in results:
        c = results["cost"]
        lines += ["", f"stage one with embeddings {c['score_seconds']['with']:.1f} s vs without "
                  f"{c['score_seconds']['without']:.1f} s ({c['embedding_share_of_stage_one']:+.1%}); cache "
                  f"{c['cache_bytes_per_pair']['without']:.0f} -> {c['cache_bytes_per_pair']['with']:.0f} bytes/pair; "
                  f"one DPO epoch over all labels ≈ {c['epoch_seconds']:.0f} s at {c['train_pairs_per_s']:.2f} pairs/s; "
                  f"estimate (probe + EM) {c['estimate_seconds']:.1f} s; estimate + embeddings "
                  f"= {c['estimate_share_of_epoch']:.1%} of an epoch; load average at the end "
                  f"{c['load_average_end']:.2f}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
