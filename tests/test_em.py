"""pipeline/em.py against independent computations: method.md §8 items 5 (EMA) and 6 (Thm 4.1 recovery)."""

import math

import pytest
import torch

from re_po.pipeline import em


def test_init_eta_is_float64_eta0_and_refuses_eta0_at_or_below_half():
    eta = em.init_eta(3, 0.9)
    assert eta.dtype == torch.float64
    assert eta.tolist() == [0.9, 0.9, 0.9]
    for bad in (0.5, 0.2, 1.0):
        with pytest.raises(ValueError, match="eta0 must be in"):
            em.init_eta(2, bad)


def test_annotator_sums_match_a_python_loop():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(50, generator=g)
    annotator = torch.randint(0, 4, (50,), generator=g)
    annotator[annotator == 2] = 1  # annotator 2 absent
    sums, counts = em.annotator_sums(w, annotator, 5)
    want_sums, want_counts = [0.0] * 5, [0.0] * 5
    for wi, k in zip(w.tolist(), annotator.tolist()):
        want_sums[k] += wi
        want_counts[k] += 1
    assert sums.dtype == counts.dtype == torch.float64
    torch.testing.assert_close(sums, torch.tensor(want_sums, dtype=torch.float64))
    assert counts.tolist() == want_counts


def test_annotator_sums_refuse_out_of_range_indices():
    with pytest.raises(ValueError, match=r"annotator indices must be in \[0, 2\)"):
        em.annotator_sums(torch.ones(3), torch.tensor([0, 1, 2]), 2)


def test_sums_of_shards_add_up_to_the_global_batch():
    """What a multi-process caller relies on (method.md §7.4): all-reducing per-shard sums and counts is exact."""
    g = torch.Generator().manual_seed(1)
    w, annotator = torch.rand(40, generator=g), torch.randint(0, 3, (40,), generator=g)
    shard_a, shard_b = em.annotator_sums(w[:25], annotator[:25], 3), em.annotator_sums(w[25:], annotator[25:], 3)
    whole = em.annotator_sums(w, annotator, 3)
    eta = em.init_eta(3)
    reduced = em.ema_update(eta, shard_a[0] + shard_b[0], shard_a[1] + shard_b[1], alpha=0.1)
    torch.testing.assert_close(reduced, em.ema_update(eta, *whole, alpha=0.1))


def test_item5_ema_touches_only_annotators_in_the_batch_and_follows_eq7():
    eta = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    w = torch.tensor([0.2, 0.4, 1.0, 0.5, 0.0])
    annotator = torch.tensor([0, 0, 2, 2, 2])
    new = em.ema_update(eta, *em.annotator_sums(w, annotator, 4), alpha=0.1)
    # η0 = 0.9·0.9 + 0.1·0.3 = 0.84; η2 = 0.9·0.7 + 0.1·0.5 = 0.68; η1, η3 absent
    torch.testing.assert_close(new, torch.tensor([0.84, 0.8, 0.68, 0.6], dtype=torch.float64))
    assert new[1] == eta[1] and new[3] == eta[3]
    assert eta.tolist() == [0.9, 0.8, 0.7, 0.6]  # a new tensor, the input is untouched


def test_item5_ema_with_alpha_one_is_the_batch_mean_and_mstep_is_the_mean():
    g = torch.Generator().manual_seed(2)
    w, annotator = torch.rand(30, generator=g), torch.randint(0, 2, (30,), generator=g)
    eta = torch.tensor([0.9, 0.9, 0.75], dtype=torch.float64)
    sums, counts = em.annotator_sums(w, annotator, 3)
    means = [sum(wi for wi, k in zip(w.tolist(), annotator.tolist()) if k == j) / int(counts[j]) for j in (0, 1)]
    want = torch.tensor([*means, 0.75], dtype=torch.float64)
    torch.testing.assert_close(em.ema_update(eta, sums, counts, alpha=1.0), want)
    torch.testing.assert_close(em.mstep(eta, sums, counts), want)


def test_item5_eta_stays_inside_the_open_unit_interval():
    eta = em.init_eta(2)
    annotator = torch.tensor([0, 1])
    for _ in range(500):  # annotator 0 always right, annotator 1 always wrong
        eta = em.ema_update(eta, *em.annotator_sums(torch.tensor([1.0, 0.0]), annotator, 2), alpha=0.5)
    assert eta.tolist() == [em.ETA_MAX, em.ETA_MIN]
    assert 0 < em.ETA_MIN and em.ETA_MAX < 1
    assert em.mstep(eta, torch.tensor([5.0, 0.0]), torch.tensor([5.0, 5.0])).tolist() == [em.ETA_MAX, em.ETA_MIN]


def test_ema_refuses_alpha_outside_zero_one():
    sums, counts = em.annotator_sums(torch.ones(1), torch.tensor([0]), 1)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="alpha must be in"):
            em.ema_update(em.init_eta(1), sums, counts, bad)


def synthetic_margins(eta_star: list[float], n_per_annotator: int, seed: int):
    """method.md §8 item 6: r ~ N(0, 2²), p* = σ(r), true order ~ Bernoulli(p*), label kept w.p. η*, else flipped.

    Returns the calibrated model's logit of each observed order, the annotator of each label, and whether the
    label is correct.
    """
    g = torch.Generator().manual_seed(seed)
    annotator = torch.arange(len(eta_star)).repeat_interleave(n_per_annotator)
    r = 2.0 * torch.randn(len(annotator), generator=g, dtype=torch.float64)
    a_truly_better = torch.rand(len(annotator), generator=g, dtype=torch.float64) < torch.sigmoid(r)
    correct = torch.rand(len(annotator), generator=g, dtype=torch.float64) < torch.tensor(eta_star)[annotator]
    observed_a_chosen = a_truly_better == correct
    z = torch.where(observed_a_chosen, r, -r)  # logit of "a ≻ b" is r, of "b ≻ a" is −r
    return z, annotator, correct


def test_item6_full_batch_em_recovers_the_empirical_reliability_of_each_annotator():
    """Thm 4.1 with a calibrated θ: from η0 = 0.9 the iteration lands on each annotator's fraction correct."""
    eta_star = [0.93, 0.6, 0.3]
    z, annotator, correct = synthetic_margins(eta_star, n_per_annotator=400_000, seed=0)
    eta = em.fit_eta(z, annotator, num_annotators=3, eta0=0.9)
    empirical = torch.stack([correct[annotator == k].double().mean() for k in range(3)])
    assert (eta - empirical).abs().max() <= 0.005, (eta.tolist(), empirical.tolist())
    assert (empirical - torch.tensor(eta_star, dtype=torch.float64)).abs().max() < 0.005  # the data is as asked


def test_item6_fixed_point_is_the_maximum_likelihood_eta():
    """The EM fixed point maximises Σ log(p·η + (1−p)(1−η)) (Eq. 3), found here by a brute-force grid."""
    z, annotator, _ = synthetic_margins([0.75], n_per_annotator=5_000, seed=1)
    eta = float(em.fit_eta(z, annotator, num_annotators=1, eta0=0.2))
    p = torch.sigmoid(z)
    grid = torch.linspace(0.6, 0.9, 3001, dtype=torch.float64)  # step 1e-4
    log_lik = torch.log(p[None, :] * grid[:, None] + (1 - p[None, :]) * (1 - grid[:, None])).sum(dim=1)
    assert abs(eta - float(grid[log_lik.argmax()])) <= 1e-4


@pytest.mark.parametrize("eta0", [0.3, 0.6, 0.9])
def test_item6_uninformative_margins_leave_eta_where_it_started(eta0):
    """p* ≡ ½ (z ≡ 0) gives w = η, so η never moves."""
    z = torch.zeros(1000, dtype=torch.float64)
    annotator = torch.arange(1000) % 2
    assert em.fit_eta(z, annotator, num_annotators=2, eta0=eta0).tolist() == pytest.approx([eta0, eta0], abs=1e-12)


def test_fit_eta_raises_when_it_does_not_converge():
    z, annotator, _ = synthetic_margins([0.6], n_per_annotator=1000, seed=2)
    with pytest.raises(RuntimeError, match="did not converge"):
        em.fit_eta(z, annotator, num_annotators=1, max_iter=2)


def test_fit_eta_leaves_annotators_without_labels_at_eta0():
    z, annotator, _ = synthetic_margins([0.8], n_per_annotator=1000, seed=3)
    eta = em.fit_eta(z, annotator, num_annotators=2, eta0=0.9)
    assert eta[1] == 0.9 and not math.isclose(float(eta[0]), 0.9)
