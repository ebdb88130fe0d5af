"""The Markdown report and the plot, from a result shaped like run.py's (values made up, structure real)."""

import bench_report
from bench_common import summarise


def step_row(variant: str, batch: int, rate: float, default: bool = False, implementation: str = "p2p_dist") -> dict:
    return {
        "variant": variant,
        "implementation": implementation,
        "precision": "fp32",
        "requested_precision": "fp32",
        "default": default,
        "batch_size": batch,
        "images_per_s": summarise([rate * 0.9, rate, rate * 1.1]),
        "step_s": summarise([batch / rate]),
        "cpu_s_per_image": summarise([2 / rate]),
        "warmed_up": True,
        "steps_per_sample": 1,
        "flops_per_image": 86.9e9,
        "resident_bytes": 2**30,
        "transient_peak_bytes": 2**29,
        "peak_memory_bytes": 3 * 2**29,
        "achieved_flops": 86.9e9 * rate,
        "peak_flops": 1e11,
        "utilisation": 0.869 * rate,
    }


def full_result() -> dict:
    loads = {"load_before": [1.0, 1.0, 1.0], "load_after": [2.0, 1.5, 1.0], "wall_s": 12.0}
    run = {
        "steps": 10,
        "batch_size_per_process": 4,
        "precision": "fp32",
        "images_per_s": summarise([0.5, 0.6]),
        "data_wait_fraction": summarise([0.001, 0.003]),
        "records_used": 4,
    }
    return {
        "machine_name": "test-cpu-2c",
        "date": "2026-01-01",
        "command": "python benchmarks/run.py",
        "load_start": [1.0, 1.0, 1.0],
        "load_end": [2.0, 2.0, 2.0],
        "machine": {
            "cpu_model": "Test CPU",
            "cpu_cores": 2,
            "memory_gib": 24.0,
            "gpus": [],
            "torch": "2",
            "deepspeed": "0.19",
            "dali": "2.4",
            "webdataset": "1.0",
            "python": "3.11",
            "cpu_simd": ["avx2", "avx512_bf16", "avx512f"],
            "cpu_flags_simulated": True,
            "cpu_native_bf16": True,
        },
        "plan": {"resolution": 256, "model_overrides": [], "quick": False},
        "targets": [{"target": "default >= 2x reference", "measured": "1.10x", "met": False}],
        "sections": {
            "data": {
                **loads,
                "loaders": [
                    {
                        "backend": "dali",
                        "decode": "cpu",
                        "batch_size": 4,
                        "crop_size": 256,
                        "num_workers": 2,
                        "prefetch": "on_demand",
                        "images_per_s": summarise([100.0, 120.0]),
                    }
                ],
                "packing": [
                    {
                        "workers": 2,
                        "num_images": 32,
                        "source_size": [2048, 1024],
                        "storage_size": "512x256",
                        "images_per_s": summarise([9.0]),
                    }
                ],
            },
            "step": {
                **loads,
                "rows": [
                    step_row("p2p_dist fp32 (default)", 1, 0.4, default=True),
                    {
                        "variant": "p2p_dist bf16",
                        "precision": "bf16",
                        "batch_size": 16,
                        "skipped": "projected 900 s per step",
                    },
                ],
                "peaks": {"fp32": {"peak_flops": 1e11, "size": 2048}},
                "notes": ["a note"],
            },
            "baseline": {
                **loads,
                "comparison": [
                    {
                        "batch_size": 4,
                        "reference": summarise([0.3]),
                        "default": summarise([0.33]),
                        "default_precision": "fp32",
                        "ratio": 1.1,
                    }
                ],
                "reference_rows": [step_row("reference eager fp32", 1, 0.3, implementation="reference")],
                "headline": [
                    {
                        "batch_size": 4,
                        "default": summarise([0.33]),
                        "default_precision": "bf16",
                        "best_peer": "reference + bf16 autocast",
                        "best_peer_images_per_s": summarise([0.3]),
                        "vs_best_peer": 1.1,
                        "vs_fp32_reference": 1.7,
                    }
                ],
            },
            "breakdown": {
                **loads,
                "batch_size": 4,
                "steps": 2,
                "best_peer": "reference + bf16 autocast",
                "best_peer_chosen_by": "fastest peer measured",
                "variants": [breakdown("p2p_dist default", True), breakdown("reference + bf16 autocast")],
                "data_wait": {
                    "fraction": 0.004,
                    "ms": 5.0,
                    "loop_step_ms": 1250.0,
                    "batch_size": 4,
                    "precision": "bf16",
                },
            },
            "loop": {**loads, "run": run, "vs_isolated_step": 0.93},
            "scaling": {
                **loads,
                "rows": [
                    {
                        "processes": n,
                        "images_per_s": summarise([r]),
                        "per_process_images_per_s": r / n,
                        "speedup": r / 0.6,
                        "efficiency": r / (0.6 * n),
                        "data_wait_fraction": summarise([0.0]),
                    }
                    for n, r in ((1, 0.6), (2, 0.54))
                ],
                "note": "CPU processes share the cores.",
            },
            "candidates": {
                **loads,
                "rows": [
                    {**step_row("channels_last inputs", 4, 0.5), "vs_default": 1.25, "cpu_vs_default": 0.9, "group": 1}
                ],
                "adam": [{"implementation": "fused", "step_s": summarise([0.1]), "speedup": 3.0, "max_abs_diff": 1e-9}],
            },
        },
    }


def breakdown(variant: str, default: bool = False) -> dict:
    rows = [
        {"part": "G forward", "range": "step/G forward", "ms": 300.0, "share": 0.25, "calls": 1.0},
        {"part": "G backward", "range": "step/G backward", "ms": 880.0, "share": 0.73, "calls": 1.0},
        {"part": "outside the ranges", "range": None, "ms": 20.0, "share": 0.02, "calls": None},
    ]
    of_which = [
        {"part": "casts", "ms": 36.0, "share": 0.03, "calls": 176.0},
        {"part": "host synchronisations", "ms": 0.0, "share": 0.0, "calls": 50.0},
        {"part": "convolution kernels, forward and backward", "ms": 960.0, "share": 0.8, "calls": 90.0},
        {"part": "matmuls standing in for convolutions (small maps)", "ms": 45.0, "share": 0.04, "calls": 30.0},
    ]
    out = {
        "variant": variant,
        "implementation": "p2p_dist" if default else "reference",
        "precision": "bf16",
        "default": default,
        "batch_size": 4,
        "steps": 2,
        "wall_ms_per_step": 1201.0,
        "step_ms": 1200.0,
        "rows": rows,
        "of_which": of_which,
        "timing": "wall time on the host",
    }
    if default:
        out.update(
            trace="t.json",
            top_ops=[{"name": "aten::convolution_backward", "calls": 58, "self_cpu_ms": 900.0, "self_cpu_share": 0.4}],
        )
    return out


def test_markdown_reports_every_section_with_its_numbers_and_load():
    text = bench_report.markdown(full_result())
    for heading in (
        "## Targets",
        "## 1. Data plane",
        "## 2. Training step",
        "## 3. Against the reference",
        "## Where a step's time goes",
        "## 4. The real loop",
        "## 5. Data-parallel scaling",
        "## Candidates",
        "## Profile",
    ):
        assert heading in text, heading
    assert "CPU flags: avx2 avx512_bf16 avx512f; native bf16" in text and "SIMULATED" in text
    assert "| 4 | 0.33 (0.33-0.33) | bf16 | reference + bf16 autocast | 0.30 (0.30-0.30) | 1.10x | 1.70x |" in text
    # The breakdown: one column pair per variant, the whole step, the loop's data wait for the default only.
    assert "| G backward | 880.0 | 73.0% | 880.0 | 73.0% |" in text
    assert "| **whole step** | **1200.0** | 100% | **1200.0** | 100% |" in text
    assert (
        "data wait in the real loop (section 4: 0.4% of its wall time, 1250 ms per step, bf16) | 5.0 | 0.4% | - | - |"
        in text
    )
    assert "| of which: host synchronisations | 0.0 (50 calls) | 0.0% |" in text
    # 1200 ms of the peer's step, 960 ms of it in convolution kernels: running them, nothing beats it by > 1.25x.
    assert "cannot beat the peer by more than peer step / peer convolutions = **1.25x**" in text
    assert "the default 960 ms and 45 ms of matmuls standing in for the convolutions on small maps" in text
    assert "| NO |" in text  # an unmet target says so
    assert "0.40 (0.36-0.44)" in text  # median (min-max)
    assert "skipped: projected 900 s per step" in text
    assert "1.10x" in text and "0.93x" in text and "45%" in text and "| 1.25x | 0.90 |" in text
    assert "load [1.0, 1.0, 1.0] -> [2.0, 1.5, 1.0]" in text
    assert "aten::convolution_backward | 29 |" in text and "| 5.00 |" in text  # CPU s/image


def test_markdown_shows_the_loop_round_by_round_with_its_ratio_to_the_best_user_run_peer():
    result = full_result()
    loop = result["sections"]["loop"]
    peer = {"peer": "reference + bf16 autocast", "precision": "bf16", "batch_size": 4}
    loop["rounds"] = [
        {
            "run": {**loop["run"], "images_per_s": summarise([6.5])},
            "peers_in_own_process": [{**peer, "images_per_s": summarise([5.0])}],
        },
        {
            "run": {**loop["run"], "images_per_s": summarise([6.6])},
            "peers_in_own_process": [{**peer, "images_per_s": summarise([4.4])}],
        },
    ]
    loop["run"]["rounds"] = 2
    text = bench_report.markdown(result)
    assert "Round by round" in text and "| 1 | 6.50" in text and "| 1.30x |" in text and "| 1.50x |" in text
    assert "| 10 x 2 rounds |" in text


def test_markdown_leaves_out_sections_that_were_not_run():
    result = full_result()
    result["sections"] = {"data": result["sections"]["data"]}
    text = bench_report.markdown(result)
    assert "## 1. Data plane" in text and "## 2. Training step" not in text and "## Profile" not in text


def test_plot_writes_a_png_with_a_panel_for_every_plotted_section(tmp_path):
    path = tmp_path / "plot.png"
    assert bench_report.plot(full_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench_report.plotted_sections(full_result()) == [
        "step",
        "loop",
        "breakdown",
        "candidates",
        "data",
        "scaling",
    ]


def test_a_candidates_only_run_plots_the_candidates_and_a_baseline_only_run_writes_no_empty_figure(tmp_path):
    result = full_result()
    result["sections"] = {"candidates": result["sections"]["candidates"]}
    assert bench_report.plot(result, tmp_path / "candidates.png") and (tmp_path / "candidates.png").is_file()
    result["sections"] = {"baseline": full_result()["sections"]["baseline"]}
    assert not bench_report.plot(result, tmp_path / "baseline.png") and not (tmp_path / "baseline.png").exists()


def test_the_loop_panel_sets_the_real_loop_beside_each_peer_at_its_batch_with_the_loops_ratio_to_it():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = full_result()["sections"]
    peer = {"peer": "reference + bf16 autocast", "precision": "bf16", "batch_size": 4}
    sections["loop"]["peers_in_own_process"] = [{**peer, "images_per_s": summarise([0.4])}]
    sections["baseline"]["peers"] = [
        {**peer, "images_per_s": summarise([0.5]), "default": summarise([0.6]), "ratio": 1.2},
        {**peer, "batch_size": 16, "images_per_s": summarise([0.9]), "default": summarise([1.0]), "ratio": 1.1},
        {**peer, "peer": "reference + fp16 autocast", "images_per_s": None, "skipped": "no CUDA"},
    ]
    fig, ax = plt.subplots()
    bench_report._plot_loop(ax, sections)  # the loop's median: 0.55 images/s
    labels = [label.get_text().replace("\n", " ") for label in ax.get_yticklabels()]
    assert labels == [
        "p2p_dist: launch/train.py",
        "reference + bf16 autocast, own process",
        "reference + bf16 autocast, in-process",
    ]
    assert [text.get_text() for text in ax.texts] == ["loop / peer 1.38x", "loop / peer 1.10x"]
    assert [round(bar.get_width(), 2) for bar in ax.patches] == [0.55, 0.4, 0.5]
    plt.close(fig)


def gpu_result() -> dict:
    result = full_result()
    result["machine"].update(
        gpus=["NVIDIA H200"],
        gpu_name="NVIDIA H200",
        gpu_driver="580.159.04",
        cuda="13.0",
        cudnn=91400,
        gpu_memory_gib=139.8,
        tf32={"cudnn": True, "matmul": False},
    )
    baseline = result["sections"]["baseline"]
    baseline["peers"] = [
        {
            "peer": "reference + fp16 autocast + GradScaler",
            "precision": "fp16",
            "batch_size": 64,
            "images_per_s": summarise([900.0]),
            "default": summarise([1800.0]),
            "default_precision": "bf16",
            "ratio": 2.0,
            "utilisation_of_bf16_peak": 0.123,
        }
    ]
    baseline["peer_rows"] = baseline["reference_rows"]
    result["gpu_check"] = {
        "ok": False,
        "quick": False,
        "wall_s": 300.0,
        "budget_s": 440,
        "gpus": 1,
        "parts": [
            {"part": "tests", "status": "ok", "ok": True, "wall_s": 80.0, "limit_s": 170},
            {
                "part": "loop",
                "status": "timed out after 120 s",
                "ok": False,
                "wall_s": 120.0,
                "limit_s": 120,
                "output_tail": ["[loop] launch/train.py, 60 steps"],
            },
        ],
        "tests": {
            "counts": {"passed": 1, "skipped": 1},
            "tests": [
                {"test": "t::a", "outcome": "passed", "seconds": 20.0, "message": ""},
                {
                    "test": "t::dali",
                    "outcome": "skipped",
                    "seconds": 0.0,
                    "message": "NVIDIA DALI is not installed (nvidia-dali-cuda130 | too large)",
                },
            ],
        },
        "imports": {
            "executable": "/usr/bin/python3",
            "python": "3.12.3",
            "imports": {"deepspeed": "FAILED: x"},
            "distributions": {"deepspeed": {"version": "0.19.8", "location": "/tmp/site"}, "nvidia-dali-cuda130": None},
        },
    }
    return result


def test_gpu_reports_name_driver_cuda_and_the_peers_and_gpu_check_lists_parts_tests_and_packages():
    result = gpu_result()
    text = bench_report.markdown(result)
    assert "GPU: NVIDIA H200 (driver 580.159.04; CUDA 13.0; cuDNN 91400; 139.8 GiB" in text
    assert "| reference + fp16 autocast + GradScaler | fp16 | 64 | 900.00 (900.00-900.00) | 12.3% |" in text
    check = bench_report.gpu_check_markdown(result)
    assert check.startswith("# gpu-check: test-cpu-2c, 2026-01-01: FAILED")
    assert "| loop | timed out after 120 s | 120 | 120 |" in check and "[loop] launch/train.py, 60 steps" in check
    assert "## GPU tests (1 passed, 1 skipped)" in check and "nvidia-dali-cuda130 / too large" in check
    assert "| deepspeed | 0.19.8 | /tmp/site |" in check and "| nvidia-dali-cuda130 | absent | - |" in check
    assert "`deepspeed`: FAILED: x" in check
