"""`repo generate` and what it rests on: sampling (pipeline/sampling.py), the win rate, its interval and the KL
estimate (pipeline/generation_metrics.py), the judges (data/judges.py), resumption after SIGKILL.

The models are the tiny random Llama of conftest.py (vocabulary 64): what they write is noise, which is all these
tests need; the win rate and the KL are checked against closed forms and exact sums.
"""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import subprocess_env

from re_po.data import parts
from re_po.data.judges import JudgeError, load_judge
from re_po.pipeline import generation_metrics
from re_po.pipeline.choices import Sampling
from re_po.pipeline.sampling import sample_responses
from re_po.stages import generate
from re_po.stages.configs import GenerateConfig

WORDS = "the cat sat on the mat . what is it ? the dog ran on a rug . hello world please tell me about the sky".split()


def write_prompts(path: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    lines = [json.dumps({"prompt": " ".join(rng.choice(WORDS, size=3 + i % 4))}) for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return path


def config(data: Path, policy: Path, ref: Path, out: Path, **overrides) -> GenerateConfig:
    settings = dict(data=str(data), policy=str(policy), ref=str(ref), out=out, max_new_tokens=6, num_samples=2,
                    device="cpu", backend="hf", batch_size=4, part_size=4)
    return GenerateConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def other_llama(tiny_llama, tmp_path_factory) -> Path:
    """The tiny Llama with its LM head moved: another policy with the same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(1)
    with torch.no_grad():
        model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))
    path = tmp_path_factory.mktemp("other_llama")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(path)
    return path


# ---- the win rate, its interval, the KL: closed forms ----------------------------------------------------------------

def test_outcomes_count_a_tie_as_half():
    won = generation_metrics.outcomes(np.array([[1.0, 0.0], [2.0, 2.0]]), np.array([[0.0, 1.0], [2.0, 1.0]]))
    assert won.tolist() == [[1.0, 0.0], [0.5, 1.0]]


def test_bootstrap_interval_matches_the_normal_approximation_for_independent_prompts():
    rng = np.random.default_rng(3)
    per_prompt = (rng.random(4000) < 0.6).astype(float)
    low, high = generation_metrics.bootstrap_interval(per_prompt, seed=1)
    half_width = 1.96 * per_prompt.std() / np.sqrt(per_prompt.size)
    assert abs((high - low) / 2 - half_width) < 0.1 * half_width
    assert low < per_prompt.mean() < high


def test_a_policy_against_an_equal_policy_wins_half_within_its_interval():
    """Two sides drawing rewards from one distribution: ½ lies in the interval, which is not degenerate."""
    rng = np.random.default_rng(0)
    policy, reference = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    zeros, lengths = np.zeros((300, 2)), np.ones((300, 2))
    result = generation_metrics.compare(policy, reference, zeros, zeros, lengths, lengths)
    low, high = result.win_rate_ci
    assert low < 0.5 < high and high - low > 0.05
    assert result.kl == 0.0 and result.ties == 0.0


# ---- sampling -----------------------------------------------------------------------------------------------------

def test_sampling_is_reproducible_and_leaves_the_callers_rng_alone(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = [[2, 10, 11], [2, 12]]
    sampling = Sampling(num_samples=3, max_new_tokens=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = sample_responses(model, prompts, sampling, seed=7, end_ids={3}, pad_id=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert first == sample_responses(model, prompts, sampling, seed=7, end_ids={3}, pad_id=0)
    assert first != sample_responses(model, prompts, sampling, seed=8, end_ids={3}, pad_id=0)
    for samples in first:
        assert len(samples) == 3
        for ids in samples:  # up to and including the first end token, or max_new_tokens of them
            assert 1 <= len(ids) <= 5 and 3 not in ids[:-1]


# ---- the stage --------------------------------------------------------------------------------------------------

def test_a_policy_against_itself_wins_exactly_half_with_zero_kl(tiny_llama, tmp_path):
    data = write_prompts(tmp_path / "prompts.jsonl", 6)
    summary = json.loads(generate.run(config(data, tiny_llama, tiny_llama, tmp_path / "gen",
                                             judge="test_generate:length_judge")).read_text())
    assert summary["win_rate"] == 0.5 and summary["win_rate_ci"][0] <= 0.5 <= summary["win_rate_ci"][1]
    assert summary["kl"] == 0.0  # the same model scores each sample twice in one forward
    assert summary["prompts"] == 6 and summary["samples_per_prompt"] == 2
    assert (tmp_path / "gen" / "report.html").read_text().count("<tr data-group='tie'>") == 12


RECORDED: list[tuple[object, str]] = []


def length_judge(prompt, response: str) -> float:
    """A judge with a known reward: the number of characters; records every call."""
    RECORDED.append((prompt, response))
    return float(len(response))


def test_the_judge_is_called_on_exactly_the_generated_texts(tiny_llama, other_llama, tmp_path):
    from transformers import AutoTokenizer

    RECORDED.clear()
    data = write_prompts(tmp_path / "prompts.jsonl", 5)
    generate.run(config(data, other_llama, tiny_llama, tmp_path / "gen", judge="test_generate:length_judge"))
    frame = generate.read_samples(tmp_path / "gen")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    decoded = tokenizer.batch_decode(frame["response_ids"].to_list(), skip_special_tokens=True)
    assert sorted(RECORDED) == sorted(zip(frame["prompt"].to_list(), decoded))
    assert len(RECORDED) == 5 * 2 * 2
    assert frame["reward"].to_list() == [float(len(text)) for text in frame["response"].to_list()]


def test_kl_estimate_agrees_with_the_exact_kl_of_one_token(tiny_llama, other_llama, tmp_path):
    """One new token: KL(π‖π_ref) = Σ_v π(v|x) log π(v|x)/π_ref(v|x), summed over the vocabulary exactly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_prompts(tmp_path / "prompts.jsonl", 4)
    summary = json.loads(generate.run(config(data, other_llama, tiny_llama, tmp_path / "gen", max_new_tokens=1,
                                             num_samples=200)).read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    policy, ref = (AutoModelForCausalLM.from_pretrained(p).eval() for p in (other_llama, tiny_llama))
    exact = []
    for line in data.read_text().splitlines():
        ids = torch.tensor([tokenizer(json.loads(line)["prompt"])["input_ids"]])
        with torch.no_grad():
            p, q = (torch.log_softmax(m(ids).logits[0, -1].double(), -1) for m in (policy, ref))
        exact.append(float((p.exp() * (p - q)).sum()))
    assert summary["win_rate"] is None
    assert abs(summary["kl"] - np.mean(exact)) < 4 * summary["kl_se"] + 1e-3
    assert summary["kl_se"] < 0.5 * np.mean(exact)  # the check has power: the KL is well away from 0


def test_a_reward_model_is_loaded_offline_from_a_folder_and_batched(tiny_llama, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    for labels in (1, 2):
        model = LlamaForSequenceClassification(LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, num_labels=labels, pad_token_id=tokenizer.pad_token_id)).eval()
        folder = tmp_path / f"rm{labels}"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        prompts, responses = ["the cat", "what is it ?", "hello"], [" sat on the mat .", " a dog", " world world"]
        rewards = load_judge(str(folder), device="cpu", batch_size=2)(prompts, responses)
        for prompt, response, reward in zip(prompts, responses, rewards):  # one text at a time: no padding
            with torch.no_grad():
                logits = model(**tokenizer(prompt + response, return_tensors="pt")).logits[0].double()
            expected = logits[0] if labels == 1 else logits[1] - logits[0]
            assert reward == pytest.approx(float(expected), abs=1e-5)


def test_a_reward_model_without_safetensors_is_refused(tiny_llama, tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "pickled"
    model = AutoModelForSequenceClassification.from_pretrained(tiny_llama, num_labels=1)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # a pickle: never to be loaded
    with pytest.raises(JudgeError, match="safetensors only"):
        load_judge(str(folder))


def nan_judge(prompt, response: str) -> float:
    return float("nan")


def test_a_judge_that_is_not_importable_fails_or_gives_nan_is_refused():
    with pytest.raises(JudgeError, match="cannot import"):
        load_judge("no_such_module_here:reward")
    with pytest.raises(JudgeError, match="finite number"):
        load_judge("test_generate:nan_judge")(["the"], ["cat"])
    with pytest.raises(JudgeError, match="raised TypeError"):
        load_judge("math:sqrt")(["the"], ["cat"])  # sqrt(prompt, response): the user's code fails


KILLABLE_GENERATOR = """
import json, sys, time
from re_po.data import parts
from re_po.stages import generate
from re_po.stages.configs import GenerateConfig

write_part = parts.write_part
def slow_write_part(*args, **kwargs):  # slow enough to be killed between two parts
    write_part(*args, **kwargs)
    time.sleep(0.5)
parts.write_part = slow_write_part
generate.run(GenerateConfig(**json.loads(sys.argv[1])))
"""


def test_sigkill_mid_run_then_rerun_gives_every_sample_once_as_an_uninterrupted_run(tiny_llama, other_llama,
                                                                                     tmp_path):
    data = write_prompts(tmp_path / "prompts.jsonl", 10)
    killed = tmp_path / "killed"
    settings = dict(data=str(data), policy=str(other_llama), ref=str(tiny_llama), max_new_tokens=6, num_samples=2,
                    device="cpu", backend="hf", batch_size=2, part_size=2, judge="re_po.data.judges:vader_compound")
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_GENERATOR, json.dumps({**settings, "out": str(killed)})],
                            env=env, stderr=subprocess.DEVNULL)
    manifest = killed / generate.SAMPLES / parts.MANIFEST
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["parts"]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 1 <= len(json.loads(manifest.read_text())["parts"]) < 5

    generate.run(GenerateConfig(**{**settings, "out": killed}))
    generate.run(GenerateConfig(**{**settings, "out": tmp_path / "straight"}))
    resumed, straight = (generate.read_samples(folder) for folder in (killed, tmp_path / "straight"))
    assert resumed.height == 10 * 2 * 2
    assert resumed.select("prompt_index", "side", "sample").is_unique().all()
    assert resumed.equals(straight)


def test_a_folder_it_did_not_write_is_refused_before_any_work(tiny_llama, tmp_path):
    data = write_prompts(tmp_path / "prompts.jsonl", 2)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="did not make it"):
        generate.run(config(data, tiny_llama, tiny_llama, mine))
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_other_settings_on_the_same_out_folder_are_refused_unless_overwrite(tiny_llama, tmp_path):
    data = write_prompts(tmp_path / "prompts.jsonl", 3)
    generate.run(config(data, tiny_llama, tiny_llama, tmp_path / "gen"))
    with pytest.raises(parts.PartsError, match="other settings"):
        generate.run(config(data, tiny_llama, tiny_llama, tmp_path / "gen", temperature=0.5))
    summary = json.loads(generate.run(config(data, tiny_llama, tiny_llama, tmp_path / "gen", temperature=0.5,
                                             overwrite=True)).read_text())
    assert summary["settings"]["sampling"]["temperature"] == 0.5
    assert pl.read_parquet(tmp_path / "gen" / generate.SAMPLES / "part-00000.parquet").height == 3 * 2 * 2


def test_generation_eval_of_the_reference_itself_wins_half_with_zero_kl(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from re_po.pipeline.generation_eval import GenerationEval

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    prompts = ["the cat", "what is it ?", "hello world"]
    evaluate = GenerationEval(model, prompts, [tokenizer(p)["input_ids"] for p in prompts], judge=length_judge_pairs,
                              decode=lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
                              sampling=Sampling(num_samples=2, max_new_tokens=5), seed=0, end_ids={3}, pad_id=0)
    assert evaluate(model) == {"eval/win_rate": 0.5, "eval/reward": pytest.approx(evaluate.reference_reward.mean()),
                               "eval/kl": 0.0, "eval/length": pytest.approx(evaluate.reference_length.mean())}


def length_judge_pairs(prompts, responses):
    return [float(len(r)) for r in responses]
