"""p2p_dist.train.adam.Adam: torch's Adam update, with channels_last parameters stepped over flat storage views."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from p2p_dist.train.adam import Adam
from p2p_dist.train.engines import ADAM_KERNEL


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 5, 4, 2, 1))


def _gradients(network: nn.Module, steps: int) -> list[list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=generator) for p in network.parameters()] for _ in range(steps)]


def _step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    """One step on `grads`, each laid out like its parameter (as autograd lays them out)."""
    for p, grad in zip(params, grads):
        p.grad = torch.empty_like(p).copy_(grad)
    optimizer.step()


@pytest.mark.parametrize("kernel", list(ADAM_KERNEL))
def test_channels_last_parameters_step_bit_identically_to_torch_adam_on_contiguous_ones(kernel):
    contiguous, channels_last = _network(), _network().to(memory_format=torch.channels_last)
    ours = Adam(channels_last.parameters(), lr=1e-2, betas=(0.5, 0.999), **ADAM_KERNEL[kernel])
    torchs = torch.optim.Adam(contiguous.parameters(), lr=1e-2, betas=(0.5, 0.999), **ADAM_KERNEL[kernel])
    for grads in _gradients(contiguous, steps=3):
        _step(ours, list(channels_last.parameters()), grads)
        _step(torchs, list(contiguous.parameters()), grads)
    for a, b in zip(channels_last.parameters(), contiguous.parameters()):
        assert torch.equal(a, b)


def test_parameters_and_moments_keep_their_shape_and_channels_last_layout_between_steps():
    network = _network().to(memory_format=torch.channels_last)
    optimizer = Adam(network.parameters(), lr=1e-2, fused=True)
    _step(optimizer, list(network.parameters()), _gradients(network, steps=1)[0])
    for p in network.parameters():
        state = optimizer.state[p]
        for tensor in (p, p.grad, state["exp_avg"], state["exp_avg_sq"]):
            assert tensor.shape == p.shape
            if p.dim() == 4:
                assert tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def test_a_state_saved_from_contiguous_parameters_resumes_on_channels_last_ones_as_torch_would():
    contiguous = _network()
    first, *rest = _gradients(contiguous, steps=3)
    torchs = torch.optim.Adam(contiguous.parameters(), lr=1e-2, fused=True)
    _step(torchs, list(contiguous.parameters()), first)
    resumed = _network()
    resumed.load_state_dict(contiguous.state_dict())
    resumed = resumed.to(memory_format=torch.channels_last)
    ours = Adam(resumed.parameters(), lr=1e-2, fused=True)
    ours.load_state_dict(copy.deepcopy(torchs.state_dict()))  # state_dict() shares the moments
    for grads in rest:
        _step(torchs, list(contiguous.parameters()), grads)
        _step(ours, list(resumed.parameters()), grads)
    for a, b in zip(resumed.parameters(), contiguous.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("parameters", ["contiguous", "channels_last"])
def test_gradients_and_moments_laid_out_unlike_their_parameter_step_as_if_they_matched(parameters):
    """torch's fused CPU kernel gets these wrong silently; a resumed checkpoint can hold moments in another layout."""
    layout, other = (torch.contiguous_format, torch.channels_last)[:: 1 if parameters == "contiguous" else -1]
    network, reference = (_network().to(memory_format=layout) for _ in range(2))
    ours = Adam(network.parameters(), lr=1e-2, fused=True)
    torchs = torch.optim.Adam(reference.parameters(), lr=1e-2, fused=True)
    first, second = _gradients(network, steps=2)
    _step(torchs, list(reference.parameters()), first)
    ours.load_state_dict(copy.deepcopy(torchs.state_dict()))
    for p in network.parameters():
        state = ours.state[p]
        if p.dim() == 4:
            state["exp_avg"] = state["exp_avg"].contiguous(memory_format=other)
    with torch.no_grad():
        for p, q in zip(network.parameters(), reference.parameters()):
            p.copy_(q)
    for p, grad in zip(network.parameters(), second):
        p.grad = grad.contiguous(memory_format=other) if p.dim() == 4 else grad.clone()
    ours.step()
    _step(torchs, list(reference.parameters()), second)
    for a, b in zip(network.parameters(), reference.parameters()):
        assert torch.equal(a, b) and a.stride() == b.stride()


def test_a_closure_sees_the_parameters_in_their_own_shape_and_its_loss_is_returned():
    network = _network().to(memory_format=torch.channels_last)
    optimizer = Adam(network.parameters(), lr=1e-2, fused=True)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)

    def closure():
        optimizer.zero_grad()
        loss = network(x).square().mean()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() > 0 and all(p.grad is not None for p in network.parameters())
