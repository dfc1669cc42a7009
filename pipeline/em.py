"""Annotator reliabilities η: init, the per-step EMA (Eq. 7), the exact M-step (Eq. 6), and the θ-fixed EM.

Pure torch: reads and writes nothing. η is a float64 tensor of shape (K,), one entry per annotator, always
in [ETA_MIN, ETA_MAX] (method.md §7.3). Every update returns a new tensor.

The updates take per-annotator sums of w and label counts, not w itself, so that a multi-process trainer
can all-reduce (sums, counts) over the global batch first and every rank holds the same η (method.md §7.4):

    sums, counts = annotator_sums(w, batch_annotator, num_annotators)
    # torch.distributed.all_reduce(sums); torch.distributed.all_reduce(counts)
    eta = ema_update(eta, sums, counts, alpha)
"""

from __future__ import annotations

import torch
from torch import Tensor

from re_po.pipeline.losses import posterior_weight

ETA_MIN, ETA_MAX = 1e-4, 1 - 1e-4


def init_eta(num_annotators: int, eta0: float = 0.9) -> Tensor:
    """η = η0 for every annotator, (K,) float64. η0 must be in (½, 1): η = ½ gives zero gradient (method.md §5)."""
    if num_annotators < 1:
        raise ValueError(f"num_annotators must be >= 1, got {num_annotators}")
    if not 0.5 < eta0 < 1.0:
        raise ValueError(f"eta0 must be in (0.5, 1), got {eta0}")
    return torch.full((num_annotators,), eta0, dtype=torch.float64).clamp(ETA_MIN, ETA_MAX)


def annotator_sums(w: Tensor, annotator: Tensor, num_annotators: int) -> tuple[Tensor, Tensor]:
    """Per-annotator (Σ w, label count), each (K,) float64, from w (B,) and annotator indices (B,) long."""
    if w.shape != annotator.shape:
        raise ValueError(f"w {tuple(w.shape)} and annotator {tuple(annotator.shape)} must have the same shape")
    if annotator.numel() and not 0 <= int(annotator.min()) <= int(annotator.max()) < num_annotators:
        raise ValueError(f"annotator indices must be in [0, {num_annotators}), got "
                         f"[{int(annotator.min())}, {int(annotator.max())}]")
    index = annotator.to(device=w.device, dtype=torch.long)
    sums = torch.zeros(num_annotators, dtype=torch.float64, device=w.device)
    sums.index_add_(0, index, w.detach().to(torch.float64))
    counts = torch.bincount(index, minlength=num_annotators).to(torch.float64)
    return sums, counts


def _batch_means(sums: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """(mean w per annotator, mask of annotators with labels), each (K,); absent annotators get mean 0."""
    present = counts > 0
    return sums / counts.clamp(min=1), present


def ema_update(eta: Tensor, sums: Tensor, counts: Tensor, alpha: float) -> Tensor:
    """Eq. 7 (Alg. 1): η_k ← (1 − α)·η_k + α·mean of this step's w over k's labels, for k with labels only.

    `sums`, `counts` from `annotator_sums` (all-reduced by a multi-process caller); annotators absent from the
    batch keep their η. Returns a new (K,) tensor, clamped to [ETA_MIN, ETA_MAX].
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    means, present = _batch_means(sums.to(eta), counts.to(eta))
    moved = ((1 - alpha) * eta + alpha * means).clamp(ETA_MIN, ETA_MAX)
    return torch.where(present, moved, eta)


def mstep(eta: Tensor, sums: Tensor, counts: Tensor) -> Tensor:
    """Eq. 6: η_k = mean of w over k's labels where k has labels, else unchanged. A new (K,) tensor, clamped."""
    means, present = _batch_means(sums.to(eta), counts.to(eta))
    return torch.where(present, means.clamp(ETA_MIN, ETA_MAX), eta)


def fit_eta(
    z: Tensor,
    annotator: Tensor,
    num_annotators: int,
    eta0: float = 0.9,
    tol: float = 1e-10,
    max_iter: int = 100_000,
) -> Tensor:
    """The full-batch EM for η with θ fixed, iterated to convergence: η ← mstep(η, E-step(z, η)); (K,) float64.

    z: induced logits (B,) of every label; annotator: (B,) long. Stops when no η_k moves by more than `tol`;
    raises RuntimeError after `max_iter` iterations. With calibrated z this reaches the maximum-likelihood η,
    the true reliability in the limit (Thm 4.1, method.md §5); any start in (0, 1) works.

    For tests and analysis only. Training must NOT apply it to the in-sample margins of a policy trained on the
    same labels: those margins are not calibrated, and the fixed point is η ≈ 1 for every annotator
    (method.md §7.5).
    """
    if not 0.0 < eta0 < 1.0:
        raise ValueError(f"eta0 must be in (0, 1), got {eta0}")
    z = z.detach().to(torch.float64)
    index = annotator.to(device=z.device, dtype=torch.long)
    eta = torch.full((num_annotators,), eta0, dtype=torch.float64, device=z.device)
    for _ in range(max_iter):
        w = posterior_weight(z, eta[index])
        new_eta = mstep(eta, *annotator_sums(w, index, num_annotators))
        if float((new_eta - eta).abs().max()) <= tol:
            return new_eta
        eta = new_eta
    raise RuntimeError(f"fit_eta did not converge to tol={tol} in {max_iter} iterations (eta={eta.tolist()})")


def other_labels_logit(eta: Tensor, annotator: Tensor, pair: Tensor, orientation: Tensor, num_pairs: int) -> Tensor:
    """Σ_{j ∈ pair(i), j ≠ i} s_ij·logit η_{k_j} for every row i, (N,) float64: the evidence of the OTHER labels of
    row i's pair (method.md §9), s_ij = +1 where label j states the same order as label i, −1 where not.

    annotator, pair: (N,) long indices; orientation: (N,) ±1, the order each row states relative to its pair's
    reference order (s_ij = o_i·o_j). Zero for a pair with one label, where the E-step is Eq. 4. Adding it to z
    in `posterior_weight` gives the exact posterior with one true order per pair (Dawid–Skene with the model as
    prior): w_i = σ(z_i + logit η_{k_i} + Σ_{j≠i} s_ij·logit η_{k_j}).
    """
    o = orientation.to(torch.float64)
    votes = o * torch.logit(eta.clamp(ETA_MIN, ETA_MAX))[annotator]
    per_pair = torch.zeros(num_pairs, dtype=torch.float64, device=votes.device).index_add_(0, pair, votes)
    return o * per_pair[pair] - o * votes  # o_i·(S_g − o_i·v_i) with o_i² = 1
