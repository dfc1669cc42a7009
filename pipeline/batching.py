"""The data order: the training's batches of similar length in a shuffled order, split over micro-batches and
ranks; the scorer's batches of sorted lengths under a token budget (length_batches).

Pure functions of row lengths, sizes and a seed: no model, no IO. The order of an epoch depends only on
(seed, epoch), so a resumed run rebuilds it exactly and needs to store only its position in it.

    steps = plan_epoch(lengths, pairs_per_step, seed, epoch)      # [step][row index]
    micro = split_step(steps[i], micro_batch_size, world_size)    # [micro-batch][rank][row index]

Every row index appears exactly once per epoch (no sampler padding, no duplicates): a rank left without
rows in a micro-batch gets an empty list, and the caller decides what to run there.
"""
import math
from collections.abc import Sequence

import torch

BUCKET_STEPS = 50  # rows are sorted by length within windows of this many steps' worth of pairs


def plan_epoch(lengths: Sequence[int], pairs_per_step: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices grouped into steps of `pairs_per_step` rows of similar length, in a shuffled step order.

    Shuffle all rows, sort each window of BUCKET_STEPS·pairs_per_step rows by length (longest first), cut the
    windows into steps, shuffle the steps. Only the very last step may be smaller. Deterministic in
    (seed, epoch); a different epoch gives a different order.
    """
    if pairs_per_step < 1:
        raise ValueError(f"pairs_per_step must be >= 1, got {pairs_per_step}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = pairs_per_step * BUCKET_STEPS
    by_length = []
    for start in range(0, len(order), window):
        by_length += sorted(order[start : start + window], key=lambda row: -lengths[row])
    steps = [by_length[start : start + pairs_per_step] for start in range(0, len(by_length), pairs_per_step)]
    step_order = torch.randperm(len(steps), generator=generator).tolist()
    return [steps[i] for i in step_order]


def split_step(rows: Sequence[int], micro_batch_size: int, world_size: int) -> list[list[list[int]]]:
    """One step's rows as [micro-batch][rank] lists: as few micro-batches as fit, rows dealt round-robin.

    Each micro-batch holds at most micro_batch_size rows per rank; ranks get equal shares (±1).
    """
    if micro_batch_size < 1 or world_size < 1:
        raise ValueError(f"micro_batch_size and world_size must be >= 1, got {micro_batch_size}, {world_size}")
    per_micro = micro_batch_size * world_size
    num_micro = max(1, math.ceil(len(rows) / per_micro))
    micro = [list(rows[i * per_micro : (i + 1) * per_micro]) for i in range(num_micro)]
    return [[chunk[rank::world_size] for rank in range(world_size)] for chunk in micro]


def length_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices grouped so that each batch's 2 × size × longest ≤ batch_tokens (each pair is two rows),
    longest first so a batch too large for memory fails at once. Sorting keeps the padding small."""
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if batches and 2 * (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= batch_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
