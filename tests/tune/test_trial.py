"""How a trial hands its checkpoints and metrics to Tune and takes a Tune checkpoint back (no Ray cluster)."""

import json
from dataclasses import asdict

import pytest
from ray import tune

from p2p_dist.config import ConfigError, load_config
from p2p_dist.run_dir import latest_checkpoint
from p2p_dist.train.checkpoint import TrainerState
from p2p_dist.tune.space import OBJECTIVES
from p2p_dist.tune.sweep import run_sweep
from p2p_dist.tune.trial import place_checkpoint, tune_metrics


def fake_checkpoint(path, step: int):
    """A directory laid out like the trainer's step_NNNNNN checkpoints (contents are placeholders)."""
    for sub in ("G/engine", "D/engine", "rng"):
        (path / sub).mkdir(parents=True)
    (path / "G" / "engine" / "weights.pt").write_bytes(b"G")
    (path / "rng" / "rank_00000.pt").write_bytes(b"rng")
    (path / "trainer.json").write_text(json.dumps(asdict(TrainerState(step=step, epoch=1, batch_in_epoch=3))))
    return path


def test_a_tune_checkpoint_becomes_the_only_and_latest_checkpoint_the_trainer_resumes_from(tmp_path):
    source = fake_checkpoint(tmp_path / "donor_trial" / "checkpoint_000003", step=7)
    run = tmp_path / "trial" / "run"
    fake_checkpoint(run / "checkpoints" / "step_000009", step=9)  # this trial's own later history
    (run / "checkpoints" / "latest").write_text("step_000009")

    assert place_checkpoint(tune.Checkpoint.from_directory(str(source)), run) == 7

    restored = latest_checkpoint(run / "checkpoints")
    assert restored == run / "checkpoints" / "step_000007"
    assert (restored / "G" / "engine" / "weights.pt").read_bytes() == b"G"
    assert TrainerState(**json.loads((restored / "trainer.json").read_text())).batch_in_epoch == 3
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000007"]
    assert (source / "trainer.json").is_file()  # the donor's checkpoint is copied, not moved


@pytest.mark.parametrize("metric, eval_key", [("fcn_miou", "fcn/mean_iou"), ("fid", "fid"), ("l1", "l1")])
def test_a_tune_result_carries_the_step_the_objective_by_its_tune_name_and_every_metric(metric, eval_key):
    metrics = {"l1": 0.2, "ssim": 0.5, "fcn/mean_iou": 0.31, "fcn/pixel_acc": 0.7, "fid": 88.0}
    row = tune_metrics(40, metrics, OBJECTIVES[metric])
    assert row["step"] == 40 and row[metric] == metrics[eval_key]
    assert row["fcn_mean_iou"] == 0.31 and row["fcn_pixel_acc"] == 0.7 and row["ssim"] == 0.5
    assert not any("/" in key for key in row)  # Tune would nest such keys


def sweep_cfg(tmp_path, *overrides):
    return load_config(
        None,
        [
            "train.steps=4",
            "eval.every=2",
            "eval.fcn=false",
            "tune.metric=l1",
            f"tune.storage_path={tmp_path}",
            "tune.name=s",
            *overrides,
        ],
    )


def test_starting_a_sweep_where_one_exists_asks_for_resume_or_another_name(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "tuner.pkl").write_bytes(b"")
    with pytest.raises(ConfigError, match="--resume, or set another tune.name"):
        run_sweep(sweep_cfg(tmp_path))


def test_resuming_a_sweep_that_does_not_exist_names_where_it_looked(tmp_path):
    with pytest.raises(ConfigError, match=f"no sweep to resume in {tmp_path / 's'}"):
        run_sweep(sweep_cfg(tmp_path), resume=True)
