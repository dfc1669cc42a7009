"""RE-PO's algorithm around the policy's forward: the E-step, the robust loss, and how η moves (method.md §4, §7, §9).

Pure torch: reads and writes nothing. The training loop (stages/train.py) calls, per micro-batch,
`posterior` then `per_pair_loss`; after each optimizer step `after_step`; after each epoch's no-grad pass
`posterior` again and `after_epoch`. The estimator (pipeline/reliability.py) shares the same E-step
(losses.posterior_weight with em.other_labels_logit).

The E-step's evidence about each label (all logits of the row's observed order):
    policy  z_i                     the paper's Algorithm 1: the policy's induced logit alone
    seeded  z_i + prior_i           the policy's logit plus the estimate's out-of-sample logit (epoch 0)
    prior   prior_i                 the estimate alone: the policy's margins are never used as evidence
plus, in every rule, the other labels of the pair (one true order per pair, §9).
The policy's z of a pair it has not trained on and the estimate's prior are evidence from different sources
(the policy: what it learned from other pairs' labels through its log-probs; the prior: a probe on the frozen
reference model's embeddings, cross-fitted so it never saw the pair's label). Once the policy has trained on a
pair, z also carries that pair's own label: `seeded` then counts the label twice, `prior` never does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from re_po.pipeline import em, losses
from re_po.pipeline.choices import EStep, EtaUpdate, LossSpec, RobustForm
from re_po.pipeline.losses import PairLogps


def posterior(rule: EStep, z: Tensor, prior: Tensor | None, others: Tensor, eta: Tensor) -> Tensor:
    """w (B,): the E-step under `rule` (module docstring), detached. z: the policy's induced logits (B,);
    prior: the estimate's logits (B,) (None for `policy`); others: em.other_labels_logit (B,); eta: (B,) η of
    each row's annotator."""
    evidence = z.detach().double()
    if rule is not EStep.policy:
        if prior is None:
            raise ValueError(f"E-step {rule} needs the estimate's prior logits")
        prior = prior.to(device=z.device, dtype=torch.float64)
        evidence = evidence + prior if rule is EStep.seeded else prior
    return losses.posterior_weight(evidence + others.to(evidence), eta).to(z.dtype)


def per_pair_loss(form: RobustForm, loss: LossSpec, logps: PairLogps, z: Tensor, w: Tensor) -> Tensor:
    """(B,) RE-PO loss of each pair: BCE(z, w) (Eq. 5) or the weighted raw loss (method.md §7.1)."""
    if form is RobustForm.induced:
        return losses.robust_loss(z, w)
    return losses.weighted_loss(loss, logps, w)


def after_step(eta: Tensor, w: Tensor, annotator: Tensor, update: EtaUpdate, alpha: float,
               held: Tensor | None = None) -> Tensor:
    """η after an optimizer step: the EMA of Eq. 7 on the global batch's w, when `update` has it and α > 0.
    held: (K,) bool, the annotators whose η does not move (those the estimate did not identify)."""
    if update not in (EtaUpdate.ema, EtaUpdate.both) or alpha <= 0:
        return eta
    return _keep(held, eta, em.ema_update(eta, *em.annotator_sums(w, annotator, eta.numel()), alpha))


def after_epoch(eta: Tensor, w: Tensor, annotator: Tensor, update: EtaUpdate, held: Tensor | None = None) -> Tensor:
    """η after an epoch's pass: ONE exact M-step (Eq. 6) on its fresh w when `update` has it — never iterated to
    convergence on in-sample margins, which drives every η to 1 (method.md §7.5). held: as in after_step."""
    if update not in (EtaUpdate.epoch, EtaUpdate.both):
        return eta
    return _keep(held, eta, em.mstep(eta, *em.annotator_sums(w, annotator, eta.numel())))


def _keep(held: Tensor | None, before: Tensor, after: Tensor) -> Tensor:
    """`after`, except where `held`: there η stays as `before`. Where the data do not identify an η (the estimate's
    standard error above MAX_SE), one more EM step from η0 would move it by as much as it likes, and silently."""
    return after if held is None else torch.where(held.to(after.device), before, after)
