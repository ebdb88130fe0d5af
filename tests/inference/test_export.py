"""Exported generators (TorchScript, ONNX in onnxruntime) compute what the model computes; sidecars describe them."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from p2p_dist.inference.export import export_generator
from p2p_dist.inference.label_maps import encode_labels
from p2p_dist.models.translation_modes import translation_modes
from p2p_dist.train.trained_generator import load_generator

from inference_helpers import block_ids

# Loading the TorchScript files is part of what is tested; torch's deprecation notice for it is not news.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def labels_batch(encoding: str, batch: int, height: int, width: int) -> torch.Tensor:
    ids = np.stack([block_ids(height, width, seed=20 + i) for i in range(batch)])
    return encode_labels(torch.from_numpy(ids), encoding)


def eager(generator, label: torch.Tensor, dropout: bool, norm_mode: str = "per-image") -> torch.Tensor:
    with torch.no_grad(), translation_modes(generator, dropout=dropout, norm_mode=norm_mode) as translate:
        return translate(label)


def onnx_session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def onnx_export(color_run, tmp_path_factory):
    """One deterministic ONNX export for the module: the dynamo exporter takes ~20 s on this CPU."""
    generator, cfg = load_generator(color_run, device="cpu")
    path = tmp_path_factory.mktemp("onnx") / "generator.onnx"
    sidecar = export_generator(generator, cfg, path, "onnx", dropout=False, checkpoint="step_000007")
    return generator, cfg, path, sidecar


def test_torchscript_export_matches_the_model_at_any_accepted_size_and_batch(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    path = tmp_path / "generator.pt"
    sidecar = export_generator(generator, cfg, path, "torchscript", dropout=False)
    exported = torch.jit.load(str(path))
    for batch, height, width in ((1, 128, 128), (2, 256, 384)):
        label = labels_batch("color", batch, height, width)
        with torch.no_grad():
            out = exported(label)
        assert out.shape == (batch, 3, height, width)
        torch.testing.assert_close(out, eager(generator, label, dropout=False), rtol=0, atol=1e-5)
    with pytest.raises(torch.jit.Error, match="divisible by 128; got 128x200"):
        exported(torch.zeros(1, 3, 128, 200))
    meta = json.loads(sidecar.read_text())
    assert sidecar == tmp_path / "generator.json" and meta["format"] == "torchscript" and meta["dropout"] is False
    assert meta["norm_mode"] == "per-image"


def test_torchscript_export_with_running_statistics_on_request(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    sidecar = export_generator(
        generator, cfg, tmp_path / "running.pt", "torchscript", dropout=False, norm_mode="running"
    )
    exported = torch.jit.load(str(tmp_path / "running.pt"))
    label = labels_batch("color", 2, 128, 256)
    with torch.no_grad():
        out = exported(label)
    torch.testing.assert_close(out, eager(generator, label, dropout=False, norm_mode="running"), rtol=0, atol=1e-5)
    assert (out - eager(generator, label, dropout=False)).abs().max() > 0.05
    assert json.loads(sidecar.read_text())["norm_mode"] == "running"


def test_torchscript_export_with_dropout_draws_the_same_noise_as_the_model_from_the_torch_rng(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    export_generator(generator, cfg, tmp_path / "noisy.pt", "torchscript", dropout=True)
    exported = torch.jit.load(str(tmp_path / "noisy.pt"))
    label = labels_batch("color", 1, 128, 256)
    torch.manual_seed(3)
    reference = eager(generator, label, dropout=True)
    torch.manual_seed(3)
    with torch.no_grad():
        first = exported(label)
        second = exported(label)
    torch.testing.assert_close(first, reference, rtol=0, atol=1e-5)
    assert (first - second).abs().max() > 1e-3  # fresh noise on every call
    assert json.loads((tmp_path / "noisy.json").read_text())["dropout"] is True


def test_onnx_export_matches_the_model_in_onnxruntime_with_dynamic_batch_and_size(onnx_export):
    generator, _, path, _ = onnx_export
    session = onnx_session(path)
    assert [(i.name, i.shape[1]) for i in session.get_inputs()] == [("label", 3)]
    for batch, height, width in ((1, 128, 128), (3, 256, 512)):
        label = labels_batch("color", batch, height, width)
        (out,) = session.run(["photo"], {"label": label.numpy()})
        assert out.shape == (batch, 3, height, width)
        np.testing.assert_allclose(out, eager(generator, label, dropout=False).numpy(), rtol=0, atol=1e-5)


def test_onnx_sidecar_describes_encoding_value_ranges_and_accepted_sizes(onnx_export):
    _, _cfg, path, sidecar = onnx_export
    meta = json.loads(sidecar.read_text())
    assert meta["file"] == path.name and meta["format"] == "onnx" and meta["checkpoint"] == "step_000007"
    assert meta["input"]["encoding"] == "color" and meta["input"]["channels"] == 3
    assert meta["input"]["value_range"] == [-1.0, 1.0] and meta["output"]["value_range"] == [-1.0, 1.0]
    assert meta["input"]["palette"][7] == [128, 64, 128]  # road
    assert meta["accepted_sizes"]["height_multiple_of"] == 128 == meta["accepted_sizes"]["width_multiple_of"]
    assert meta["dropout"] is False and meta["norm_mode"] == "per-image"
    assert meta["geometry"]["input_size"] == [128, 128] and "nearest-neighbour" in meta["geometry"]["how"]


def test_export_refuses_unknown_formats_and_example_sizes_the_generator_cannot_take(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    with pytest.raises(ValueError, match="torchscript, onnx"):
        export_generator(generator, cfg, tmp_path / "g.bin", "tflite")
    with pytest.raises(ValueError, match="100x128 .*multiples of 128"):
        export_generator(generator, cfg, tmp_path / "g.pt", "torchscript", example_size=(100, 128))


@pytest.mark.slow
def test_onnx_export_with_dropout_keeps_the_noise_in_onnxruntime(onehot_run, tmp_path):
    generator, cfg = load_generator(onehot_run, device="cpu")
    sidecar = export_generator(generator, cfg, tmp_path / "noisy.onnx", "onnx", dropout=True)
    meta = json.loads(sidecar.read_text())
    assert meta["dropout"] is True and meta["input"]["encoding"] == "onehot" and meta["input"]["channels"] == 34
    session = onnx_session(tmp_path / "noisy.onnx")  # default graph optimisations, as users run it
    label = labels_batch("onehot", 1, 128, 256).numpy()
    first, second = (session.run(None, {"label": label})[0] for _ in range(2))
    assert np.abs(first - second).max() > 1e-3
    deterministic = eager(generator, torch.from_numpy(label), dropout=False).numpy()
    # Noisy, yet the same model: closer to its own dropout-free output than to another scene's.
    other_scene = eager(generator, labels_batch("onehot", 1, 128, 256).roll(64, dims=3), dropout=False).numpy()
    assert np.abs(first - deterministic).mean() < np.abs(other_scene - deterministic).mean()
