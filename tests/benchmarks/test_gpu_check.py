"""`make gpu-check` on a machine without CUDA: it says so and exits 0; `--quick` dry-runs its whole plan here."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import gpu_check
from bench_common import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour of a machine without CUDA")


def script_env(out) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(PYTHON=sys.executable, OUT=str(out))
    return env


@no_cuda
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_gpu_check_without_cuda_says_so_and_exits_zero(tmp_path):
    result = subprocess.run(
        ["make", "-s", "gpu-check"],
        cwd=REPO_ROOT,
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA device on this machine (torch.cuda.is_available() is False)" in result.stdout
    assert "--quick" in result.stdout  # and says how to dry-run the plan here
    assert not list(tmp_path.iterdir())  # no log, no results: nothing ran


@no_cuda
def test_gpu_check_without_torch_says_so_too(tmp_path):
    env = {**script_env(tmp_path), "PYTHON": "python-that-does-not-exist"}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "cannot import torch" in result.stdout


def test_quick_dry_run_runs_every_part_and_writes_the_results_and_the_log(tmp_path):
    """The whole device path at tiny sizes, as on the lent machine: $OUT receives json/md/png and the log."""
    result = subprocess.run(
        ["bash", str(SCRIPT), "--quick", "--no-install"],
        cwd=REPO_ROOT,
        env=script_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    (json_path,) = tmp_path.glob("*-quick.json")
    assert json_path.with_suffix(".md").is_file() and json_path.with_suffix(".png").is_file()
    log = (tmp_path / "gpu-check.log").read_text()
    assert "=== gpu-check step" in log and "gpu-check: OK" in log and "exit 0" in log
    data = json.loads(json_path.read_text())
    check = data["gpu_check"]
    assert check["ok"] and check["quick"]
    assert [p["part"] for p in check["parts"]] == ["imports", "tests", "step", "loop", "scaling"]
    assert all(p["status"] == "ok" for p in check["parts"][:4]) and check["parts"][4]["status"].startswith("skipped")
    assert check["imports"]["distributions"]["deepspeed"]["version"]
    names = {t["test"].split("::")[-1].split("[")[0] for t in check["tests"]["tests"]}
    assert "test_training_runs_on_the_gpu_at_each_precision" in names  # collected (skipped here: no CUDA)
    assert set(data["sections"]) == {"step", "baseline", "loop"}
    peers = data["sections"]["baseline"]["peers"]
    assert {p["peer"] for p in peers} == {
        "reference eager fp32",
        "reference + bf16 autocast",
        "reference + bf16 autocast + channels_last",
    }
    assert all(p["ratio"] > 0 for p in peers)
    rows = data["sections"]["step"]["rows"]
    assert all(r["utilisation_of_bf16_peak"] > 0 for r in rows) and "bf16" in data["sections"]["step"]["peaks"]
    assert data["sections"]["loop"]["run"]["images_per_s"]["median"] > 0 and data["sections"]["loop"]["loader"]
    assert data["sections"]["loop"]["vs_isolated_step"] > 0
    for key in ("gpu_name", "torch", "cuda", "python", "deepspeed"):
        assert key in data["machine"]
    md = json_path.with_suffix(".md").read_text()
    assert md.startswith("# gpu-check: ") and "## GPU tests" in md and "peers" in md


def test_gpu_test_files_are_the_ones_holding_gpu_marks():
    files = {p.relative_to(REPO_ROOT).as_posix() for p in gpu_check.gpu_test_files()}
    assert {"tests/train/test_training_gpu.py", "tests/data/test_dali_gpu.py"} <= files
    assert "tests/benchmarks/test_gpu_check.py" not in files


def test_junit_results_name_each_outcome_and_the_skip_reason(tmp_path):
    (tmp_path / "junit.xml").write_text(
        '<testsuites><testsuite><testcase classname="t.a" name="ok" time="1.5"/>'
        '<testcase classname="t.a" name="skip" time="0"><skipped message="NVIDIA DALI is not installed"/></testcase>'
        '<testcase classname="t.b" name="bad" time="2"><failure message="assert 1 == 2">trace</failure></testcase>'
        "</testsuite></testsuites>"
    )
    results = gpu_check.junit_results(tmp_path / "junit.xml")
    assert results["counts"] == {"passed": 1, "skipped": 1, "failed": 1}
    assert results["tests"][1] == {
        "test": "t.a::skip",
        "outcome": "skipped",
        "seconds": 0.0,
        "message": "NVIDIA DALI is not installed",
    }
    assert gpu_check.junit_results(tmp_path / "missing.xml") == {"tests": [], "counts": {}}


def test_a_part_is_killed_at_its_limit_and_reported_as_timed_out():
    part = gpu_check.run_part(
        "sleepy",
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
        limit_s=3,
        env=dict(os.environ),
    )
    assert part["status"] == "timed out after 3 s" and not part["ok"] and part["wall_s"] < 30
    assert part["output_tail"] == ["started"]


def test_the_clock_gives_each_part_its_limit_or_what_is_left():
    clock = gpu_check.Clock(total_s=100)
    assert clock.limit_for(30) == 30
    assert 100 - gpu_check.REPORT_RESERVE_S - 1 < clock.limit_for(1000) <= 100 - gpu_check.REPORT_RESERVE_S


def test_sigterm_to_the_driver_takes_the_running_part_down_with_it(tmp_path):
    """gpu_check.sh's hard limit sends SIGTERM; parts run in their own sessions and must not outlive the driver."""
    marker = tmp_path / "part.pid"
    code = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    driver = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import signal, sys, gpu_check, os\n"
                "signal.signal(signal.SIGTERM, gpu_check._stop_on_sigterm)\n"
                f"gpu_check.run_part('sleepy', [sys.executable, '-c', {code!r}], 100, dict(os.environ))\n"
            ),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'benchmarks'}:{REPO_ROOT}"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for _ in range(200):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.1)
    part_pid = int(marker.read_text())
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=60)
    assert driver.returncode == 143 and "stopped by SIGTERM" in out
    for _ in range(100):
        try:
            os.kill(part_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"the part (pid {part_pid}) outlived the driver")


def test_the_whole_script_is_bounded_by_its_total_and_refuses_to_start_without_time(tmp_path):
    env = {**script_env(tmp_path), "GPU_CHECK_TOTAL_S": "60"}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--quick", "--no-install"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "left after setup: not starting" in result.stdout
    assert "not starting" in (tmp_path / "gpu-check.log").read_text()
