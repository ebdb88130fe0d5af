"""Every entry point answers a user's mistake (a wrong path, a directory that is not what it should be, a bad
config key or file, an unsafe checkpoint) with exit status 2 and one line naming it, also under the deepspeed
launcher. Tracebacks are for bugs."""

import subprocess
import sys

import pytest
import torch

from p2p_dist.config import load_config, save_config
from p2p_dist.train.checkpoint import ENGINE_TAG

from runs import DEEPSPEED, ROOT, TINY, free_port, train_env


def launch(script: str) -> list[str]:
    return [sys.executable, str(ROOT / "launch" / script)]


def assert_user_error(command: list[str], *named: str) -> str:
    result = subprocess.run(command, env=train_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    (line,) = [line for line in result.stderr.splitlines() if ": error: " in line]
    for text in named:
        assert text in line, line
    return line


def run_dir(root, checkpoint_payload: dict | None = None):
    """A directory laid out as launch/train.py writes one: config.yaml, and a step_000001 checkpoint whose G
    weights file holds `checkpoint_payload` (none: no checkpoint yet)."""
    root.mkdir()
    save_config(load_config(None, [*TINY, "train.steps=1"]), root / "config.yaml")
    if checkpoint_payload is not None:
        weights = root / "checkpoints" / "step_000001" / "G" / ENGINE_TAG
        weights.mkdir(parents=True)
        torch.save(checkpoint_payload, weights / "mp_rank_00_model_states.pt")
        (root / "checkpoints" / "step_000001" / "trainer.json").write_text("{}")
        (root / "checkpoints" / "latest").write_text("step_000001")
    return root


class CreatesAFile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_train_names_a_missing_shards_directory(tmp_path):
    missing = tmp_path / "nowhere"
    assert_user_error(
        [*launch("train.py"), f"data.shards={missing}", f"run.dir={tmp_path / 'run'}"],
        f"data.shards={missing}",
        "no such directory",
    )


def test_train_under_the_deepspeed_launcher_names_a_shards_directory_without_a_manifest(tmp_path):
    command = [
        DEEPSPEED,
        "--num_gpus",
        "1",
        "--master_port",
        str(free_port()),
        str(ROOT / "launch" / "train.py"),
        f"data.shards={tmp_path}",
        f"run.dir={tmp_path / 'run'}",
    ]
    assert_user_error(command, f"data.shards={tmp_path}", "no manifest.json")


@pytest.mark.parametrize(("override", "named"), [("train.steps=abc", "train.steps"), ("train.stepz=1", "train.stepz")])
def test_train_names_a_bad_config_key_or_value(override, named):
    assert_user_error([*launch("train.py"), override], named)


def test_tune_names_a_missing_config_file(tmp_path):
    assert_user_error([*launch("tune.py"), "--config", str(tmp_path / "sweep.yaml")], str(tmp_path / "sweep.yaml"))


def test_evaluate_names_a_run_directory_that_does_not_exist(tmp_path):
    assert_user_error([*launch("evaluate.py"), "--run", str(tmp_path / "nowhere")], str(tmp_path / "nowhere"))


def test_evaluate_names_a_run_directory_without_checkpoints(tmp_path):
    run = run_dir(tmp_path / "run")
    assert_user_error([*launch("evaluate.py"), "--run", str(run)], str(run), "no checkpoint yet")


def test_translate_refuses_weights_that_would_run_code_and_they_do_not_run(tmp_path):
    marker = tmp_path / "payload-ran"
    run = run_dir(tmp_path / "run", {"module": {}, "extra": CreatesAFile(marker)})
    assert_user_error(
        [*launch("translate.py"), "--run", str(run), "--export", "onnx", "--export-path", str(tmp_path / "g.onnx")],
        "mp_rank_00_model_states.pt",
        "refused",
    )
    assert not marker.exists()


def test_translate_names_an_unknown_checkpoint_and_the_ones_there_are(tmp_path):
    run = run_dir(tmp_path / "run", {"module": {}})
    assert_user_error(
        [
            *launch("translate.py"),
            "--run",
            str(run),
            "--checkpoint",
            "step_000009",
            "--export",
            "onnx",
            "--export-path",
            str(tmp_path / "g.onnx"),
        ],
        "'step_000009'",
        "available: step_000001",
    )


def test_pack_verify_names_a_missing_shard_set(tmp_path):
    assert_user_error([*launch("pack.py"), "verify", str(tmp_path / "nowhere")], str(tmp_path / "nowhere"))


def test_train_segmenter_names_a_shard_directory_without_a_manifest(tmp_path):
    assert_user_error([*launch("train_segmenter.py"), "--shards", str(tmp_path)], str(tmp_path), "manifest.json")
