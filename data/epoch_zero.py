"""Epoch 0 of a `repo train --robust` run: the noise estimate of its score cache before any training
(data/estimate.py, method.md §9), or, for --resume, the one the run wrote.

Reads   the score cache part by part (whole with --estimate-with or a prior column), or on resume
        <run>/posteriors/epoch-0000.parquet and <run>/annotators/epoch-0000.parquet.
Returns EpochZero; the caller writes it as epoch 0 (data/train_log.Logger.epoch_tables).
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from re_po.data import estimate, run_folder, schema
from re_po.data.noise_inputs import NoiseInputError
from re_po.data.pair_table import PairTable


@dataclass(frozen=True)
class EpochZero:
    z: torch.Tensor  # (N,) float64: each row's prior logit (the estimate's calibrated z), in row order
    w: torch.Tensor | None  # (N,) float64: the estimate's posteriors; None when read back
    eta: torch.Tensor | None  # (K,) float64: the estimate's η of each annotator; None when read back
    identified: torch.Tensor  # (K,) bool: the annotators whose η the estimate identified
    eta_se: list | None  # (K,) the estimate's standard errors (None where infinite); None when read back
    resumed: bool  # read back from the run folder, not estimated


def read_or_estimate(pairs: PairTable, out: Path, resume: bool, scores: Path, estimate_with: Path | None,
                     cfg, paper_flags: str) -> EpochZero:
    """The estimate before training on `pairs` (read from `scores`, more pairs from `estimate_with`); cfg: the
    EstimateConfig; paper_flags: how to ask for the paper's Algorithm 1 instead (said when the estimate cannot
    run). A resumed run reads epoch 0 back instead of estimating again, so it continues from the same prior."""
    if resume and 0 in run_folder.epochs_written(out, run_folder.POSTERIORS):
        saved = run_folder.read_epoch(out, run_folder.POSTERIORS, 0)
        found = dict(run_folder.read_epoch(out, run_folder.ANNOTATORS, 0).select("annotator", "identified").iter_rows())
        return EpochZero(torch.tensor(saved.sort("row_id")["z"].to_numpy(), dtype=torch.float64), None, None,
                         torch.tensor([found[a] for a in pairs.annotators]), None, True)
    try:
        found = _estimate(scores, estimate_with, cfg)
    except NoiseInputError as err:  # say how training can go on, in train's own terms
        raise NoiseInputError(f"{err}.\n`repo train --robust` estimates the noise first: in repo.toml set [estimate] "
                              "probe = false (the labels' agreement alone) or prior_col = COLUMN, or train the "
                              f"paper's Algorithm 1: {paper_flags}") from err
    rows = found.posteriors.head(pairs.num_pairs)  # the cache's own rows, in row_id order like `pairs`
    # by name: with --estimate-with the estimate may know annotators the cache does not have
    of = {a["annotator"]: a for a in found.annotators.iter_rows(named=True)}
    z, w = (torch.tensor(rows[name].to_numpy(), dtype=torch.float64) for name in ("z", "w"))
    print(f"estimate before training ({found.model}, {found.seconds:.0f} s): " + ", ".join(
        f"{a} η {of[a]['eta']:.3f}{'' if of[a]['identified'] else ' (not identified)'}"
        for a in pairs.annotators[:8]) + (" ..." if pairs.num_annotators > 8 else ""), file=sys.stderr)
    return EpochZero(z, w, torch.tensor([of[a]["eta"] for a in pairs.annotators], dtype=torch.float64),
                     torch.tensor([of[a]["identified"] for a in pairs.annotators]),
                     [of[a]["eta_se"] for a in pairs.annotators], False)


def _estimate(scores: Path, estimate_with: Path | None, cfg) -> estimate.NoiseEstimate:
    """The estimate of the cache, read part by part (memory flat in the pairs); read whole where a --prior-col or
    --estimate-with's pairs join it (without the states where a prior column is the model)."""
    if estimate_with is None and cfg.prior_col is None:
        return estimate.run_streamed(cfg, scores, str(scores))
    states = cfg.prior_col is None  # a prior column is the model: the states stay on disk
    frame, key = schema.read_scores(scores, embeddings=states)
    sources = [str(scores)]
    if estimate_with is not None:  # more pairs to learn the probe from; their rows go after the cache's
        extra, extra_key = schema.read_scores(estimate_with, embeddings=states)
        differing = [f for f in ("weights_sha", "tokenizer_sha", "embed_layers") if extra_key.get(f) != key.get(f)]
        if differing:
            raise schema.CacheError(f"--estimate-with {estimate_with} was scored differently from {scores} "
                                    f"({', '.join(differing)}); score both with the same model and options")
        offset = int(frame["row_id"].max()) + 1
        shared = [c for c in frame.columns if c in extra.columns]
        frame = pl.concat([frame.select(shared), extra.select(shared).with_columns(pl.col("row_id") + offset)])
        sources.append(str(estimate_with))
    return estimate.run(cfg, frame, key, " + ".join(sources))
