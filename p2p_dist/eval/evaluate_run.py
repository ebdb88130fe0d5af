"""Evaluate one checkpoint of a training run over a split (what launch/evaluate.py does)."""

from __future__ import annotations

from pathlib import Path

import torch

from p2p_dist.data.loaders.build import build_loader, loader_options
from p2p_dist.eval.evaluate import evaluate
from p2p_dist.eval.metrics import CEILING_PREFIX, Evaluator
from p2p_dist.eval.report import kid_std_meaningful, metrics_table, protocol, relative_to_ceiling, write_report
from p2p_dist.eval.segmenter.ensure import run_segmenter_path, segmenter_for
from p2p_dist.models.translation_modes import recorded_norm_mode, translation_modes
from p2p_dist.progress import progress_bar
from p2p_dist.run_dir import RunDir, resolve_checkpoint
from p2p_dist.runtime import init_runtime, shutdown
from p2p_dist.train.samples import sample_grid, save_grid
from p2p_dist.train.trained_generator import load_generator

GRID_IMAGES = 6
# The generator's weights load as fp32 and evaluation runs them so, whatever the run trained with: the training
# precision may not exist on this machine (fp16 needs CUDA) and must not stop an evaluation.
EVAL_PRECISION = "fp32"


def evaluate_run(
    run_dir: Path,
    *,
    checkpoint: str | Path | None = None,
    split: str = "val",
    shards: Path | None = None,
    batch_size: int = 8,
    max_images: int | None = None,
    segmenter: Path | None = None,
    fcn: bool = True,
    fid: bool = True,
    kid_subset_size: int = 100,
    kid_subsets: int = 100,
    dropout: bool = True,
    norm_mode: str | None = None,
    seed: int = 0,
) -> dict:
    """Metrics of the generated photos (and the FCN ceiling of the real ones) over the split, on every rank;
    rank 0 writes RUN/eval/<tag>.json and .md (with the protocol, see p2p_dist.eval.report) and prints the
    table. `max_images` scores the split's first N images only. `norm_mode`: the test-time statistics of
    batch-norm generators (see p2p_dist.models.translation_modes); None takes the run's eval.norm_mode, each
    image's own by default. KID averages `kid_subsets` subsets of `kid_subset_size` images (at most all)."""
    ckpt = resolve_checkpoint(run_dir, checkpoint)
    generator, cfg = load_generator(run_dir, ckpt, device="cpu")
    # The options stand in for the run's own settings, so the segmenter is found as the run's would be.
    if shards is not None:
        cfg.data.shards = str(shards)
    if segmenter is not None:
        cfg.eval.segmenter = str(segmenter)
    norm_mode = norm_mode or cfg.eval.norm_mode
    dropout = dropout and cfg.model.dropout  # a generator built without dropout layers has no test-time noise
    trained_precision, cfg.precision = cfg.precision, EVAL_PRECISION
    rt = init_runtime(cfg)
    try:
        generator.to(rt.device)
        if rt.is_main and trained_precision != EVAL_PRECISION:
            print(f"evaluating in {EVAL_PRECISION} (the run trained with precision={trained_precision})", flush=True)
        d = cfg.data
        loader = build_loader(
            Path(d.shards),
            split,
            loader_options(
                d,
                batch_size=batch_size,
                train=False,
                seed=cfg.seed,
                rank=rt.rank,
                world_size=rt.world_size,
                device=rt.device,
            ),
        )
        try:
            seg = segmenter_for(cfg, rt) if fcn else None
            num_images = min(loader.num_samples, max_images or loader.num_samples)
            kid_subset_size = min(kid_subset_size, num_images)
            # The same segmenter on the real photos too: the paper's "ground truth" row, in the same pass.
            generated = Evaluator(
                rt.device,
                fid_kid=fid,
                fcn=fcn,
                fcn_ceiling=fcn,
                kid_subset_size=kid_subset_size,
                kid_subsets=kid_subsets,
            )
            torch.manual_seed(seed + rt.rank)  # the test-time dropout noise
            progress = (
                (lambda it, total: progress_bar(total, f"evaluate {split}", "batch", iterable=it))
                if rt.is_main
                else None
            )
            with translation_modes(generator, dropout=dropout, norm_mode=norm_mode) as translate:
                metrics = evaluate(
                    lambda batch: translate(batch["label"]), loader, generated, seg, max_images, progress
                )
                grid = _grid(translate, loader) if rt.is_main else None
            ceiling = {
                key.removeprefix(CEILING_PREFIX): metrics.pop(key)
                for key in [k for k in metrics if k.startswith(CEILING_PREFIX)]
            } or None
            split_images = loader.num_samples
        finally:
            loader.close()
        if fid and not kid_std_meaningful(kid_subset_size, num_images):
            metrics["kid_std"] = None  # every subset was the whole set: a spread of 0 up to rounding means nothing
        settings = {
            "split": split,
            "shards": d.shards,
            "dropout": dropout,
            "norm_mode": recorded_norm_mode(generator, norm_mode),
            "segmenter": str(run_segmenter_path(cfg)) if fcn else "",
            "width": d.crop_size,
            "height": d.crop_size,
            "seed": seed,
            "precision": EVAL_PRECISION,
            "weights": generator.weights_source,
            "tf32": False,
            "kid_subset_size": kid_subset_size if fid else None,
            "kid_subsets": kid_subsets if fid else None,
        }
        result = {
            "run_dir": str(run_dir),
            "checkpoint": ckpt.name,
            "num_images": num_images,
            "metrics": metrics,
            "ceiling": ceiling,
            "relative_to_ceiling": relative_to_ceiling(metrics, ceiling),
            "world_size": rt.world_size,
            "settings": settings,
            "protocol": protocol(
                split=split,
                num_images=num_images,
                split_images=split_images,
                width=d.crop_size,
                height=d.crop_size,
                norm_mode=settings["norm_mode"],
                dropout=dropout,
                seed=seed,
                weights=generator.weights_source,
                precision=EVAL_PRECISION,
                fid=fid,
                kid_subset_size=kid_subset_size,
                kid_subsets=kid_subsets,
                fcn=fcn,
                segmenter=settings["segmenter"],
                world_size=rt.world_size,
            ),
        }
        if rt.is_main:
            out_dir = RunDir(run_dir).eval
            save_grid(grid, out_dir / f"{ckpt.name}_samples.png")
            json_path, md_path = write_report(out_dir, ckpt.name, result, f"{ckpt.name}_samples.png")
            print(
                f"{num_images} {split} images at {d.crop_size}x{d.crop_size}, norm statistics "
                f"{settings['norm_mode']}, dropout {'on' if dropout else 'off'}"
                + (f", KID {kid_subsets} x {kid_subset_size} images" if fid else "")
            )
            print(metrics_table(metrics, ceiling))
            print(f"report: {md_path}\nmetrics: {json_path}")
        return result
    finally:
        shutdown()


def _grid(translate, loader) -> torch.Tensor:
    """The first images of this rank's first batch, translated as in the evaluation."""
    batch = next(iter(loader.epoch(0)))
    n = min(GRID_IMAGES, len(batch["key"]))
    with torch.no_grad():
        fake = translate(batch["label"][:n])
    return sample_grid(batch["ids"][:n], fake, batch["photo"][:n])
