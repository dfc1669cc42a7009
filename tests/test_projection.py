"""The fixed-width sketch of the pooled states (pipeline/projection.py): what it keeps, and that a cache holds one."""
import itertools
import json

import numpy as np
import pytest
import torch
from test_score import peaky_model_dir, score_config, write_pairs  # noqa: F401 (a fixture)

from re_po.data import parts, schema
from re_po.data.scoring import run
from re_po.pipeline import projection


def test_distances_and_inner_products_stay_within_the_johnson_lindenstrauss_bound():
    """20 states of SmolLM2's width 576 (low-rank plus noise, one massive dimension, as pooled states are): every
    squared distance and inner product after the float32 projection to 128 is within the JL distortion ε = 0.55
    (4·ln 20 / (ε²/2 − ε³/3) = 125 ≤ 128) of the float64 value on the full states."""
    rng = np.random.default_rng(1)
    states = rng.standard_normal((20, 8)) @ rng.standard_normal((8, 576)) + 0.5 * rng.standard_normal((20, 576))
    states[:, 7] += 40.0  # a massive activation
    epsilon = 0.55
    assert projection.jl_width(len(states), epsilon) <= 128
    sketch = (states.astype(np.float32) @ projection.matrix(576, 128)).astype(np.float64)
    for i, j in itertools.combinations(range(len(states)), 2):
        full = np.sum((states[i] - states[j]) ** 2)
        assert abs(np.sum((sketch[i] - sketch[j]) ** 2) / full - 1) <= epsilon
        # ⟨x, y⟩ = (‖x + y‖² − ‖x − y‖²)/4: within ε·‖x‖·‖y‖
        assert abs(sketch[i] @ sketch[j] - states[i] @ states[j]) <= epsilon * np.linalg.norm(states[i]) * \
            np.linalg.norm(states[j])


def test_the_float32_projection_is_the_float64_one_and_the_same_matrix_every_time():
    states = np.random.default_rng(2).standard_normal((50, 576))
    exact = states @ projection.matrix(576, 128).astype(np.float64)
    rounded = (torch.from_numpy(states.astype(np.float32)) @ torch.from_numpy(projection.matrix(576, 128))).numpy()
    assert np.allclose(rounded, exact, rtol=1e-4, atol=1e-4 * np.abs(exact).max())
    assert np.array_equal(projection.matrix(576, 128), projection.matrix(576, 128))
    assert not np.array_equal(projection.matrix(576, 128, seed=1), projection.matrix(576, 128))
    # E‖xR‖² = ‖x‖²: the columns' squared norms average 1/k per entry
    assert abs(float(np.mean(projection.matrix(576, 128).astype(np.float64) ** 2)) * 128 - 1) < 0.01
    described = projection.describe(576, 128)
    assert described.startswith("gaussian 576->128 seed 0 sha256:") and described == projection.describe(576, 128)
    assert projection.describe(576, 0) == projection.describe(64, 128) == ""


def test_a_projected_cache_holds_the_full_states_times_the_keyed_matrix_and_a_resume_uses_the_same(
        peaky_model_dir, tmp_path):  # noqa: F811
    """Scored with embed_width 16 (hidden 64): the key names the projection; each stored state is the full-width
    cache's state times projection.matrix(64, 16) (float16 rounding apart); a cache resumed after losing parts
    (a kill) is the straight run's, row for row."""
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    run(score_config(data, peaky_model_dir, tmp_path / "full", embed_width=0))
    run(score_config(data, peaky_model_dir, tmp_path / "sketch", embed_width=16))
    full, full_key = schema.read_scores(tmp_path / "full")
    sketch, key = schema.read_scores(tmp_path / "sketch")
    assert full_key["embed_projection"] == "" and key["embed_projection"] == projection.describe(64, 16) != ""
    matrix = projection.matrix(64, 16).astype(np.float64)
    for name in schema.stored_embedding_columns(key):
        stored = sketch[name].to_numpy().astype(np.float64)
        assert stored.shape == (40, 16)
        expected = full[name].to_numpy().astype(np.float64) @ matrix
        assert np.allclose(stored, expected, rtol=5e-3, atol=5e-3 * np.abs(expected).max())

    out = tmp_path / "resumed"
    run(score_config(data, peaky_model_dir, out, embed_width=16))
    manifest = json.loads((out / schema.MANIFEST).read_text())
    for index in (1, 2):  # as if killed after part 0
        del manifest["parts"][parts.part_name(index)]
        (out / parts.part_name(index)).unlink()
    manifest["complete"] = False
    (out / schema.MANIFEST).write_text(json.dumps(manifest))
    run(score_config(data, peaky_model_dir, out, embed_width=16))
    assert schema.read_scores(out)[0].equals(sketch)


def test_a_resume_whose_projection_would_differ_is_refused(peaky_model_dir, tmp_path, monkeypatch):  # noqa: F811
    """Another width, or the same settings drawing another matrix (a numpy whose stream changed): the key's
    embed_projection differs, so the cache is refused, never mixed."""
    data = write_pairs(tmp_path / "pairs.jsonl", 20)
    out = tmp_path / "scores"
    run(score_config(data, peaky_model_dir, out, embed_width=16))
    with pytest.raises(schema.CacheError, match="embed_projection"):
        run(score_config(data, peaky_model_dir, out, embed_width=8))
    drawn = projection.matrix
    monkeypatch.setattr(projection, "matrix", lambda hidden, width, seed=0: drawn(hidden, width, seed + 1))
    with pytest.raises(schema.CacheError, match="embed_projection"):
        run(score_config(data, peaky_model_dir, out, embed_width=16))
