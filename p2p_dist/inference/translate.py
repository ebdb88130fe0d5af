"""Translate label-map files to photo files with a generator, batched by size, every input checked first.

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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from p2p_dist.config import Config
from p2p_dist.inference.label_maps import Size, TranslateError, encode_labels, read_label_ids, resize_ids
from p2p_dist.models import UNetGenerator, to_uint8
from p2p_dist.models.translation_modes import translation_modes

# Stripped from an input's stem to name its output (longest first): city_000000_000019_gtFine_labelIds.png
# -> city_000000_000019_fake.png.
LABEL_SUFFIXES = ("_gtFine_labelIds", "_labelIds")
OUTPUT_SUFFIX = "_fake.png"
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
    cuda_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, device_type="cuda"):
        torch.manual_seed(seed)
        yield


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
