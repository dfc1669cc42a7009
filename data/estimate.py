"""The noise estimate before any training (method.md §9): per-label posteriors and annotator reliabilities from a
score cache alone. Used by `repo inspect-noise SCORES` and by `repo train --robust` (data/epoch_zero.py).

Reads   the rows of a score cache (data/schema.read_scores): labels, pair ids and the reference model's
        embeddings (or a judge's column, --prior-col).
Returns the posteriors (row_id, pair_id, annotator, z, p, w, epoch = 0) and the annotator table (annotator, eta,
        eta_se, identified, epoch = 0) as frames; writes nothing itself.

The recipe: data/noise_inputs.read_inputs → pipeline/reliability.probe_features for each stored layer and for all
layers together → reliability.estimate (a cross-fitted probe on each, the one that best predicts the observed labels
out of fold, then EM over η and the probe's per-fold scales with one true order per pair).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch

from re_po.data import folders, noise_inputs
from re_po.pipeline import reliability

if TYPE_CHECKING:  # the settings are declared with the commands' (plain Python; nothing of it runs here)
    from re_po.stages.configs import EstimateConfig


@dataclass(frozen=True)
class NoiseEstimate:
    posteriors: pl.DataFrame  # row_id, pair_id, annotator, z, p, w, epoch
    annotators: pl.DataFrame  # annotator, eta, eta_se (null where infinite), identified, epoch
    model: str  # what served as the model: "probe on layer L", "prior column X" or "none (agreement alone)"
    log_loss: dict[str, float] | None  # the probe candidates' out-of-fold log-loss on the observed labels
    seconds: float


def run(cfg: EstimateConfig, frame: pl.DataFrame, key: dict, source: str) -> NoiseEstimate:
    """Estimate on the cache rows `frame` (sorted by row_id) of cache `source` with key `key`."""
    started = time.perf_counter()
    inputs = noise_inputs.read_inputs(frame, key, source, cfg.prior_col, embeddings=cfg.probe)
    labels = labels_of(inputs)
    prior = None if inputs.prior is None else torch.from_numpy(inputs.prior)
    too_few = too_few_for_probe(bool(inputs.embeddings), inputs.num_pairs, cfg)
    candidates = None if too_few else probe_candidates(inputs, cfg)
    result = reliability.estimate(labels, candidates, prior, cfg.eta0, cfg.folds, cfg.seed)
    model = _model_name(result, cfg.prior_col if prior is not None else None, too_few, inputs.num_pairs)
    return _tables(cfg, result, model, frame.select("row_id", "pair_id", "annotator"), inputs.annotators, started)


def too_few_for_probe(has_states: bool, num_pairs: int, cfg: EstimateConfig) -> bool:
    """Whether the probe cannot be cross-fitted on these pairs (said on stderr, with what brings a model back)."""
    too_few = has_states and not reliability.probe_fits(num_pairs, cfg.folds)
    if too_few:
        print(f"warning: {num_pairs} pairs are too few for the probe's {cfg.folds}-fold cross-fitting (it "
              f"needs {reliability.MIN_PAIRS_PER_FOLD * cfg.folds}): the estimate uses the labels' agreement alone, "
              "as with --no-probe; more pairs, fewer folds ([estimate] folds) or --prior-col bring a model back",
              file=sys.stderr)
    return too_few


def _model_name(result: reliability.Estimate, prior_col: str | None, too_few: bool, num_pairs: int) -> str:
    """What served as the model (NoiseEstimate.model), before _tables says whether it was set aside."""
    return (f"probe on {result.features}" if result.features else
            f"prior column {prior_col}" if prior_col is not None else
            f"none (agreement alone: {num_pairs} pairs are too few for the probe)" if too_few else
            "none (agreement alone)")


def _tables(cfg: EstimateConfig, result: reliability.Estimate, model: str, rows: pl.DataFrame, names: list[str],
            started: float) -> NoiseEstimate:
    """The estimate as epoch 0's tables (rows: row_id, pair_id, annotator of every label), saying on stderr which
    annotators it does not identify and why."""
    if result.model_at_chance:  # reliability.beats_chance
        model = f"none (agreement alone: the {model} does not predict the labels beyond chance)"
    z = result.z.numpy()
    posteriors = rows.with_columns(z=z, p=0.5 * (1 + np.tanh(z / 2)), w=result.w.numpy(), epoch=pl.lit(0, pl.Int32))
    annotators = pl.DataFrame({"annotator": names, "eta": result.eta.numpy(),
                               "eta_se": pl.Series(result.eta_se.numpy()).replace(np.inf, None),
                               "identified": result.identified.numpy(),
                               "epoch": pl.Series([0] * len(names), dtype=pl.Int32)})
    lost = unidentified_reasons(annotators, rows, model, result.mirror_in_reach)
    if lost:
        print(f"warning: the data do not identify the reliability of {len(lost)} annotator(s); η stays at eta0 = "
              f"{cfg.eta0} for them: " + "; ".join(f"{name}: {why}" for name, why in list(lost.items())[:5])
              + (" ..." if len(lost) > 5 else ""), file=sys.stderr)
    return NoiseEstimate(posteriors, annotators, model, result.log_loss, time.perf_counter() - started)


def labels_of(inputs: noise_inputs.NoiseInputs) -> reliability.Labels:
    """Who labelled which pair which way, as the estimator takes it."""
    return reliability.Labels(torch.from_numpy(inputs.annotator), torch.from_numpy(inputs.pair),
                              torch.from_numpy(inputs.orientation), len(inputs.annotators), inputs.num_pairs)


def probe_candidates(inputs: noise_inputs.NoiseInputs, cfg: EstimateConfig) -> dict[str, torch.Tensor]:
    """The probe's feature candidates: each stored layer alone, and all of them side by side."""
    layers = {f"layer {layer}": parts for layer, parts in inputs.embeddings.items()}
    if len(layers) > 1:
        layers["layers " + "+".join(map(str, inputs.embeddings))] = tuple(
            np.concatenate(side, axis=1) for side in zip(*inputs.embeddings.values()))
    return {name: reliability.probe_features(*(torch.from_numpy(part) for part in parts), cfg.components,
                                             cfg.prompt_components) for name, parts in layers.items()}


def unidentified_reasons(annotators: pl.DataFrame, labels: pl.DataFrame, model: str | None,
                         mirror_in_reach: bool = False) -> dict[str, str]:
    """Why the data do not identify each annotator's η, from its own labels: annotator -> the reason, for those whose
    `identified` is false (none where the table has no such column).

    annotators: annotator, identified, eta_se (null where infinite); labels: annotator, pair_id of every label;
    model: what served as the model (NoiseEstimate.model), None where unknown (a run's epoch 0); mirror_in_reach:
    the estimate could not tell the labels from their mirror (reliability.mirror_within_reach).
    """
    if "identified" not in annotators.columns:
        return {}
    counts = labels.with_columns(shared=pl.len().over("pair_id") > 1).group_by("annotator").agg(
        n=pl.len(), shared=pl.col("shared").sum())
    of = {row["annotator"]: row for row in counts.iter_rows(named=True)}
    evidence = ("no model" if model is None or model.startswith("none") else f"the model ({model}) alone")
    reasons = {}
    for row in annotators.filter(~pl.col("identified")).iter_rows(named=True):
        n, shared = of[row["annotator"]]["n"], of[row["annotator"]]["shared"]
        # a standard error within the bound leaves the mirror as the only reason: a stored table (inspect-noise on a
        # run) does not record mirror_in_reach, and said "its standard error 0.07 is above 0.1"
        if row["eta_se"] is not None and (mirror_in_reach or row["eta_se"] <= reliability.MAX_SE):
            reasons[row["annotator"]] = ("the labels, taken together, are not told from their mirror image (every "
                                         "label read the other way fits as well, within two standard errors)")
        elif row["eta_se"] is not None:
            reasons[row["annotator"]] = (f"its standard error {row['eta_se']:.2f} is above {reliability.MAX_SE} with "
                                         f"{n} labels ({shared} beside another label of the same pair): more labels "
                                         "pin it down")
        elif shared == 0:
            reasons[row["annotator"]] = (f"each of its {n} labels is the only one of its pair, and {evidence} does "
                                         "not tell the true order apart: a second label on some of its pairs, or a "
                                         "better judge (--prior-col), pins η down")
        else:
            reasons[row["annotator"]] = (f"its labels always meet the same other annotators', and {evidence} does not "
                                         "tell their reliabilities apart")
    return reasons


def run_streamed(cfg: EstimateConfig, folder: Path, source: str) -> NoiseEstimate:
    """`run` on the score cache `folder`, read part by part: memory flat in the number of pairs (the states wait in
    a scratch folder, the probe's features are recomputed chunk by chunk; reliability.estimate_streamed). The
    same estimate as `run` on the whole cache, up to the order of float sums. Not for a prior column."""
    if cfg.prior_col is not None:
        raise noise_inputs.NoiseInputError("the streamed estimate takes no --prior-col; read the cache whole (run)")
    started = time.perf_counter()
    with folders.scratch("estimate") as scratch:
        streamed = noise_inputs.read_streamed(folder, scratch, source, embeddings=cfg.probe)
        inputs = streamed.labels
        labels = labels_of(inputs)
        too_few = too_few_for_probe(bool(streamed.widths), inputs.num_pairs, cfg)
        if streamed.widths and not too_few:
            def chunks():
                return ({layer: tuple(torch.from_numpy(part) for part in parts) for layer, parts in chunk.items()}
                        for chunk in streamed.chunks())

            result = reliability.estimate_streamed(labels, chunks, streamed.widths, cfg.components,
                                                   cfg.prompt_components, cfg.eta0, cfg.folds, cfg.seed)
        else:
            result = reliability.estimate(labels, None, None, cfg.eta0, cfg.folds, cfg.seed)
    model = _model_name(result, None, too_few, inputs.num_pairs)
    return _tables(cfg, result, model, streamed.rows, inputs.annotators, started)
