"""The noise estimate's cost as the data grows, and what choosing the probe's ridge on a draw of pairs costs in
quality: `reliability.estimate` on 2k to 100k generated pairs, with the default `tune_pairs` and without a limit,
side by side on the same inputs.

Inputs are made the way stage one gives them (data/estimate.probe_candidates over two layers of the reference
model's pooled states, hidden size 576 as SmolLM2-135M, 64 principal directions × 9 prompt interactions = 576
features): low-rank response states with a planted preference direction whose sign follows the prompt, three annotators
who flip 5% / 15% / 30% of their labels, one label per pair. Per size and setting: seconds, milliseconds per
pair, the largest |η̂ − measured| and ROC-AUC of 1 − w for the wrong labels (pipeline/noise_metrics).

Run on a quiet machine:  .venv/bin/python bench/estimate_scale.py [--sizes 2000 10000 100000] [--compare-up-to 20000]

--streamed (issue 26, item 3): the same generator written as a score cache on disk (parts of 2,048 rows, as
`repo score` writes them; the states as a projected cache holds them: the 576-wide latent part times the cache's
seeded projection to 128, plus N(0, 1) noise drawn at that width, which is what iid noise projected by it is in
law), then the estimate in a child process of its own, streamed (data/estimate.run_streamed) and, up to
--whole-up-to, in memory (schema.read_scores + data/estimate.run), and with `--modes inspect` the whole `repo
inspect-noise CACHE` command (estimate, join, report), each with its seconds and peak RSS:
    .venv/bin/python bench/estimate_scale.py --streamed --sizes 1000 100000 1000000 [--whole-up-to 100000]
    .venv/bin/python bench/estimate_scale.py --streamed --sizes 100000 --modes whole inspect
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import child
import numpy as np
import polars as pl
import torch

from re_po.data import estimate, schema
from re_po.data.noise_inputs import NoiseInputs
from re_po.pipeline import noise_metrics, projection, reliability
from re_po.stages import inspect_noise
from re_po.stages.configs import EstimateConfig, InspectConfig

HIDDEN, LATENT, LAYERS, FLIPS = 576, 16, 2, (0.05, 0.15, 0.30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 30000, 100000])
    parser.add_argument("--compare-up-to", type=int, default=30000,
                        help="also run without a tune_pairs limit up to this size (its cost grows with the data)")
    parser.add_argument("--streamed", action="store_true", help="caches on disk, the streamed estimate (issue 26)")
    parser.add_argument("--whole-up-to", type=int, default=100000, help="--streamed: also the in-memory estimate "
                                                                        "up to this size")
    parser.add_argument("--modes", nargs="+", default=["streamed", "whole"], choices=["streamed", "whole", "inspect"],
                        help="--streamed: which estimates (inspect: the whole `repo inspect-noise CACHE` command)")
    parser.add_argument("--out", type=Path, default=None, help="--streamed: where the caches go (a temporary "
                                                                 "folder by default, removed after each size)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one estimate, in its own process
    args = parser.parse_args()
    if args.child:
        child.send(child_estimate(json.loads(args.child)))
        return
    if args.streamed:
        streamed(args)
        return
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores, {torch.get_num_threads()} "
          f"torch threads)", file=sys.stderr)
    print("| pairs | tune_pairs | seconds | ms/pair | max abs(η̂ − measured) | flag ROC-AUC |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        inputs, wrong = generated(size, seed=size)
        labels = estimate.labels_of(inputs)
        measured = [1 - wrong[inputs.annotator == k].mean() for k in range(len(inputs.annotators))]
        settings = [reliability.TUNE_PAIRS] + ([None] if size <= args.compare_up_to else [])
        for tune_pairs in settings:
            started = time.perf_counter()
            candidates = estimate.probe_candidates(inputs, EstimateConfig())
            result = reliability.estimate(labels, candidates, tune_pairs=tune_pairs)
            seconds = time.perf_counter() - started
            error = max(abs(float(e) - m) for e, m in zip(result.eta, measured))
            auc = noise_metrics.roc_auc(1 - result.w.numpy(), wrong)
            print(f"| {size:,} | {'none' if tune_pairs is None else f'{tune_pairs:,}'} | {seconds:.1f} | "
                  f"{1000 * seconds / size:.2f} | {error:.3f} | {auc:.3f} |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}", file=sys.stderr)


def generated(pairs: int, seed: int) -> tuple[NoiseInputs, np.ndarray]:
    """NoiseInputs of `pairs` generated pairs, one label each, and which labels are wrong. The states are low-rank
    (LATENT directions mapped into HIDDEN, plus noise), as a model's pooled states are."""
    rng = np.random.default_rng(seed)
    to_hidden = rng.standard_normal((LATENT, HIDDEN))
    polarity = rng.choice([-1.0, 1.0], pairs)  # "write a positive / a negative ..."
    prompt_latent = rng.standard_normal((pairs, LATENT)) + 2 * polarity[:, None] * rng.standard_normal(LATENT)
    first, second = rng.standard_normal((2, pairs, LATENT))
    truth_logit = 3 * polarity * (first[:, 0] - second[:, 0])  # the prompt decides which way latent 0 counts
    first_true = rng.random(pairs) < 1 / (1 + np.exp(-truth_logit))
    annotator = rng.integers(len(FLIPS), size=pairs)
    wrong = rng.random(pairs) < np.take(FLIPS, annotator)
    orientation = np.where(first_true != wrong, 1, -1)  # the label states first ≻ second where it is right
    layers = {layer: tuple((part @ to_hidden + rng.standard_normal((pairs, HIDDEN))).astype(np.float32)
                           for part in (first, second, prompt_latent)) for layer in range(LAYERS)}
    inputs = NoiseInputs([f"annotator-{k}" for k in range(len(FLIPS))], annotator.astype(np.int64),
                         np.arange(pairs, dtype=np.int64), orientation.astype(np.int64), pairs, layers, None)
    return inputs, wrong


WIDTH, PART_ROWS, TRUTH_COLUMN = 128, 2048, "label_wrong"


def write_cache(folder: Path, pairs: int, seed: int) -> tuple[float, int]:
    """A score cache of `pairs` generated pairs (generated()'s law, states at the projected width WIDTH), written
    part by part so that generating a million never holds them all; one label per pair, a carried column saying
    which labels are wrong. Returns the seconds it took and the bytes of its parts."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    to_hidden = rng.standard_normal((LATENT, HIDDEN)) @ projection.matrix(HIDDEN, WIDTH)  # the latent, projected
    prompt_shift = 2 * rng.standard_normal(LATENT)
    key = schema.make_key(ref_model="generated", weights_sha="-", tokenizer_sha="-", chat_template_sha="-",
                          max_length=3, max_prompt_length=1, dtype="float32", backend="hf", backend_version="-",
                          dataset_sha=f"estimate_scale {pairs} {seed}", embed_layers=",".join(map(str, range(1, LAYERS + 1))),
                          embed_projection=projection.describe(HIDDEN, WIDTH))
    num_parts = -(-pairs // PART_ROWS)
    manifest = schema.open_cache(folder, key, {"part_size": PART_ROWS, "num_rows": pairs, "num_parts": num_parts},
                                 overwrite=True)
    for index in range(num_parts):
        g = np.arange(index * PART_ROWS, min(pairs, (index + 1) * PART_ROWS))
        n = len(g)
        polarity = rng.choice([-1.0, 1.0], n)
        prompt_latent = rng.standard_normal((n, LATENT)) + polarity[:, None] * prompt_shift
        first, second = rng.standard_normal((2, n, LATENT))
        truth_logit = 3 * polarity * (first[:, 0] - second[:, 0])
        first_true = rng.random(n) < 1 / (1 + np.exp(-truth_logit))
        annotator = rng.integers(len(FLIPS), size=n)
        wrong = rng.random(n) < np.take(FLIPS, annotator)
        chosen_is_first = first_true != wrong
        ids = pl.List(pl.Int32)
        frame = pl.DataFrame({
            "row_id": g.astype(np.int64), "pair_id": [f"p{i}" for i in g],
            "annotator": [f"annotator-{k}" for k in annotator],
            "prompt_ids": pl.Series(g[:, None].astype(np.int32), dtype=pl.Array(pl.Int32, 1)).cast(ids),
            "chosen_ids": pl.Series((2 * g + ~chosen_is_first)[:, None].astype(np.int32), dtype=pl.Array(pl.Int32, 1)
                                    ).cast(ids),
            "rejected_ids": pl.Series((2 * g + chosen_is_first)[:, None].astype(np.int32),
                                      dtype=pl.Array(pl.Int32, 1)).cast(ids),
            "ref_chosen_logps": np.zeros(n), "ref_rejected_logps": np.zeros(n),
            "chosen_len": pl.Series(np.ones(n, dtype=np.int32)), "rejected_len": pl.Series(np.ones(n, dtype=np.int32)),
            "truncated": np.zeros(n, dtype=bool), TRUTH_COLUMN: wrong,
            # the texts a real cache carries (the input's columns), which inspect-noise reports
            "prompt": [f"prompt {i}" for i in g], "chosen": [f"response {2 * i + (not c)}" for i, c in
                                                            zip(g, chosen_is_first)],
            "rejected": [f"response {2 * i + c}" for i, c in zip(g, chosen_is_first)]})
        for layer in range(1, LAYERS + 1):
            states = [(part @ to_hidden + rng.standard_normal((n, WIDTH))).astype(np.float16)
                      for part in (first, second, prompt_latent)]
            chosen = np.where(chosen_is_first[:, None], states[0], states[1])
            rejected = np.where(chosen_is_first[:, None], states[1], states[0])
            kind = pl.Array(pl.Float16, WIDTH)
            frame = frame.with_columns(pl.Series(name, values, dtype=kind) for name, values in
                                       zip(schema.embedding_columns(layer), (states[2], chosen, rejected)))
        schema.write_part(folder, manifest, index, frame, [])
    schema.finish_cache(folder, manifest, [])
    return time.perf_counter() - started, sum(p.stat().st_size for p in folder.glob("part-*.parquet"))


def child_estimate(spec: dict) -> dict:
    """In the child: one estimate of the cache, streamed or whole; its seconds, η error and flag ROC-AUC."""
    torch.set_num_threads(spec["threads"])
    folder, cfg = Path(spec["cache"]), EstimateConfig()
    started = time.perf_counter()
    if spec["mode"] == "inspect":  # the command, estimate and report: `repo inspect-noise CACHE`
        out = inspect_noise.run(InspectConfig(run=folder, out_dir=folder.parent / "inspect", truth_col=TRUTH_COLUMN))
        summary = json.loads((out / "summary.json").read_text())
        return {"seconds": time.perf_counter() - started, "roc_auc": summary["truth"]["roc_auc"],
                "max_abs_error": max(a["eta_abs_error"] for a in summary["annotators"]),
                "model": summary["estimate"]["model"]}
    if spec["mode"] == "streamed":
        found = estimate.run_streamed(cfg, folder, "generated")
    else:
        frame, key = schema.read_scores(folder)
        found = estimate.run(cfg, frame, key, "generated")
        del frame
    seconds = time.perf_counter() - started
    truth = pl.concat([part.select("row_id", TRUTH_COLUMN) for part in schema.read_score_parts(folder)[1]])
    joined = found.posteriors.join(truth, on="row_id", maintain_order="left")
    wrong = joined[TRUTH_COLUMN].to_numpy()
    measured = noise_metrics.annotator_accuracy(joined["annotator"].to_numpy(), wrong)
    eta = dict(zip(found.annotators["annotator"], found.annotators["eta"]))
    return {"seconds": seconds, "max_abs_error": max(abs(eta[a] - measured[a]) for a in measured),
            "roc_auc": noise_metrics.roc_auc(1 - joined["w"].to_numpy(), wrong), "model": found.model,
            "eta": eta}


def streamed(args) -> None:
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", file=sys.stderr)
    print("| pairs | estimate | seconds | µs/pair | peak RSS | max abs(η̂ − measured) | flag ROC-AUC | cache bytes/row |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        root = Path(tempfile.mkdtemp(prefix="estimate-scale-", dir=args.out))
        folder = root / f"cache-{size}"
        made, size_bytes = write_cache(folder, size, seed=size)
        print(f"{size:,} pairs: cache written in {made:.0f} s, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
        modes = [m for m in args.modes if m != "whole" or size <= args.whole_up_to]
        for mode in modes:
            result = child.run(__file__, {"cache": str(folder), "mode": mode, "threads": torch.get_num_threads()},
                               f"{mode} estimate of {size}")
            print(f"| {size:,} | {mode} | {result['seconds']:.1f} | {1e6 * result['seconds'] / size:.0f} | "
                  f"{result['peak_rss_bytes'] / 2**20:,.0f} MB | {result['max_abs_error']:.3f} | "
                  f"{result['roc_auc']:.3f} | {size_bytes / size:,.0f} |", flush=True)
            print(json.dumps({"pairs": size, "mode": mode, **result, "load": os.getloadavg()[0]}), file=sys.stderr,
                  flush=True)
        shutil.rmtree(root)
    print(f"load average at end: {os.getloadavg()[0]:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
