"""Test-time norm modes: per-image statistics by default, one image at a time, never across images or ranks."""

import copy

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from p2p_dist.models import UNetGenerator
from p2p_dist.models.dropout import CoinFlipDropout
from p2p_dist.models.translation_modes import recorded_norm_mode, translation_modes
from p2p_dist.runtime import free_port


@pytest.fixture(autouse=True)
def every_test_on_one_thread(one_thread):
    """Small models throughout: see `one_thread`."""


def trained_like(norm: str = "batch", seed: int = 0) -> UNetGenerator:
    """A small unet_128 whose running statistics are far from any single image's (as after training)."""
    torch.manual_seed(seed)
    generator = UNetGenerator(3, num_downs=7, ngf=4, norm=norm)
    for layer in generator.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
            layer.weight.data.uniform_(0.5, 1.5)
            layer.bias.data.uniform_(-0.5, 0.5)
    return generator.eval()


def labels(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def paper_protocol(generator: UNetGenerator, label: torch.Tensor) -> torch.Tensor:
    """The reference's test.py without --eval at batch size 1: batch norm in training mode on one image at a time
    (on a copy, whose running statistics it updates), dropout off here."""
    model = copy.deepcopy(generator).train()
    for layer in model.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.eval()
    with torch.no_grad():
        return torch.cat([model(image) for image in label.split(1)])


@pytest.mark.parametrize("norm", ["batch", "syncbatch"])
def test_by_default_each_image_is_normalised_with_its_own_statistics_as_the_paper_tests(norm):
    generator, label = trained_like(norm), labels(3)
    with translation_modes(generator, dropout=False) as translate, torch.no_grad():
        photos = translate(label)
    torch.testing.assert_close(photos, paper_protocol(generator, label), atol=2e-5, rtol=0)
    with translation_modes(generator, dropout=False, norm_mode="running") as translate, torch.no_grad():
        running = translate(label)
    assert (running - photos).abs().max() > 0.05  # the running statistics are another protocol


def test_per_image_photos_do_not_depend_on_the_batch_size_even_with_dropout_noise():
    generator, label = trained_like(), labels(8)
    with translation_modes(generator) as translate, torch.no_grad():
        torch.manual_seed(5)
        whole = translate(label)
        torch.manual_seed(5)
        singles = torch.cat([translate(image) for image in label.split(1)])
        torch.manual_seed(5)
        threes = torch.cat([translate(part) for part in label.split(3)])
    assert torch.equal(whole, singles) and torch.equal(whole, threes)


def test_per_image_statistics_hold_even_when_a_norm_layer_is_handed_a_batch():
    """Each layer computes per-image statistics itself (also what an exported generator runs), so a batch
    through the bare generator gives each image's own photo too."""
    generator, label = trained_like(), labels(4)
    with translation_modes(generator, dropout=False), torch.no_grad():
        batched = generator(label)
    torch.testing.assert_close(batched, paper_protocol(generator, label), atol=2e-5, rtol=0)


def test_a_padded_last_batch_does_not_change_the_photos_of_its_real_images():
    generator, label = trained_like(), labels(3)
    padded = torch.cat([label[2:], label[:2]])  # one real image and two wrap-around repeats
    with translation_modes(generator, dropout=False) as translate, torch.no_grad():
        alone, with_repeats = translate(label[2:]), translate(padded)[:1]
    assert torch.equal(alone, with_repeats)


def test_per_image_syncbatch_never_all_reduces_so_the_world_size_cannot_matter(monkeypatch):
    """With a process group up (as under DeepSpeed), syncbatch in training mode all-reduces its statistics over the
    ranks; the per-image mode must not: its photos are those of a single process."""
    generator, label = trained_like("syncbatch"), labels(2)
    expected = paper_protocol(trained_like("batch"), label)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:

        def no_all_reduce(*args, **kwargs):
            raise AssertionError("per-image statistics must not be all-reduced across ranks")

        monkeypatch.setattr(dist_fn, "all_reduce", no_all_reduce)
        monkeypatch.setattr(dist, "all_reduce", no_all_reduce)
        with translation_modes(generator, dropout=False) as translate, torch.no_grad():
            photos = translate(label)
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(photos, expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("norm_mode", ["per-image", "running"])
def test_modes_layers_and_stored_statistics_are_restored_and_unchanged(norm_mode):
    generator = trained_like().train()
    before = copy.deepcopy(generator.state_dict())
    with translation_modes(generator, norm_mode=norm_mode) as translate, torch.no_grad():
        translate(labels(2))
    assert all(layer.training for layer in generator.modules())
    assert not any("forward" in layer.__dict__ for layer in generator.modules())
    assert all(layer.masks == "auto" for layer in generator.modules() if isinstance(layer, CoinFlipDropout))
    for key, value in generator.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_test_time_dropout_draws_torchs_masks_the_noise_an_export_draws_from_the_same_seed():
    generator = trained_like()
    torch.manual_seed(5)
    with translation_modes(generator, norm_mode="running") as translate, torch.no_grad():
        photos = translate(labels(2))
    reference = copy.deepcopy(generator)
    for layer in reference.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.forward = torch.nn.Dropout(0.5).train().forward  # torch's own dropout
    torch.manual_seed(5)
    with torch.no_grad():
        torch.testing.assert_close(photos, reference(labels(2)), rtol=0, atol=0)


def test_the_old_train_and_eval_modes_are_refused_by_name():
    for old in ("train", "eval"):
        with (
            pytest.raises(ValueError, match="norm_mode must be one of per-image, running"),
            translation_modes(trained_like(), norm_mode=old),
        ):
            pass


def test_reports_name_the_statistics_used():
    assert recorded_norm_mode(trained_like("batch"), "per-image") == "per-image"
    assert recorded_norm_mode(trained_like("syncbatch"), "running") == "running"
    assert recorded_norm_mode(trained_like("instance"), "running") == "instance"
