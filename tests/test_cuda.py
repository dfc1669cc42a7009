"""What only a GPU can check: each test is skipped where CUDA is absent (CI), and runs in bench/gpu.sh on a lent GPU.

The same invariants the CPU tests hold, on the device users run: scoring on CUDA gives the CPU's log-probs, DPO's
first step with policy = reference has loss ln 2 under bf16 autocast, the chunked log-prob reduction agrees with
a float64 reference, and `--backend auto` takes vLLM where it is installed.
"""

import importlib.util
import json
import math
import random

import pytest
import torch
from conftest import WORDS

from re_po.data import schema
from re_po.data.scoring import run as score
from re_po.pipeline.logprobs import taken_token_logps
from re_po.stages.configs import Backend, ScoreConfig, TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs these)")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    rng = random.Random(0)
    words = [w for w in WORDS if w.isalpha()]
    def text(low, high):
        return " ".join(rng.choices(words, k=rng.randint(low, high)))
    rows = [{"prompt": text(2, 6), "chosen": text(1, 9), "rejected": text(1, 9), "annotator": f"a{i % 2}"}
            for i in range(24)]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def scored(pairs_file, model, out, **overrides):
    return score(ScoreConfig(data=str(pairs_file), model=str(model), out=out, max_length=64, max_prompt_length=32,
                             **overrides))


def test_scores_on_cuda_equal_the_cpu_ones(pairs_file, tiny_llama, tmp_path):
    cpu = schema.read_scores(scored(pairs_file, tiny_llama, tmp_path / "cpu", device="cpu"))[0]
    gpu, key = schema.read_scores(scored(pairs_file, tiny_llama, tmp_path / "gpu", device="cuda",
                                         backend=Backend.hf))
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        torch.testing.assert_close(torch.tensor(gpu[column].to_list()), torch.tensor(cpu[column].to_list()),
                                   rtol=1e-5, atol=1e-4)
    assert key["backend"] == "hf"


def test_first_dpo_step_on_cuda_with_bf16_has_loss_ln2(pairs_file, tiny_llama, tmp_path):
    from re_po.stages.train import run as train

    cache = scored(pairs_file, tiny_llama, tmp_path / "scores", device="cuda", backend=Backend.hf)
    out = train(TrainConfig(scores=cache, out_dir=tmp_path / "run", batch_size=8, max_steps=2, device="cuda",
                            bf16=True, robust=True))
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=2e-2)  # bf16 autocast moves the margins a little
    assert all(math.isfinite(s["loss"]) and math.isfinite(s["grad_norm"]) for s in steps)


def test_chunked_logps_on_cuda_match_a_float64_reference():
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 5000, bias=False, device="cuda")
    hidden = torch.randn(300, 32, device="cuda", requires_grad=True)
    targets = torch.randint(0, 5000, (300,), device="cuda")
    chunked = taken_token_logps(head, hidden, targets, logit_budget=5000 * 64)  # 5 chunks
    chunked.sum().backward()
    grads = hidden.grad.clone(), head.weight.grad.clone()
    reference_hidden = hidden.detach().cpu().double().requires_grad_()
    reference_weight = head.weight.detach().cpu().double().requires_grad_()
    logits = reference_hidden @ reference_weight.T
    reference = logits.gather(1, targets.cpu()[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    reference.sum().backward()
    torch.testing.assert_close(chunked.cpu().double(), reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[0].cpu().double(), reference_hidden.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1].cpu().double(), reference_weight.grad, rtol=1e-4, atol=1e-4)


def test_auto_backend_takes_vllm_where_it_is_installed(pairs_file, tiny_llama, tmp_path, capsys):
    cache = scored(pairs_file, tiny_llama, tmp_path / "auto", embeddings=False)
    expected = "vllm" if importlib.util.find_spec("vllm") else "hf"
    assert capsys.readouterr().out.startswith(f"backend: {expected} (auto: ")
    assert schema.read_scores(cache)[1]["backend"] == expected
