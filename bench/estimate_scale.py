"""The noise estimate's cost as the data grows, and what choosing the probe's ridge on a draw of pairs costs in
quality: `reliability.estimate` on 2k to 100k generated pairs, with the default `tune_pairs` and without a limit,
side by side on the same inputs.

Inputs are made the way stage one gives them (pipeline/estimate.probe_candidates over two layers of the reference
model's pooled states, hidden size 576 as SmolLM2-135M, 64 principal directions × 9 prompt interactions = 576
features): low-rank response states with a planted preference direction whose sign follows the prompt, three annotators
who flip 5% / 15% / 30% of their labels, one label per pair. Per size and setting: seconds, milliseconds per
pair, the largest |η̂ − measured| and ROC-AUC of 1 − w for the wrong labels (pipeline/noise_metrics).

Run on a quiet machine:  .venv/bin/python bench/estimate_scale.py [--sizes 2000 10000 100000] [--compare-up-to 20000]
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

from re_po.data.noise_inputs import NoiseInputs
from re_po.pipeline import estimate, noise_metrics, reliability
from re_po.stages.configs import EstimateConfig

HIDDEN, LATENT, LAYERS, FLIPS = 576, 16, 2, (0.05, 0.15, 0.30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 30000, 100000])
    parser.add_argument("--compare-up-to", type=int, default=30000,
                        help="also run without a tune_pairs limit up to this size (its cost grows with the data)")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
