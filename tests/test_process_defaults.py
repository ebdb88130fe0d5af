"""The process settings are the ones a process really runs with, whatever was imported first.

OpenMP: libgomp prints the values it runs with (its internal control variables) when OMP_DISPLAY_ENV=verbose, at
the moment torch loads it: passive waits are a spin count of 0 (its default spins 300000 times, and prints the
policy as PASSIVE too). malloc: the kernel counts the page faults of memory handed back and faulted in again."""

import os
import re
import subprocess
import sys

from runs import ROOT, run_training

SPIN_COUNT = re.compile(r"GOMP_SPINCOUNT = '(\d+)'")
PASSIVE = "0"
TORCH_FIRST = (
    "import torch; torch.ones(64, 64) @ torch.ones(64, 64)\n"
    "from p2p_dist.process_defaults import apply_process_defaults\n"
    "apply_process_defaults()\n"
    "print('ran to the end')\n"
)


# Generator steps with everything freed in between, as in training; prints the page faults per step after warm-up.
FAULTS_PER_STEP = (
    "import resource, sys\n"
    "if sys.argv[1] == 'apply':\n"
    "    from p2p_dist.process_defaults import apply_process_defaults\n"
    "    apply_process_defaults()\n"
    "import torch\n"
    "from p2p_dist.models.unet import UNetGenerator\n"
    "torch.manual_seed(0)\n"
    "generator, x = UNetGenerator(3, 3, ngf=16), torch.randn(2, 3, 256, 256)\n"
    "def step():\n"
    "    generator(x).mean().backward()\n"
    "    generator.zero_grad()\n"
    "step(); step()\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "step(); step(); step()\n"
    "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)\n"
)


def _env(**changes) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MALLOC_"))}
    return {**env, "OMP_DISPLAY_ENV": "verbose", "PYTHONPATH": str(ROOT), **changes}


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_a_process_that_imported_torch_first_reexecutes_with_passive_waits():
    result = _python(TORCH_FIRST, _env())
    assert result.returncode == 0, result.stderr
    # OpenMP read its environment twice: before the re-execution (its default) and after it (ours).
    spin_counts = SPIN_COUNT.findall(result.stderr)
    assert len(spin_counts) == 2 and spin_counts[0] != PASSIVE and spin_counts[1] == PASSIVE
    assert result.stdout.count("ran to the end") == 1


def test_an_explicit_user_setting_wins_and_needs_no_reexecution():
    result = _python(TORCH_FIRST, _env(OMP_WAIT_POLICY="ACTIVE"))
    assert result.returncode == 0, result.stderr
    assert len(SPIN_COUNT.findall(result.stderr)) == 1 and SPIN_COUNT.findall(result.stderr) != [PASSIVE]


def test_a_training_process_runs_with_passive_waits(tmp_path, tiny_shards, monkeypatch):
    for key in [k for k in os.environ if k.startswith("OMP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OMP_DISPLAY_ENV", "verbose")
    result = run_training(tmp_path / "run", tiny_shards, "train.steps=1")
    assert SPIN_COUNT.findall(result.stderr) == [PASSIVE]


def _faults_per_step(mode: str) -> float:
    env = {**_env(), "OMP_WAIT_POLICY": "PASSIVE"}  # no re-execution: both processes differ in malloc only
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP, mode], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


def test_with_the_malloc_defaults_a_step_no_longer_faults_in_again_the_memory_the_last_one_freed():
    glibc_defaults, applied = _faults_per_step("none"), _faults_per_step("apply")
    assert applied < glibc_defaults / 5, (applied, glibc_defaults)
