"""launch/translate.py: --help, argument errors, translation and export through the CLI, and end to end on a
run written by launch/train.py."""

import json

import numpy as np
import pytest
import torch

from p2p_dist.inference.translate import translate_paths
from p2p_dist.models import LABEL_CHANNELS
from p2p_dist.models.translation_modes import translation_modes
from p2p_dist.train.trained_generator import load_generator

from inference_helpers import TRANSLATE, block_ids, read_rgb, run_script, save_colour, save_ids, translate_cli

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")


def test_help_explains_inputs_sizes_test_time_behaviour_and_export():
    result = run_script(TRANSLATE, "--help")
    for text in (
        "--run",
        "--input",
        "--output",
        "--checkpoint",
        "--batch-size",
        "--device",
        "--size WxH",
        "--no-dropout",
        "--norm-mode",
        "--output-size",
        "--input-format",
        "--export",
        "--export-path",
        "multiples of N",
        "cuda when available",
    ):
        assert text in result.stdout, text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run", "r"], "nothing to do"),
        (["--run", "r", "--input", "x"], "--input and --output go together"),
        (["--run", "r", "--export", "onnx"], "--export needs --export-path"),
        (["--run", "r", "--input", "x", "--output", "y", "--size", "512"], "not of the form WxH"),
    ],
)
def test_argument_errors_exit_with_a_message(args, message):
    result = run_script(TRANSLATE, *args, check=False)
    assert result.returncode == 2 and message in result.stderr


def test_a_size_the_generator_cannot_take_exits_with_the_accepted_sizes(color_run, tmp_path, capsys):
    save_ids(tmp_path / "in" / "odd_labelIds.png", block_ids(128, 200, seed=1))
    status = translate_cli().main(
        [
            "--run",
            str(color_run),
            "--input",
            str(tmp_path / "in"),
            "--output",
            str(tmp_path / "out"),
            "--device",
            "cpu",
            "--size",
            "200x128",
        ]
    )
    assert status == 2
    stderr = capsys.readouterr().err
    assert "size 200x128 (WxH)" in stderr and "multiples of 128" in stderr


def translate_and_export_through_the_cli(run, tmp_path, cli_call) -> None:
    """Translate two maps (ids and colour, two sizes) and export TorchScript through the CLI, then check the
    photos equal the library's for the same options and the export computes the generator."""
    inputs = tmp_path / "in"
    save_ids(inputs / "a_gtFine_labelIds.png", block_ids(128, 256, seed=2))
    save_colour(inputs / "b.png", block_ids(256, 128, seed=3))
    out, export = tmp_path / "out", tmp_path / "export" / "generator.pt"
    stderr = cli_call(
        "--run",
        run,
        "--input",
        inputs,
        "--output",
        out,
        "--batch-size",
        "2",
        "--no-dropout",
        "--no-progress",
        "--device",
        "cpu",
        "--export",
        "torchscript",
        "--export-path",
        export,
    )
    assert "wrote 2 photos" in stderr and "generated at 128x128" in stderr and "exported torchscript" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_fake.png", "b_fake.png"]

    generator, cfg = load_generator(run, device="cpu")
    again = translate_paths(generator, cfg, sorted(inputs.iterdir()), tmp_path / "again", dropout=False, progress=False)
    for produced in again:
        assert np.array_equal(read_rgb(out / produced.name), read_rgb(produced))

    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    meta = json.loads(export.with_suffix(".json").read_text())
    assert meta["checkpoint"] == str(checkpoint) and meta["dropout"] is False
    assert meta["norm_mode"] == ("instance" if cfg.model.norm == "instance" else "per-image")
    label = torch.rand(2, LABEL_CHANNELS[cfg.data.label_encoding], 128, 128) * 2 - 1
    with torch.no_grad(), translation_modes(generator, dropout=False) as translate:
        torch.testing.assert_close(torch.jit.load(str(export))(label), translate(label), rtol=0, atol=1e-5)


def test_cli_translates_a_folder_and_exports_the_generator(color_run, tmp_path, capsys):
    def in_process(*args) -> str:
        translate_cli().main(list(map(str, args)))
        return capsys.readouterr().err

    translate_and_export_through_the_cli(color_run, tmp_path, in_process)


def test_cli_works_on_a_run_directory_written_by_launch_train(trained_run, tmp_path):
    # ~30 s (a DeepSpeed training step in a subprocess, then the CLI in another): the one check against the
    # checkpoint layout DeepSpeed itself writes.
    translate_and_export_through_the_cli(trained_run, tmp_path, lambda *args: run_script(TRANSLATE, *args).stderr)
