import pytest
import torch

from p2p_dist.config import Config, ConfigError
from p2p_dist.runtime import (
    SIMULATED_CPU_FLAGS_ENV,
    Runtime,
    cpu_flags,
    resolve_bf16_mode,
    resolve_memory_format,
    resolve_model_memory_format,
    resolve_precision,
    resolve_prefetch,
    resolved_choices,
    threads_per_rank,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_memory_format_is_channels_last_on_cuda_and_for_bf16_on_cpu_and_contiguous_for_fp32_on_cpu():
    for precision in ("fp32", "bf16", "fp16"):
        assert resolve_memory_format("auto", CUDA, precision) == torch.channels_last
    assert resolve_memory_format("auto", CPU, "bf16") == torch.channels_last
    assert resolve_memory_format("auto", CPU, "fp32") == torch.contiguous_format
    assert resolve_memory_format("channels_last", CPU, "fp32") == torch.channels_last
    assert resolve_memory_format("contiguous", CUDA, "bf16") == torch.contiguous_format


AVX2_ONLY = "fpu sse4_2 avx avx2 fma f16c"
AVX512_WITHOUT_BF16 = AVX2_ONLY + " avx512f avx512bw avx512_vnni"
NATIVE_BF16 = AVX512_WITHOUT_BF16 + " avx512_bf16"
AMX = AVX512_WITHOUT_BF16 + " amx_tile amx_bf16"


@pytest.mark.parametrize(
    "flags, expected", [(AVX2_ONLY, "fp32"), (AVX512_WITHOUT_BF16, "fp32"), (NATIVE_BF16, "bf16"), (AMX, "bf16")]
)
def test_auto_precision_on_cpu_is_bf16_only_with_native_bf16_units(monkeypatch, flags, expected):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
    assert resolve_precision("auto", 0, CPU) == expected


def test_explicit_precisions_are_kept_whatever_the_cpu(monkeypatch):
    for flags in (AVX2_ONLY, NATIVE_BF16):
        monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
        assert resolve_precision("fp32", 0, CPU) == "fp32"
        assert resolve_precision("bf16", 0, CPU) == "bf16"


def test_simulated_cpu_flags_replace_the_real_ones_and_accept_commas(monkeypatch):
    monkeypatch.delenv(SIMULATED_CPU_FLAGS_ENV, raising=False)
    real = cpu_flags()
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, "avx2,avx512_bf16  fma")
    assert cpu_flags() == {"avx2", "avx512_bf16", "fma"}
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, "")
    assert cpu_flags() == frozenset()
    monkeypatch.delenv(SIMULATED_CPU_FLAGS_ENV)
    assert cpu_flags() == real


@pytest.mark.parametrize("cores, local_ranks, expected", [(2, 1, 2), (2, 2, 1), (16, 3, 5), (1, 4, 1), (64, 8, 8)])
def test_cpu_ranks_on_one_machine_share_its_cores_equally(cores, local_ranks, expected):
    assert threads_per_rank(cores, local_ranks, omp_num_threads=None) == expected


def test_an_explicit_omp_num_threads_leaves_the_thread_count_alone():
    assert threads_per_rank(16, 1, omp_num_threads="3") is None


def test_fp16_is_refused_at_zero0_and_on_cpu_with_the_way_out_in_the_message():
    with pytest.raises(ConfigError, match="zero_stage >= 1"):
        resolve_precision("fp16", 0, CUDA)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_precision("fp16", 1, CPU)
    assert resolve_precision("fp16", 1, CUDA) == "fp16"


@pytest.mark.parametrize(
    "flags, precision, memory_format",
    [(AVX2_ONLY, "fp32", torch.contiguous_format), (NATIVE_BF16, "bf16", torch.channels_last)],
)
def test_the_default_config_resolves_per_cpu_kind(monkeypatch, flags, precision, memory_format):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
    train = Config().train
    resolved = resolve_precision(Config().precision, Config().zero_stage, CPU)
    assert resolved == precision
    assert resolve_memory_format(train.memory_format, CPU, resolved) == memory_format


@pytest.mark.parametrize("flags", [AVX2_ONLY, NATIVE_BF16])
def test_parameters_follow_the_inputs_layout_at_zero0_and_stay_contiguous_where_deepspeed_flattens(monkeypatch, flags):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
    precision = resolve_precision("auto", 0, CPU)
    inputs = resolve_memory_format("auto", CPU, precision)
    assert resolve_model_memory_format("auto", inputs, 0) == inputs  # AVX2: contiguous; native bf16: channels_last
    assert inputs == (torch.channels_last if flags == NATIVE_BF16 else torch.contiguous_format)
    for zero_stage in (1, 2):  # ZeRO >= 1 flattens the parameters: no layout survives
        assert resolve_model_memory_format("channels_last", torch.channels_last, zero_stage) == torch.contiguous_format
    assert resolve_model_memory_format("contiguous", torch.channels_last, 0) == torch.contiguous_format
    assert resolve_model_memory_format("channels_last", torch.contiguous_format, 0) == torch.channels_last
    assert resolve_model_memory_format("auto", resolve_memory_format("auto", CUDA, "bf16"), 0) == torch.channels_last


@pytest.mark.parametrize("flags", [AVX2_ONLY, NATIVE_BF16])
def test_bf16_mode_applies_only_to_bf16_and_auto_is_autocast(monkeypatch, flags):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
    precision = resolve_precision("auto", 0, CPU)
    assert resolve_bf16_mode("auto", CPU, precision) == (None if flags == AVX2_ONLY else "autocast")
    assert resolve_bf16_mode("bf16_weights", CPU, "fp32") is None  # nothing to hold in bf16
    assert resolve_bf16_mode("bf16_weights", CPU, "bf16") == "bf16_weights"
    assert resolve_bf16_mode("auto", CUDA, "bf16") == "autocast"


def test_dali_decodes_ahead_on_cuda_and_on_demand_on_a_cpu_unless_told():
    assert resolve_prefetch("auto", CUDA, "dali") == "ahead"
    assert resolve_prefetch("auto", CPU, "dali") == "on_demand"
    assert resolve_prefetch("ahead", CPU, "dali") == "ahead"
    assert resolve_prefetch("on_demand", CUDA, "dali") == "on_demand"
    assert resolve_prefetch("on_demand", CPU, "webdataset") == "workers"  # its worker processes always work ahead


@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            AVX2_ONLY,
            {
                "precision": "fp32",
                "bf16_mode": None,
                "memory_format": "contiguous",
                "model_memory_format": "contiguous",
                "small_maps": "conv",
                "dropout_masks": "bits",
                "prefetch": "on_demand",
                "cpu_flags": ["avx2"],
            },
        ),
        (
            NATIVE_BF16,
            {
                "precision": "bf16",
                "bf16_mode": "autocast",
                "memory_format": "channels_last",
                "model_memory_format": "channels_last",
                "small_maps": "matmul",
                "dropout_masks": "bits",
                "prefetch": "on_demand",
                "cpu_flags": ["avx2", "avx512_bf16", "avx512f"],
            },
        ),
    ],
)
def test_resolved_choices_name_every_automatic_choice_and_the_simulated_flags(monkeypatch, flags, expected):
    monkeypatch.setenv(SIMULATED_CPU_FLAGS_ENV, flags)
    cfg = Config()
    rt = Runtime(
        rank=0,
        local_rank=0,
        world_size=1,
        local_world_size=1,
        device=CPU,
        precision=resolve_precision(cfg.precision, cfg.zero_stage, CPU),
    )
    choices = resolved_choices(cfg, rt)
    assert {k: choices[k] for k in expected} == expected and choices["cpu_flags_simulated"] is True
    cfg.zero_stage = 1
    assert resolved_choices(cfg, rt)["model_memory_format"] == "contiguous"
