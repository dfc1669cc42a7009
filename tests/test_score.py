"""Stage one with the hf backend: the log-prob reduction, the cache, resumption and bad input."""
import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.logprobs import pack, response_logps


def peaky_llama(seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama whose next-token distributions are far from uniform (large init), so that scoring
    the wrong position or token changes a log-prob by nats, not by rounding error."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.5, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


def random_sequences(count: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    rng = random.Random(seed)
    prompts = [[2] + [rng.randrange(4, 64) for _ in range(rng.randrange(0, 12))] for _ in range(count)]
    responses = [[rng.randrange(4, 64) for _ in range(rng.randrange(1, 10))] for _ in range(count)]
    return prompts, responses


def brute_force_logps(model, prompt: list[int], response: list[int]) -> float:
    """Full float64 forward of one unpadded sequence, log_softmax over every position, then the sum of
    log p(token k | tokens < k) over the response positions k."""
    ids = prompt + response
    double = LlamaForCausalLM(model.config).double().eval()
    double.load_state_dict(model.state_dict())
    with torch.no_grad():
        logp = torch.log_softmax(double(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logp[k - 1, ids[k]].item() for k in range(len(prompt), len(ids)))


def test_pack_right_pads_and_marks_response():
    packed = pack([[2, 5], [2]], [[7], [8, 9, 10]], pad_id=0)
    assert packed.input_ids.tolist() == [[2, 5, 7, 0], [2, 8, 9, 10]]
    assert packed.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert packed.response_mask.tolist() == [[False, False, True, False], [False, True, True, True]]


@pytest.mark.parametrize("prompt,response,which", [([], [5], "prompt"), ([2], [], "response")])
def test_pack_refuses_empty_parts(prompt, response, which):
    with pytest.raises(ValueError, match=f"sequence 0 has an empty {which}"):
        pack([prompt], [response], pad_id=0)


def test_response_logps_matches_float64_brute_force():
    model = peaky_llama()
    prompts, responses = random_sequences(12)
    with torch.no_grad():
        logps, n_tokens = response_logps(model, pack(prompts, responses, pad_id=0))
    expected = [brute_force_logps(model, p, r) for p, r in zip(prompts, responses)]
    assert logps.dtype == torch.float32
    assert n_tokens.tolist() == [len(r) for r in responses]
    assert logps.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # The model is peaky enough that scoring the wrong positions could not pass the check above.
    assert max(abs(e / len(r)) for e, r in zip(expected, responses)) > 5.0


def test_response_logps_gradient_matches_brute_force():
    """The trainer backprops through the reduction: its gradient must be that of the full computation."""
    model = peaky_llama()
    prompts, responses = random_sequences(4, seed=1)
    logps, _ = response_logps(model, pack(prompts, responses, pad_id=0))
    (logps * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
    grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    full = 0.0
    for weight, prompt, response in zip([1.0, -2.0, 0.5, 3.0], prompts, responses):
        ids = prompt + response
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        full = full + weight * sum(logp[k - 1, ids[k]] for k in range(len(prompt), len(ids)))
    full.backward()
    torch.testing.assert_close(grad, model.model.layers[0].mlp.up_proj.weight.grad, rtol=1e-4, atol=1e-5)


def test_lm_head_runs_only_on_positions_that_predict_response_tokens():
    model = peaky_llama()
    prompts, responses = random_sequences(6, seed=2)
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        response_logps(model, pack(prompts, responses, pad_id=0))
    assert rows == [sum(len(r) for r in responses)]
