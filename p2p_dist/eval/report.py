"""The evaluation report: `RUN/eval/<tag>.json`, a Markdown page with the table and a sample grid, and the
table printed on the terminal."""

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


def metrics_table(metrics: dict, ceiling: dict | None) -> str:
    """A Markdown table: one row per metric, generated photos beside real photos where that means something."""
    lines = ["| metric | generated | real photos (ceiling) | better |", "|---|---|---|---|"]
    for key, heading, better in COLUMNS:
        if key not in metrics:
            continue
        real = f"{ceiling[key]:.4f}" if ceiling and key in ceiling else ""
        lines.append(f"| {heading} | {metrics[key]:.4f} | {real} | {better} |")
    return "\n".join(lines)


def write_report(out_dir: Path, tag: str, result: dict, grid_png: str) -> tuple[Path, Path]:
    """Write `<tag>.json` (everything) and `<tag>.md` (human-readable); returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{tag}.json", out_dir / f"{tag}.md"
    json_path.write_text(json.dumps(result, indent=1))
    s = result["settings"]
    md_path.write_text(
        f"# Evaluation of {result['run_dir']} at {tag}\n\n"
        f"Split `{s['split']}` ({result['num_images']} images, {s['width']}x{s['height']}), "
        f"dropout at test time {'on' if s['dropout'] else 'off'}, norm layers in {s['norm_mode']} mode, "
        f"segmenter `{s['segmenter'] or 'none'}`.\n\n"
        f"{metrics_table(result['metrics'], result.get('ceiling'))}\n\n"
        f"FCN-score: a segmentation network trained on real train photos segments the generated photos; its "
        f"score on the real photos is the ceiling (the paper's \"ground truth\" row). SSIM, PSNR, MSE and L1 "
        f"compare generated and real photos in [0, 1].\n\n"
        f"Label map | generated | real:\n\n![samples]({grid_png})\n")
    return json_path, md_path
