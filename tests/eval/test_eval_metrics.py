"""Image metrics, the FCN-score and the Evaluator, including its distributed sync."""

import json
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from p2p_dist.data.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES, to_train_ids
from p2p_dist.eval.metrics import FCN_KEYS, Evaluator, fcn_scores, predict_train_ids

from eval_helpers import smooth_photos
from runs import free_port

ROAD, SIDEWALK, BUILDING, UNLABELED = 7, 8, 11, 0  # Cityscapes ids of train ids 0, 1, 2 and an ignored id


def fixed_prediction_segmenter(predictions: torch.Tensor):
    """A segmenter that outputs one-hot logits of the given train-id map, whatever the photo."""

    def segment(photos: torch.Tensor) -> torch.Tensor:
        assert photos.shape[0] == predictions.shape[0]
        return torch.nn.functional.one_hot(predictions, NUM_TRAIN_CLASSES).permute(0, 3, 1, 2).float()

    return segment


def test_cityscapes_ids_used_here_map_to_train_ids_0_1_2_and_ignore():
    ids = torch.tensor([ROAD, SIDEWALK, BUILDING, UNLABELED])
    assert to_train_ids(ids).tolist() == [0, 1, 2, IGNORE_INDEX]


def test_ssim_of_an_image_with_itself_is_one_and_lower_for_a_different_image():
    photos = smooth_photos(2, 32, seed=0)
    evaluator = Evaluator(fid_kid=False, fcn=False)
    evaluator.update(photos, photos, ids=None)
    assert evaluator.compute()["ssim"] == pytest.approx(1.0, abs=1e-6)
    evaluator.reset()
    evaluator.update(photos, smooth_photos(2, 32, seed=1), ids=None)
    assert evaluator.compute()["ssim"] < 0.9


def test_psnr_mse_l1_match_hand_computed_values_on_the_unit_range():
    real = torch.full((2, 3, 8, 8), -1.0)  # 0 on [0, 1]
    fake = torch.stack([torch.full((3, 8, 8), 0.0), torch.full((3, 8, 8), -0.8)])  # 0.5 and 0.1 on [0, 1]
    evaluator = Evaluator(fid_kid=False, fcn=False)
    evaluator.update(fake, real, ids=None)
    scores = evaluator.compute()
    # Per-image MSE 0.25 and 0.01 -> PSNR 10*log10(1/0.25) = 6.0206 and 10*log10(1/0.01) = 20, mean 13.0103.
    assert scores["psnr"] == pytest.approx(13.0103, abs=1e-3)
    assert scores["mse"] == pytest.approx((0.25 + 0.01) / 2, rel=1e-5)
    assert scores["l1"] == pytest.approx((0.5 + 0.1) / 2, rel=1e-5)


def test_fcn_scores_of_a_hand_worked_confusion_matrix():
    # rows = labels, columns = predictions. Class 0: 3 pixels, 2 right, 1 called class 1. Class 1: 2 pixels,
    # 1 right, 1 called class 2. Class 2: never labelled, predicted once.
    confusion = torch.tensor([[2, 1, 0], [0, 1, 1], [0, 0, 0]])
    scores = fcn_scores(confusion)
    assert scores["fcn/pixel_acc"] == pytest.approx(3 / 5)
    # Class accuracy over the labelled classes 0 and 1 only: (2/3 + 1/2) / 2.
    assert scores["fcn/class_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # IoU: class 0 = 2/(3+2-2) = 2/3; class 1 = 1/(2+2-1) = 1/3; class 2 = 0/(0+1-0) = 0 (predicted, so counted).
    assert scores["fcn/mean_iou"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)


def test_fcn_scores_exclude_classes_absent_from_labels_and_predictions():
    confusion = torch.zeros(NUM_TRAIN_CLASSES, NUM_TRAIN_CLASSES, dtype=torch.long)
    confusion[0, 0] = 5
    confusion[1, 1] = 5  # 17 classes never appear: a mean over all 19 would give 2/19
    assert fcn_scores(confusion) == {"fcn/pixel_acc": 1.0, "fcn/class_acc": 1.0, "fcn/mean_iou": 1.0}


def test_fcn_scores_are_nan_when_no_pixel_is_labelled():
    scores = fcn_scores(torch.zeros(3, 3))
    assert all(math.isnan(scores[key]) for key in FCN_KEYS)


def test_evaluator_ceiling_is_the_segmenter_score_on_the_real_photos_of_the_same_samples():
    def segmenter(photos):  # bright pixels are road (train id 0), dark ones sidewalk (1)
        logits = torch.zeros(photos.shape[0], NUM_TRAIN_CLASSES, *photos.shape[2:])
        logits[:, 0], logits[:, 1] = photos.mean(1), -photos.mean(1)
        return logits

    torch.manual_seed(0)
    real = torch.rand(3, 3, 16, 16) * 2 - 1
    fake = -real
    ids = torch.tensor([ROAD, SIDEWALK, BUILDING, UNLABELED]).repeat(3, 4, 4)[:, :16, :16]
    keep = torch.tensor([True, False, True])
    both = Evaluator(fid_kid=False, fcn_ceiling=True)
    both.update(fake, real, ids, segmenter, keep=keep)
    scores = both.compute()
    real_alone = Evaluator(fid_kid=False)
    real_alone.update(real, real, ids, segmenter, keep=keep)
    expected = real_alone.compute()
    assert {key: scores[f"ceiling/{key}"] for key in FCN_KEYS} == {key: expected[key] for key in FCN_KEYS}
    assert scores["fcn/pixel_acc"] != scores["ceiling/fcn/pixel_acc"]  # the generated photos' own score


def test_evaluator_fcn_score_on_a_hand_worked_case_ignores_label_255():
    # The same confusion matrix as above, laid out as label ids and predictions (1 image, 2x4 pixels);
    # the last row's two pixels are 'unlabeled' (train id 255) and predicted as class 2: must not count.
    ids = torch.tensor([[[ROAD, ROAD, ROAD, SIDEWALK], [SIDEWALK, UNLABELED, UNLABELED, UNLABELED]]])
    predictions = torch.tensor([[[0, 0, 1, 1], [2, 2, 2, 2]]])
    photos = torch.zeros(1, 3, 16, 16)  # SSIM's 11x11 window needs at least 11x11 photos
    evaluator = Evaluator(fid_kid=False, fcn=True)
    evaluator.update(photos, photos, ids, fixed_prediction_segmenter(predictions))
    scores = evaluator.compute()
    assert scores["fcn/pixel_acc"] == pytest.approx(3 / 5)
    assert scores["fcn/class_acc"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores["fcn/mean_iou"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)


def test_predictions_are_resized_to_the_label_resolution():
    logits = torch.zeros(1, NUM_TRAIN_CLASSES, 2, 2)
    logits[0, 3, 0, :] = 1.0  # top half class 3
    logits[0, 5, 1, :] = 1.0  # bottom half class 5
    predictions = predict_train_ids(lambda photos: logits, torch.zeros(1, 3, 8, 8), (8, 8))
    assert predictions.shape == (1, 8, 8)
    assert (predictions[0, :3] == 3).all() and (predictions[0, 5:] == 5).all()


def test_segmenter_in_training_mode_or_with_wrong_output_is_rejected():
    conv = torch.nn.Conv2d(3, NUM_TRAIN_CLASSES, 1)
    with pytest.raises(ValueError, match="training mode"):
        predict_train_ids(conv.train(), torch.zeros(1, 3, 4, 4), (4, 4))
    with pytest.raises(ValueError, match=r"\(B, 19, H, W\)"):
        predict_train_ids(torch.nn.Conv2d(3, 7, 1).eval(), torch.zeros(1, 3, 4, 4), (4, 4))


def test_keep_mask_drops_samples_from_every_metric():
    real = torch.full((3, 3, 16, 16), -1.0)
    fake = torch.stack([torch.full((3, 16, 16), value) for value in (0.0, 1.0, 0.0)])  # sample 1: far off
    ids = torch.stack([torch.full((16, 16), ROAD), torch.full((16, 16), SIDEWALK), torch.full((16, 16), ROAD)])
    segmenter = fixed_prediction_segmenter(torch.zeros(2, 16, 16, dtype=torch.long))  # sees the kept 2 only
    evaluator = Evaluator(fid_kid=False)
    evaluator.update(fake, real, ids, segmenter, keep=torch.tensor([True, False, True]))
    evaluator.update(fake, real, ids, segmenter, keep=torch.tensor([False, False, False]))
    scores = evaluator.compute()
    assert scores["mse"] == pytest.approx(0.25) and scores["l1"] == pytest.approx(0.5)
    assert scores["fcn/pixel_acc"] == 1.0  # the sidewalk sample, which class 0 would get wrong, was dropped
    with pytest.raises(ValueError, match=r"keep must be a \(3,\) mask"):
        evaluator.update(fake, real, ids, segmenter, keep=torch.tensor([True, False]))


def test_evaluator_with_fcn_needs_a_segmenter():
    evaluator = Evaluator(fid_kid=False, fcn=True)
    photos = torch.zeros(1, 3, 16, 16)
    with pytest.raises(ValueError, match="needs a segmenter"):
        evaluator.update(photos, photos, torch.zeros(1, 16, 16, dtype=torch.long))
    assert evaluator.mse.total == 0  # rejected before any metric took the batch


def test_evaluator_reports_every_key_when_all_parts_are_on(inception_cache):
    photos, others = smooth_photos(3, 32, seed=0), smooth_photos(3, 32, seed=1)
    ids = torch.full((3, 32, 32), ROAD)
    evaluator = Evaluator(inception_feature=64, inception_cache_dir=inception_cache, kid_subset_size=3)
    evaluator.update(others, photos, ids, fixed_prediction_segmenter(torch.zeros(3, 32, 32, dtype=torch.long)))
    scores = evaluator.compute()
    assert set(scores) == {"ssim", "psnr", "mse", "l1", "fid", "kid_mean", "kid_std", *FCN_KEYS}
    assert scores["fcn/pixel_acc"] == 1.0
    assert all(math.isfinite(value) for value in scores.values())


def test_evaluator_scores_channels_last_photos_like_contiguous_ones(inception_cache):
    """A generator trained channels_last (bf16 on a CPU, any CUDA run) hands over channels_last photos."""
    photos, others = smooth_photos(3, 32, seed=0), smooth_photos(3, 32, seed=1)
    ids = torch.full((3, 32, 32), ROAD)
    segmenter = fixed_prediction_segmenter(torch.zeros(3, 32, 32, dtype=torch.long))
    scores = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        evaluator = Evaluator(inception_feature=64, inception_cache_dir=inception_cache, kid_subset_size=3)
        fake, real = (x.contiguous(memory_format=memory_format) for x in (others, photos))
        evaluator.update(fake, real, ids, segmenter)
        scores.append(evaluator.compute())
    assert scores[1] == pytest.approx(scores[0], rel=1e-6, abs=1e-9)


# ------------------------------------------------------------------ distributed: 2 ranks == 1 process


def _dataset(num: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    real = smooth_photos(num, size, seed=12)
    fake = (real + 0.3 * torch.randn(real.shape, generator=generator)).clamp(-1, 1)
    id_choices = torch.tensor([ROAD, SIDEWALK, BUILDING, UNLABELED])
    ids = id_choices[torch.randint(0, 4, (num, size, size), generator=generator)]
    predictions = torch.randint(0, 3, (num, size, size), generator=generator)
    return fake, real, ids, predictions


def _evaluate(indices: range, inception_cache: str | None) -> dict:
    """Metrics over images ``indices`` of the dataset; no FID/KID when ``inception_cache`` is None."""
    fake, real, ids, predictions = _dataset()
    evaluator = Evaluator(
        fid_kid=inception_cache is not None,
        inception_feature=64,
        inception_cache_dir=inception_cache,
        kid_subset_size=6,
        kid_subsets=5,
    )
    for start in range(indices.start, indices.stop, 2):  # batches of 2
        batch = slice(start, min(start + 2, indices.stop))
        evaluator.update(fake[batch], real[batch], ids[batch], fixed_prediction_segmenter(predictions[batch]))
    return evaluator.compute()


def _rank_main(rank: int, world_size: int, port: int, inception_cache: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        # Uneven shares (3 batches vs 1): ranks must still issue matching collectives.
        scores = _evaluate(range(6) if rank == 0 else range(6, 8), inception_cache)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(scores, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: 25-50 s on the shared 2-core machine
def test_two_gloo_ranks_give_the_same_metrics_as_one_process(inception_cache, tmp_path):
    single = _evaluate(range(8), str(inception_cache))
    mp.spawn(_rank_main, args=(2, free_port(), str(inception_cache), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        distributed = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert distributed.keys() == single.keys()
        for key, value in single.items():
            assert distributed[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # The sync is real: rank 0's share alone scores differently.
    rank0_alone = _evaluate(range(6), None)
    assert rank0_alone["fcn/pixel_acc"] != pytest.approx(single["fcn/pixel_acc"])
    assert rank0_alone["mse"] != pytest.approx(single["mse"])
