"""The DALI loader: NVIDIA DALI decodes and augments, on the GPU of a CUDA ``device``, on the CPU otherwise.

Python only reads bytes: for each batch it takes the encoded members of the planned samples out of the
tars (byte ranges from the DALI index files, CRC-checked by ``ShardSet.read``) and feeds them, with the
crop positions and flips of ``order.SampleOrder``, to the pipeline's ``external_source`` inputs. DALI
itself does the rest:

* photo: JPEG decode (``mixed``, i.e. nvJPEG on the GPU, on CUDA machines; ``cpu`` elsewhere), then one fused
  bilinear antialiased resize of just the crop window with the flip, normalise to [-1, 1], CHW float32;
* label map: PNG decode (DALI decodes PNG on the CPU even in ``mixed`` mode, so GPU machines should pack
  with ``--label-format raw``: those maps are uint8 arrays behind a PGM header that go to the GPU as bytes,
  nothing to decode), nearest-neighbour resize of the SAME crop window with the same flip, then the colour
  map in [-1, 1] (three lookup tables) or one-hot ids (34 channels);
* ids: the cropped label ids, uint8.

With ``prefetch`` resolved to ``ahead`` (CUDA) the pipeline runs one batch ahead: batch ``b + 1`` is fed and
scheduled before batch ``b`` is handed to the trainer, so DALI works while the model trains. ``on_demand`` (a CPU)
feeds each batch when the trainer asks for it and waits for it: the training step's threads already fill the
cores (``p2p_dist.runtime.resolve_prefetch``).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

from p2p_dist.data import labels
from p2p_dist.data.loaders.contract import LoaderOptions, ShardLoader, label_colours
from p2p_dist.data.order import EpochPlan, Geometry
from p2p_dist.data.shards.format import PHOTO_MEMBER, decode_pgm
from p2p_dist.runtime import resolve_prefetch

OUTPUTS = ("photo", "label", "ids")


@pipeline_def
def _pair_pipeline(*, gpu: bool, label_format: str, geometry: Geometry, label_encoding: str):
    decode_device = "mixed" if gpu else "cpu"
    photo = fn.decoders.image(
        fn.external_source(name="photo", dtype=types.UINT8, ndim=1), device=decode_device, output_type=types.RGB
    )
    if label_format == "png":
        label = fn.decoders.image(
            fn.external_source(name="label", dtype=types.UINT8, ndim=1), device=decode_device, output_type=types.GRAY
        )
    else:
        label = fn.external_source(name="label", dtype=types.UINT8, ndim=3, layout="HWC")
        label = label.gpu() if gpu else label
    # One draw per sample, the same nodes for both images: photo and label map stay aligned. The fused operator
    # resamples only the crop window, with the filter of the whole image's resize: ~20% less resampling at
    # 286 -> 256 and no intermediate image. Against resize-then-crop, on the demo shards: photos within one grey
    # level, label ids equal but at ~3e-5 of the pixels (nearest-neighbour ties, which float rounding decides).
    window = {
        "size": [geometry.resize_to, geometry.resize_to],
        "crop": (geometry.crop_size, geometry.crop_size),
        "crop_pos_x": fn.external_source(name="crop_x", dtype=types.FLOAT, ndim=0),
        "crop_pos_y": fn.external_source(name="crop_y", dtype=types.FLOAT, ndim=0),
        "mirror": fn.external_source(name="flip", dtype=types.INT32, ndim=0),
    }
    photo = fn.resize_crop_mirror(photo, **window, interp_type=types.INTERP_LINEAR, antialias=True)
    photo = fn.crop_mirror_normalize(photo, mean=[127.5] * 3, std=[127.5] * 3, dtype=types.FLOAT, output_layout="CHW")
    ids = fn.squeeze(fn.resize_crop_mirror(label, **window, interp_type=types.INTERP_NN, antialias=False), axes=[2])
    if label_encoding == "onehot":
        encoded = fn.one_hot(ids, num_classes=labels.NUM_IDS, axis=0, dtype=types.FLOAT)
    else:
        # Each table maps an id straight to its colour channel in [-1, 1]: no uint8 intermediate to convert.
        keys, colours = list(range(labels.NUM_IDS)), label_colours()
        channels = [
            fn.lookup_table(ids, keys=keys, values=colours[:, channel].tolist(), dtype=types.FLOAT)
            for channel in range(3)
        ]
        encoded = fn.stack(*channels, axis=0)
    return photo, encoded, ids


class DaliLoader(ShardLoader):
    def __init__(self, shards_dir: Path, split: str, options: LoaderOptions) -> None:
        super().__init__(shards_dir, split, options)
        self._gpu = options.device.type == "cuda"
        if self._gpu and self.shards.label_format == "png":
            print(
                f"{shards_dir}: label maps are PNG, which DALI decodes on the CPU; pack with --label-format "
                f"raw for a decode-free label path",
                file=sys.stderr,
            )
        device_id = (
            (options.device.index if options.device.index is not None else torch.cuda.current_device())
            if self._gpu
            else None
        )
        self._pipe = _pair_pipeline(
            batch_size=options.batch_size,
            num_threads=max(1, options.num_workers),
            device_id=device_id,
            prefetch_queue_depth=1,
            gpu=self._gpu,
            label_format=self.shards.label_format,
            geometry=options.geometry,
            label_encoding=options.label_encoding,
        )
        self._pipe.build()
        self._max_offset = options.geometry.max_offset
        self._runs_ahead = resolve_prefetch(options.prefetch, options.device, "dali") == "ahead"
        self._in_flight: deque[list[str]] = deque()  # keys of batches fed and scheduled, not yet collected

    def _feed(self, plan: EpochPlan, batch: int) -> None:
        stored = [self.shards.read(int(index)) for index in plan.indices[batch]]
        photos = [np.frombuffer(sample.members[PHOTO_MEMBER], dtype=np.uint8) for sample in stored]
        label_member = self.shards.label_member
        if self.shards.label_format == "png":
            label_maps = [np.frombuffer(sample.members[label_member], dtype=np.uint8) for sample in stored]
        else:
            label_maps = [decode_pgm(sample.members[label_member])[:, :, None] for sample in stored]
        # DALI takes the crop position as a fraction of the free range; integer offsets stay exact because
        # DALI rounds fraction * range back to the nearest pixel.
        scale = 1.0 / self._max_offset if self._max_offset else 0.0
        self._pipe.feed_input("photo", photos)
        self._pipe.feed_input("label", label_maps)
        self._pipe.feed_input("crop_x", [np.float32(x * scale) for x in plan.crop_x[batch]])
        self._pipe.feed_input("crop_y", [np.float32(y * scale) for y in plan.crop_y[batch]])
        self._pipe.feed_input("flip", [np.int32(flip) for flip in plan.flip[batch]])
        self._pipe.schedule_run()
        self._in_flight.append([sample.key for sample in stored])

    def _collect(self) -> dict:
        outputs = self._pipe.outputs()
        batch: dict = {"key": self._in_flight.popleft()}
        for name, tensor_list in zip(OUTPUTS, outputs):
            dense = tensor_list.as_tensor()
            batch[name] = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=self.options.device)
            # A blocking copy: DALI may reuse its output buffers as soon as the next iteration is scheduled.
            feed_ndarray(dense, batch[name])
        return batch

    def _batches(self, plan: EpochPlan, start_batch: int, token: object) -> Iterator[dict]:
        self._ensure_current(token)
        while self._in_flight:  # a batch an abandoned epoch left in the pipeline
            self._collect()
        for batch in range(start_batch, len(plan)):
            self._ensure_current(token)
            if not self._in_flight:
                self._feed(plan, batch)
            collected = self._collect()
            if self._runs_ahead and batch + 1 < len(plan):
                self._feed(plan, batch + 1)
            yield collected

    def close(self) -> None:
        self._pipe = None  # frees DALI's threads and buffers
        super().close()
