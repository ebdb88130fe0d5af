"""The evaluation report states its protocol and gives the FCN scores relative to the real-photo ceiling."""

import json

import pytest

from p2p_dist.eval.report import kid_std_meaningful, metrics_table, protocol, relative_to_ceiling, write_report

METRICS = {
    "fcn/pixel_acc": 0.8,
    "fcn/class_acc": 0.4,
    "fcn/mean_iou": 0.382,
    "fid": 61.2,
    "kid_mean": 0.031,
    "kid_std": None,
    "ssim": 0.31,
    "psnr": 14.2,
    "mse": 0.04,
    "l1": 0.15,
}
CEILING = {"fcn/pixel_acc": 0.936, "fcn/class_acc": 0.536, "fcn/mean_iou": 0.472}


def demo_protocol(**changes) -> dict:
    settings = dict(
        split="val",
        num_images=100,
        split_images=100,
        width=128,
        height=128,
        norm_mode="per-image",
        dropout=True,
        seed=0,
        weights="module weights (fp32)",
        precision="fp32",
        fid=True,
        kid_subset_size=100,
        kid_subsets=100,
        fcn=True,
        segmenter="shards/demo/segmenter/s.pt",
        world_size=1,
    )
    return protocol(**{**settings, **changes})


def test_fcn_scores_relative_to_the_ceiling():
    relative = relative_to_ceiling(METRICS, CEILING)
    assert relative == pytest.approx(
        {"fcn/pixel_acc": 0.8 / 0.936, "fcn/class_acc": 0.4 / 0.536, "fcn/mean_iou": 0.382 / 0.472}
    )
    assert relative_to_ceiling(METRICS, None) is None
    table = metrics_table(METRICS, CEILING)
    assert "| FCN class IoU | 0.3820 | 0.4720 | 80.9% | higher |" in table
    assert "| FID | 61.2000 |  |  | lower |" in table


def test_kid_spread_is_meaningful_only_when_subsets_are_smaller_than_the_set():
    assert kid_std_meaningful(50, 100) and not kid_std_meaningful(100, 100) and not kid_std_meaningful(None, 100)
    whole = demo_protocol()["fid_kid"]
    assert "100 random subsets of 100" in whole and "kid_std is meaningless" in whole and "same N (100 here)" in whole
    assert "kid_std is the spread" in demo_protocol(kid_subset_size=50)["fid_kid"]
    assert "±" not in metrics_table(METRICS, CEILING)
    assert "| KID | 0.0310 ± 0.0020 |" in metrics_table({**METRICS, "kid_std": 0.002}, CEILING)


def test_the_protocol_names_images_resolution_statistics_dropout_weights_and_the_segmenters_limits():
    words = demo_protocol(num_images=32, norm_mode="running", dropout=False, world_size=2)
    assert set(words) == {"images", "resolution", "norm_statistics", "dropout", "generator_weights", "fcn", "fid_kid"}
    assert words["images"].startswith("32 images of split 'val' (the first 32 of its 100")
    assert words["resolution"].startswith("128x128: label maps resized nearest-neighbour")
    assert "NOT the paper's protocol" in words["norm_statistics"] and words["dropout"].startswith("off")
    assert "each image's own statistics" in demo_protocol()["norm_statistics"]
    assert "counts them as 0" in words["fcn"] and "not with the paper's Caffe FCN-8s" in words["fcn"]
    assert set(demo_protocol(fid=False, fcn=False)) == {
        "images",
        "resolution",
        "norm_statistics",
        "dropout",
        "generator_weights",
    }


def test_json_and_markdown_carry_the_protocol_and_the_relative_scores(tmp_path):
    result = {
        "run_dir": "runs/demo",
        "checkpoint": "step_000900",
        "num_images": 100,
        "metrics": METRICS,
        "ceiling": CEILING,
        "relative_to_ceiling": relative_to_ceiling(METRICS, CEILING),
        "settings": {"norm_mode": "per-image"},
        "protocol": demo_protocol(),
    }
    json_path, md_path = write_report(tmp_path, "step_000900", result, "step_000900_samples.png")
    assert json.loads(json_path.read_text())["relative_to_ceiling"]["fcn/mean_iou"] == pytest.approx(0.382 / 0.472)
    markdown = md_path.read_text()
    assert "## Protocol" in markdown and "- **norm statistics**: batch norm with each image's own" in markdown
    assert "kid_std is meaningless" in markdown and "| generated / ceiling |" in markdown
