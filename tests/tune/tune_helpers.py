"""Helpers for sweeps through the real CLI (`launch/tune.py`) in subprocesses: each starts its own Ray, trials run
the real trainer (DeepSpeed, DALI) on the tiny demo shards (the `tiny_shards` fixture of tests/conftest.py)."""

import json
import subprocess
import sys
import time
from pathlib import Path

from runs import ROOT, TINY, train_env

TUNE = str(ROOT / "launch" / "tune.py")
CONFIG = str(ROOT / "configs" / "tune_demo.yaml")
SWEEP_NAME = "sweep"

# The shipped demo sweep config, shrunk: tiny model and shards, L1 objective (no segmenter to train), evaluation
# every 2 steps on 4 of the 12 train images held out, a constant learning rate (so a trial's logged lr is exactly
# its configured one).
TINY_SWEEP = [
    *TINY,
    "eval.fcn=false",
    "tune.metric=l1",
    "eval.every=2",
    "eval.num_images=4",
    "train.decay_start=1.0",
    "run.keep_checkpoints=1",
    "tune.max_failures=0",
    "tune.holdout_images=4",
]


def sweep_command(storage: Path, shards: Path, *overrides: str, resume: bool = False) -> list[str]:
    args = [f"data.shards={shards}", f"tune.storage_path={storage}", f"tune.name={SWEEP_NAME}", *TINY_SWEEP, *overrides]
    return [sys.executable, TUNE, "--config", CONFIG, *args, *(["--resume"] if resume else [])]


def run_sweep_cli(
    storage: Path, shards: Path, *overrides: str, resume: bool = False, env: dict | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        sweep_command(storage, shards, *overrides, resume=resume),
        env=env or train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    if result.returncode != 0:
        raise AssertionError(f"sweep failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def start_sweep_cli(storage: Path, shards: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        sweep_command(storage, shards, *overrides),
        env=train_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def experiment(storage: Path) -> Path:
    return storage / SWEEP_NAME


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_first_result(storage: Path, proc: subprocess.Popen, timeout: float = 600) -> tuple[Path, dict]:
    """The first trial that Tune has recorded a result (with its checkpoint) for, and that result."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for result_file in experiment(storage).glob("trial_*/result.json"):
            records = read_jsonl(result_file) if result_file.stat().st_size else []
            if records and list(result_file.parent.glob("checkpoint_*")):
                return result_file.parent, records[0]
        time.sleep(0.2)
    output = proc.stdout.read() if proc.poll() is not None else "(still running)"
    raise AssertionError(f"no trial result within {timeout} s; sweep output:\n{output[-6000:]}")
