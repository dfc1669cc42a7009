"""Summed response log-probs of a causal LM: the ONE reduction shared by the scorer and the trainer.

A batch of (prompt ids + response ids) sequences is laid out in rows, either packed several to a row
(`pack`, the default: no compute spent on padding) or one per row, right-padded (`pad`).
`response_logps` returns, per sequence and in input order, Σ log π(token | prefix) over the response
tokens and how many there are. The transformer body runs once over the rows; the LM head runs only on
the positions that predict a response token (the last prompt position predicts the first response
token), and the log-softmax is a float32 logsumexp-gather, in chunks of positions when the logits would
exceed LOGIT_BUDGET (recomputed in backward, so memory does not grow with the vocabulary). Works with or
without grad (the trainer backprops through it). No IO.

Packing confines attention to each sequence through position ids that restart at 0 for every sequence:
with attention_mask=None and no KV cache, transformers turns such position ids into a block-diagonal
causal mask (masking_utils.find_packed_sequence_indices; flash-attention uses them as varlen bounds).
A model whose attention ignores them would let a sequence attend to the sequences before it in its row
and be scored wrong without any error, so the first packed batch of every model is checked against the
padded layout, and the padded layout is used for that model from then on if they differ (one warning).
"""
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

# Packed row width when every sequence is shorter: a row of T tokens costs attention ∝ T per token, about
# 4·T·hidden FLOPs per layer against 2·(layer parameters) for the matmuls; for SmolLM2-135M at T = 256 that is
# 8% more work, while a row of 256 holds several sequences of a few dozen tokens with little left unused.
ROW_TOKENS = 256
CHECK_SEQUENCES = 4  # sequences packed into one row to check a model's packing on its first batch
# Logits that may exist at once (float32: 256 MiB): 1.7k positions of SmolLM2's 49k vocabulary in one chunk, 440 of
# a 152k one; a batch's response positions beyond that go through the LM head in chunks (taken_token_logps).
LOGIT_BUDGET = 1 << 26


@dataclass
class Packed:
    """Sequences laid out in rows: several per row (`pack`) or one per row, right-padded (`pad`). All (R, T)."""

    input_ids: Tensor  # long
    response_mask: Tensor  # bool, True where token t is a response token (the ones scored)
    sequence: Tensor  # long, index (in input order) of the sequence at each position; -1 on unused positions
    attention_mask: Tensor | None = None  # padded layout: 1 on real tokens
    position_ids: Tensor | None = None  # packed layout: 0, 1, … restarting at every sequence (and the unused tail)

    def to(self, device: torch.device | str) -> "Packed":
        def move(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.to(device)

        return Packed(self.input_ids.to(device), self.response_mask.to(device), self.sequence.to(device),
                      move(self.attention_mask), move(self.position_ids))

    @property
    def num_sequences(self) -> int:
        return int(self.sequence.max()) + 1

    def sequences(self) -> tuple[list[list[int]], list[list[int]]]:
        """The (prompt ids, response ids) of every sequence, in input order: what `pack`/`pad` were given."""
        prompts: list[list[int]] = [[] for _ in range(self.num_sequences)]
        responses: list[list[int]] = [[] for _ in range(self.num_sequences)]
        for token, index, is_response in zip(self.input_ids.flatten().tolist(), self.sequence.flatten().tolist(),
                                             self.response_mask.flatten().tolist()):
            if index >= 0:
                (responses if is_response else prompts)[index].append(token)
        return prompts, responses


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
         row_tokens: int = ROW_TOKENS) -> Packed:
    """Several sequences per row: first-fit decreasing into as few rows as rows of max(longest sequence,
    row_tokens) tokens need, then narrowed to the least width that still fits them in that many rows (so the
    unused tail is spread thin over the rows instead of filling most of the last one).

    Position ids restart at 0 for every sequence, and for the unused tail of a row, which thereby forms a
    segment of its own (it comes after every real token, so causal attention keeps it out of them anyway).
    """
    lengths = _check(prompt_ids, response_ids)
    rows = _first_fit_decreasing(lengths, max(max(lengths), row_tokens))
    low = max(max(lengths), -(-sum(lengths) // len(rows)))  # no narrower width can hold them in as many rows
    high = max(sum(lengths[i] for i in row) for row in rows)
    while low < high:  # binary search on the width; `rows` always holds a packing of width `high`
        width = (low + high) // 2
        narrower = _first_fit_decreasing(lengths, width)
        if len(narrower) <= len(rows):
            rows, high = narrower, width
        else:
            low = width + 1
    return _layout(prompt_ids, response_ids, pad_id, rows, packed=True)


def _first_fit_decreasing(lengths: list[int], width: int) -> list[list[int]]:
    """Sequence indices by row: longest first, each into the first row with room, else a new row."""
    rows: list[list[int]] = []
    free: list[int] = []  # tokens left in each row
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, space in enumerate(free) if space >= lengths[i]), len(rows))
        if row == len(rows):
            rows.append([])
            free.append(width)
        rows[row].append(i)
        free[row] -= lengths[i]
    return rows


def pad(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Packed:
    """One sequence per row, right-padded to the longest, with an attention mask (the layout every model reads)."""
    lengths = _check(prompt_ids, response_ids)
    return _layout(prompt_ids, response_ids, pad_id, [[i] for i in range(len(lengths))], packed=False)


def _check(prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[int]:
    """Sequence lengths. Every prompt needs at least one token (usually BOS or the chat template's opening):
    the first response token is predicted from the last prompt position, so without one it could not be scored."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"pack: {len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids:
        raise ValueError("pack: empty batch")
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        if not prompt or not response:
            which = "prompt" if not prompt else "response"
            raise ValueError(f"pack: sequence {i} has an empty {which}; both need at least one token")
    return [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]


def _layout(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, rows: list[list[int]],
            packed: bool) -> Packed:
    """Write the sequences of each row one after the other, left-aligned; the rows are as wide as the fullest."""
    width = max(sum(len(prompt_ids[i]) + len(response_ids[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    sequence = torch.full((len(rows), width), -1, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            prompt, response = prompt_ids[i], response_ids[i]
            end = start + len(prompt) + len(response)
            input_ids[r, start:end] = torch.tensor(prompt + response, dtype=torch.long)
            response_mask[r, start + len(prompt) : end] = True
            sequence[r, start:end] = i
            position_ids[r, start:end] = torch.arange(end - start)
            start = end
        position_ids[r, start:] = torch.arange(width - start)
    if packed:
        return Packed(input_ids, response_mask, sequence, position_ids=position_ids)
    return Packed(input_ids, response_mask, sequence, attention_mask=(sequence >= 0).long())


def response_logps(model: torch.nn.Module, packed: Packed) -> tuple[Tensor, Tensor]:
    """Σ over response tokens of log π(token | prefix), and the response token counts, per sequence in input order.

    model: a transformers causal LM (`get_decoder()` is the body, `get_output_embeddings()` the head).
    Returns (logps (S,) float32, n_tokens (S,) long), on the model's device.
    """
    scores = score_sequences(model, packed)
    return scores.logps, scores.n_tokens


@torch.inference_mode()
def summed_logps(model: torch.nn.Module, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int,
                 batch_tokens: int = 16384) -> Tensor:
    """Σ log π(response | prompt) (S,) float64 on the CPU, in input order: packed forwards of at most about
    `batch_tokens` tokens, longest sequences first (a batch too large for memory fails at once)."""
    sums = torch.zeros(len(response_ids), dtype=torch.float64)
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if not batches or (len(batches[-1]) + 1) * lengths[batches[-1][0]] > batch_tokens:
            batches.append([])
        batches[-1].append(i)
    for batch in batches:
        packed = pack([prompt_ids[i] for i in batch], [response_ids[i] for i in batch], pad_id)
        sums[batch] = score_sequences(model, packed).logps.double().cpu()
    return sums


@dataclass
class SequenceScores:
    """What one forward gives per sequence (S sequences, input order), on the model's device."""

    logps: Tensor | None  # (S,) float32 Σ log π over response tokens; None when not asked for
    n_tokens: Tensor  # (S,) long response tokens
    response_mean: dict[int, Tensor]  # layer -> (S, H) float32 mean hidden state over the response tokens
    prompt_mean: dict[int, Tensor]  # layer -> (S, H) float32 mean hidden state over the prompt tokens


def score_sequences(model: torch.nn.Module, packed: Packed, pool_layers: tuple[int, ...] = (),
                    with_logps: bool = True) -> SequenceScores:
    """response_logps, plus hidden states mean-pooled per sequence at `pool_layers`, from the same forward.

    Layer l (1 ≤ l ≤ L) is transformers' `hidden_states[l]`: the output of decoder layer l, and for l = L the
    final normed state the LM head reads. Only those layers are kept (forward hooks), not all L + 1.
    with_logps=False skips the LM head (embeddings only).
    """
    if with_logps:
        _refuse_logit_transforms(model)
    if packed.position_ids is not None and not _packing_confines_attention(model, packed):
        packed = pad(*packed.sequences(), pad_id=0)  # any id: padding is masked out
    return _forward(model, packed, pool_layers, with_logps)


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise NotImplementedError(f"{type(model).__name__}: no decoder.layers to read hidden states from; "
                                  "score without embeddings")
    return layers


def _forward(model: torch.nn.Module, packed: Packed, pool_layers: tuple[int, ...], with_logps: bool
             ) -> SequenceScores:
    device = model.get_output_embeddings().weight.device
    packed = packed.to(device)
    count = packed.num_sequences
    captured: dict[int, Tensor] = {}
    hooks = []
    if pool_layers:
        layers = _decoder_layers(model)
        for layer in pool_layers:
            if not 1 <= layer <= len(layers):
                raise ValueError(f"pool layer {layer} is not in 1..{len(layers)}")
            if layer < len(layers):
                def keep(module, args, output, layer=layer):
                    captured[layer] = output[0] if isinstance(output, tuple) else output
                hooks.append(layers[layer - 1].register_forward_hook(keep))
    try:
        hidden = model.get_decoder()(
            input_ids=packed.input_ids, attention_mask=packed.attention_mask, position_ids=packed.position_ids,
            use_cache=False,  # also what lets transformers see packed sequences: it skips that check with a cache
        ).last_hidden_state  # (R, T, H)
    finally:
        for hook in hooks:
            hook.remove()
    response_mean, prompt_mean = {}, {}
    for layer in pool_layers:
        states = captured.get(layer, hidden)
        response_mean[layer] = _segment_mean(states, packed.sequence, packed.response_mask, count)
        prompt_mean[layer] = _segment_mean(states, packed.sequence, ~packed.response_mask, count)
    n_tokens = torch.bincount(packed.sequence[packed.response_mask], minlength=count)
    if not with_logps:
        return SequenceScores(None, n_tokens, response_mean, prompt_mean)
    # Position t-1 predicts token t: select the hidden states whose next token is a response token. A sequence
    # starts with a prompt token, so position t-1 always belongs to the same sequence as token t.
    predicts_response = packed.response_mask[:, 1:]  # (R, T-1)
    selected = hidden[:, :-1][predicts_response]  # (N, H)
    targets = packed.input_ids[:, 1:][predicts_response]  # (N,)
    owners = packed.sequence[:, 1:][predicts_response]  # (N,) sequence of each selected position
    token_logps = taken_token_logps(model.get_output_embeddings(), selected, targets)
    logps = torch.zeros(count, dtype=torch.float32, device=device).index_add(0, owners, token_logps)
    return SequenceScores(logps, n_tokens, response_mean, prompt_mean)


def taken_token_logps(head: torch.nn.Module, hidden: Tensor, targets: Tensor,
                      logit_budget: int | None = None) -> Tensor:
    """log π(target | position) (N,) float32 from the final hidden states (N, H) and the LM head: a float32
    log-softmax, gathered at each target.

    At most `logit_budget` logits (None: LOGIT_BUDGET) exist at once. Below it, one plain autograd pass. Above it
    (a large vocabulary, long responses) the positions go through the head in chunks, and backward recomputes each
    chunk's logits and adds its share to the head's gradient in place (_ChunkedTakenLogps), so memory beyond the
    head's own gradient stays flat in the vocabulary and in the number of positions."""
    chunk = max(1, (LOGIT_BUDGET if logit_budget is None else logit_budget) // head.weight.shape[0])
    if hidden.shape[0] <= chunk:
        logits = head(hidden).float()  # (N, V), float32 for the log-softmax
        return _taken_logps(logits, targets)
    if not isinstance(head, torch.nn.Linear):
        raise NotImplementedError(f"LM head {type(head).__name__} is not a Linear; raise LOGIT_BUDGET to score it")
    return _ChunkedTakenLogps.apply(hidden, head.weight, head.bias, targets, chunk)


def _taken_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log softmax(logits)[target] (N,) from float32 logits (N, V), through cross-entropy's fused log-softmax: faster
    than a logsumexp minus a gather, forward and backward (bench/README.md has the timing)."""
    return -torch.nn.functional.cross_entropy(logits, targets, reduction="none")


class _ChunkedTakenLogps(torch.autograd.Function):
    """taken_token_logps above the budget: y_i = z_i[t_i] − logsumexp(z_i), z_i = W h_i + b, chunk by chunk.

    Backward, per chunk: ∂y_i/∂z_i = onehot(t_i) − softmax(z_i), so with g_i = ∂L/∂y_i the logit gradient is
    G = g ⊙ (onehot − softmax) (C, V); then ∂L/∂h = G W, ∂L/∂W += Gᵀ h, ∂L/∂b += Σ G — from recomputed logits,
    in the dtype the forward's matmul ran in (the model's, or autocast's)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        compute_dtype = None
        for start in range(0, hidden.shape[0], chunk):
            logits = torch.nn.functional.linear(hidden[start:start + chunk], weight, bias)
            compute_dtype = logits.dtype
            out[start:start + chunk] = _taken_logps(logits.float(), targets[start:start + chunk])
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets = ctx.saved_tensors
        dtype = ctx.compute_dtype
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[start:start + ctx.chunk].to(dtype)
            g = grad_out[start:start + ctx.chunk].float()
            logit_grad = torch.nn.functional.linear(h, w, b).float()  # (C, V): logits, then in place the softmax
            logit_grad.sub_(torch.logsumexp(logit_grad, dim=-1, keepdim=True)).exp_().mul_(-g[:, None])
            logit_grad[torch.arange(h.shape[0], device=h.device), targets[start:start + ctx.chunk]] += g
            if grad_hidden is not None:
                grad_hidden[start:start + ctx.chunk] = (logit_grad.to(dtype) @ w).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(logit_grad.T, h.float())
            if grad_bias is not None:
                grad_bias += logit_grad.sum(0)
        return (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype), None, None)


def _segment_mean(states: Tensor, sequence: Tensor, mask: Tensor, count: int) -> Tensor:
    """(count, H) float32 mean of states (R, T, H) over the positions of each sequence where mask (R, T) holds."""
    chosen = mask & (sequence >= 0)
    owners = sequence[chosen]
    sums = torch.zeros(count, states.shape[-1], dtype=torch.float32, device=states.device)
    sums.index_add_(0, owners, states[chosen].float())
    return sums / torch.bincount(owners, minlength=count).clamp(min=1)[:, None]


# model -> whether its attention stays within each packed sequence (checked on the model's first packed batch)
_PACKING_CHECKED: "WeakKeyDictionary[torch.nn.Module, bool]" = WeakKeyDictionary()


def _packing_confines_attention(model: torch.nn.Module, packed: Packed) -> bool:
    """Once per model: pack up to CHECK_SEQUENCES of this batch's sequences into ONE row and compare their
    log-probs with the padded layout's. Attention leaking into the previous sequences of the row, or positions
    not restarting, moves a log-prob by far more than rounding; a mismatch switches the model to padding."""
    if model not in _PACKING_CHECKED:
        prompts, responses = packed.sequences()
        prompts, responses = prompts[:CHECK_SEQUENCES], responses[:CHECK_SEQUENCES]
        if len(prompts) == 1:  # a lone sequence cannot leak; a copy of it behind it can
            prompts, responses = prompts * 2, responses * 2
        one_row = pack(prompts, responses, pad_id=0, row_tokens=sum(map(len, prompts + responses)))
        with torch.no_grad(), _eval_mode(model):
            packed_logps = _forward(model, one_row, (), True).logps
            padded_logps = _forward(model, pad(prompts, responses, 0), (), True).logps
        tolerance = _tolerance(model)
        difference = ((packed_logps - padded_logps).abs() / padded_logps.abs().clamp(min=1.0)).max().item()
        _PACKING_CHECKED[model] = difference <= tolerance
        if difference > tolerance:
            warnings.warn(
                f"{type(model).__name__}: log-probs of sequences packed into one row differ from the padded ones "
                f"by {difference:.2e} relative (> {tolerance:.0e}); its attention does not stay within each packed "
                "sequence, so this model is scored with padded batches (slower, same results)", stacklevel=3)
    return _PACKING_CHECKED[model]


def _tolerance(model: torch.nn.Module) -> float:
    """Relative rounding difference allowed between two layouts: float32 sums agree to ~1e-6; bf16/fp16 (weights
    or autocast) to ~1e-3. Leaked attention moves a sum of log-probs by tens of percent."""
    weight = model.get_output_embeddings().weight
    device_type = weight.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Dropout off (attention dropout is no nn.Dropout the trainer could zero) so the two layouts are comparable."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _refuse_logit_transforms(model: torch.nn.Module) -> None:
    """The head is applied by hand, so a model whose forward rescales the logits would be scored wrong."""
    config = model.config
    for name in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, name, None) is not None:
            raise NotImplementedError(
                f"{type(model).__name__} applies {name} to its logits; response_logps does not support it"
            )
