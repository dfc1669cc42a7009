"""The policy's forward on rows of a score cache: summed response log-probs of chosen and rejected (one forward of
both), the no-grad pass over every row between epochs, the held-out evaluation, and the per-pair records a step
gathers. Pure torch on a PairTable (data/pair_table.py): reads and writes no file.

    logps = pair_logps(model, pairs, rows, pad_id)     # PairLogps: the policy's (B,) with the cache's reference
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from re_po.pipeline import logprobs, losses, train_metrics
from re_po.pipeline.choices import LossSpec
from re_po.pipeline.losses import PairLogps

if TYPE_CHECKING:  # the rows' container, named in annotations only: pipeline/ imports nothing that reads files
    from re_po.data.pair_table import PairTable

EVAL_BATCH = 32  # held-out pairs per no-grad forward (packed, so their lengths need no sorting)
RECORD = ("row", "loss", "z", "w", "logps_chosen", "logps_rejected", "rewards_chosen", "rewards_rejected")


class SequenceLogps(torch.nn.Module):
    """The policy behind a forward that returns summed response log-probs (logprobs.response_logps).

    response_logps calls the decoder and the LM head directly; wrapping the whole computation in one module
    lets DDP/FSDP and autocast see it as the model's forward.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy
        # FSDP's transformer-layer wrapping (accelerate's TRANSFORMER_BASED_WRAP) finds the layer classes here
        self._no_split_modules = getattr(policy, "_no_split_modules", None)

    def forward(self, input_ids, response_mask, sequence, attention_mask=None, position_ids=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        packed = logprobs.Packed(input_ids, response_mask, sequence, attention_mask, position_ids)
        return logprobs.response_logps(self.policy, packed)


def pair_logps(model: torch.nn.Module, pairs: PairTable, rows: list[int], pad_id: int,
               packing: bool = True) -> PairLogps:
    """Policy log-probs of `rows`: chosen and rejected in one concatenated forward (packed several to a row, or
    right-padded); the reference from the cache. A pair with several labels among `rows` is forwarded once, and
    each of its rows takes the two log-probs in the order it states."""
    kept, position, swapped = pairs.distinct(rows)
    prompts = pairs.ids("prompt", kept)
    layout = logprobs.pack if packing else logprobs.pad
    packed = layout(prompts + prompts, pairs.ids("chosen", kept) + pairs.ids("rejected", kept), pad_id)
    first, second = model(packed.input_ids, packed.response_mask, packed.sequence,
                          packed.attention_mask, packed.position_ids)[0].split(len(kept))
    device, index = first.device, torch.tensor(rows)
    if len(kept) < len(rows):
        at, swap = torch.tensor(position, device=device), torch.tensor(swapped, device=device)
        first, second = first[at], second[at]
        first, second = torch.where(swap, second, first), torch.where(swap, first, second)
    ref = (None, None) if pairs.ref_chosen_logps is None else (pairs.ref_chosen_logps[index].to(device),
                                                               pairs.ref_rejected_logps[index].to(device))
    return PairLogps(first, second, *ref, pairs.chosen_len[index].to(device), pairs.rejected_len[index].to(device))


@torch.no_grad()
def every_logit(model, pairs: PairTable, em, accelerator, pad_id: int, batch_size: int, packing: bool
                ) -> torch.Tensor:
    """The policy's induced logit z (N,) float64 of every row, no grad: the pass between epochs (method.md §7.5).
    Each process forwards its share (the same number of forwards everywhere: a sharded forward is collective);
    the sums are reduced, so every process returns the same z."""
    model.eval()
    pair_of = pairs.pair.tolist()  # a pair's labels side by side: pair_logps forwards the pair once
    order = sorted(range(pairs.num_pairs), key=lambda r: (-pairs.lengths[r], pair_of[r]))
    size, world, rank = 2 * batch_size, accelerator.num_processes, accelerator.process_index
    batches = [order[i : i + size] for i in range(0, len(order), size)]
    z_sum = torch.zeros(pairs.num_pairs, dtype=torch.float64, device=accelerator.device)
    seen = torch.zeros_like(z_sum)
    for i in range(rank, math.ceil(len(batches) / world) * world, world):
        rows = batches[i] if i < len(batches) else batches[0]
        z = em.logit(pair_logps(model, pairs, rows, pad_id, packing))
        if i < len(batches):
            z_sum[rows] += z.double()
            seen[rows] += 1
    z, seen = accelerator.reduce(z_sum, "sum").cpu(), accelerator.reduce(seen, "sum").cpu()
    if not bool((seen == 1).all()):
        raise RuntimeError(f"posterior pass covered {int((seen == 0).sum())} pairs 0 times and "
                           f"{int((seen > 1).sum())} more than once")
    model.train()
    return z


@torch.no_grad()
def evaluate(model, held_out: tuple[PairTable, torch.Tensor | None], spec: LossSpec, pad_id: int,
             packing: bool) -> dict[str, float]:
    """eval/* of the current policy on every held-out pair (and their truth, True where the label is wrong); every
    process computes the same (the forward of a DDP-wrapped model is collective)."""
    pairs, truth = held_out
    was_training = model.training
    model.eval()
    parts = []  # (loss, rewards_chosen, rewards_rejected) of each batch, in row order
    for start in range(0, pairs.num_pairs, EVAL_BATCH):
        logps = pair_logps(model, pairs, list(range(start, min(start + EVAL_BATCH, pairs.num_pairs))), pad_id, packing)
        parts.append((losses.base_loss(spec, logps), *losses.implicit_rewards(spec, logps)))
    model.train(was_training)
    loss, chosen, rejected = (torch.cat([part[i].double().cpu() for part in parts]) for i in range(3))
    return train_metrics.eval_metrics(loss, chosen, rejected, truth)


def records(spec: LossSpec, logps: PairLogps, per_pair, z, w, rows: list[int], width: int) -> torch.Tensor:
    """Per-pair results as (width, len(RECORD)) float64 rows; padding rows have row = −1 (dropped after gather)."""
    rewards_chosen, rewards_rejected = losses.implicit_rewards(spec, logps)
    values = [torch.tensor(rows, dtype=torch.float64), per_pair, z, w, logps.policy_chosen_logps,
              logps.policy_rejected_logps, rewards_chosen, rewards_rejected]
    out = torch.full((width, len(RECORD)), -1.0, dtype=torch.float64, device=per_pair.device)
    if rows:
        out[: len(rows)] = torch.stack([v.detach().to(out)[: len(rows)] for v in values], dim=1)
    return out


def stop_if_not_finite(loss: torch.Tensor, rows: torch.Tensor, pairs: PairTable, step: int) -> None:
    """FloatingPointError naming the pairs whose loss (B,) is not finite at optimizer `step`."""
    bad = rows[~torch.isfinite(loss)].tolist()
    if bad:
        ids = pairs.frame["pair_id"].gather(bad).to_list()
        raise FloatingPointError(f"non-finite loss at optimizer step {step} for {len(bad)} pairs; pair ids: "
                                 f"{ids[:20]}{' ...' if len(ids) > 20 else ''}; lower --lr, or check these pairs")
