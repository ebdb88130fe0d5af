"""Batch norm with its affine parameters in bf16 and its running statistics in fp32, as DeepSpeed's bf16 mode leaves
them: torch's kernels refuse the mix, p2p_dist's norms normalise with the fp32 statistics (as under autocast)."""

import pytest
import torch
from torch import nn

from p2p_dist.models.norm import BatchNorm2d, SyncBatchNorm2d, make_norm


def bf16_parameters(norm: nn.Module) -> nn.Module:
    for p in norm.parameters():
        p.data = p.data.to(torch.bfloat16)  # what DeepSpeed's bf16 mode does: parameters only, buffers stay fp32
    return norm


def seeded_pair(cls) -> tuple[nn.Module, nn.Module]:
    """A norm with bf16 parameters and an nn.BatchNorm2d holding the same (rounded) values in fp32."""
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(6)
    nn.init.normal_(reference.weight, 1.0, 0.3)
    nn.init.normal_(reference.bias, 0.0, 0.3)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    norm = cls(6)
    norm.load_state_dict(reference.state_dict())
    return bf16_parameters(norm), reference


@pytest.mark.parametrize("cls", [BatchNorm2d, SyncBatchNorm2d])
def test_bf16_parameters_with_fp32_statistics_normalise_as_fp32_batch_norm_in_train_and_eval(cls):
    norm, reference = seeded_pair(cls)
    x = torch.randn(4, 6, 8, 8) * 3 + 1
    for step in range(3):  # training: batch statistics, running statistics updated in fp32
        xb = x.roll(step, 0).to(torch.bfloat16).requires_grad_(True)
        out = norm(xb)
        expected = reference(xb.detach().float())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=1e-2)  # bf16 output rounding
        out.float().sum().backward()
    assert norm.running_mean.dtype == torch.float32 and norm.num_batches_tracked.item() == 3
    torch.testing.assert_close(norm.running_mean, reference.running_mean, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(norm.running_var, reference.running_var, atol=1e-5, rtol=1e-5)
    assert norm.weight.grad.dtype == torch.bfloat16 and norm.weight.grad.abs().sum() > 0
    norm.eval(), reference.eval()  # evaluation: the fp32 running statistics
    torch.testing.assert_close(
        norm(x.to(torch.bfloat16)).float(), reference(x.to(torch.bfloat16).float()), atol=2e-2, rtol=1e-2
    )


def test_the_batch_norm_is_nn_batchnorm2d_with_its_parameters_and_buffers():
    norm = make_norm("batch", 5)
    assert isinstance(norm, nn.BatchNorm2d)
    assert norm.state_dict().keys() == nn.BatchNorm2d(5).state_dict().keys()
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(norm(x), nn.BatchNorm2d(5)(x), rtol=0, atol=0)  # fp32: the parent's forward
