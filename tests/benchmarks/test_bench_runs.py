"""The suite end to end at --quick sizes: real loaders, real DeepSpeed engines, real launch/train.py runs."""

import json
import subprocess
import sys

import pytest
import torch

from bench_common import REPO_ROOT
from bench_data import measure_loaders, measure_packing, tiny_demo_shards

RUN = REPO_ROOT / "benchmarks" / "run.py"


def run_quick(out, *args: str) -> dict:
    result = subprocess.run([sys.executable, str(RUN), "--quick", "--out", str(out), *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (json_path,) = out.glob("*.json")
    assert json_path.with_suffix(".md").read_text().strip() in result.stdout  # the table is printed too
    assert json_path.with_suffix(".png").is_file()
    return json.loads(json_path.read_text())


def test_loader_and_packing_figures_are_positive_medians(tmp_path):
    shards = tiny_demo_shards(tmp_path / "demo")
    loaders = measure_loaders(shards, batch_size=2, resolution=128, load_size=143, batches=2, repeats=2, warmup=1,
                              num_workers=1, device=torch.device("cpu"))
    assert [r["backend"] for r in loaders] == ["dali", "webdataset"]
    for r in loaders:
        assert r["images_per_s"]["n"] == 2 and r["images_per_s"]["min"] > 0 and r["crop_size"] == 128
    (packing,) = measure_packing(num_images=2, image_size=(128, 64), repeats=1, workers_options=[1])
    assert packing["workers"] == 1 and packing["images_per_s"]["median"] > 0


@pytest.mark.slow  # a fresh interpreter with DeepSpeed, and bf16 steps on CPU: minutes on a busy 2-core machine
def test_quick_step_and_baseline_sections_write_json_markdown_and_plot(tmp_path):
    result = run_quick(tmp_path, "--sections", "step,baseline")
    assert set(result["sections"]) == {"step", "baseline"}
    step = result["sections"]["step"]
    measured = [r for r in step["rows"] if "images_per_s" in r]
    assert {r["precision"] for r in step["rows"]} == {"fp32", "bf16"}
    assert sum(r["default"] for r in measured) == len(result["plan"]["step_batches"])
    for r in measured:
        assert r["images_per_s"]["median"] > 0 and r["flops_per_image"] > 0 and 0 < r["utilisation"]
        assert r["peak_memory_bytes"] > r["resident_bytes"] > 0
    for r in result["sections"]["baseline"]["comparison"]:
        assert r["ratio"] > 0
    assert all(h["vs_best_peer"] > 0 and h["best_peer"] for h in result["sections"]["baseline"]["headline"])
    assert step["load_before"] and step["load_after"] and result["machine"]["torch"]


@pytest.mark.slow
def test_quick_run_of_every_section_with_profile_covers_the_real_loop_and_two_process_scaling(tmp_path):
    result = run_quick(tmp_path, "--profile")
    sections = result["sections"]
    assert set(sections) == {"data", "step", "baseline", "breakdown", "loop", "scaling"}
    loop = sections["loop"]["run"]
    assert loop["steps"] == result["plan"]["loop_steps"] and 0 <= loop["data_wait_fraction"]["median"] <= 1
    assert [r["processes"] for r in sections["scaling"]["rows"]] == [1, 2]
    assert all(r["images_per_s"]["median"] > 0 for r in sections["scaling"]["rows"])
    assert any(t["target"].startswith("native-bf16 CPU" if result["machine"]["cpu_native_bf16"] else "AVX2-only")
               for t in result["targets"])
    breakdown = sections["breakdown"]
    assert [v["default"] for v in breakdown["variants"]] == [True, False] and breakdown["data_wait"]["ms"] >= 0
    assert all(v["top_ops"] and v["rows"] for v in breakdown["variants"]) and (tmp_path / "traces").is_dir()
