"""Preference losses, their induced logits, and RE-PO's E-step and robust loss (method.md §2–4, §7.1).

Pure torch: reads and writes nothing. Every function takes per-pair tensors of shape (B,) — summed
response log-probs and response token counts — and returns per-pair values; the caller reduces
(the batch mean, method.md §7.3). Family dispatch is the one `match` in `base_loss`, `induced_logit`
and `implicit_rewards`.

Notation (method.md §2): for a pair where a is the observed "chosen" and b the "rejected",
ℓ(y) = log π_θ(y|x) summed over response tokens, ρ(y) = ℓ(y) − log π_ref(y|x), |y| the response's
token count (EOS included, prompt excluded, clamped at 1), σ the logistic function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

import torch
import torch.nn.functional as F
from torch import Tensor

from re_po.pipeline.choices import ROBUST_KINDS, LossKind, LossSpec


@dataclass(frozen=True)
class PairLogps:
    """Per-pair inputs of every loss, all (B,). `*_logps` are sums over response tokens; `*_len` their counts.

    The reference log-probs may be None for the reference-free losses (simpo, cpo); the lengths may be None
    for the losses that do not normalise by length (dpo, cdpo, rdpo, and ipo with `ipo_summed`).
    """

    policy_chosen_logps: Tensor
    policy_rejected_logps: Tensor
    ref_chosen_logps: Tensor | None = None
    ref_rejected_logps: Tensor | None = None
    chosen_len: Tensor | None = None
    rejected_len: Tensor | None = None

    def swapped(self) -> PairLogps:
        """The same pairs with the roles of chosen and rejected exchanged: the inputs of L(b≻a)."""
        return PairLogps(
            policy_chosen_logps=self.policy_rejected_logps,
            policy_rejected_logps=self.policy_chosen_logps,
            ref_chosen_logps=self.ref_rejected_logps,
            ref_rejected_logps=self.ref_chosen_logps,
            chosen_len=self.rejected_len,
            rejected_len=self.chosen_len,
        )


def needs_reference(kind: LossKind) -> bool:
    """Whether `kind` reads reference log-probs (SimPO and CPO are reference-free)."""
    return LossKind(kind) not in (LossKind.simpo, LossKind.cpo)


def _field(logps: PairLogps, name: str, kind: LossKind) -> Tensor:
    value = getattr(logps, name)
    if value is None:
        raise ValueError(f"loss {kind} needs PairLogps.{name}, which is None")
    return value


def _log_ratios(logps: PairLogps, kind: LossKind) -> tuple[Tensor, Tensor]:
    """(ρ(a), ρ(b)), each (B,)."""
    chosen = logps.policy_chosen_logps - _field(logps, "ref_chosen_logps", kind)
    rejected = logps.policy_rejected_logps - _field(logps, "ref_rejected_logps", kind)
    return chosen, rejected


def _lengths(logps: PairLogps, kind: LossKind) -> tuple[Tensor, Tensor]:
    """(|a|, |b|) as floats clamped at 1 (method.md §2), each (B,)."""
    chosen = _field(logps, "chosen_len", kind).clamp(min=1).to(logps.policy_chosen_logps.dtype)
    rejected = _field(logps, "rejected_len", kind).clamp(min=1).to(logps.policy_rejected_logps.dtype)
    return chosen, rejected


def _dpo_margin(logps: PairLogps, kind: LossKind) -> Tensor:
    """h = ρ(a) − ρ(b), (B,)."""
    chosen, rejected = _log_ratios(logps, kind)
    return chosen - rejected


def _ipo_margin(logps: PairLogps, loss: LossSpec) -> Tensor:
    """u = ρ̄(a) − ρ̄(b) with per-token mean log-ratios, or summed ones under `ipo_summed`; (B,)."""
    chosen, rejected = _log_ratios(logps, LossKind.ipo)
    if loss.ipo_summed:
        return chosen - rejected
    chosen_len, rejected_len = _lengths(logps, LossKind.ipo)
    return chosen / chosen_len - rejected / rejected_len


def _simpo_margin(logps: PairLogps, loss: LossSpec) -> Tensor:
    """s = β(ℓ(a)/|a| − ℓ(b)/|b|), (B,)."""
    chosen_len, rejected_len = _lengths(logps, LossKind.simpo)
    return loss.beta * (logps.policy_chosen_logps / chosen_len - logps.policy_rejected_logps / rejected_len)


def _cpo_nll(logps: PairLogps) -> tuple[Tensor, Tensor]:
    """(NLL(a), NLL(b)) = (−ℓ(a)/|a|, −ℓ(b)/|b|): per-pair per-token means (method.md §2, not TRL's pooled NLL)."""
    chosen_len, rejected_len = _lengths(logps, LossKind.cpo)
    return -logps.policy_chosen_logps / chosen_len, -logps.policy_rejected_logps / rejected_len


def base_loss(loss: LossSpec, logps: PairLogps) -> Tensor:
    """L(a≻b) per pair, (B,): the method's own loss (method.md §2 table; cDPO and rDPO baselines).

    dpo:   −log σ(βh),                     h = ρ(a) − ρ(b)
    ipo:   (u − 1/(2β))²,                  u = ρ̄(a) − ρ̄(b)
    simpo: −log σ(s − γ),                  s = β(ℓ(a)/|a| − ℓ(b)/|b|)
    cpo:   −log σ(β(ℓ(a) − ℓ(b))) + α·NLL(a)
    cdpo:  (1−ε)·ℓ_β(h) + ε·ℓ_β(−h)                   with ℓ_β(h) = −log σ(βh), ε = label_smoothing
    rdpo:  [(1−ε)·ℓ_β(h) − ε·ℓ_β(−h)] / (1 − 2ε)       ε = flip_rate (Chowdhury et al. 2024)
    """
    kind = loss.kind
    match kind:
        case LossKind.dpo:
            return -F.logsigmoid(loss.beta * _dpo_margin(logps, kind))
        case LossKind.ipo:
            return (_ipo_margin(logps, loss) - 1 / (2 * loss.beta)) ** 2
        case LossKind.simpo:
            return -F.logsigmoid(_simpo_margin(logps, loss) - loss.gamma)
        case LossKind.cpo:
            chosen_nll, _ = _cpo_nll(logps)
            preference = -F.logsigmoid(loss.beta * (logps.policy_chosen_logps - logps.policy_rejected_logps))
            return preference + loss.cpo_alpha * chosen_nll
        case LossKind.cdpo:
            h, eps = _dpo_margin(logps, kind), loss.label_smoothing
            return -(1 - eps) * F.logsigmoid(loss.beta * h) - eps * F.logsigmoid(-loss.beta * h)
        case LossKind.rdpo:
            h, eps = _dpo_margin(logps, kind), loss.flip_rate
            unbiased = -(1 - eps) * F.logsigmoid(loss.beta * h) + eps * F.logsigmoid(-loss.beta * h)
            return unbiased / (1 - 2 * eps)
        case _:
            assert_never(kind)


def induced_logit(loss: LossSpec, logps: PairLogps) -> Tensor:
    """z = L(b≻a) − L(a≻b) per pair, (B,), so p_θ(a≻b) = σ(z) (paper Eq. 2; closed forms of method.md §2).

    dpo: βh;  ipo: 2u/β;  simpo: softplus(s + γ) − softplus(γ − s);  cpo: β(ℓ(a) − ℓ(b)) + α(NLL(b) − NLL(a)).
    cdpo and rdpo are baselines with their own noise model and have no RE-PO form: they raise ValueError.
    """
    kind = loss.kind
    match kind:
        case LossKind.dpo:
            return loss.beta * _dpo_margin(logps, kind)
        case LossKind.ipo:
            # (−u − c)² − (u − c)² = 4uc with c = 1/(2β)
            return 2 * _ipo_margin(logps, loss) / loss.beta
        case LossKind.simpo:
            s = _simpo_margin(logps, loss)
            return F.softplus(s + loss.gamma) - F.softplus(loss.gamma - s)
        case LossKind.cpo:
            chosen_nll, rejected_nll = _cpo_nll(logps)
            preference = loss.beta * (logps.policy_chosen_logps - logps.policy_rejected_logps)
            return preference + loss.cpo_alpha * (rejected_nll - chosen_nll)
        case _:
            raise ValueError(f"loss {kind} has no induced logit: RE-PO wraps only {', '.join(sorted(ROBUST_KINDS))}")


def posterior_weight(z: Tensor, eta: Tensor) -> Tensor:
    """E-step (Eq. 4): w = P(label correct | z, η) = pη / (pη + (1−p)(1−η)) = σ(z + logit η), (B,).

    `eta` is each pair's annotator reliability in [0, 1], already gathered to (B,); computed in float64, w comes
    back in z's dtype. z is detached: w is a constant target in the M-step (method.md §3). p = ½ gives w = η,
    η = ½ gives w = p, η = 1 gives w = 1 exactly (logit 1 = +∞); em.py keeps the η of training inside
    [1e-4, 1 − 1e-4] (method.md §7.3).
    """
    return torch.sigmoid(z.detach().to(torch.float64) + torch.logit(eta.to(torch.float64))).to(z.dtype)


def robust_loss(z: Tensor, w: Tensor) -> Tensor:
    """M-step for θ (Eq. 5): −[w·log σ(z) + (1−w)·log σ(−z)] per pair, (B,). ∂/∂z = σ(z) − w.

    Not w·loss: the flipped term stays. With w ≡ 1 it equals the base loss for DPO (method.md §4).
    """
    return F.binary_cross_entropy_with_logits(z, w.to(z.dtype), reduction="none")


def weighted_loss(loss: LossSpec, logps: PairLogps, w: Tensor) -> Tensor:
    """The weighted raw loss w·L(a≻b) + (1−w)·L(b≻a) per pair, (B,) (method.md §7.1; equals robust_loss for DPO)."""
    kind = loss.kind
    if kind not in ROBUST_KINDS:
        raise ValueError(f"loss {kind} cannot be made robust: RE-PO wraps only {', '.join(sorted(ROBUST_KINDS))}")
    w = w.detach().to(logps.policy_chosen_logps.dtype)
    return w * base_loss(loss, logps) + (1 - w) * base_loss(loss, logps.swapped())


def scaled_loss(loss: LossSpec, logps: PairLogps, w: Tensor) -> Tensor:
    """w·L(a≻b) per pair, (B,) (method.md §7.1): each label's own loss scaled by its posterior, the reversed order
    never trained (the clean export made soft)."""
    kind = loss.kind
    if kind not in ROBUST_KINDS:
        raise ValueError(f"loss {kind} cannot be made robust: RE-PO wraps only {', '.join(sorted(ROBUST_KINDS))}")
    return w.detach().to(logps.policy_chosen_logps.dtype) * base_loss(loss, logps)


def implicit_rewards(loss: LossSpec, logps: PairLogps) -> tuple[Tensor, Tensor]:
    """(chosen_rewards, rejected_rewards), each (B,), detached: TRL's metrics `rewards/*`.

    β·ρ(y) for the DPO family; β·ρ̄(y) (per-token mean) for IPO unless `ipo_summed`; β·ℓ(y)/|y| for SimPO;
    β·ℓ(y) for CPO — the log-probs each of TRL's trainers feeds its loss, times β.
    """
    kind = loss.kind
    match kind:
        case LossKind.dpo | LossKind.cdpo | LossKind.rdpo:
            chosen, rejected = _log_ratios(logps, kind)
        case LossKind.ipo:
            chosen, rejected = _log_ratios(logps, kind)
            if not loss.ipo_summed:
                chosen_len, rejected_len = _lengths(logps, kind)
                chosen, rejected = chosen / chosen_len, rejected / rejected_len
        case LossKind.simpo:
            chosen_len, rejected_len = _lengths(logps, kind)
            chosen, rejected = logps.policy_chosen_logps / chosen_len, logps.policy_rejected_logps / rejected_len
        case LossKind.cpo:
            chosen, rejected = logps.policy_chosen_logps, logps.policy_rejected_logps
        case _:
            assert_never(kind)
    return (loss.beta * chosen).detach(), (loss.beta * rejected).detach()
