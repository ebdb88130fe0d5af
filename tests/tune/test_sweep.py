"""`launch/tune.py` end to end on CPU: ASHA and PBT sweeps, trial retries, --resume, Ray Train trials, a cluster.

Each test starts its own Ray (or cluster) in a subprocess; trials run the real trainer on tiny shards."""

import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from p2p_dist.config import load_config

from runs import free_port, train_env
from tune_helpers import (
    CONFIG,
    TINY_SWEEP,
    experiment,
    read_jsonl,
    run_sweep_cli,
    start_sweep_cli,
    wait_for_first_result,
)


def results_table(storage: Path) -> list[dict]:
    with open(experiment(storage) / "results.csv") as f:
        return list(csv.DictReader(f))


def eval_records(trial_dir: Path) -> list[dict]:
    return [r for r in read_jsonl(trial_dir / "run" / "metrics.jsonl") if "eval/l1" in r]


def records_after(trial_dir: Path, restore: dict) -> list[dict]:
    """metrics.jsonl records the trainer wrote after this restore (up to the trial's next restore)."""
    restores = read_jsonl(trial_dir / "run" / "restores.jsonl")
    later = [r["metrics_line"] for r in restores if r["metrics_line"] > restore["metrics_line"]]
    lines = (trial_dir / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[restore["metrics_line"] : min(later, default=len(lines))]]


def test_trials_get_the_segmenter_cached_for_their_crop_size_and_none_is_trained(tmp_path, tiny_shards):
    from p2p_dist.eval.segmenter.fit import train_segmenter
    from p2p_dist.tune.sweep import prepare_inputs

    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("segmenter"))
    cached = {
        crop: train_segmenter(shards, epochs=1, batch_size=4, crop_size=crop, width=4, progress=False)
        for crop in (128, 256)
    }
    written_at = cached[128].stat().st_mtime_ns
    cfg = load_config(CONFIG, [*TINY_SWEEP, f"data.shards={shards}", "eval.fcn=true", "tune.metric=fcn_miou"])
    assert cfg.data.crop_size == 128

    trials_cfg, segmenter_train_s = prepare_inputs(cfg)
    assert trials_cfg.eval.segmenter == str(cached[128])
    assert segmenter_train_s is None and cached[128].stat().st_mtime_ns == written_at


def test_asha_sweep_trains_each_trial_with_its_sampled_values_and_writes_table_best_config_and_plot(
    tmp_path, tiny_shards
):
    result = run_sweep_cli(tmp_path, tiny_shards, "tune.num_samples=2", "train.steps=4")
    exp = experiment(tmp_path)

    rows = results_table(tmp_path)
    assert len(rows) == 2
    assert float(rows[0]["best l1"]) <= float(rows[1]["best l1"])  # best first
    assert {r["status"] for r in rows} <= {"completed", "stopped"} and rows[0]["status"] == "completed"
    for row in rows:
        assert 10 <= float(row["lambda_l1"]) <= 300
        assert 5e-5 <= float(row["lr_g"]) <= 1e-3 and 5e-5 <= float(row["lr_d"]) <= 1e-3
        trial = exp / row["trial"]
        # The trainer ran with this trial's values, in the trial's own directory ...
        trained = load_config(trial / "run" / "config.yaml")
        assert trained.data.holdout == 4 and row["scored on"] == "train holdout (4 of 4 held-out train images)"
        assert trained.train.lr_g == pytest.approx(float(row["lr_g"]))
        assert trained.train.lambda_l1 == pytest.approx(float(row["lambda_l1"]))
        assert trained.run.dir == str(trial / "run")
        # ... and its periodic evaluation is what Tune recorded (the objective, not a training loss).
        evals = eval_records(trial)
        assert [r["step"] for r in evals] == list(range(2, int(row["steps"]) + 1, 2))
        assert evals[-1]["eval/l1"] == pytest.approx(float(row["final l1"]))
        assert list((trial / "run" / "samples").glob("*.png"))
        assert list(trial.glob("checkpoint_*/trainer.json"))  # Tune kept the reported checkpoints

    best = load_config(exp / "best_config.yaml")
    assert best.train.lr_g == pytest.approx(float(rows[0]["lr_g"]))
    assert best.train.lambda_l1 == pytest.approx(float(rows[0]["lambda_l1"]))
    assert best.run.dir == "runs/sweep-best" and best.data.shards == str(tiny_shards) and best.data.holdout == 0
    assert (exp / "metric_vs_step.png").read_bytes()[:4] == b"\x89PNG"
    assert "| trial | status | lambda_l1 | lr_g | lr_d |" in result.stdout
    assert str(exp / "best_config.yaml") in result.stdout and str(exp / "results.csv") in result.stdout


@pytest.mark.slow
def test_pbt_restores_a_weak_trial_from_a_strong_trials_checkpoint_with_mutated_learning_rates(tmp_path, tiny_shards):
    run_sweep_cli(tmp_path, tiny_shards, "tune.scheduler=pbt", "tune.num_samples=2", "train.steps=10")
    exploits = [
        (restores.parent.parent, r)
        for restores in experiment(tmp_path).glob("trial_*/run/restores.jsonl")
        for r in read_jsonl(restores)
        if Path(r["from"]).parent != restores.parent.parent and r["step"] < 10
    ]
    assert exploits, "no trial was restored from another trial's checkpoint"

    for trial, restore in exploits:
        donor, step = Path(restore["from"]).parent, restore["step"]
        trained = [r for r in records_after(trial, restore) if "lr" in r]
        assert trained and trained[0]["step"] == step + 1  # continued from the donor's step
        mutated = (restore["params"]["train.lr_g"], restore["params"]["train.lr_d"])
        assert all((r["lr"], r["lr_d"]) == pytest.approx(mutated) for r in trained)  # the optimisers' new rates
        donor_lr = [
            (r["lr"], r["lr_d"])
            for r in read_jsonl(donor / "run" / "metrics.jsonl")
            if r.get("step") == step and "lr" in r
        ]
        assert donor_lr and mutated != pytest.approx(donor_lr[-1])  # differ from the rates of the copied run


@pytest.mark.slow
def test_a_failed_trial_is_retried_from_its_last_checkpoint(tmp_path, tiny_shards):
    proc = start_sweep_cli(tmp_path, tiny_shards, "tune.num_samples=1", "train.steps=40", "tune.max_failures=1")
    trial, first = wait_for_first_result(tmp_path, proc)
    os.kill(first["pid"], signal.SIGKILL)  # the trial's process dies mid-training
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-6000:]

    (row,) = results_table(tmp_path)
    assert row["status"] == "completed" and row["steps"] == "40"
    (restore,) = read_jsonl(trial / "run" / "restores.jsonl")
    assert Path(restore["from"]).parent == trial and restore["step"] >= first["step"]
    assert f"(step {restore['step']}," in output  # the trainer's "resumed from ... (step N, epoch E)"
    resumed_evals = [r["step"] for r in records_after(trial, restore) if "eval/l1" in r]
    assert resumed_evals == list(range(restore["step"] + 2, 41, 2))  # not from scratch


@pytest.mark.slow
def test_an_interrupted_sweep_continues_from_its_checkpoints_with_resume(tmp_path, tiny_shards):
    proc = start_sweep_cli(tmp_path, tiny_shards, "tune.num_samples=1", "train.steps=40")
    trial, first = wait_for_first_result(tmp_path, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and stops
    output, _ = proc.communicate(timeout=300)
    assert not (trial / "run" / "summary.json").exists(), "the sweep finished before it was interrupted"
    assert "INTERRUPTED: 1 trial(s) unfinished" in output and "--resume" in output

    resumed = run_sweep_cli(tmp_path, tiny_shards, "tune.num_samples=1", "train.steps=40", resume=True)
    (row,) = results_table(tmp_path)
    assert row["trial"] == trial.name and row["status"] == "completed" and row["steps"] == "40"
    (restore,) = read_jsonl(trial / "run" / "restores.jsonl")
    assert Path(restore["from"]).parent == trial and restore["step"] >= first["step"]
    assert "resumed from" in resumed.stdout
    resumed_evals = [r["step"] for r in records_after(trial, restore) if "eval/l1" in r]
    assert resumed_evals == list(range(restore["step"] + 2, 41, 2))


@pytest.mark.slow
def test_trials_of_two_deepspeed_workers_run_through_ray_train(tmp_path, tiny_shards):
    result = run_sweep_cli(tmp_path, tiny_shards, "tune.num_samples=2", "train.steps=4", "tune.workers_per_trial=2")
    rows = results_table(tmp_path)
    assert len(rows) == 2 and rows[0]["status"] == "completed"
    assert "training 4 steps on 2 x cpu" in result.stdout
    for row in rows:
        trial = experiment(tmp_path) / row["trial"]
        assert [r["step"] for r in eval_records(trial)] == list(range(2, int(row["steps"]) + 1, 2))
        checkpoints = sorted(trial.glob("checkpoint_*"))
        assert checkpoints and list((checkpoints[-1] / "rng").glob("rank_*.pt"))[1:]  # both ranks' RNG states
    completed = experiment(tmp_path) / rows[0]["trial"] / "run" / "summary.json"
    assert '"world_size": 2' in completed.read_text()


def wait_for_nodes(ray_cli: str, port: int, env: dict, count: int, timeout: float = 180) -> None:
    deadline, status = time.time() + timeout, ""
    while time.time() < deadline:
        status = subprocess.run(
            [ray_cli, "status", f"--address=127.0.0.1:{port}"], env=env, capture_output=True, text=True
        ).stdout
        if status.count(" node_") == count:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster did not reach {count} nodes within {timeout} s:\n{status}")


@pytest.mark.slow
def test_a_sweep_runs_on_a_cluster_of_a_head_and_a_worker_node(tmp_path, tiny_shards):
    """Two Ray nodes on loopback, one CPU each: both trials run at once, one on each node."""
    env = {**train_env(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    # Own temp dir: `ray start` records its address there, where no other Ray user on this machine looks.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--block", "--disable-usage-stats"]
    nodes = [
        subprocess.Popen(
            [
                ray_cli,
                "start",
                "--head",
                f"--port={port}",
                f"--temp-dir={temp_dir}",
                f"--dashboard-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                *common,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        wait_for_nodes(ray_cli, port, env, 1)
        nodes.append(
            subprocess.Popen(
                [ray_cli, "start", f"--address=127.0.0.1:{port}", *common],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_nodes(ray_cli, port, env, 2)

        result = run_sweep_cli(
            tmp_path, tiny_shards, "tune.num_samples=2", "train.steps=4", f"tune.address=127.0.0.1:{port}", env=env
        )
        assert len(results_table(tmp_path)) == 2
        assert "Logical resource usage: 2.0/2 CPUs" in result.stdout  # the worker node's CPU ran a trial
    finally:
        # `ray stop` would end every Ray on this machine; `ray start --block` stops just its node when terminated.
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
