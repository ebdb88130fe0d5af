"""The core training step against the reference recipe: `Pix2Pix.train_step` (two DeepSpeed engines) and the
reference implementation's eager `optimize_parameters` order, fp32, instance norm, dropout off, same batches."""

import subprocess
import sys
from pathlib import Path

import torch

from p2p_dist.config import load_config
from p2p_dist.models.small_maps import Conv2d, ConvTranspose2d
from p2p_dist.train.reference_step import ReferenceStep

from reference_step_worker import RECIPE, STEPS
from runs import ROOT, train_env

WORKER = Path(__file__).with_name("reference_step_worker.py")


def _train_both(tmp_path: Path, *overrides: str) -> dict:
    out = tmp_path / "params.pt"
    result = subprocess.run(
        [sys.executable, str(WORKER), str(out), *overrides],
        env=train_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_with_the_reference_kernels_the_engine_step_is_bit_identical_to_the_reference_step(tmp_path):
    trained = _train_both(tmp_path, "train.joint_d_forward=false", "train.adam=for-loop")
    assert trained["engine"].keys() == trained["reference"].keys()
    for name, value in trained["engine"].items():
        assert torch.equal(value, trained["reference"][name]), name


def test_with_the_default_speed_switches_the_engine_step_gives_the_reference_parameters(tmp_path):
    """Fused Adam and one D forward over real and fake pairs change only float rounding. Adam's normalised update
    turns a gradient component that is rounding noise into a whole lr step, so each parameter may drift by a
    small share of the run's update budget (STEPS x lr); biases that InstanceNorm subtracts again have an exact
    gradient of 0, so theirs is all noise and they are left out (they do not change any output)."""
    trained = _train_both(tmp_path)
    recipe = load_config(None, RECIPE).train
    budget = STEPS * max(recipe.lr_g, recipe.lr_d)
    compared = [name for name in trained["engine"] if name not in trained["norm_cancelled_biases"]]
    assert len(compared) > len(trained["norm_cancelled_biases"]) > 0
    worst = max((trained["engine"][n] - trained["reference"][n]).abs().max().item() for n in compared)
    assert worst < 0.05 * budget  # measured: 0.8% on an AVX512-BF16 CPU


def test_the_reference_step_runs_the_reference_layers_not_p2p_dists_kernel_choices():
    """As a benchmark peer it stands for the step a user writes: torch's convolutions and torch.cat throughout."""
    reference = ReferenceStep(load_config(None, RECIPE), torch.device("cpu"), precision="bf16")
    layers = [m for m in reference.G.modules() if isinstance(m, (Conv2d, ConvTranspose2d))]
    assert layers and all(m.small_maps == "conv" for m in layers)
    assert not reference.G.dense_skip_grads
