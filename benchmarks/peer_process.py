"""The reference step's peers timed in a process of their own, with the environment a user's script would have.

A user who writes the two-line peer runs it with `python`: glibc's and OpenMP's defaults, not p2p_dist's process
defaults (p2p_dist.process_defaults), which the benchmark's own process runs with and hands to its peers there.
`benchmarks/run.py --sections loop` runs this script with those settings taken out of the environment, so the real
loop is also compared with the peers as a user gets them. Prints one JSON list of rows.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from p2p_dist.process_defaults import DEFAULTED_ENV, PROCESS_ENV_KEYS, defaulted_keys

from bench_common import REPO_ROOT, pooled_summary, summarise, time_call


def users_environment() -> dict:
    """This process's environment without the process defaults p2p_dist set (what the user set stays)."""
    ours = defaulted_keys() | {DEFAULTED_ENV}
    return {key: value for key, value in os.environ.items() if key not in ours}


def measure_in_own_process(
    batch_size: int, resolution: int, overrides: list[str], steps: int, warmup: int, timeout_s: float
) -> list[dict]:
    """Run this script in a fresh interpreter with the user's environment; its rows."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--batch",
        str(batch_size),
        "--resolution",
        str(resolution),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        *overrides,
    ]
    result = subprocess.run(
        command, env=users_environment(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def peers_a_user_would_run(device) -> list:
    """The reference peers worth timing on `device`: all of them on CUDA and on a CPU with native bf16; on a CPU
    without it only the fp32 reference, since bf16 autocast falls back to slow reference kernels there (~55 s a step
    at batch 1 on a 2-core AVX2-only EPYC: three rounds of the bf16 peers would take hours) and the fp32 reference
    is the peer to beat (`run.best_peer`)."""
    from p2p_dist.runtime import has_fast_bf16

    from bench_step import reference_peers, reference_variant

    return reference_peers(device) if device.type == "cuda" or has_fast_bf16(device) else [reference_variant()]


def pooled_peers(rounds: list[list[dict]]) -> list[dict]:
    """Each peer's rows of several rounds as one row: all their timed steps together."""
    names = dict.fromkeys(row["peer"] for rows in rounds for row in rows)
    out = []
    for name in names:
        rows = [row for peers in rounds for row in peers if row["peer"] == name]
        out.append({**rows[0], "images_per_s": pooled_summary([row["images_per_s"] for row in rows])})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, required=True, help="images per step")
    parser.add_argument("--resolution", type=int, default=256, help="crop size (square)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per peer, after the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per peer first")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides of the models (model.ngf=8 ...)")
    args = parser.parse_args(argv)

    import torch

    from p2p_dist.runtime import Runtime

    from bench_step import build_variant, make_batch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rt = Runtime(0, 0, 1, 1, device, "fp32")  # peers take their precision from their variant
    batch = make_batch(args.batch, args.resolution, device)
    rows = []
    for variant in peers_a_user_would_run(device):
        step = build_variant(variant, rt, args.resolution, model_overrides=tuple(args.overrides))
        for _ in range(args.warmup):
            step(batch)
        seconds = [time_call(functools.partial(step, batch), device) for _ in range(args.steps)]
        rows.append(
            {
                "peer": variant.name,
                "precision": variant.precision,
                "batch_size": args.batch,
                "images_per_s": summarise([args.batch / s for s in seconds]),
                "environment": {key: os.environ.get(key) for key in PROCESS_ENV_KEYS},
            }
        )
        del step
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
