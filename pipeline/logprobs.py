"""Summed response log-probs of a causal LM: the ONE reduction shared by the scorer and the trainer.

`pack` right-pads (prompt ids + response ids) sequences into a batch; `response_logps` returns, per
sequence, Σ log π(token | prefix) over the response tokens and how many there are. The transformer body
runs once over the batch; the LM head runs only on the positions that predict a response token (the
last prompt position predicts the first response token), never on other prompt positions or padding,
and the log-softmax is a float32 logsumexp-gather. Works with or without grad (the trainer backprops
through it). No IO.
"""
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Packed:
    """A right-padded batch. All (B, T)."""

    input_ids: Tensor  # long
    attention_mask: Tensor  # long, 1 on real tokens
    response_mask: Tensor  # bool, True where token t is a response token (the ones scored)

    def to(self, device: torch.device | str) -> "Packed":
        return Packed(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device))


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Packed:
    """Concatenate each prompt with its response and right-pad to the longest sequence.

    Every prompt needs at least one token (usually BOS or the chat template's opening): the first
    response token is predicted from the last prompt position, so without one it could not be scored.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"pack: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("pack: empty batch")
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        if not prompt or not response:
            which = "prompt" if not prompt else "response"
            raise ValueError(f"pack: sequence {i} has an empty {which}; both need at least one token")
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    batch, width = len(lengths), max(lengths)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    response_mask = torch.zeros((batch, width), dtype=torch.bool)
    for b, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[b, : lengths[b]] = torch.tensor(prompt + response, dtype=torch.long)
        attention_mask[b, : lengths[b]] = 1
        response_mask[b, len(prompt) : lengths[b]] = True
    return Packed(input_ids, attention_mask, response_mask)


def response_logps(model: torch.nn.Module, packed: Packed) -> tuple[Tensor, Tensor]:
    """Σ over response tokens of log π(token | prefix), and the response token counts.

    model: a transformers causal LM (`get_decoder()` is the body, `get_output_embeddings()` the head).
    Returns (logps (B,) float32, n_tokens (B,) long), on the model's device.
    """
    _refuse_logit_transforms(model)
    device = model.get_output_embeddings().weight.device
    packed = packed.to(device)
    hidden = model.get_decoder()(
        input_ids=packed.input_ids, attention_mask=packed.attention_mask, use_cache=False
    ).last_hidden_state  # (B, T, H)
    # Position t-1 predicts token t: select the hidden states whose next token is a response token.
    predicts_response = packed.response_mask[:, 1:]  # (B, T-1)
    rows = predicts_response.nonzero(as_tuple=True)[0]  # (N,) sequence of each selected position
    selected = hidden[:, :-1][predicts_response]  # (N, H)
    targets = packed.input_ids[:, 1:][predicts_response]  # (N,)
    logits = model.get_output_embeddings()(selected).float()  # (N, V), float32 for the log-softmax
    token_logps = logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
    batch = packed.input_ids.shape[0]
    logps = torch.zeros(batch, dtype=torch.float32, device=device).index_add(0, rows, token_logps)
    return logps, packed.response_mask.sum(dim=1)


def _refuse_logit_transforms(model: torch.nn.Module) -> None:
    """The head is applied by hand, so a model whose forward rescales the logits would be scored wrong."""
    config = model.config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) is not None:
            raise NotImplementedError(
                f"{type(model).__name__} applies {name} to its logits; response_logps does not support it"
            )
