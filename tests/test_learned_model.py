"""method.md §8 item 7: RE-PO's Alg. 1 on a learned model recovers annotator reliabilities and flags flips.

The model is a linear Bradley–Terry scorer s(x) = θ·x on synthetic features, trained as RE-DPO with β = 1 and a
zero reference (its score plays the summed log-prob), mini-batch SGD, and the paper's per-step EMA for η with
its defaults η0 = 0.9, α = 0.1 (method.md §4). Runs in well under a second.
"""

import torch

from re_po.pipeline import em, losses
from re_po.pipeline.choices import LossSpec
from re_po.pipeline.losses import PairLogps

NUM_PAIRS, NUM_FEATURES, TRUE_NORM = 4000, 8, 3.0
FLIP_RATES = (0.0, 0.4)  # annotator 0 is clean; annotator 1 flips 40% of its labels
BATCH_SIZE, EPOCHS, LR = 128, 10, 0.5


def noisy_pairs(seed: int) -> dict[str, torch.Tensor]:
    """Pairs (a, b) with a true Bradley–Terry order, labelled alternately by two annotators who flip it."""
    g = torch.Generator().manual_seed(seed)
    theta_star = torch.randn(NUM_FEATURES, generator=g)
    theta_star *= TRUE_NORM / theta_star.norm()  # true margins r ~ N(0, 18): mostly confident pairs
    x_a = torch.randn(NUM_PAIRS, NUM_FEATURES, generator=g)
    x_b = torch.randn(NUM_PAIRS, NUM_FEATURES, generator=g)
    a_truly_better = torch.rand(NUM_PAIRS, generator=g) < torch.sigmoid((x_a - x_b) @ theta_star)
    annotator = torch.arange(NUM_PAIRS) % 2
    flipped = torch.rand(NUM_PAIRS, generator=g) < torch.tensor(FLIP_RATES)[annotator]
    a_chosen = (a_truly_better ^ flipped)[:, None]
    return {
        "x_chosen": torch.where(a_chosen, x_a, x_b),
        "x_rejected": torch.where(a_chosen, x_b, x_a),
        "annotator": annotator,
        "flipped": flipped,
    }


def scored(theta: torch.Tensor, pairs: dict[str, torch.Tensor], idx: torch.Tensor) -> PairLogps:
    zeros = torch.zeros(len(idx))
    return PairLogps(pairs["x_chosen"][idx] @ theta, pairs["x_rejected"][idx] @ theta, zeros, zeros)


def train_re_dpo(pairs: dict[str, torch.Tensor], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 1 per step: forward → z → w = σ(z.detach() + logit η) → BCE(z, w) → SGD step → η EMA. Returns (θ, η)."""
    torch.manual_seed(seed)
    dpo = LossSpec("dpo", beta=1.0)
    theta = torch.zeros(NUM_FEATURES, requires_grad=True)
    optimizer = torch.optim.SGD([theta], lr=LR)
    eta = em.init_eta(len(FLIP_RATES), eta0=0.9)
    for _ in range(EPOCHS):
        for idx in torch.randperm(NUM_PAIRS).split(BATCH_SIZE):
            z = losses.induced_logit(dpo, scored(theta, pairs, idx))
            w = losses.posterior_weight(z, eta[pairs["annotator"][idx]])
            loss = losses.robust_loss(z, w).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sums, counts = em.annotator_sums(w, pairs["annotator"][idx], len(FLIP_RATES))
            eta = em.ema_update(eta, sums, counts, alpha=0.1)
    return theta.detach(), eta


def roc_auc_by_pair_counting(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties counting ½: every pair compared."""
    higher = (positive_scores[:, None] > negative_scores[None, :]).double().mean()
    ties = (positive_scores[:, None] == negative_scores[None, :]).double().mean()
    return float(higher + 0.5 * ties)


def test_roc_auc_by_pair_counting_hand_example():
    """Positives {0.9, 0.4}, negatives {0.5, 0.4, 0.1}: wins 3 + 1, one tie, of 6 comparisons → 4.5/6."""
    assert roc_auc_by_pair_counting(torch.tensor([0.9, 0.4]), torch.tensor([0.5, 0.4, 0.1])) == 0.75


def test_item7_learned_scorer_recovers_reliabilities_and_flags_flipped_pairs():
    pairs = noisy_pairs(seed=0)
    theta, eta = train_re_dpo(pairs, seed=0)

    assert abs(float(eta[0]) - 1.0) <= 0.05 and abs(float(eta[1]) - 0.6) <= 0.05, eta.tolist()

    all_pairs = torch.arange(NUM_PAIRS)
    with torch.no_grad():
        z = losses.induced_logit(LossSpec("dpo", beta=1.0), scored(theta, pairs, all_pairs))
        w = losses.posterior_weight(z, eta[pairs["annotator"]])
    flipped, noisy_annotator = pairs["flipped"], pairs["annotator"] == 1
    suspicion = 1 - w
    assert roc_auc_by_pair_counting(suspicion[flipped], suspicion[~flipped]) >= 0.9
    assert roc_auc_by_pair_counting(suspicion[flipped], suspicion[noisy_annotator & ~flipped]) >= 0.9
    assert w[~flipped].mean() - w[flipped].mean() > 0.5
