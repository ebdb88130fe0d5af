"""Before and after: the real training loop of two commits, run alternately on the same machine and data.

    python benchmarks/compare_commits.py --base 4cd12a1            # the base against the working tree
    python benchmarks/compare_commits.py --base v1 --head v2 --rounds 5

Each round runs `launch/train.py` of the base (a temporary git worktree) and of the head for `--steps` steps
at `--batch`, on the demo shards with the DALI loader, one after the other, in the environment a user's shell
has (each commit applies its own process defaults). Figures are the medians of each run's steady-state
metrics.jsonl records, and across rounds. Only options both commits know can be passed (`overrides`).
Writes benchmarks/results/<machine>-<date>-commits-<base>-<head>-<config>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peer_process import users_environment

from p2p_dist.data.demo.shard_set import DEMO_SHARDS, ensure_demo_shards

from bench_common import REPO_ROOT, RESULTS_DIR, machine_facts, machine_name, summarise, today
from bench_runs import summarise_metrics


def _rev(rev: str) -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def _worktree(rev: str, path: Path) -> Path:
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO_ROOT, check=True)
    return path


def _run_loop(tree: Path, args: argparse.Namespace, run_dir: Path) -> dict:
    overrides = [
        f"data.shards={args.shards}",
        "data.loader=dali",
        f"train.batch_size={args.batch}",
        f"train.steps={args.steps}",
        f"run.dir={run_dir}",
        f"run.log_every={args.log_every}",
        "run.sample_every=1000000",
        "run.checkpoint_every=1000000",
        "eval.every=0",
        *args.overrides,
    ]
    command = [sys.executable, str(tree / "launch" / "train.py"), "--config", str(tree / args.config), *overrides]
    env = {**users_environment(), "PYTHONPATH": str(tree)}  # the tree's p2p_dist, not the one installed here
    result = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return summarise_metrics(records)


def compare(args: argparse.Namespace) -> dict:
    base, head = _rev(args.base), (_rev(args.head) if args.head else "working tree")
    rates: dict[str, list[float]] = {base: [], head: []}
    with tempfile.TemporaryDirectory(prefix="p2p-compare-") as tmp:
        worktrees = {base: _worktree(base, Path(tmp) / "base")}
        worktrees[head] = _worktree(head, Path(tmp) / "head") if args.head else REPO_ROOT
        try:
            for round_ in range(args.rounds):
                for name, tree in worktrees.items():
                    summary = _run_loop(tree, args, Path(tmp) / f"run-{round_}-{'base' if name == base else 'head'}")
                    rates[name].append(summary["images_per_s"]["median"])
                    print(f"round {round_ + 1}/{args.rounds} {name}: {rates[name][-1]:.2f} images/s", flush=True)
        finally:
            for tree in worktrees.values():
                if tree != REPO_ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO_ROOT, check=False)
    return {
        "base": base,
        "head": head,
        "batch_size": args.batch,
        "steps": args.steps,
        "config": args.config,
        "overrides": args.overrides,
        "images_per_s": {name: summarise(values) for name, values in rates.items()},
        "ratio": statistics.median(rates[head]) / statistics.median(rates[base]),
    }


def markdown(result: dict, facts: dict) -> str:
    base, head = result["base"], result["head"]
    overrides = " ".join(result["overrides"]) or "none"
    lines = [
        f"# Real loop before and after: {base} -> {head}",
        "",
        f"- machine: {facts['cpu_model']}, {facts['cpu_cores']} cores; CPU flags: {' '.join(facts['cpu_simd'])}",
        f"- `launch/train.py --config {result['config']}` on the demo shards (DALI), batch {result['batch_size']}, "
        f"{result['steps']} steps per run, the commits alternating; overrides: {overrides}",
        "- images/s: median (min-max) over rounds of each run's median steady-state record",
        "",
        "| commit | images/s |",
        "|---|---|",
    ]
    for name, rate in result["images_per_s"].items():
        lines.append(f"| {name} | {rate['median']:.2f} ({rate['min']:.2f}-{rate['max']:.2f}) |")
    lines += ["", f"{head} / {base}: **{result['ratio']:.2f}x**", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit to compare against (any git revision)")
    parser.add_argument("--head", default=None, help="the commit compared (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each commit, alternating")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--log-every", type=int, default=5, help="steps per metrics record")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument(
        "--config",
        default="configs/cityscapes.yaml",
        help="the run's config, as a path inside each commit (default: the paper's recipe, unet_256 at 256x256)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the results go")
    parser.add_argument("--shards", type=Path, default=None, help="shard set (default: the demo set, built if missing)")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides both commits know")
    args = parser.parse_args(argv)
    # One absolute path: both commits read the same set.
    args.shards = args.shards.resolve() if args.shards else ensure_demo_shards(REPO_ROOT / DEMO_SHARDS)
    facts = machine_facts()
    result = compare(args)
    head = result["head"].replace(" ", "-")
    stem = f"{machine_name(facts)}-{today()}-commits-{result['base']}-{head}-{Path(args.config).stem}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps({"machine": facts, **result}, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(result, facts))
    print(markdown(result, facts))
    print(f"results: {args.out / stem}.json / .md")


if __name__ == "__main__":
    main()
