"""A fixed-width sketch of the reference model's pooled hidden states, so that the score cache does not grow with
the model's width (issue 26, item 2).

`repo score` multiplies each pooled state x (H,) by one seeded Gaussian matrix R (H, k), entries N(0, 1/k), before
rounding it to float16: E‖xR‖² = ‖x‖², and by Johnson–Lindenstrauss every distance and inner product among n states
is kept within a factor 1 ± ε with high probability once k ≥ 4·ln n / (ε²/2 − ε³/3). The noise estimate reads only
linear functions of the states (the response difference d = chosen − rejected, its principal directions, the prompt's
principal components: pipeline/reliability.probe_features), and R is linear, so the projected d is Rᵀd: the probe
sees the same geometry, at a width fixed whatever H (1.5 KB per row for two layers at k = 128, where 8B's 4096 took
49 KB). The same R for every part and every run: R depends only on (H, k, seed), drawn with numpy's PCG64, and the
cache key records it with the sha256 of its bytes, so a resumed cache whose R would differ (another numpy stream) is
refused rather than mixed.

Pure numpy; reads and writes nothing.
"""

import hashlib
import math

import numpy as np

SEED = 0  # the projection's seed: part of the cache key


def projects(hidden: int, width: int) -> bool:
    """Whether states of width `hidden` are projected to `width` (0 or a width ≥ hidden: stored as they are)."""
    return 0 < width < hidden


def matrix(hidden: int, width: int, seed: int = SEED) -> np.ndarray:
    """R (hidden, width) float32, entries N(0, 1/width) from numpy's PCG64 seeded by `seed`."""
    draws = np.random.Generator(np.random.PCG64(seed)).standard_normal((hidden, width))
    return (draws / math.sqrt(width)).astype(np.float32)


def describe(hidden: int, width: int, seed: int = SEED) -> str:
    """The cache key's text for this projection ("" where there is none): method, widths, seed and the sha256 of R."""
    if not projects(hidden, width):
        return ""
    sha = hashlib.sha256(matrix(hidden, width, seed).tobytes()).hexdigest()[:16]
    return f"gaussian {hidden}->{width} seed {seed} sha256:{sha}"


def jl_width(points: int, epsilon: float) -> int:
    """The width k that Johnson–Lindenstrauss asks for `points` points at distortion ε (Dasgupta & Gupta 2003)."""
    return math.ceil(4 * math.log(points) / (epsilon ** 2 / 2 - epsilon ** 3 / 3))
