"""The process settings are the ones a process really runs with, whatever was imported first.

OpenMP: libgomp prints the values it runs with (its internal control variables) when OMP_DISPLAY_ENV=verbose, at
the moment torch loads it: its own default spins 300000 times; passive waits spin 0 times. malloc: the kernel
counts the page faults of memory handed back and faulted in again."""

import os
import re
import subprocess
import sys

from p2p_dist.process_defaults import DEFAULTED_ENV, SHORT_SPIN

from runs import ROOT, run_training

SPIN_COUNT = re.compile(r"GOMP_SPINCOUNT = '(\d+)'")
LIBGOMP_DEFAULT, SHORT, PASSIVE = "300000", str(SHORT_SPIN), "0"
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "MALLOC_", DEFAULTED_ENV))}
    return {**env, "OMP_DISPLAY_ENV": "verbose", "PYTHONPATH": str(ROOT), **changes}


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _spin_counts(code: str, env: dict) -> list[str]:
    result = _python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ran to the end") == 1
    return SPIN_COUNT.findall(result.stderr)


def test_a_lone_process_that_imported_torch_first_reexecutes_with_a_short_spin():
    # OpenMP read its environment twice: before the re-execution (its default) and after it (ours).
    assert _spin_counts(TORCH_FIRST, _env()) == [LIBGOMP_DEFAULT, SHORT]


def test_one_of_several_ranks_on_the_machine_waits_passively():
    assert _spin_counts(TORCH_FIRST, _env(LOCAL_SIZE="2")) == [LIBGOMP_DEFAULT, PASSIVE]  # DeepSpeed's launcher
    assert _spin_counts(TORCH_FIRST, _env(LOCAL_WORLD_SIZE="2")) == [LIBGOMP_DEFAULT, PASSIVE]  # torchrun


def test_a_child_rank_recomputes_the_defaults_its_lone_parent_set_but_keeps_what_the_user_set():
    parent = _env(OMP_WAIT_POLICY="PASSIVE", GOMP_SPINCOUNT=SHORT, **{DEFAULTED_ENV: "GOMP_SPINCOUNT,OMP_WAIT_POLICY"})
    assert _spin_counts(TORCH_FIRST, {**parent, "LOCAL_SIZE": "2"}) == [SHORT, PASSIVE]
    users = _env(GOMP_SPINCOUNT="1000", LOCAL_SIZE="2")
    assert _spin_counts(TORCH_FIRST, users) == ["1000"]


def test_an_explicit_user_wait_policy_wins_and_needs_no_reexecution():
    assert _spin_counts(TORCH_FIRST, _env(OMP_WAIT_POLICY="ACTIVE")) not in ([SHORT], [PASSIVE])
    assert len(_spin_counts(TORCH_FIRST, _env(OMP_WAIT_POLICY="ACTIVE"))) == 1


def test_a_training_process_runs_with_the_short_spin_and_two_ranks_with_passive_waits(
    tmp_path, tiny_shards, monkeypatch
):
    for key in [k for k in os.environ if k.startswith(("OMP_", "GOMP_")) or k == DEFAULTED_ENV]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OMP_DISPLAY_ENV", "verbose")
    result = run_training(tmp_path / "run", tiny_shards, "train.steps=1")
    assert SPIN_COUNT.findall(result.stderr) == [SHORT]
    result = run_training(tmp_path / "run2", tiny_shards, "train.steps=1", nprocs=2)
    # DeepSpeed's launcher processes (not ours) load torch too: they print libgomp's default.
    spin_counts = SPIN_COUNT.findall(result.stderr)
    assert spin_counts.count(PASSIVE) == 2 and set(spin_counts) == {LIBGOMP_DEFAULT, PASSIVE}


def _faults_per_step(mode: str) -> float:
    env = {**_env(), "GOMP_SPINCOUNT": SHORT}  # no re-execution: both processes differ in malloc only
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP, mode], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


def test_with_the_malloc_defaults_a_step_no_longer_faults_in_again_the_memory_the_last_one_freed():
    applied = _faults_per_step("apply")
    # glibc's defaults re-fault 3,500-7,400 pages a step here; its dynamic mmap threshold spared one process
    # (171 a step, in a full suite), so the defaults get up to three processes to show it.
    glibc_defaults = 0.0
    for _ in range(3):
        glibc_defaults = max(glibc_defaults, _faults_per_step("none"))
        if applied < glibc_defaults / 5:
            break
    assert applied < glibc_defaults / 5, (applied, glibc_defaults)


def test_ray_trial_workers_start_with_the_settings_of_processes_that_share_the_cores(monkeypatch):
    from p2p_dist.tune.sweep import worker_env

    for key in [k for k in os.environ if k.startswith(("OMP_", "GOMP_", "MALLOC_")) or k == DEFAULTED_ENV]:
        monkeypatch.delenv(key)
    env = worker_env()
    assert env["GOMP_SPINCOUNT"] == PASSIVE and env["MALLOC_TRIM_THRESHOLD_"] and DEFAULTED_ENV in env
    monkeypatch.setenv("GOMP_SPINCOUNT", "1000")  # the user's choice travels as it is
    assert worker_env()["GOMP_SPINCOUNT"] == "1000" and "GOMP_SPINCOUNT" not in worker_env()[DEFAULTED_ENV]
