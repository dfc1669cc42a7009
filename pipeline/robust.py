"""RE-PO's algorithm around the policy's forward: the E-step, the robust loss, and how η moves (method.md §4, §7, §9).

Pure torch: reads and writes nothing. `EM` holds all of it for one run: η, the per-row prior, the held annotators,
the E-step, the per-step and between-epoch updates and its share of the checkpoint; `Plain` is the same interface
for a run without RE-PO. The training loop (stages/train.py) calls, per micro-batch,

    z = em.logit(logps); w = em.weights(rows, z); per_pair = em.loss(rows, logps, z, w)

after each optimizer step `em.after_step(rows, z, w, step, epoch)`, and after each epoch's no-grad pass over all
rows `em.after_epoch(z, step, epoch)`. The functions below are the rules it applies. The estimator
(pipeline/reliability.py) shares the same E-step (losses.posterior_weight with em.other_labels_logit).

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
from re_po.pipeline.reliability import Labels


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
    """(B,) RE-PO loss of each pair: BCE(z, w) (Eq. 5), the weighted or the scaled raw loss (method.md §7.1)."""
    if form is RobustForm.induced:
        return losses.robust_loss(z, w)
    if form is RobustForm.scaled:
        return losses.scaled_loss(loss, logps, w)
    return losses.weighted_loss(loss, logps, w)


def resting_on_eta0(labels: Labels, prior: Tensor | None, held: Tensor | None) -> Tensor | None:
    """(N,) bool: the rows whose posterior rests on η0 alone: a label alone on its pair, by an annotator the estimate
    did not identify (`held`), with no model evidence for the pair (prior 0: the model was at chance, method.md §9
    item 6). Their w is η0, a number no data chose, and w ≡ η0 is label smoothing; so they train with the base
    loss, as without --robust (method.md §10). None where no row can be such (no prior, or nobody held)."""
    if prior is None or held is None:
        return None
    alone = torch.bincount(labels.pair, minlength=labels.num_pairs)[labels.pair] == 1
    return alone & held[labels.annotator] & (prior == 0)


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


class EM:
    """RE-PO's EM for one run (module docstring): η (K,) float64, the estimate's per-row prior logits (N,) or None,
    the held annotators (K,) bool or None, each row's margin at its first visit (N,), and η's history.

    loss: the loss wrapped; rule, update, alpha, form: the E-step's evidence, how η moves, α of Eq. 7 and the robust
    loss's form (stages/configs.RobustMode names the measured settings); labels: who labelled which pair which way.
    """

    active = True

    def __init__(self, loss: LossSpec, rule: EStep, update: EtaUpdate, alpha: float, form: RobustForm,
                 labels: Labels, eta: Tensor, prior: Tensor | None = None, held: Tensor | None = None) -> None:
        if rule is not EStep.policy and prior is None:
            raise ValueError(f"E-step {rule} needs the estimate's prior logits")
        self.spec, self.rule, self.update, self.alpha, self.form, self.labels = loss, rule, update, alpha, form, labels
        self.eta, self.prior, self.held = eta, prior, held
        # rows trained with the base loss: the prior rule only (with the policy's z in the E-step, w is not η0)
        self.base_rows = resting_on_eta0(labels, prior, held) if rule is EStep.prior else None
        self.first_visit_z = torch.full((labels.annotator.numel(),), float("nan"), dtype=torch.float64)
        self.history: list[dict] = []  # {"step", "epoch", "event", "eta": (K,)}: η after every change
        self._others: Tensor | None = None  # the other labels' evidence under the η in force (§9), per row

    def start(self, step: int, epoch: int) -> None:
        """Record the η training starts from (not on resume: the checkpoint's history has it)."""
        self._record(step, epoch, "init")

    def logit(self, logps: PairLogps) -> Tensor:
        """The policy's induced logits z (B,) of the rows' observed orders (Eq. 2)."""
        return losses.induced_logit(self.spec, logps)

    def weights(self, rows: list[int], z: Tensor) -> Tensor:
        """The E-step (Eq. 4 with the pair's other labels, §9) for `rows` (B,) with the η in force: w (B,), detached."""
        if self._others is None:  # η moves only between steps: once per η
            self._others = em.other_labels_logit(self.eta, self.labels.annotator, self.labels.pair,
                                                 self.labels.orientation, self.labels.num_pairs)
        return posterior(self.rule, z, None if self.prior is None else self.prior[rows], self._others[rows],
                         self.eta[self.labels.annotator[rows]])

    def loss(self, rows: list[int], logps: PairLogps, z: Tensor, w: Tensor) -> Tensor:
        """The RE-PO loss of each pair (B,) (Eq. 5, or the weighted form, method.md §7.1); the base loss on the rows
        whose posterior rests on η0 alone (resting_on_eta0)."""
        per_pair = per_pair_loss(self.form, self.spec, logps, z, w)
        base = None if self.base_rows is None else self.base_rows[rows].to(per_pair.device)
        if base is None or not base.any():
            return per_pair
        return torch.where(base, losses.base_loss(self.spec, logps).to(per_pair.dtype), per_pair)

    def after_step(self, rows: Tensor, z: Tensor, w: Tensor, step: int, epoch: int) -> None:
        """After the optimizer step, on the global batch's rows (B,) long, z and w: epoch 1 records each row's
        margin before the policy trained on it (method.md §7.6); then η moves by `update` (Eq. 7, §7.4)."""
        if epoch == 1:
            self.first_visit_z[rows] = z
        self._set(after_step(self.eta, w, self.labels.annotator[rows], self.update, self.alpha, self.held))
        self._record(step, epoch, "step")

    def after_epoch(self, z: Tensor, step: int, epoch: int) -> Tensor:
        """Between epochs, from the no-grad pass's z of every row (N,): every posterior w (N,) with the η in force,
        returned; then, where `update` has it, one exact M-step (Eq. 6, method.md §7.5)."""
        w = posterior(self.rule, z, self.prior, em.other_labels_logit(
            self.eta, self.labels.annotator, self.labels.pair, self.labels.orientation, self.labels.num_pairs),
            self.eta[self.labels.annotator])
        if self.update in (EtaUpdate.epoch, EtaUpdate.both):
            self._set(after_epoch(self.eta, w, self.labels.annotator, self.update, self.held))
            self._record(step, epoch, "epoch_pass")
        return w

    def state_dict(self) -> dict:
        """Its share of a checkpoint: tensors, and the history's events as plain values (data/checkpoint.py)."""
        etas = (torch.stack([event["eta"] for event in self.history]) if self.history
                else torch.zeros((0, self.eta.numel()), dtype=torch.float64))
        return {"eta": self.eta, "first_visit_z": self.first_visit_z, "eta_history": etas,
                "events": [{k: v for k, v in event.items() if k != "eta"} for event in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self._set(state["eta"])
        self.first_visit_z = state["first_visit_z"]
        self.history = [{**event, "eta": eta} for event, eta in zip(state["events"], state["eta_history"])]

    def _set(self, eta: Tensor) -> None:
        if eta is not self.eta:
            self.eta, self._others = eta, None

    def _record(self, step: int, epoch: int, event: str) -> None:
        self.history.append({"step": step, "epoch": epoch, "event": event, "eta": self.eta})


class Plain:
    """The same interface for a run without RE-PO: the base method's own loss (not w ≡ 1); no z, no w (NaN in the
    records), no η, nothing in the checkpoint."""

    active = False

    def __init__(self, loss: LossSpec) -> None:
        self.spec = loss

    def start(self, step: int, epoch: int) -> None:
        pass

    def logit(self, logps: PairLogps) -> Tensor:
        return torch.full_like(logps.policy_chosen_logps, float("nan"))

    def weights(self, rows: list[int], z: Tensor) -> Tensor:
        return z

    def loss(self, rows: list[int], logps: PairLogps, z: Tensor, w: Tensor) -> Tensor:
        return losses.base_loss(self.spec, logps)

    def after_step(self, rows: Tensor, z: Tensor, w: Tensor, step: int, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
