"""Responses sampled from a causal LM, reproducibly: the transformers path of `repo generate` and of the
generation metrics during training.

No IO. `sample_responses` takes prompt ids (as data/tokenize.prompt_ids makes them) and returns, per prompt,
`num_samples` response id lists: the new tokens up to and including the first end token (EOS, or any id of
the model's generation config's eos_token_id, such as a chat template's end of turn), or `max_new_tokens` of
them when none came. The draw depends only on the seed and the prompts given together: the global RNG is
seeded for the call and restored after it (torch.random.fork_rng), so a caller's training RNG does not move,
and two models asked with the same seed get the same uniform draws (common random numbers: where their
next-token distributions agree, so do their samples).
"""
from __future__ import annotations

import torch

from re_po.pipeline.choices import Sampling


@torch.no_grad()
def sample_responses(model: torch.nn.Module, prompt_ids: list[list[int]], sampling: Sampling, seed: int,
                     end_ids: set[int], pad_id: int) -> list[list[list[int]]]:
    """[prompt][sample] -> response ids, the end token included when one was drawn.

    The prompts are left-padded into one batch (`generate` continues every row from its last position);
    end_ids: the ids that end a response; pad_id: any id, masked out.
    """
    width = max(len(ids) for ids in prompt_ids)
    device = model.get_output_embeddings().weight.device
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention_mask[row, width - len(ids):] = 1
    greedy = sampling.temperature == 0
    # Every other knob at its neutral value, whatever the model's generation_config says: the samples are from
    # the model's own distribution (tempered and nucleus-cut only as asked), which the KL estimate relies on.
    neutral = dict(top_k=0, typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0)
    options = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=sampling.temperature,
                                                        top_p=sampling.top_p, **neutral)
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                                 max_new_tokens=sampling.max_new_tokens,
                                 num_return_sequences=sampling.num_samples, eos_token_id=sorted(end_ids),
                                 pad_token_id=pad_id, **options)
    finally:
        model.train(was_training)
    new = out[:, width:].tolist()  # (P·S, ≤ max_new_tokens), prompt p's samples at rows p·S … p·S + S − 1
    responses = [_until_end(row, end_ids) for row in new]
    s = sampling.num_samples
    return [responses[p * s:(p + 1) * s] for p in range(len(prompt_ids))]


def _until_end(tokens: list[int], end_ids: set[int]) -> list[int]:
    """The tokens up to and including the first end token (generate pads finished rows after it)."""
    for i, token in enumerate(tokens):
        if token in end_ids:
            return tokens[: i + 1]
    return tokens


def end_token_ids(generation_config, tokenizer) -> set[int]:
    """The ids that end a response: the tokenizer's EOS and the model's generation config's eos_token_id(s)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(generation_config, "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    if not ids:
        raise ValueError("the model names no end-of-sequence token (tokenizer eos_token, generation_config "
                         "eos_token_id): a response could not end")
    return ids
