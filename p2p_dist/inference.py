"""Inference: load a trained generator from a run directory, translate label maps to photos, export it.

    generator, cfg = load_generator("runs/demo")                      # latest checkpoint, cuda if available
    translate_paths(generator, cfg, list_label_maps(Path("labels/")), Path("out/"), batch_size=8)
    export_generator(generator, cfg, Path("generator.onnx"), format="onnx", dropout=False)

Inputs are Cityscapes label maps: label-id images (8-bit greyscale, ids 0..33, e.g. ``*_gtFine_labelIds.png``)
or colour maps in the Cityscapes palette (RGB, each pixel mapped to the nearest palette colour). They are
encoded for the generator exactly as the data loaders encode them for training (`encode_labels`).

Test-time behaviour follows the pix2pix paper's protocol by default: dropout stays ON (it is the generator's
noise source) and normalisation layers use their running statistics (eval mode). ``norm_mode="train"``
normalises with the statistics of each batch instead (the reference implementation's test behaviour without
``--eval``; batch-size dependent, use batch size 1 for the paper's numbers) and never updates the running
statistics.

Sizes: a U-Net of depth n takes any height and width divisible by 2**n (128 for unet_128 trained at 128x128
crops, 256 for unet_256, 512 for unet_512), so a unet_256 translates 256x256, 512x256 and 2048x1024 maps.
Other sizes are resized with ``size=(H, W)`` (nearest neighbour, the training loader's rule).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from tqdm import tqdm

from p2p_dist.config import Config, load_config
from p2p_dist.data import labels
from p2p_dist.data.loader import encode_label
from p2p_dist.data.wds_loader import nearest_indices
from p2p_dist.errors import BadFileError, UserError
from p2p_dist.models import LABEL_CHANNELS, PHOTO_CHANNELS, UNetGenerator, build_generator, to_uint8
from p2p_dist.models.test_time import apply_test_time_modes, translation_modes
from p2p_dist.train.checkpoint import latest_checkpoint, load_weights

INPUT_FORMATS = ("auto", "ids", "color")
EXPORT_FORMATS = ("torchscript", "onnx")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
# Stripped from an input's stem to name its output (longest first): city_000000_000019_gtFine_labelIds.png
# -> city_000000_000019_fake.png.
LABEL_SUFFIXES = ("_gtFine_labelIds", "_labelIds")
OUTPUT_SUFFIX = "_fake.png"
CONFIG_NAME = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
# Errors list this many offending files before summarising the rest.
MAX_LISTED = 10

Size = tuple[int, int]  # (height, width), as torch shapes


class TranslateError(UserError, ValueError):
    """A label map that cannot be read or translated, or an output that cannot be written; names the file."""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------------------------- loading


def run_config_path(run_dir: Path) -> Path:
    """RUN/config.yaml, or FileNotFoundError saying why `run_dir` is not a run directory."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found")
    config_path = run_dir / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {CONFIG_NAME}; is this a run directory written by launch/train.py?")
    return config_path


def resolve_checkpoint(run_dir: Path, checkpoint: str | Path | None = None) -> Path:
    """The checkpoint directory of a run: the latest (None), a tag such as ``step_000500``, or a path."""
    run_config_path(Path(run_dir))
    root = Path(run_dir) / CHECKPOINTS_DIR
    if checkpoint is None:
        latest = latest_checkpoint(root)
        if latest is None:
            raise FileNotFoundError(f"{root}: no checkpoint yet (no 'latest' file); has {run_dir} trained?")
        return latest
    for candidate in (root / str(checkpoint), Path(checkpoint)):
        if (candidate / "G").is_dir():
            return candidate
    available = sorted(p.name for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []
    raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} not found under {root} "
                            f"(available: {', '.join(available) or 'none'})")


def load_generator(run_dir: str | Path, checkpoint: str | Path | None = None,
                   device: str | torch.device | None = None) -> tuple[UNetGenerator, Config]:
    """The generator of a training run directory (written by launch/train.py) and the run's config.

    `checkpoint`: None for the latest, a tag such as ``step_000500``, or a checkpoint directory. `device`:
    None picks cuda when available. The generator is returned in eval mode; weights are loaded without
    DeepSpeed, so any ZeRO stage <= 2 and any world size work.
    """
    run_dir = Path(run_dir)
    config_path = run_config_path(run_dir)
    cfg = load_config(config_path)
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    m = cfg.model
    generator = build_generator(LABEL_CHANNELS[cfg.data.label_encoding], PHOTO_CHANNELS,
                                image_size=cfg.data.crop_size, ngf=m.ngf, norm=m.norm, dropout=m.dropout,
                                init_gain=m.init_gain)
    try:
        generator.load_state_dict(load_weights(ckpt, "G"))
    except RuntimeError as err:
        detail = " ".join(str(err).split())  # torch lists every mismatched key on its own line
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."
        raise BadFileError(f"{ckpt}: G weights do not fit the generator described by {config_path}: {detail}") \
            from None
    generator.to(torch.device(device) if device is not None else default_device())
    return generator.eval(), cfg


# ----------------------------------------------------------------------------------------------- label maps


def encode_labels(ids: torch.Tensor, encoding: str) -> torch.Tensor:
    """(B, H, W) uint8 label ids -> float32 (B, C, H, W) generator input, exactly as the training loaders
    produce it: ``"color"`` = the Cityscapes palette colour of each id scaled to [-1, 1] (3 channels),
    ``"onehot"`` = 34 channels in {0, 1}. The result stays on `ids`' device."""
    if encoding not in LABEL_CHANNELS:
        raise ValueError(f"encoding must be one of {', '.join(LABEL_CHANNELS)}, got {encoding!r}")
    if ids.dim() != 3 or ids.dtype != torch.uint8:
        raise ValueError(f"ids must be a (B, H, W) uint8 tensor, got {tuple(ids.shape)} {ids.dtype}")
    labels.check_label_ids(ids, "ids")
    return encode_label(ids, encoding)


def read_label_ids(path: Path, input_format: str = "auto") -> np.ndarray:
    """A label map file -> (H, W) uint8 Cityscapes label ids.

    ``auto``: single-channel images (greyscale, 16-bit) hold ids; palette ("P") and RGB(A) images are colour
    maps. ``ids`` also accepts RGB images whose three channels are equal (greyscale saved as RGB); for "P"
    images it takes the palette indices. ``color`` maps every pixel to the nearest palette colour.
    """
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
    try:
        with Image.open(path) as img:
            img.load()
            single_band = len(img.getbands()) == 1
            as_ids = input_format == "ids" or (input_format == "auto" and single_band and img.mode != "P")
            array = np.asarray(img if as_ids and single_band else img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError) as err:  # PIL raises SyntaxError for some corrupt files
        raise TranslateError(f"{path}: cannot read the image ({err})") from None
    if not as_ids:
        return labels.color_to_ids(array)
    if array.ndim == 3:
        if not ((array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all()):
            raise TranslateError(f"{path}: read as label ids, but it is a colour image whose channels differ; "
                                 f"use input format 'color' (or 'auto')")
        array = array[..., 0]
    if not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise TranslateError(f"{path}: label ids must be integers, got pixel type {array.dtype}")
    problem = labels.label_id_problem(array)
    if problem:
        raise TranslateError(f"{path}: {problem}")
    return array.astype(np.uint8)


def resize_ids(ids: np.ndarray, size: Size) -> np.ndarray:
    """Nearest-neighbour resize of (H, W) label ids to `size` = (height, width), with the training loader's
    pixel-centre rule, so a map resized here is encoded as the loader would have encoded it."""
    rows = nearest_indices(ids.shape[0], size[0])
    cols = nearest_indices(ids.shape[1], size[1])
    return ids[rows[:, None], cols[None, :]]


def list_label_maps(path: str | Path) -> list[Path]:
    """The label maps named by `path`: a file, the image files directly inside a folder (sorted; not
    recursive), or a glob pattern such as ``gtFine/val/*/*_labelIds.png``."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise FileNotFoundError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        return found
    anchor = Path(path.anchor) if path.is_absolute() else Path(".")
    pattern = str(path.relative_to(anchor)) if path.is_absolute() else str(path)
    found = sorted(p for p in anchor.glob(pattern) if p.is_file())
    if not found:
        raise FileNotFoundError(f"{path}: no such file or folder, and no file matches it as a pattern")
    return found


def output_name(path: Path) -> str:
    """``x_gtFine_labelIds.png`` / ``x_labelIds.png`` / ``x.png`` -> ``x_fake.png``."""
    stem = path.stem
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem + OUTPUT_SUFFIX


# ----------------------------------------------------------------------------------------------- test-time modes


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the dropout draws without disturbing the caller's RNG streams (no-op for None)."""
    if seed is None:
        yield
        return
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------- translation


def size_hint(multiple: int) -> str:
    return (f"the generator takes heights and widths that are multiples of {multiple} (e.g. {multiple}x{multiple}, "
            f"{2 * multiple}x{multiple}, {4 * multiple}x{2 * multiple}); resize with size=(H, W) / --size WxH")


@dataclass(frozen=True)
class _Job:
    source: Path
    output: Path
    size: Size  # the size the generator sees


def _plan(inputs: list[Path], output_dir: Path, size: Size | None, multiple: int) -> list[_Job]:
    """Check every input before any work: readable header, a size the generator takes, a unique output name."""
    if size is not None and (size[0] <= 0 or size[1] <= 0 or size[0] % multiple or size[1] % multiple):
        raise TranslateError(f"size {size[1]}x{size[0]} (WxH): {size_hint(multiple)}")
    jobs, problems, by_output, size_refused = [], [], {}, False
    for source in map(Path, inputs):
        try:
            with Image.open(source) as img:
                native = (img.height, img.width)
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            problems.append(f"{source}: cannot read the image ({err})")
            continue
        target = size or native
        if target[0] % multiple or target[1] % multiple:
            problems.append(f"{source}: size {native[1]}x{native[0]} (WxH) is not accepted")
            size_refused = True
            continue
        output = output_dir / output_name(source)
        if output in by_output:
            problems.append(f"{source} and {by_output[output]} would both be written to {output}")
            continue
        by_output[output] = source
        jobs.append(_Job(source, output, target))
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        hint = f"\n({size_hint(multiple)})" if size_refused else ""
        raise TranslateError(
            f"{len(problems)} of {len(inputs)} label maps cannot be translated:\n  {listed}{more}{hint}")
    return jobs


def _batches(jobs: list[_Job], batch_size: int) -> Iterator[list[_Job]]:
    """Batches of same-size jobs, sizes in order of first appearance, inputs in their given order."""
    by_size: dict[Size, list[_Job]] = {}
    for job in jobs:
        by_size.setdefault(job.size, []).append(job)
    for group in by_size.values():
        for start in range(0, len(group), batch_size):
            yield group[start: start + batch_size]


def translate_paths(
    generator: UNetGenerator,
    cfg: Config,
    inputs: list[Path],
    output_dir: str | Path,
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    size: Size | None = None,
    dropout: bool = True,
    norm_mode: str = "eval",
    input_format: str = "auto",
    seed: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Translate label map files to photos: one ``<stem>_fake.png`` per input in `output_dir` (the stem
    without ``_gtFine_labelIds`` / ``_labelIds``), at the size the generator saw. Returns the output paths in
    input order.

    `size` = (height, width): None translates at each map's own size (it must be divisible by
    ``generator.size_multiple``); otherwise every map is resized to it (nearest neighbour). Maps of
    different sizes are batched by size. `device`: None keeps the generator's device. `seed` fixes the
    dropout noise. Every input is checked before anything is translated; a bad one raises `TranslateError`
    naming it (and the sizes the generator takes).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    generator.to(device)
    output_dir = Path(output_dir)
    jobs = _plan(list(inputs), output_dir, size, generator.size_multiple)
    output_dir.mkdir(parents=True, exist_ok=True)
    encoding = cfg.data.label_encoding
    with (translation_modes(generator, dropout=dropout, norm_mode=norm_mode), _seeded(seed, device),
          torch.inference_mode(), tqdm(total=len(jobs), unit="img", desc="translate", disable=not progress) as bar):
        for batch in _batches(jobs, batch_size):
            ids = []
            for job in batch:
                array = read_label_ids(job.source, input_format)
                ids.append(array if array.shape == job.size else resize_ids(array, job.size))
            label = encode_labels(torch.from_numpy(np.stack(ids)).to(device), encoding)
            for job, image in zip(batch, to_uint8(generator(label)).permute(0, 2, 3, 1).cpu().numpy()):
                try:
                    Image.fromarray(image).save(job.output)
                except OSError as err:
                    raise TranslateError(f"{job.output}: cannot write the photo ({err})") from None
            bar.update(len(batch))
    return [job.output for job in jobs]


# ----------------------------------------------------------------------------------------------- export


class _SizeChecked(nn.Module):
    """Wraps a traced generator so that the exported TorchScript rejects sizes it cannot take, by name."""

    def __init__(self, traced: nn.Module, multiple: int) -> None:
        super().__init__()
        self.traced = traced
        self.multiple = multiple

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        height, width = label.shape[-2], label.shape[-1]
        if height % self.multiple != 0 or width % self.multiple != 0:
            raise ValueError("the generator needs height and width divisible by " + str(self.multiple)
                             + "; got " + str(height) + "x" + str(width) + " (HxW)")
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


def sidecar_path(path: str | Path) -> Path:
    """The JSON file describing a model file beside it: ``generator.onnx`` -> ``generator.json`` (exports
    here, the FCN-score segmenter's checkpoints in p2p_dist.eval.segmenter)."""
    return Path(path).with_suffix(".json")


def _describe_export(cfg: Config, path: Path, fmt: str, multiple: int, dropout: bool,
                     checkpoint: str | None) -> dict:
    encoding = cfg.data.label_encoding
    if encoding == "color":
        label_input = {"encoding": "color", "channels": 3, "value_range": [-1.0, 1.0],
                       "how": "channel c of pixel (y, x) = palette[id(y, x)][c] / 127.5 - 1, with the Cityscapes "
                              "label-id palette below (index = label id)",
                       "palette": labels.PALETTE.tolist()}
    else:
        label_input = {"encoding": "onehot", "channels": labels.NUM_IDS, "value_range": [0.0, 1.0],
                       "how": "channel k of pixel (y, x) = 1 if its Cityscapes label id is k else 0"}
    return {
        "format": fmt,
        "file": path.name,
        "input": {"name": "label", "dtype": "float32", "layout": "NCHW", **label_input},
        "output": {"name": "photo", "dtype": "float32", "layout": "NCHW", "channels": PHOTO_CHANNELS,
                   "value_range": [-1.0, 1.0], "to_uint8": "round((photo + 1) * 127.5)"},
        "accepted_sizes": {"height_multiple_of": multiple, "width_multiple_of": multiple,
                           "trained_at": [cfg.data.crop_size, cfg.data.crop_size], "batch": "any"},
        "dropout": dropout,
        "norm_mode": "eval",
        "model": {"architecture": f"unet_{multiple}", "ngf": cfg.model.ngf, "norm": cfg.model.norm,
                  "label_encoding": encoding},
        "checkpoint": checkpoint,
    }


def export_generator(
    generator: UNetGenerator,
    cfg: Config,
    path: str | Path,
    format: str = "torchscript",  # noqa: A002 - the natural name in the CLI and the docs
    example_size: Size | None = None,
    *,
    dropout: bool = True,
    checkpoint: str | None = None,
) -> Path:
    """Write a standalone generator (TorchScript or ONNX, float32, CPU weights) to `path` and a JSON sidecar
    (`sidecar_path`) describing its input encoding, value ranges and accepted sizes; return the sidecar path.

    The exported model runs with norm layers in eval mode, and with dropout active when `dropout` (and the
    model has dropout layers): each call then draws fresh noise. Height, width and batch size are dynamic
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
    model = copy.deepcopy(generator).cpu().float()
    apply_test_time_modes(model, dropout, "eval")
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
        torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, input_names=["label"],
                          output_names=["photo"], dynamic_shapes=dynamic, verbose=False)
    sidecar = sidecar_path(path)
    sidecar.write_text(json.dumps(_describe_export(cfg, path, format, multiple, stochastic, checkpoint), indent=1))
    return sidecar
