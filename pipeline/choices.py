"""The choices a run makes, by name: the loss and its hyper-parameters (LossSpec), the E-step's evidence, how η
moves, the robust loss's form (method.md §2, §7, §9), and how responses are sampled (Sampling).

Plain Python, no torch: the command line declares its options from these without loading torch. The math that
acts on them is in pipeline/losses.py and pipeline/robust.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class LossKind(StrEnum):
    """The preference losses re-po trains with. cdpo and rdpo are noise-aware DPO baselines, not robust-able."""

    dpo = "dpo"
    ipo = "ipo"
    simpo = "simpo"
    cpo = "cpo"
    cdpo = "cdpo"
    rdpo = "rdpo"


class RobustKind(StrEnum):
    """The four families RE-PO wraps (paper §2), as a choice of their own where only they are offered (the demo);
    cdpo/rdpo already model noise their own way."""

    dpo = "dpo"
    ipo = "ipo"
    simpo = "simpo"
    cpo = "cpo"


ROBUST_KINDS = frozenset(LossKind(kind) for kind in RobustKind)

DEFAULT_BETA: dict[LossKind, float] = {
    LossKind.dpo: 0.1,
    LossKind.ipo: 0.1,
    LossKind.simpo: 2.0,
    LossKind.cpo: 0.1,
    LossKind.cdpo: 0.1,
    LossKind.rdpo: 0.1,
}


@dataclass(frozen=True)
class LossSpec:
    """A preference loss and its hyper-parameters, as one value (defaults of method.md §2); each kind reads only
    its own fields. Built once from the run's settings (stages/train.TrainConfig.loss_spec) and written in the
    run's config.json, so evaluation reads back exactly what was trained."""

    kind: LossKind
    beta: float
    gamma: float = 0.5  # SimPO target margin γ
    cpo_alpha: float = 1.0  # CPO weight α of the chosen response's per-token NLL
    ipo_summed: bool = False  # IPO on summed log-ratios instead of per-token means (method.md §2)
    label_smoothing: float = 0.0  # cDPO ε: assumed probability that a label is flipped
    flip_rate: float = 0.0  # rDPO ε: assumed flip rate, must be < ½ (the loss divides by 1 − 2ε)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LossKind(self.kind))  # a name read back from JSON
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not 0.0 <= self.label_smoothing <= 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5], got {self.label_smoothing}")
        if not 0.0 <= self.flip_rate < 0.5:
            raise ValueError(f"flip_rate must be in [0, 0.5), got {self.flip_rate}")

    @classmethod
    def of(cls, kind: LossKind | str, beta: float | None = None, **overrides: object) -> LossSpec:
        """The spec of `kind`, β from DEFAULT_BETA unless given; other fields from `overrides`."""
        return cls(kind=LossKind(kind), beta=DEFAULT_BETA[LossKind(kind)] if beta is None else beta, **overrides)


class EStep(StrEnum):
    policy = "policy"
    seeded = "seeded"
    prior = "prior"


class EtaUpdate(StrEnum):
    """How η moves (method.md §7.5): per-step EMA (Alg. 1), one exact M-step between epochs, or both."""

    ema = "ema"
    epoch = "epoch"
    both = "both"


class RobustForm(StrEnum):
    """The RE-PO loss: BCE on the induced logit (Eq. 5), w·L(a≻b) + (1−w)·L(b≻a), or w·L(a≻b) alone (method.md
    §7.1)."""

    induced = "induced"
    weighted = "weighted"
    scaled = "scaled"


@dataclass(frozen=True)
class Sampling:
    """How responses are drawn (pipeline/sampling.py, vLLM alike). temperature 0: greedy."""

    num_samples: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise ValueError(f"num_samples ({self.num_samples}) and max_new_tokens ({self.max_new_tokens}) "
                             "must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature} and {self.top_p}")
