from collections import Counter

import numpy as np
import pytest

from p2p_dist.data.order import Geometry, SampleOrder

TRAIN = Geometry(load_size=40, crop_size=32, random=True, flip=True)
VAL = Geometry(load_size=40, crop_size=32, random=False, flip=False)


def all_ranks(num_samples: int, batch_size: int, world_size: int, epoch: int = 0, **kwargs):
    return [
        SampleOrder(num_samples, batch_size, TRAIN, rank=rank, world_size=world_size, **kwargs).plan(epoch)
        for rank in range(world_size)
    ]


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_samples,batch_size", [(10, 3), (17, 4), (5, 4), (24, 4)])
def test_every_sample_once_per_epoch_and_equal_full_batches_on_every_rank(world_size, num_samples, batch_size):
    plans = all_ranks(num_samples, batch_size, world_size)
    order = SampleOrder(num_samples, batch_size, TRAIN, world_size=world_size)
    assert {plan.indices.shape for plan in plans} == {(order.batches_per_epoch, batch_size)}
    counts = Counter(np.concatenate([plan.indices.ravel() for plan in plans]).tolist())
    assert set(counts) == set(range(num_samples))
    assert sum(counts.values()) - num_samples == order.padding < world_size * batch_size
    # The padding repeats the first samples of the epoch, so nothing is seen more than twice when it fits.
    assert max(counts.values()) <= 1 + -(-order.padding // num_samples)


def test_padding_repeats_only_fall_in_the_last_step():
    plans = all_ranks(10, 2, 3)
    steps_before_last = np.concatenate([plan.indices[:-1].ravel() for plan in plans])
    assert len(set(steps_before_last.tolist())) == len(steps_before_last)


def test_same_seed_same_order_and_draws_other_seed_or_epoch_differs():
    a, b = all_ranks(50, 5, 2, seed=7), all_ranks(50, 5, 2, seed=7)
    for plan_a, plan_b in zip(a, b):
        for field in ("indices", "crop_x", "crop_y", "flip"):
            assert np.array_equal(getattr(plan_a, field), getattr(plan_b, field))
    assert not np.array_equal(all_ranks(50, 5, 2, seed=8)[0].indices, a[0].indices)
    assert not np.array_equal(all_ranks(50, 5, 2, seed=7, epoch=1)[0].indices, a[0].indices)


def test_augmentation_draws_are_per_sample_and_within_the_crop_range():
    order = SampleOrder(200, 8, TRAIN, seed=1)
    plan = order.plan(3)
    assert plan.crop_x.min() >= 0 and plan.crop_x.max() <= TRAIN.max_offset
    assert plan.crop_y.min() >= 0 and plan.crop_y.max() <= TRAIN.max_offset
    assert len(np.unique(plan.crop_x)) == TRAIN.max_offset + 1  # every offset is drawn, the extremes too
    assert 0.3 < plan.flip.mean() < 0.7
    # A sample's draw depends on (seed, epoch, sample), not on its batch position or the rank layout.
    other_layout = SampleOrder(200, 5, TRAIN, seed=1, rank=1, world_size=2).plan(3)
    draws = {
        int(i): (int(x), int(y), bool(f))
        for i, x, y, f in zip(plan.indices.ravel(), plan.crop_x.ravel(), plan.crop_y.ravel(), plan.flip.ravel())
    }
    for i, x, y, f in zip(
        other_layout.indices.ravel(),
        other_layout.crop_x.ravel(),
        other_layout.crop_y.ravel(),
        other_layout.flip.ravel(),
    ):
        assert draws[int(i)] == (int(x), int(y), bool(f))


def test_validation_order_is_sequential_without_augmentation():
    order = SampleOrder(7, 3, VAL, shuffle=False, seed=5)
    plan = order.plan(4)
    assert plan.indices.ravel().tolist() == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    assert not plan.crop_x.any() and not plan.crop_y.any() and not plan.flip.any()


def test_flip_off_never_flips_but_keeps_the_same_crops():
    no_flip = Geometry(40, 32, random=True, flip=False)
    with_flip = SampleOrder(100, 4, TRAIN, seed=2).plan(0)
    without = SampleOrder(100, 4, no_flip, seed=2).plan(0)
    assert not without.flip.any()
    assert np.array_equal(with_flip.crop_x, without.crop_x) and np.array_equal(with_flip.indices, without.indices)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_samples": 0}, "at least one sample"),
        ({"batch_size": 0}, "batch_size"),
        ({"rank": 2, "world_size": 2}, "rank 2"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    arguments = {"num_samples": 10, "batch_size": 2, "rank": 0, "world_size": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        SampleOrder(arguments.pop("num_samples"), arguments.pop("batch_size"), TRAIN, **arguments)


def test_crop_larger_than_load_size_is_rejected():
    with pytest.raises(ValueError, match="load_size"):
        Geometry(load_size=30, crop_size=32, random=True, flip=True)
