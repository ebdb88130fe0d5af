"""torch.optim.Adam for parameters held channels_last or in bf16 with fp32 masters: the same update.

torch's fused and foreach CPU kernels copy every channels_last tensor (parameter, gradient, both moments) to a
contiguous one and back at each step: 65 ms against 22 ms for the generator's 54M parameters on a 2-core CPU
(torch 2.14, measured 2026-11-30). Adam is elementwise and a parameter, its gradient and its moments share one
dense layout, so stepping their storage in memory order is the same update on the same numbers.

Under bf16 autocast every forward casts the fp32 weights to bf16 and every backward casts their bf16 gradients to
fp32: for the generator's 54M weights two passes over ~320 MB each per step. `Adam.hold_in_bf16` keeps those bf16
weights in the network instead and steps fp32 masters of them here, casting each gradient chunk as Adam reads it
and writing each bf16 weight chunk as Adam leaves it, while both are in cache.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.optim.adam import adam

# Masters are stepped this many elements at a time: each chunk's fp32 gradient is written, read by Adam and its bf16
# weight written while the chunk is still in cache. 54M elements on a 2-core EPYC (one step, torch's fused kernel):
# 28.4 ms at 2^20, 31.8 ms at 2^18, 34.0 ms at 2^21; whole tensors cast, stepped and cast back: 87 ms. A multiple of
# every vector width and cache line: torch's kernels then round each element as they would over the whole tensor
# (their scalar tails, which a chunk of 100 creates, round differently).
MASTER_CHUNK = 2**20


def _channels_last_dense(tensor: torch.Tensor | None) -> bool:
    return (
        tensor is not None
        and tensor.dim() == 4
        and not tensor.is_contiguous()
        and tensor.is_contiguous(memory_format=torch.channels_last)
    )


def _storage_order(tensor: torch.Tensor) -> torch.Tensor:
    """A channels_last tensor as the 1-D view of its storage (N, H, W, C is its memory order)."""
    return tensor.permute(0, 2, 3, 1).view(-1)


def _shaped_like(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of `_storage_order`: `flat` seen as a channels_last tensor of `shape`."""
    n, c, h, w = shape
    return flat.view(n, h, w, c).permute(0, 3, 1, 2)


class Adam(torch.optim.Adam):
    """torch.optim.Adam (any kernel) that hands channels_last parameters to the kernel as flat views, and steps the
    fp32 masters of weights a network holds in bf16 (`hold_in_bf16`).

    A gradient or moment laid out unlike its parameter (a checkpoint resumed in another layout, a gradient set by
    hand) is first copied into the parameter's layout: torch's fused CPU kernel silently pairs the wrong elements
    otherwise (torch 2.14). Between steps every tensor keeps its parameter's shape, as in torch."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, **kwargs)
        self._bf16_weights: dict[torch.Tensor, nn.Parameter] = {}  # fp32 master -> the network's bf16 weight

    def hold_in_bf16(self, network: nn.Module) -> None:
        """From now on `network` holds its fp32 4-D parameters (the convolution weights, what bf16 autocast casts at
        every forward) as their bf16 roundings, and this optimizer steps fp32 masters of them in their place: bf16
        autocast's maths without its casts. Each weight's gradient must then come from one use per step: autograd
        sums the gradients of several uses in bf16, where autocast's casts sum them in fp32.

        The network's state dict still reads and writes the fp32 masters, and this optimizer's state dict is
        torch.optim.Adam's over the same parameters in the same order, so checkpoints are those of fp32 weights."""
        if self.state:
            raise RuntimeError("hold_in_bf16 must come before the first step: Adam's state is keyed by the masters")
        where = {id(p): (group, i) for group in self.param_groups for i, p in enumerate(group["params"])}
        masters = {}
        for name, weight in network.named_parameters():
            if weight.dim() != 4 or weight.dtype != torch.float32 or id(weight) not in where:
                continue
            group, i = where[id(weight)]
            if group["amsgrad"]:
                raise ValueError("hold_in_bf16 does not step amsgrad's extra moment")
            masters[name] = group["params"][i] = weight.detach().clone()  # clone keeps the layout
            weight.data = weight.data.to(torch.bfloat16)
            self._bf16_weights[masters[name]] = weight
        network.register_state_dict_post_hook(functools.partial(_write_masters, masters))
        network.register_load_state_dict_pre_hook(functools.partial(_read_masters, masters))

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for weight in self._bf16_weights.values():
            if set_to_none or weight.grad is None:
                weight.grad = None
            else:
                weight.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:  # evaluated first, as torch does, while the parameters have their own shapes
            with torch.enable_grad():
                loss = closure()
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        for p in params:
            p.grad = _laid_out_like(p, p.grad)
            state = self.state[p]
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape:  # the moments
                    state[key] = _laid_out_like(p, value)
        flattened = [p for p in params if _channels_last_dense(p)]
        shapes = {p: p.shape for p in flattened}
        for p in flattened:
            _reshape(p, self.state[p], _storage_order, p.shape)
        try:
            super().step()  # masters have no gradient of their own: torch skips them
            self._step_masters()
        finally:
            for p in flattened:
                _reshape(p, self.state[p], functools.partial(_shaped_like, shape=shapes[p]), p.shape)
        return loss

    def _step_masters(self) -> None:
        """torch's Adam on each master with its bf16 weight's gradient, chunk by chunk, then the weight rounded."""
        for group in self.param_groups:
            for master in group["params"]:
                weight = self._bf16_weights.get(master)
                if weight is None or weight.grad is None:
                    continue
                state = self.state[master]
                if not state:  # as torch.optim.Adam creates it, so that its state dict is torch's
                    on_device = group["fused"] or group["capturable"]
                    state["step"] = torch.zeros((), dtype=torch.float32, device=master.device if on_device else None)
                    state["exp_avg"] = torch.zeros_like(master)
                    state["exp_avg_sq"] = torch.zeros_like(master)
                for key in ("exp_avg", "exp_avg_sq"):
                    state[key] = _laid_out_like(master, state[key])
                grad = _laid_out_like(weight, weight.grad)
                flat = (_flat(master), _flat(state["exp_avg"]), _flat(state["exp_avg_sq"]), _flat(grad))
                _adam_in_chunks(group, state["step"], *flat, weight=_flat(weight.data))


def _adam_in_chunks(
    group: dict,
    step: torch.Tensor,
    master: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    grad: torch.Tensor,
    weight: torch.Tensor,
) -> None:
    """One Adam step of flat `master` from the bf16 `grad`, `MASTER_CHUNK` elements at a time, and `weight` <- master.
    Adam's kernels advance the step count they are given, so each chunk gets a copy and `step` advances once."""
    grad_fp32 = torch.empty(min(MASTER_CHUNK, master.numel()), dtype=master.dtype, device=master.device)
    for start in range(0, master.numel(), MASTER_CHUNK):
        chunk = slice(start, start + MASTER_CHUNK)
        chunk_grad = grad_fp32[: master[chunk].numel()].copy_(grad[chunk])
        adam(
            [master[chunk]],
            [chunk_grad],
            [exp_avg[chunk]],
            [exp_avg_sq[chunk]],
            [],
            [step.clone()],
            foreach=group["foreach"],
            fused=group["fused"],
            capturable=group["capturable"],
            differentiable=group["differentiable"],
            decoupled_weight_decay=group.get("decoupled_weight_decay", False),
            amsgrad=False,
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=group["maximize"],
        )
        weight[chunk].copy_(master[chunk])
    step.add_(1)


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor as the 1-D view of its storage."""
    return _storage_order(tensor) if _channels_last_dense(tensor) else tensor.view(-1)


def _write_masters(masters: dict[str, torch.Tensor], network, state_dict, prefix, local_metadata) -> None:
    for name, master in masters.items():
        state_dict[prefix + name] = master


@torch.no_grad()
def _read_masters(masters: dict[str, torch.Tensor], network, state_dict, prefix, *args) -> None:
    """Before torch loads the network's parameters (rounding the bf16 ones), take the fp32 values into the masters."""
    for name, master in masters.items():
        value = state_dict.get(prefix + name)
        if value is not None and value.shape == master.shape:  # a mismatch is torch's to report
            master.copy_(value)


def _laid_out_like(param: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.stride() == param.stride() else torch.empty_like(param).copy_(tensor)


def _reshape(p: torch.Tensor, state: dict, view, shape: torch.Size) -> None:
    """Apply `view` to a parameter, its gradient and its moments (every state tensor of the parameter's shape)."""
    p.data = view(p.data)  # .data first: a gradient must match its parameter's shape
    p.grad = view(p.grad)
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == shape:
            state[key] = view(value)
