"""pipeline/batching.py: every row once per epoch, reproducible, length-grouped, dealt out without padding."""
import random

import pytest

from re_po.pipeline.batching import BUCKET_STEPS, plan_epoch, split_step


def test_plan_epoch_covers_every_row_once_and_is_reproducible():
    lengths = [random.Random(i).randint(1, 300) for i in range(1003)]
    plan = plan_epoch(lengths, pairs_per_step=8, seed=3, epoch=1)
    rows = [row for step in plan for row in step]
    assert sorted(rows) == list(range(1003))
    assert sorted(len(step) for step in plan) == [3] + [8] * 125  # one short step: 1003 = 125·8 + 3
    assert plan == plan_epoch(lengths, 8, seed=3, epoch=1)
    assert plan != plan_epoch(lengths, 8, seed=3, epoch=2)
    assert plan != plan_epoch(lengths, 8, seed=4, epoch=1)


def test_plan_epoch_groups_similar_lengths_and_shuffles_the_steps():
    rng = random.Random(0)
    lengths = [rng.randint(1, 1000) for _ in range(8 * BUCKET_STEPS * 4)]
    plan = plan_epoch(lengths, pairs_per_step=8, seed=0, epoch=1)
    spread = sum(max(lengths[r] for r in s) - min(lengths[r] for r in s) for s in plan) / len(plan)
    shuffled = list(range(len(lengths)))
    rng.shuffle(shuffled)
    random_steps = [shuffled[i : i + 8] for i in range(0, len(shuffled), 8)]
    random_spread = sum(max(lengths[r] for r in s) - min(lengths[r] for r in s) for s in random_steps) / len(plan)
    assert spread < random_spread / 10  # padding within a step is small
    longest_first = [max(lengths[r] for r in s) for s in plan]
    assert longest_first != sorted(longest_first, reverse=True)  # the step order is not the length order


@pytest.mark.parametrize("num_rows, micro, world", [(16, 4, 2), (13, 4, 2), (3, 4, 2), (1, 2, 4), (10, 3, 1)])
def test_split_step_deals_each_row_to_exactly_one_rank(num_rows, micro, world):
    rows = list(range(100, 100 + num_rows))
    split = split_step(rows, micro, world)
    assert all(len(shards) == world for shards in split)
    dealt = [row for shards in split for shard in shards for row in shard]
    assert sorted(dealt) == rows  # no row twice, none dropped: no sampler padding
    assert all(len(shard) <= micro for shards in split for shard in shards)
    assert len(split) == max(1, -(-num_rows // (micro * world)))
