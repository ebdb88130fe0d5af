"""Real training runs in subprocesses (``launch/train.py``, real shards, real loader): the loop's images/s
and data-wait share, and data-parallel scaling over processes (``deepspeed --num_gpus N``).

Figures come from the run's own metrics.jsonl: one record per ``run.log_every`` steps, each with images/s
over that interval (all ranks) and the share of wall time spent waiting for the next batch. The first
record includes start-up (first batches, kernel selection) and is reported but left out of the medians.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2p_dist.config import Config, save_config
from p2p_dist.run_dir import RunDir
from p2p_dist.runtime import free_port

from bench_common import REPO_ROOT, pooled_summary, summarise

TRAIN_SCRIPT = REPO_ROOT / "launch" / "train.py"
# The benchmark process may itself have joined a process group (the step section): children must not inherit it.
DISTRIBUTED_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "CROSS_RANK",
    "CROSS_SIZE",
)


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_command(config_path: Path, nprocs: int, launcher: str) -> list[str]:
    """``python launch/train.py`` (launcher "python", one process) or ``deepspeed --num_gpus N launch/train.py``."""
    if launcher == "python":
        if nprocs != 1:
            raise ValueError(f"launcher 'python' runs one process, not {nprocs}")
        return [sys.executable, str(TRAIN_SCRIPT), "--config", str(config_path)]
    return [
        *deepspeed_launcher(),
        "--num_gpus",
        str(nprocs),
        "--master_port",
        str(free_port()),
        str(TRAIN_SCRIPT),
        "--config",
        str(config_path),
    ]


def deepspeed_launcher() -> list[str]:
    """The `deepspeed` launcher of this interpreter: its script beside the interpreter (a venv), else the same
    entry point as a module (DeepSpeed installed with pip --target, as on the lent GPU machine)."""
    script = Path(sys.executable).with_name("deepspeed")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "deepspeed.launcher.runner"]


def summarise_metrics(records: list[dict]) -> dict:
    """Steady-state figures from metrics.jsonl training records (the first, start-up record left out)."""
    train_records = [r for r in records if "images_per_s" in r]
    if not train_records:
        raise ValueError("metrics.jsonl holds no training records")
    steady = train_records[1:] or train_records
    return {
        "images_per_s": summarise([r["images_per_s"] for r in steady]),
        "data_wait_fraction": summarise([r["data_wait_fraction"] for r in steady]),
        "first_record": {k: train_records[0][k] for k in ("step", "images_per_s", "data_wait_fraction")},
        "records_used": len(steady),
    }


def pooled(runs: list[dict]) -> dict:
    """Runs of one configuration as one: their steady-state records together (each run's start-up record is already
    left out), so that the median spans the rounds; each run's own figures stay where the caller keeps them."""
    first = {key: value for key, value in runs[0].items() if key != "records"}
    return {
        **first,
        "wall_s": round(sum(run["wall_s"] for run in runs), 1),
        "images_per_s": pooled_summary([run["images_per_s"] for run in runs]),
        "data_wait_fraction": pooled_summary([run["data_wait_fraction"] for run in runs]),
        "records_used": sum(run["records_used"] for run in runs),
        "rounds": len(runs),
    }


def run_training(cfg: Config, nprocs: int, launcher: str, timeout_s: float, work_dir: Path | None = None) -> dict:
    """Train ``cfg`` (its run.dir is replaced by a temporary one) and summarise its metrics."""
    with tempfile.TemporaryDirectory(prefix="p2p-bench-run-", dir=work_dir) as tmp:
        cfg.run.dir = str(Path(tmp) / "run")
        config_path = Path(tmp) / "config.yaml"
        save_config(cfg, config_path)
        command = train_command(config_path, nprocs, launcher)
        started = time.perf_counter()
        result = subprocess.run(
            command, env=_child_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
        )
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
            )
        run_dir = RunDir(cfg.run.dir)
        records = [json.loads(line) for line in run_dir.metrics.read_text().splitlines() if line]
        summary = json.loads(run_dir.summary.read_text())
    return {
        "processes": nprocs,
        "launcher": launcher,
        "command": " ".join(command),
        "steps": summary["steps"],
        "batch_size_per_process": cfg.train.batch_size,
        "precision": summary["precision"],
        "device": summary["device"],
        "wall_s": round(wall, 1),
        **summarise_metrics(records),
        "records": records,
    }


def scaling_rows(runs: list[dict], cores_per_machine: int, accelerators: int) -> list[dict]:
    """Speed-up and efficiency of each run over the one-process run: efficiency = images/s(N) / (N x
    images/s(1)). On a CPU machine all processes share the same cores, so perfect scaling there is a
    speed-up of 1.0, not N: ``resource_efficiency`` is the speed-up over the share of hardware added."""
    base = next(r for r in runs if r["processes"] == 1)["images_per_s"]["median"]
    rows = []
    for run in runs:
        n = run["processes"]
        rate = run["images_per_s"]["median"]
        hardware = min(n, accelerators) if accelerators else 1  # CPU processes add no cores
        rows.append(
            {
                "processes": n,
                "images_per_s": run["images_per_s"],
                "per_process_images_per_s": rate / n,
                "speedup": rate / base,
                "efficiency": rate / (n * base),
                "resource_efficiency": rate / (hardware * base),
                "data_wait_fraction": run["data_wait_fraction"],
                "cores_per_process": cores_per_machine / n if not accelerators else None,
            }
        )
    return rows
