"""Reference checkpoints (junyanz/pytorch-CycleGAN-and-pix2pix) load into our models with identical outputs.

The fixtures were written by the reference code itself (fixtures/make_reference_fixtures.py, see
fixtures/README.md): its state dicts and its eval-mode outputs on seeded inputs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from p2p_dist.models import (
    PatchDiscriminator,
    ReferenceCheckpointError,
    UNetGenerator,
    load_reference_discriminator,
    load_reference_generator,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = ["unet_256_batch", "unet_256_instance", "basic_D_batch", "basic_D_instance"]


@cache
def fixture_index() -> dict:
    return torch.load(FIXTURES / "reference_outputs.pt", weights_only=True)


def case(name: str) -> dict:
    return fixture_index()["cases"][name]


def checkpoint(name: str) -> dict[str, torch.Tensor]:
    return torch.load(FIXTURES / case(name)["checkpoint"], weights_only=True)


def our_model(name: str) -> nn.Module:
    config = case(name)["config"]
    if case(name)["kind"] == "G":
        return UNetGenerator(
            config["input_nc"], config["output_nc"], config["num_downs"], ngf=config["ngf"], norm=config["norm"]
        )
    return PatchDiscriminator(config["input_nc"], ndf=config["ndf"], n_layers=config["n_layers"], norm=config["norm"])


def load(name: str, source) -> nn.Module:
    model = our_model(name)
    loader = load_reference_generator if case(name)["kind"] == "G" else load_reference_discriminator
    return loader(source, model)


def assert_matches_reference_output(name: str, model: nn.Module) -> None:
    expected = case(name)
    x = torch.randn(expected["input_shape"], generator=torch.Generator().manual_seed(expected["input_seed"]))
    assert x.double().sum().item() == pytest.approx(expected["input_sum"], abs=1e-6), (
        "torch's seeded randn changed: regenerate the fixtures"
    )
    with torch.no_grad():
        y = model.eval()(x)
    stride = expected["sample_stride"]
    torch.testing.assert_close(y[..., ::stride, ::stride], expected["output_sample"], atol=1e-5, rtol=0)
    # Sums cover the pixels the sample skips.
    assert y.double().sum().item() == pytest.approx(expected["output_sum"], abs=1e-5 * y.numel())
    assert y.double().abs().sum().item() == pytest.approx(expected["output_abs_sum"], abs=1e-5 * y.numel())


@pytest.mark.parametrize("name", CASES)
def test_reference_checkpoint_file_gives_the_reference_output(name):
    assert_matches_reference_output(name, load(name, FIXTURES / case(name)["checkpoint"]))


@pytest.mark.parametrize("name", CASES)
def test_without_the_checkpoint_the_output_differs_so_the_comparison_has_teeth(name):
    torch.manual_seed(0)
    with pytest.raises(AssertionError):
        assert_matches_reference_output(name, our_model(name))


@pytest.mark.parametrize("name", ["unet_256_batch", "basic_D_instance"])
def test_data_parallel_module_prefix_is_stripped(name):
    prefixed = {f"module.{key}": value for key, value in checkpoint(name).items()}
    assert_matches_reference_output(name, load(name, prefixed))


@pytest.mark.parametrize("name", ["unet_256_instance", "basic_D_instance"])
def test_legacy_instance_norm_running_statistics_are_dropped_as_the_reference_does(name):
    state = dict(checkpoint(name))
    model = our_model(name)
    # The first InstanceNorm of each reference layout (encoder level 1 of G, block 1 of D).
    norm_path, ours = {"G": ("model.model.1.model.2", "encoder.1.norm"), "D": ("model.3", "blocks.1.norm")}[
        case(name)["kind"]
    ]
    channels = model.get_submodule(ours).num_features
    state[f"{norm_path}.running_mean"] = torch.randn(channels)
    state[f"{norm_path}.running_var"] = torch.rand(channels) + 0.5
    state[f"{norm_path}.num_batches_tracked"] = torch.tensor(7)
    loader = load_reference_generator if case(name)["kind"] == "G" else load_reference_discriminator
    assert_matches_reference_output(name, loader(state, model))


def test_running_statistics_of_batch_norm_layers_are_loaded_not_dropped():
    model = load("unet_256_batch", checkpoint("unet_256_batch"))
    reference_mean = checkpoint("unet_256_batch")["model.model.1.model.2.running_mean"]
    torch.testing.assert_close(model.encoder[1].norm.running_mean, reference_mean, atol=0, rtol=0)
    assert reference_mean.abs().sum() > 0


def test_a_missing_key_raises_naming_the_reference_key():
    state = dict(checkpoint("unet_256_batch"))
    del state["model.model.1.model.3.model.5.weight"]
    expected = r"missing key 'model\.model\.1\.model\.3\.model\.5\.weight'"
    with pytest.raises(ReferenceCheckpointError, match=expected):
        load_reference_generator(state, our_model("unet_256_batch"))


def test_a_wrong_shape_raises_naming_the_key_and_both_shapes():
    model = UNetGenerator(3, 3, num_downs=8, ngf=4)  # the checkpoint has ngf=2
    expected = r"'model\.model\.0\.weight' has shape \(2, 3, 4, 4\).*\(4, 3, 4, 4\)"
    with pytest.raises(ReferenceCheckpointError, match=expected):
        load_reference_generator(checkpoint("unet_256_batch"), model)


def test_a_checkpoint_of_another_depth_or_network_raises_naming_an_unexpected_key():
    unet_128 = UNetGenerator(3, 3, num_downs=7, ngf=2)
    with pytest.raises(ReferenceCheckpointError, match="unexpected key 'model.model.1.model(.3.model)+"):
        load_reference_generator(checkpoint("unet_256_batch"), unet_128)
    with pytest.raises(ReferenceCheckpointError, match="unexpected key 'model.0.weight'"):
        load_reference_generator(checkpoint("basic_D_batch"), our_model("unet_256_batch"))


def test_a_batch_norm_checkpoint_is_refused_by_an_instance_norm_model():
    model = PatchDiscriminator(6, ndf=2, n_layers=3, norm="instance")
    with pytest.raises(ReferenceCheckpointError, match=r"unexpected key 'model\.3\.weight'"):
        load_reference_discriminator(checkpoint("basic_D_batch"), model)


def test_a_file_that_is_not_a_state_dict_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ReferenceCheckpointError, match="latest_net_G.pth"):
        load_reference_generator(path, our_model("unet_256_batch"))


@pytest.mark.parametrize(
    "reference_name, ours",
    [
        ("unet_128_batch", dict(kind="G", num_downs=7, norm="batch")),
        ("unet_256_batch", dict(kind="G", num_downs=8, norm="batch")),
        ("unet_256_instance", dict(kind="G", num_downs=8, norm="instance")),
        ("unet_512_batch", dict(kind="G", num_downs=9, norm="batch")),
        ("basic_D_batch", dict(kind="D", norm="batch")),
        ("basic_D_instance", dict(kind="D", norm="instance")),
    ],
)
def test_full_size_parameter_counts_equal_the_reference_networks(reference_name, ours):
    with torch.device("meta"):
        if ours["kind"] == "G":
            model = UNetGenerator(3, 3, num_downs=ours["num_downs"], ngf=64, norm=ours["norm"])
        else:
            model = PatchDiscriminator(6, ndf=64, n_layers=3, norm=ours["norm"])
    count = sum(p.numel() for p in model.parameters())
    assert count == fixture_index()["parameter_counts"][reference_name]
