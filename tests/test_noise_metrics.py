"""pipeline/noise_metrics.py against independent brute force: pair counting, per-row loops."""

import numpy as np
import pytest

from re_po.pipeline import noise_metrics as nm


def brute_auc(scores, positive):
    """Every (positive, negative) pair: 1 if the positive scores higher, ½ on a tie."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    won = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return won / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_pair_counting_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 60
    positive = rng.random(n) < 0.3
    positive[:2] = [True, False]  # both classes present
    # few distinct values, so many ties, some across the classes
    scores = np.round(rng.random(n) + 0.4 * positive, 1)
    assert nm.roc_auc(scores, positive) == pytest.approx(brute_auc(scores, positive), abs=1e-12)


def test_roc_auc_hand_worked():
    """Positives 0.9, 0.5; negatives 0.5, 0.1: pairs won 1 + 1 + ½ (tie) + 1 = 3.5 of 4."""
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    positive = np.array([True, True, False, False])
    assert nm.roc_auc(scores, positive) == 0.875
    assert nm.roc_auc(-scores, positive) == 0.125
    assert nm.roc_auc(np.ones(4), positive) == 0.5


def test_roc_auc_undefined_with_one_class():
    assert nm.roc_auc(np.array([0.1, 0.2]), np.array([True, True])) is None
    assert nm.roc_auc(np.array([0.1, 0.2]), np.array([False, False])) is None


def test_roc_auc_refuses_non_boolean_and_nan():
    with pytest.raises(ValueError, match="boolean"):
        nm.roc_auc(np.array([0.1, 0.2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        nm.roc_auc(np.array([np.nan, 0.2]), np.array([True, False]))


def test_average_ranks_brute_force():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 5, size=40)
    expected = [1 + sum(v < x for v in values) + (sum(v == x for v in values) - 1) / 2 for x in values]
    np.testing.assert_array_equal(nm.average_ranks(values), expected)


@pytest.mark.parametrize("seed", range(3))
def test_flag_scores_match_per_row_counts(seed):
    rng = np.random.default_rng(seed)
    flagged, noisy = rng.random(50) < 0.3, rng.random(50) < 0.25
    tp = sum(1 for f, y in zip(flagged, noisy) if f and y)
    fp = sum(1 for f, y in zip(flagged, noisy) if f and not y)
    fn = sum(1 for f, y in zip(flagged, noisy) if not f and y)
    got = nm.flag_scores(flagged, noisy)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert (got.true_positives, got.false_positives, got.false_negatives) == (tp, fp, fn)
    assert got.precision == pytest.approx(precision)
    assert got.recall == pytest.approx(recall)
    assert got.f1 == pytest.approx(2 * precision * recall / (precision + recall))


def test_flag_scores_empty_denominators_are_none():
    none_flagged = nm.flag_scores(np.zeros(3, bool), np.array([True, False, False]))
    assert none_flagged.precision is None and none_flagged.recall == 0.0 and none_flagged.f1 == 0.0
    clean = nm.flag_scores(np.zeros(3, bool), np.zeros(3, bool))
    assert clean.precision is None and clean.recall is None and clean.f1 is None


def test_annotator_accuracy_per_annotator_loop():
    annotator = np.array(["a", "b", "a", "c", "b", "a"])
    noisy = np.array([False, True, True, False, False, False])
    assert nm.annotator_accuracy(annotator, noisy) == {"a": pytest.approx(2 / 3), "b": 0.5, "c": 1.0}


def test_order_accuracy_counts_agreeing_signs_and_ties_as_half():
    margins = np.array([2.0, -1.0, 0.0, 3.0, -0.5])
    wrong = np.array([False, True, False, True, False])
    # per pair: right, right (reversed truth, negative margin), tie ½, wrong, wrong -> 2.5 / 5
    assert nm.order_accuracy(margins, wrong) == 0.5
    assert nm.order_accuracy(np.ones(4), np.zeros(4, bool)) == 1.0
    with pytest.raises(ValueError):
        nm.order_accuracy(np.ones(3), np.zeros(2, bool))


def test_annotator_stats_per_annotator_loop():
    rng = np.random.default_rng(7)
    annotator = rng.integers(0, 3, size=200)  # annotator 3 gives no label
    w = rng.random(200)
    flagged = w < 0.3
    stats = nm.annotator_stats(annotator, w, flagged, 4)
    for k in range(3):
        mine = annotator == k
        assert stats.labels[k] == mine.sum() and stats.flagged[k] == (mine & flagged).sum()
        assert stats.w_mean[k] == pytest.approx(sum(w[i] for i in range(200) if annotator[i] == k) / mine.sum())
    assert stats.labels[3] == 0 and stats.flagged[3] == 0 and np.isnan(stats.w_mean[3])


def test_reliability_bins_per_bin_loop():
    rng = np.random.default_rng(8)
    w = np.concatenate([rng.random(300), [1.0, 0.0]])  # the ends fall in the first and last bins
    noisy = rng.random(w.size) > w  # a calibrated w: right with probability w
    found = nm.reliability_bins(w, noisy, bins=5)
    expected = []
    for b in range(5):
        inside = [i for i in range(w.size) if (min(int(w[i] * 5), 4)) == b]
        if inside:
            expected.append((np.mean(w[inside]), np.mean(~noisy[inside]), len(inside)))
    assert [(pytest.approx(a), pytest.approx(r), n) for a, r, n in expected] == list(
        zip(found.w_mean, found.right_share, found.labels))
    assert found.labels.sum() == w.size and np.all(np.abs(found.right_share - found.w_mean) < 0.15)
