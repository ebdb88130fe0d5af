"""What a finished sweep leaves behind: the results table (CSV and Markdown), the best trial's config as a
ready-to-run training YAML, and a plot of the objective against steps for every trial."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2p_dist.config import Config, to_dict
from p2p_dist.tune.space import Objective, trial_config

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BEST_CONFIG = "best_config.yaml"
PLOT = "metric_vs_step.png"


@dataclass
class TrialSummary:
    """One row of the results table."""

    trial: str
    status: str  # completed | stopped (by the scheduler) | error | unfinished (interrupted)
    params: dict[str, Any]  # searched dotted key -> the trial's (final) value
    steps: int  # last step reported
    final: float  # objective at the last evaluation
    best: float  # best objective over the trial's evaluations
    best_step: int
    path: str  # the trial's directory
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, objective) per evaluation


def summarize(
    trial: str,
    params: dict[str, Any],
    curve: list[tuple[int, float]],
    goal: Objective,
    total_steps: int,
    path: str,
    tune_status: str,
) -> TrialSummary:
    """A trial's row from its evaluations (in report order; PBT exploits can make steps jump back) and its
    status as Tune saved it (TERMINATED, ERROR, or PENDING/RUNNING/PAUSED when the sweep was interrupted)."""
    finite = [(s, v) for s, v in curve if math.isfinite(v)]
    pick = max if goal.mode == "max" else min
    best_step, best = pick(finite, key=lambda sv: sv[1]) if finite else (0, math.nan)
    steps, final = curve[-1] if curve else (0, math.nan)
    if tune_status == "TERMINATED":
        status = "completed" if steps >= total_steps else "stopped"
    else:
        status = "error" if tune_status == "ERROR" else "unfinished"
    return TrialSummary(trial, status, dict(params), steps, final, best, best_step, path, list(curve))


def rank(rows: list[TrialSummary], goal: Objective) -> list[TrialSummary]:
    """Best first; trials without a finite result last."""
    sign = -1.0 if goal.mode == "max" else 1.0
    return sorted(rows, key=lambda r: (not math.isfinite(r.best), sign * r.best if math.isfinite(r.best) else 0.0))


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1] if key.startswith("train.") else key


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def scored_on(cfg: Config) -> str:
    """Which images a sweep's objective was scored on (its trials' periodic evaluation): the held-out train images
    (tune.holdout_images, never trained on) or, with none held out, val."""
    held, num = cfg.tune.holdout_images, cfg.eval.num_images
    if held:
        return f"train holdout ({min(num, held)} of {held} held-out train images)"
    return f"val (first {num} images)"


def table(
    rows: list[TrialSummary], keys: list[str], goal: Objective, scored: str = ""
) -> tuple[list[str], list[list[Any]]]:
    header = [
        "trial",
        "status",
        *(_short(k) for k in keys),
        "steps",
        f"final {goal.name}",
        f"best {goal.name}",
        "best step",
        "scored on",
    ]
    body = [
        [r.trial, r.status, *(r.params.get(k) for k in keys), r.steps, r.final, r.best, r.best_step, scored]
        for r in rows
    ]
    return header, body


def write_tables(rows: list[TrialSummary], keys: list[str], goal: Objective, out_dir: Path, scored: str = "") -> str:
    """results.csv (full precision) and results.md; returns the Markdown table. `scored` names the images the
    objective was scored on (`scored_on(cfg)`), in a column and the Markdown caption."""
    header, body = table(rows, keys, goal, scored)
    with open(out_dir / RESULTS_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(body)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(v) for v in row) + " |" for row in body]
    markdown = "\n".join(lines)
    caption = f", scored on {scored}" if scored else ""
    (out_dir / RESULTS_MD).write_text(
        f"Objective: {goal.name} ({goal.mode}imize){caption}, best trial first.\n\n{markdown}\n"
    )
    return markdown


def write_best_config(user_cfg: Config, best: TrialSummary, goal: Objective, sweep_name: str, path: Path) -> Path:
    """The best trial's training config (the sweep's config with its parameters) as a YAML that
    ``python launch/train.py --config PATH`` runs; its run.dir is fresh, so it trains from scratch."""
    cfg = trial_config(user_cfg, best.params, f"runs/{sweep_name}-best")
    header = (
        f"# Best trial of sweep '{sweep_name}': {best.trial}, {goal.name} = {best.best:.6g} at step "
        f"{best.best_step} ({best.status} at step {best.steps}), scored on {scored_on(user_cfg)}.\n"
        f"# It trains on the whole train split (no images held out); report it on val with launch/evaluate.py.\n"
        f"# Train it: python launch/train.py --config {path}\n"
    )
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def plot_curves(rows: list[TrialSummary], goal: Objective, title: str, path: Path) -> Path:
    """The objective against steps, one line per trial; the best trial drawn thicker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, row in enumerate(rows):
        if not row.curve:
            continue
        steps, values = zip(*row.curve)
        params = ", ".join(f"{_short(key)} {_format(value)}" for key, value in row.params.items())
        label = f"{row.trial}{' (best)' if i == 0 else ''}, {row.status}: {params}"
        ax.plot(steps, values, marker="o", linewidth=3 if i == 0 else 1.2, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{goal.name} ({'higher' if goal.mode == 'max' else 'lower'} is better)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
