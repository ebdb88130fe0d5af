"""`launch/evaluate.py` on a real (tiny) training run: report files, the FCN ceiling, distributed = single."""

import json
import shutil
import subprocess
import sys

import pytest

from p2p_dist.config import load_config, save_config
from runs import DEEPSPEED, ROOT, free_port, run_training, train_env

EVALUATE = str(ROOT / "launch" / "evaluate.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_shards):
    run = tmp_path_factory.mktemp("eval") / "run"
    run_training(run, tiny_shards, "train.steps=2", "model.norm=instance")
    return run


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory, tiny_shards):
    from p2p_dist.eval.segmenter.fit import train_segmenter

    return train_segmenter(tiny_shards, out_path=tmp_path_factory.mktemp("seg") / "seg.pt", epochs=1,
                           batch_size=4, crop_size=128, width=4, progress=False)


def evaluate(run, *args, nprocs=1):
    launcher = [sys.executable] if nprocs == 1 else [DEEPSPEED, "--num_gpus", str(nprocs), "--master_port",
                                                     str(free_port())]
    result = subprocess.run([*launcher, EVALUATE, "--run", str(run), *args], env=train_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_evaluate_writes_json_and_markdown_reports_with_the_fcn_ceiling(tiny_run, tiny_segmenter):
    result = evaluate(tiny_run, "--segmenter", str(tiny_segmenter), "--no-fid", "--batch-size", "2")
    report = json.loads((tiny_run / "eval" / "step_000002.json").read_text())
    assert report["num_images"] == 4 and report["checkpoint"] == "step_000002"
    for key in ("ssim", "psnr", "mse", "l1", "fcn/pixel_acc", "fcn/class_acc", "fcn/mean_iou"):
        assert key in report["metrics"], key
    assert set(report["ceiling"]) == {"fcn/pixel_acc", "fcn/class_acc", "fcn/mean_iou"}
    assert 0 <= report["metrics"]["fcn/pixel_acc"] <= 1 and 0 <= report["ceiling"]["fcn/pixel_acc"] <= 1
    markdown = (tiny_run / "eval" / "step_000002.md").read_text()
    assert "| FCN class IoU |" in markdown and "step_000002_samples.png" in markdown
    assert (tiny_run / "eval" / "step_000002_samples.png").stat().st_size > 0
    assert "| L1 |" in result.stdout  # the table is printed


def test_two_process_evaluation_gives_the_same_numbers_as_one(tiny_run, tiny_segmenter):
    common = ("--segmenter", str(tiny_segmenter), "--no-fid", "--batch-size", "1", "--no-dropout")
    evaluate(tiny_run, *common)
    single = json.loads((tiny_run / "eval" / "step_000002.json").read_text())
    evaluate(tiny_run, *common, nprocs=2)
    double = json.loads((tiny_run / "eval" / "step_000002.json").read_text())
    assert double["world_size"] == 2
    for key, value in single["metrics"].items():
        assert double["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert double["ceiling"] == pytest.approx(single["ceiling"], rel=1e-5, abs=1e-6)


def test_per_image_syncbatch_on_two_processes_matches_one_process_at_another_batch_size(tmp_path_factory, tiny_shards):
    """Per-image statistics (the default) never span images or ranks: two processes with batch 1 give the photos,
    and so the metrics of the first 3 images, of one process with batch 4 (whose one batch also holds the fourth
    image). The old batch-statistics mode (--norm-mode train) depended on both and is gone."""
    run = tmp_path_factory.mktemp("eval_syncbatch") / "run"
    run_training(run, tiny_shards, "train.steps=2", "model.norm=syncbatch")
    common = ("--no-fcn", "--no-fid", "--no-dropout", "--max-images", "3")
    evaluate(run, *common, "--batch-size", "4")
    single = json.loads((run / "eval" / "step_000002.json").read_text())
    evaluate(run, *common, "--batch-size", "1", nprocs=2)
    double = json.loads((run / "eval" / "step_000002.json").read_text())
    assert single["num_images"] == double["num_images"] == 3 and double["world_size"] == 2
    assert single["settings"]["norm_mode"] == double["settings"]["norm_mode"] == "per-image"
    assert double["metrics"] == pytest.approx(single["metrics"], rel=1e-5, abs=1e-6)
    assert (run / "eval" / "step_000002_samples.png").stat().st_size > 0
    refused = subprocess.run([sys.executable, EVALUATE, "--run", str(run), "--norm-mode", "train"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "invalid choice: 'train'" in refused.stderr


def test_an_fp16_run_evaluates_in_fp32_on_cpu_with_the_segmenter_cached_for_its_crop_size(
        tiny_run, tiny_shards, tmp_path):
    from p2p_dist.eval.segmenter.fit import train_segmenter

    run = tmp_path / "fp16_run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("eval"))
    save_config(load_config(run / "config.yaml", ["precision=fp16", "zero_stage=1"]), run / "config.yaml")
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("segmenter"))
    cached = {crop: train_segmenter(shards, epochs=1, batch_size=4, crop_size=crop, width=4, progress=False)
              for crop in (128, 256)}
    written_at = cached[128].stat().st_mtime_ns

    result = evaluate(run, "--shards", str(shards), "--no-fid", "--batch-size", "2")
    report = json.loads((run / "eval" / "step_000002.json").read_text())
    assert "evaluating in fp32 (the run trained with precision=fp16)" in result.stdout
    assert report["settings"]["precision"] == "fp32"
    assert report["settings"]["segmenter"] == str(cached[128])  # the run's crop size, beside the 256 one
    assert cached[128].stat().st_mtime_ns == written_at  # used as it was, not retrained


def test_evaluate_help_explains_the_options():
    result = subprocess.run([sys.executable, EVALUATE, "--help"], capture_output=True, text=True, check=True)
    for option in ("--checkpoint", "--no-dropout", "--norm-mode", "--segmenter", "FCN-score"):
        assert option in result.stdout
