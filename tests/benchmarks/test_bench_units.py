"""The benchmark suite's bookkeeping: summaries, budgets, names, metrics parsing, scaling maths, targets."""

import os

import pytest
import run as bench_run
import torch
from peer_process import peers_a_user_would_run, pooled_peers

from p2p_dist.runtime import SIMULATED_CPU_FLAGS_ENV

import bench_common as common
import bench_report
import bench_step
from bench_runs import pooled, scaling_rows, summarise_metrics


def test_summarise_gives_median_min_max_and_keeps_the_samples():
    summary = common.summarise([3.0, 1.0, 2.0, 10.0])
    assert summary["median"] == 2.5 and summary["min"] == 1.0 and summary["max"] == 10.0
    assert summary["n"] == 4 and summary["samples"] == [3.0, 1.0, 2.0, 10.0]


def test_summarise_refuses_an_empty_list():
    with pytest.raises(ValueError):
        common.summarise([])


def test_budget_cuts_repeats_to_fit_but_never_below_the_minimum():
    budget = common.Budget(seconds=10.0)
    assert budget.repeats(per_repeat_s=1.0, wanted=5, minimum=2) == 5
    assert budget.repeats(per_repeat_s=3.0, wanted=5, minimum=2) == 3
    assert budget.repeats(per_repeat_s=60.0, wanted=5, minimum=2) == 2


def test_machine_name_prefers_the_gpu_and_is_a_safe_file_name():
    cpu = {"gpu_name": None, "gpus": [], "cpu_model": "AMD EPYC 7B13 (64-Core)", "cpu_cores": 2}
    assert common.machine_name(cpu) == "amd-epyc-7b13-64-core-2c"
    gpu = {
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "gpus": ["NVIDIA H100 80GB HBM3"] * 8,
        "cpu_model": "x",
        "cpu_cores": 64,
    }
    assert common.machine_name(gpu) == "8x-nvidia-h100-80gb-hbm3"
    simulated = {**cpu, "cpu_flags_simulated": True, "cpu_native_bf16": False}
    assert common.machine_name(simulated) == "amd-epyc-7b13-64-core-2c-as-avx2-only-cpu"


def test_load_recorded_stores_load_averages_before_and_after_and_wall_time():
    record = {}
    with common.load_recorded(record):
        pass
    assert len(record["load_before"]) == 3 and len(record["load_after"]) == 3
    assert record["wall_s"] >= 0


def test_machine_facts_name_the_software_versions():
    facts = common.machine_facts()
    assert facts["cpu_cores"] == os.cpu_count()
    assert facts["torch"] and facts["deepspeed"] and facts["dali"]


def test_run_metrics_leave_out_the_start_up_record_and_evaluation_records():
    records = [
        {"step": 2, "images_per_s": 1.0, "data_wait_fraction": 0.5},
        {"step": 4, "images_per_s": 10.0, "data_wait_fraction": 0.01},
        {"step": 4, "eval/l1": 0.3},
        {"step": 6, "images_per_s": 12.0, "data_wait_fraction": 0.03},
    ]
    summary = summarise_metrics(records)
    assert summary["images_per_s"]["median"] == 11.0 and summary["records_used"] == 2
    assert summary["data_wait_fraction"]["max"] == 0.03
    assert summary["first_record"]["images_per_s"] == 1.0


def test_the_loops_rounds_pool_their_steady_records_into_one_median():
    runs = [
        {"steps": 30, "wall_s": 40.0, "records_used": 2, "records": [{"step": 3}], **rates([6.0, 6.2], [0.01, 0.02])},
        {"steps": 30, "wall_s": 41.0, "records_used": 2, "records": [{"step": 3}], **rates([6.6, 6.4], [0.0, 0.01])},
    ]
    run = pooled(runs)
    assert run["images_per_s"]["samples"] == [6.0, 6.2, 6.6, 6.4]
    assert run["images_per_s"]["median"] == pytest.approx(6.3)
    assert run["data_wait_fraction"]["max"] == 0.02 and run["records_used"] == 4 and run["rounds"] == 2
    assert run["wall_s"] == 81.0 and run["steps"] == 30 and "records" not in run


def test_each_peers_rows_of_several_rounds_pool_their_timed_steps():
    round_1 = [{"peer": "fp32", "images_per_s": common.summarise([3.0, 3.2])}, {"peer": "bf16", **rates([5.0])}]
    round_2 = [{"peer": "fp32", "images_per_s": common.summarise([2.8])}, {"peer": "bf16", **rates([5.4, 5.2])}]
    rows = pooled_peers([round_1, round_2])
    assert [row["peer"] for row in rows] == ["fp32", "bf16"]
    assert rows[0]["images_per_s"]["samples"] == [3.0, 3.2, 2.8] and rows[1]["images_per_s"]["median"] == 5.2


@pytest.mark.parametrize(
    "flags, peers",
    [
        ("avx avx2 fma f16c", ["reference eager fp32"]),
        (
            "avx2 avx512f avx512_bf16",
            ["reference eager fp32", "reference + bf16 autocast", "reference + bf16 autocast + channels_last"],
        ),
    ],
)
def test_peers_timed_as_a_user_runs_them_leave_out_bf16_on_a_cpu_where_it_is_not_native(monkeypatch, flags, peers):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
    assert [v.name for v in peers_a_user_would_run(torch.device("cpu"))] == peers
    on_cuda = [v.name for v in peers_a_user_would_run(torch.device("cuda"))]  # the host CPU's flags do not matter
    assert on_cuda == [v.name for v in bench_step.reference_peers(torch.device("cuda"))] and len(on_cuda) == 4


def rates(images_per_s: list[float], data_wait: list[float] | None = None) -> dict:
    out = {"images_per_s": common.summarise(images_per_s)}
    if data_wait is not None:
        out["data_wait_fraction"] = common.summarise(data_wait)
    return out


def test_scaling_efficiency_is_throughput_over_n_times_one_process_and_cpu_ideal_is_one():
    runs = [
        {"processes": 1, "images_per_s": common.summarise([10.0]), "data_wait_fraction": common.summarise([0.0])},
        {"processes": 2, "images_per_s": common.summarise([16.0]), "data_wait_fraction": common.summarise([0.0])},
    ]
    gpu = scaling_rows(runs, cores_per_machine=16, accelerators=2)
    assert gpu[1]["speedup"] == pytest.approx(1.6) and gpu[1]["efficiency"] == pytest.approx(0.8)
    assert gpu[1]["resource_efficiency"] == pytest.approx(0.8)
    cpu = scaling_rows(runs, cores_per_machine=2, accelerators=0)
    assert cpu[1]["efficiency"] == pytest.approx(0.8) and cpu[1]["resource_efficiency"] == pytest.approx(1.6)
    assert cpu[1]["cores_per_process"] == 1 and cpu[1]["per_process_images_per_s"] == 8.0


def test_the_report_says_when_the_flags_were_simulated_and_the_kernels_capped_and_names_the_caps():
    machine = {"cpu_simd": ["avx2"], "cpu_native_bf16": False, "cpu_flags_simulated": True, "cpu_kernels": "AVX2"}
    line = bench_report._cpu_flags_line({**machine, "kernel_isa_caps": {"ONEDNN_MAX_CPU_ISA": "AVX2"}})
    assert "SIMULATED by P2P_DIST_CPU_FLAGS" in line and "kernels capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)" in line
    assert "capped" not in bench_report._cpu_flags_line({**machine, "kernel_isa_caps": {}})


def test_result_file_names_mark_quick_and_partial_runs():
    assert bench_run.result_stem("m", "2026-01-02", False, list(bench_run.SECTIONS)) == "m-2026-01-02"
    assert bench_run.result_stem("m", "2026-01-02", True, ["step", "loop"]) == "m-2026-01-02-quick-step-loop"


def test_a_second_run_of_the_same_sections_on_the_same_day_gets_a_numbered_name_instead_of_overwriting(tmp_path):
    assert bench_run.unused_stem(tmp_path, "m-2026-01-02-loop") == "m-2026-01-02-loop"
    (tmp_path / "m-2026-01-02-loop.md").write_text("first run")
    assert bench_run.unused_stem(tmp_path, "m-2026-01-02-loop") == "m-2026-01-02-loop-2"
    (tmp_path / "m-2026-01-02-loop-2.json").write_text("{}")
    assert bench_run.unused_stem(tmp_path, "m-2026-01-02-loop") == "m-2026-01-02-loop-3"
    assert (tmp_path / "m-2026-01-02-loop.md").read_text() == "first run"


def test_unknown_sections_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        bench_run.parse_args(["--sections", "step,warp"])
    assert "warp" in capsys.readouterr().err


def peer(name: str, batch: int, rate: float) -> dict:
    return {"peer": name, "precision": "bf16", "batch_size": batch, "images_per_s": common.summarise([rate])}


def measured_run(kind_flags: dict) -> dict:
    """Baseline (with its peers), loop and scaling as run.py records them, on a CPU of the given kind."""
    comparison = [
        {
            "batch_size": 4,
            "reference": common.summarise([1.0]),
            "default": common.summarise([2.5]),
            "default_precision": "bf16",
            "ratio": 2.5,
        }
    ]
    peers = [
        peer("reference eager fp32", 4, 1.0),
        peer("reference + bf16 autocast", 4, 1.6),
        peer("reference + bf16 autocast + channels_last", 4, 2.0),
    ]
    return {
        "machine": {"gpus": [], **kind_flags},
        "sections": {
            "baseline": {
                "comparison": comparison,
                "peers": peers,
                "headline": bench_run.headline_rows(peers, comparison),
                "reference_rows": [
                    {
                        "variant": "reference eager fp32",
                        "batch_size": 4,
                        "images_per_s": common.summarise([1.0]),
                        "flops_per_image": 1.0,
                    }
                ],
            },
            "loop": {
                "run": {
                    "batch_size_per_process": 4,
                    "images_per_s": common.summarise([2.4, 2.4]),
                    "data_wait_fraction": common.summarise([0.001, 0.004]),
                }
            },
            "scaling": {
                "rows": [
                    {"processes": 1, "speedup": 1.0, "efficiency": 1.0},
                    {"processes": 2, "speedup": 0.9, "efficiency": 0.45},
                ]
            },
        },
    }


def test_the_headline_is_the_default_over_the_best_peer_and_the_targets_follow_the_cpu_kind():
    result = measured_run({"cpu_native_bf16": True})
    (head,) = result["sections"]["baseline"]["headline"]
    assert head["best_peer"] == "reference + bf16 autocast + channels_last"
    assert head["vs_best_peer"] == pytest.approx(1.25) and head["vs_fp32_reference"] == 2.5
    headline, fp32, loop_vs_best, loop_vs_fp32, wait, scaling = bench_run.evaluate_targets(result)
    assert headline["measured"] == "1.25x (best peer: reference + bf16 autocast + channels_last)"
    assert headline["met"] is None and fp32["measured"].startswith("2.50x") and fp32["met"] is None
    # Native bf16: the real loop >= 1.3x the best peer's step and >= 2x the fp32 reference's.
    assert loop_vs_best["target"].startswith("native-bf16 CPU: the real loop >= 1.3x the best peer's step")
    assert loop_vs_best["met"] is False and loop_vs_best["measured"].startswith("1.20x (2.40 vs 2.00 images/s")
    assert loop_vs_fp32["met"] is True and loop_vs_fp32["measured"].startswith("2.40x")
    assert wait["met"] is True
    assert scaling["met"] is None and "45%" in scaling["measured"]
    # An AVX2-only CPU: the real loop >= 1.3x the fp32 reference's step (bf16 peers are no contest there).
    avx2 = bench_run.evaluate_targets(measured_run({"cpu_native_bf16": False}))
    (loop_target,) = [t for t in avx2 if "the real loop >=" in t["target"]]
    assert loop_target["target"] == "AVX2-only CPU: the real loop >= 1.3x the reference eager fp32's step at batch 4"
    assert loop_target["met"] is True


def test_a_baseline_without_peers_still_judges_the_loop_against_the_fp32_reference():
    result = measured_run({"cpu_native_bf16": True})
    baseline = result["sections"]["baseline"]
    del baseline["peers"], baseline["headline"]
    loop = [t for t in bench_run.evaluate_targets(result) if "the real loop >=" in t["target"]]
    assert [t["met"] for t in loop] == [True, True]  # the fp32 reference is the only (so the best) peer measured


def test_the_loop_is_also_judged_against_the_peers_measured_in_a_process_of_their_own():
    result = measured_run({"cpu_native_bf16": True})
    result["sections"]["loop"]["peers_in_own_process"] = [
        {"peer": "reference eager fp32", "images_per_s": common.summarise([1.5])},
        {"peer": "reference + bf16 autocast + channels_last", "images_per_s": common.summarise([2.0])},
    ]
    own = [t for t in bench_run.evaluate_targets(result) if t["target"].endswith("as a user runs it)")]
    assert [t["target"].split(": ", 1)[1] for t in own] == [
        "the real loop >= 1.3x the best peer's step at batch 4 (peer in its own process, as a user runs it)",
        "the real loop >= 2.0x the reference eager fp32's step at batch 4 (peer in its own process, as a user runs it)",
    ]
    assert own[0]["measured"].startswith("1.20x (2.40 vs 2.00") and own[0]["met"] is False
    assert own[1]["measured"].startswith("1.60x (2.40 vs 1.50") and own[1]["met"] is False


def test_the_speed_up_target_reports_the_bound_set_by_the_fp32_matmul_peak():
    result = {
        "sections": {
            "step": {"peaks": {"fp32": {"peak_flops": 150e9}}},
            "baseline": {
                "comparison": [{"batch_size": 4, "ratio": 0.9}],
                "reference_rows": [
                    {"batch_size": 4, "flops_per_image": 50e9, "images_per_s": common.summarise([1.0, 1.0])}
                ],
            },
        }
    }
    assert bench_run.fp32_ceiling(result) == pytest.approx(3.0)  # 150 GFLOP/s / (50 GFLOP x 1 image/s)
    (ratio,) = bench_run.evaluate_targets(result)
    assert ratio["measured"].startswith("0.90x; at unchanged fp32 maths at most 3.00x here")


def test_on_cuda_the_target_is_the_default_steps_share_of_the_bf16_peak_at_batch_32_or_more():
    rows = [
        {"default": True, "batch_size": 16, "utilisation_of_bf16_peak": 0.5},
        {"default": True, "batch_size": 64, "utilisation_of_bf16_peak": 0.31},
        {"default": False, "batch_size": 64, "utilisation_of_bf16_peak": 0.9},
    ]
    (target,) = bench_run.evaluate_targets({"machine": {"gpus": ["H200"]}, "sections": {"step": {"rows": rows}}})
    assert target["measured"] == "31.0% at batch 64" and target["met"] is False


def test_the_breakdown_takes_the_fastest_measured_peer_and_the_loops_data_wait():
    cpu = torch.device("cpu")
    baseline = {
        "peers": [
            peer("reference eager fp32", 4, 1.0),
            peer("reference + bf16 autocast", 4, 3.0),
            peer("reference + bf16 autocast + channels_last", 2, 9.0),
        ]
    }
    chosen, why = bench_run.best_peer(baseline, 4, cpu)
    assert chosen.name == "reference + bf16 autocast" and "measured" in why
    fallback, why = bench_run.best_peer(None, 4, cpu)
    assert fallback.implementation == "reference" and "expected" in why
    result = {
        "sections": {
            "breakdown": {"variants": []},
            "loop": {
                "run": {
                    "batch_size_per_process": 4,
                    "images_per_s": common.summarise([2.0]),
                    "precision": "bf16",
                    "data_wait_fraction": common.summarise([0.01]),
                }
            },
        }
    }
    bench_run.attach_data_wait(result)
    wait = result["sections"]["breakdown"]["data_wait"]
    assert wait["loop_step_ms"] == pytest.approx(2000.0) and wait["ms"] == pytest.approx(20.0)


def test_the_gpu_check_plan_measures_the_papers_model_at_batch_32_and_64_with_the_peers():
    plan = bench_run.make_plan(torch.device("cuda"), quick=False, resolution=256, gpu_check=True)
    assert plan.step_batches == [32, 64] and plan.resolution == 256 and plan.model_overrides == []
    assert plan.reference_peers and plan.demo_scenes and plan.run_batch == 32 and plan.min_sample_s > 0
    dry = bench_run.make_plan(torch.device("cpu"), quick=True, resolution=256, gpu_check=True)
    assert dry.quick and dry.reference_peers and dry.step_batches == [2] and dry.scaling_processes == [1]
    with pytest.raises(SystemExit, match="--quick"):
        bench_run.make_plan(torch.device("cpu"), quick=False, resolution=256, gpu_check=True)
    assert bench_run.make_plan(torch.device("cpu"), quick=False, resolution=256).reference_peers  # make bench
    assert not bench_run.make_plan(torch.device("cpu"), quick=False, resolution=256).quick


def test_peer_comparison_is_the_default_over_each_peer_at_the_same_batch():
    defaults = {2: {"images_per_s": common.summarise([30.0]), "precision": "bf16"}}
    peers = [
        {
            "variant": "reference eager fp32",
            "precision": "fp32",
            "batch_size": 2,
            "images_per_s": common.summarise([10.0]),
            "utilisation_of_bf16_peak": 0.1,
        },
        {"variant": "reference + bf16 autocast", "precision": "bf16", "batch_size": 2, "skipped": "slow"},
    ]
    fp32, bf16 = bench_run.peer_comparison(peers, defaults)
    assert fp32["ratio"] == pytest.approx(3.0) and fp32["default_precision"] == "bf16"
    assert bf16["ratio"] is None and bf16["skipped"] == "slow"
