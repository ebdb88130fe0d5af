"""What a run reports: a progress line on the terminal, metrics.jsonl, TensorBoard events (rank 0 only)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

from torch.utils.tensorboard import SummaryWriter

from p2p_dist.run_dir import RunDir


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class RunLogger:
    def __init__(self, run_dir: RunDir, total_steps: int, enabled: bool) -> None:
        self.total_steps, self.enabled = total_steps, enabled
        if enabled:
            self.jsonl = open(run_dir.metrics, "a", buffering=1)  # noqa: SIM115 (open for the run; see close)
            self.tb = SummaryWriter(str(run_dir.tensorboard))

    def log(self, record: dict) -> None:
        """One record per log interval: to metrics.jsonl, TensorBoard and the terminal."""
        if not self.enabled:
            return
        self.jsonl.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                self.tb.add_scalar(key, value, record["step"])
        if "loss_D" in record:
            eta = (self.total_steps - record["step"]) / max(record["steps_per_s"], 1e-9)
            print(
                f"step {record['step']:>6}/{self.total_steps} | epoch {record['epoch']:6.2f} | "
                f"D {record['loss_D']:.3f} | G_gan {record['loss_G_gan']:.3f} | L1 {record['loss_G_l1']:.3f} | "
                f"{record['images_per_s']:7.1f} img/s | data wait {100 * record['data_wait_fraction']:4.1f}% | "
                f"ETA {format_duration(eta)}",
                flush=True,
            )
        else:
            values = " | ".join(
                f"{k.removeprefix('eval/')} {v:.4g}" for k, v in record.items() if k.startswith("eval/")
            )
            print(f"eval at step {record['step']}: {values}", flush=True)

    def image(self, tag: str, image, step: int) -> None:
        if self.enabled:
            self.tb.add_image(tag, image, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


class Throughput:
    """Images/s and the share of wall time spent waiting for input, over one log interval."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.excluded = 0.0  # sample grids, checkpoints, evaluation: not part of the training rate
        self.data_wait = 0.0
        self.images = 0
        self.steps = 0

    @contextmanager
    def waiting_for_data(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.data_wait += time.perf_counter() - started

    @contextmanager
    def not_training(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.excluded += time.perf_counter() - started

    def count_step(self, images: int) -> None:
        self.images += images
        self.steps += 1

    def summary(self) -> dict:
        wall = max(time.perf_counter() - self.start - self.excluded, 1e-9)
        return {
            "images_per_s": self.images / wall,
            "steps_per_s": self.steps / wall,
            "data_wait_fraction": self.data_wait / wall,
        }
