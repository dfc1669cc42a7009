"""The shared reduction (pipeline/logprobs.py): layouts, sums against float64 brute force, gradients, and the
check that falls back to padding for a model whose attention does not stay within packed sequences."""
import warnings

import pytest
import torch
from test_score import brute_force_logps, peaky_llama, random_sequences
from transformers import masking_utils

from re_po.pipeline import logprobs
from re_po.pipeline.logprobs import pack, pad, response_logps


def small_rows(prompts, responses, pad_id):
    """Packing into rows of 40 tokens: the 12 test sequences (2 to 21 tokens) take several rows of several."""
    return pack(prompts, responses, pad_id, row_tokens=40)


LAYOUTS = {"packed": pack, "packed-small-rows": small_rows, "padded": pad}


@pytest.fixture
def leaky_attention(monkeypatch):
    """Simulates an architecture that ignores packed position ids: no block-diagonal mask, plain causal attention."""
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)


def test_pad_right_pads_and_marks_response():
    padded = pad([[2, 5], [2]], [[7], [8, 9, 10]], pad_id=0)
    assert padded.input_ids.tolist() == [[2, 5, 7, 0], [2, 8, 9, 10]]
    assert padded.attention_mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert padded.response_mask.tolist() == [[False, False, True, False], [False, True, True, True]]
    assert padded.sequence.tolist() == [[0, 0, 0, -1], [1, 1, 1, 1]]
    assert padded.position_ids is None


def test_pack_is_first_fit_decreasing_with_positions_restarting_per_sequence():
    """Lengths 3, 5, 2, 4 into rows of 7: 5 opens row 0 (2 left), 4 opens row 1 (3 left), 3 fills row 1,
    2 fills row 0. The second call leaves a tail, which gets positions of its own and no sequence."""
    prompts, responses = [[2], [2, 11, 12], [2], [2, 31]], [[1, 1], [13, 14], [21], [32, 33]]
    packed = pack(prompts, responses, pad_id=0, row_tokens=7)
    assert packed.input_ids.tolist() == [[2, 11, 12, 13, 14, 2, 21], [2, 31, 32, 33, 2, 1, 1]]
    assert packed.sequence.tolist() == [[1, 1, 1, 1, 1, 2, 2], [3, 3, 3, 3, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 0, 1, 2]]
    assert packed.response_mask.int().tolist() == [[0, 0, 0, 1, 1, 0, 1], [0, 0, 1, 1, 0, 1, 1]]
    assert packed.attention_mask is None
    assert packed.sequences() == (prompts, responses)

    tail = pack([[2], [2]], [[7, 8, 9], [6]], pad_id=0, row_tokens=5)  # 4 then 2 tokens: 2 rows, one tail
    assert tail.input_ids.tolist() == [[2, 7, 8, 9], [2, 6, 0, 0]]
    assert tail.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert tail.sequence.tolist() == [[0, 0, 0, 0], [1, 1, -1, -1]]


def test_pack_rows_are_as_wide_as_the_longest_sequence_when_it_exceeds_row_tokens():
    packed = pack([[2] * 9, [2]], [[5], [6]], pad_id=0, row_tokens=4)
    assert packed.input_ids.shape == (2, 10)


@pytest.mark.parametrize("layout", [pack, pad])
@pytest.mark.parametrize("prompt,response,which", [([], [5], "prompt"), ([2], [], "response")])
def test_layouts_refuse_empty_parts(layout, prompt, response, which):
    with pytest.raises(ValueError, match=f"sequence 0 has an empty {which}"):
        layout([prompt], [response], pad_id=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_response_logps_matches_float64_brute_force(layout, attention):
    model = peaky_llama()
    model.set_attn_implementation(attention)
    prompts, responses = random_sequences(12)
    batch = LAYOUTS[layout](prompts, responses, pad_id=0)
    if layout.startswith("packed"):
        assert batch.input_ids.shape[0] < len(prompts)  # several sequences share a row
    with torch.no_grad():
        logps, n_tokens = response_logps(model, batch)
    expected = [brute_force_logps(model, p, r) for p, r in zip(prompts, responses)]
    assert logps.dtype == torch.float32
    assert n_tokens.tolist() == [len(r) for r in responses]
    assert logps.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # The model is peaky enough that scoring the wrong positions could not pass the check above.
    assert max(abs(e / len(r)) for e, r in zip(expected, responses)) > 5.0


def test_leaked_attention_between_packed_sequences_would_fail_the_brute_force_check(leaky_attention):
    """What the brute-force test guards against: without the block-diagonal mask, the sequences packed behind
    others are off by nats (the reduction is called below the fallback check here)."""
    model = peaky_llama()
    prompts, responses = random_sequences(12)
    with torch.no_grad():
        leaked = logprobs._forward(model, pack(prompts, responses, pad_id=0), (), True).logps
    expected = torch.tensor([brute_force_logps(model, p, r) for p, r in zip(prompts, responses)])
    assert (leaked.double() - expected).abs().max() > 1.0


@pytest.mark.parametrize("layout", LAYOUTS)
def test_response_logps_gradient_matches_brute_force(layout):
    """The trainer backprops through the reduction: its gradient must be that of the full computation."""
    model = peaky_llama()
    prompts, responses = random_sequences(4, seed=1)
    logps, _ = response_logps(model, LAYOUTS[layout](prompts, responses, pad_id=0))
    (logps * torch.tensor([1.0, -2.0, 0.5, 3.0])).sum().backward()
    grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    full = 0.0
    for weight, prompt, response in zip([1.0, -2.0, 0.5, 3.0], prompts, responses):
        ids = prompt + response
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        full = full + weight * sum(logp[k - 1, ids[k]] for k in range(len(prompt), len(ids)))
    full.backward()
    # float32 sums in another order (packed rows vs one sequence at a time): on some processors an element
    # moves by 1e-5 of a gradient of order 1; leaked attention or a wrong position moves it by far more.
    torch.testing.assert_close(grad, model.model.layers[0].mlp.up_proj.weight.grad, rtol=1e-4, atol=5e-5)


def test_packed_and_padded_gradients_agree_on_every_parameter():
    model = peaky_llama()
    prompts, responses = random_sequences(12, seed=3)
    weights = torch.linspace(-1.0, 2.0, 12)
    grads = []
    for layout in (small_rows, pad):
        model.zero_grad()
        (response_logps(model, layout(prompts, responses, pad_id=0))[0] * weights).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():  # float32 rounding, on gradients up to ~100 in this peaky model
        scale = float(grads[1][name].abs().max())
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lm_head_runs_only_on_positions_that_predict_response_tokens(layout):
    model = peaky_llama()
    prompts, responses = random_sequences(6, seed=2)
    response_logps(model, pack(prompts[:2], responses[:2], 0))  # the packing check runs its own forwards
    rows = []
    model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        response_logps(model, LAYOUTS[layout](prompts, responses, pad_id=0))
    assert rows == [sum(len(r) for r in responses)]


def test_packing_check_passes_once_per_model_keeps_its_modes_and_warns_nothing():
    model = peaky_llama().train()
    prompts, responses = random_sequences(6, seed=4)
    forwards = []
    model.model.register_forward_hook(lambda module, args, out: forwards.append(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):
            response_logps(model, pack(prompts, responses, pad_id=0))
    assert logprobs._PACKING_CHECKED[model] is True
    assert len(forwards) == 2 + 2  # the check's two forwards (packed, padded), then one per call
    assert all(module.training for module in model.modules())


@pytest.mark.parametrize("count", [1, 6])
def test_a_model_whose_attention_leaks_falls_back_to_padding_with_one_warning(leaky_attention, count):
    """With one sequence in the batch the check packs it twice into a row: the copy behind it would leak."""
    model = peaky_llama()
    prompts, responses = random_sequences(count, seed=5)
    expected = [brute_force_logps(model, p, r) for p, r in zip(prompts, responses)]
    with pytest.warns(UserWarning, match="LlamaForCausalLM.*scored with padded batches") as caught:
        with torch.no_grad():
            first = response_logps(model, pack(prompts, responses, pad_id=0))[0]
            second = response_logps(model, pack(prompts, responses, pad_id=0))[0]
    assert len([w for w in caught if "padded batches" in str(w.message)]) == 1
    assert logprobs._PACKING_CHECKED[model] is False
    for logps in (first, second):
        assert logps.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_bfloat16_model_passes_the_packing_check():
    """Packed and padded layouts round differently; bf16's tolerance must not mistake that for leakage."""
    model = peaky_llama().to(torch.bfloat16)
    prompts, responses = random_sequences(12, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            response_logps(model, pack(prompts, responses, pad_id=0))
    assert logprobs._PACKING_CHECKED[model] is True


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_pooled_hidden_states_match_transformers_hidden_states(layout):
    """score_sequences' means over the prompt and the response tokens, per layer, equal the means of
    transformers' own output_hidden_states over one unpadded sequence at a time (layer 2 = L: after the norm)."""
    model = peaky_llama()
    prompts, responses = random_sequences(12)
    with torch.no_grad():
        out = logprobs.score_sequences(model, LAYOUTS[layout](prompts, responses, 0), pool_layers=(1, 2))
        for i, (prompt, response) in enumerate(zip(prompts, responses)):
            states = model.model(torch.tensor([prompt + response]), output_hidden_states=True).hidden_states
            for layer in (1, 2):  # float32 sums in another order (one BLAS thread or two): ~4e-5 apart at most
                torch.testing.assert_close(out.response_mean[layer][i], states[layer][0, len(prompt):].mean(0),
                                           rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(out.prompt_mean[layer][i], states[layer][0, : len(prompt)].mean(0),
                                           rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out.response_mean[1], out.response_mean[2])  # the layers are not confused
    plain, _ = response_logps(model, pack(prompts, responses, 0))
    torch.testing.assert_close(out.logps, plain)  # the same forward still gives the log-probs


def test_embeddings_without_the_lm_head_and_bad_layers():
    model = peaky_llama()
    prompts, responses = random_sequences(3)
    with torch.no_grad():
        out = logprobs.score_sequences(model, pack(prompts, responses, 0), pool_layers=(2,), with_logps=False)
    assert out.logps is None and out.response_mean[2].shape == (3, model.config.hidden_size)
    with pytest.raises(ValueError, match="not in 1..2"):
        logprobs.score_sequences(model, pack(prompts, responses, 0), pool_layers=(3,))


# ---- the log-prob of the taken token, in chunks of the vocabulary's logits --------------------------------------

def _head_and_positions(vocab=50, hidden=8, positions=37, seed=0, bias=False):
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=generator))
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=generator))
    states = torch.randn(positions, hidden, generator=generator).requires_grad_(True)
    return head, states, torch.randint(0, vocab, (positions,), generator=generator)


@pytest.mark.parametrize("bias", [False, True])
def test_taken_token_logps_in_chunks_match_float64_in_value_and_gradient(bias):
    head, states, targets = _head_and_positions(bias=bias)
    weights = torch.linspace(-1.0, 2.0, states.shape[0], dtype=torch.float64)
    logits = states.double() @ head.weight.double().T + (head.bias.double() if bias else 0)
    reference = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    (reference * weights).sum().backward()
    parameters = [states, head.weight, *([head.bias] if bias else [])]
    expected = [p.grad.clone() for p in parameters]
    for budget in (50 * 5, 50 * 37, 10**9):  # chunks of 5 positions (the last one of 2), one exact chunk, no limit
        for p in parameters:
            p.grad = None
        got = logprobs.taken_token_logps(head, states, targets, logit_budget=budget)
        torch.testing.assert_close(got.double(), reference.detach(), rtol=1e-6, atol=1e-5)
        (got.double() * weights).sum().backward()
        for p, want in zip(parameters, expected):
            torch.testing.assert_close(p.grad, want.float(), rtol=1e-5, atol=1e-5)


def test_over_the_budget_backward_keeps_no_logits_and_scoring_needs_no_graph():
    head, states, targets = _head_and_positions(positions=23)
    out = logprobs.taken_token_logps(head, states, targets, logit_budget=50 * 10)
    kept = sum(t.numel() for t in out.grad_fn.saved_tensors if t is not None)
    assert kept == states.numel() + head.weight.numel() + targets.numel()  # inputs only: no (N, V) logits
    below = logprobs.taken_token_logps(head, states, targets)  # under the budget: one plain autograd pass
    torch.testing.assert_close(out, below)
    with torch.no_grad():
        assert logprobs.taken_token_logps(head, states, targets, logit_budget=50 * 10).grad_fn is None
