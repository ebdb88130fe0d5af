"""The step losses between two log lines, kept on the device (no host synchronisation per step) and read once
per log interval: their means over steps and ranks, and the first step whose losses were not finite."""

from __future__ import annotations

import torch
import torch.distributed as dist

from p2p_dist.train.engines import LOGGED_LOSSES, StepLosses


class LossMeans:
    """Means of the logged losses, by name, over the steps since the last read and over all ranks."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(len(LOGGED_LOSSES), device=device)
        self.steps = 0

    def add(self, losses: StepLosses) -> None:
        self.sums += torch.stack([getattr(losses, name).float() for name in LOGGED_LOSSES])
        self.steps += 1

    def read_and_reset(self) -> dict[str, float]:
        """Collective: every rank calls it at the same step."""
        totals = self.sums.clone()
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        means = (totals / (self.steps * dist.get_world_size())).tolist()
        self.sums.zero_()
        self.steps = 0
        return dict(zip(LOGGED_LOSSES, means, strict=True))


class NonFiniteWatch:
    """The first step whose objective was not finite on any rank. A non-finite loss poisons the weights at
    once, so no checkpoint may be written after it: `first_bad_step()` is asked before each write."""

    def __init__(self, device: torch.device) -> None:
        self._none = torch.iinfo(torch.long).max
        self._first = torch.full((1,), self._none, dtype=torch.long, device=device)

    def record(self, losses: StepLosses, step: int) -> None:
        self._first = torch.minimum(self._first, torch.where(losses.finite(), self._none, step))

    def first_bad_step(self) -> int | None:
        """Collective: all ranks learn of it together, or the healthy ones would hang in the next all-reduce."""
        first = self._first.clone()
        dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = int(first.item())
        return None if step == self._none else step
