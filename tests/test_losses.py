"""pipeline/losses.py against independent computations: method.md §8 items 1–4, the cDPO/rDPO baselines,
the weighted raw loss (§7.1) and the implicit rewards.

Hand formulas are written with Python's `math` on plain floats, one pair at a time, so they share no code
with the torch implementation.
"""

import dataclasses
import json
import math

import pytest
import torch

from re_po.pipeline import losses
from re_po.pipeline.choices import DEFAULT_BETA, ROBUST_KINDS, LossKind, LossSpec
from re_po.pipeline.losses import PairLogps

B = 64


def softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def neg_log_sigmoid(x: float) -> float:
    return softplus(-x)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture
def logps() -> PairLogps:
    """Float64 pairs with realistic sums (tens of nats) and lengths, one of them 0 to exercise the clamp."""
    g = torch.Generator().manual_seed(0)
    chosen_len = torch.randint(1, 40, (B,), generator=g)
    rejected_len = torch.randint(1, 40, (B,), generator=g)
    chosen_len[0] = 0
    policy_chosen = -chosen_len.clamp(min=1) * (0.5 + torch.rand(B, generator=g, dtype=torch.float64))
    policy_rejected = -rejected_len.clamp(min=1) * (0.5 + torch.rand(B, generator=g, dtype=torch.float64))
    return PairLogps(
        policy_chosen_logps=policy_chosen,
        policy_rejected_logps=policy_rejected,
        ref_chosen_logps=policy_chosen + 3 * torch.randn(B, generator=g, dtype=torch.float64),
        ref_rejected_logps=policy_rejected + 3 * torch.randn(B, generator=g, dtype=torch.float64),
        chosen_len=chosen_len,
        rejected_len=rejected_len,
    )


def rows(logps: PairLogps) -> list[dict[str, float]]:
    """The pairs as plain floats, lengths clamped at 1 (method.md §2)."""
    return [
        {
            "pc": float(logps.policy_chosen_logps[i]),
            "pr": float(logps.policy_rejected_logps[i]),
            "rc": float(logps.ref_chosen_logps[i]),
            "rr": float(logps.ref_rejected_logps[i]),
            "lc": max(int(logps.chosen_len[i]), 1),
            "lr": max(int(logps.rejected_len[i]), 1),
        }
        for i in range(len(logps.policy_chosen_logps))
    ]


def hand_loss(p: LossSpec, r: dict[str, float]) -> float:
    """L(a≻b) for one pair, written from method.md §2 and the rDPO paper."""
    kind, beta = p.kind, p.beta
    h = (r["pc"] - r["rc"]) - (r["pr"] - r["rr"])
    if kind == "dpo":
        return neg_log_sigmoid(beta * h)
    if kind == "ipo":
        u = h if p.ipo_summed else (r["pc"] - r["rc"]) / r["lc"] - (r["pr"] - r["rr"]) / r["lr"]
        return (u - 1 / (2 * beta)) ** 2
    if kind == "simpo":
        return neg_log_sigmoid(beta * (r["pc"] / r["lc"] - r["pr"] / r["lr"]) - p.gamma)
    if kind == "cpo":
        return neg_log_sigmoid(beta * (r["pc"] - r["pr"])) + p.cpo_alpha * (-r["pc"] / r["lc"])
    if kind == "cdpo":
        eps = p.label_smoothing
        return (1 - eps) * neg_log_sigmoid(beta * h) + eps * neg_log_sigmoid(-beta * h)
    if kind == "rdpo":
        eps = p.flip_rate
        return ((1 - eps) * neg_log_sigmoid(beta * h) - eps * neg_log_sigmoid(-beta * h)) / (1 - 2 * eps)
    raise AssertionError(kind)


PARAMS = [
    LossSpec.of("dpo"),
    LossSpec("dpo", beta=0.5),
    LossSpec.of("ipo"),
    LossSpec("ipo", beta=0.3, ipo_summed=True),
    LossSpec.of("simpo"),
    LossSpec("simpo", beta=2.5, gamma=0.0),
    LossSpec.of("cpo"),
    LossSpec("cpo", beta=0.2, cpo_alpha=0.3),
]
BASELINES = [
    LossSpec("cdpo", beta=0.1, label_smoothing=0.2),
    LossSpec("rdpo", beta=0.1, flip_rate=0.2),
    LossSpec("rdpo", beta=0.4, flip_rate=0.0),
]


def ids(cases):
    return [f"{p.kind}-{p.beta}-{p.gamma}-{p.cpo_alpha}-{p.ipo_summed}" for p in cases]


def assert_close(actual: torch.Tensor, expected, **tol) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, **(tol or {"rtol": 1e-10, "atol": 1e-10}))


@pytest.mark.parametrize("spec", PARAMS + BASELINES, ids=ids(PARAMS + BASELINES))
def test_base_losses_match_hand_formulas(spec, logps):
    expected = [hand_loss(spec, r) for r in rows(logps)]
    assert_close(losses.base_loss(spec, logps), expected)


@pytest.mark.parametrize("spec", PARAMS, ids=ids(PARAMS))
def test_item1_induced_logits_match_float64_brute_force(spec, logps):
    """z = L(b≻a) − L(a≻b) (Eq. 2): the closed form against the loss itself on swapped inputs and by hand."""
    z = losses.induced_logit(spec, logps)
    brute = losses.base_loss(spec, logps.swapped()) - losses.base_loss(spec, logps)
    assert_close(z, brute)
    swapped_rows = rows(logps.swapped())
    by_hand = [hand_loss(spec, s) - hand_loss(spec, r) for r, s in zip(rows(logps), swapped_rows)]
    assert_close(z, by_hand)
    assert_close(torch.sigmoid(z), [sigmoid(x) for x in by_hand])


@pytest.mark.parametrize("spec", PARAMS, ids=ids(PARAMS))
def test_item1_induced_probabilities_of_both_orders_sum_to_one(spec, logps):
    p_ab = torch.sigmoid(losses.induced_logit(spec, logps))
    p_ba = torch.sigmoid(losses.induced_logit(spec, logps.swapped()))
    assert_close(p_ab + p_ba, torch.ones(B, dtype=torch.float64))
    assert not torch.allclose(p_ab, torch.full_like(p_ab, 0.5))  # the fixture is not degenerate


@pytest.mark.parametrize(
    ("spec", "exact"),
    [
        (LossSpec("dpo", beta=0.1), True),
        (LossSpec("simpo", beta=2.0, gamma=0.0), True),
        (LossSpec("simpo", beta=2.0, gamma=0.5), False),
        (LossSpec("ipo", beta=0.1), False),
    ],
)
def test_item1_induced_model_is_the_loss_exactly_when_exp_minus_losses_sum_to_one(spec, exact, logps):
    """σ(z) = e^{−L(a≻b)} iff e^{−L(a≻b)} + e^{−L(b≻a)} = 1 (method.md §2): DPO and SimPO with γ = 0."""
    loss_ab, loss_ba = losses.base_loss(spec, logps), losses.base_loss(spec, logps.swapped())
    total = torch.exp(-loss_ab) + torch.exp(-loss_ba)
    matches = torch.allclose(torch.sigmoid(losses.induced_logit(spec, logps)), torch.exp(-loss_ab))
    assert torch.allclose(total, torch.ones_like(total)) == exact
    assert matches == exact


def test_item1_hand_worked_dpo_and_ipo_numbers():
    """One pair: ρ(a) = −1 − (−3) = 2, ρ(b) = −4 − (−2) = −2, so h = 4, |a| = 2, |b| = 4.

    DPO β = 0.1: z = 0.4, L = −log σ(0.4) = 0.5130153.
    IPO β = 0.1: ρ̄(a) = 1, ρ̄(b) = −0.5, u = 1.5, L = (1.5 − 5)² = 12.25, z = 2·1.5/0.1 = 30;
    summed: u = 4, L = 1, z = 80.
    """
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    pair = PairLogps(t(-1.0), t(-4.0), t(-3.0), t(-2.0), torch.tensor([2]), torch.tensor([4]))
    dpo, ipo = LossSpec("dpo", beta=0.1), LossSpec("ipo", beta=0.1)
    assert_close(losses.induced_logit(dpo, pair), [0.4])
    assert_close(losses.base_loss(dpo, pair), [0.5130152524], rtol=0, atol=1e-9)
    assert_close(losses.base_loss(ipo, pair), [12.25])
    assert_close(losses.induced_logit(ipo, pair), [30.0])
    summed = LossSpec("ipo", beta=0.1, ipo_summed=True)
    assert_close(losses.base_loss(summed, pair), [1.0])
    assert_close(losses.induced_logit(summed, pair), [80.0])


def test_cpo_with_summed_nll_would_scale_the_logit_by_beta_plus_alpha(logps):
    """Sanity of the CPO closed form: with |y| = 1 (NLL summed) z = (β + α)(ℓ(a) − ℓ(b)) (method.md §2)."""
    ones = torch.ones(B, dtype=torch.long)
    summed = PairLogps(logps.policy_chosen_logps, logps.policy_rejected_logps, chosen_len=ones, rejected_len=ones)
    cpo = LossSpec("cpo", beta=0.1, cpo_alpha=1.0)
    expected = 1.1 * (logps.policy_chosen_logps - logps.policy_rejected_logps)
    assert_close(losses.induced_logit(cpo, summed), expected)


def test_rdpo_is_unbiased_over_the_flip_noise(logps):
    """Chowdhury et al.'s defining property: (1−ε)·L_rdpo(h) + ε·L_rdpo(−h) = −log σ(βh), the clean DPO loss."""
    rdpo = LossSpec("rdpo", beta=0.1, flip_rate=0.3)
    expected_over_flips = 0.7 * losses.base_loss(rdpo, logps) + 0.3 * losses.base_loss(rdpo, logps.swapped())
    assert_close(expected_over_flips, losses.base_loss(LossSpec("dpo", beta=0.1), logps))


def test_zero_noise_baselines_are_dpo(logps):
    dpo = losses.base_loss(LossSpec("dpo", beta=0.1), logps)
    assert_close(losses.base_loss(LossSpec("cdpo", beta=0.1, label_smoothing=0.0), logps), dpo)
    assert_close(losses.base_loss(LossSpec("rdpo", beta=0.1, flip_rate=0.0), logps), dpo)


def dpo_z(logps: PairLogps) -> torch.Tensor:
    return losses.induced_logit(LossSpec("dpo", beta=0.1), logps)


def requiring_grad(logps: PairLogps) -> PairLogps:
    """A copy whose policy log-probs are autograd leaves."""
    return dataclasses.replace(
        logps,
        policy_chosen_logps=logps.policy_chosen_logps.clone().requires_grad_(True),
        policy_rejected_logps=logps.policy_rejected_logps.clone().requires_grad_(True),
    )


def grad_wrt_policy(loss_fn, logps: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """Autograd of loss_fn(pairs).sum() with respect to both policy log-prob tensors."""
    live = requiring_grad(logps)
    loss_fn(live).sum().backward()
    return live.policy_chosen_logps.grad, live.policy_rejected_logps.grad


@pytest.mark.parametrize("spec", [LossSpec("dpo", beta=0.1),
                                              LossSpec("simpo", beta=2.0, gamma=0.0)])
def test_item2_eta_one_gives_exactly_the_base_loss_and_gradient(spec, logps):
    ones = torch.ones(B, dtype=torch.float64)

    def robust(pairs):
        z = losses.induced_logit(spec, pairs)
        return losses.robust_loss(z, losses.posterior_weight(z, ones))

    def base(pairs):
        return losses.base_loss(spec, pairs)

    assert_close(robust(logps), base(logps))
    for got, want in zip(grad_wrt_policy(robust, logps), grad_wrt_policy(base, logps)):
        assert_close(got, want)


def test_item2_constant_w_one_minus_eps_is_label_smoothing(logps):
    """w ≡ 1 − ε: BCE(βh, 1 − ε) = (1−ε)·(−log σ(βh)) + ε·(−log σ(−βh)), cDPO, in value and gradient."""
    eps = 0.15
    cdpo = LossSpec("cdpo", beta=0.1, label_smoothing=eps)
    w = torch.full((B,), 1 - eps, dtype=torch.float64)

    def robust(pairs):
        return losses.robust_loss(dpo_z(pairs), w)

    def smoothed(pairs):
        return losses.base_loss(cdpo, pairs)

    hand = [hand_loss(cdpo, r) for r in rows(logps)]
    assert_close(robust(logps), hand)
    assert_close(losses.weighted_loss(LossSpec("dpo", beta=0.1), logps, w), hand)
    for got, want in zip(grad_wrt_policy(robust, logps), grad_wrt_policy(smoothed, logps)):
        assert_close(got, want)


def test_weighted_loss_equals_robust_loss_for_dpo_in_value_and_gradient(logps):
    w = torch.rand(B, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dpo = LossSpec("dpo", beta=0.1)

    def weighted(pairs):
        return losses.weighted_loss(dpo, pairs, w)

    def robust(pairs):
        return losses.robust_loss(dpo_z(pairs), w)

    assert_close(weighted(logps), robust(logps))
    for got, want in zip(grad_wrt_policy(weighted, logps), grad_wrt_policy(robust, logps)):
        assert_close(got, want)


@pytest.mark.parametrize("spec", PARAMS, ids=ids(PARAMS))
def test_weighted_loss_mixes_the_two_orders(spec, logps):
    w = torch.rand(B, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hand = [
        wi * hand_loss(spec, r) + (1 - wi) * hand_loss(spec, s)
        for wi, r, s in zip(w.tolist(), rows(logps), rows(logps.swapped()))
    ]
    assert_close(losses.weighted_loss(spec, logps, w), hand)


@pytest.mark.parametrize("spec", PARAMS, ids=ids(PARAMS))
def test_scaled_loss_is_each_labels_own_loss_times_w_and_never_the_reversed_one(spec, logps):
    w = torch.rand(B, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert_close(losses.scaled_loss(spec, logps, w), [wi * hand_loss(spec, r) for wi, r in zip(w.tolist(), rows(logps))])
    assert_close(losses.scaled_loss(spec, logps, torch.zeros(B, dtype=torch.float64)), [0.0] * B)


def test_item3_posterior_weight_is_the_bayes_formula_without_gradient():
    g = torch.Generator().manual_seed(3)
    z = (4 * torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_(True)
    eta = 0.01 + 0.98 * torch.rand(B, generator=g, dtype=torch.float64)
    w = losses.posterior_weight(z, eta)
    bayes = []
    for zi, ei in zip(z.tolist(), eta.tolist()):
        p = sigmoid(zi)
        bayes.append(p * ei / (p * ei + (1 - p) * (1 - ei)))  # Eq. 4
    assert_close(w, bayes)
    assert not w.requires_grad
    assert w.dtype == z.dtype
    assert losses.posterior_weight(z.float(), eta).dtype == torch.float32


def test_item3_posterior_weight_limits():
    """p = ½ gives w = η; η = ½ gives w = p; η = 1 gives w = 1 (method.md §3)."""
    g = torch.Generator().manual_seed(4)
    z = 3 * torch.randn(B, generator=g, dtype=torch.float64)
    eta = 0.01 + 0.98 * torch.rand(B, generator=g, dtype=torch.float64)
    assert_close(losses.posterior_weight(torch.zeros(B, dtype=torch.float64), eta), eta)
    assert_close(losses.posterior_weight(z, torch.full((B,), 0.5, dtype=torch.float64)), torch.sigmoid(z))
    assert torch.equal(losses.posterior_weight(z, torch.ones(B, dtype=torch.float64)), torch.ones_like(z))


def test_item4_robust_loss_gradient_is_sigmoid_z_minus_w():
    g = torch.Generator().manual_seed(5)
    z = (5 * torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = torch.rand(B, generator=g, dtype=torch.float64)
    losses.robust_loss(z, w).sum().backward()
    assert_close(z.grad, [sigmoid(zi) - wi for zi, wi in zip(z.tolist(), w.tolist())])


def re_dpo_and_dpo_grads(margin: float, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of RE-DPO and DPO with respect to the policy's chosen log-prob at DPO logit z = margin."""
    dpo = LossSpec("dpo", beta=0.1)
    ref = torch.zeros(B, dtype=torch.float64)
    pairs = PairLogps(torch.full((B,), margin / dpo.beta, dtype=torch.float64), ref.clone(), ref, ref)
    eta_b = torch.full((B,), eta, dtype=torch.float64)

    def re_dpo(p):
        z = losses.induced_logit(dpo, p)
        return losses.robust_loss(z, losses.posterior_weight(z, eta_b))

    re_grad, _ = grad_wrt_policy(re_dpo, pairs)
    dpo_grad, _ = grad_wrt_policy(lambda p: losses.base_loss(dpo, p), pairs)
    return re_grad, dpo_grad


@pytest.mark.parametrize("eta", [0.6, 0.75, 0.9])
def test_item4_re_dpo_gradient_is_2eta_minus_1_times_dpo_at_zero_and_silenced_at_minus_10(eta):
    re_grad, dpo_grad = re_dpo_and_dpo_grads(0.0, eta)
    assert_close(re_grad, (2 * eta - 1) * dpo_grad)
    assert_close(dpo_grad, torch.full((B,), -0.05, dtype=torch.float64))  # β(σ(0) − 1)
    re_grad, dpo_grad = re_dpo_and_dpo_grads(-10.0, eta)
    assert (re_grad.abs() < 1e-3 * dpo_grad.abs()).all()
    # closed form: RE ∝ σ(z) − σ(z + logit η), DPO ∝ σ(z) − 1
    ratio = (sigmoid(-10) - sigmoid(-10 + math.log(eta / (1 - eta)))) / (sigmoid(-10) - 1)
    assert_close(re_grad / dpo_grad, torch.full((B,), ratio, dtype=torch.float64))


@pytest.mark.parametrize("spec", PARAMS + BASELINES, ids=ids(PARAMS + BASELINES))
def test_implicit_rewards_match_trl_conventions(spec, logps):
    chosen, rejected = losses.implicit_rewards(spec, requiring_grad(logps))
    want_chosen, want_rejected = [], []
    for r in rows(logps):
        if spec.kind == "simpo":
            pair = (r["pc"] / r["lc"], r["pr"] / r["lr"])
        elif spec.kind == "cpo":
            pair = (r["pc"], r["pr"])
        elif spec.kind == "ipo" and not spec.ipo_summed:
            pair = ((r["pc"] - r["rc"]) / r["lc"], (r["pr"] - r["rr"]) / r["lr"])
        else:
            pair = (r["pc"] - r["rc"], r["pr"] - r["rr"])
        want_chosen.append(spec.beta * pair[0])
        want_rejected.append(spec.beta * pair[1])
    assert_close(chosen, want_chosen)
    assert_close(rejected, want_rejected)
    assert not chosen.requires_grad and not rejected.requires_grad


def test_defaults_and_reference_needs():
    assert {k: DEFAULT_BETA[k] for k in LossKind} == {
        "dpo": 0.1, "ipo": 0.1, "simpo": 2.0, "cpo": 0.1, "cdpo": 0.1, "rdpo": 0.1}
    simpo = LossSpec.of("simpo")
    assert (simpo.kind, simpo.beta, simpo.gamma, simpo.cpo_alpha) == (LossKind.simpo, 2.0, 0.5, 1.0)
    assert LossSpec.of(LossKind.cdpo, label_smoothing=0.1) == LossSpec("cdpo", beta=0.1, label_smoothing=0.1)
    assert LossSpec.of("dpo", beta=0.3).beta == 0.3
    assert LossSpec(**json.loads(json.dumps(dataclasses.asdict(simpo)))) == simpo  # as config.json carries it
    assert [k for k in LossKind if losses.needs_reference(k)] == ["dpo", "ipo", "cdpo", "rdpo"]
    assert ROBUST_KINDS == {"dpo", "ipo", "simpo", "cpo"}


def test_reference_free_losses_run_without_reference(logps):
    free = PairLogps(logps.policy_chosen_logps, logps.policy_rejected_logps,
                     chosen_len=logps.chosen_len, rejected_len=logps.rejected_len)
    for kind in ("simpo", "cpo"):
        spec = LossSpec.of(kind)
        assert_close(losses.base_loss(spec, free), losses.base_loss(spec, logps))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: losses.base_loss(LossSpec("dpo", beta=0.1),
                                    PairLogps(p.policy_chosen_logps, p.policy_rejected_logps)),
         "dpo needs PairLogps.ref_chosen_logps"),
        (lambda p: losses.base_loss(LossSpec("simpo", beta=2.0),
                                    PairLogps(p.policy_chosen_logps, p.policy_rejected_logps)),
         "simpo needs PairLogps.chosen_len"),
        (lambda p: losses.induced_logit(LossSpec("rdpo", beta=0.1), p), "rdpo has no induced logit"),
        (lambda p: losses.weighted_loss(LossSpec("cdpo", beta=0.1), p, torch.ones(B)), "cdpo cannot be made"),
        (lambda p: LossSpec("dpo", beta=0.0), "beta must be > 0"),
        (lambda p: LossSpec("rdpo", beta=0.1, flip_rate=0.5), "flip_rate must be in"),
        (lambda p: LossSpec("cdpo", beta=0.1, label_smoothing=-0.1), "label_smoothing must be in"),
        (lambda p: LossSpec("orpo", beta=0.1), "orpo"),
    ],
)
def test_bad_input_raises_a_clear_error(call, message, logps):
    with pytest.raises(ValueError, match=message):
        call(logps)
