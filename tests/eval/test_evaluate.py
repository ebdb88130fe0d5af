"""`evaluate`: the loop over a split behind launch/evaluate.py and periodic evaluation, on real (tiny) shards."""

import pytest

from p2p_dist.data.loaders.build import build_loader
from p2p_dist.eval.evaluate import evaluate
from p2p_dist.eval.metrics import Evaluator


def val_loader(shards, batch_size: int):
    return build_loader(shards, "val", backend="webdataset", batch_size=batch_size, train=False, load_size=128,
                        crop_size=128, flip=False, num_workers=0)


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
