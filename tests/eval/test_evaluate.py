"""`evaluate`: the loop over a split behind launch/evaluate.py and periodic evaluation, on real (tiny) shards."""

import pytest
import torch

from p2p_dist.data.loaders.build import build_loader
from p2p_dist.eval.evaluate import evaluate
from p2p_dist.eval.metrics import Evaluator
from p2p_dist.models import UNetGenerator
from p2p_dist.models.translation_modes import translation_modes


def val_loader(shards, batch_size: int):
    return build_loader(
        shards,
        "val",
        backend="webdataset",
        batch_size=batch_size,
        train=False,
        load_size=128,
        crop_size=128,
        flip=False,
        num_workers=0,
    )


def mirrored(batch):
    """A stand-in generator whose error differs from image to image: the real photo, mirrored."""
    return batch["photo"].flip(-1)


def test_max_images_scores_exactly_the_first_n_images_of_the_split(tiny_shards):
    loader = val_loader(tiny_shards, batch_size=2)  # 4 val images: batches [0, 1] and [2, 3]
    whole = val_loader(tiny_shards, batch_size=4)
    try:
        first_three = evaluate(mirrored, loader, Evaluator(fid_kid=False, fcn=False), None, max_images=3)
        all_four = evaluate(mirrored, loader, Evaluator(fid_kid=False, fcn=False), None)
        batch = next(iter(whole.epoch(0)))
    finally:
        loader.close()
        whole.close()
    by_hand = Evaluator(fid_kid=False, fcn=False)
    by_hand.update(mirrored(batch)[:3], batch["photo"][:3])
    assert first_three == pytest.approx(by_hand.compute(), rel=1e-6)
    assert first_three["l1"] != pytest.approx(all_four["l1"], rel=1e-3)  # the fourth image did count before


def test_max_images_must_be_positive(tiny_shards):
    loader = val_loader(tiny_shards, batch_size=2)
    try:
        with pytest.raises(ValueError, match="max_images must be at least 1, got 0"):
            evaluate(mirrored, loader, Evaluator(fid_kid=False, fcn=False), None, max_images=0)
    finally:
        loader.close()


def batch_norm_generator() -> UNetGenerator:
    """A small unet_128 with batch norm whose running statistics differ from any image's own (as after training)."""
    torch.manual_seed(0)
    generator = UNetGenerator(3, num_downs=7, ngf=4, norm="batch")
    for layer in generator.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
    return generator.eval()


def test_metrics_do_not_depend_on_the_batch_size_nor_on_the_repeats_padding_the_last_batch(tiny_shards):
    """Per-image statistics, one image at a time: batch 3 over 4 images pads its last batch with two wrap-around
    repeats, and still generates exactly the photos batch 1 generates (dropout noise included, drawn image by
    image), so it scores the same."""
    generator = batch_norm_generator()
    scores, photos = {}, {}
    for batch_size in (1, 3, 4):
        loader = val_loader(tiny_shards, batch_size)
        photos[batch_size] = {}

        def generate(batch, seen=photos[batch_size]):
            fake = translate(batch["label"])
            for key, photo, repeat in zip(batch["key"], fake, batch["is_repeat"]):
                if not repeat:
                    seen[key] = photo
            return fake

        try:
            with translation_modes(generator, dropout=True, norm_mode="per-image") as translate:
                torch.manual_seed(7)
                scores[batch_size] = evaluate(generate, loader, Evaluator(fid_kid=False, fcn=False), None)
        finally:
            loader.close()
    assert len(photos[1]) == 4 and photos[3].keys() == photos[1].keys() == photos[4].keys()
    for key, photo in photos[1].items():
        assert torch.equal(photos[3][key], photo) and torch.equal(photos[4][key], photo), key
    # Metric sums accumulate per batch: equal up to float rounding.
    assert scores[3] == pytest.approx(scores[1], rel=1e-6) and scores[4] == pytest.approx(scores[1], rel=1e-6)


@pytest.mark.parametrize("holdout", [0, 5])
def test_periodic_evaluation_scores_the_held_out_train_images_when_there_are_some_else_val(tiny_shards, holdout):
    """What a sweep's objective is scored on: with data.holdout (sweeps set it from tune.holdout_images) the first
    eval.num_images of the held-out train images, which the trainer's loader skips; val stays for the report."""
    from p2p_dist.config import load_config
    from p2p_dist.data.holdout import holdout_indices
    from p2p_dist.data.loaders.build import loader_options
    from p2p_dist.eval.periodic import PeriodicEvaluation
    from p2p_dist.runtime import Runtime

    cfg = load_config(
        None,
        [
            "train.steps=1",
            "data.loader=webdataset",
            "data.num_workers=1",
            "data.load_size=128",
            "data.crop_size=128",
            "eval.fcn=false",
            "eval.num_images=3",
            f"data.holdout={holdout}",
        ],
    )
    rt = Runtime(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"), precision="fp32")
    periodic = PeriodicEvaluation(cfg, rt, tiny_shards)
    scored = []
    try:
        periodic(lambda label: scored.append(label) or torch.zeros(len(label), 3, 128, 128))
        keys = periodic.loader.shards.keys
    finally:
        periodic.close()
    train = build_loader(tiny_shards, "train", loader_options(cfg.data, batch_size=2, train=True, seed=0))
    train_keys = train.shards.keys
    train.close()
    if holdout:
        whole = build_loader(tiny_shards, "train", backend="webdataset", batch_size=2, num_workers=0)
        all_train = whole.shards.keys
        whole.close()
        assert keys == [all_train[i] for i in holdout_indices(len(all_train), holdout)]
        assert not set(keys) & set(train_keys) and len(train_keys) == len(all_train) - holdout
    else:
        val = val_loader(tiny_shards, 2)
        assert keys == val.shards.keys
        val.close()
    assert sum(len(label) for label in scored) >= 3
