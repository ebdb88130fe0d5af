"""Run by test_bf16_weights.py in a process of its own (DeepSpeed engines need a process group, set up once per
process): the same models trained a few steps by `Pix2Pix.train_step` at precision=fp32, at bf16 under autocast,
with channels_last or contiguous parameters, and at bf16 with bf16 weights held by DeepSpeed
(train.bf16_mode=bf16_weights) at ZeRO 0, 1 and 2, on the same batches and dropout masks. argv: the output
file. Saves, per run: losses, G's parameters (fp32), their start,
Adam's step counts, the dtypes the engines hold, and a translated batch."""

import sys

import torch

from p2p_dist.config import load_config
from p2p_dist.runtime import init_runtime, shutdown
from p2p_dist.train.engines import Pix2Pix

STEPS = 4
RECIPE = [
    "data.crop_size=128",
    "data.load_size=128",
    "model.ngf=8",
    "model.ndf=8",
    "train.batch_size=2",
    f"train.steps={STEPS}",
    "train.decay_start=1.0",
]  # norm=batch (running statistics), dropout on
RUNS = {
    "fp32": ["precision=fp32"],
    "autocast": ["precision=bf16", "train.bf16_mode=autocast"],  # parameters channels_last (auto), as the inputs
    "autocast_contiguous_parameters": [
        "precision=bf16",
        "train.bf16_mode=autocast",
        "train.model_memory_format=contiguous",
    ],
    **{
        f"bf16_weights_zero{z}": ["precision=bf16", "train.bf16_mode=bf16_weights", f"zero_stage={z}"]
        for z in (0, 1, 2)
    },
}


def batches(size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [
        {
            "label": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
            "photo": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
        }
        for _ in range(STEPS)
    ]


def adam_steps(engine) -> list[int]:
    optimizer = engine.optimizer
    while hasattr(optimizer, "optimizer"):  # DeepSpeed's wrappers around the client torch.optim.Adam
        optimizer = optimizer.optimizer
    return sorted({int(state["step"]) for state in optimizer.state.values()})


def train(overrides: list[str], rt) -> dict:
    cfg = load_config(None, [*RECIPE, *overrides])
    run_rt = type(rt)(**{**rt.__dict__, "precision": cfg.precision})
    torch.manual_seed(0)
    model = Pix2Pix(cfg, run_rt, total_steps=STEPS)
    start = {k: v.detach().float().clone() for k, v in model.G.module.named_parameters()}
    losses = []
    for step, batch in enumerate(batches(cfg.data.crop_size)):
        torch.manual_seed(100 + step)  # the same dropout masks in every run
        out = model.train_step([batch])
        losses.append([out.loss_D.item(), out.loss_G_gan.item(), out.loss_G_l1.item()])
    norms = [m for m in model.G.module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    torch.manual_seed(7)
    return {
        "losses": torch.tensor(losses),
        "start": start,
        "input_dtype": str(model.input_dtype),
        "params": {k: v.detach().float().clone() for k, v in model.G.module.named_parameters()},
        "param_dtypes": sorted({str(p.dtype) for p in model.G.module.parameters()}),
        "channels_last_weights": sorted(
            {
                p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                for net in (model.G, model.D)
                for p in net.module.parameters()
                if p.dim() == 4
            }
        ),
        "norm_stat_dtypes": sorted({str(n.running_mean.dtype) for n in norms}),
        "adam_steps": sorted(set(adam_steps(model.G) + adam_steps(model.D))),
        "translated": model.translate(batches(cfg.data.crop_size)[0]["label"]),
    }


def main(out: str) -> None:
    rt = init_runtime(load_config(None, RECIPE))
    torch.set_num_threads(1)
    try:
        torch.save({name: train(overrides, rt) for name, overrides in RUNS.items()}, out)
    finally:
        shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
