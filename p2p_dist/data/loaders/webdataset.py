"""The loader for machines without DALI: webdataset's tar reader and decoders in torch DataLoader workers.

webdataset reads tars as streams, split by whole shards per rank and worker, which can follow neither the
shared sample order nor give ranks equal batch counts. So the order comes from ``order.SampleOrder`` and
random access from the DALI index: a worker reads one sample's byte range of the tar (its tar headers, data
and padding, CRC-checked by ``ShardSet.read``) and hands that to webdataset's own tar iterator
(``tar_file_expander`` + ``group_by_keys``) and ``Decoder``, exactly as webdataset processes a shard.

Workers do the per-sample work (tar parsing, JPEG/PNG decoding, resize, crop, flip) and return uint8
tensors; normalising the photo and encoding the label map happen on ``device`` in the main process, so only
bytes cross the process boundary and the one-hot encoding (34 float channels) is never pickled.

Resizing matches the DALI loader: photos bilinear with antialiasing (torch), label maps nearest neighbour
with the pixel-centre rule ``src = floor((dst + 0.5) * in / out)``. DALI's float32 arithmetic can pick the
neighbouring source pixel where that product is an exact integer; that is the only label difference between
the loaders.
"""

from __future__ import annotations

import io
import signal
from collections.abc import Iterator
from pathlib import Path

import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, Sampler

from p2p_dist.data.loaders.contract import LoaderOptions, ShardLoader, apply_label_encoding, nearest_indices
from p2p_dist.data.order import EpochPlan, Geometry
from p2p_dist.data.shards.format import PHOTO_MEMBER, ShardError
from p2p_dist.data.shards.read import SampleBytes, ShardSet

# One request per sample: (global sample index, crop x, crop y, flip).
Request = tuple[int, int, int, bool]


def apply_geometry(
    photo: torch.Tensor, ids: torch.Tensor, geometry: Geometry, crop_x: int, crop_y: int, flip: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(3, H, W) photo and (H, W) ids, uint8 -> resized, cropped, flipped (3, C, C) and (C, C) uint8."""
    side, crop = geometry.resize_to, geometry.crop_size
    resized = torch.nn.functional.interpolate(
        photo.unsqueeze(0), size=(side, side), mode="bilinear", antialias=True, align_corners=False
    )[0]
    rows = torch.from_numpy(nearest_indices(ids.shape[0], side)[crop_y : crop_y + crop])
    cols = torch.from_numpy(nearest_indices(ids.shape[1], side)[crop_x : crop_x + crop])
    photo_out = resized[:, crop_y : crop_y + crop, crop_x : crop_x + crop]
    ids_out = ids[rows[:, None], cols[None, :]]
    if flip:
        photo_out, ids_out = photo_out.flip(-1), ids_out.flip(-1)
    return photo_out.contiguous(), ids_out.contiguous()


class _PairDataset(Dataset):
    """Map-style dataset answering ``Request``s with (photo uint8 (3, C, C), ids uint8 (C, C), key)."""

    def __init__(self, shards: ShardSet, geometry: Geometry) -> None:
        self.shards = shards
        self.geometry = geometry
        self.label_member = shards.label_member
        self.decoder = wds.Decoder(
            [wds.imagehandler("torchrgb8", extensions=["jpg"]), wds.imagehandler("torchl8", extensions=["png", "pgm"])]
        )

    def __len__(self) -> int:
        return self.shards.num_samples

    def __getitem__(self, request: Request) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, crop_x, crop_y, flip = request
        sample = self.decoder(self._tar_sample(self.shards.read(index)))
        photo, ids = apply_geometry(
            sample[PHOTO_MEMBER], sample[self.label_member], self.geometry, crop_x, crop_y, flip
        )
        return photo, ids, sample["__key__"]

    @staticmethod
    def _tar_sample(stored: SampleBytes) -> dict:
        """Group the tar members of one sample's byte range into a webdataset sample dict."""
        files = wds.tariterators.tar_file_expander([{"url": str(stored.shard), "stream": io.BytesIO(stored.blob)}])
        samples = list(wds.tariterators.group_by_keys(files))
        if len(samples) != 1 or samples[0]["__key__"] != stored.key:
            found = [sample["__key__"] for sample in samples]
            raise ShardError(f"{stored.shard}: the bytes indexed for sample {stored.key} hold samples {found}")
        return samples[0]


class _EpochRequests(Sampler):
    """Batch sampler whose batches are replaced for every epoch (so persistent workers can be kept)."""

    def __init__(self) -> None:
        self.batches: list[list[Request]] = []

    def __iter__(self) -> Iterator[list[Request]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    # Ctrl-C and a scheduler's SIGTERM reach every process of the job. The trainer answers them with a checkpoint
    # and a clean exit, and shuts its workers down itself; a worker killed by them first would make the
    # DataLoader abort the run before that checkpoint. Forked workers inherit the trainer's handlers, but not
    # ones started by spawn or forkserver (Python 3.14's default on Linux), nor ones forked before the trainer
    # installed its handlers.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


class WebDatasetLoader(ShardLoader):
    def __init__(self, shards_dir: Path, split: str, options: LoaderOptions) -> None:
        super().__init__(shards_dir, split, options)
        self._requests = _EpochRequests()
        workers = options.num_workers
        self._loader = DataLoader(
            _PairDataset(self.shards, options.geometry),
            batch_sampler=self._requests,
            num_workers=workers,
            pin_memory=options.device.type == "cuda",
            persistent_workers=workers > 0,
            worker_init_fn=_leave_stop_signals_to_the_trainer,
            prefetch_factor=2 if workers > 0 else None,
        )

    def _batches(self, plan: EpochPlan, start_batch: int, token: object) -> Iterator[dict]:
        self._ensure_current(token)
        self._requests.batches = [
            [
                (int(i), int(x), int(y), bool(f))
                for i, x, y, f in zip(plan.indices[b], plan.crop_x[b], plan.crop_y[b], plan.flip[b])
            ]
            for b in range(start_batch, len(plan))
        ]
        device, encoding = self.options.device, self.options.label_encoding
        batches = iter(self._loader)
        for _ in range(len(self._requests)):
            self._ensure_current(token)
            photo, ids, keys = next(batches)
            ids = ids.to(device, non_blocking=True)
            yield {
                "photo": photo.to(device, non_blocking=True).float().div_(127.5).sub_(1.0),
                "label": apply_label_encoding(ids, encoding),
                "ids": ids,
                "key": list(keys),
            }

    def close(self) -> None:
        # Dropping the DataLoader's iterator shuts its persistent workers down.
        self._loader = None
        super().close()
