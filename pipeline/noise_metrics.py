"""How well the posteriors w find the wrong labels, when the data carries the truth.

Pure numpy: reads and writes nothing. `noisy` is a boolean (N,) array, True where the observed label
is wrong (a benchmark's `is_flipped`). A pair is flagged when the EM believes its label is wrong; its
suspicion score is 1 − w (w = P(label correct), method.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FlagScores:
    """Counts and rates of the flags against the truth. A rate with a zero denominator is None."""

    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float | None
    recall: float | None
    f1: float | None


def flag_scores(flagged: np.ndarray, noisy: np.ndarray) -> FlagScores:
    """Precision, recall and F1 of `flagged` (N,) bool as a detector of `noisy` (N,) bool."""
    flagged, noisy = _bools(flagged, noisy)
    tp = int(np.sum(flagged & noisy))
    fp = int(np.sum(flagged & ~noisy))
    fn = int(np.sum(~flagged & noisy))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None  # = harmonic mean of precision and recall
    return FlagScores(tp, fp, fn, precision, recall, f1)


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC-AUC of `scores` (N,) for `positive` (N,) bool: P(score of a positive > score of a negative),
    ties counting ½ (Mann–Whitney U with average ranks). None when either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    (positive,) = _bools(positive)
    if scores.shape != positive.shape:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} must have the same shape")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = average_ranks(scores)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2  # pairs (positive, negative) won, ties ½
    return float(u / (n_pos * n_neg))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (N,), tied values sharing the mean of their ranks. float64 (N,)."""
    values = np.asarray(values)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # start of each run of equal values in sorted order
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], values.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


@dataclass(frozen=True)
class AnnotatorStats:
    """Per annotator 0..K−1: how many labels it gave, their mean posterior w, and how many are flagged."""

    labels: np.ndarray  # (K,) int
    w_mean: np.ndarray  # (K,) float; NaN for an annotator without labels
    flagged: np.ndarray  # (K,) int


def annotator_stats(annotator: np.ndarray, w: np.ndarray, flagged: np.ndarray, num_annotators: int) -> AnnotatorStats:
    """The AnnotatorStats of N labels: `annotator` (N,) index in 0..K−1, w (N,), flagged (N,) bool."""
    annotator, w = np.asarray(annotator, dtype=np.int64), np.asarray(w, dtype=np.float64)
    (flagged,) = _bools(flagged)
    labels = np.bincount(annotator, minlength=num_annotators)
    with np.errstate(invalid="ignore", divide="ignore"):
        w_mean = np.bincount(annotator, weights=w, minlength=num_annotators) / labels
    return AnnotatorStats(labels, w_mean, np.bincount(annotator[flagged], minlength=num_annotators))


@dataclass(frozen=True)
class ReliabilityBins:
    """A reliability diagram's data: per non-empty bin of w, its mean w, the observed share of right labels, and
    how many labels fall in it."""

    w_mean: np.ndarray
    right_share: np.ndarray
    labels: np.ndarray


def reliability_bins(w: np.ndarray, noisy: np.ndarray, bins: int = 10) -> ReliabilityBins:
    """w (N,) in [0, 1] against the truth noisy (N,) bool, in `bins` equal bins of w (w = 1 in the last): a
    calibrated w lies on the diagonal, right_share ≈ w_mean."""
    w = np.asarray(w, dtype=np.float64)
    (noisy,) = _bools(noisy)
    index = np.minimum((w * bins).astype(np.int64), bins - 1)
    labels = np.bincount(index, minlength=bins)
    seen = labels > 0
    w_sum = np.bincount(index, weights=w, minlength=bins)
    right = np.bincount(index, weights=(~noisy).astype(np.float64), minlength=bins)
    return ReliabilityBins(w_sum[seen] / labels[seen], right[seen] / labels[seen], labels[seen])


def annotator_accuracy(annotator: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    """Each annotator's measured reliability: the share of its labels that are right (1 − mean noisy)."""
    annotator = np.asarray(annotator)
    (noisy,) = _bools(noisy)
    if annotator.shape != noisy.shape:
        raise ValueError(f"annotator {annotator.shape} and truth {noisy.shape} must have the same shape")
    names, index = np.unique(annotator, return_inverse=True)
    wrong = np.bincount(index, weights=noisy.astype(np.float64), minlength=names.size)
    labels = np.bincount(index, minlength=names.size)
    return {str(name): float(1.0 - wrong[i] / labels[i]) for i, name in enumerate(names)}


def _bools(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    out = tuple(np.asarray(a) for a in arrays)
    for a in out:
        if a.dtype != np.bool_:
            raise ValueError(f"expected a boolean array, got dtype {a.dtype}")
    if len({a.shape for a in out}) > 1:
        raise ValueError(f"arrays must have the same shape, got {[a.shape for a in out]}")
    return out


def order_accuracy(margins: np.ndarray, label_wrong: np.ndarray) -> float:
    """Share of pairs whose true order the sign of `margins` (N,) reproduces; a zero margin counts ½.

    margins > 0 prefers the observed chosen response; `label_wrong` (N,) bool is True where the true
    order is the reverse (a benchmark's `is_flipped`).
    """
    margins = np.asarray(margins, dtype=np.float64)
    (label_wrong,) = _bools(label_wrong)
    if margins.shape != label_wrong.shape or margins.size == 0:
        raise ValueError(f"need margins and labels of one non-empty shape, got {margins.shape}, {label_wrong.shape}")
    agrees = np.where(label_wrong, -margins, margins)
    return float(np.mean((agrees > 0) + 0.5 * (agrees == 0)))
