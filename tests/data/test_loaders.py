"""Both loaders on the tiny marker shard set: the contract, paired augmentation, agreement, ranks, resume."""

from collections import Counter

import numpy as np
import pytest
import torch

from p2p_dist.data import labels
from p2p_dist.data.loaders.build import build_loader

from markerdata import MARKER_IDS, interior, photo_ids

BACKENDS = ["dali", "webdataset"]
AUGMENTED = {"train": True, "load_size": 40, "crop_size": 32}
PLAIN = {"train": False, "load_size": 32, "crop_size": 32}


def loader_for(shards, backend, split="train", **kwargs):
    options = {"batch_size": 3, "num_workers": 1 if backend == "dali" else 0, **AUGMENTED, **kwargs}
    return build_loader(shards, split, backend=backend, **options)


def collect(loader, epochs=(0,)):
    return [batch for epoch in epochs for batch in loader.epoch(epoch)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("encoding", ["color", "onehot"])
def test_batches_follow_the_contract(marker_shards, backend, encoding):
    loader = loader_for(marker_shards, backend, label_encoding=encoding)
    batches = collect(loader)
    assert len(batches) == loader.batches_per_epoch == 4 and loader.num_samples == 10
    for batch in batches:
        photo, label, ids = batch["photo"], batch["label"], batch["ids"]
        assert photo.shape == (3, 3, 32, 32) and photo.dtype == torch.float32
        assert photo.min() >= -1.0 and photo.max() <= 1.0
        assert ids.shape == (3, 32, 32) and ids.dtype == torch.uint8
        assert len(batch["key"]) == 3 and all(isinstance(key, str) for key in batch["key"])
        if encoding == "onehot":
            assert label.shape == (3, labels.NUM_IDS, 32, 32) and label.dtype == torch.float32
            assert torch.equal(label.sum(dim=1), torch.ones(3, 32, 32))
            assert torch.equal(label.argmax(dim=1), ids.long())
        else:
            expected = torch.tensor(labels.PALETTE)[ids.long()].permute(0, 3, 1, 2).float() / 127.5 - 1.0
            assert label.shape == (3, 3, 32, 32) and torch.allclose(label, expected, atol=1e-6)
    loader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_photo_and_label_stay_aligned_through_crop_and_flip(marker_shards, backend):
    loader = loader_for(marker_shards, backend)
    plans = [loader.order.plan(epoch) for epoch in range(3)]
    assert any(plan.flip.any() for plan in plans) and any(plan.crop_x.any() for plan in plans)
    aligned, mirrored = [], []
    for batch in collect(loader, epochs=range(3)):
        for photo, ids in zip(batch["photo"].numpy(), batch["ids"].numpy()):
            inside = interior(ids)
            decoded = photo_ids(photo)
            aligned.append((decoded == ids)[inside].mean())
            mirrored.append((decoded[:, ::-1] == ids)[inside].mean())
    assert min(aligned) > 0.98
    assert np.mean(mirrored) < 0.6  # the check notices a photo flipped without its label map
    loader.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_label_value_is_invented(marker_shards, backend):
    loader = loader_for(marker_shards, backend, label_encoding="onehot")
    others = [i for i in range(labels.NUM_IDS) if i not in MARKER_IDS]
    for batch in collect(loader, epochs=range(2)):
        assert set(batch["ids"].unique().tolist()) <= set(MARKER_IDS.tolist())
        assert not batch["label"][:, others].any()
    loader.close()


def assert_loaders_agree(shards, ids_agreement: float, **kwargs):
    dali, wds = (collect(loader_for(shards, backend, **kwargs), epochs=(0, 1)) for backend in BACKENDS)
    assert len(dali) == len(wds)
    for a, b in zip(dali, wds):
        assert a["key"] == b["key"]
        difference = (a["photo"] - b["photo"]).abs()
        assert difference.max() <= 4 / 127.5 and difference.mean() < 0.01  # JPEG decoders and resize rounding
        assert (a["ids"] == b["ids"]).float().mean() >= ids_agreement
        if ids_agreement == 1.0:
            assert torch.equal(a["label"], b["label"])


def test_both_loaders_give_the_same_tensors_without_augmentation(marker_shards):
    assert_loaders_agree(marker_shards, ids_agreement=1.0, **PLAIN)


def test_both_loaders_give_the_same_samples_crops_and_flips_with_augmentation(marker_shards):
    # Nearest-neighbour upsampling may pick the neighbouring source pixel at exact ties (see loaders/webdataset.py).
    assert_loaders_agree(marker_shards, ids_agreement=0.98, **AUGMENTED)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_cover_every_sample_once_with_equal_batch_counts(marker_shards, backend, world_size):
    loaders = [
        loader_for(marker_shards, backend, rank=rank, world_size=world_size, seed=4) for rank in range(world_size)
    ]
    assert len({loader.batches_per_epoch for loader in loaders}) == 1
    keys = Counter()
    for loader in loaders:
        batches = collect(loader, epochs=(2,))
        assert len(batches) == loader.batches_per_epoch
        keys.update(key for batch in batches for key in batch["key"])
    assert set(keys) == set(loaders[0].shards.keys)
    assert sum(keys.values()) == loaders[0].num_samples + loaders[0].padding
    assert sum(count - 1 for count in keys.values()) == loaders[0].padding < world_size * 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_not_marked_as_repeats_cover_the_split_exactly_once(marker_shards, backend):
    loaders = [loader_for(marker_shards, backend, rank=rank, world_size=3, seed=4, train=False) for rank in range(3)]
    assert loaders[0].padding > 0  # the case that matters
    kept = Counter()
    for loader in loaders:
        for batch in collect(loader):
            assert batch["is_repeat"].dtype == torch.bool and batch["is_repeat"].shape == (len(batch["key"]),)
            kept.update(key for key, repeat in zip(batch["key"], batch["is_repeat"].tolist()) if not repeat)
    assert sorted(kept) == sorted(loaders[0].shards.keys) and set(kept.values()) == {1}


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_at_epoch_and_batch_gives_the_same_remaining_batches(marker_shards, backend):
    full = collect(loader_for(marker_shards, backend, seed=9), epochs=(1,))
    resumed_loader = loader_for(marker_shards, backend, seed=9)  # a fresh process would build a fresh loader
    resumed = list(resumed_loader.epoch(1, start_batch=2))
    assert len(resumed) == resumed_loader.batches_per_epoch - 2
    for a, b in zip(full[2:], resumed):
        assert a["key"] == b["key"]
        assert torch.equal(a["photo"], b["photo"]) and torch.equal(a["ids"], b["ids"])
    assert list(resumed_loader.epoch(1, start_batch=resumed_loader.batches_per_epoch)) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_raw_label_maps_load_like_png_label_maps(marker_shards, marker_shards_raw, backend):
    for a, b in zip(collect(loader_for(marker_shards, backend)), collect(loader_for(marker_shards_raw, backend))):
        assert a["key"] == b["key"] and torch.equal(a["ids"], b["ids"]) and torch.equal(a["photo"], b["photo"])


def test_webdataset_worker_processes_give_the_same_batches(marker_shards):
    in_process = collect(loader_for(marker_shards, "webdataset", num_workers=0))
    loader = loader_for(marker_shards, "webdataset", num_workers=2)
    for a, b in zip(in_process, collect(loader)):
        assert a["key"] == b["key"] and torch.equal(a["photo"], b["photo"]) and torch.equal(a["ids"], b["ids"])
    loader.close()


@pytest.mark.parametrize("backend, prefetch", [("dali", "ahead"), ("dali", "on_demand"), ("webdataset", "auto")])
def test_abandoned_epoch_does_not_leak_into_the_next(marker_shards, backend, prefetch):
    loader = loader_for(marker_shards, backend, prefetch=prefetch)
    expected = [batch["key"] for batch in loader.epoch(1)]
    first = loader.epoch(0)
    next(first)
    assert [batch["key"] for batch in loader.epoch(1)] == expected
    with pytest.raises(RuntimeError, match="superseded"):
        next(first)


@pytest.mark.parametrize("prefetch, in_flight", [("ahead", 1), ("on_demand", 0)])
def test_dali_decodes_the_next_batch_during_the_step_only_when_prefetching_ahead(marker_shards, prefetch, in_flight):
    loader = loader_for(marker_shards, "dali", prefetch=prefetch)
    next(loader.epoch(0))  # the trainer holds batch 0
    assert len(loader._in_flight) == in_flight
    loader.close()


def test_dali_gives_the_same_batches_decoding_ahead_or_on_demand(marker_shards):
    ahead, on_demand = (
        collect(loader_for(marker_shards, "dali", prefetch=prefetch), epochs=(0, 1))
        for prefetch in ("ahead", "on_demand")
    )
    assert len(ahead) == len(on_demand)
    for a, b in zip(ahead, on_demand):
        assert a["key"] == b["key"]
        assert all(torch.equal(a[name], b[name]) for name in ("photo", "label", "ids"))


def test_bad_arguments_are_rejected(marker_shards):
    with pytest.raises(ValueError, match="backend"):
        build_loader(marker_shards, "train", backend="tfrecord", batch_size=2)
    with pytest.raises(ValueError, match="label_encoding"):
        build_loader(marker_shards, "train", backend="webdataset", batch_size=2, label_encoding="rgb")
    with pytest.raises(ValueError, match="prefetch"):
        build_loader(marker_shards, "train", backend="dali", batch_size=2, prefetch="sometimes")
    loader = loader_for(marker_shards, "webdataset")
    with pytest.raises(ValueError, match="start_batch"):
        loader.epoch(0, start_batch=loader.batches_per_epoch + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_held_out_slice_is_never_trained_on_and_can_be_read_alone(marker_shards, backend):
    from p2p_dist.data.holdout import holdout_indices

    everything = build_loader(marker_shards, "train", backend=backend, batch_size=3, num_workers=0, **PLAIN)
    keys = everything.shards.keys
    everything.close()
    held_out = {keys[i] for i in holdout_indices(len(keys), 3)}
    assert sorted(holdout_indices(10, 3)) == [1, 5, 8]  # evenly spread, not a contiguous slice
    training = loader_for(marker_shards, backend, holdout=3)
    scoring = loader_for(marker_shards, backend, holdout=3, holdout_only=True, **PLAIN)
    try:
        assert training.num_samples == 7 and scoring.num_samples == 3
        trained_on = {key for epoch in (0, 1) for batch in training.epoch(epoch) for key in batch["key"]}
        scored = [
            key for batch in scoring.epoch(0) for key, repeat in zip(batch["key"], batch["is_repeat"]) if not repeat
        ]
    finally:
        training.close()
        scoring.close()
    assert trained_on == set(keys) - held_out
    assert sorted(scored) == sorted(held_out)


def test_loader_options_apply_data_holdout_to_training_and_holdout_only_loaders():
    from p2p_dist.config import load_config
    from p2p_dist.data.loaders.build import loader_options

    data = load_config(None, ["data.holdout=5", "train.steps=1"]).data
    common = {"batch_size": 2, "seed": 0}
    assert loader_options(data, train=True, **common).holdout == 5
    assert loader_options(data, train=False, **common).holdout == 0  # val loaders: nothing held out of them
    only = loader_options(data, train=False, holdout_only=True, **common)
    assert (only.holdout, only.holdout_only) == (5, True)
