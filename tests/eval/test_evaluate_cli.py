"""`launch/evaluate.py` on a real (tiny) training run: report files, the FCN ceiling, distributed = single."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from p2p_dist.config import load_config, save_config

from runs import DEEPSPEED, ROOT, free_port, run_training, train_env

EVALUATE = str(ROOT / "launch" / "evaluate.py")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_shards):
    """ZeRO-1: its checkpoints hold fp32 master weights in optimizer state files, as an fp16 run's do."""
    run = tmp_path_factory.mktemp("eval") / "run"
    run_training(run, tiny_shards, "train.steps=2", "model.norm=instance", "model.dropout=true", "zero_stage=1")
    return run


def as_fp16_run(run, copy):
    """`run` as DeepSpeed's precision=fp16 would have written it: module weights in fp16 (the engine casts the
    module to half), the fp32 masters in the ZeRO optimizer states. fp16 training needs CUDA, so the checkpoint
    is made from a CPU ZeRO-1 run, whose masters equal its fp32 module weights. Returns those fp32 weights (all
    parameters: this instance-norm run has no buffers, which an fp16 run would hold in fp16 only)."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("eval"))
    save_config(load_config(copy / "config.yaml", ["precision=fp16", "zero_stage=1"]), copy / "config.yaml")
    (model_file,) = (copy / "checkpoints" / "step_000002" / "G" / "engine").glob("mp_rank_*_model_states.pt")
    assert any((model_file.parent).glob("zero_pp_rank_0_*_optim_states.pt"))
    states = torch.load(model_file, map_location="cpu", weights_only=False)
    fp32 = {key: value.clone() for key, value in states["module"].items()}
    states["module"] = {
        key: value.half() if value.is_floating_point() else value for key, value in states["module"].items()
    }
    torch.save(states, model_file)
    return fp32


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory, tiny_shards):
    from p2p_dist.eval.segmenter.fit import train_segmenter

    return train_segmenter(
        tiny_shards,
        out_path=tmp_path_factory.mktemp("seg") / "seg.pt",
        epochs=1,
        batch_size=4,
        crop_size=128,
        width=4,
        progress=False,
    )


def evaluate(run, *args, nprocs=1):
    launcher = (
        [sys.executable] if nprocs == 1 else [DEEPSPEED, "--num_gpus", str(nprocs), "--master_port", str(free_port())]
    )
    result = subprocess.run(
        [*launcher, EVALUATE, "--run", str(run), *args],
        env=train_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
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
    for key, real in report["ceiling"].items():
        assert report["relative_to_ceiling"][key] == pytest.approx(report["metrics"][key] / real), key
    settings = report["settings"]
    assert settings["norm_mode"] == "instance" and settings["dropout"] is True and settings["tf32"] is False
    assert settings["width"] == settings["height"] == 128 and settings["weights"] == "module weights (fp32)"
    assert set(report["protocol"]) == {"images", "resolution", "norm_statistics", "dropout", "generator_weights", "fcn"}
    assert report["protocol"]["images"].startswith("4 images of split 'val' (all of them)")
    markdown = (tiny_run / "eval" / "step_000002.md").read_text()
    assert "| FCN class IoU |" in markdown and "step_000002_samples.png" in markdown
    assert "## Protocol" in markdown and "generated / ceiling" in markdown
    assert "4 val images at 128x128, norm statistics instance, dropout on" in result.stdout
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


def test_a_generator_built_without_dropout_is_reported_with_dropout_off(tmp_path_factory, tiny_shards):
    run = tmp_path_factory.mktemp("eval_no_dropout") / "run"
    run_training(run, tiny_shards, "train.steps=1", "model.norm=instance", "model.dropout=false")
    result = evaluate(run, "--no-fcn", "--no-fid", "--max-images", "2")  # dropout is asked for, by default
    report = json.loads((run / "eval" / "step_000001.json").read_text())
    assert report["settings"]["dropout"] is False
    assert report["protocol"]["dropout"].startswith("off at test time")
    assert "dropout off" in result.stdout


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
    refused = subprocess.run(
        [sys.executable, EVALUATE, "--run", str(run), "--norm-mode", "train"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "invalid choice: 'train'" in refused.stderr


def test_an_fp16_run_is_evaluated_from_its_fp32_master_weights(tiny_run, tmp_path):
    from p2p_dist.train.checkpoint import MASTER_WEIGHTS
    from p2p_dist.train.trained_generator import load_generator

    fp32 = as_fp16_run(tiny_run, tmp_path / "fp16_run")
    generator, _ = load_generator(tmp_path / "fp16_run", device="cpu")
    loaded = generator.state_dict()
    rounded = [
        key for key, value in fp32.items() if value.is_floating_point() and not torch.equal(value.half().float(), value)
    ]
    assert rounded  # the fp16 module copy differs from the masters, so the check has teeth
    for key, value in fp32.items():
        assert torch.equal(loaded[key], value), key
    assert generator.weights_source == MASTER_WEIGHTS


def test_an_fp16_run_evaluates_in_fp32_on_cpu_with_the_segmenter_cached_for_its_crop_size(
    tiny_run, tiny_shards, tmp_path
):
    from p2p_dist.eval.segmenter.fit import train_segmenter
    from p2p_dist.train.checkpoint import MASTER_WEIGHTS

    run = tmp_path / "fp16_run"
    as_fp16_run(tiny_run, run)
    shards = tmp_path / "shards"
    shutil.copytree(tiny_shards, shards, ignore=shutil.ignore_patterns("segmenter"))
    cached = {
        crop: train_segmenter(shards, epochs=1, batch_size=4, crop_size=crop, width=4, progress=False)
        for crop in (128, 256)
    }
    written_at = cached[128].stat().st_mtime_ns

    result = evaluate(run, "--shards", str(shards), "--no-fid", "--batch-size", "2")
    report = json.loads((run / "eval" / "step_000002.json").read_text())
    assert "evaluating in fp32 (the run trained with precision=fp16)" in result.stdout
    assert report["settings"]["precision"] == "fp32" and report["settings"]["weights"] == MASTER_WEIGHTS
    assert report["protocol"]["generator_weights"] == f"{MASTER_WEIGHTS}, run in fp32"
    assert report["settings"]["segmenter"] == str(cached[128])  # the run's crop size, beside the 256 one
    assert cached[128].stat().st_mtime_ns == written_at  # used as it was, not retrained


def test_evaluate_help_explains_the_options():
    result = subprocess.run([sys.executable, EVALUATE, "--help"], capture_output=True, text=True, check=True)
    for option in ("--checkpoint", "--no-dropout", "--norm-mode", "--segmenter", "FCN-score"):
        assert option in result.stdout
