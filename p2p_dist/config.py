"""The one typed configuration of p2p_dist.

Every option lives here exactly once, as a dataclass field with its help text. A run's config is built
from the defaults, then an optional YAML file, then dotted ``key=value`` overrides (``train.steps=200``),
and is validated as a whole so that a bad key or value is reported by name before any work starts.
``python launch/train.py --help`` prints this file's options.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from p2p_dist.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file, key or value that cannot be used; the message names it."""


# Allowed values of choice options that modules implement. They are defined here, once, and the modules
# import them: this file stays free of torch, so the launchers can validate a config before heavy imports.
BACKENDS = ("dali", "webdataset")  # data.loader: p2p_dist.data.loaders.build.build_loader
LABEL_ENCODINGS = ("color", "onehot")  # data.label_encoding: p2p_dist.data.loaders.contract
PREFETCH_MODES = ("auto", "ahead", "on_demand")  # data.prefetch: p2p_dist.runtime.resolve_prefetch
NORMS = ("batch", "instance", "syncbatch")  # model.norm: p2p_dist.models.norm.make_norm
GAN_MODES = ("vanilla", "lsgan")  # train.gan_loss: p2p_dist.models.losses.GANLoss
ADAM_KERNELS = ("fused", "foreach", "for-loop")  # train.adam: p2p_dist.train.engines
BF16_MODES = ("auto", "autocast", "bf16_weights")  # train.bf16_mode: p2p_dist.runtime.resolve_bf16_mode
SMALL_MAPS_MODES = ("auto", "matmul", "conv")  # train.small_maps: p2p_dist.models.small_maps
DROPOUT_MASKS = ("auto", "bits", "bernoulli")  # train.dropout_masks: p2p_dist.models.dropout
NORM_MODES = ("per-image", "running")  # eval.norm_mode: p2p_dist.models.translation_modes


def opt(default: Any, help: str, choices: tuple | None = None, clears: str | None = None) -> Any:
    """A config field with its documentation, allowed values (checked by `validate`), and the alternative
    field that setting this one resets (train.steps and train.epochs: a later layer picks one of them)."""
    meta = {"help": help, "choices": choices, "clears": clears}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    shards: str = opt(
        "shards/demo",
        "Shard directory holding manifest.json (built by launch/pack.py). "
        "At this default path the demo shards are built automatically when missing or stale.",
    )
    loader: str = opt(
        "dali",
        "Input pipeline: NVIDIA DALI (GPU decode on CUDA machines) or webdataset + torch DataLoader.",
        choices=BACKENDS,
    )
    load_size: int = opt(286, "Images are resized to this square size before the random crop (paper: 286).")
    crop_size: int = opt(256, "Random crop size = training resolution; 128, 256 or 512 (the U-Net depth follows).")
    flip: bool = opt(True, "Random horizontal flip, the same draw for label map and photo.")
    label_encoding: str = opt(
        "color",
        "Generator input: the paper's 3-channel colour label map, or one-hot ids (34 channels).",
        choices=LABEL_ENCODINGS,
    )
    num_workers: int = opt(2, "Decoding threads (DALI) or DataLoader worker processes (webdataset) per rank.")
    prefetch: str = opt(
        "auto",
        "When DALI decodes a batch: ahead (the next one while the step runs) or on_demand (when the trainer asks "
        "for it, with every decoding thread). auto: ahead on CUDA, on_demand on a CPU, whose cores the step's "
        "threads already fill (p2p_dist.runtime.resolve_prefetch). The webdataset loader's worker processes "
        "always work ahead.",
        choices=PREFETCH_MODES,
    )
    holdout: int = opt(
        0,
        "Train-split images held out (evenly spread over the split): training never reads them "
        "and periodic evaluation scores them instead of val. Sweeps set it from "
        "tune.holdout_images; 0 = none.",
    )


@dataclass
class ModelConfig:
    ngf: int = opt(64, "Generator width (filters in the first conv layer).")
    ndf: int = opt(64, "Discriminator width (filters in the first conv layer).")
    d_layers: int = opt(3, "PatchGAN depth: 3 gives the paper's 70x70 receptive field.")
    norm: str = opt(
        "batch",
        "Normalisation layers. Use instance or syncbatch with more than one rank: plain "
        "batch norm keeps per-rank running statistics.",
        choices=NORMS,
    )
    dropout: bool = opt(True, "Dropout 0.5 in the three innermost decoder blocks (the paper's noise source).")
    init_gain: float = opt(0.02, "Std of the N(0, gain) weight initialisation.")
    pretrained_g: str = opt("", "Reference implementation checkpoint (latest_net_G.pth, unet_256) to start G from.")
    pretrained_d: str = opt("", "Reference implementation checkpoint (latest_net_D.pth, basic) to start D from.")


@dataclass
class TrainConfig:
    steps: int = opt(
        0,
        "Total optimiser steps. Exactly one of train.steps and train.epochs is set (> 0); "
        "setting one in a file or override clears the other.",
        clears="epochs",
    )
    epochs: float = opt(0.0, "Total epochs over the train split (the paper: 200).", clears="steps")
    decay_start: float = opt(
        0.5,
        "Fraction of training after which the learning rate decays linearly to zero "
        "(the paper: 100 constant + 100 decaying epochs = 0.5).",
    )
    batch_size: int = opt(1, "Images per rank per micro-step (the paper: 1).")
    grad_accum: int = opt(
        1,
        "Micro-batches accumulated per optimiser step: the same maths as one batch of "
        "batch_size * grad_accum (saves D's activation memory; G's fakes are kept for D's update).",
    )
    lr_g: float = opt(2e-4, "Generator Adam learning rate.")
    lr_d: float = opt(2e-4, "Discriminator Adam learning rate.")
    beta1: float = opt(0.5, "Adam beta1 for both networks.")
    beta2: float = opt(0.999, "Adam beta2 for both networks.")
    lambda_l1: float = opt(100.0, "Weight of the L1 term in the generator loss.")
    gan_loss: str = opt("vanilla", "GAN objective: vanilla (BCE with logits, the paper) or lsgan.", choices=GAN_MODES)
    memory_format: str = opt(
        "auto",
        "Layout of the images fed to the convolutions (same maths): auto = "
        "channels_last on CUDA and for bf16 on a CPU (the fast NHWC kernels there), "
        "contiguous for fp32 on a CPU (oneDNN would re-lay out the weights at every "
        "convolution; measured slower).",
        choices=("auto", "channels_last", "contiguous"),
    )
    model_memory_format: str = opt(
        "auto",
        "Layout of the networks' parameters (train.memory_format lays out the "
        "inputs; a convolution runs NHWC when either is channels_last): auto per device "
        "and precision (p2p_dist.runtime.resolve_model_memory_format). Only ZeRO-0 keeps "
        "channels_last parameters: ZeRO >= 1 flattens them into contiguous buffers.",
        choices=("auto", "channels_last", "contiguous"),
    )
    bf16_mode: str = opt(
        "auto",
        "How precision=bf16 runs, the same maths up to bf16 rounding: autocast keeps fp32 "
        "weights and casts them to bf16 at every forward; bf16_weights holds bf16 weights in "
        "DeepSpeed's bf16 mode, fp32 master weights in the optimizer and fp32 batch-norm "
        "statistics (it accumulates train.grad_accum micro-batch gradients in bf16); auto picks "
        "per device and CPU kind (p2p_dist.runtime.resolve_bf16_mode).",
        choices=BF16_MODES,
    )
    small_maps: str = opt(
        "auto",
        "How the layers where oneDNN's bf16 kernels are slow run, the same sums: the generator's innermost levels "
        "(convolutions to maps of at most 8x8, transposed convolutions from them) and the discriminator's one-channel "
        "head. matmul = one matmul each (an im2col gather before it, or the overlapping patches summed after it; for "
        "the head, the products with each kernel offset summed), and at the 16x16 level the kernels with the weight "
        "gradient as one matmul; conv = the framework's convolution kernels; auto = the matmuls on a CPU in bf16, where"
        " oneDNN's kernels spend those layers reordering weights or on one output channel (per layer 1.3-3x; "
        "p2p_dist.models.small_maps), the kernels for fp32 (no faster there) and on CUDA.",
        choices=SMALL_MAPS_MODES,
    )
    dropout_masks: str = opt(
        "auto",
        "How the generator's dropout (p=0.5) draws its masks: bits = one random bit per element, eight from each "
        "random byte: the same fair coin per element as torch's, other random numbers; bernoulli = torch's "
        "dropout (one generator call per element); auto = bits on a CPU (the three dropout layers of unet_256 at "
        "batch 4: ~7 -> ~0.5 ms a step), torch's fused kernel on CUDA. Training only: test-time noise "
        "(translation, evaluation, exports) is torch's, as a TorchScript export draws it.",
        choices=DROPOUT_MASKS,
    )
    compile: bool = opt(
        False,
        "torch.compile both networks (inductor). Off by default: on a native-bf16 CPU "
        "(bf16, batch 4) it compiles in ~50 s and then runs at 0.95-0.96x the eager speed (1.00-1.06x "
        "before the eager step's own speed-ups; the convolutions are the same oneDNN kernels; "
        "benchmarks/results/*-candidates-compile.md); unmeasured on GPUs.",
    )
    adam: str = opt(
        "fused",
        "Adam kernel, the same update up to float rounding: fused (one kernel over all "
        "parameters), foreach (batched per-tensor ops), or for-loop (one tensor at a time, as the "
        "reference implementation).",
        choices=ADAM_KERNELS,
    )
    joint_d_forward: bool = opt(
        True,
        "One D forward over real and fake pairs together where the norm is "
        "per-sample (instance): the same maths at half the launches. Batch norm always "
        "normalises the pairs apart, as the reference does.",
    )
    single_rank_allreduce: bool = opt(
        False,
        "Keep DeepSpeed's gradient all-reduce in a group of one rank at "
        "ZeRO-0, an identity that copies every gradient twice (for comparisons).",
    )


@dataclass
class RunConfig:
    dir: str = opt("runs/demo", "Run directory. If it holds a checkpoint, training resumes from the latest one.")
    log_every: int = opt(10, "Steps between progress lines and metrics.jsonl records.")
    sample_every: int = opt(200, "Steps between label | generated | real sample grids in samples/.")
    checkpoint_every: int = opt(500, "Steps between checkpoints (one is always written at the end).")
    keep_checkpoints: int = opt(3, "Checkpoints kept in checkpoints/; older ones are deleted.")
    sample_rows: int = opt(4, "Validation pairs shown in each sample grid (one row each).")


@dataclass
class EvalConfig:
    every: int = opt(0, "Steps between evaluations on a fixed val subset during training (0 = off).")
    num_images: int = opt(64, "Size of the fixed val subset used by periodic evaluation.")
    fcn: bool = opt(True, "Include the FCN-score in periodic evaluation (trains the segmenter once if needed).")
    fid: bool = opt(False, "Include FID/KID in periodic evaluation (Inception is slow on a CPU).")
    segmenter: str = opt("", "Segmenter checkpoint for the FCN-score; default: trained and cached next to the shards.")
    norm_mode: str = opt(
        "per-image",
        "Test-time statistics of batch-norm and syncbatch generators in sample grids, "
        "periodic evaluation, sweeps and (as their default) launch/evaluate.py and "
        "launch/translate.py: per-image = each image's own, computed one image at a time (the "
        "paper's protocol); running = the running statistics of training.",
        choices=NORM_MODES,
    )


@dataclass
class TuneConfig:
    """Ray Tune sweeps (launch/tune.py); each trial trains with the rest of this config."""

    scheduler: str = opt(
        "asha", "Trial scheduler: ASHA early stopping or Population Based Training.", choices=("asha", "pbt")
    )
    num_samples: int = opt(4, "Number of trials.")
    metric: str = opt(
        "fcn_miou",
        "Objective from periodic evaluation (eval.every): FCN mean IoU (maximised), FID or L1 (minimised).",
        choices=("fcn_miou", "fid", "l1"),
    )
    holdout_images: int = opt(
        64,
        "Train images held out to score the objective on (evenly spread over the train "
        "split; trials do not train on them), so val stays untouched for the final report. "
        "0 scores on val instead.",
    )
    lambda_l1: list[float] = opt([10.0, 300.0], "Log-uniform range [low, high] searched for train.lambda_l1.")
    lr_g: list[float] = opt([5e-5, 1e-3], "Log-uniform range [low, high] searched for train.lr_g.")
    lr_d: list[float] = opt([5e-5, 1e-3], "Log-uniform range [low, high] searched for train.lr_d.")
    choices: dict = opt(
        {}, "Other dotted config keys to search, each with a list of values (e.g. {model.norm: [batch, instance]})."
    )
    workers_per_trial: int = opt(1, "Data-parallel DeepSpeed workers per trial (>1 runs a Ray Train TorchTrainer).")
    cpus_per_worker: int = opt(1, "CPUs reserved per worker.")
    use_gpu: str = opt(
        "auto", "One GPU per worker: auto (when the cluster has GPUs), yes or no.", choices=("auto", "yes", "no")
    )
    grace_period: int = opt(1, "ASHA: evaluations a trial runs before it may be stopped.")
    reduction_factor: int = opt(2, "ASHA: keep the best 1/reduction_factor of trials at each rung.")
    perturbation_interval: int = opt(1, "PBT: evaluations between exploit/explore decisions.")
    pbt_synch: bool = opt(
        True,
        "PBT: trials wait for each other at every perturbation point, so exploit/explore "
        "decisions compare all trials at the same step, whatever their speed (false: "
        "asynchronous, no waiting, but a decision sees only the trials that reported by then).",
    )
    max_failures: int = opt(2, "Retries of a failed trial, each from its last checkpoint.")
    storage_path: str = opt("runs/tune", "Where trials, checkpoints and results go (shared storage on a cluster).")
    name: str = opt("pix2pix_sweep", "Experiment name (a folder under storage_path); --resume continues it.")
    address: str = opt("", "Ray cluster to join: empty starts a local Ray, 'auto' joins the running cluster.")


@dataclass
class Config:
    seed: int = opt(0, "Seed for weights, data order, augmentation and dropout (rank offsets are added).")
    precision: str = opt(
        "auto",
        "Numerics: auto = bf16 where the device has native bf16 units (CUDA "
        "Ampere+, AVX512-BF16/AMX CPUs), else fp32. fp16 uses dynamic loss scaling, needs CUDA "
        "and ZeRO >= 1.",
        choices=("auto", "bf16", "fp16", "fp32"),
    )
    zero_stage: int = opt(0, "DeepSpeed ZeRO stage for both engines.", choices=(0, 1, 2))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the key."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    origin = typing.get_origin(tp) or tp
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [v if item_tp is Any else _coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in the config")  # keep configs simple
    return value


def _apply(section: Any, values: dict, prefix: str) -> None:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = _field_types(type(section))
    clears = {f.name: f.metadata.get("clears") for f in dataclasses.fields(section)}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"unknown config key '{name}' (known here: {known})")
        tp = hints[key]
        if _is_section(tp):
            _apply(getattr(section, key), value, f"{name}.")
        else:
            setattr(section, key, _coerce(value, tp, name))
            other = clears.get(key)
            if other and other not in values:
                setattr(section, other, type(getattr(section, other))(0))


def _nest(dotted: str, value: Any) -> dict:
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> ("a.b", value parsed as YAML, so 1e-4, true and [1, 2] work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. train.steps=200)")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] = (), base: Config | None = None) -> Config:
    """Defaults (or `base`) <- YAML file <- dotted overrides, then validated."""
    cfg = base if base is not None else Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        try:
            _apply(cfg, values, "")
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for text in overrides:
        key, value = parse_override(text)
        _apply(cfg, _nest(key, value), "")
    validate(cfg)
    return cfg


def _check_choices(section: Any, prefix: str) -> None:
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{f.name}.")
        elif f.metadata.get("choices") and value not in f.metadata["choices"]:
            allowed = " | ".join(map(str, f.metadata["choices"]))
            raise ConfigError(f"{prefix}{f.name}: {value!r} is not one of {allowed}")


def validate(cfg: Config) -> None:
    """Cross-field and range checks; each message names the key and the value."""
    _check_choices(cfg, "")
    t, d = cfg.train, cfg.data
    if (t.steps > 0) == (t.epochs > 0):
        raise ConfigError(
            f"set exactly one of train.steps and train.epochs (> 0); got train.steps={t.steps}, train.epochs={t.epochs}"
        )
    if t.steps < 0 or t.epochs < 0:
        raise ConfigError("train.steps and train.epochs must not be negative")
    if not 0.0 <= t.decay_start <= 1.0:
        raise ConfigError(f"train.decay_start: {t.decay_start} is not in [0, 1]")
    positive = {
        "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum,
        "train.lr_g": t.lr_g,
        "train.lr_d": t.lr_d,
        "data.num_workers": d.num_workers,
        "model.ngf": cfg.model.ngf,
        "model.ndf": cfg.model.ndf,
        "model.d_layers": cfg.model.d_layers,
        "run.log_every": cfg.run.log_every,
        "run.sample_every": cfg.run.sample_every,
        "run.checkpoint_every": cfg.run.checkpoint_every,
        "run.keep_checkpoints": cfg.run.keep_checkpoints,
        "run.sample_rows": cfg.run.sample_rows,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be > 0, got {value}")
    if t.lambda_l1 < 0:
        raise ConfigError(f"train.lambda_l1: must be >= 0, got {t.lambda_l1}")
    if d.crop_size not in (128, 256, 512):
        raise ConfigError(f"data.crop_size: {d.crop_size} is not one of 128 | 256 | 512 (the U-Net needs 2^7..2^9)")
    if d.load_size < d.crop_size:
        raise ConfigError(f"data.load_size ({d.load_size}) must be >= data.crop_size ({d.crop_size})")
    if not (0.0 < t.beta1 < 1.0 and 0.0 < t.beta2 < 1.0):
        raise ConfigError(f"train.beta1/beta2 must be in (0, 1), got {t.beta1}, {t.beta2}")
    tune = cfg.tune
    for key in ("lambda_l1", "lr_g", "lr_d"):
        bounds = getattr(tune, key)
        if len(bounds) != 2 or not 0 < bounds[0] <= bounds[1]:
            raise ConfigError(f"tune.{key}: expected [low, high] with 0 < low <= high, got {bounds}")
    for key, values in tune.choices.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"tune.choices.{key}: expected a non-empty list of values, got {values!r}")
    for key in (
        "num_samples",
        "workers_per_trial",
        "cpus_per_worker",
        "grace_period",
        "reduction_factor",
        "perturbation_interval",
    ):
        if getattr(tune, key) <= 0:
            raise ConfigError(f"tune.{key}: must be > 0, got {getattr(tune, key)}")
    if d.holdout < 0 or tune.holdout_images < 0:
        raise ConfigError(f"data.holdout and tune.holdout_images must be >= 0, got {d.holdout}, {tune.holdout_images}")
    if cfg.eval.every < 0 or cfg.eval.num_images <= 0:
        raise ConfigError(
            f"eval.every must be >= 0 and eval.num_images > 0, got {cfg.eval.every}, {cfg.eval.num_images}"
        )


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe(section: Any = None, prefix: str = "") -> str:
    """Every option with its default and help, for ``--help``."""
    section = Config() if section is None else section
    lines = []
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            lines.append("")
            lines.append(f"  [{prefix}{f.name}]")
            lines.append(describe(value, f"{prefix}{f.name}."))
            continue
        choices = f.metadata.get("choices")
        allowed = f" ({' | '.join(map(str, choices))})" if choices else ""
        lines.append(f"  {prefix}{f.name} = {value!r}{allowed}")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)
