"""The run directory's layout, its `latest` pointer and how a checkpoint is found by name or as the latest."""

import pytest

from p2p_dist.run_dir import (
    RunDir,
    checkpoint_name,
    latest_checkpoint,
    partial_checkpoint,
    partial_checkpoints,
    resolve_checkpoint,
    step_checkpoints,
    write_latest,
)


def make_checkpoint(root, step: int, complete: bool = True):
    path = root / checkpoint_name(step)
    (path / "G").mkdir(parents=True)
    if complete:
        (path / "trainer.json").write_text("{}")
    return path


def test_the_layout_names_every_output_of_a_run(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.path == tmp_path
    assert [run.config, run.metrics, run.summary] == [
        tmp_path / n for n in ("config.yaml", "metrics.jsonl", "summary.json")
    ]
    assert [run.samples, run.checkpoints, run.tensorboard, run.eval] == [
        tmp_path / n for n in ("samples", "checkpoints", "tensorboard", "eval")
    ]
    assert run.sample_grid(42) == tmp_path / "samples" / "step_000042.png"
    assert not any(tmp_path.iterdir())  # asking for paths creates nothing


def test_latest_is_none_before_the_first_checkpoint_then_names_the_one_written_last(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    make_checkpoint(tmp_path, 3)
    write_latest(tmp_path, checkpoint_name(3))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000003"
    make_checkpoint(tmp_path, 7)
    write_latest(tmp_path, checkpoint_name(7))
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000007"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_000003", "step_000007"]  # no temp file


def test_a_pointer_to_an_incomplete_checkpoint_is_an_error(tmp_path):
    make_checkpoint(tmp_path, 5, complete=False)
    write_latest(tmp_path, checkpoint_name(5))
    with pytest.raises(FileNotFoundError, match="step_000005, which is not a complete checkpoint"):
        latest_checkpoint(tmp_path)


def test_checkpoints_are_ordered_by_step_number_and_partial_writes_are_apart(tmp_path):
    for step in (999_999, 1_000_000, 20):
        make_checkpoint(tmp_path, step)
    partial = partial_checkpoint(tmp_path, checkpoint_name(21))
    partial.mkdir()
    assert [p.name for p in step_checkpoints(tmp_path)] == ["step_000020", "step_999999", "step_1000000"]
    assert partial_checkpoints(tmp_path) == [partial]


def test_resolve_takes_the_latest_a_name_or_a_directory_and_lists_what_exists_when_not_found(tmp_path):
    run = RunDir(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no checkpoint yet"):
        resolve_checkpoint(run.path)
    older, newer = make_checkpoint(run.checkpoints, 3), make_checkpoint(run.checkpoints, 7)
    write_latest(run.checkpoints, newer.name)
    assert resolve_checkpoint(run.path) == newer
    assert resolve_checkpoint(run.path, "step_000003") == older
    assert resolve_checkpoint(tmp_path / "elsewhere", older) == older
    with pytest.raises(FileNotFoundError, match=r"'step_000999' not found .*available: step_000003, step_000007"):
        resolve_checkpoint(run.path, "step_000999")


def test_reading_the_config_of_something_that_is_not_a_run_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.yaml; is this a run directory"):
        RunDir(tmp_path).read_config()
