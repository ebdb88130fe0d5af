"""`launch/train.py` end to end on CPU: outputs, resume, preemption, failure, data parallel."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from p2p_dist.config import load_config
from p2p_dist.models import LABEL_CHANNELS, generator_for
from p2p_dist.run_dir import latest_checkpoint

from runs import DEEPSPEED, ROOT, TRAIN, final_weights, free_port, run_training, train_command, train_env


def step_losses(run: Path) -> torch.Tensor:
    """loss_D, loss_G_gan and loss_G_l1 of every metrics.jsonl record of a run (one per step at run.log_every=1)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor([[r["loss_D"], r["loss_G_gan"], r["loss_G_l1"]] for r in records])


def test_run_directory_holds_config_metrics_samples_checkpoints_and_summary(tmp_path, tiny_shards):
    run = tmp_path / "run"
    result = run_training(run, tiny_shards, "train.steps=4", "run.checkpoint_every=2", "run.keep_checkpoints=1")
    assert (run / "config.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in (
        "step",
        "epoch",
        "lr",
        "loss_D",
        "loss_G_gan",
        "loss_G_l1",
        "images_per_s",
        "data_wait_fraction",
        "skipped_steps_G",
        "skipped_steps_D",
    ):
        assert key in records[-1], key
    assert 0.0 <= records[-1]["data_wait_fraction"] <= 1.0 and records[-1]["images_per_s"] > 0
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == ["step_000002.png", "step_000004.png"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000004"]  # keep_checkpoints=1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["images_seen"] == 8 and summary["mean_images_per_s"] > 0
    assert "step      4/4" in result.stdout and "ETA" in result.stdout
    assert str(run / "samples") in result.stdout  # ends by saying where its outputs are


def test_resume_after_sigkill_ends_bit_identical_to_an_uninterrupted_run(tmp_path, tiny_shards):
    overrides = ("train.steps=14", "run.checkpoint_every=4", "run.sample_every=100")
    run_training(tmp_path / "straight", tiny_shards, *overrides)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        train_command(killed, tiny_shards, *overrides),
        env=train_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "latest").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    resumed = run_training(killed, tiny_shards, *overrides)
    assert "resumed from" in resumed.stdout

    a, b = final_weights(tmp_path / "straight"), final_weights(killed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def _wait_for_log_records(run, proc, count):
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count("\n") >= count:
            return
        time.sleep(0.05)


def test_sigterm_writes_a_checkpoint_and_exits_cleanly_then_resumes(tmp_path, tiny_shards):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(run, tiny_shards, "train.steps=500", "run.sample_every=1000"),
        env=train_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_log_records(run, proc, 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "stop requested" in out
    stopped_at = json.loads((run / "summary.json").read_text())["steps"]
    assert 2 <= stopped_at < 500
    assert latest_checkpoint(run / "checkpoints").name == f"step_{stopped_at:06d}"

    resumed = run_training(run, tiny_shards, f"train.steps={stopped_at + 2}")
    assert "resumed from" in resumed.stdout
    assert json.loads((run / "summary.json").read_text())["steps"] == stopped_at + 2


def test_ctrl_c_to_the_whole_process_group_checkpoints_even_with_dataloader_worker_processes(tmp_path, tiny_shards):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_command(
            run, tiny_shards, "train.steps=500", "run.sample_every=1000", "data.loader=webdataset", "data.num_workers=2"
        ),
        env=train_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    _wait_for_log_records(run, proc, 2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the trainer and its workers alike
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    stopped_at = json.loads((run / "summary.json").read_text())["steps"]
    assert 2 <= stopped_at < 500 and latest_checkpoint(run / "checkpoints").name == f"step_{stopped_at:06d}"


def test_non_finite_loss_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_shards):
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=2", "run.checkpoint_every=2")
    good = final_weights(run)
    # lambda 1e39 overflows fp32: G's objective is infinite from the first step after the resume.
    result = run_training(
        run, tiny_shards, "train.steps=6", "run.checkpoint_every=1", "train.lambda_l1=1e39", check=False
    )
    assert result.returncode != 0
    assert "non-finite loss at step 3" in result.stderr + result.stdout
    assert latest_checkpoint(run / "checkpoints").name == "step_000002"
    after = final_weights(run)
    assert all(torch.equal(good[k], after[k]) for k in good)


def test_two_processes_with_batch_b_match_one_process_with_batch_2b(tmp_path, tiny_shards):
    common = ("train.steps=3", "model.norm=instance", "model.dropout=false", "run.sample_every=100")
    run_training(tmp_path / "one", tiny_shards, *common, "train.batch_size=4")
    run_training(tmp_path / "two", tiny_shards, *common, "train.batch_size=2", nprocs=2)

    # Losses at every step: the same samples, split across ranks, and the same averaged updates.
    losses = {name: step_losses(tmp_path / name) for name in ("one", "two")}
    assert losses["one"].shape == losses["two"].shape == (3, 3)
    torch.testing.assert_close(losses["two"], losses["one"], rtol=1e-5, atol=1e-6)

    # The trained generators moved the same way. fp32 sums in another order (batch 4 on one rank against 2 + 2
    # all-reduced; oneDNN also picks kernels by batch shape and CPU) differ in the last bits, and Adam's
    # normalised update turns a gradient component that is rounding noise into a whole +-lr step (measured: up
    # to 1.6 lr on an AVX512-BF16 CPU), so parameters and outputs cannot agree to float precision. The outputs
    # of the two runs must differ by a small fraction of how far training moved them from the initial weights.
    cfg = load_config(tmp_path / "one" / "config.yaml")  # the generator as trained (input encoding, widths)
    torch.manual_seed(0)  # the engine's seed and order: G is built first
    initial = generator_for(cfg).eval()
    x = torch.rand(2, LABEL_CHANNELS[cfg.data.label_encoding], 128, 128) * 2 - 1
    outputs = []
    for name in ("one", "two"):
        generator = generator_for(cfg).eval()
        generator.load_state_dict({k[2:]: v for k, v in final_weights(tmp_path / name).items() if k[:2] == "G."})
        with torch.no_grad():
            outputs.append(generator(x))
    with torch.no_grad():
        moved = (outputs[0] - initial(x)).abs().mean()
    assert moved > 1e-3  # three steps changed the function measurably
    assert (outputs[1] - outputs[0]).abs().mean() < 0.02 * moved  # measured: 0.5%


def test_a_zero0_checkpoint_resumes_at_another_world_size(tmp_path, tiny_shards):
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=2", "model.norm=instance", "run.checkpoint_every=2")
    result = run_training(run, tiny_shards, "train.steps=4", "model.norm=instance", nprocs=2)
    assert "resumed from" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["world_size"] == 2 and summary["images_seen"] == 2 * 2 + 2 * 4


def test_a_checkpoint_at_an_epoch_end_resumes_with_another_batch_size_at_the_next_epoch(tmp_path, tiny_shards):
    # 12 pairs: batch 5 makes an epoch of 3 batches (15 slots), batch 3 one of 4; 15 consumed slots regrouped
    # by 3 would be batch 5 of 4 unless the epoch end is recognised.
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=3", "train.batch_size=5", "model.norm=instance")
    result = run_training(run, tiny_shards, "train.steps=5", "train.batch_size=3", "model.norm=instance")
    assert "resumed from" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 5 and summary["images_seen"] == 3 * 5 + 2 * 3


def test_resuming_at_another_zero_stage_is_refused_naming_the_stage_to_use(tmp_path, tiny_shards):
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=1")
    result = run_training(run, tiny_shards, "train.steps=2", "zero_stage=1", check=False)
    assert result.returncode != 0 and "Resume with zero_stage=0" in result.stdout + result.stderr


def test_resuming_with_a_new_learning_rate_applies_it_to_the_restored_optimisers(tmp_path, tiny_shards):
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=2", "run.checkpoint_every=2")
    run_training(run, tiny_shards, "train.steps=3", "train.lr_g=0.001", "train.lr_d=0.0005", "train.decay_start=1.0")
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and (last["lr"], last["lr_d"]) == (0.001, 0.0005)


# channels_last is what precision=auto picks on a native-bf16 CPU and on CUDA; the photos it hands to the
# metrics are channels_last too.
@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_periodic_evaluation_logs_image_quality_to_metrics_jsonl(tmp_path, tiny_shards, memory_format):
    run = tmp_path / "run"
    run_training(
        run,
        tiny_shards,
        "train.steps=4",
        "eval.every=2",
        "eval.num_images=4",
        "eval.fcn=false",
        f"train.memory_format={memory_format}",
    )
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "eval/l1" in line]
    assert [r["step"] for r in evals] == [2, 4]
    for record in evals:
        assert 0 < record["eval/l1"] < 2 and -1 <= record["eval/ssim"] <= 1 and record["eval/psnr"] > 0
    # Each evaluation's step is checkpointed (Ray Tune reports a metric together with its checkpoint).
    assert (run / "checkpoints" / "step_000002").is_dir() and (run / "checkpoints" / "step_000004").is_dir()


@pytest.mark.slow
def test_two_simulated_nodes_reach_the_same_result_as_one_node_with_two_processes(tmp_path, tiny_shards):
    common = ("train.steps=3", "model.norm=instance", "model.dropout=false", "run.sample_every=100")
    run_training(tmp_path / "one_node", tiny_shards, *common, nprocs=2)

    port = str(free_port())
    hostfile = tmp_path / "hostfile"  # names only: with --no_ssh each launcher starts its own node's ranks
    hostfile.write_text("node0 slots=1\nnode1 slots=1\n")
    nodes = []
    for node_rank in (0, 1):
        command = [
            DEEPSPEED,
            "--hostfile",
            str(hostfile),
            "--no_ssh",
            "--node_rank",
            str(node_rank),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            TRAIN,
            *train_command(tmp_path / "two_nodes", tiny_shards, *common)[2:],
        ]
        nodes.append(
            subprocess.Popen(
                command, env=train_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    a, b = final_weights(tmp_path / "one_node"), final_weights(tmp_path / "two_nodes")
    assert all(torch.equal(a[k], b[k]) for k in a), "2 nodes x 1 process differ from 1 node x 2 processes"
    summary = json.loads((tmp_path / "two_nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3


def test_gradient_accumulation_matches_one_batch_of_the_accumulated_size(tmp_path, tiny_shards):
    common = ("train.steps=3", "model.norm=instance", "model.dropout=false", "run.sample_every=100")
    run_training(tmp_path / "big", tiny_shards, *common, "train.batch_size=4")
    run_training(tmp_path / "accumulated", tiny_shards, *common, "train.batch_size=2", "train.grad_accum=2")
    losses = {name: step_losses(tmp_path / name) for name in ("big", "accumulated")}
    assert losses["big"].shape == (3, 3)
    torch.testing.assert_close(losses["accumulated"], losses["big"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [1, 2])
def test_zero_stages_train_the_same_parameters_as_zero0(tmp_path, tiny_shards, zero_stage):
    common = ("train.steps=3", "model.norm=instance", "run.sample_every=100")
    run_training(tmp_path / "zero0", tiny_shards, *common, nprocs=2)
    run_training(tmp_path / f"zero{zero_stage}", tiny_shards, *common, f"zero_stage={zero_stage}", nprocs=2)
    a, b = final_weights(tmp_path / "zero0"), final_weights(tmp_path / f"zero{zero_stage}")
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-6, f"largest parameter difference {worst}"


@pytest.mark.slow
def test_compiled_networks_train_as_the_eager_ones(tmp_path, tiny_shards):
    """train.compile=true through the generator's own pieces (the dense-gradient skip concatenation, the small-map
    matmul transposed convolutions). Dropout off: compiled code draws its masks from another generator. Losses,
    not parameters: Adam turns rounding noise in a gradient into whole lr steps (see above)."""
    common = ("train.steps=3", "model.dropout=false", "run.sample_every=100")
    run_training(tmp_path / "eager", tiny_shards, *common)
    run_training(tmp_path / "compiled", tiny_shards, *common, "train.compile=true")
    eager, compiled = step_losses(tmp_path / "eager"), step_losses(tmp_path / "compiled")
    assert eager.shape == (3, 3)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)


def _deepspeed_shm_buffers() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*")}


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this system")
def test_training_leaves_no_deepspeed_shared_memory_buffer_behind(tmp_path, tiny_shards):
    """DeepSpeed's CPU all-reduce creates a ~69 MB /dev/shm workspace per rank and never removes it: before this
    was cleaned up, a day of runs had filled 18 GB of /dev/shm and the next job was killed out of memory."""
    before = _deepspeed_shm_buffers()
    run_training(tmp_path / "run", tiny_shards, "train.steps=1", "model.norm=instance", nprocs=2)
    assert _deepspeed_shm_buffers() - before == set()
