"""The training-step measurement on tiny models: interleaving, skipping, FLOPs, memory, the reference step."""

import time

import pytest
import torch
from torch import nn

from p2p_dist.runtime import SIMULATED_CPU_FLAGS_ENV, Runtime
from p2p_dist.train import step_ranges

import bench_step as bs

CPU_FP32 = Runtime(rank=0, local_rank=0, world_size=1, local_world_size=1, device=torch.device("cpu"), precision="fp32")
TINY = ("model.ngf=4", "model.ndf=4")


def fake_variant(name: str, calls: list[str], seconds_per_image: float = 0.0) -> bs.BuiltVariant:
    def step(batch: dict) -> None:
        calls.append(name)
        time.sleep(seconds_per_image * batch["label"].shape[0])

    return bs.BuiltVariant(bs.Variant(name, "reference", precision="fp32"), step, "fp32", [])


def plan(**changes) -> bs.StepPlan:
    values = dict(resolution=128, batch_sizes=[1], warmup=2, repeats=3, min_repeats=2, budget_s=60.0, max_step_s=60.0)
    return bs.StepPlan(**{**values, **changes})


def test_variants_are_timed_in_interleaved_rounds_after_their_warm_up():
    calls: list[str] = []
    rows = bs.measure_variants(
        [fake_variant("a", calls), fake_variant("b", calls)], plan(), torch.device("cpu"), log=lambda line: None
    )
    # a: probe + 1 warm-up, b: probe + 1 warm-up, then a b a b a b.
    assert calls == ["a", "a", "b", "b", "a", "b", "a", "b", "a", "b"]
    assert [r["images_per_s"]["n"] for r in rows] == [3, 3]


def test_a_batch_size_projected_over_the_step_limit_is_skipped_and_says_why():
    calls: list[str] = []
    rows = bs.measure_variants(
        [fake_variant("slow", calls, seconds_per_image=0.03)],
        plan(batch_sizes=[1, 4], max_step_s=0.1, warmup=1, repeats=2),
        torch.device("cpu"),
        log=lambda line: None,
    )
    assert "images_per_s" in rows[0] and rows[0]["batch_size"] == 1
    assert rows[1]["batch_size"] == 4 and "projected" in rows[1]["skipped"]
    assert calls == ["slow"] * 3  # probe + 2 timed steps at batch 1, nothing at batch 4


def test_a_probe_slower_than_the_limit_stands_as_one_unwarmed_sample():
    calls: list[str] = []
    rows = bs.measure_variants(
        [fake_variant("slow", calls, seconds_per_image=0.05)],
        plan(max_step_s=0.01),
        torch.device("cpu"),
        log=lambda line: None,
    )
    assert calls == ["slow"] and rows[0]["warmed_up"] is False and rows[0]["images_per_s"]["n"] == 1


def test_new_tensor_memory_tracks_the_peak_of_storage_created_and_alive_together():
    keep = torch.zeros(1000)
    with bs.NewTensorMemory(torch.device("cpu")) as memory:
        a = torch.empty(1000)  # 4000 bytes
        b = torch.empty(500)  # 2000 bytes: peak 6000
        keep.add_(1)  # in place: not new storage
        view = a[:10]  # a view: not new storage
        del a, b, view
        c = torch.empty(250)  # 1000 bytes, after the others were freed
    assert memory.peak == 6000 and memory.live == 1000
    del c


def test_resident_bytes_count_parameters_gradients_and_optimizer_state_once():
    model = nn.Linear(10, 10)  # 110 parameters
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 10)).sum().backward()
    optimizer.step()
    # parameters, gradients, exp_avg, exp_avg_sq: 4 x 440 bytes, plus one 4-byte step counter per parameter tensor.
    assert bs.resident_bytes([model, optimizer, model], torch.device("cpu")) == 4 * 440 + 2 * 4


def test_reference_step_trains_both_networks_and_leaves_d_frozen(one_thread):
    cfg = bs.config_for(128, 1, *TINY)
    step = bs.ReferenceStep(cfg, torch.device("cpu"))
    g_before = [p.detach().clone() for p in step.G.parameters()]
    d_before = [p.detach().clone() for p in step.D.parameters()]
    step(bs.make_batch(2, 128, torch.device("cpu")))
    assert all(not torch.equal(a, b) for a, b in zip(g_before, step.G.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(d_before, step.D.parameters()))
    assert not any(p.requires_grad for p in step.D.parameters())


def test_reference_peers_train_under_bf16_autocast_and_channels_last_with_fp32_weights(one_thread):
    peers = bs.reference_peers(torch.device("cpu"))
    assert [v.name for v in peers] == [
        "reference eager fp32",
        "reference + bf16 autocast",
        "reference + bf16 autocast + channels_last",
    ]  # fp16 + GradScaler: CUDA only
    built = [bs.build_variant(v, CPU_FP32, 128, model_overrides=TINY) for v in peers]
    assert [b.resolved_precision for b in built] == ["fp32", "bf16", "bf16"]
    conv_weights = [p for p in built[2].step.G.parameters() if p.dim() == 4]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in conv_weights)
    for b in built:
        before = [p.detach().clone() for p in b.step.G.parameters()]
        b(bs.make_batch(2, 128, torch.device("cpu")))
        after = list(b.step.G.parameters())
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in after)  # autocast keeps fp32 masters
        assert all(not torch.equal(x, y) for x, y in zip(before, after))


def test_the_fp16_reference_peer_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        bs.ReferenceStep(bs.config_for(128, 1, *TINY), torch.device("cpu"), precision="fp16")


def test_reference_rows_have_per_image_flops_independent_of_batch_and_sane_memory(one_thread):
    built = [
        bs.build_variant(v, CPU_FP32, 128, model_overrides=TINY)
        for v in (
            bs.reference_variant(),
            bs.Variant("reference + channels_last", "reference", precision="fp32", memory_format="channels_last"),
        )
    ]
    rows = bs.measure_variants(
        built, plan(batch_sizes=[1, 2], warmup=1, repeats=2), torch.device("cpu"), log=lambda line: None
    )
    assert [(r["variant"], r["batch_size"]) for r in rows] == [
        ("reference eager fp32", 1),
        ("reference + channels_last", 1),
        ("reference eager fp32", 2),
        ("reference + channels_last", 2),
    ]
    flops = {r["flops_per_image"] for r in rows}
    assert len(flops) == 1 and flops.pop() > 1e6  # the same maths whatever the batch size or memory format
    for r in rows:
        s = r["images_per_s"]
        assert 0 < s["min"] <= s["median"] <= s["max"] and s["n"] == 2
        assert r["step_s"]["median"] == pytest.approx(r["batch_size"] / s["median"], rel=0.5)
        assert r["peak_memory_bytes"] > r["resident_bytes"] > 0 and r["transient_peak_bytes"] > 0


def test_utilisation_is_achieved_flops_over_the_matmul_peak_of_the_steps_precision():
    rows = [
        {"precision": "fp32", "flops_per_image": 2e9, "images_per_s": {"median": 5.0}},
        {"precision": "bf16", "skipped": "too slow"},
    ]
    peaks = bs.measure_peaks(torch.device("cpu"), quick=True)
    assert peaks["fp32"]["peak_flops"] > 0 and peaks["bf16"]["peak_flops"] > 0
    bs.add_utilisation(rows, {"fp32": {"peak_flops": 1e11}, "bf16": {"peak_flops": 4e11}})
    assert rows[0]["achieved_flops"] == 1e10 and rows[0]["utilisation"] == pytest.approx(0.1)
    assert rows[0]["utilisation_of_bf16_peak"] == pytest.approx(0.025)  # every row also against the bf16 peak
    assert "utilisation" not in rows[1]


def test_adam_implementations_end_at_the_same_parameters(one_thread):
    results = bs.measure_adam(bs.config_for(128, 1, *TINY), torch.device("cpu"), repeats=2)
    assert [r["name"] for r in results] == [
        "for-loop",
        "foreach",
        "fused",
        "fused, channels_last parameters (torch)",
        "fused, channels_last parameters (p2p_dist: flat storage)",
    ]
    assert all(r["step_s"]["median"] > 0 and r["max_abs_diff"] < 1e-6 for r in results)
    assert results[0]["max_abs_diff"] == 0.0 and results[0]["speedup"] == 1.0
    # The same fused kernel over the same numbers, whatever the parameters' layout.
    assert results[2]["max_abs_diff"] == results[3]["max_abs_diff"] == results[4]["max_abs_diff"]


@pytest.fixture(scope="module")
def engine_runtime():
    """A process group of one for DeepSpeed engines, once per module (DeepSpeed keeps its communication
    state after the group is destroyed, so it cannot be set up twice in one process), torn down at the end:
    other tests in this process must not find one (SyncBatchNorm, for one, changes behaviour)."""
    import os

    from p2p_dist.runtime import init_runtime, shutdown

    saved, threads = dict(os.environ), torch.get_num_threads()
    rt = init_runtime(bs.config_for(128, 1, *TINY))
    torch.set_num_threads(1)  # init_runtime sets cores // ranks; tiny models run steadiest on one
    try:
        yield rt
    finally:
        shutdown()
        os.environ.clear()
        os.environ.update(saved)
        torch.set_num_threads(threads)


@pytest.mark.parametrize("cpu_flags, auto_precision", [("avx2 fma", "fp32"), ("avx2 avx512f avx512_bf16", "bf16")])
def test_default_engine_and_reference_train_the_same_flops_and_give_comparable_rows(
    engine_runtime, monkeypatch, cpu_flags, auto_precision
):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, cpu_flags)
    built = [
        bs.build_variant(v, engine_runtime, 128, model_overrides=TINY)
        for v in (bs.default_variant(), bs.reference_variant())
    ]
    assert built[0].resolved_precision == auto_precision  # the default is precision=auto
    weights = [[p.detach().clone() for p in b.roots[0].parameters()] for b in built]
    assert all(torch.equal(a, b) for a, b in zip(*weights))  # same seed, same initial generator
    default, reference = bs.measure_variants(
        built, plan(warmup=1, repeats=2), torch.device("cpu"), log=lambda line: None
    )
    assert default["default"] and not reference["default"]
    # Batch norm: both run three D forwards, so the counted maths is identical. (D's one-channel head counts a few
    # more products as per-offset products, p2p_dist.models.small_maps, but this tiny D's head input is below
    # PER_OFFSET_MIN_INPUT: it stays on the kernel.)
    assert default["flops_per_image"] == reference["flops_per_image"] > 0
    assert default["images_per_s"]["median"] > 0 and reference["images_per_s"]["median"] > 0


def test_engines_step_with_fused_adam_and_the_for_loop_variant_without_it(engine_runtime):
    fused_calls = {}
    for variant in (bs.default_variant(), bs.Variant("for-loop Adam", "p2p_dist", for_loop_adam=True)):
        built = bs.build_variant(variant, engine_runtime, 128, model_overrides=TINY)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            built(bs.make_batch(1, 128, torch.device("cpu")))
        fused_calls[variant.name] = sum(e.count for e in prof.key_averages() if e.key == "aten::_fused_adam_")
    assert fused_calls == {"p2p_dist default": 2, "for-loop Adam": 0}  # G's and D's steps


def test_skipping_the_one_rank_gradient_all_reduce_trains_bit_identically(engine_runtime):
    variants = (bs.default_variant(), bs.Variant("all-reduce", "p2p_dist", single_rank_allreduce=True))
    built = [bs.build_variant(v, engine_runtime, 128, model_overrides=TINY) for v in variants]
    for b in built:
        for step in range(2):
            torch.manual_seed(step)  # the same dropout masks in both
            b(bs.make_batch(1, 128, torch.device("cpu"), seed=step))
    skipped, reduced = ([p.detach() for root in b.roots[:2] for p in root.parameters()] for b in built)
    assert all(torch.equal(a, b) for a, b in zip(skipped, reduced))


@pytest.mark.parametrize(
    "variant",
    [bs.default_variant(), bs.reference_peers(torch.device("cpu"))[2]],
    ids=["default", "bf16-channels_last-peer"],
)
def test_the_step_breakdown_names_every_part_and_its_rows_add_up_to_the_step_time(engine_runtime, variant):
    built = bs.build_variant(variant, engine_runtime, 128, model_overrides=TINY)
    profiled = bs.profile_steps(built, 2, 128, torch.device("cpu"), steps=2)
    rows = {r["range"]: r for r in profiled["rows"]}
    assert list(rows) == [*step_ranges.RANGES, None]  # every named range, in step order, then the rest
    assert all(rows[name]["ms"] > 0 and rows[name]["calls"] >= 1 for name in step_ranges.RANGES)
    assert sum(r["ms"] for r in rows.values()) == pytest.approx(profiled["step_ms"])
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    assert 0 <= rows[None]["share"] < 0.25  # the named ranges cover (nearly) the whole step
    # The step total is the wall time of the profiled steps (a few ms of loop overhead aside).
    assert profiled["step_ms"] == pytest.approx(profiled["wall_ms_per_step"], rel=0.1, abs=3.0)
    casts, syncs, convolutions, matmuls = profiled["of_which"]
    assert casts["ms"] >= 0 and syncs["calls"] >= 0 and casts["share"] < 1
    # Each step runs every convolution of G and D forward and backward: the kernels are seen, and are part of it.
    assert convolutions["calls"] > 0 and 0 < convolutions["share"] < 1
    # The default's small maps run as matmuls (bf16 on a CPU); the peer keeps torch's layers and has none.
    assert (matmuls["calls"] > 0) is (built.variant.default and built.resolved_precision == "bf16")


def test_a_step_range_costs_nothing_without_a_profiler_and_is_recorded_under_one():
    assert step_ranges.step_range("x") is step_ranges.step_range("y")  # one shared null context
    with (
        torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof,
        step_ranges.step_range(step_ranges.G_FORWARD),
    ):
        torch.ones(1).add_(1)
    assert any(e.key == step_ranges.G_FORWARD for e in prof.key_averages())


def test_a_variant_that_raises_is_reported_failed_and_the_others_are_still_measured():
    calls: list[str] = []

    def broken(batch: dict) -> None:
        calls.append("broken")
        if len(calls) > 2:  # the probe and the warm-up pass, then a timed round fails (say, out of memory)
            raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore text")

    variants = [
        fake_variant("a", calls),
        bs.BuiltVariant(bs.Variant("b", "reference", precision="fp32"), broken, "fp32", []),
    ]
    rows = bs.measure_variants(variants, plan(batch_sizes=[1, 2]), torch.device("cpu"), log=lambda line: None)
    by = {(r["variant"], r["batch_size"]): r for r in rows}
    assert by[("a", 1)]["images_per_s"]["n"] == 3 and by[("a", 2)]["images_per_s"]["n"] == 3
    assert by[("b", 1)]["skipped"] == "failed: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
    assert by[("b", 2)]["skipped"] == by[("b", 1)]["skipped"]  # not tried again at the next batch size
    unbuilt = bs.failed_rows(bs.Variant("c", "p2p_dist", precision="fp16"), [32, 64], "failed to build: x")
    assert [(r["batch_size"], r["skipped"], r["precision"]) for r in unbuilt] == [
        (32, "failed to build: x", "fp16"),
        (64, "failed to build: x", "fp16"),
    ]
