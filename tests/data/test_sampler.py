import itertools

import pytest

from findlit.data.sampler import MultiTaskBatchSampler, ShardedSampler


def make(**kwargs) -> MultiTaskBatchSampler:
    defaults = dict(sizes=[500, 200, 120], batch_sizes=[2, 4, 1], ratios=[0.5, 0.3, 0.2])
    defaults.update(kwargs)
    sizes, batch_sizes, ratios = defaults.pop("sizes"), defaults.pop("batch_sizes"), defaults.pop("ratios")
    return MultiTaskBatchSampler(sizes, batch_sizes, ratios, **defaults)


def test_task_frequencies_follow_ratios() -> None:
    sampler = make(steps_per_epoch=10_000, seed=3)
    batches = list(sampler)
    assert len(batches) == 10_000
    for dataset, ratio in enumerate([0.5, 0.3, 0.2]):
        frequency = sum(batch[0][0] == dataset for batch in batches) / len(batches)
        assert abs(frequency - ratio) < 0.02


def test_batches_are_task_homogeneous_with_the_dataset_batch_size() -> None:
    for batch in make(steps_per_epoch=300):
        datasets = {key[0] for key in batch}
        assert len(datasets) == 1
        assert len(batch) == [2, 4, 1][datasets.pop()]


def test_deterministic_for_seed_and_epoch() -> None:
    first, second = make(seed=5, steps_per_epoch=200), make(seed=5, steps_per_epoch=200)
    assert list(first) == list(second)
    second.set_epoch(1)
    assert list(second) != list(first)
    assert list(make(seed=6, steps_per_epoch=200)) != list(first)


def test_ranks_see_the_same_tasks_and_disjoint_covering_shards() -> None:
    sizes = [40, 24]
    world = [
        list(make(sizes=sizes, batch_sizes=[2, 3], ratios=[1, 1], rank=r, world_size=2)) for r in range(2)
    ]
    single = list(make(sizes=sizes, batch_sizes=[4, 6], ratios=[1, 1]))
    assert len(world[0]) == len(world[1]) == len(single)
    seen: dict[int, list[int]] = {0: [], 1: []}
    for step, (a, b, whole) in enumerate(zip(world[0], world[1], single, strict=True)):
        assert a[0][0] == b[0][0] == whole[0][0], f"ranks disagree on the task at step {step}"
        keys_a, keys_b = {k[1] for k in a}, {k[1] for k in b}
        assert not keys_a & keys_b
        # the two ranks' shares make the one-process global batch, seeds included
        assert a + b == whole
        seen[a[0][0]].extend(k[1] for k in a + b)
    for dataset, size in enumerate(sizes):
        indices = seen[dataset]
        # within one pass over the dataset no index repeats; passes cover every index
        first_pass = indices[:size]
        assert len(set(first_pass)) == len(first_pass)
        if len(indices) >= size:
            assert sorted(first_pass) == list(range(size))


def test_resume_yields_the_identical_remaining_sequence() -> None:
    original = make(seed=11, steps_per_epoch=500)
    original.set_epoch(2)
    iterator = iter(original)
    consumed = list(itertools.islice(iterator, 137))
    state = original.state_dict()
    remaining = list(iterator)

    resumed = make(seed=11, steps_per_epoch=500)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # Lightning sets the epoch again when it restarts the loop
    assert len(resumed) == 500
    assert list(resumed) == remaining
    assert len(consumed) + len(remaining) == 500
    # after the resumed epoch the next one starts from its beginning
    resumed.set_epoch(3)
    fresh = make(seed=11, steps_per_epoch=500)
    fresh.set_epoch(3)
    assert list(resumed) == list(fresh)


def test_resume_refuses_another_seed() -> None:
    state = make(seed=1).state_dict()
    with pytest.raises(ValueError, match="seed"):
        make(seed=2).load_state_dict(state)


def test_default_epoch_length_sees_each_dataset_about_once() -> None:
    sampler = make(sizes=[100, 40], batch_sizes=[4, 2], ratios=[1, 1], world_size=2, rank=1)
    assert len(sampler) == 100 // 8 + 40 // 4


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        make(sizes=[10, 0, 3])
    with pytest.raises(ValueError):
        make(ratios=[0, 0, 0])
    with pytest.raises(ValueError):
        make(rank=2, world_size=2)


@pytest.mark.parametrize("size,world", [(10, 3), (7, 2), (2, 4), (0, 2)])
def test_sharded_sampler_is_disjoint_covering_and_unpadded(size: int, world: int) -> None:
    shards = [list(ShardedSampler(size, r, world)) for r in range(world)]
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(size))
    assert [len(ShardedSampler(size, r, world)) for r in range(world)] == [len(s) for s in shards]
