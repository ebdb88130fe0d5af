"""Run by test_step_matches_reference.py in a process of its own (DeepSpeed engines need a process group, set up
once per process): the same models trained a few steps by `Pix2Pix.train_step` and by the reference
implementation's eager step, on the same batches. argv: the output file, then config overrides. Saves
{"engine": params, "reference": params, "norm_cancelled_biases": names}."""

import sys

import torch
from torch import nn

from p2p_dist.config import load_config
from p2p_dist.runtime import init_runtime, shutdown
from p2p_dist.train.engines import Pix2Pix
from p2p_dist.train.reference_step import ReferenceStep

STEPS = 3
RECIPE = [
    "data.crop_size=128",
    "data.load_size=128",
    "model.ngf=8",
    "model.ndf=8",
    "model.norm=instance",
    "model.dropout=false",
    "precision=fp32",
    "train.batch_size=2",
    f"train.steps={STEPS}",
    "train.decay_start=1.0",
]  # the learning rate stays constant, as in the reference step


def batches(count: int, batch_size: int, size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "label": torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1,
            "photo": torch.rand(batch_size, 3, size, size, generator=generator) * 2 - 1,
        }
        for _ in range(count)
    ]


def parameters(generator: nn.Module, discriminator: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"{net}.{k}": v.detach().clone()
        for net, module in (("G", generator), ("D", discriminator))
        for k, v in module.named_parameters()
    }


def norm_cancelled_biases(generator: nn.Module, discriminator: nn.Module) -> list[str]:
    """Biases of convolutions followed by InstanceNorm, which subtracts them again: their exact gradient is 0."""
    return [
        f"{net}.{name}.conv.bias"
        for net, module in (("G", generator), ("D", discriminator))
        for name, block in module.named_modules()
        if isinstance(getattr(block, "norm", None), nn.InstanceNorm2d) and block.conv.bias is not None
    ]


def main(out: str, overrides: list[str]) -> None:
    cfg = load_config(None, [*RECIPE, *overrides])
    rt = init_runtime(cfg)
    try:
        torch.manual_seed(0)
        engine = Pix2Pix(cfg, rt, total_steps=STEPS)
        torch.manual_seed(0)
        reference = ReferenceStep(cfg, rt.device)
        for batch in batches(STEPS, cfg.train.batch_size, cfg.data.crop_size):
            engine.train_step([batch])
            reference(batch)
        torch.save(
            {
                "engine": parameters(engine.G.module, engine.D.module),
                "reference": parameters(reference.G, reference.D),
                "norm_cancelled_biases": norm_cancelled_biases(reference.G, reference.D),
            },
            out,
        )
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
