"""The sweep's results: table rows, ranking, best config YAML and the plot (from hand-made trial curves)."""

import csv
import math

from p2p_dist.config import load_config
from p2p_dist.tune import results
from p2p_dist.tune.space import OBJECTIVES

L1, MIOU = OBJECTIVES["l1"], OBJECTIVES["fcn_miou"]
KEYS = ["train.lambda_l1", "train.lr_g", "train.lr_d", "model.norm"]


def row(name, curve, goal=L1, total=6, tune_status="TERMINATED", lr_g=1e-4):
    params = {"train.lambda_l1": 50.0, "train.lr_g": lr_g, "train.lr_d": 2e-4, "model.norm": "instance"}
    return results.summarize(name, params, curve, goal, total, f"/x/{name}", tune_status)


def test_a_trial_row_has_its_final_and_best_values_in_the_objectives_direction():
    curve = [(2, 0.30), (4, 0.20), (6, 0.25)]
    by_l1, by_miou = row("a", curve, L1), row("a", curve, MIOU)
    assert (by_l1.steps, by_l1.final, by_l1.best, by_l1.best_step) == (6, 0.25, 0.20, 4)
    assert (by_miou.best, by_miou.best_step) == (0.30, 2)


def test_status_says_whether_a_trial_completed_was_stopped_early_failed_or_was_interrupted():
    assert row("a", [(2, 0.3), (6, 0.2)], total=6).status == "completed"
    assert row("a", [(2, 0.3)], total=6).status == "stopped"
    assert row("a", [(2, 0.3)], total=6, tune_status="ERROR").status == "error"
    assert row("a", [(2, 0.3)], total=6, tune_status="PENDING").status == "unfinished"


def test_trials_rank_best_first_and_trials_without_a_finite_result_last():
    rows = [row("no_result", []), row("nan", [(2, math.nan)]), row("worse", [(2, 0.3)]), row("best", [(2, 0.1)])]
    assert [r.trial for r in results.rank(rows, L1)][:2] == ["best", "worse"]
    assert [r.trial for r in results.rank(rows, MIOU)][:2] == ["worse", "best"]


def test_tables_best_config_and_plot_are_written(tmp_path):
    rows = results.rank(
        [row("t0", [(2, 0.3), (4, 0.28)], total=4, lr_g=3e-4), row("t1", [(2, 0.25), (4, 0.21)], total=4, lr_g=7e-5)],
        L1,
    )
    user_cfg = load_config(
        None,
        ["train.steps=4", "eval.every=2", "data.shards=shards/demo", "eval.num_images=32", "tune.holdout_images=48"],
    )
    markdown = results.write_tables(rows, KEYS, L1, tmp_path, scored=results.scored_on(user_cfg))

    with open(tmp_path / results.RESULTS_CSV) as f:
        table = list(csv.DictReader(f))
    assert [r["trial"] for r in table] == ["t1", "t0"]
    assert float(table[0]["lr_g"]) == 7e-5 and table[0]["model.norm"] == "instance"
    assert float(table[0]["best l1"]) == 0.21 and table[0]["status"] == "completed"
    assert markdown.splitlines()[0].startswith("| trial | status | lambda_l1 | lr_g | lr_d | model.norm |")
    scored = "train holdout (32 of 48 held-out train images)"
    assert table[0]["scored on"] == scored
    assert (
        f"| t1 | completed | 50 | 7e-05 | 0.0002 | instance | 4 | 0.21 | 0.21 | 4 | {scored} |" in markdown.splitlines()
    )
    assert (
        f"Objective: l1 (minimize), scored on {scored}, best trial first."
        in (tmp_path / results.RESULTS_MD).read_text()
    )
    assert markdown in (tmp_path / results.RESULTS_MD).read_text()
    path = results.write_best_config(user_cfg, rows[0], L1, "mysweep", tmp_path / results.BEST_CONFIG)
    best = load_config(path)  # a training config, as launch/train.py reads it
    assert (best.train.lr_g, best.train.lambda_l1, best.model.norm) == (7e-5, 50.0, "instance")
    assert best.run.dir == "runs/mysweep-best" and best.data.shards == "shards/demo"
    assert "t1" in path.read_text().splitlines()[0] and scored in path.read_text().splitlines()[0]
    assert best.data.holdout == 0  # the chosen config trains on the whole train split

    plot = results.plot_curves(rows, L1, "test", tmp_path / results.PLOT)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_the_objective_is_scored_on_held_out_train_images_by_default_or_on_val_when_none_are_held_out():
    cfg = load_config(None, ["train.steps=4", "eval.num_images=64"])
    assert cfg.tune.holdout_images == 64 and cfg.data.holdout == 0
    assert results.scored_on(cfg) == "train holdout (64 of 64 held-out train images)"
    assert results.scored_on(load_config(None, ["train.steps=4", "tune.holdout_images=0"])) == "val (first 64 images)"
