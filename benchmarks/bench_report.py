"""The result as a Markdown report (also printed) and a PNG plot."""

from __future__ import annotations

import textwrap
from pathlib import Path

GIB = 2**30


def _rate(summary: dict | None, digits: int = 2) -> str:
    """'median (min-max)' of a summarise() dict."""
    if not summary:
        return "-"
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}-{summary['max']:.{digits}f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _load(record: dict) -> str:
    before, after = record.get("load_before"), record.get("load_after")
    return f"load {before} -> {after}, {record.get('wall_s', '?')} s" if before else ""


def _step_rows(rows: list[dict]) -> list[list[str]]:
    out = []
    for r in rows:
        if "skipped" in r:
            out.append([r["variant"], r["precision"], r["batch_size"], f"skipped: {r['skipped']}"] + ["-"] * 8)
            continue
        note = "" if r["warmed_up"] else " (1 unwarmed step)"
        out.append(
            [
                r["variant"],
                r["precision"],
                r["batch_size"],
                _rate(r["images_per_s"]) + note,
                f"{r['step_s']['median']:.3f}",
                f"{r['cpu_s_per_image']['median']:.2f}",
                f"{r['flops_per_image'] / 1e9:.1f}",
                f"{r.get('achieved_flops', 0) / 1e9:.1f}",
                f"{100 * r['utilisation']:.1f}%" if "utilisation" in r else "-",
                _percent(r.get("utilisation_of_bf16_peak")),
                f"{r['peak_memory_bytes'] / GIB:.2f}",
                r["images_per_s"]["n"],
            ]
        )
    return out


STEP_HEADER = [
    "variant",
    "precision",
    "batch",
    "images/s median (min-max)",
    "s/step",
    "CPU s/image",
    "GFLOP/image",
    "GFLOP/s",
    "of peak",
    "of bf16 peak",
    "peak mem GiB",
    "n",
]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _gpu_line(m: dict) -> str:
    """The GPU, its driver and the CUDA stack a GPU result was measured with."""
    if not m.get("gpus"):
        return "; no GPU"
    details = [f"driver {m.get('gpu_driver') or '?'}", f"CUDA {m.get('cuda') or '?'}", f"cuDNN {m.get('cudnn') or '?'}"]
    if m.get("gpu_memory_gib"):
        details.append(f"{m['gpu_memory_gib']} GiB")
    if m.get("tf32"):
        details.append(f"TF32 cuDNN {m['tf32']['cudnn']}, matmul {m['tf32']['matmul']}")
    return f"; GPU: {', '.join(m['gpus'])} ({'; '.join(details)})"


def _cpu_flags_line(m: dict) -> str:
    """The CPU's bf16/AMX/AVX-512 flags that the automatic choices read, and whether they were simulated."""
    flags = " ".join(m.get("cpu_simd") or []) or "none of avx2/avx512/amx"
    native = m.get("cpu_native_bf16")
    kind = (
        ""
        if native is None
        else ("; native bf16 (precision=auto -> bf16)" if native else "; no native bf16 (precision=auto -> fp32)")
    )
    simulated = (
        " -- SIMULATED by P2P_DIST_CPU_FLAGS: the automatic choices are those of that CPU kind, the figures this CPU's"
        if m.get("cpu_flags_simulated")
        else ""
    )
    caps = m.get("kernel_isa_caps")
    capped = (
        f"; kernels capped at {m.get('cpu_kernels')} ({', '.join(f'{k}={v}' for k, v in caps.items())}): that "
        "instruction set's kernels on this CPU's cores, caches and memory, an emulation of such a CPU, not one"
        if caps
        else ""
    )
    return f"CPU flags: {flags}{kind}{simulated}{capped}"


def _headline_lines(baseline: dict) -> list[str]:
    rows = baseline.get("headline") or []
    if not rows:
        return []
    lines = [
        "Headline: p2p_dist's default configuration over the best reference peer measured at each batch size "
        "(and over the fp32 reference step), all interleaved in this run:",
        "",
    ]
    lines += _table(
        [
            "batch",
            "p2p_dist default images/s",
            "precision",
            "best peer",
            "best peer images/s",
            "vs best peer",
            "vs fp32 reference",
        ],
        [
            [
                r["batch_size"],
                _rate(r["default"]),
                r["default_precision"],
                r["best_peer"] or "-",
                _rate(r["best_peer_images_per_s"]),
                _ratio(r["vs_best_peer"]),
                _ratio(r["vs_fp32_reference"]),
            ]
            for r in rows
        ],
    )
    return [*lines, ""]


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _loop_round_lines(s: dict) -> list[str]:
    """The loop section's rounds side by side: how much the ratio to the user-run best peer moves between them."""
    rounds = s.get("rounds", [])
    if len(rounds) < 2 or not all(r.get("peers_in_own_process") for r in rounds):
        return []
    rows = []
    for index, r in enumerate(rounds, 1):
        best = max(r["peers_in_own_process"], key=lambda peer: peer["images_per_s"]["median"])
        loop_rate = r["run"]["images_per_s"]["median"]
        rows.append(
            [
                index,
                _rate(r["run"]["images_per_s"]),
                best["peer"],
                _rate(best["images_per_s"]),
                f"{loop_rate / best['images_per_s']['median']:.2f}x",
            ]
        )
    return [
        "Round by round (each round runs the real loop, then the peers in a process of their own):",
        "",
        *_table(["round", "real loop images/s", "best peer in its own process", "its images/s", "ratio"], rows),
        "",
    ]


def _breakdown_lines(s: dict) -> list[str]:
    """The per-step breakdown, one column pair per profiled variant; the real loop's data wait below it."""
    variants = s["variants"]
    if not variants:
        return []
    lines = [
        f"Batch {s['batch_size']}, {s['steps']} profiled step(s) each after a warm-up; best peer: "
        f"{s['best_peer']} ({s['best_peer_chosen_by']}). Times are {variants[0]['timing']}, per step; "
        "ranges of a kind entered several times in a step are summed. The profiler itself slows small ops: "
        "compare the shares, and the step's speed with the tables above.",
        "",
    ]
    header = ["part of the step"]
    for v in variants:
        header += [f"{v['variant']} ({v['precision']}) ms", "share"]
    parts = list(dict.fromkeys(r["part"] for v in variants for r in v["rows"]))
    body = []
    for part in parts:
        row = [part]
        for v in variants:
            mine = next((r for r in v["rows"] if r["part"] == part), None)
            row += [f"{mine['ms']:.1f}", _percent(mine["share"])] if mine else ["-", "-"]
        body.append(row)
    body.append(["**whole step**"] + [cell for v in variants for cell in (f"**{v['step_ms']:.1f}**", "100%")])
    wait = s.get("data_wait")
    if wait:
        body.append(
            [
                f"data wait in the real loop (section 4: {_percent(wait['fraction'])} of its wall time, "
                f"{wait['loop_step_ms']:.0f} ms per step, {wait['precision']})"
            ]
            + [
                cell
                for v in variants
                for cell in ((f"{wait['ms']:.1f}", _percent(wait["fraction"])) if v.get("default") else ("-", "-"))
            ]
        )
    for i in range(len(variants[0]["of_which"])):
        part = variants[0]["of_which"][i]["part"]
        row = [f"of which: {part}"]
        for v in variants:
            o = v["of_which"][i]
            row += [f"{o['ms']:.1f} ({o['calls']:.0f} calls)", _percent(o["share"])]
        body.append(row)
    lines += _table(header, body)
    note = (
        "A host synchronisation on a CPU reads a CPU tensor (torch's CPU Adam kernels read each step counter so): "
        "it waits for nothing; on CUDA it would stall the launch queue."
    )
    return [*lines, "", note, *_convolution_bound(s), ""]


def _convolution_bound(s: dict) -> list[str]:
    """What the convolution rows imply: a step that runs the peer's convolution kernels on the same shapes cannot
    take less time than those kernels do, so peer step / peer convolution time bounds its speed-up over the peer."""
    by_name = {v["variant"]: v for v in s["variants"]}
    peer, default = by_name.get(s["best_peer"]), next((v for v in s["variants"] if v.get("default")), None)
    conv = "convolution kernels, forward and backward"
    if peer is None or default is None:
        return []
    peer_conv = next((o for o in peer["of_which"] if o["part"] == conv), None)
    default_conv = next((o for o in default["of_which"] if o["part"] == conv), None)
    if not peer_conv or not default_conv or not peer_conv["ms"]:
        return []
    matmuls = next((o for o in default["of_which"] if o["part"].startswith("matmuls standing in")), None)
    default_work = f"the default {default_conv['ms']:.0f} ms" + (
        f" and {matmuls['ms']:.0f} ms of matmuls standing in for the convolutions on small maps" if matmuls else ""
    )
    return [
        "",
        f"Bound at the same kernels: the best peer spends {_percent(peer_conv['share'])} of its profiled step in "
        f"convolution kernels ({peer_conv['ms']:.0f} ms), {default_work}. A step that runs "
        "those kernels on the same shapes cannot beat the peer by more than peer step / peer convolutions = "
        f"**{peer['step_ms'] / peer_conv['ms']:.2f}x**; beyond that only faster convolutions help.",
    ]


def gpu_check_markdown(result: dict) -> str:
    """`make gpu-check`'s own report: each part's status and time, every gpu test's outcome, where packages came
    from (the carried wheels or the machine's image). The benchmark sections follow it (``markdown``)."""
    g, m = result["gpu_check"], result["machine"]
    lines = [
        f"# gpu-check: {result['machine_name']}, {result['date']}: {'OK' if g['ok'] else 'FAILED'}"
        + (" (QUICK dry run: tiny sizes, not a measurement)" if g["quick"] else ""),
        "",
        f"- {', '.join(m['gpus']) or 'no GPU'}; driver {m.get('gpu_driver') or '-'}, CUDA {m.get('cuda') or '-'}, "
        f"cuDNN {m.get('cudnn') or '-'}, torch {m['torch']}, Python {m['python']}",
        f"- wall {g['wall_s']:.0f} s of a {g['budget_s']:.0f} s budget; {g['gpus']} GPU(s)",
        "",
    ]
    lines += _table(
        ["part", "status", "wall s", "limit s"],
        [[p["part"], p["status"], f"{p['wall_s']:.0f}", p["limit_s"]] for p in g["parts"]],
    )
    lines.append("")
    for p in g["parts"]:
        if not p["ok"] and p.get("output_tail"):
            lines += [f"Last output of `{p['part']}`:", "", "```", *p["output_tail"], "```", ""]
    tests = g["tests"]["tests"]
    if tests:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(g["tests"]["counts"].items()))
        lines += [f"## GPU tests ({counts})", ""]
        lines += _table(
            ["test", "outcome", "s", "message"],
            [[t["test"], t["outcome"], f"{t['seconds']:.1f}", t["message"].replace("|", "/")] for t in tests],
        )
        lines.append("")
    imports = g.get("imports")
    if imports:
        lines += [f"## Packages ({imports['executable']}, Python {imports['python']})", ""]
        lines += _table(
            ["distribution", "version", "from"],
            [
                [name, d["version"], d["location"]] if d else [name, "absent", "-"]
                for name, d in imports["distributions"].items()
            ],
        )
        failed = {k: v for k, v in imports["imports"].items() if str(v).startswith("FAILED")}
        if failed:
            lines += ["", "Imports that failed:", ""] + [f"- `{k}`: {v}" for k, v in failed.items()]
        lines.append("")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    m, plan, sections = result["machine"], result["plan"], result["sections"]
    lines = [f"# p2p_dist benchmark: {result['machine_name']}, {result['date']}", ""]
    lines += [
        f"- machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB" + _gpu_line(m),
        "- " + _cpu_flags_line(m),
        f"- software: torch {m['torch']}, deepspeed {m['deepspeed']}, DALI {m['dali']}, "
        f"webdataset {m['webdataset']}, Python {m['python']}; process env {m.get('process_env', '?')}",
        f"- model: pix2pix unet + PatchGAN at {plan['resolution']}x{plan['resolution']}"
        + (
            f", overrides {' '.join(plan['model_overrides'])}"
            if plan["model_overrides"]
            else " (p2p_dist defaults: ngf=ndf=64, batch norm)"
        )
        + ("; QUICK run (tiny, not a measurement)" if plan["quick"] else ""),
        f"- command: `{result['command']}`",
        "- every figure: median (min-max) over n repeats after warm-up; variants measured interleaved",
        "- CPU s/image: this process's CPU time per image over all its threads; unlike wall time it barely "
        "moves with other load, but counts OpenMP threads spinning at barriers",
        f"- load averages (1/5/15 min) at start {result['load_start']}, at end {result['load_end']} "
        f"on {m['cpu_cores']} cores: a load above the core count means other work shared the machine",
        "",
    ]

    targets = result.get("targets", [])
    if targets:
        lines += ["## Targets", ""]
        lines += _table(
            ["target", "measured", "met"],
            [[t["target"], t["measured"], {True: "yes", False: "NO", None: "n/a"}[t["met"]]] for t in targets],
        )
        lines.append("")

    if "data" in sections:
        s = sections["data"]
        lines += [f"## 1. Data plane ({_load(s)})", ""]
        lines += _table(
            ["loader", "decode", "batch", "resolution", "workers", "prefetch", "images/s median (min-max)", "n"],
            [
                [
                    r["backend"],
                    r["decode"],
                    r["batch_size"],
                    r["crop_size"],
                    r["num_workers"],
                    r["prefetch"],
                    _rate(r["images_per_s"], 1),
                    r["images_per_s"]["n"],
                ]
                for r in s["loaders"]
            ],
        )
        lines.append("")
        lines += _table(
            ["packing workers", "images", "source", "stored as", "images/s median (min-max)", "n"],
            [
                [
                    r["workers"],
                    r["num_images"],
                    "x".join(map(str, r["source_size"])),
                    r["storage_size"],
                    _rate(r["images_per_s"], 1),
                    r["images_per_s"]["n"],
                ]
                for r in s["packing"]
            ],
        )
        lines.append("")

    if "step" in sections:
        s = sections["step"]
        lines += [f"## 2. Training step, per process ({_load(s)})", ""]
        lines += _table(STEP_HEADER, _step_rows(s["rows"]))
        lines += [
            "",
            "Matmul peaks (the utilisation denominators): "
            + "; ".join(f"{k} {v['peak_flops'] / 1e9:.0f} GFLOP/s (n={v['size']})" for k, v in s["peaks"].items()),
            "",
        ]
        if s.get("notes"):
            lines += [f"- {note}" for note in s["notes"]] + [""]

    if "baseline" in sections:
        s = sections["baseline"]
        lines += [f"## 3. Against the reference recipe and its peers ({_load(s)})", ""]
        lines += _headline_lines(s)
        lines += _table(
            [
                "batch",
                "reference eager fp32 images/s",
                "p2p_dist default images/s",
                "p2p_dist default precision",
                "ratio",
            ],
            [
                [
                    r["batch_size"],
                    _rate(r["reference"]),
                    _rate(r["default"]),
                    r["default_precision"],
                    f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                ]
                for r in s["comparison"]
            ],
        )
        lines.append("")
        if s.get("peers"):
            lines += [
                "The reference step's peers (the same recipe with PyTorch's documented speed-ups), measured "
                "interleaved with the rows above; ratio = p2p_dist default / peer:",
                "",
            ]
            lines += _table(
                ["peer", "precision", "batch", "peer images/s", "of bf16 peak", "p2p_dist default images/s", "ratio"],
                [
                    [
                        r["peer"],
                        r["precision"],
                        r["batch_size"],
                        _rate(r["images_per_s"]) if r["images_per_s"] else f"skipped: {r.get('skipped')}",
                        _percent(r.get("utilisation_of_bf16_peak")),
                        _rate(r["default"]),
                        f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-",
                    ]
                    for r in s["peers"]
                ],
            )
            lines.append("")

    if "breakdown" in sections:
        s = sections["breakdown"]
        lines += [f"## Where a step's time goes ({_load(s)})", ""]
        lines += _breakdown_lines(s)

    if "loop" in sections:
        s = sections["loop"]
        r = s["run"]
        lines += [f"## 4. The real loop: `launch/train.py` ({_load(s)})", ""]
        lines += _table(
            [
                "steps",
                "batch",
                "precision",
                "loader",
                "images/s median (min-max)",
                "data wait median (max)",
                "vs isolated step",
                "records",
            ],
            [
                [
                    f"{r['steps']} x {r['rounds']} rounds" if r.get("rounds", 1) > 1 else r["steps"],
                    r["batch_size_per_process"],
                    r["precision"],
                    s.get("loader", "dali"),
                    _rate(r["images_per_s"]),
                    f"{100 * r['data_wait_fraction']['median']:.2f}% ({100 * r['data_wait_fraction']['max']:.2f}%)",
                    f"{s['vs_isolated_step']:.2f}x" if s.get("vs_isolated_step") else "-",
                    r["records_used"],
                ]
            ],
        )
        lines.append("")
        if s.get("peers_in_own_process"):
            rate = r["images_per_s"]["median"]
            lines += [
                "The reference peers at the same batch in a process of their own, with the environment a user's "
                "script has (`benchmarks/peer_process.py`: glibc's and OpenMP's defaults, not p2p_dist's process "
                "defaults); ratio = the real loop / peer:",
                "",
            ]
            lines += _table(
                ["peer", "precision", "batch", "images/s median (min-max)", "real loop / peer"],
                [
                    [
                        peer["peer"],
                        peer["precision"],
                        peer["batch_size"],
                        _rate(peer["images_per_s"]),
                        f"{rate / peer['images_per_s']['median']:.2f}x",
                    ]
                    for peer in s["peers_in_own_process"]
                ],
            )
            lines.append("")
        lines += _loop_round_lines(s)

    if "scaling" in sections:
        s = sections["scaling"]
        lines += [f"## 5. Data-parallel scaling ({_load(s)})", ""]
        lines += _table(
            ["processes", "images/s (all)", "per process", "speed-up", "efficiency", "data wait"],
            [
                [
                    r["processes"],
                    _rate(r["images_per_s"]),
                    f"{r['per_process_images_per_s']:.2f}",
                    f"{r['speedup']:.2f}x",
                    f"{100 * r['efficiency']:.0f}%",
                    f"{100 * r['data_wait_fraction']['median']:.2f}%",
                ]
                for r in s["rows"]
            ],
        )
        lines += ["", s["note"], ""]

    if "candidates" in sections:
        s = sections["candidates"]
        lines += [f"## Candidates for a faster default at unchanged maths ({_load(s)})", ""]
        lines += [
            'Each variant was measured interleaved with the default in its group; "vs default" is its '
            "images/s over that default's, \"CPU vs default\" its CPU seconds per image over the default's "
            "(below 1: less work; steadier than wall time on a shared machine).",
            "",
        ]
        lines += _table(
            [*STEP_HEADER, "vs default", "CPU vs default"],
            [
                [
                    *row,
                    f"{r['vs_default']:.2f}x" if r.get("vs_default") else "-",
                    f"{r['cpu_vs_default']:.2f}" if r.get("cpu_vs_default") else "-",
                ]
                for row, r in zip(_step_rows(s["rows"]), s["rows"])
            ],
        )
        lines.append("")
        if s.get("adam"):
            lines += _table(
                [
                    "Adam implementation (G's parameters)",
                    "s/step median (min-max)",
                    "vs for-loop",
                    "max abs diff vs for-loop",
                ],
                [
                    [r["implementation"], _rate(r["step_s"], 4), f"{r['speedup']:.2f}x", f"{r['max_abs_diff']:.2e}"]
                    for r in s["adam"]
                ],
            )
            lines.append("")

    for p in (sections.get("breakdown") or {}).get("variants", []):
        if not p.get("top_ops"):
            continue
        lines += [f"## Profile: {p['variant']}, batch {p['batch_size']}, {p['steps']} steps (trace: {p['trace']})", ""]
        on_device = any(o.get("self_device_ms") for o in p["top_ops"])  # CUDA: kernel time is what counts
        lines += _table(
            ["op", "calls/step", "self CPU ms/step", "share of self CPU time"]
            + (["self GPU ms/step"] if on_device else []),
            [
                [o["name"], o["calls"] // p["steps"], f"{o['self_cpu_ms']:.1f}", f"{100 * o['self_cpu_share']:.1f}%"]
                + ([f"{o['self_device_ms']:.2f}"] if on_device else [])
                for o in p["top_ops"]
            ],
        )
        lines.append("")
    return "\n".join(lines)


def in_process_peers_at(baseline: dict, batch: int) -> list[dict]:
    """The baseline's reference peers measured in the benchmark's process at `batch` (those skipped left out): what
    the real loop at that batch is set against."""
    return [p for p in baseline.get("peers", []) if p["batch_size"] == batch and p.get("images_per_s")]


def _min_max_bars(rates: list[dict]) -> list[list[float]]:
    """Error bars from summarise() dicts: each median's distance down to its min and up to its max."""
    return [[rate["median"] - rate["min"] for rate in rates], [rate["max"] - rate["median"] for rate in rates]]


def _plot_step(ax, sections: dict) -> None:
    from matplotlib.ticker import FuncFormatter

    baseline = sections.get("baseline", {})
    rows = [
        r
        for r in sections["step"]["rows"] + baseline.get("peer_rows", baseline.get("reference_rows", []))
        if "images_per_s" in r
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        x = [r["batch_size"] for r in mine]
        rates = [r["images_per_s"] for r in mine]
        ax.errorbar(
            x, [rate["median"] for rate in rates], yerr=_min_max_bars(rates), marker="o", capsize=3, label=variant
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    # Plain numbers on the log axes (the batch sizes measured, images/s as 3 or 6.5), not powers of 2 and 10.
    batches = sorted({r["batch_size"] for r in rows})
    ax.set_xticks(batches, [str(b) for b in batches])
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=6)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (training step)")
    ax.legend(fontsize=7)


def _plot_loop(ax, sections: dict) -> None:
    """The real loop against the reference peers at its batch size: in a process of their own (as a user runs them)
    and, with the baseline section, in the benchmark's process; each peer's bar is labelled with the loop's ratio to
    it, the figure the targets read."""
    loop = sections["loop"]
    run = loop["run"]
    batch = run["batch_size_per_process"]
    bars = [("p2p_dist: launch/train.py", run["images_per_s"])]
    bars += [(f"{peer['peer']}, own process", peer["images_per_s"]) for peer in loop.get("peers_in_own_process", [])]
    bars += [
        (f"{peer['peer']}, in-process", peer["images_per_s"])
        for peer in in_process_peers_at(sections.get("baseline", {}), batch)
    ]
    medians = [rate["median"] for _, rate in bars]
    colours = ["tab:orange"] + ["tab:blue"] * (len(bars) - 1)
    ax.barh(range(len(bars)), medians, xerr=_min_max_bars([rate for _, rate in bars]), capsize=2, color=colours)
    for y, (_, rate) in enumerate(bars[1:], 1):
        ax.annotate(
            f"loop / peer {medians[0] / rate['median']:.2f}x",
            (rate["max"], y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=6,
        )
    ax.set_yticks(range(len(bars)), [textwrap.fill(label, 30, break_on_hyphens=False) for label, _ in bars], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"images/s at batch {batch} ({run['precision']}; median, min-max)")


def _plot_data(ax, sections: dict) -> None:
    s = sections["data"]
    labels = [f"{r['backend']}\n({r['decode']})" for r in s["loaders"]] + [
        f"pack\n{r['workers']} worker(s)" for r in s["packing"]
    ]
    values = [r["images_per_s"]["median"] for r in s["loaders"] + s["packing"]]
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(values)), labels, fontsize=7)
    ax.set_ylabel("images/s")


def _plot_scaling(ax, sections: dict) -> None:
    rows = sections["scaling"]["rows"]
    ax.bar([str(r["processes"]) for r in rows], [r["images_per_s"]["median"] for r in rows])
    for i, r in enumerate(rows):
        ax.annotate(
            f"{100 * r['efficiency']:.0f}%", (i, r["images_per_s"]["median"]), ha="center", va="bottom", fontsize=8
        )
    ax.set_xlabel("processes")
    ax.set_ylabel("images/s, all processes (efficiency)")


def _plot_breakdown(ax, sections: dict) -> None:
    """One stacked bar per profiled configuration: the step's parts in ms, so the peer's extra time shows where."""
    variants = sections["breakdown"]["variants"]
    parts = list(dict.fromkeys(row["part"] for v in variants for row in v["rows"]))
    left = [0.0] * len(variants)
    for part in parts:
        widths = [next((row["ms"] for row in v["rows"] if row["part"] == part), 0.0) for v in variants]
        ax.barh(range(len(variants)), widths, left=left, label=textwrap.shorten(part, 42, placeholder="..."))
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(variants)), [textwrap.fill(v["variant"], 22) for v in variants], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per step (batch {sections['breakdown']['batch_size']}, profiled)")
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)


def _plot_candidates(ax, sections: dict) -> None:
    """Each candidate's images/s over the default measured in its group: right of 1.0 would be a faster default."""
    rows = [r for r in sections["candidates"]["rows"] if r.get("vs_default") and not r.get("default")]
    ratios = [r["vs_default"] for r in rows]
    ax.barh(range(len(rows)), ratios)
    for y, ratio in enumerate(ratios):
        ax.annotate(f"{ratio:.2f}x", (ratio, y), xytext=(2, 0), textcoords="offset points", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [textwrap.fill(r["variant"], 34) for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("images/s over the default's in its group")


# The sections a figure has a panel for, in the order they are drawn.
PLOT_PANELS = {
    "step": _plot_step,
    "loop": _plot_loop,
    "breakdown": _plot_breakdown,
    "candidates": _plot_candidates,
    "data": _plot_data,
    "scaling": _plot_scaling,
}


def plotted_sections(result: dict) -> list[str]:
    return [name for name in PLOT_PANELS if name in result["sections"]]


def plot(result: dict, path: Path) -> bool:
    """One panel per plotted section (PLOT_PANELS) side by side; writes nothing, and says so, when the run has
    none of them (a baseline-only run: its figures are the report's)."""
    panels = plotted_sections(result)
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, name in zip(axes[0], panels):
        PLOT_PANELS[name](ax, result["sections"])
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(f"p2p_dist {result['machine_name']} {result['date']} ({result['plan']['resolution']}px)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
