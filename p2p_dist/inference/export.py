"""Export a generator as a standalone TorchScript or ONNX file, with a JSON sidecar that describes its input
encoding, value ranges and accepted sizes (what a user of the file needs without this project)."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from p2p_dist.config import Config
from p2p_dist.data import labels
from p2p_dist.inference.label_maps import Size, TranslateError
from p2p_dist.inference.translate import size_hint
from p2p_dist.models import LABEL_CHANNELS, PHOTO_CHANNELS, UNetGenerator, sidecar_path
from p2p_dist.models.translation_modes import DEFAULT_NORM_MODE, apply_test_time_modes, recorded_norm_mode
from p2p_dist.models.unet import use_framework_kernels

EXPORT_FORMATS = ("torchscript", "onnx")
NORM_DESCRIPTIONS = {
    "per-image": "batch norm with each image's own statistics (mean and variance over its height and width), "
    "whatever the batch: the pix2pix paper's test protocol (batch size 1, train mode)",
    "running": "batch norm with the running statistics stored in training",
    "instance": "instance norm: each image's own statistics",
}


class _SizeChecked(nn.Module):
    """Wraps a traced generator so that the exported TorchScript rejects sizes it cannot take, by name."""

    def __init__(self, traced: nn.Module, multiple: int) -> None:
        super().__init__()
        self.traced = traced
        self.multiple = multiple

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        height, width = label.shape[-2], label.shape[-1]
        if height % self.multiple != 0 or width % self.multiple != 0:
            raise ValueError(
                "the generator needs height and width divisible by "
                + str(self.multiple)
                + "; got "
                + str(height)
                + "x"
                + str(width)
                + " (HxW)"
            )
        return self.traced(label)


class _MaskDropout(nn.Module):
    """Dropout written as an explicit random mask for ONNX: onnxruntime's graph optimiser deletes Dropout
    nodes even when their training_mode input is true, which would silently turn the noise off."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand_like(x) >= self.p).to(x.dtype)
        return x * keep * (1.0 / (1.0 - self.p))


def _replace_dropout(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Dropout) and child.training:
            setattr(module, name, _MaskDropout(child.p))
        else:
            _replace_dropout(child)


def _has_active_dropout(module: nn.Module) -> bool:
    return any(isinstance(layer, nn.modules.dropout._DropoutNd) and layer.training for layer in module.modules())


def _describe_export(
    cfg: Config, path: Path, fmt: str, multiple: int, dropout: bool, norm_mode: str, checkpoint: str | None
) -> dict:
    encoding = cfg.data.label_encoding
    if encoding == "color":
        label_input = {
            "encoding": "color",
            "channels": 3,
            "value_range": [-1.0, 1.0],
            "how": "channel c of pixel (y, x) = palette[id(y, x)][c] / 127.5 - 1, with the Cityscapes "
            "label-id palette below (index = label id)",
            "palette": labels.PALETTE.tolist(),
        }
    else:
        label_input = {
            "encoding": "onehot",
            "channels": labels.NUM_IDS,
            "value_range": [0.0, 1.0],
            "how": "channel k of pixel (y, x) = 1 if its Cityscapes label id is k else 0",
        }
    return {
        "format": fmt,
        "file": path.name,
        "input": {"name": "label", "dtype": "float32", "layout": "NCHW", **label_input},
        "output": {
            "name": "photo",
            "dtype": "float32",
            "layout": "NCHW",
            "channels": PHOTO_CHANNELS,
            "value_range": [-1.0, 1.0],
            "to_uint8": "round((photo + 1) * 127.5)",
        },
        "accepted_sizes": {
            "height_multiple_of": multiple,
            "width_multiple_of": multiple,
            "trained_at": [cfg.data.crop_size, cfg.data.crop_size],
            "batch": "any",
        },
        "geometry": {
            "input_size": [cfg.data.crop_size, cfg.data.crop_size],
            "how": f"feed label maps as in training: label ids resized nearest-neighbour to {cfg.data.crop_size}x"
            f"{cfg.data.crop_size} whatever their aspect ratio (2:1 Cityscapes frames are squashed; source "
            f"pixel of output pixel i = min(floor((i + 0.5) * in / out), in - 1) per axis), then encoded; "
            f"resize the photo back to the map's size if wanted. Other accepted sizes show objects at "
            f"another scale than the model was trained on.",
        },
        "dropout": dropout,
        "norm_mode": norm_mode,
        "norm_statistics": NORM_DESCRIPTIONS[norm_mode],
        "model": {
            "architecture": f"unet_{multiple}",
            "ngf": cfg.model.ngf,
            "norm": cfg.model.norm,
            "label_encoding": encoding,
        },
        "checkpoint": checkpoint,
    }


def export_generator(
    generator: UNetGenerator,
    cfg: Config,
    path: str | Path,
    format: str = "torchscript",
    example_size: Size | None = None,
    *,
    dropout: bool = True,
    norm_mode: str = DEFAULT_NORM_MODE,
    checkpoint: str | None = None,
) -> Path:
    """Write a standalone generator (TorchScript or ONNX, float32, CPU weights) to `path` and a JSON sidecar
    (`sidecar_path`) describing its input encoding, value ranges and accepted sizes; return the sidecar path.

    The exported model normalises with `norm_mode`'s statistics (per-image: each image of a batch its own, the
    default; running: the stored running statistics), and runs dropout when `dropout` (and the model has
    dropout layers): each call then draws fresh noise. Height, width and batch size are dynamic
    (any multiple of ``generator.size_multiple``). `example_size` = (height, width), default the training
    crop: the size traced. TorchScript: ``torch.jit.trace`` inside a scripted size check.
    ONNX: ``torch.onnx.export(dynamo=True)``, opset 20+, one file (weights inline). `checkpoint` is recorded
    in the sidecar.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    path = Path(path)
    if sidecar_path(path) == path:
        raise TranslateError(f"{path}: the export path must not end in .json (that name is the sidecar's)")
    multiple = generator.size_multiple
    height, width = example_size or (cfg.data.crop_size, cfg.data.crop_size)
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        raise ValueError(f"example_size {height}x{width} (HxW): {size_hint(multiple)}")
    model = copy.deepcopy(generator).cpu().float().requires_grad_(False)  # traced without training's autograd
    use_framework_kernels(model)  # one portable graph: the matmul form is a training speed-up of CPUs
    apply_test_time_modes(model, dropout, norm_mode)
    recorded = recorded_norm_mode(model, norm_mode)
    stochastic = _has_active_dropout(model)
    channels = LABEL_CHANNELS[cfg.data.label_encoding]
    path.parent.mkdir(parents=True, exist_ok=True)
    if format == "torchscript":
        example = torch.zeros(1, channels, height, width)
        with warnings.catch_warnings():
            # Expected: the U-Net's own size check becomes a constant in the trace (`_SizeChecked` replaces
            # it), and torch marks TorchScript as deprecated in favour of torch.export (ONNX here).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
            # Tracing a stochastic model cannot be checked by re-running it: the outputs differ by design.
            traced = torch.jit.trace(model, example, check_trace=not stochastic)
            torch.jit.save(torch.jit.script(_SizeChecked(traced, multiple)), str(path))
    else:
        if stochastic:
            _replace_dropout(model)
        # torch.export specialises a dimension that is 1 somewhere in the graph (batch 1, or the U-Net's 1x1
        # bottleneck at one multiple), so trace with batch 2 and at least two multiples per side.
        example = torch.zeros(2, channels, max(height, 2 * multiple), max(width, 2 * multiple))
        dim = torch.export.Dim
        dynamic = ({0: dim("batch"), 2: multiple * dim("height_blocks"), 3: multiple * dim("width_blocks")},)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            input_names=["label"],
            output_names=["photo"],
            dynamic_shapes=dynamic,
            verbose=False,
        )
    sidecar = sidecar_path(path)
    sidecar.write_text(
        json.dumps(_describe_export(cfg, path, format, multiple, stochastic, recorded, checkpoint), indent=1)
    )
    return sidecar
