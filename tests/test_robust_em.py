"""pipeline/robust.EM, the EM of one run as one object: its E-step is the rule's formula, the updates move η as the
mode says (and never a held annotator's), and its checkpoint share restores it exactly. Plain has the interface."""
import math

import pytest
import torch

from re_po.pipeline import losses, robust
from re_po.pipeline.choices import EStep, EtaUpdate, LossSpec, RobustForm
from re_po.pipeline.losses import PairLogps
from re_po.pipeline.reliability import Labels

# rows 0, 1 label pair 0 (row 1 the reverse order), row 2 alone labels pair 1; annotators 0, 1, 0
LABELS = Labels(torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), torch.tensor([1, -1, 1]), 2, 2)
SPEC = LossSpec.of("dpo")


def made(rule=EStep.policy, update=EtaUpdate.ema, prior=None, held=None) -> robust.EM:
    return robust.EM(SPEC, rule, update, 0.5, RobustForm.induced, LABELS,
                     torch.tensor([0.9, 0.7], dtype=torch.float64), prior, held)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_the_e_step_adds_the_pairs_other_labels_to_the_evidence():
    em, z = made(), torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    w = em.weights([0, 1, 2], z)
    expected = [0.3 + logit(0.9) - logit(0.7), -0.2 + logit(0.7) - logit(0.9), 1.0 + logit(0.9)]  # row 1 disagrees
    torch.testing.assert_close(w, torch.sigmoid(torch.tensor(expected, dtype=torch.float64)))
    prior = torch.tensor([2.0, -2.0, 0.5], dtype=torch.float64)
    alone = made(EStep.prior, prior=prior).weights([2], z[2:])  # the estimate's logit, not the policy's
    assert float(alone) == float(torch.sigmoid(torch.tensor(0.5 + logit(0.9), dtype=torch.float64)))


def test_after_step_moves_eta_by_the_ema_except_where_held_and_records_first_visits():
    em, z = made(held=torch.tensor([False, True])), torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    w = em.weights([0, 1, 2], z)
    em.after_step(torch.tensor([0, 1, 2]), z, w, step=1, epoch=1)
    assert float(em.eta[0]) == 0.5 * 0.9 + 0.5 * float((w[0] + w[2]) / 2) and float(em.eta[1]) == 0.7  # Eq. 7; held
    assert em.first_visit_z.tolist() == z.tolist()
    em.after_step(torch.tensor([0]), torch.tensor([5.0], dtype=torch.float64), w[:1], step=2, epoch=2)
    assert em.first_visit_z.tolist() == z.tolist()  # epoch 1 only
    assert [event["event"] for event in em.history] == ["step", "step"]


def test_after_epoch_takes_one_m_step_only_where_the_mode_has_it():
    z = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    stays = made(update=EtaUpdate.ema)
    w = stays.after_epoch(z, step=3, epoch=1)
    assert stays.eta.tolist() == [0.9, 0.7] and stays.history == []
    moves = made(update=EtaUpdate.epoch)
    assert torch.equal(moves.after_epoch(z, step=3, epoch=1), w)
    assert moves.eta.tolist() == [float((w[0] + w[2]) / 2), float(w[1])]  # Eq. 6
    assert moves.history[-1]["event"] == "epoch_pass"


def test_the_checkpoint_share_restores_the_em_exactly():
    em, z = made(), torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    em.start(0, 1)
    em.after_step(torch.tensor([0, 1, 2]), z, em.weights([0, 1, 2], z), step=1, epoch=1)
    again = made()
    again.load_state_dict(em.state_dict())
    assert torch.equal(again.eta, em.eta) and torch.equal(again.first_visit_z, em.first_visit_z)
    assert [{**e, "eta": e["eta"].tolist()} for e in again.history] == [{**e, "eta": e["eta"].tolist()}
                                                                       for e in em.history]
    assert torch.equal(again.weights([0, 1, 2], z), em.weights([0, 1, 2], z))


def test_plain_has_the_interface_and_trains_the_base_loss():
    plain = robust.Plain(SPEC)
    logps = PairLogps(*(torch.tensor([v], dtype=torch.float64) for v in (-3.0, -4.0, -3.5, -3.5)),
                      torch.tensor([2]), torch.tensor([2]))
    z = plain.logit(logps)
    w = plain.weights([0], z)
    assert math.isnan(float(z)) and math.isnan(float(w)) and not plain.active and plain.state_dict() == {}
    assert float(plain.loss([0], logps, z, w)) == pytest.approx(math.log(1 + math.exp(-0.1)), abs=1e-12)  # DPO, margin 1


def test_rows_resting_on_eta0_are_the_lone_labels_of_held_annotators_without_model_evidence():
    """Against a loop over rows: alone on its pair, its annotator held, its prior exactly 0."""
    generator = torch.Generator().manual_seed(0)
    pair = torch.randint(0, 40, (100,), generator=generator)
    labels = Labels(torch.randint(0, 4, (100,), generator=generator), pair, torch.ones(100, dtype=torch.long), 4, 40)
    prior = torch.where(torch.rand(100, generator=generator) < 0.5, 0.0, torch.randn(100, generator=generator))
    held = torch.tensor([True, False, True, False])
    found = robust.resting_on_eta0(labels, prior.double(), held)
    expected = [int((pair == pair[i]).sum()) == 1 and bool(held[labels.annotator[i]]) and float(prior[i]) == 0.0
                for i in range(100)]
    assert found.tolist() == expected and 0 < sum(expected) < 100
    assert robust.resting_on_eta0(labels, None, held) is None and robust.resting_on_eta0(labels, prior, None) is None


def test_a_label_resting_on_eta0_trains_with_the_base_loss_the_others_with_re_po():
    """Row 2 (alone on pair 1, annotator 0 held, prior 0) gets IPO's own loss, not BCE(z, η0) (which for IPO is not
    even IPO at w = 1); rows 0 and 1 share a pair and keep RE-PO's loss; a prior other than 0, or the policy's
    E-step, keeps RE-PO's loss on row 2 too."""
    spec = LossSpec.of("ipo")
    logps = PairLogps(*(torch.tensor(v, dtype=torch.float64) for v in ([-3.0, -5.0, -2.0], [-4.0, -4.5, -6.0],
                                                                       [-3.5, -5.0, -2.5], [-3.5, -4.0, -6.5])),
                      torch.tensor([2, 3, 4]), torch.tensor([2, 3, 4]))
    held = torch.tensor([True, True])

    def em(rule, prior):
        return robust.EM(spec, rule, EtaUpdate.epoch, 0.5, RobustForm.induced, LABELS,
                         torch.tensor([0.9, 0.9], dtype=torch.float64), prior, held)

    at_chance = em(EStep.prior, torch.zeros(3, dtype=torch.float64))
    z = at_chance.logit(logps)
    w = at_chance.weights([0, 1, 2], z)
    assert float(w[2]) == pytest.approx(0.9)  # the posterior itself stays η0: the columns say what the data say
    loss = at_chance.loss([0, 1, 2], logps, z, w)
    base, bce = losses.base_loss(spec, logps), losses.robust_loss(z, w)
    assert float(loss[2]) == float(base[2]) and float(loss[2]) != pytest.approx(float(bce[2]))
    assert loss[:2].tolist() == bce[:2].tolist()
    for other in (em(EStep.prior, torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)), em(EStep.policy, None)):
        w = other.weights([0, 1, 2], z)
        assert other.loss([0, 1, 2], logps, z, w).tolist() == losses.robust_loss(z, w).tolist()


def test_each_robust_form_is_its_own_loss():
    """per_pair_loss dispatches on the form: BCE on z, the weighted mix of both orders, or w·L(a≻b) alone."""
    spec = LossSpec.of("ipo")
    logps = PairLogps(*(torch.tensor(v, dtype=torch.float64) for v in ([-3.0, -5.0], [-4.0, -4.5], [-3.5, -5.0],
                                                                       [-3.5, -4.0])), torch.tensor([2, 3]),
                      torch.tensor([2, 3]))
    z, w = losses.induced_logit(spec, logps), torch.tensor([0.7, 0.2], dtype=torch.float64)
    found = {form: robust.per_pair_loss(form, spec, logps, z, w) for form in RobustForm}
    assert found[RobustForm.induced].tolist() == losses.robust_loss(z, w).tolist()
    assert found[RobustForm.weighted].tolist() == losses.weighted_loss(spec, logps, w).tolist()
    assert found[RobustForm.scaled].tolist() == (w * losses.base_loss(spec, logps)).tolist()
    assert len({tuple(loss.tolist()) for loss in found.values()}) == 3
