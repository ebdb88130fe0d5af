"""Translate label-map files to photo files with a generator, batched by size, every input checked first.

Test-time behaviour follows the pix2pix paper's protocol by default: dropout stays ON (it is the generator's
noise source) and batch-norm layers normalise each image with its own statistics, one image at a time
(``norm_mode="per-image"``: the paper's batch size 1 in train mode; photos do not depend on the batch size).
``norm_mode="running"`` uses the running statistics of training instead. The stored statistics never change.
See p2p_dist.models.translation_modes.

Geometry: by default every map is fed the way the model saw its training data: its label ids resized
nearest-neighbour (the training loader's pixel-centre rule) to the square ``data.crop_size`` x
``data.crop_size``, whatever its aspect ratio (a 2:1 Cityscapes frame is squashed, as the loader and the
reference's prepare_cityscapes_dataset.py squash them), and the photo is written at that size.
``output_size="input"`` resizes the photo back to the input map's own size (bicubic). ``size=(H, W)`` feeds
another size instead: a U-Net of depth n takes any height and width divisible by 2**n (128 for unet_128,
256 for unet_256), but objects then appear at another scale than in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from p2p_dist.config import Config
from p2p_dist.inference.label_maps import Size, TranslateError, encode_labels, read_label_ids, resize_ids
from p2p_dist.models import UNetGenerator, to_uint8
from p2p_dist.models.translation_modes import DEFAULT_NORM_MODE, translation_modes
from p2p_dist.progress import progress_bar

# Stripped from an input's stem to name its output (longest first): city_000000_000019_gtFine_labelIds.png
# -> city_000000_000019_fake.png.
LABEL_SUFFIXES = ("_gtFine_labelIds", "_labelIds")
OUTPUT_SUFFIX = "_fake.png"
# Photo sizes written: the generated size (the training crop, or size=), or each input map's own size.
OUTPUT_SIZES = ("model", "input")
# Errors list this many offending files before summarising the rest.
MAX_LISTED = 10


def output_name(path: Path) -> str:
    """``x_gtFine_labelIds.png`` / ``x_labelIds.png`` / ``x.png`` -> ``x_fake.png``."""
    stem = path.stem
    for suffix in LABEL_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem + OUTPUT_SUFFIX


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed the dropout draws without disturbing the caller's RNG streams (no-op for None)."""
    if seed is None:
        yield
        return
    cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


def size_hint(multiple: int) -> str:
    return (
        f"the generator takes heights and widths that are multiples of {multiple} (e.g. {multiple}x{multiple}, "
        f"{2 * multiple}x{multiple}, {4 * multiple}x{2 * multiple}); it was trained on {multiple}x{multiple}"
    )


def training_size(cfg: Config) -> Size:
    """(height, width) of the training crops: what the generator is fed by default."""
    return cfg.data.crop_size, cfg.data.crop_size


@dataclass(frozen=True)
class _Job:
    source: Path
    output: Path
    size: Size  # the size the generator sees
    written: Size  # the size of the photo written


def _plan(inputs: list[Path], output_dir: Path, size: Size, multiple: int, output_size: str) -> list[_Job]:
    """Check every input before any work: readable header, a unique output name."""
    if size[0] <= 0 or size[1] <= 0 or size[0] % multiple or size[1] % multiple:
        raise TranslateError(f"size {size[1]}x{size[0]} (WxH): {size_hint(multiple)}")
    jobs, problems, by_output = [], [], {}
    for source in map(Path, inputs):
        try:
            with Image.open(source) as img:
                native = (img.height, img.width)
        except (OSError, UnidentifiedImageError, SyntaxError) as err:
            problems.append(f"{source}: cannot read the image ({err})")
            continue
        output = output_dir / output_name(source)
        if output in by_output:
            problems.append(f"{source} and {by_output[output]} would both be written to {output}")
            continue
        by_output[output] = source
        jobs.append(_Job(source, output, size, native if output_size == "input" else size))
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise TranslateError(f"{len(problems)} of {len(inputs)} label maps cannot be translated:\n  {listed}{more}")
    return jobs


def _batches(jobs: list[_Job], batch_size: int) -> Iterator[list[_Job]]:
    """Batches of jobs in their given order."""
    for start in range(0, len(jobs), batch_size):
        yield jobs[start : start + batch_size]


def _save(image: np.ndarray, job: _Job) -> None:
    """Write one (H, W, 3) uint8 photo at the job's output size (bicubic when that is not the generated size)."""
    photo = Image.fromarray(image)
    if job.written != job.size:
        photo = photo.resize((job.written[1], job.written[0]), Image.Resampling.BICUBIC)
    try:
        photo.save(job.output)
    except OSError as err:
        raise TranslateError(f"{job.output}: cannot write the photo ({err})") from None


def translate_paths(
    generator: UNetGenerator,
    cfg: Config,
    inputs: list[Path],
    output_dir: str | Path,
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    size: Size | None = None,
    output_size: str = "model",
    dropout: bool = True,
    norm_mode: str = DEFAULT_NORM_MODE,
    input_format: str = "auto",
    seed: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Translate label map files to photos: one ``<stem>_fake.png`` per input in `output_dir` (the stem
    without ``_gtFine_labelIds`` / ``_labelIds``). Returns the output paths in input order.

    `size` = (height, width) the generator sees: None = the training geometry, the square
    ``cfg.data.crop_size`` (see the module docstring); every map's ids are resized to it nearest-neighbour.
    `output_size`: ``"model"`` writes the photo at that size, ``"input"`` resizes it back to the map's own size.
    `device`: None keeps the generator's device. `seed` fixes the dropout noise. Every input is checked before
    anything is translated; a bad one raises `TranslateError` naming it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if output_size not in OUTPUT_SIZES:
        raise ValueError(f"output_size must be one of {', '.join(OUTPUT_SIZES)}, got {output_size!r}")
    device = torch.device(device) if device is not None else next(generator.parameters()).device
    generator.to(device)
    output_dir = Path(output_dir)
    size = size or training_size(cfg)
    jobs = _plan(list(inputs), output_dir, size, generator.size_multiple, output_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    encoding = cfg.data.label_encoding
    with (
        translation_modes(generator, dropout=dropout, norm_mode=norm_mode) as translate,
        _seeded(seed, device),
        torch.inference_mode(),
        progress_bar(len(jobs), "translate", "img", enabled=progress) as bar,
    ):
        for batch in _batches(jobs, batch_size):
            ids = []
            for job in batch:
                array = read_label_ids(job.source, input_format)
                ids.append(array if array.shape == job.size else resize_ids(array, job.size))
            label = encode_labels(torch.from_numpy(np.stack(ids)).to(device), encoding)
            for job, image in zip(batch, to_uint8(translate(label)).permute(0, 2, 3, 1).cpu().numpy()):
                _save(image, job)
            bar.update(len(batch))
    return [job.output for job in jobs]
