"""The CUDA paths of training: bf16 autocast, fp16 with ZeRO and loss scaling, NCCL across two GPUs."""

import json

import pytest
import torch

from runs import run_training


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.gpu
@pytest.mark.parametrize("precision, zero_stage", [("bf16", 0), ("fp16", 1), ("auto", 0)])
def test_training_runs_on_the_gpu_at_each_precision(tmp_path, tiny_shards, precision, zero_stage):
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=3", f"precision={precision}", f"zero_stage={zero_stage}")
    summary = json.loads((run / "summary.json").read_text())
    expected = {"auto": "bf16" if torch.cuda.is_bf16_supported() else "fp32"}.get(precision, precision)
    assert summary["device"] == "cuda" and summary["precision"] == expected and summary["steps"] == 3
    last = _records(run)[-1]
    assert all(torch.isfinite(torch.tensor(last[key])) for key in ("loss_D", "loss_G_gan", "loss_G_l1"))
    if precision == "fp16":  # dynamic loss scaling may skip the first steps, never all of them
        assert last["skipped_steps_G"] < 3 and last["skipped_steps_D"] < 3


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_with_sync_batch_norm_train_over_nccl(tmp_path, tiny_shards):
    run = tmp_path / "run"
    run_training(run, tiny_shards, "train.steps=3", "model.norm=syncbatch", "precision=bf16", nprocs=2)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["world_size"] == 2 and summary["images_seen"] == 3 * 2 * 2
