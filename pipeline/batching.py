"""The data order: the training's batches of similar length in a shuffled order, split over micro-batches and
ranks; the scorer's batches of sorted lengths under a token budget (length_batches).

Pure functions of row lengths, sizes and a seed: no model, no IO. The order of an epoch depends only on
(seed, epoch), so a resumed run rebuilds it exactly and needs to store only its position in it.

    steps = plan_epoch(lengths, rows_per_step, seed, epoch, pair)       # [step][row index]
    micro = split_step(steps[i], micro_batch_size, world_size, pair)    # [micro-batch][rank][row index]

Every row index appears exactly once per epoch (no sampler padding, no duplicates): a rank left without
rows in a micro-batch gets an empty list, and the caller decides what to run there. The rows of one pair (its
several labels, `pair`) stay together in one step, micro-batch and rank, so that the pair is forwarded once.
"""
from collections.abc import Sequence

import torch

BUCKET_STEPS = 50  # rows are sorted by length within windows of this many steps' worth of pairs


def plan_epoch(lengths: Sequence[int], rows_per_step: int, seed: int, epoch: int,
               pair: Sequence[int] | None = None) -> list[list[int]]:
    """Row indices grouped into steps of `rows_per_step` rows of similar length, in a shuffled step order.

    Shuffle the pairs, sort each window of BUCKET_STEPS·rows_per_step pairs by length (longest first), cut the
    windows into steps, shuffle the steps. pair: (N,) pair index of each row (None: one row per pair); a pair's
    rows are never split, so a step holds rows_per_step rows or up to the pair's size − 1 more. Only the very last
    step may be smaller. Deterministic in (seed, epoch); a different epoch gives a different order.
    """
    if rows_per_step < 1:
        raise ValueError(f"rows_per_step must be >= 1, got {rows_per_step}")
    groups = _groups(range(len(lengths)), pair)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(groups), generator=generator).tolist()
    window = rows_per_step * BUCKET_STEPS
    by_length = []
    for start in range(0, len(order), window):
        by_length += sorted(order[start : start + window], key=lambda g: -lengths[groups[g][0]])
    steps = [_flat(step) for step in _cut([groups[g] for g in by_length], rows_per_step)]
    step_order = torch.randperm(len(steps), generator=generator).tolist()
    return [steps[i] for i in step_order]


def split_step(rows: Sequence[int], micro_batch_size: int, world_size: int,
               pair: Sequence[int] | None = None) -> list[list[list[int]]]:
    """One step's rows as [micro-batch][rank] lists: as few micro-batches as fit, pairs dealt round-robin.

    Each micro-batch holds about micro_batch_size rows per rank (a pair's rows are never split: pair as in
    plan_epoch); ranks get equal shares of pairs (±1).
    """
    if micro_batch_size < 1 or world_size < 1:
        raise ValueError(f"micro_batch_size and world_size must be >= 1, got {micro_batch_size}, {world_size}")
    micro = _cut(_groups(rows, pair), micro_batch_size * world_size) or [[]]
    return [[_flat(chunk[rank::world_size]) for rank in range(world_size)] for chunk in micro]


def _groups(rows: Sequence[int], pair: Sequence[int] | None) -> list[list[int]]:
    """`rows` grouped by pair, in the order of each pair's first row; one group per row when pair is None."""
    if pair is None:
        return [[row] for row in rows]
    groups: dict[int, list[int]] = {}
    for row in rows:
        groups.setdefault(int(pair[row]), []).append(row)
    return list(groups.values())


def _cut(groups: list[list[int]], size: int) -> list[list[list[int]]]:
    """Consecutive groups joined into chunks of at least `size` rows (the last may have fewer)."""
    chunks, current, count = [], [], 0
    for group in groups:
        current.append(group)
        count += len(group)
        if count >= size:
            chunks.append(current)
            current, count = [], 0
    return chunks + ([current] if current else [])


def _flat(groups: list[list[int]]) -> list[int]:
    return [row for group in groups for row in group]


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
