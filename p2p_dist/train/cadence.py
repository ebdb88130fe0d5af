"""When the loop logs, samples, checkpoints and evaluates: every decision of that kind, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from p2p_dist.config import Config


@dataclass(frozen=True)
class Cadence:
    total_steps: int
    log_every: int
    sample_every: int
    checkpoint_every: int
    eval_every: int  # 0: no periodic evaluation

    @classmethod
    def of(cls, cfg: Config, total_steps: int) -> Cadence:
        r = cfg.run
        return cls(total_steps, r.log_every, r.sample_every, r.checkpoint_every, cfg.eval.every)

    def _due(self, step: int, every: int) -> bool:
        return every > 0 and (step % every == 0 or step == self.total_steps)

    def log(self, step: int) -> bool:
        """Progress line and metrics.jsonl record; also where ranks agree on a stop request."""
        return self._due(step, self.log_every)

    def sample(self, step: int) -> bool:
        return self._due(step, self.sample_every)

    def evaluate(self, step: int) -> bool:
        return self._due(step, self.eval_every)

    def checkpoint(self, step: int, stopping: bool) -> bool:
        """Also before stopping early, and at every evaluation: a Tune trial reports its metrics together with
        the checkpoint of the same step."""
        return self._due(step, self.checkpoint_every) or stopping or self.evaluate(step)
