"""The two DeepSpeed engines of pix2pix and one training step: a D update, then a G update (the paper).

Read top to bottom. Three DeepSpeed facts shape it (measured, see shared notes): gradient clipping must be
turned off explicitly (its default silently rescales G's gradients); inside the G step D is called as a raw
module (calling the engine there breaks ZeRO); and D is frozen during the G step, or G-step gradients leak
into D's next update.
"""

from __future__ import annotations

from dataclasses import dataclass

import deepspeed
import torch
import torch.nn.functional as F
from torch import nn

from p2p_dist.config import Config
from p2p_dist.models import GANLoss, build_models
from p2p_dist.models.translation_modes import translation_modes
from p2p_dist.runtime import Runtime, resolve_step_layout
from p2p_dist.train import step_ranges as ranges
from p2p_dist.train.adam import Adam
from p2p_dist.train.schedule import lr_factor
from p2p_dist.train.step_ranges import step_range

# train.adam -> torch.optim.Adam's kernel flags. Fused runs one kernel over all parameters instead of torch's
# per-tensor loop on CPU; the same update up to float rounding (benchmarks measure each).
ADAM_KERNEL = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}


def deepspeed_config(cfg: Config, rt: Runtime, bf16_mode: str | None = None) -> dict:
    """One engine's DeepSpeed config; G and D get identical ones (each keeps its own optimizer and scaler).
    `bf16_mode` (p2p_dist.runtime.resolve_bf16_mode) says how precision=bf16 runs."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.train.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": 0.0,  # pix2pix does not clip; DeepSpeed's default of 1.0 would
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 2**31 - 1,  # our own logger reports progress
        "zero_allow_untested_optimizer": True,
    }
    if rt.precision == "bf16" and bf16_mode == "bf16_weights":
        # bf16 parameters (DeepSpeed casts parameters, not buffers: batch-norm statistics stay fp32), fp32 master
        # weights in DeepSpeed's optimizer wrapper, no loss scale. The caller casts the inputs to bf16.
        ds["bf16"] = {"enabled": True}
    elif rt.precision == "bf16":
        # Autocast keeps fp32 master parameters and needs no loss scale: the same maths as fp32, faster.
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif rt.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds


def _hold_parameters_in(engine: deepspeed.DeepSpeedEngine, memory_format: torch.memory_format) -> None:
    """Re-lay the convolution weights (and the fp32 master copies of DeepSpeed's ZeRO-0 bf16 wrapper) out in
    `memory_format`, in place: the same values, the same Parameter objects. train.memory_format lays out the
    inputs; a convolution runs NHWC when either operand is channels_last. After deepspeed.initialize, because
    DeepSpeed refuses channels_last parameters (it broadcasts each as raw bytes), and at ZeRO-0 only (ZeRO >= 1
    flattens them into contiguous buffers)."""
    masters = getattr(engine.optimizer, "fp32_groups", [])  # FP16_UnfusedOptimizer; the client Adam has none
    for tensor in [*engine.module.parameters(), *(master for group in masters for master in group)]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)


# The StepLosses fields that runs report (metrics.jsonl, TensorBoard, progress lines), by name.
LOGGED_LOSSES = ("loss_D", "loss_G_gan", "loss_G_l1")


@dataclass
class StepLosses:
    loss_D: torch.Tensor
    loss_G_gan: torch.Tensor
    loss_G_l1: torch.Tensor
    loss_G: torch.Tensor  # the objective G was updated with: non-finite here poisons the weights at once

    def finite(self) -> torch.Tensor:
        return torch.isfinite(torch.stack([self.loss_D, self.loss_G])).all()


class Pix2Pix:
    """Generator and discriminator engines, their losses, and `train_step`."""

    def __init__(self, cfg: Config, rt: Runtime, total_steps: int) -> None:
        self.cfg, self.rt = cfg, rt
        generator, discriminator = build_models(cfg)
        layout = resolve_step_layout(cfg, rt)
        self.memory_format, self.model_memory_format, self.bf16_mode = (
            layout.memory_format,
            layout.model_memory_format,
            layout.bf16_mode,
        )
        # What the networks take: bf16 where DeepSpeed holds bf16 weights (no autocast casts the inputs then).
        self.input_dtype = torch.bfloat16 if self.bf16_mode == "bf16_weights" else rt.input_dtype
        self.G = self._engine(generator, cfg.train.lr_g, total_steps)
        self.D = self._engine(discriminator, cfg.train.lr_d, total_steps)
        self.gan_loss = GANLoss(cfg.train.gan_loss)
        # With batch norm, real and fake pairs must be normalised in separate batches (as the reference);
        # with a per-sample norm, one D forward over both is the same maths at half the launches.
        self.joint_d_forward = cfg.train.joint_d_forward and cfg.model.norm == "instance"

    def _engine(self, model: nn.Module, lr: float, total_steps: int) -> deepspeed.DeepSpeedEngine:
        model = model.to(self.rt.device)
        t = self.cfg.train
        optimizer = Adam(model.parameters(), lr=lr, betas=(t.beta1, t.beta2), **ADAM_KERNEL[t.adam])
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total_steps, t.decay_start)
        )
        engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=deepspeed_config(self.cfg, self.rt, self.bf16_mode),
        )
        if self.bf16_mode == "bf16_weights" and self.cfg.zero_stage == 0:
            # At ZeRO-0 DeepSpeed's bf16 wrapper (FP16_UnfusedOptimizer) steps Adam once on zero gradients to create
            # the optimizer state: the parameters stay put, but Adam's step count starts at 1, which would change
            # every bias correction of the run. Forget that state: the first real step creates it, as in torch.
            optimizer.state.clear()
        if self.model_memory_format != torch.contiguous_format:
            _hold_parameters_in(engine, self.model_memory_format)
        if self.rt.world_size == 1 and self.cfg.zero_stage == 0 and not t.single_rank_allreduce:
            # DeepSpeed would still flatten every gradient into one buffer, all-reduce it over the group of one
            # and copy it back: an identity that costs two copies of all gradients per step.
            engine.enable_backward_allreduce = False
        if t.compile:
            engine.compile()
        return engine

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        cast = {"dtype": self.input_dtype, "memory_format": self.memory_format}
        return batch["label"].to(**cast), batch["photo"].to(**cast)

    def _autocast(self):
        dtype = self.rt.autocast_dtype
        return torch.autocast(self.rt.device.type, dtype=dtype, enabled=dtype is not None)

    def _discriminate_pairs(self, label: torch.Tensor, real: torch.Tensor, fake: torch.Tensor):
        """D's logits on (label, real) and (label, fake) pairs, through the engine (D is being trained)."""
        if self.joint_d_forward:
            both = torch.cat([torch.cat([label, real], 1), torch.cat([label, fake], 1)], 0)
            return self.D(both).chunk(2)
        return self.D(torch.cat([label, real], 1)), self.D(torch.cat([label, fake], 1))

    def train_step(self, micro_batches: list[dict]) -> StepLosses:
        """One optimiser step of both networks over `train.grad_accum` micro-batches, the same maths as one
        batch of their union: every G micro-step sees the D of after this step's update. So the fakes of all
        micro-batches are kept (with G's graph) through the D update; accumulation saves D memory, not G's."""
        with step_range(ranges.INPUTS):
            inputs = [self._inputs(batch) for batch in micro_batches]
        with step_range(ranges.G_FORWARD):
            fakes = [self.G(label) for label, _ in inputs]

        # D update: real pairs towards 1, fake pairs towards 0, halved (the paper slows D down).
        self.D.module.requires_grad_(True)
        losses_D = []
        for (label, real), fake in zip(inputs, fakes):
            with step_range(ranges.D_FORWARD):
                pred_real, pred_fake = self._discriminate_pairs(label, real, fake.detach())
                losses_D.append(0.5 * (self.gan_loss(pred_real, True) + self.gan_loss(pred_fake, False)))
            with step_range(ranges.D_BACKWARD):
                self.D.backward(losses_D[-1])
            with step_range(ranges.D_OPTIMIZER):
                self.D.step()  # DeepSpeed steps the optimizer at the last micro-batch only

        # G update against the just-updated D: fool it, and stay close to the real photo in L1.
        self.D.module.requires_grad_(False)
        losses_G: dict[str, list[torch.Tensor]] = {"loss_G_gan": [], "loss_G_l1": [], "loss_G": []}
        for (label, real), fake in zip(inputs, fakes):
            with step_range(ranges.G_STEP_D_FORWARD):
                with self._autocast():  # a raw module call bypasses the engine's autocast
                    pred_fake_for_G = self.D.module(torch.cat([label, fake], 1))
                loss_G_gan = self.gan_loss(pred_fake_for_G, True)
                loss_G_l1 = F.l1_loss(fake.float(), real.float())
                loss_G = loss_G_gan + self.cfg.train.lambda_l1 * loss_G_l1
            with step_range(ranges.G_BACKWARD):
                self.G.backward(loss_G)
            with step_range(ranges.G_OPTIMIZER):
                self.G.step()
            for name, value in (("loss_G_gan", loss_G_gan), ("loss_G_l1", loss_G_l1), ("loss_G", loss_G)):
                losses_G[name].append(value.detach())
        means_G = {name: torch.stack(values).mean() for name, values in losses_G.items()}
        return StepLosses(loss_D=torch.stack(losses_D).detach().mean(), **means_G)

    @torch.no_grad()
    def translate(self, label: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        """G's photos for label maps (sample grids, periodic evaluation): batch norm with eval.norm_mode's statistics
        (each image's own by default, one image at a time); dropout on by default (the paper's test noise)."""
        label = label.to(self.rt.device, self.rt.input_dtype, memory_format=self.memory_format)
        with (
            translation_modes(self.G.module, dropout=dropout, norm_mode=self.cfg.eval.norm_mode) as generator,
            self._autocast(),
        ):
            return generator(label).float()

    def apply_config_learning_rates(self) -> None:
        """Make the config's lr_g / lr_d the base of the restored schedules: a resumed run (or a PBT trial
        restored from another trial's checkpoint with mutated rates) trains with the rates it was given."""
        for engine, base_lr in ((self.G, self.cfg.train.lr_g), (self.D, self.cfg.train.lr_d)):
            scheduler = engine.lr_scheduler
            scheduler.base_lrs = [base_lr] * len(scheduler.base_lrs)
            for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)

    @property
    def lr(self) -> tuple[float, float]:
        return self.G.get_lr()[0], self.D.get_lr()[0]

    @property
    def skipped_steps(self) -> tuple[int, int]:
        return int(self.G.skipped_steps), int(self.D.skipped_steps)
