import pytest
import torch

from p2p_dist.config import ConfigError
from p2p_dist.train import runtime
from p2p_dist.train.runtime import resolve_memory_format, resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_auto_memory_format_is_channels_last_on_cuda_and_contiguous_on_cpu():
    assert resolve_memory_format("auto", CUDA) == torch.channels_last
    assert resolve_memory_format("auto", CPU) == torch.contiguous_format
    assert resolve_memory_format("channels_last", CPU) == torch.channels_last
    assert resolve_memory_format("contiguous", CUDA) == torch.contiguous_format


@pytest.mark.parametrize("fast_bf16, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_only_where_the_device_has_native_bf16_units(monkeypatch, fast_bf16, expected):
    monkeypatch.setattr(runtime, "has_fast_bf16", lambda device: fast_bf16)
    assert resolve_precision("auto", 0, CPU) == expected


def test_fp16_is_refused_at_zero0_and_on_cpu_with_the_way_out_in_the_message():
    with pytest.raises(ConfigError, match="zero_stage >= 1"):
        resolve_precision("fp16", 0, CUDA)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_precision("fp16", 1, CPU)
    assert resolve_precision("fp16", 1, CUDA) == "fp16"
