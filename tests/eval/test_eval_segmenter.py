"""The FCN-score segmenter: model, loss, training, checkpoints and the cache next to the shards."""

import importlib.util
import json
import shutil
import warnings
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from p2p_dist.config import load_config
from p2p_dist.data.labels import IGNORE_INDEX, NUM_TRAIN_CLASSES
from p2p_dist.eval.segmenter.cache import (
    SegmenterTrainConfig,
    cache_is_valid,
    default_checkpoint_path,
    is_stale,
    load_segmenter,
    manifest_sha256,
    read_sidecar,
    save_segmenter,
)
from p2p_dist.eval.segmenter.ensure import ensure_run_segmenter, ensure_segmenter, run_segmenter_ready, segmenter_for
from p2p_dist.eval.segmenter.fit import score_segmenter, segmentation_loss, train_step
from p2p_dist.eval.segmenter.net import SegmenterNet
from p2p_dist.models import sidecar_path
from p2p_dist.runtime import Runtime

from runs import free_port

ROAD, BUILDING = 7, 11  # Cityscapes ids of train ids 0 and 2


def test_segmenter_outputs_19_class_logits_at_the_input_resolution():
    model = SegmenterNet(width=4).eval()
    assert model(torch.zeros(2, 3, 64, 96)).shape == (2, NUM_TRAIN_CLASSES, 64, 96)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(1, 3, 50, 64))


def test_default_segmenter_is_small():
    assert 1_000_000 < sum(p.numel() for p in SegmenterNet().parameters()) < 2_000_000


def test_loss_ignores_label_255_pixels():
    logits = torch.randn(1, NUM_TRAIN_CLASSES, 2, 2)
    labels = torch.tensor([[[3, IGNORE_INDEX], [5, IGNORE_INDEX]]], dtype=torch.uint8)
    pixels = logits.permute(0, 2, 3, 1).reshape(-1, NUM_TRAIN_CLASSES)
    by_hand = torch.nn.functional.cross_entropy(pixels[[0, 2]], torch.tensor([3, 5]))
    assert segmentation_loss(logits, labels) == pytest.approx(float(by_hand), rel=1e-6)


def test_loss_of_a_fully_ignored_batch_is_zero_with_finite_gradients():
    logits = torch.randn(1, NUM_TRAIN_CLASSES, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 2, 2), IGNORE_INDEX))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(logits.grad).all()


def _two_colour_scenes(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Photos with a reddish road at the bottom and a bluish building on top, split at a random row."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(32).view(1, 32, 1)
    split = torch.randint(8, 24, (num, 1, 1), generator=generator)
    ids = torch.where(rows >= split, ROAD, BUILDING).expand(num, 32, 32)
    red, blue = torch.tensor([0.8, -0.6, -0.6]), torch.tensor([-0.6, -0.4, 0.8])
    photos = torch.where((ids == ROAD).unsqueeze(1), red.view(1, 3, 1, 1), blue.view(1, 3, 1, 1))
    photos = photos + 0.1 * torch.randn(photos.shape, generator=generator)
    return photos, ids


def test_training_steps_learn_a_two_class_scene_and_the_score_says_so():
    torch.manual_seed(0)
    model = SegmenterNet(width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    photos, ids = _two_colour_scenes(8, seed=0)
    train_ids = torch.where(ids == ROAD, 0, 2)
    before = score_segmenter(model.eval(), [(photos, ids)], torch.device("cpu"))
    losses = [train_step(model, optimizer, photos, train_ids) for _ in range(40)]
    test_photos, test_ids = _two_colour_scenes(8, seed=1)
    after = score_segmenter(model.eval(), [(test_photos, test_ids)], torch.device("cpu"))
    assert losses[-1] < 0.2 * losses[0]
    assert after["fcn/pixel_acc"] > 0.95 > before["fcn/pixel_acc"]
    assert after["fcn/mean_iou"] > 0.9
    assert after["num_images"] == 8


@pytest.fixture
def shards_dir(tmp_path):
    """Only the manifest matters to the cache: its checksum ties a segmenter to a shard set."""
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "p2p_dist-shards", "splits": ["train", "val"]}))
    return tmp_path


def _photos() -> torch.Tensor:
    return torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_checkpoint_round_trip_gives_the_same_predictions(tmp_path):
    model = SegmenterNet(width=4).eval()
    path = tmp_path / "seg.pt"
    save_segmenter(model, path, {"note": "test"})
    loaded = load_segmenter(path)
    assert not loaded.training
    assert torch.equal(loaded(_photos()), model(_photos()))
    assert read_sidecar(path) == {"note": "test"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json", "seg.pt"]  # no temporary files left


def test_bare_state_dict_and_torchscript_segmenters_load(tmp_path):
    model = SegmenterNet(width=8).eval()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, but users still ship TorchScript
        torch.jit.trace(model, _photos()).save(str(tmp_path / "scripted.pt"))
    expected = model(_photos())
    for name in ("bare.pt", "scripted.pt"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load_segmenter(tmp_path / name)
        assert torch.allclose(loaded(_photos()), expected, atol=1e-5), name


def test_loading_something_else_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_segmenter(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*not a SegmenterNet"):
        load_segmenter(tmp_path / "other.pt")
    torch.save({"format": "someone-else/9", "config": {}, "state_dict": {}}, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="future.pt.*unknown segmenter format"):
        load_segmenter(tmp_path / "future.pt")
    torch.save(SegmenterNet(num_classes=7, width=4).state_dict(), tmp_path / "seven.pt")
    with pytest.raises(ValueError, match="seven.pt.*7 classes"):
        load_segmenter(tmp_path / "seven.pt")


def _cache(shards_dir, config: SegmenterTrainConfig):
    path = default_checkpoint_path(shards_dir, config.crop_size)
    sidecar = {"train_config": asdict(config), "manifest_sha256": manifest_sha256(shards_dir)}
    save_segmenter(SegmenterNet(width=config.width), path, sidecar)
    return path


def test_cache_is_valid_only_for_the_same_shards_and_settings(shards_dir):
    config = SegmenterTrainConfig(epochs=1, width=4)
    path = _cache(shards_dir, config)
    assert cache_is_valid(shards_dir, path, config)
    assert not cache_is_valid(shards_dir, path, SegmenterTrainConfig(epochs=2, width=4))
    (shards_dir / "manifest.json").write_text('{"changed": true}')
    assert not cache_is_valid(shards_dir, path, config)


def test_cache_without_its_sidecar_is_not_valid(shards_dir):
    config = SegmenterTrainConfig(epochs=1, width=4)
    path = _cache(shards_dir, config)
    sidecar_path(path).unlink()
    assert not cache_is_valid(shards_dir, path, config)


def test_one_idea_of_stale_for_runs_and_for_requested_settings(shards_dir):
    config = SegmenterTrainConfig(epochs=1, width=4, crop_size=128)
    path = _cache(shards_dir, config)
    run = run_config(shards_dir, 128)
    # Fresh: these shards, this crop size. Other settings do not make it stale; they only fail a request for
    # other settings.
    assert not is_stale(path, shards_dir, 128) and run_segmenter_ready(run)
    assert not cache_is_valid(shards_dir, path, SegmenterTrainConfig(epochs=2, width=4, crop_size=128))
    # A segmenter trained at 128 in the 256 entry (launch/train_segmenter.py --out) is not the 256 runs' one.
    wrong_entry = default_checkpoint_path(shards_dir, 256)
    save_segmenter(SegmenterNet(width=4), wrong_entry, read_sidecar(path))
    assert is_stale(wrong_entry, shards_dir, 256) and not run_segmenter_ready(run_config(shards_dir, 256))
    (shards_dir / "manifest.json").write_text('{"changed": true}')
    assert is_stale(path, shards_dir, 128) and not run_segmenter_ready(run)
    assert not cache_is_valid(shards_dir, path, config)


def test_ensure_segmenter_reuses_a_valid_cache_without_training(shards_dir):
    path = _cache(shards_dir, SegmenterTrainConfig(epochs=1, width=4))
    written_at = path.stat().st_mtime_ns
    # Training would need real shards, which this directory does not have: returning means it reused.
    assert ensure_segmenter(shards_dir, epochs=1, width=4, device="cpu", progress=False) == path
    assert path.stat().st_mtime_ns == written_at


def test_ensure_segmenter_rejects_unknown_settings(shards_dir):
    with pytest.raises(TypeError, match="epoch"):
        ensure_segmenter(shards_dir, epoch=3)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="crop_size must be a multiple of 32, got 100"):
        SegmenterTrainConfig(crop_size=100)
    with pytest.raises(ValueError, match="epochs must be positive"):
        SegmenterTrainConfig(epochs=0)


def test_missing_manifest_is_reported_with_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        manifest_sha256(tmp_path)


# ------------------------------------------------------------- end to end on real (tiny) demo shards


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    from p2p_dist.data.demo.shard_set import ensure_demo_shards

    return ensure_demo_shards(
        tmp_path_factory.mktemp("demo") / "shards", num_train=8, num_val=6, image_size=(128, 64), progress=False
    )


@pytest.mark.parametrize("backend", ["dali", "webdataset"])
def test_train_segmenter_on_demo_shards_writes_checkpoint_and_ceiling_sidecar(demo_shards, backend, tmp_path):
    from p2p_dist.eval.segmenter.fit import train_segmenter

    path = train_segmenter(
        demo_shards,
        out_path=tmp_path / "seg.pt",
        epochs=1,
        batch_size=8,
        crop_size=64,
        width=4,
        backend=backend,
        device="cpu",
        progress=False,
    )
    sidecar = read_sidecar(path)
    assert sidecar["train_config"]["backend"] == backend
    assert sidecar["manifest_sha256"] == manifest_sha256(demo_shards)
    # 6 val images in one batch of 8: the 2 repeats padding it (beside their originals) are not scored twice.
    assert sidecar["val_scores"]["num_images"] == 6
    assert 0.0 <= sidecar["val_scores"]["fcn/pixel_acc"] <= 1.0
    assert load_segmenter(path)(torch.zeros(1, 3, 64, 64)).shape == (1, NUM_TRAIN_CLASSES, 64, 64)


def _cli_main():
    """launch/ holds scripts, not a package: load the script as a module to call its main() in-process."""
    script = Path(__file__).resolve().parents[2] / "launch" / "train_segmenter.py"
    spec = importlib.util.spec_from_file_location("train_segmenter_cli", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_cli_trains_once_then_reuses_the_cache(demo_shards, capsys):
    main = _cli_main()
    args = [
        "--shards",
        str(demo_shards),
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--crop-size",
        "64",
        "--width",
        "4",
        "--quiet",
    ]
    main(args)
    checkpoint = demo_shards / "segmenter" / "segmenter_64.pt"
    first = json.loads(capsys.readouterr().out)
    written_at = checkpoint.stat().st_mtime_ns
    main(args)
    second = json.loads(capsys.readouterr().out)
    assert first == second and first["checkpoint"] == str(checkpoint)
    assert checkpoint.stat().st_mtime_ns == written_at


def run_config(shards, crop_size: int):
    return load_config(
        None, [f"data.shards={shards}", f"data.crop_size={crop_size}", f"data.load_size={crop_size}", "train.steps=1"]
    )


def _cpu_runtime(rank: int, world_size: int) -> Runtime:
    return Runtime(rank, rank, world_size, world_size, torch.device("cpu"), "fp32")


def test_segmenters_for_two_crop_sizes_coexist_and_each_run_gets_the_one_for_its_crop_size(demo_shards, tmp_path):
    main = _cli_main()
    paths = {}
    for crop in (128, 256):
        main(
            [
                "--shards",
                str(demo_shards),
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--crop-size",
                str(crop),
                "--width",
                "4",
                "--quiet",
            ]
        )
        paths[crop] = demo_shards / "segmenter" / f"segmenter_{crop}.pt"
    written_at = {crop: path.stat().st_mtime_ns for crop, path in paths.items()}
    # A store of our own: this test's process must not join (or leave behind) a process group for others.
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        for crop, path in paths.items():
            cfg = run_config(demo_shards, crop)
            # Trained with settings other than the defaults (1 epoch, width 4): still the run's segmenter.
            assert run_segmenter_ready(cfg)
            assert ensure_run_segmenter(cfg, device="cpu") == path
            loaded = segmenter_for(cfg, _cpu_runtime(0, 1))
            expected = load_segmenter(path)
            assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), expected.state_dict().values()))
    finally:
        dist.destroy_process_group()
    assert {crop: path.stat().st_mtime_ns for crop, path in paths.items()} == written_at  # reused, not retrained
    assert {read_sidecar(path)["train_config"]["crop_size"] for path in paths.values()} == {128, 256}


def test_a_given_segmenter_is_the_runs_without_looking_at_the_cache(tmp_path):
    cfg = run_config(tmp_path / "no_shards_here", 128)
    cfg.eval.segmenter = str(tmp_path / "mine.pt")
    assert run_segmenter_ready(cfg)
    assert ensure_run_segmenter(cfg) == tmp_path / "mine.pt"


def _wait_rank_main(rank: int, port: int, shards: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # two ranks on a shared 2-core machine
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=rank == 0, timeout=timedelta(minutes=5))
    # Both ranks meet first, so that the group's short timeout does not count their start-up skew.
    store.set(f"started{rank}", "1")
    store.wait(["started0", "started1"])
    # Collectives of the default group time out after 1 s: far less than rank 0 needs to train.
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=timedelta(seconds=1))
    try:
        segmenter = segmenter_for(run_config(shards, 128), _cpu_runtime(rank, 2))
        torch.save(segmenter.state_dict(), f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters, and rank 0 trains a default segmenter (20 epochs): ~1 min
def test_other_ranks_wait_out_a_training_longer_than_the_collective_timeout(demo_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(demo_shards, shards, ignore=shutil.ignore_patterns("segmenter"))
    mp.spawn(_wait_rank_main, args=(free_port(), str(shards), str(tmp_path)), nprocs=2, join=True)
    cached = default_checkpoint_path(shards, 128)
    assert read_sidecar(cached)["train_seconds"] > 1  # longer than the default group's timeout
    expected = load_segmenter(cached).state_dict()
    for rank in range(2):
        weights = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert all(torch.equal(weights[k], v) for k, v in expected.items()), rank
