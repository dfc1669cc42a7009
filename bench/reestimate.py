"""Between epochs, with new evidence: would re-estimating η and the posteriors from the estimate's prior *and* epoch
1's first-visit margins do better than the estimate alone? (issue 24, item 3; measured offline on finished runs.)

Epoch 1 of a `repo train --robust` run records each row's margin z before the policy trained on that row
(`first_visit_z`, docs/method.md §7.6): evidence from the labels of the pairs trained before it, which the estimate
did not have. For each run given, this compares against the truth column of its score cache:
  estimate     epoch 0 as written: the probe's calibrated logit and the labels (what training uses today)
  first visit  the EM of the estimator (reliability.fit_reliability, its own fitted scale) on the first-visit
               margins alone
  both         the EM on one score per pair, prior and first-visit margin combined by a two-weight logistic fit to
               the observed labels (as the probe's scores are calibrated to them), the scale then fitted by the EM
Columns: max |η̂ − measured reliability| over annotators, and the flags' ROC-AUC (1 − w against the wrong labels).
A pair's first-visit margin is the mean over its rows of the margin of the pair's reference order; with several
labels per pair only the first row visited is free of the pair's own labels (the others were visited after the
policy trained on it), so there the figure overstates what the margins know out of sample.

    .venv/bin/python bench/reestimate.py RUN [RUN ...] [--scores CACHE]
"""
import argparse
from pathlib import Path

import numpy as np
import torch

from re_po.data import estimate, noise_inputs, run_folder, schema
from re_po.data.columns import TRUTH
from re_po.pipeline import reliability
from re_po.pipeline.noise_metrics import annotator_accuracy, roc_auc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--truth-col", default=TRUTH)
    parser.add_argument("--scores", type=Path, help="the runs' score cache, where it moved since (default: as recorded)")
    args = parser.parse_args()
    print("| run | evidence | max abs(η̂ − measured) | flag ROC-AUC | η̂ per annotator (measured) |\n|---|---|---|---|---|")
    for run in args.runs:
        for name, (eta, w, annotators, measured, wrong) in compare(run, args.truth_col, args.scores).items():
            errors = {a: abs(eta[k] - measured[a]) for k, a in enumerate(annotators)}
            etas = ", ".join(f"{a} {eta[k]:.3f} ({measured[a]:.3f})" for k, a in enumerate(annotators))
            print(f"| {run} | {name} | {max(errors.values()):.3f} | {roc_auc(1 - w, wrong):.3f} | {etas} |")


def compare(run: Path, truth_col: str, cache: Path | None = None) -> dict[str, tuple]:
    """evidence name -> (η̂ (K,), w (N,), annotator names, measured reliability by name, wrong (N,) bool)."""
    cache = cache or Path(run_folder.read_record(run)["config"]["scores"])
    frame, key = schema.read_scores(cache)
    inputs = noise_inputs.read_inputs(frame, key, str(cache), embeddings=False)
    labels = estimate.labels_of(inputs)
    wrong = frame[truth_col].to_numpy().astype(bool)
    measured = annotator_accuracy(np.asarray(inputs.annotators)[inputs.annotator], wrong)
    rows = [run_folder.read_epoch(run, run_folder.POSTERIORS, epoch).sort("row_id") for epoch in (0, 1)]
    found = dict(run_folder.read_epoch(run, run_folder.ANNOTATORS, 0).select("annotator", "eta").iter_rows())
    orientation = torch.from_numpy(inputs.orientation).double()

    def per_pair(row_logit: np.ndarray) -> torch.Tensor:  # the mean over each pair's rows, in its reference order
        return labels.per_pair(orientation * torch.tensor(row_logit, dtype=torch.float64)) / labels.per_pair(
            torch.ones_like(orientation))

    prior, first_visit = per_pair(rows[0]["z"].to_numpy()), per_pair(rows[1]["first_visit_z"].to_numpy())
    target, weight = reliability.observed_targets(labels)
    both = torch.stack([prior, first_visit], dim=1)
    combined = both @ reliability.fit_logistic(both, target, weight, ridge=1e-6)
    results = {"estimate": (np.array([found[a] for a in inputs.annotators]), rows[0]["w"].to_numpy())}
    for name, scores in (("first visit", first_visit), ("both", combined)):
        fitted = reliability.fit_reliability(labels, scores)
        results[name] = (fitted.eta.numpy(), fitted.w.numpy())
    return {name: (eta, w, inputs.annotators, measured, wrong) for name, (eta, w) in results.items()}


if __name__ == "__main__":
    main()
