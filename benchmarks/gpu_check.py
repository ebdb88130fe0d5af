"""`make gpu-check`: one bounded shot that checks and measures p2p_dist on a GPU, for a lent machine's few minutes.

  bash benchmarks/gpu_check.sh                       # on the GPU machine: installs the carried .whl/, then this
  .venv/bin/python benchmarks/gpu_check.py --quick   # a dry run of the same plan on any machine, tiny sizes

Parts, in this order, each a subprocess with its own time limit, cut to what is left of the total budget, so
that one slow or hung part cannot eat the others (its process group is killed at its limit):

  imports  the GPU path's imports and where each package came from (carried wheels or the image)
  tests    pytest -m gpu over the test files holding gpu-marked tests (DALI's skip there: its wheel cannot travel)
  step     benchmarks/run.py --gpu-check --sections step,baseline: the training step at fp32, bf16 and fp16 at
           batch 32 and 64, 256x256 (unet_256 + 70x70 PatchGAN), interleaved with the reference recipe's step and
           its peers (bf16 autocast, + channels_last, fp16 autocast + GradScaler); FLOPs utilisation of the
           measured matmul peaks (bf16 for every row)
  loop     benchmarks/run.py --gpu-check --sections loop: a short `python launch/train.py` run on a small demo
           shard set (webdataset loader where DALI is absent): images/s and data-wait share
  scaling  1 vs N processes, only on a machine with N > 1 GPUs

Writes <gpu>-<date>.json / .md / .png into benchmarks/results/ and into $OUT when set (the lent machine's
folder that comes back); gpu_check.sh tees the output to gpu-check.log there. Exit status 1 when a part failed or
timed out, or a test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import deque
from pathlib import Path

import bench_common as common

REPO_ROOT = common.REPO_ROOT
TESTS = REPO_ROOT / "tests"
RUN = REPO_ROOT / "benchmarks" / "run.py"
# Seconds per part on an H200 (estimates in benchmarks/README.md); each is cut to the budget left.
PART_LIMITS_S = {"imports": 60, "tests": 170, "step": 200, "loop": 120, "scaling": 150}
TOTAL_BUDGET_S = 440  # gpu_check.sh kills this process at its own, slightly larger, hard limit
REPORT_RESERVE_S = 15  # kept back for merging and writing the results
MIN_PART_S = 20  # a part that would get less than this is skipped, not started
TEST_TIMEOUT_S = 90  # one gpu test (a ~20 s launch/train.py run on an H200)
# The GPU path's imports, and the distributions whose versions and locations the report names.
IMPORTS = (
    "torch",
    "deepspeed",
    "webdataset",
    "pydantic",
    "hjson",
    "cityscapesscripts.helpers.labels",
    "wds2idx",
    "torchmetrics",
    "torchvision",
    "p2p_dist.train.loop",
    "p2p_dist.data.loaders.webdataset",
)
DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "torchmetrics",
    "deepspeed",
    "webdataset",
    "pydantic",
    "pydantic-core",
    "hjson",
    "cityscapesscripts",
    "numpy",
    "pillow",
    "pytest",
    "nvidia-dali-cuda130",
)


def gpu_test_files() -> list[Path]:
    """The test files that hold gpu-marked tests (collecting all of tests/ would import Ray, DALI... there)."""
    return sorted(path for path in TESTS.rglob("test_*.py") if "pytest.mark.gpu" in path.read_text())


class Clock:
    """The total budget: each part gets its own limit or what is left, whichever is less."""

    def __init__(self, total_s: float) -> None:
        self.total_s, self.started = total_s, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def limit_for(self, wanted_s: float) -> float:
        return min(wanted_s, self.total_s - REPORT_RESERVE_S - self.elapsed())


_running: list[subprocess.Popen] = []  # the part in flight, for the SIGTERM handler


def _stop_on_sigterm(signum, frame) -> None:
    """gpu_check.sh's hard limit (timeout) sends SIGTERM: take the part's own process group down with us (it runs
    in a session of its own, which the lent machine would otherwise leave running)."""
    for proc in _running:
        _kill_group(proc)
    print("gpu-check: stopped by SIGTERM (the hard time limit)", flush=True)
    raise SystemExit(143)


def run_part(name: str, command: list[str], limit_s: float, env: dict) -> dict:
    """Run ``command``, streaming its output prefixed with [name]; kill its process group at ``limit_s``."""
    shown = " ".join("<script>" if "\n" in arg else arg for arg in command)
    print(f"\n=== gpu-check {name}: {shown} (limit {limit_s:.0f} s)", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    _running.append(proc)
    tail: deque[str] = deque(maxlen=40)

    def pump() -> None:
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            print(f"[{name}] {line}", end="", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
    reader.join(timeout=10)
    _running.remove(proc)
    wall = time.monotonic() - started
    if timed_out:
        status = f"timed out after {limit_s:.0f} s"
    else:
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    print(f"=== gpu-check {name}: {status}, {wall:.0f} s", flush=True)
    return {
        "part": name,
        "status": status,
        "ok": status == "ok",
        "wall_s": round(wall, 1),
        "limit_s": round(limit_s),
        "returncode": proc.returncode,
        "command": shown,
        "output_tail": list(tail),
    }


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the part's whole process group (pytest's and run.py's children too), SIGKILL what stays."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def skipped_part(name: str, reason: str) -> dict:
    print(f"\n=== gpu-check {name}: skipped ({reason})", flush=True)
    return {"part": name, "status": f"skipped: {reason}", "ok": True, "wall_s": 0.0, "limit_s": 0}


def junit_results(path: Path) -> dict:
    """Per-test outcome, time and message from pytest's JUnit XML (skips carry their reason)."""
    if not path.is_file():
        return {"tests": [], "counts": {}}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                message = (
                    (child.get("message") or child.text or "").strip().splitlines()[0][:300]
                    if (child.get("message") or child.text)
                    else ""
                )
                break
        tests.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": round(float(case.get("time", 0.0)), 1),
                "message": message,
            }
        )
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"tests": tests, "counts": counts}


IMPORT_PROBE = """
import importlib, importlib.metadata as md, json, sys
out = {"python": sys.version.split()[0], "executable": sys.executable, "imports": {}, "distributions": {}}
for name in sys.argv[1].split(","):
    try:
        module = importlib.import_module(name)
        out["imports"][name] = getattr(module, "__file__", None) or "namespace"
    except Exception as exc:  # report every missing piece, not only the first
        out["imports"][name] = f"FAILED: {type(exc).__name__}: {exc}"
for name in sys.argv[2].split(","):
    try:
        dist = md.distribution(name)
        out["distributions"][name] = {"version": dist.version, "location": str(dist.locate_file(""))}
    except md.PackageNotFoundError:
        out["distributions"][name] = None
print("IMPORTS " + json.dumps(out))
sys.exit(1 if any(str(v).startswith("FAILED") for v in out["imports"].values()) else 0)
"""


def parse_imports(part: dict) -> dict | None:
    for line in part.get("output_tail", []):
        if line.startswith("IMPORTS "):
            return json.loads(line.removeprefix("IMPORTS "))
    return None


def bench_command(sections: str, quick: bool, out: Path) -> list[str]:
    return [
        sys.executable,
        str(RUN),
        "--gpu-check",
        *(["--quick"] if quick else []),
        "--sections",
        sections,
        "--out",
        str(out),
        "--stem",
        "part",
    ]


def merge_sections(result: dict, part_json: Path) -> dict | None:
    """Sections (and machine facts, plan) of one run.py part into ``result``; the part's own result."""
    if not part_json.is_file():
        return None
    part = json.loads(part_json.read_text())
    result["sections"].update(part["sections"])
    for key in ("machine", "plan", "machine_name"):
        if result.get(key) is None:
            result[key] = part[key]
    return part


def isolated_ratio(result: dict) -> None:
    """The loop's images/s over the isolated default step's at the same batch (parts run in separate processes)."""
    loop, step = result["sections"].get("loop"), result["sections"].get("step")
    if not loop or not step:
        return
    batch = loop["run"]["batch_size_per_process"]
    default = next((r for r in step["rows"] if r["default"] and r["batch_size"] == batch and "images_per_s" in r), None)
    if default:
        loop["vs_isolated_step"] = loop["run"]["images_per_s"]["median"] / default["images_per_s"]["median"]


def output_dirs(args: argparse.Namespace) -> list[Path]:
    dirs = []
    if args.out is not None:
        dirs.append(args.out)
    elif not (args.quick and os.environ.get("OUT")):
        dirs.append(common.RESULTS_DIR)
    if os.environ.get("OUT"):
        dirs.append(Path(os.environ["OUT"]))
    unique = []
    for d in dirs:
        if d.resolve() not in [u.resolve() for u in unique]:
            unique.append(d)
    return unique


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="dry run on any device: tiny model and data, every part (tests skip without CUDA)",
    )
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="total seconds for all parts")
    parser.add_argument("--parts", default="imports,tests,step,loop,scaling", help="comma-separated subset")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default benchmarks/results; --quick with $OUT set: only $OUT)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        print("gpu-check: no CUDA device here: nothing to check (--quick dry-runs the plan on this machine)")
        return 0
    import run as bench_run

    import bench_report

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    clock = Clock(args.budget_s)
    gpus = torch.cuda.device_count() if cuda else 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    facts = common.machine_facts()
    stem = f"{common.machine_name(facts)}-{common.today()}" + ("-quick" if args.quick else "")
    print(
        f"gpu-check: {stem}: {facts.get('gpu_name') or 'no GPU (dry run)'}, driver {facts.get('gpu_driver')}, "
        f"CUDA {facts.get('cuda')}, torch {facts['torch']}, Python {facts['python']}; budget {args.budget_s:.0f} s",
        flush=True,
    )
    result = {
        "machine_name": common.machine_name(facts),
        "date": common.today(),
        "machine": facts,
        "plan": None,
        "command": "bash benchmarks/gpu_check.sh" + (" --quick" if args.quick else ""),
        "load_start": common.load_average(),
        "sections": {},
    }
    parts, tests = [], {"tests": [], "counts": {}}
    imports = None

    with tempfile.TemporaryDirectory(prefix="p2p-gpu-check-") as tmp:
        tmp = Path(tmp)
        plan = [
            ("imports", [sys.executable, "-c", IMPORT_PROBE, ",".join(IMPORTS), ",".join(DISTRIBUTIONS)]),
            # Each test bounded too (pytest-timeout), so that one hung test fails alone and the report still comes.
            (
                "tests",
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "-m",
                    "gpu",
                    "-rA",
                    "-o",
                    f"timeout={TEST_TIMEOUT_S}",
                    f"--junitxml={tmp / 'junit.xml'}",
                    *map(str, gpu_test_files()),
                ],
            ),
            ("step", bench_command("step,baseline", args.quick, tmp / "step")),
            ("loop", bench_command("loop", args.quick, tmp / "loop")),
            ("scaling", bench_command("scaling", args.quick, tmp / "scaling")),
        ]
        for name, command in plan:
            if name not in wanted:
                continue
            if name == "scaling" and gpus < 2:
                parts.append(skipped_part(name, f"{gpus} GPU(s): 1 vs N processes needs N > 1"))
                continue
            limit = clock.limit_for(PART_LIMITS_S[name] * (2 if args.quick else 1))
            if limit < MIN_PART_S:
                parts.append(skipped_part(name, f"budget spent ({clock.elapsed():.0f} of {args.budget_s:.0f} s)"))
                continue
            part = run_part(name, command, limit, env)
            if name == "imports":
                imports = parse_imports(part)
            elif name == "tests":
                tests = junit_results(tmp / "junit.xml")
                if part["returncode"] == 5:  # pytest: no tests collected
                    part.update(status="ok (no gpu tests collected)", ok=True)
            else:
                merged = merge_sections(result, tmp / name / "part.json")
                if merged is None and part["ok"]:
                    part.update(status="failed (no results file)", ok=False)
            parts.append(part)

    if result["plan"] is None:
        import dataclasses

        result["plan"] = dataclasses.asdict(
            bench_run.make_plan(torch.device("cuda" if cuda else "cpu"), args.quick, 256, gpu_check=True)
        )
    isolated_ratio(result)
    result["load_end"] = common.load_average()
    result["targets"] = bench_run.evaluate_targets(result)
    failed_tests = [t for t in tests["tests"] if t["outcome"] in ("failed", "error")]
    result["gpu_check"] = {
        "budget_s": args.budget_s,
        "wall_s": round(clock.elapsed(), 1),
        "quick": args.quick,
        "parts": [
            {k: v for k, v in p.items() if k != "output_tail"}
            | {"output_tail": p.get("output_tail", [])[-15:] if not p["ok"] else []}
            for p in parts
        ],
        "tests": tests,
        "imports": imports,
        "gpus": gpus,
        "ok": all(p["ok"] for p in parts) and not failed_tests,
    }

    report = bench_report.gpu_check_markdown(result) + "\n" + bench_report.markdown(result)
    written = []
    for out in output_dirs(args):
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
        (out / f"{stem}.md").write_text(report + "\n")
        bench_report.plot(result, out / f"{stem}.png")
        written.append(str(out / stem))
    print(report)
    print("\n".join(f"gpu-check: {p['part']:8s} {p['status']} ({p['wall_s']:.0f} s)" for p in parts))
    if failed_tests:
        print(f"gpu-check: {len(failed_tests)} test(s) failed: " + ", ".join(t["test"] for t in failed_tests))
    print(
        f"gpu-check: {'OK' if result['gpu_check']['ok'] else 'FAILED'} in {clock.elapsed():.0f} s; results: "
        + ", ".join(f"{w}.json/.md/.png" for w in written),
        flush=True,
    )
    return 0 if result["gpu_check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
