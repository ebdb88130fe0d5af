"""train.bf16_mode=bf16_weights (bf16 weights held by DeepSpeed's bf16 mode, fp32 master weights) against bf16
autocast (fp32 weights) and fp32 on a tiny model: the same maths up to bf16 rounding, at ZeRO 0, 1 and 2; and
channels_last parameters (train.model_memory_format) against contiguous ones."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bf16_weights_worker import STEPS

from runs import ROOT, train_env

WORKER = Path(__file__).with_name("bf16_weights_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bf16_weights") / "runs.pt"
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out)], env=train_env(), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


def mean_distance(a: dict, b: dict) -> float:
    return torch.cat([(a[k] - b[k]).abs().flatten() for k in b]).mean().item()


def test_bf16_weights_are_held_in_bf16_with_fp32_statistics_and_bf16_inputs(runs):
    for zero in (0, 1, 2):
        run = runs[f"bf16_weights_zero{zero}"]
        assert run["param_dtypes"] == ["torch.bfloat16"] and run["input_dtype"] == "torch.bfloat16"
        assert run["norm_stat_dtypes"] == ["torch.float32"]  # running statistics are buffers: DeepSpeed keeps fp32
    assert runs["autocast"]["param_dtypes"] == ["torch.float32"] and runs["autocast"]["input_dtype"] == "torch.float32"


def test_adam_counts_only_the_real_steps(runs):
    """DeepSpeed's ZeRO-0 bf16 wrapper steps Adam once on zero gradients to create its state; left so, every bias
    correction of the run would be one step off."""
    for name, run in runs.items():
        assert run["adam_steps"] == [STEPS], name


def test_zero_stages_train_bf16_weights_identically(runs):
    zero0 = runs["bf16_weights_zero0"]
    for zero in (1, 2):
        run = runs[f"bf16_weights_zero{zero}"]
        torch.testing.assert_close(run["losses"], zero0["losses"], rtol=0, atol=1e-6)
        for name, value in run["params"].items():
            torch.testing.assert_close(value, zero0["params"][name], rtol=0, atol=0, msg=name)


def test_bf16_weights_train_as_autocast_does_up_to_bf16_rounding(runs):
    autocast, fp32, weights = runs["autocast"], runs["fp32"], runs["bf16_weights_zero0"]
    torch.testing.assert_close(weights["losses"], autocast["losses"], rtol=0.02, atol=0)  # measured: 0.4%
    # Adam turns rounding noise in a gradient into whole lr steps, so parameters drift apart by a share of the
    # update budget; bf16 weights may drift from autocast no further than autocast drifts from fp32 (measured:
    # 0.13 and 0.42 of the budget).
    assert mean_distance(weights["params"], autocast["params"]) < mean_distance(autocast["params"], fp32["params"])
    assert all(torch.isfinite(v).all() for v in weights["params"].values())
    moved = mean_distance(weights["params"], weights["start"])
    assert moved > 0.1 * STEPS * 2e-4  # it trained


def test_translate_runs_on_bf16_weights_and_agrees_with_autocast(runs):
    weights, autocast = runs["bf16_weights_zero0"]["translated"], runs["autocast"]["translated"]
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    assert (weights - autocast).abs().mean() < 0.05  # outputs in [-1, 1]


def test_channels_last_parameters_train_as_contiguous_ones_and_only_zero0_keeps_them(runs):
    channels_last, contiguous = runs["autocast"], runs["autocast_contiguous_parameters"]
    assert channels_last["channels_last_weights"] == [True] and contiguous["channels_last_weights"] == [False]
    torch.testing.assert_close(channels_last["losses"], contiguous["losses"], rtol=1e-3, atol=0)
    assert mean_distance(channels_last["params"], contiguous["params"]) < 0.1 * STEPS * 2e-4
    assert runs["bf16_weights_zero0"]["channels_last_weights"] == [True]  # the inputs' layout, as auto says
    for zero in (1, 2):  # DeepSpeed flattens the parameters into contiguous buffers
        assert runs[f"bf16_weights_zero{zero}"]["channels_last_weights"] == [False]
