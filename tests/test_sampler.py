"""Unit tests of TaskBalancedBatchSampler: single-dataset batches, exact len, balance, determinism, ratio."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import ConcatDataset

from hf_codiemb.sampler import (
    DatasetSpec,
    TaskBalancedBatchSampler,
    dataset_passes_from_task_ratio,
    dataset_weights_from_task_ratio,
)


def make_sampler(sizes=(100, 70), batch_sizes=(4, 6), world_size=1, accumulation=1, weights=None, seed=0):
    datasets = [list(range(n)) for n in sizes]
    specs = [
        DatasetSpec(name, task, n, bs)
        for name, task, n, bs in zip(("ir_set", "sts_set"), ("ir", "sts"), sizes, batch_sizes)
    ]
    return TaskBalancedBatchSampler(
        ConcatDataset(datasets), specs, world_size=world_size, gradient_accumulation_steps=accumulation,
        dataset_weights=weights, seed=seed,
    )


def dataset_of(index: int, sizes=(100, 70)) -> int:
    return 0 if index < sizes[0] else 1


def test_every_batch_is_single_dataset_with_its_batch_size():
    sampler = make_sampler()
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100 // 4 + 70 // 6
    for batch in batches:
        owners = {dataset_of(i) for i in batch}
        assert len(owners) == 1
        assert len(batch) == (4, 6)[owners.pop()]


def test_no_example_repeats_within_an_epoch_and_all_full_batches_are_used():
    sampler = make_sampler()
    indices = [i for batch in sampler for i in batch]
    assert len(indices) == len(set(indices)) == 100 + 66  # 70 // 6 * 6 = 66 STS pairs fit in full batches


def test_epochs_are_reproducible_and_differ():
    a, b = make_sampler(seed=3), make_sampler(seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_tasks_are_interleaved_not_sequential():
    schedule = make_sampler().schedule()
    switches = sum(1 for x, y in itertools.pairwise(schedule) if x != y)
    assert switches > 3


@pytest.mark.parametrize("world_size,accumulation", [(2, 1), (2, 3), (4, 2), (1, 4)])
def test_blocks_keep_ranks_and_accumulation_on_one_dataset(world_size, accumulation):
    sampler = make_sampler(sizes=(200, 150), batch_sizes=(4, 5), world_size=world_size, accumulation=accumulation)
    # Deal the stream out as accelerate does, then check every rank's k-th update uses one dataset on all ranks.
    shards = [
        list(BatchSamplerShard(sampler, num_processes=world_size, process_index=r, even_batches=False))
        for r in range(world_size)
    ]
    assert all(len(s) == len(sampler) // world_size for s in shards)
    assert len(sampler) % (world_size * accumulation) == 0
    for update in range(len(shards[0]) // accumulation):
        micro = [shards[r][update * accumulation + a] for r in range(world_size) for a in range(accumulation)]
        assert len({dataset_of(i, (200, 150)) for batch in micro for i in batch}) == 1
    everything = [i for s in shards for batch in s for i in batch]
    assert len(everything) == len(set(everything))


def test_dataset_too_small_for_one_update_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'sts_set' \(sts\) has 70 examples.*sts_batch_size=6 x world_size=4"):
        make_sampler(batch_sizes=(4, 6), world_size=4, accumulation=3)


def test_task_ratio_sets_the_share_of_updates():
    specs = [DatasetSpec("ir_set", "ir", 400, 4), DatasetSpec("sts_set", "sts", 100, 4)]
    weights = dataset_weights_from_task_ratio(specs, {"ir": 1.0, "sts": 1.0})
    sampler = TaskBalancedBatchSampler(ConcatDataset([list(range(400)), list(range(100))]), specs, dataset_weights=weights)
    counts = Counter(sampler.schedule())
    # 125 blocks in all (100 IR + 25 STS), split 1:1.
    assert counts[0] == counts[1] == round(125 / 2)
    assert len(sampler) == sum(counts.values())
    # The STS set is smaller than its share: whole shuffled passes are repeated, so every pair is used 2 or 3 times.
    sts = [i - 400 for batch in sampler for i in batch if i >= 400]
    assert set(sts) == set(range(100))
    assert Counter(Counter(sts).values()).keys() <= {2, 3}


def test_task_ratio_zero_drops_a_task_and_unknown_task_errors():
    specs = [DatasetSpec("ir_set", "ir", 400, 4), DatasetSpec("sts_set", "sts", 100, 4)]
    weights = dataset_weights_from_task_ratio(specs, {"ir": 1.0, "sts": 0.0})
    sampler = TaskBalancedBatchSampler(ConcatDataset([list(range(400)), list(range(100))]), specs, dataset_weights=weights)
    assert set(sampler.schedule()) == {0}
    with pytest.raises(ValueError, match="no weight to task"):
        dataset_weights_from_task_ratio(specs, {"ir": 1.0})


def test_batch_size_attribute_is_none_for_accelerate():
    assert make_sampler().batch_size is None


@pytest.mark.parametrize("ratio", [{"ir": 3.0, "sts": 1.0}, {"ir": 1.0, "sts": 3.0}, {"ir": 1.0, "sts": 1.0}])
@pytest.mark.parametrize("world_size,accumulation", [(1, 1), (2, 1), (2, 3)])
def test_task_ratio_in_passes_uses_each_example_at_most_once_per_epoch(ratio, world_size, accumulation):
    # Two IR datasets (400 and 200 rows, batch 4) and one STS dataset (300 rows, batch 6).
    sizes, batch_sizes = (400, 200, 300), (4, 4, 6)
    specs = [DatasetSpec(n, t, s, b) for n, t, s, b in zip(("ir_a", "ir_b", "sts_c"), ("ir", "ir", "sts"), sizes, batch_sizes)]
    passes = dataset_passes_from_task_ratio(specs, ratio)
    sampler = TaskBalancedBatchSampler(
        ConcatDataset([list(range(n)) for n in sizes]), specs, world_size=world_size,
        gradient_accumulation_steps=accumulation, dataset_passes=passes, seed=5,
    )
    heaviest = max(ratio.values())
    offsets = (0, 400, 600)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        indices = [i for batch in sampler for i in batch]
        assert len(indices) == len(set(indices))  # nothing repeats within an epoch
        per_block = world_size * accumulation
        for d, (spec, offset) in enumerate(zip(specs, offsets)):
            used = sum(1 for i in indices if offset <= i < offset + spec.size)
            full_pass_blocks = spec.size // (spec.batch_size * per_block)
            expected_blocks = max(round(full_pass_blocks * ratio[spec.task] / heaviest), 1)
            assert used == expected_blocks * spec.batch_size * per_block, (spec.name, epoch)
    assert len(sampler) == len(list(sampler))
    if ratio == {"ir": 1.0, "sts": 1.0}:  # 1:1 in passes is the unweighted sampler, batch for batch
        plain = TaskBalancedBatchSampler(
            ConcatDataset([list(range(n)) for n in sizes]), specs, world_size=world_size,
            gradient_accumulation_steps=accumulation, seed=5,
        )
        plain.set_epoch(1)
        assert list(plain) == list(sampler)


def test_task_ratio_in_passes_refuses_bad_fractions_and_missing_tasks():
    specs = [DatasetSpec("ir_set", "ir", 400, 4), DatasetSpec("sts_set", "sts", 100, 4)]
    data = ConcatDataset([list(range(400)), list(range(100))])
    with pytest.raises(ValueError, match="outside"):
        TaskBalancedBatchSampler(data, specs, dataset_passes={"ir_set": 1.5})
    with pytest.raises(ValueError, match="not both"):
        TaskBalancedBatchSampler(data, specs, dataset_passes={"ir_set": 1.0}, dataset_weights={"ir_set": 1.0})
    with pytest.raises(ValueError, match="no weight to task"):
        dataset_passes_from_task_ratio(specs, {"ir": 1.0})
    assert dataset_passes_from_task_ratio(specs, {"ir": 0.0, "sts": 2.0}) == {"ir_set": 0.0, "sts_set": 1.0}
