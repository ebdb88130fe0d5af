import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from markerdata import write_cityscapes_tree

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "launch" / "pack.py"
TINY = ["--size", "64x32", "--samples-per-shard", "4", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def pack_cli():
    spec = importlib.util.spec_from_file_location("pack_cli", PACK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PACK), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    result = run_script("--help")
    assert result.returncode == 0
    for command in ("cityscapes", "aligned", "demo", "verify"):
        assert command in result.stdout


def test_missing_source_directory_is_a_clear_error(tmp_path):
    result = run_script("cityscapes", str(tmp_path / "no-such-dir"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"{tmp_path / 'no-such-dir'} is not a directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_pack_then_verify_then_verify_names_a_damaged_shard(tmp_path, pack_cli, capsys):
    source = write_cityscapes_tree(tmp_path / "src", {"train": 5, "val": 2})
    out = tmp_path / "out"
    assert pack_cli.main(["cityscapes", str(source), "--out", str(out), *TINY]) == 0
    assert "images/s" in capsys.readouterr().out
    assert pack_cli.main(["verify", str(out), "--full", "--workers", "1"]) == 0
    assert "OK (3 shards, 7 samples, every member decoded)" in capsys.readouterr().out
    shard = out / "val" / "shard-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-2048])
    assert pack_cli.main(["verify", str(out), "--workers", "1"]) == 1
    assert f"FAIL {shard}" in capsys.readouterr().err


def test_strict_pack_of_a_bad_source_exits_with_an_error_naming_it(tmp_path, pack_cli, capsys):
    source = write_cityscapes_tree(tmp_path / "src", {"train": 2})
    label = sorted((source / "gtFine" / "train").glob("*/*_labelIds.png"))[0]
    label.write_bytes(b"not a png")
    argv = ["cityscapes", str(source), "--out", str(tmp_path / "out"), "--splits", "train", "--strict", *TINY]
    assert pack_cli.main(argv) == 2
    assert str(label) in capsys.readouterr().err


def test_a_strict_overwrite_that_stops_keeps_the_old_set_verifiable(tmp_path, pack_cli, capsys):
    source = write_cityscapes_tree(tmp_path / "src", {"train": 3, "val": 1})
    out = tmp_path / "out"
    assert pack_cli.main(["cityscapes", str(source), "--out", str(out), *TINY]) == 0
    manifest = (out / "manifest.json").read_bytes()
    label = sorted((source / "gtFine" / "train").glob("*/*_labelIds.png"))[1]
    label.write_bytes(b"not a png")
    argv = ["cityscapes", str(source), "--out", str(out), "--overwrite", "--strict", *TINY]
    assert pack_cli.main(argv) == 2
    assert str(label) in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == manifest
    assert pack_cli.main(["verify", str(out), "--full", "--workers", "1"]) == 0
    assert "OK (2 shards, 4 samples, every member decoded)" in capsys.readouterr().out


def test_demo_command_builds_a_verified_set(tmp_path, pack_cli, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-train", "2", "--num-val", "1", "--demo-size", "64x32", *TINY]
    assert pack_cli.main(argv) == 0
    assert pack_cli.main(["verify", str(out), "--workers", "1"]) == 0


def test_invalid_size_is_rejected_by_the_parser(tmp_path, pack_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        pack_cli.main(["demo", "--out", str(tmp_path), "--size", "big"])
    assert exit_info.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
