"""re-po: preference alignment (DPO, IPO, SimPO, CPO) robust to noisy labels, as a Python API.

    import re_po
    from re_po import EstimateConfig, InspectConfig, ScoreConfig, TrainConfig

    scores = re_po.score(ScoreConfig(data="pairs.jsonl", model="HuggingFaceTB/SmolLM2-135M-Instruct", out=...))
    estimate = re_po.estimate_noise(scores)          # before training: η̂ per annotator, w per label
    run = re_po.train(TrainConfig(scores=scores, out_dir=..., robust=True))
    summary = re_po.inspect_noise(InspectConfig(run=run, out_dir=...))

The functions take the Configs the `repo` commands build (re_po.stages.configs; every field is documented
there and in `repo CMD --help`) and call the same stages, so a notebook and the command line give the same
files. Installed, this folder is the package `re_po`: its cli.py, data/, pipeline/ and stages/ are re_po.cli,
re_po.data, re_po.pipeline and re_po.stages (pyproject.toml maps them), so a user's own `data` or `pipeline`
package never shadows re-po's. The stage modules (torch, transformers) load on the first call.
"""

from __future__ import annotations

import json
from pathlib import Path

from re_po.stages.configs import (
    DemoConfig,
    EstimateConfig,
    EvaluateConfig,
    InspectConfig,
    MakeNoisyConfig,
    ScoreConfig,
    TrainConfig,
)

__all__ = ["DemoConfig", "EstimateConfig", "EvaluateConfig", "InspectConfig", "MakeNoisyConfig", "ScoreConfig",
           "TrainConfig", "estimate_noise", "inspect_noise", "score", "train"]


def score(cfg: ScoreConfig) -> Path:
    """Stage one (`repo score`): the score cache folder."""
    from re_po.data import scoring as stage

    return Path(stage.run(cfg))


def train(cfg: TrainConfig) -> Path:
    """Stage two (`repo train`): the run folder (final/ holds the policy)."""
    from re_po.stages import train as stage

    return stage.run(cfg)


def inspect_noise(cfg: InspectConfig) -> dict:
    """`repo inspect-noise` on a run folder or a score cache: writes its outputs and returns summary.json's
    content (annotators with η, the flag rule and counts, truth metrics when the data carries the truth)."""
    from re_po.stages import inspect_noise as stage

    return json.loads((stage.run(cfg) / "summary.json").read_text())


def estimate_noise(scores: str | Path, cfg: EstimateConfig | None = None):
    """The noise estimate of a score cache before any training, written nowhere: a NoiseEstimate whose
    `annotators` (annotator, eta, eta_se, identified) and `posteriors` (row_id, pair_id, annotator, z, p, w) are
    polars DataFrames."""
    from re_po.data import estimate, schema

    cached, key = schema.read_scores(scores)
    return estimate.run(cfg or EstimateConfig(), cached, key, str(scores))
