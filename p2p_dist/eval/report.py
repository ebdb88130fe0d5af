"""The evaluation report: `RUN/eval/<tag>.json`, a Markdown page with the protocol, the table and a sample grid,
and the table printed on the terminal.

Every report states its protocol (`protocol`: what was scored, at which resolution, with which test-time
behaviour, how KID was sampled and whether its spread means anything) and gives each FCN score also as a fraction
of the real-photo ceiling (`relative_to_ceiling`): a self-trained segmenter's absolute numbers are comparable only
with its own ceiling.
"""

from __future__ import annotations

import json
from pathlib import Path

# (key, heading, better) in report order; FCN rows also get the real-photo ceiling beside them.
COLUMNS = [
    ("fcn/pixel_acc", "FCN per-pixel acc", "higher"),
    ("fcn/class_acc", "FCN per-class acc", "higher"),
    ("fcn/mean_iou", "FCN class IoU", "higher"),
    ("fid", "FID", "lower"),
    ("kid_mean", "KID", "lower"),
    ("ssim", "SSIM", "higher"),
    ("psnr", "PSNR (dB)", "higher"),
    ("mse", "MSE", "lower"),
    ("l1", "L1", "lower"),
]

NORM_STATISTICS = {
    "per-image": "batch norm with each image's own statistics (mean and variance over its height and width), one "
    "image at a time: the paper's protocol (batch size 1 in train mode), independent of batch size "
    "and world size",
    "running": "batch norm with the running statistics accumulated in training (eval mode): NOT the paper's protocol",
    "instance": "instance norm: each image's own statistics (the generator has no batch norm)",
}


def relative_to_ceiling(metrics: dict, ceiling: dict | None) -> dict[str, float] | None:
    """Each FCN score of the generated photos divided by the same score of the real photos (1.0 = as good as real
    photos for this segmenter)."""
    if not ceiling:
        return None
    return {
        key: metrics[key] / real if real else None
        for key, real in ceiling.items()
        if key in metrics and metrics[key] is not None
    }


def kid_std_meaningful(subset_size: int | None, num_images: int) -> bool:
    """KID's standard deviation is the spread over random subsets; subsets as large as the set are all the same
    set, so the spread is 0 up to rounding and says nothing."""
    return subset_size is not None and subset_size < num_images


def protocol(
    *,
    split: str,
    num_images: int,
    split_images: int,
    width: int,
    height: int,
    norm_mode: str,
    dropout: bool,
    seed: int,
    weights: str,
    precision: str,
    fid: bool,
    kid_subset_size: int | None,
    kid_subsets: int | None,
    fcn: bool,
    segmenter: str,
    world_size: int,
) -> dict[str, str]:
    """The evaluation protocol in words, one entry per aspect (the JSON report's ``protocol``)."""
    images = (
        f"{num_images} images of split '{split}'"
        + (
            f" (the first {num_images} of its {split_images}, in shard order)"
            if num_images < split_images
            else " (all of them)"
        )
        + f", each scored once over {world_size} process(es)"
    )
    entries = {
        "images": images,
        "resolution": f"{width}x{height}: label maps resized nearest-neighbour and photos bilinearly (antialiased) "
        f"to the square training crop, whatever their aspect ratio, as the training loader does; "
        f"every metric compares at this size",
        "norm_statistics": NORM_STATISTICS[norm_mode],
        "dropout": (
            f"on at test time (the paper's noise source), torch seed {seed} + rank"
            if dropout
            else "off at test time (deterministic photos)"
        ),
        "generator_weights": f"{weights}, run in {precision}",
    }
    if fcn:
        entries["fcn"] = (
            f"segmenter {segmenter} (trained on the real train photos) labels the generated photos; its predictions "
            f"are scored against the input label maps at {width}x{height} over the 19 train ids (255 ignored), one "
            f"confusion matrix over all images; classes absent from both labels and predictions are left out of "
            f"the means (the paper's evaluation code counts them as 0 in a mean over all 19). The ceiling is the "
            f"same segmenter on the real photos; relative_to_ceiling = generated / ceiling. Comparable only with "
            f"scores from the same segmenter, not with the paper's Caffe FCN-8s numbers"
        )
    if fid:
        kid = (
            f"KID: the mean over {kid_subsets} random subsets of {kid_subset_size} real and {kid_subset_size} "
            f"generated images (polynomial kernel)"
        )
        if kid_std_meaningful(kid_subset_size, num_images):
            kid += "; kid_std is the spread over the subsets"
        else:
            kid += (
                f"; every subset is the whole set of {num_images}, so the subsets do not differ and kid_std "
                f"is meaningless (reported as null)"
            )
        entries["fid_kid"] = (
            f"FID and {kid}. Features: the 2015-12-05 TF-Inception pool layer (2048), inputs quantised to uint8, "
            f"TF32 off. Both are biased by the number of images (FID strongly, upward for small N): compare only "
            f"reports over the same N ({num_images} here)"
        )
    return entries


def _number(value) -> str:
    return "" if value is None else f"{value:.4f}"


def metrics_table(metrics: dict, ceiling: dict | None) -> str:
    """A Markdown table: one row per metric, generated photos beside real photos and their ratio where that means
    something."""
    relative = relative_to_ceiling(metrics, ceiling) or {}
    lines = ["| metric | generated | real photos (ceiling) | generated / ceiling | better |", "|---|---|---|---|---|"]
    for key, heading, better in COLUMNS:
        if key not in metrics:
            continue
        generated = _number(metrics[key])
        if key == "kid_mean" and metrics.get("kid_std") is not None:
            generated += f" ± {metrics['kid_std']:.4f}"
        real = _number(ceiling.get(key)) if ceiling else ""
        ratio = f"{relative[key]:.1%}" if relative.get(key) is not None else ""
        lines.append(f"| {heading} | {generated} | {real} | {ratio} | {better} |")
    return "\n".join(lines)


def write_report(out_dir: Path, tag: str, result: dict, grid_png: str) -> tuple[Path, Path]:
    """Write `<tag>.json` (everything) and `<tag>.md` (human-readable); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{tag}.json", out_dir / f"{tag}.md"
    json_path.write_text(json.dumps(result, indent=1))
    protocol_lines = "\n".join(f"- **{key.replace('_', ' ')}**: {text}" for key, text in result["protocol"].items())
    md_path.write_text(
        f"# Evaluation of {result['run_dir']} at {tag}\n\n"
        f"## Protocol\n\n{protocol_lines}\n\n"
        f"## Scores\n\n"
        f"{metrics_table(result['metrics'], result.get('ceiling'))}\n\n"
        f"FCN-score: a segmentation network trained on real train photos segments the generated photos; its "
        f'score on the real photos is the ceiling (the paper\'s "ground truth" row), and generated / ceiling is '
        f"the share of it reached (the paper's own ratio for L1+cGAN: 0.17 / 0.21 = 81% in class IoU). SSIM, PSNR, "
        f"MSE and L1 compare generated and real photos in [0, 1].\n\n"
        f"Label map | generated | real:\n\n![samples]({grid_png})\n"
    )
    return json_path, md_path
