"""The noise estimator (method.md §9): per-label posteriors and annotator reliabilities η before any training.

Pure torch (float64): reads and writes nothing. Three pieces, used in this order by `estimate`:

1. `probe_features`: from the reference model's mean-pooled hidden states, per pair g the antisymmetric features
   φ_g of its reference order (φ of the reverse order is −φ_g), with interactions against the prompt's principal
   components so that the preferred direction may depend on the prompt ("write a positive / a negative ...").
2. `crossfit_probe`: logistic regression without intercept on φ (so p(a≻b) + p(b≻a) = 1), K folds grouped by pair:
   the score s_g of a pair comes from a probe that saw none of its labels. The ridge strength is chosen by inner
   cross-validation on the training folds' labels (log-loss; on a draw of TUNE_PAIRS of them where there are
   more), never on a truth.
3. `fit_reliability`: EM with the probe's (or a user's judge's) scores as the model, under the paper's flip model
   with ONE true order per pair (Dawid & Skene 1979 with the model as prior, Raykar et al. 2010):
       Λ_g = a·s_g + Σ_{j∈g} o_j·logit η_{k_j}   log-odds that pair g's reference order is the true one
       w_i = σ(o_i·Λ_g)                           posterior that row i's label is right (em.posterior_weight)
   o_i = +1 where row i states the reference order, −1 where it states the reverse. M-step: η_k = mean w over k's
   labels (Eq. 6); the scale a of the scores by a 1-D logistic regression on the posteriors of the true order (the
   calibration the data identifies: P(label | s) = (1 − η) + (2η − 1)·σ(a·s) saturates at η, not at 1). Iterated
   to convergence, which is allowed here because every s_g is out-of-sample (method.md §7.5 forbids it on margins
   of a policy trained on the same labels).
   The standard errors come from the empirical Fisher information of the marginal likelihood over (η, a), or, for
   an η̂ at a bound, from its profile likelihood (profile_se); an
   annotator whose η the data do not identify (SE above `max_se`: single labels and a model at chance, or two
   annotators on every pair and nothing else) keeps η0, and the estimate says so.

Shapes: N label rows, G pairs, K annotators, D features.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from re_po.pipeline.em import ETA_MAX, ETA_MIN, annotator_sums, mstep, other_labels_logit
from re_po.pipeline.losses import posterior_weight

LAMBDAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths tried, per unit of total label weight
TUNE_PAIRS = 8_000  # the ridge is chosen on at most this many pairs of a fold's training part (see crossfit_probe)
MAX_SE = 0.1  # an η whose standard error is larger is not identified by the data: it stays at η0
# Cross-fitting needs this many pairs per fold: with fewer, each fold's probe is fit on a handful of pairs (and the
# inner folds that choose its ridge on fewer still); `estimate` then serves without the probe (probe_fits).
MIN_PAIRS_PER_FOLD = 2
CURVATURE_ROWS = 32_768  # the streamed probe sums its Newton curvature on a draw of about this many rows


@dataclass(frozen=True)
class Labels:
    """Who labelled which pair which way. All (N,) long; orientation is ±1."""

    annotator: Tensor  # index in [0, num_annotators)
    pair: Tensor  # index in [0, num_pairs)
    orientation: Tensor  # +1: the row states its pair's reference order; −1: the reverse
    num_annotators: int
    num_pairs: int

    def __post_init__(self) -> None:
        n = self.annotator.shape
        if self.pair.shape != n or self.orientation.shape != n:
            raise ValueError(f"annotator {tuple(n)}, pair {tuple(self.pair.shape)} and orientation "
                             f"{tuple(self.orientation.shape)} must have one shape")
        if not bool(((self.orientation == 1) | (self.orientation == -1)).all()):
            raise ValueError("orientation must be +1 or -1")

    def per_pair(self, values: Tensor) -> Tensor:
        """(G,) sums over each pair's rows of values (N,)."""
        return torch.zeros(self.num_pairs, dtype=values.dtype).index_add_(0, self.pair, values)


@dataclass(frozen=True)
class Estimate:
    """The estimator's output. z is the calibrated model logit of each row's observed order (0 without a model)."""

    eta: Tensor  # (K,) float64, in [ETA_MIN, ETA_MAX]
    eta_se: Tensor  # (K,) standard error of η (inf where not identified)
    identified: Tensor  # (K,) bool: False where η stayed at η0
    w: Tensor  # (N,) posterior that each row's label is right
    z: Tensor  # (N,) a·s_i: calibrated log-odds of the row's order from the model alone
    scale: Tensor  # (F,) a per calibration group (cross-fitting fold); 0 without a model
    iterations: int
    features: str | None = None  # the probe's features, of the candidates it was given
    log_loss: dict[str, float] | None = None  # each candidate's out-of-fold log-loss on the observed labels
    model_at_chance: bool = False  # the model did not predict the observed labels beyond chance: it was set aside
    mirror_in_reach: bool = False  # no η identified: the labels together were not told from their mirror


# ---- 1. features ------------------------------------------------------------------------------------------------

def probe_features(first: Tensor, second: Tensor, prompt: Tensor | None, components: int = 64,
                   prompt_components: int = 8) -> Tensor:
    """(G, D) antisymmetric features of each pair's reference order (first ≻ second).

    first, second: (G, E) pooled hidden states of the two responses (layers concatenated); prompt: (G, P) or None.
    d = first − second is projected on the top `components` eigenvectors of dᵀd (no centering: dᵀd is the same
    whichever order each pair is given in, so the basis never depends on a label) and whitened; with a
    prompt, the features are [d̃, d̃·u_1, …, d̃·u_m] for u the prompt's top m principal components (standardized),
    which lets the probe's direction be an affine function of the prompt. Linear in d, so φ(b, a) = −φ(a, b).
    """
    d = (first.double() - second.double())
    d = d / d.square().mean(0).sqrt().clamp(min=1e-12)  # per-dimension RMS: massive activations do not dominate
    reduced = d @ _principal_directions(d, components)
    reduced = reduced / reduced.square().mean(0).sqrt().clamp(min=1e-12)  # (G, c), unit RMS each
    if prompt is None or prompt_components == 0:
        return reduced
    centred = prompt.double() - prompt.double().mean(0)
    u = centred @ _principal_directions(centred, prompt_components)
    if u.shape[1] == 0:  # one prompt for every pair: nothing for the direction to depend on
        return reduced
    u = u / u.square().mean(0).sqrt()
    return torch.cat([reduced] + [reduced * u[:, c : c + 1] for c in range(u.shape[1])], dim=1)


def _principal_directions(x: Tensor, count: int) -> Tensor:
    """(E, c ≤ count) top eigenvectors of xᵀx above rounding, each signed so its largest entry is positive."""
    try:
        values, vectors = _eigh(x.T @ x)  # ascending
    except torch.linalg.LinAlgError:  # LAPACK fails on some xᵀx of a few rows that differ in a few entries (8 labels
        # of one prompt, pooled in float16): the same directions from the (G, G) side, v = xᵀu / √λ
        values, u = _eigh(x @ x.T)
        vectors = x.T @ u / values.clamp(min=torch.finfo(values.dtype).tiny).sqrt()
    return _top_directions(values, vectors, count)


def _top_directions(values: Tensor, vectors: Tensor, count: int) -> Tensor:
    """The `count` leading eigenvectors of an ascending eigh (values, vectors) above rounding, signed as above."""
    values, vectors = values.flip(0), vectors.flip(1)
    keep = min(count, int((values > values[0].clamp(min=0) * 1e-10).sum())) if values.numel() and values[0] > 0 else 0
    vectors = vectors[:, :keep]
    signs = torch.sign(vectors.gather(0, vectors.abs().argmax(0, keepdim=True)))
    return vectors * signs


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """torch.linalg.eigh of a symmetric matrix, solved at unit scale: LAPACK fails to converge on some of tiny
    entries (prompts that differ only by float16 rounding gave xᵀx of entries below 1e-7), and the eigenvectors do
    not depend on the scale. A zero matrix has zero eigenvalues and the unit vectors."""
    scale = matrix.abs().max() if matrix.numel() else torch.zeros((), dtype=matrix.dtype)
    if not bool(torch.isfinite(scale)):
        raise ValueError("the estimator's inputs hold non-finite values (inf or NaN)")
    if scale == 0:
        return torch.zeros(matrix.shape[0], dtype=matrix.dtype), torch.eye(matrix.shape[0], dtype=matrix.dtype)
    values, vectors = torch.linalg.eigh(matrix / scale)
    return values * scale, vectors


# ---- 2. the cross-fitted probe ----------------------------------------------------------------------------------

def fit_logistic(x: Tensor, target: Tensor, weight: Tensor, ridge: float, iterations: int = 50,
                 start: Tensor | None = None) -> Tensor:
    """(D,) β minimising Σ_g c_g·[t_g·softplus(−x_g·β) + (1 − t_g)·softplus(x_g·β)] + ridge/2·‖β‖², by Newton.

    x (G, D), target t (G,) in [0, 1], weight c (G,) ≥ 0. No intercept. The objective is strictly convex for
    ridge > 0, so Newton with step halving converges to its unique minimum, from any `start` (default 0).
    """
    x, target, weight = x.double(), target.double(), weight.double()
    beta = torch.zeros(x.shape[1], dtype=torch.float64) if start is None else start.double()
    eye = torch.eye(x.shape[1], dtype=torch.float64)
    x_single = x.float()  # for the curvature only (see _newton_step)

    def objective(b: Tensor) -> Tensor:
        margin = x @ b
        return (weight * (target * torch.nn.functional.softplus(-margin)
                          + (1 - target) * torch.nn.functional.softplus(margin))).sum() + ridge / 2 * b.dot(b)

    value = objective(beta)
    for _ in range(iterations):
        p = torch.sigmoid(x @ beta)
        gradient = x.T @ (weight * (p - target)) + ridge * beta
        step = _newton_step(x, x_single, weight * p * (1 - p), ridge, gradient, eye)
        size = 1.0
        while True:
            candidate = beta - size * step
            new_value = objective(candidate)
            if new_value <= value or size < 1e-8:
                break
            size /= 2
        beta, improvement, value = candidate, float(value - new_value), new_value
        if improvement <= 1e-12 * max(1.0, abs(float(value))):
            break
    return beta


def _newton_step(x: Tensor, x_single: Tensor, curvature: Tensor, ridge: float, gradient: Tensor, eye: Tensor
                 ) -> Tensor:
    """(Xᵀ C X + ridge·I)⁻¹ g, with C = diag(curvature). Xᵀ C X, the G·D² bulk of the estimator's cost, is summed
    in float32 (`x_single`: x as float32), half the time of float64: any positive definite curvature gives a
    descent direction, the gradient and the objective stay float64, so the minimum is the same. With more
    features than rows (D > G), through the G×G system of the Woodbury identity, in float64:
    (1/ridge)·(g − Xᵀ√C (ridge·I + √C X Xᵀ √C)⁻¹ √C X g)."""
    if x.shape[1] <= x.shape[0]:
        hessian = ((x_single.T * curvature.float()) @ x_single).double()
        return torch.linalg.solve(hessian + ridge * eye, gradient)
    root = curvature.sqrt()
    scaled = x * root[:, None]  # √C X
    inner = scaled @ scaled.T + ridge * torch.eye(x.shape[0], dtype=x.dtype)
    return (gradient - scaled.T @ torch.linalg.solve(inner, scaled @ gradient)) / ridge


def folds_of(num_pairs: int, num_folds: int, seed: int) -> Tensor:
    """(G,) fold index of every pair: a seeded permutation dealt round-robin, so the folds differ by at most one."""
    order = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed))
    folds = torch.empty(num_pairs, dtype=torch.long)
    folds[order] = torch.arange(num_pairs) % num_folds
    return folds


def crossfit_probe(x: Tensor, target: Tensor, weight: Tensor, folds: Tensor, inner_folds: int = 3,
                   lambdas: tuple[float, ...] = LAMBDAS, seed: int = 0, ridge: Tensor | None = None,
                   tune_pairs: int | None = TUNE_PAIRS) -> tuple[Tensor, Tensor]:
    """Out-of-fold scores s (G,) of the reference orders, and the ridge chosen for each outer fold (F,), per unit
    of that fold's training weight.

    For each fold f: the ridge is chosen by `inner_folds`-fold cross-validation on the other folds' targets
    (weighted log-loss), then a probe fitted on all other folds scores fold f. A pair's own target never reaches
    its own score. Where the other folds hold more than `tune_pairs` pairs (None: no limit), the ridge is chosen
    on a seeded draw of that many of them, and the total strength it has there is kept for the fit on all of
    them (a prior's precision, which does not grow with the data): the choice then costs the same at a million
    pairs as at ten thousand, and only the final fits grow with the data. `ridge` (F,): reuse these strengths instead of choosing.
    """
    num_folds = int(folds.max()) + 1
    scores = torch.zeros(x.shape[0], dtype=torch.float64)
    chosen = torch.zeros(num_folds, dtype=torch.float64)
    for f in range(num_folds):
        train = folds != f
        total = float(weight[train].sum())
        if ridge is None:
            tune = torch.nonzero(train).squeeze(1)
            if tune_pairs is not None and tune.numel() > tune_pairs:
                draw = torch.randperm(tune.numel(), generator=torch.Generator().manual_seed(seed + 1 + f))
                tune = tune[draw[:tune_pairs]]
            inner = folds_of(tune.numel(), inner_folds, seed + 1 + f)
            per_unit = _choose_ridge(x[tune], target[tune], weight[tune], inner, lambdas)
            chosen[f] = per_unit * float(weight[tune].sum()) / total
        else:
            chosen[f] = ridge[f]
        beta = fit_logistic(x[train], target[train], weight[train], float(chosen[f]) * total)
        scores[~train] = x[~train].double() @ beta
    return scores, chosen


def _choose_ridge(x: Tensor, target: Tensor, weight: Tensor, folds: Tensor, lambdas: tuple[float, ...]) -> float:
    """The ridge of `lambdas` (per unit of training weight) whose cross-fitted scores on `folds` have the least
    summed per-fold log-loss. Each fold's fits run from the strongest ridge down, each starting from the last
    one's β: the minimum is unique, so the start changes only how many Newton steps reach it."""
    num_folds = int(folds.max()) + 1
    losses = [0.0] * len(lambdas)
    for f in range(num_folds):
        train, held = folds != f, folds == f
        x_train, target_train, weight_train = x[train], target[train], weight[train]  # once for the whole grid
        total, x_held = float(weight_train.sum()), x[held].double()
        beta = None
        for i in sorted(range(len(lambdas)), key=lambdas.__getitem__, reverse=True):
            beta = fit_logistic(x_train, target_train, weight_train, lambdas[i] * total, start=beta)
            losses[i] += float(_log_loss(x_held @ beta, target[held], weight[held]))
    return lambdas[min(range(len(lambdas)), key=losses.__getitem__)]


def observed_targets(labels: Labels) -> tuple[Tensor, Tensor]:
    """Per pair: the share of its labels that state the reference order (G,), and the number of labels (G,)."""
    count = labels.per_pair(torch.ones_like(labels.orientation, dtype=torch.float64))
    agree = labels.per_pair((labels.orientation.double() + 1) / 2)
    return agree / count.clamp(min=1), count


# ---- 3. EM for η (and the scale of the scores) --------------------------------------------------------------------

def pair_log_odds(labels: Labels, eta: Tensor, model_logit: Tensor) -> Tensor:
    """Λ (G,): log-odds that each pair's reference order is true, given the model's logit (G,) of that order and
    every label of the pair (the exact posterior under the flip model, labels independent given the order)."""
    votes = labels.orientation.double() * torch.logit(eta.clamp(ETA_MIN, ETA_MAX))[labels.annotator]
    return model_logit.double() + labels.per_pair(votes)


def log_likelihood(labels: Labels, eta: Tensor, model_logit: Tensor) -> float:
    """Σ_g log P(labels of g): each pair's reference order true with σ(model logit), each label right with its
    annotator's η; with c = ½ log η(1−η) and d = ½ o·logit η per row, log P(g) = Σc + logaddexp(log σ(ℓ) + Σd,
    log σ(−ℓ) − Σd)."""
    eta_row = eta.clamp(ETA_MIN, ETA_MAX)[labels.annotator]
    common = labels.per_pair(0.5 * (torch.log(eta_row) + torch.log1p(-eta_row)))
    vote = labels.per_pair(0.5 * labels.orientation.double() * torch.logit(eta_row))
    logit = model_logit.double()
    both = torch.logaddexp(torch.nn.functional.logsigmoid(logit) + vote, torch.nn.functional.logsigmoid(-logit) - vote)
    return float((common + both).sum())


def row_posteriors(labels: Labels, eta: Tensor, model_logit: Tensor) -> Tensor:
    """w (N,): posterior that each row's label is right, σ(o_i·Λ_g) = σ(z_i + logit η_{k_i} + others_i)."""
    z = labels.orientation.double() * model_logit.double()[labels.pair]
    others = other_labels_logit(eta, labels.annotator, labels.pair, labels.orientation, labels.num_pairs)
    return posterior_weight(z + others, eta[labels.annotator])


def fit_reliability(labels: Labels, scores: Tensor | None, eta0: float = 0.9, fit_scale: bool = True,
                    groups: Tensor | None = None, max_se: float = MAX_SE, tol: float = 1e-9,
                    max_iter: int = 10_000) -> Estimate:
    """EM over η and the scales a of `scores` ((G,) logits of the reference orders; None: no model, a = 0).

    groups (G,) long: the calibration group of each score, one scale per group (the cross-fitting folds: each
    fold's probe has its own ridge and so its own scale); None: one scale. Starts from η0 everywhere and a = 1.
    Stops when no η_k and no a moves by more than `tol`, or when only the scales still move and the
    log-likelihood rises by less than `tol` × (1 + |log-likelihood|): where a probe separates the few pairs it
    scores, the scales' maximum is at infinity and they would grow until max_iter. Annotators whose η the data do not identify
    (standard error > max_se; at a bound, the profile likelihood's: profile_se) are reset to η0 and the posteriors
    recomputed.
    """
    if not 0.5 < eta0 < 1:
        raise ValueError(f"eta0 must be in (0.5, 1), got {eta0}")
    s = torch.zeros(labels.num_pairs, dtype=torch.float64) if scores is None else scores.double()
    groups = torch.zeros(labels.num_pairs, dtype=torch.long) if groups is None else groups
    num_groups = int(groups.max()) + 1
    scale = torch.full((num_groups,), 0.0 if scores is None else 1.0, dtype=torch.float64)
    eta = torch.full((labels.num_annotators,), eta0, dtype=torch.float64)
    fit_scale = scores is not None and fit_scale
    eta, scale, iterations = _em(labels, s, groups, eta, scale, fit_scale, tol, max_iter)
    eta, scale = better_than_chance(labels, eta, scale)
    covariance = eta_covariance(labels, eta, s, scale, groups, with_scale=fit_scale)
    for k in torch.nonzero((eta > 1 - AT_BOUND) | (eta < AT_BOUND)).flatten().tolist():
        if math.isfinite(float(covariance[k, k])):  # the information says nothing of an η at a bound: its profile does
            covariance[k, :], covariance[:, k] = 0.0, 0.0
            covariance[k, k] = profile_se(labels, s, groups, eta, scale, k, fit_scale, eta0) ** 2
    se = covariance.diagonal().sqrt()
    mirror = mirror_within_reach(labels, eta, covariance)
    identified = (se <= max_se) & (not mirror)
    eta = torch.where(identified, eta, torch.full_like(eta, eta0))
    logit = scale[groups] * s
    w = row_posteriors(labels, eta, logit)
    z = labels.orientation.double() * logit[labels.pair]
    return Estimate(eta, se, identified, w, z, scale, iterations, mirror_in_reach=mirror)


def _em(labels: Labels, s: Tensor, groups: Tensor, eta: Tensor, scale: Tensor, fit_scale: bool, tol: float,
        max_iter: int, held: int | None = None) -> tuple[Tensor, Tensor, int]:
    """fit_reliability's EM from (η, a): (η, a, iterations) at convergence; `held`: an annotator whose η stays."""
    num_groups, iterations, previous = scale.numel(), 0, -math.inf
    for iterations in range(1, max_iter + 1):
        logit = scale[groups] * s
        w = row_posteriors(labels, eta, logit)
        new_eta = mstep(eta, *annotator_sums(w, labels.annotator, labels.num_annotators))  # Eq. 6
        if held is not None:
            new_eta[held] = eta[held]
        new_scale = scale
        if fit_scale:
            truth = torch.sigmoid(pair_log_odds(labels, eta, logit))  # posterior of each reference order
            new_scale = torch.tensor([_fit_scale(s[groups == f], truth[groups == f], float(scale[f]), signed=True)
                                      for f in range(num_groups)], dtype=torch.float64)
        eta_moved, scale_moved = float((new_eta - eta).abs().max()), float((new_scale - scale).abs().max())
        eta, scale = new_eta, new_scale
        if max(eta_moved, scale_moved) <= tol:
            break
        likelihood = log_likelihood(labels, eta, scale[groups] * s)
        if eta_moved <= tol and likelihood - previous <= tol * (1 + abs(likelihood)):
            break  # only the scales still grow, for a likelihood that no longer does: a probe that separates
        previous = likelihood
    return eta, scale, iterations


AT_BOUND = 0.01  # an η̂ this close to 0 or 1 is at a bound: its standard error comes from the profile likelihood
PROFILE_STEP = 0.02  # the grid of η values on which that profile is computed
PROFILE_TOL, PROFILE_ITER = 1e-6, 500  # the EM's precision at each point of the grid (the profile drops by 1.92)
COLD_EVERY = 5  # every fifth point of the grid also fits from η0, where another maximum would be found
PROFILE_PAIRS = 20_000  # the profile's pairs at most (a seeded draw beyond)


def profile_se(labels: Labels, s: Tensor, groups: Tensor, eta: Tensor, scale: Tensor, k: int, fit_scale: bool,
               eta0: float) -> float:
    """A standard error for η̂_k at a bound, where the Fisher information says nothing of its precision (it is not
    a stationary point): the widest distance from η̂_k to an η_k on a grid over (0, 1) whose profile log-likelihood
    is within 1.92 (χ²₁'s 95%, halved) of the profile's maximum, one grid step added (the interval's end lies before
    the next point), over 1.96. At each point the other η and the scales are fitted by the EM from the neighbouring
    point's fit, and every COLD_EVERY points from η0 too, keeping the readings better than chance. The grid spans
    every value, so another maximum (another annotator taken for the careful one) widens it instead of being
    missed (bench/eta_bound.py)."""
    shrink = 1.0
    if labels.num_pairs > PROFILE_PAIRS:
        # its cost grows with the pairs: the profile of a seeded draw of them, its width scaled by √(draw / all) as a
        # regular interval narrows (at 600 pairs, a draw of 300 gave the careful annotator 0.029–0.065 for 0.031–0.051)
        shrink = math.sqrt(PROFILE_PAIRS / labels.num_pairs)
        kept = torch.randperm(labels.num_pairs, generator=torch.Generator().manual_seed(0))[:PROFILE_PAIRS]
        labels, s, groups = _pairs_subset(labels, kept), s[kept], groups[kept]
    counts = torch.bincount(labels.annotator, minlength=labels.num_annotators).double()
    cold = (torch.full_like(eta, eta0), torch.ones_like(scale) * (scale != 0))
    grid = sorted(torch.arange(PROFILE_STEP, 1.0, PROFILE_STEP, dtype=torch.float64).tolist(),
                  key=lambda value: abs(value - float(eta[k])))  # outward from η̂: each fit starts from the last
    profile, warm = {float(eta[k]): log_likelihood(labels, eta, scale[groups] * s)}, (eta, scale)
    for index, value in enumerate(grid):
        # from the last point's fit; and, on a coarser grid, from η0 as the estimate started (another maximum)
        starts = [warm] + ([cold] if index % COLD_EVERY == 0 else [])
        fits = []
        for start_eta, start_scale in starts:
            start_eta = start_eta.clone()
            start_eta[k] = value
            fits.append(_em(labels, s, groups, start_eta, start_scale, fit_scale, PROFILE_TOL, PROFILE_ITER, held=k))
        warm = fits[0][:2]
        likelihoods = [log_likelihood(labels, e, a[groups] * s) for e, a, _ in fits
                       if float((counts * (2 * e - 1)).sum()) >= 0]  # better than chance, as the estimate is
        if likelihoods:
            profile[value] = max(likelihoods)
    best = max(profile.values())
    widest = max(abs(value - float(eta[k])) for value, likelihood in profile.items() if likelihood >= best - 1.92)
    return (widest + PROFILE_STEP) / 1.96 * shrink


def _pairs_subset(labels: Labels, kept: Tensor) -> Labels:
    """The labels of the pairs `kept` (G',), renumbered 0..G'−1 in that order."""
    position = torch.full((labels.num_pairs,), -1, dtype=torch.long)
    position[kept] = torch.arange(len(kept))
    rows = position[labels.pair] >= 0
    return Labels(labels.annotator[rows], position[labels.pair[rows]], labels.orientation[rows],
                  labels.num_annotators, len(kept))


def _fit_scale(s: Tensor, truth: Tensor, start: float, weight: Tensor | None = None, signed: bool = False,
               iterations: int = 30) -> float:
    """argmax_a Σ_g c_g·[q_g·log σ(a·s_g) + (1 − q_g)·log σ(−a·s_g)], by Newton from `start`; a ≥ 0 unless `signed`."""
    weight = torch.ones_like(s) if weight is None else weight
    a = start
    for _ in range(iterations):
        p = torch.sigmoid(a * s)
        gradient = float((weight * s * (truth - p)).sum())
        curvature = float((weight * s * s * p * (1 - p)).sum())
        if curvature <= 0:
            break
        step = gradient / curvature
        a = a + step if signed else max(a + step, 0.0)
        if abs(step) < 1e-12:
            break
    return a


def better_than_chance(labels: Labels, eta: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """The flip model's likelihood is the same at (η, a) and at its mirror (1 − η, −a): every label read the other
    way, the model's evidence too. Dawid & Skene break the tie by assuming the labels, taken together, are better
    than chance: Σ_k n_k·(2η_k − 1) ≥ 0 (n_k: k's labels). Returns (η, a) or its mirror, whichever holds it."""
    counts = torch.bincount(labels.annotator, minlength=labels.num_annotators).double()
    if float((counts * (2 * eta - 1)).sum()) >= 0:
        return eta, scale
    return (1 - eta).clamp(ETA_MIN, ETA_MAX), -scale


def mirror_within_reach(labels: Labels, eta: Tensor, covariance: Tensor) -> bool:
    """True where the data cannot tell the estimate from its mirror: over the annotators the data inform (finite
    variance), the labels' mean advantage over chance m = Σ_k n_k·(2η_k − 1) / Σ_k n_k is within two standard
    errors of 0 (delta method on η's covariance). Then no η is identified, whatever its own standard error says."""
    informed = torch.isfinite(covariance.diagonal())
    counts = torch.bincount(labels.annotator, minlength=labels.num_annotators).double() * informed
    if float(counts.sum()) == 0:
        return True
    share = counts / counts.sum()
    mean = float((share * (2 * eta - 1)).sum())
    inner = covariance[informed][:, informed]
    variance = float(4 * share[informed] @ inner @ share[informed])
    return mean <= 2 * math.sqrt(max(variance, 0.0))


SCORE_BLOCK = 65536  # pairs per block of eta_covariance's score matrix


def eta_covariance(labels: Labels, eta: Tensor, s: Tensor, scale: Tensor, groups: Tensor, with_scale: bool) -> Tensor:
    """(K, K) covariance of η̂ from the empirical Fisher information Σ_g ∇ log P_g ∇ log P_gᵀ over (η, a).

    ∂ log P_g / ∂η_k = Σ_{i∈g, k_i=k} (w_i − η_k) / (η_k (1 − η_k)); ∂ log P_g / ∂a_f = s_g·(q_g − σ(a_f·s_g)) for
    the pairs of group f. An η_k with a share of its direction in what the data do not inform (eigenvalues near
    zero) gets an infinite variance (and its row and column of covariances); the others the pseudo-inverse's (so one
    uninformed annotator leaves the rest alone).
    """
    k = labels.num_annotators
    logit = scale[groups] * s
    w = row_posteriors(labels, eta, logit)
    per_row = (w - eta[labels.annotator]) / (eta * (1 - eta))[labels.annotator]
    columns = k + (scale.numel() if with_scale else 0)
    if with_scale:
        scale_score = s * (torch.sigmoid(pair_log_odds(labels, eta, logit)) - torch.sigmoid(logit))
    # the (pairs × (K + F)) score matrix a block of pairs at a time: its size is its block's, not pairs × annotators
    # (1.8 GB at a million pairs with 227 annotators)
    order = torch.argsort(labels.pair, stable=True)  # each block's rows, contiguous
    starts = list(range(0, labels.num_pairs, SCORE_BLOCK))
    bounds = torch.searchsorted(labels.pair[order], torch.tensor([*starts, labels.num_pairs])).tolist()
    information = torch.zeros(columns, columns, dtype=torch.float64)
    for block, first in enumerate(starts):
        pairs, rows = min(SCORE_BLOCK, labels.num_pairs - first), order[bounds[block]:bounds[block + 1]]
        score = torch.zeros(pairs, columns, dtype=torch.float64)
        score.index_put_((labels.pair[rows] - first, labels.annotator[rows]), per_row[rows], accumulate=True)
        if with_scale:
            score[torch.arange(pairs), k + groups[first:first + pairs]] = scale_score[first:first + pairs]
        information += score.T @ score
    values, vectors = _eigh(information)
    informed = values > values.max().clamp(min=1e-300) * 1e-10
    covariance = (vectors[:, informed] / values[informed]) @ vectors[:, informed].T
    uninformed = vectors[:, ~informed].square().sum(1) > 1e-8
    covariance[uninformed, :] = torch.inf
    covariance[:, uninformed] = torch.inf
    return covariance[:k, :k]


def standard_errors(labels: Labels, eta: Tensor, s: Tensor, scale: Tensor, groups: Tensor,
                    with_scale: bool) -> Tensor:
    """(K,) SE of η: the square root of eta_covariance's diagonal (infinite where the data do not inform η_k)."""
    return eta_covariance(labels, eta, s, scale, groups, with_scale).diagonal().sqrt()


# ---- the whole estimator --------------------------------------------------------------------------------------------

def probe_fits(num_pairs: int, num_folds: int) -> bool:
    """Whether `num_pairs` are enough to cross-fit the probe in `num_folds` folds (MIN_PAIRS_PER_FOLD each)."""
    return num_pairs >= MIN_PAIRS_PER_FOLD * num_folds


def estimate(labels: Labels, candidates: dict[str, Tensor] | None = None, prior: Tensor | None = None,
             eta0: float = 0.9, num_folds: int = 5, seed: int = 0, max_se: float = MAX_SE,
             tune_pairs: int | None = TUNE_PAIRS) -> Estimate:
    """Posteriors and η from a cross-fitted probe, or from a judge's logits `prior` (G,) of the reference orders,
    or from the labels' agreement alone (neither). tune_pairs: see crossfit_probe.

    candidates: named feature matrices (G, D) (e.g. one per layer, and all layers together); the probe uses the
    one whose out-of-fold scores predict the observed labels best (weighted log-loss: labels only, no truth).
    """
    if candidates and prior is not None:
        raise ValueError("give features (the probe) or a prior (your judge), not both")
    target, weight = observed_targets(labels)
    if not candidates:
        if prior is not None and not beats_chance(prior, target, weight, torch.zeros(labels.num_pairs, dtype=torch.long)):
            return dataclasses.replace(fit_reliability(labels, None, eta0, max_se=max_se), model_at_chance=True)
        return fit_reliability(labels, prior, eta0, max_se=max_se)
    folds = folds_of(labels.num_pairs, num_folds, seed)
    fitted = {name: crossfit_probe(x, target, weight, folds, seed=seed, tune_pairs=tune_pairs)[0]
              for name, x in candidates.items()}
    return _from_probe(labels, fitted, target, weight, folds, eta0, max_se)


def _from_probe(labels: Labels, fitted: dict[str, Tensor], target: Tensor, weight: Tensor, folds: Tensor,
                eta0: float, max_se: float) -> Estimate:
    """The EM on the candidate whose out-of-fold scores `fitted` predict the observed labels best, calibrated per
    fold; on the labels' agreement alone where even that one does not beat chance (shared by estimate and
    estimate_streamed)."""
    log_loss = {name: float(_log_loss(scores, target, weight)) for name, scores in fitted.items()}
    best = min(log_loss, key=log_loss.__getitem__)
    scores = calibrate_to_labels(fitted[best], target, weight, folds)
    if not beats_chance(scores, target, weight, folds, calibrated=True):  # the labels' agreement alone
        result = dataclasses.replace(fit_reliability(labels, None, eta0, max_se=max_se), model_at_chance=True)
    else:
        result = fit_reliability(labels, scores, eta0, max_se=max_se)
    return dataclasses.replace(result, features=best, log_loss=log_loss)


CHANCE_LEVEL = 0.01  # the likelihood-ratio test's size below: a model this likely under chance is set aside


def beats_chance(scores: Tensor, target: Tensor, weight: Tensor, groups: Tensor, calibrated: bool = False) -> bool:
    """Whether a model's logits (G,) predict the observed labels beyond chance: the likelihood-ratio test of their
    best slope per group (a 1-D logistic fit each, `calibrated`: already fitted) against every label at ½, with as
    many degrees of freedom as groups, at CHANCE_LEVEL. With one label per pair only the model identifies η, and a
    model at chance identifies nothing: fitted all the same, its noise gave confidently wrong η, the adversary
    taken for the most reliable (bench/README.md, "The estimate must not turn over")."""
    count = int(groups.max()) + 1
    if not calibrated:
        slopes = torch.tensor([_fit_scale(scores[groups == g], target[groups == g], 1.0, weight[groups == g])
                               for g in range(count)], dtype=torch.float64)
        scores = slopes[groups] * scores
    statistic = 2 * float(weight.sum()) * (math.log(2) - float(_log_loss(scores, target, weight)))
    return statistic > chi2_quantile(1 - CHANCE_LEVEL, count)


def chi2_quantile(level: float, df: int) -> float:
    """The χ² quantile by Wilson & Hilferty's cube-root normal approximation (within 0.5% from 5 degrees of freedom
    at the upper tail; tests/test_reliability.py checks it against tabulated values)."""
    z = math.sqrt(2) * _erfinv(2 * level - 1)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _erfinv(y: float) -> float:
    return float(torch.special.erfinv(torch.tensor(y, dtype=torch.float64)))


def calibrate_to_labels(scores: Tensor, target: Tensor, weight: Tensor, folds: Tensor) -> Tensor:
    """(G,) each fold's out-of-fold scores times the slope c_f ≥ 0 that best predicts that fold's observed labels
    (a weighted 1-D logistic fit; 0 where the probe does not predict them at all). Each fold's probe has its own
    ridge and so its own scale; put on one scale, the folds share the one calibration to the truth the EM fits.
    (One EM scale per fold, fitted on a few hundred single labels, ran away to the thousands where the probe was
    near chance, and the η it gave were confidently wrong: bench/README.md, "The estimate must not turn over".)"""
    slopes = torch.tensor([_fit_scale(scores[folds == f], target[folds == f], 1.0, weight[folds == f])
                           for f in range(int(folds.max()) + 1)], dtype=torch.float64)
    return slopes[folds] * scores


def _log_loss(scores: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted mean log-loss of logits `scores` for soft targets."""
    losses = target * torch.nn.functional.softplus(-scores) + (1 - target) * torch.nn.functional.softplus(scores)
    return (weight * losses).sum() / weight.sum()


# ---- the same estimator over chunks of pairs: memory flat in their number (issue 26, item 3) -----------------------
# `estimate_streamed` gives `estimate` on the probe's candidates, computed without ever holding a (G, D) matrix:
# the probe's features are linear maps of each pair's states, fixed by sums over all pairs (dᵀd, Σp, pᵀp: one pass),
# and recomputed chunk by chunk at every pass; each Newton step of the probe is one pass summing the objective, its
# gradient and curvature XᵀCX over the chunks. What stays in memory is O(D²) and the (G,)/(N,) vectors of the EM.

# One chunk: per layer (first, second, prompt) states (B, E_l) of B consecutive pairs (the reference order's
# responses), in pair order; a Chunks callable starts a new pass over all of them each time it is called.
Chunk = dict[int, tuple[Tensor, Tensor, Tensor]]
Chunks = Callable[[], Iterator[Chunk]]


@dataclass(frozen=True)
class FeatureMap:
    """probe_features as a fixed linear map, from sums over all pairs (feature_map): the columns of the states it
    takes, the per-dimension RMS of d, the principal directions and their RMS, and the prompt's."""

    columns: Tensor  # (E,) which columns of the layers' states side by side
    rms: Tensor  # (E,)
    directions: Tensor  # (E, c)
    reduced_rms: Tensor  # (c,)
    prompt_mean: Tensor | None  # (E,)
    prompt_directions: Tensor | None  # (E, m)
    prompt_rms: Tensor | None  # (m,)

    def __call__(self, first: Tensor, second: Tensor, prompt: Tensor) -> Tensor:
        """(B, D) features of B pairs, as probe_features gives them over all pairs."""
        d = first.double()[:, self.columns] - second.double()[:, self.columns]
        reduced = (d / self.rms) @ self.directions / self.reduced_rms
        if self.prompt_directions is None:
            return reduced
        u = (prompt.double()[:, self.columns] - self.prompt_mean) @ self.prompt_directions / self.prompt_rms
        return torch.cat([reduced] + [reduced * u[:, c: c + 1] for c in range(u.shape[1])], dim=1)


@dataclass
class StateSums:
    """Σ over pairs of dᵀd, p and pᵀp (d = first − second, p = prompt, layers side by side), float64."""

    count: int
    d_gram: Tensor
    prompt_sum: Tensor
    prompt_gram: Tensor


def state_sums(chunks: Chunks) -> StateSums:
    """One pass: the sums every candidate's FeatureMap is fixed by."""
    sums = None
    for chunk in chunks():
        first, second, prompt = (torch.cat([chunk[layer][side].double() for layer in chunk], 1) for side in range(3))
        d = first - second
        if sums is None:
            width = d.shape[1]
            sums = StateSums(0, torch.zeros(width, width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64),
                             torch.zeros(width, width, dtype=torch.float64))
        sums.count += d.shape[0]
        sums.d_gram += d.T @ d
        sums.prompt_sum += prompt.sum(0)
        sums.prompt_gram += prompt.T @ prompt
    if sums is None:
        raise ValueError("no pairs to estimate on")
    return sums


def feature_map(sums: StateSums, columns: Tensor, components: int = 64, prompt_components: int = 8) -> FeatureMap:
    """probe_features' map on `columns` of the states, from the sums alone (the same maths, no (G, E) matrix):
    RMS² = diag(dᵀd)/G; the directions are the eigenvectors of the RMS-scaled dᵀd; the prompt's those of
    Σ(p − p̄)(p − p̄)ᵀ = pᵀp − G·p̄p̄ᵀ."""
    g = sums.count
    gram = sums.d_gram[columns][:, columns]
    rms = (gram.diagonal() / g).sqrt().clamp(min=1e-12)
    scaled = gram / rms[:, None] / rms[None, :]
    directions = _top_directions(*_eigh(scaled), components)
    reduced_rms = ((directions * (scaled @ directions)).sum(0) / g).sqrt().clamp(min=1e-12)
    if prompt_components == 0:
        return FeatureMap(columns, rms, directions, reduced_rms, None, None, None)
    mean = sums.prompt_sum[columns] / g
    centred = sums.prompt_gram[columns][:, columns] - g * torch.outer(mean, mean)
    prompt_directions = _top_directions(*_eigh(centred), prompt_components)
    if prompt_directions.shape[1] == 0:
        return FeatureMap(columns, rms, directions, reduced_rms, None, None, None)
    prompt_rms = ((prompt_directions * (centred @ prompt_directions)).sum(0) / g).sqrt()
    return FeatureMap(columns, rms, directions, reduced_rms, mean, prompt_directions, prompt_rms)


def candidate_maps(chunks: Chunks, widths: dict[int, int], components: int = 64, prompt_components: int = 8
                   ) -> dict[str, FeatureMap]:
    """data/estimate.probe_candidates' candidates as maps: each layer alone, and all of them side by side.
    widths: layer -> its states' width, in the chunks' layer order."""
    sums = state_sums(chunks)
    starts = dict(zip(widths, torch.tensor([0, *widths.values()]).cumsum(0).tolist()))
    maps = {f"layer {layer}": feature_map(sums, torch.arange(starts[layer], starts[layer] + width), components,
                                          prompt_components) for layer, width in widths.items()}
    if len(widths) > 1:
        maps["layers " + "+".join(map(str, widths))] = feature_map(sums, torch.arange(sum(widths.values())),
                                                                   components, prompt_components)
    return maps


def _features(chunks: Chunks, features: FeatureMap) -> Iterator[tuple[int, Tensor]]:
    """(offset of the chunk's first pair, its (B, D) features) for every chunk, in pair order."""
    offset = 0
    for chunk in chunks():
        first, second, prompt = (torch.cat([chunk[layer][side] for layer in chunk], 1) for side in range(3))
        x = features(first, second, prompt)
        yield offset, x
        offset += x.shape[0]


Batches = Callable[[], Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]]  # x (B, D), target, weight (B,), member (B, F)


def fit_logistic_streamed(batches: Batches, dim: int, ridge: Tensor, iterations: int = 50, slow: float = 0.05,
                          rows: Tensor | None = None, curvature_rows: int | None = CURVATURE_ROWS,
                          start: Tensor | None = None) -> Tensor:
    """(D, F): F of fit_logistic's minima at once, problem f on the rows whose `member[:, f]` is true (the
    cross-fitting folds: fold f's probe on the rows of every other fold), over batches (x (B, D), target (B,),
    weight (B,), member (B, F) bool) of the rows, with ridge (F,). Each pass over the batches sums, for every
    problem still moving, the objective and the gradient at its trial point: one pass serves all F, so the
    features of a batch are made once for all of them.

    The curvature XᵀCX (float32 per batch, summed in float64), the G·D² bulk of a pass, is summed for a problem at
    its start, after a step that had to be halved, and after a step that improved its objective by more than
    `slow` × the step before (Newton's quadratic convergence makes that ratio tiny; a stale curvature, not); its
    steps between reuse the last one (a chord method). Where a problem has more than `curvature_rows` of its
    `rows` (F,), its curvature is summed on a seeded draw of about that many, scaled up (subsampled Newton). From
    `start` (D, F), or 0. Any
    positive definite curvature gives a descent direction and the objective and gradient stay exact, so the
    minimum is fit_logistic's; it stops when a step improves the objective by less than 1e-12 of it (as
    fit_logistic) and moves β by less than 1e-9 of its norm (a chord step converges linearly, not quadratically:
    the objective flattens before β settles)."""
    ridge = ridge.double()
    count = ridge.numel()
    share = (torch.ones(count, dtype=torch.float64) if rows is None or curvature_rows is None
             else (curvature_rows / rows.double().clamp(min=1)).clamp(max=1.0))
    eye = torch.eye(dim, dtype=torch.float64)

    def one_pass(betas: Tensor, active: list[int], curvature: list[int]):
        values = ridge[active] / 2 * betas[:, active].square().sum(0)
        gradients = ridge[active] * betas[:, active]
        hessians = {f: torch.zeros(dim, dim, dtype=torch.float64) for f in curvature}
        draw = torch.Generator().manual_seed(0)  # the same rows at every pass
        for x, target, weight, member in batches():
            x, target = x.double(), target.double()
            uniform = torch.rand(x.shape[0], generator=draw, dtype=torch.float64)
            margin = x @ betas[:, active]  # (B, A)
            weights = weight.double()[:, None] * member[:, active].double()
            values = values + (weights * (target[:, None] * torch.nn.functional.softplus(-margin)
                                          + (1 - target[:, None]) * torch.nn.functional.softplus(margin))).sum(0)
            p = torch.sigmoid(margin)
            gradients = gradients + x.T @ (weights * (p - target[:, None]))
            for f in curvature:
                a = active.index(f)
                kept = (uniform < share[f]) & (weights[:, a] > 0)
                single = x[kept].float()
                c = (weights[kept, a] * p[kept, a] * (1 - p[kept, a]) / share[f]).float()
                hessians[f] += ((single.T * c) @ single).double()
        return ({f: values[i] for i, f in enumerate(active)}, {f: gradients[:, i] for i, f in enumerate(active)},
                {f: h + ridge[f] * eye for f, h in hessians.items()})

    betas = torch.zeros(dim, count, dtype=torch.float64) if start is None else start.double().clone()
    problems = list(range(count))
    value, gradient, hessian = one_pass(betas, problems, problems)
    step = {f: torch.linalg.solve(hessian[f], gradient[f]) for f in problems}
    size, fresh, last, steps = dict.fromkeys(problems, 1.0), dict.fromkeys(problems, True), \
        dict.fromkeys(problems, math.inf), dict.fromkeys(problems, 0)
    trial = betas.clone()
    active = [f for f in problems if steps[f] < iterations]
    while active:
        for f in active:
            trial[:, f] = betas[:, f] - size[f] * step[f]
        new_value, new_gradient, new_hessian = one_pass(trial, active, [f for f in active if fresh[f]])
        for f in list(active):
            if not (new_value[f] <= value[f] or size[f] < 1e-8):
                if float(gradient[f] @ step[f]) <= 2e-13 * max(1.0, abs(float(value[f]))):
                    active.remove(f)  # the step's predicted decrease is below the objective's rounding: converged
                    continue
                size[f], fresh[f] = size[f] / 2, True  # halve, and sum the curvature there
                continue
            improvement, moved = float(value[f] - new_value[f]), float((trial[:, f] - betas[:, f]).norm())
            betas[:, f], value[f], gradient[f] = trial[:, f], new_value[f], new_gradient[f]
            hessian[f] = new_hessian.get(f, hessian[f])
            fresh[f] = size[f] < 1.0 or improvement > slow * last[f]
            last[f], steps[f] = improvement, steps[f] + 1
            if (improvement <= 1e-12 * max(1.0, abs(float(value[f])))
                    and moved <= 1e-9 * (1 + float(betas[:, f].norm()))) or steps[f] >= iterations:
                active.remove(f)
            else:
                step[f], size[f] = torch.linalg.solve(hessian[f], gradient[f]), 1.0
    return betas


def crossfit_probe_streamed(chunks: Chunks, features: FeatureMap, target: Tensor, weight: Tensor, folds: Tensor,
                            inner_folds: int = 3, lambdas: tuple[float, ...] = LAMBDAS, seed: int = 0,
                            tune_pairs: int | None = TUNE_PAIRS, curvature_rows: int | None = CURVATURE_ROWS
                            ) -> tuple[Tensor, Tensor]:
    """crossfit_probe on the features of `chunks`: each fold's ridge chosen on its draw of `tune_pairs` (the draws
    of all folds gathered in one pass: at most folds × tune_pairs rows of D in memory), every fold's probe fitted
    at once over the chunks (fit_logistic_streamed, from the probe fitted on its draw), every fold's out-of-fold
    scores in one last pass."""
    num_folds = int(folds.max()) + 1
    chosen = torch.zeros(num_folds, dtype=torch.float64)
    totals = torch.tensor([float(weight[folds != f].sum()) for f in range(num_folds)], dtype=torch.float64)
    draws = []
    for f in range(num_folds):
        tune = torch.nonzero(folds != f).squeeze(1)
        if tune_pairs is not None and tune.numel() > tune_pairs:
            draw = torch.randperm(tune.numel(), generator=torch.Generator().manual_seed(seed + 1 + f))
            tune = tune[draw[:tune_pairs]]
        draws.append(tune)
    union = torch.unique(torch.cat(draws))  # sorted
    x_union = _gather(chunks, features, union)
    starts = []
    for f, tune in enumerate(draws):
        x_tune = x_union[torch.searchsorted(union, tune)]
        inner = folds_of(tune.numel(), inner_folds, seed + 1 + f)
        per_unit = _choose_ridge(x_tune, target[tune], weight[tune], inner, lambdas)
        chosen[f] = per_unit * float(weight[tune].sum()) / totals[f]
        # the streamed fit starts from the probe on the draw (the same ridge): near its minimum, in memory
        starts.append(fit_logistic(x_tune, target[tune], weight[tune], float(chosen[f] * totals[f])))
    del x_union, x_tune
    fold_ids = torch.arange(num_folds)

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        for offset, x in _features(chunks, features):
            rows = slice(offset, offset + x.shape[0])
            yield x, target[rows], weight[rows], folds[rows][:, None] != fold_ids[None, :]

    dim = features.directions.shape[1] * (1 + (0 if features.prompt_directions is None
                                               else features.prompt_directions.shape[1]))
    rows = torch.tensor([int((folds != f).sum()) for f in range(num_folds)])
    betas = fit_logistic_streamed(batches, dim, chosen * totals, rows=rows, curvature_rows=curvature_rows,
                                  start=torch.stack(starts, 1))
    scores = torch.zeros(folds.numel(), dtype=torch.float64)
    for offset, x in _features(chunks, features):
        rows = slice(offset, offset + x.shape[0])
        scores[rows] = (x.double() @ betas).gather(1, folds[rows][:, None]).squeeze(1)
    return scores, chosen


def _gather(chunks: Chunks, features: FeatureMap, rows: Tensor) -> Tensor:
    """(R, D) the features of pairs `rows` (sorted, distinct), in one pass."""
    parts, position = [], 0
    for offset, x in _features(chunks, features):
        end = int(torch.searchsorted(rows, offset + x.shape[0]))
        parts.append(x[rows[position:end] - offset])
        position = end
    return torch.cat(parts)


def estimate_streamed(labels: Labels, chunks: Chunks, widths: dict[int, int], components: int = 64,
                      prompt_components: int = 8, eta0: float = 0.9, num_folds: int = 5, seed: int = 0,
                      max_se: float = MAX_SE, tune_pairs: int | None = TUNE_PAIRS) -> Estimate:
    """`estimate` with the probe on data/estimate.probe_candidates' candidates, from states read chunk by chunk
    (`chunks`: pairs in order; widths: layer -> width): the same result up to the order of float sums."""
    target, weight = observed_targets(labels)
    maps = candidate_maps(chunks, widths, components, prompt_components)
    folds = folds_of(labels.num_pairs, num_folds, seed)
    fitted = {name: crossfit_probe_streamed(chunks, features, target, weight, folds, seed=seed,
                                            tune_pairs=tune_pairs)[0] for name, features in maps.items()}
    return _from_probe(labels, fitted, target, weight, folds, eta0, max_se)
