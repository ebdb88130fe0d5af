"""The suite end to end at --quick sizes: real loaders, real DeepSpeed engines, real launch/train.py runs."""

import json
import subprocess
import sys

import pytest
import run as bench_run
import torch
from peer_process import peers_a_user_would_run

from p2p_dist.process_defaults import defaulted_keys

from bench_common import REPO_ROOT
from bench_data import measure_loaders, measure_packing, tiny_demo_shards


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/`name` with `args`, as a user runs it; it must succeed."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / name), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def run_quick(out, *args: str) -> dict:
    result = run_script("run.py", "--quick", "--out", str(out), *args)
    (json_path,) = out.glob("*.json")
    assert json_path.with_suffix(".md").read_text().strip() in result.stdout  # the table is printed too
    assert json_path.with_suffix(".png").is_file()
    return json.loads(json_path.read_text())


def test_loader_and_packing_figures_are_positive_medians(tmp_path):
    shards = tiny_demo_shards(tmp_path / "demo")
    loaders = measure_loaders(
        shards,
        batch_size=2,
        resolution=128,
        load_size=143,
        batches=2,
        repeats=2,
        warmup=1,
        num_workers=1,
        device=torch.device("cpu"),
    )
    assert [r["backend"] for r in loaders] == ["dali", "webdataset"]
    for r in loaders:
        assert r["images_per_s"]["n"] == 2 and r["images_per_s"]["min"] > 0 and r["crop_size"] == 128
    (packing,) = measure_packing(num_images=2, image_size=(128, 64), repeats=1, workers_options=[1])
    assert packing["workers"] == 1 and packing["images_per_s"]["median"] > 0


def test_quick_run_of_every_section_with_profile_writes_json_markdown_and_plot(tmp_path):
    """Every section, the optional ones included, through the real entry point: what `make bench` runs, in
    seconds, so that a section that no longer runs fails the default suite."""
    result = run_quick(tmp_path, "--sections", ",".join(bench_run.SECTIONS + bench_run.OPTIONAL_SECTIONS), "--profile")
    sections = result["sections"]
    assert set(sections) == set(bench_run.SECTIONS + bench_run.OPTIONAL_SECTIONS)
    assert {r["backend"] for r in sections["data"]["loaders"]} == {"dali", "webdataset"}
    assert all(r["images_per_s"]["median"] > 0 for r in sections["data"]["packing"])

    step = sections["step"]
    measured = [r for r in step["rows"] if "images_per_s" in r]
    assert {r["precision"] for r in step["rows"]} == {"fp32", "bf16"}
    assert sum(r["default"] for r in measured) == len(result["plan"]["step_batches"])
    for r in measured:
        assert r["images_per_s"]["median"] > 0 and r["flops_per_image"] > 0 and r["utilisation"] > 0
        assert r["peak_memory_bytes"] > r["resident_bytes"] > 0
    for r in sections["baseline"]["comparison"]:
        assert r["ratio"] > 0
    assert all(h["vs_best_peer"] > 0 and h["best_peer"] for h in result["sections"]["baseline"]["headline"])
    assert step["load_before"] and step["load_after"] and result["machine"]["torch"]

    loop = sections["loop"]["run"]
    assert loop["steps"] == result["plan"]["loop_steps"] and 0 <= loop["data_wait_fraction"]["median"] <= 1
    rounds = sections["loop"]["rounds"]
    assert len(rounds) == loop["rounds"] == result["plan"]["loop_rounds"] >= 2
    assert loop["records_used"] == sum(r["run"]["records_used"] for r in rounds)
    # The peers as a user runs them: a process of their own, without p2p_dist's process defaults.
    own_process = sections["loop"]["peers_in_own_process"]
    assert [r["peer"] for r in own_process] == [v.name for v in peers_a_user_would_run(torch.device("cpu"))]
    for r in own_process:
        assert r["images_per_s"]["median"] > 0 and r["batch_size"] == result["plan"]["run_batch"]
        assert all(r["environment"].get(key) is None for key in defaulted_keys())
    assert any("as a user runs it" in t["target"] for t in result["targets"])
    assert [r["processes"] for r in sections["scaling"]["rows"]] == [1, 2]
    assert all(r["images_per_s"]["median"] > 0 for r in sections["scaling"]["rows"])

    candidates = sections["candidates"]
    assert sum(r["default"] for r in candidates["rows"]) == len({r["group"] for r in candidates["rows"]})
    assert all(r["vs_default"] > 0 for r in candidates["rows"] if "images_per_s" in r)
    assert all(r["max_abs_diff"] < 1e-6 for r in candidates["adam"])

    assert any(
        t["target"].startswith("native-bf16 CPU" if result["machine"]["cpu_native_bf16"] else "AVX2-only")
        for t in result["targets"]
    )
    breakdown = sections["breakdown"]
    assert [v["default"] for v in breakdown["variants"]] == [True, False] and breakdown["data_wait"]["ms"] >= 0
    assert all(v["top_ops"] and v["rows"] for v in breakdown["variants"]) and (tmp_path / "traces").is_dir()


@pytest.mark.slow
def test_compare_commits_runs_the_real_loop_of_both_commits_and_writes_their_ratio(tmp_path, tiny_shards):
    run_script(
        "compare_commits.py",
        "--base",
        "HEAD",
        "--rounds",
        "1",
        "--steps",
        "2",
        "--log-every",
        "1",
        "--batch",
        "1",
        "--out",
        str(tmp_path),
        "--shards",
        str(tiny_shards),
        "data.crop_size=128",
        "data.load_size=143",
        "model.ngf=4",
        "model.ndf=4",
    )
    (json_path,) = tmp_path.glob("*-commits-*.json")
    record = json.loads(json_path.read_text())
    assert set(record["images_per_s"]) == {record["base"], "working tree"} and record["ratio"] > 0
    assert all(rate["n"] == 1 and rate["median"] > 0 for rate in record["images_per_s"].values())
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=REPO_ROOT, capture_output=True, text=True).stdout
    assert "p2p-compare-" not in worktrees  # the base's worktree is removed
