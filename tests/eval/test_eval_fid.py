"""The offline FID Inception: exact conversion of the TorchScript original, and FID/KID behaviour."""

import math

import pytest
import torch

from p2p_dist.eval.fid import (
    CONVERTED_FILE_NAME,
    InceptionMetrics,
    build_inception,
    inception_weights_path,
    load_fid_helper_torchscript,
)
from p2p_dist.models import to_uint8

from eval_helpers import plain_fid, plain_kid, smooth_photos, white_noise


def test_converted_extractor_features_equal_the_torchscript_original(inception_cache):
    extractor = build_inception("cpu", inception_cache)
    original = load_fid_helper_torchscript()
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = extractor(images)
        theirs = original((images.float() - 128) / 128)  # the original takes 299x299 input scaled this way
    assert ours.shape == theirs.shape == (2, 2048)
    # Measured max difference 1.4e-6 on features of magnitude up to ~6 (float32 summation order only).
    assert (ours - theirs).abs().max() < 1e-4
    assert theirs.abs().max() > 0.5  # a meaningful comparison, not two zero vectors


def test_converted_weights_have_no_classifier_so_logits_are_nan(inception_cache):
    state_dict = torch.load(inception_weights_path(inception_cache), weights_only=True)
    assert sum(key.endswith(".conv.weight") for key in state_dict) == 94
    assert torch.isnan(state_dict["fc.weight"]).all() and torch.isnan(state_dict["fc.bias"]).all()


def test_weights_are_converted_once_and_reused(tmp_path):
    first = inception_weights_path(tmp_path)
    written_at = first.stat().st_mtime_ns
    second = inception_weights_path(tmp_path)
    assert first == second == tmp_path / CONVERTED_FILE_NAME
    assert second.stat().st_mtime_ns == written_at
    assert [p.name for p in tmp_path.iterdir()] == [CONVERTED_FILE_NAME]  # no temporary file left behind


def test_to_uint8_maps_minus_one_to_0_and_one_to_255_rounding_and_clamping():
    images = torch.tensor([-1.5, -1.0, 0.0, 0.99, 1.0, 2.0]).view(1, 3, 1, 2)
    assert to_uint8(images).flatten().tolist() == [0, 0, 128, 254, 255, 255]
    with pytest.raises(ValueError, match="float photos"):
        to_uint8(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_shared_forward_fid_equals_plain_torchmetrics_fid(inception_cache):
    """InceptionMetrics feeds precomputed features to FID: same value as torchmetrics' own pipeline."""
    real, fake = smooth_photos(6, 64, seed=1), smooth_photos(6, 64, seed=2)
    shared = InceptionMetrics(feature=64, cache_dir=inception_cache, kid_subset_size=6)
    shared.update(real, real=True)
    shared.update(fake, real=False)
    plain = plain_fid(64, inception_cache)
    plain.update(to_uint8(real), real=True)
    plain.update(to_uint8(fake), real=False)
    assert shared.compute()["fid"] == pytest.approx(float(plain.compute()), rel=1e-5)


def test_shared_forward_kid_equals_plain_torchmetrics_kid_when_subsets_are_the_whole_set(inception_cache):
    """With subset size = set size every draw is the whole set, so the random subsets cannot differ."""
    real, fake = smooth_photos(4, 64, seed=1), smooth_photos(4, 64, seed=2)
    shared = InceptionMetrics(feature=64, cache_dir=inception_cache, kid_subset_size=4, kid_subsets=2)
    shared.update(real, real=True)
    shared.update(fake, real=False)
    plain = plain_kid(64, inception_cache, subset_size=4, subsets=2)
    plain.update(to_uint8(real), real=True)
    plain.update(to_uint8(fake), real=False)
    plain_mean, _ = plain.compute()
    features = torch.cat([*shared.kid.real_features, *shared.kid.fake_features]).abs()
    assert shared.compute()["kid_mean"] == pytest.approx(float(plain_mean), abs=float32_poly_mmd_error(features))
    assert abs(float(plain_mean)) > 1e-3  # a real comparison (4 samples: the unbiased estimate may be < 0)


def float32_poly_mmd_error(abs_features: torch.Tensor, subset_size: int = 4) -> float:
    """The rounding error expected of torchmetrics' KID (float32 features) against ours (float64). Each kernel
    term (x.y/d + 1)^3 carries the error of a d-term dot product (random-walk growth, sqrt(d) unit roundoffs),
    tripled by the cube, and the means add subset_size more; the estimate subtracts means of such terms (sum of
    their sizes: 4x the mean term), so its error scales with the terms' size, not with the small KID."""
    d = abs_features.shape[1]
    terms = (abs_features @ abs_features.T / d + 1) ** 3
    unit_roundoff = torch.finfo(torch.float32).eps / 2
    return float((3 * math.sqrt(d) + subset_size) * unit_roundoff * 4 * terms.mean())


def _against_itself_and_against_noise(metrics, photos, noise):
    results = []
    for fake in (photos, noise):
        metrics.reset()
        metrics.update(photos, real=True)
        metrics.update(fake, real=False)
        results.append(metrics.compute())
    return results


def test_fid_and_kid_are_near_zero_for_a_set_against_itself_and_large_against_noise(inception_cache):
    photos, noise = smooth_photos(8, 64, seed=3), white_noise(8, 64, seed=4)
    metrics = InceptionMetrics(feature=64, cache_dir=inception_cache, kid_subset_size=8, kid_subsets=10)
    same, different = _against_itself_and_against_noise(metrics, photos, noise)
    assert abs(same["fid"]) < 1e-3
    assert different["fid"] > 1.0
    # The KID estimator is unbiased, so a set against itself may come out slightly negative.
    assert abs(same["kid_mean"]) < 0.1 * different["kid_mean"]
    assert different["kid_mean"] > 0.01
    assert all(math.isfinite(v) for v in (*same.values(), *different.values()))


def test_kid_is_reproducible_across_computes(inception_cache):
    metrics = InceptionMetrics(feature=64, cache_dir=inception_cache, kid_subset_size=4, kid_subsets=5)
    metrics.update(smooth_photos(6, 64, seed=5), real=True)
    metrics.update(smooth_photos(6, 64, seed=6), real=False)
    first, second = metrics.compute(), metrics.compute()
    assert first["kid_mean"] == second["kid_mean"] and first["kid_std"] == second["kid_std"]
    assert first["kid_std"] > 0  # 6 choose 4 subsets differ: the std is real, not a degenerate 0


def test_kid_depends_on_the_set_of_images_not_their_batch_order(inception_cache):
    """What makes KID equal across rank splits: gathered features arrive in another order than locally."""
    real, fake_a, fake_b = smooth_photos(6, 64, seed=9), smooth_photos(3, 64, seed=10), smooth_photos(3, 64, seed=11)
    scores = []
    for fakes in ((fake_a, fake_b), (fake_b, fake_a)):
        metrics = InceptionMetrics(feature=64, cache_dir=inception_cache, kid_subset_size=4, kid_subsets=5)
        metrics.update(real, real=True)
        for fake in fakes:
            metrics.update(fake, real=False)
        scores.append(metrics.compute())
    assert scores[0]["kid_mean"] == pytest.approx(scores[1]["kid_mean"], rel=1e-9)
    assert scores[0]["fid"] == pytest.approx(scores[1]["fid"], rel=1e-6)


def test_inception_features_are_computed_with_tf32_off_and_the_settings_restored(inception_cache):
    """cuDNN convolutions default to TF32 on Ampere+ GPUs (torch.backends.cudnn.allow_tf32 is True by default):
    the Inception forward must run in full fp32, whatever the caller set, and leave the caller's settings as
    they were."""
    metrics = InceptionMetrics(feature=64, cache_dir=inception_cache)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, images):
            seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
            return torch.zeros(len(images), 64)

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        metrics.extractor = Recorder()
        metrics.update(smooth_photos(2, 64, seed=1), real=True)
        assert seen == [(False, False)]
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.slow
def test_standard_2048_fid_is_near_zero_against_itself_and_large_against_noise(inception_cache):
    """The standard 2048-d FID (slow on CPU: the 2048x2048 matrix square root takes tens of seconds)."""
    photos, noise = smooth_photos(8, 64, seed=7), white_noise(8, 64, seed=8)
    metrics = InceptionMetrics(cache_dir=inception_cache, kid_subset_size=8, kid_subsets=10)
    same, different = _against_itself_and_against_noise(metrics, photos, noise)
    assert abs(same["fid"]) < 0.01
    assert different["fid"] > 100
    assert different["kid_mean"] > 0.1 > abs(same["kid_mean"])
