"""Loading a generator from a run directory and translating label-map files with it."""

import numpy as np
import pytest
import torch
from PIL import Image

from p2p_dist.inference.label_maps import TranslateError, encode_labels, resize_ids
from p2p_dist.inference.translate import translate_paths
from p2p_dist.models import to_uint8
from p2p_dist.models.translation_modes import translation_modes
from p2p_dist.train.checkpoint import load_weights
from p2p_dist.train.trained_generator import load_generator

from inference_helpers import block_ids, read_rgb, save_colour, save_ids


def quiet_translate(generator, cfg, inputs, output_dir, **kwargs):
    return translate_paths(generator, cfg, inputs, output_dir, device="cpu", progress=False, **kwargs)


def test_load_generator_takes_the_latest_checkpoint_or_a_tag_and_returns_the_run_config(color_run):
    generator, cfg = load_generator(color_run, device="cpu")
    assert cfg.data.crop_size == 128 and cfg.model.ngf == 8 and cfg.data.label_encoding == "color"
    assert not generator.training and generator.size_multiple == 128
    latest = load_weights(color_run / "checkpoints" / "step_000007", "G")
    assert all(torch.equal(generator.state_dict()[k], v) for k, v in latest.items())
    older, _ = load_generator(color_run, "step_000003", device="cpu")
    assert not torch.equal(older.encoder[0].conv.weight, generator.encoder[0].conv.weight)
    assert torch.equal(
        older.encoder[0].conv.weight,
        load_weights(color_run / "checkpoints" / "step_000003", "G")["encoder.0.conv.weight"],
    )


def test_load_generator_names_missing_runs_and_lists_available_checkpoints(color_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="step_000003, step_000007"):
        load_generator(color_run, "step_000999", device="cpu")
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_generator(tmp_path, device="cpu")


@pytest.mark.parametrize("run", ["color_run", "onehot_run"])
def test_id_maps_and_colour_maps_of_the_same_scene_give_the_same_photo_without_dropout(run, request, tmp_path):
    generator, cfg = load_generator(request.getfixturevalue(run), device="cpu")
    scenes = [block_ids(128, 256, seed=s) for s in (10, 11)]
    inputs = [save_ids(tmp_path / "in" / f"s{i}_gtFine_labelIds.png", ids) for i, ids in enumerate(scenes)]
    inputs += [save_colour(tmp_path / "in" / f"s{i}_color.png", ids) for i, ids in enumerate(scenes)]
    outputs = quiet_translate(generator, cfg, inputs, tmp_path / "out", batch_size=3, dropout=False)

    assert [p.name for p in outputs] == ["s0_fake.png", "s1_fake.png", "s0_color_fake.png", "s1_color_fake.png"]
    photos = [read_rgb(p) for p in outputs]
    assert all(photo.shape == (128, 128, 3) for photo in photos)  # the training crop
    assert np.array_equal(photos[0], photos[2]) and np.array_equal(photos[1], photos[3])
    assert np.abs(photos[0].astype(int) - photos[1]).mean() > 2  # different scenes, different photos
    # The files hold the generator's output for the loader's encoding of the squashed map, quantised to uint8.
    squashed = torch.from_numpy(resize_ids(scenes[0], (128, 128)))[None]
    with torch.no_grad(), translation_modes(generator, dropout=False) as translate:
        direct = translate(encode_labels(squashed, cfg.data.label_encoding))
    assert np.abs(to_uint8(direct)[0].permute(1, 2, 0).numpy().astype(int) - photos[0]).max() <= 1


def test_by_default_maps_are_fed_at_the_training_geometry_and_photos_written_at_that_size(color_run, tmp_path):
    """The loader squashes every frame to the square crop (nearest-neighbour ids); translate feeds the generator
    the same, whatever the map's size or aspect ratio, and writes the photo at that size."""
    generator, cfg = load_generator(color_run, device="cpu")
    shapes = {"wide": (256, 512), "square": (128, 128), "tall": (256, 128), "odd": (100, 300)}
    maps = {name: block_ids(*shape, seed=i) for i, (name, shape) in enumerate(shapes.items())}
    inputs = [save_ids(tmp_path / "in" / f"{name}.png", ids) for name, ids in maps.items()]
    squashed = [
        save_ids(tmp_path / "squashed" / f"{name}.png", resize_ids(ids, (128, 128))) for name, ids in maps.items()
    ]
    outputs = quiet_translate(generator, cfg, inputs, tmp_path / "out", batch_size=3, dropout=False)
    expected = quiet_translate(generator, cfg, squashed, tmp_path / "expected", dropout=False)
    assert [read_rgb(p).shape for p in outputs] == [(128, 128, 3)] * 4
    for produced, wanted in zip(outputs, expected):
        assert np.array_equal(read_rgb(produced), read_rgb(wanted)), produced.name


def test_output_size_input_resizes_each_photo_back_to_its_maps_size(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    shapes = [(256, 512), (100, 300), (128, 128)]
    inputs = [save_ids(tmp_path / "in" / f"m{i}.png", block_ids(*shape, seed=i)) for i, shape in enumerate(shapes)]
    model_size = quiet_translate(generator, cfg, inputs, tmp_path / "model", dropout=False)
    input_size = quiet_translate(generator, cfg, inputs, tmp_path / "input", dropout=False, output_size="input")
    assert [read_rgb(p).shape[:2] for p in input_size] == shapes
    for small, big, (height, width) in zip(model_size, input_size, shapes):
        resized = Image.open(small).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        assert np.array_equal(np.asarray(resized), read_rgb(big))
    with pytest.raises(ValueError, match="output_size must be one of model, input"):
        quiet_translate(generator, cfg, inputs, tmp_path / "x", output_size="native")


def test_size_option_resizes_maps_with_nearest_neighbour(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    ids = block_ids(100, 200, seed=5, block=20)
    inputs = [
        save_ids(tmp_path / "in" / "odd.png", ids),
        save_ids(tmp_path / "in" / "presized.png", resize_ids(ids, (128, 256))),
    ]
    outputs = quiet_translate(generator, cfg, inputs, tmp_path / "out", size=(128, 256), dropout=False)
    resized, presized = map(read_rgb, outputs)
    assert resized.shape == (128, 256, 3) and np.array_equal(resized, presized)
    with pytest.raises(TranslateError, match=r"size 200x100 \(WxH\): .*multiples of 128"):
        quiet_translate(generator, cfg, inputs[:1], tmp_path / "out", size=(100, 200))


def test_a_size_the_generator_cannot_take_is_named_with_the_accepted_sizes_before_any_output(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    good = save_ids(tmp_path / "in" / "good.png", block_ids(128, 128, seed=6))
    with pytest.raises(TranslateError, match=r"size 200x128 \(WxH\): .*multiples of 128"):
        quiet_translate(generator, cfg, [good], tmp_path / "out", size=(128, 200))
    assert not (tmp_path / "out").exists()


def test_unreadable_files_are_named(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    good = save_ids(tmp_path / "in" / "good.png", block_ids(128, 128, seed=8))
    broken = tmp_path / "in" / "broken_labelIds.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(TranslateError, match="broken_labelIds.png: cannot read"):
        quiet_translate(generator, cfg, [good, broken], tmp_path / "out")
    # A valid header over truncated data passes the size check and fails when decoded, also by name.
    truncated = tmp_path / "in" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:120])
    with pytest.raises(TranslateError, match="truncated.png: cannot read"):
        quiet_translate(generator, cfg, [truncated], tmp_path / "out")


def test_two_inputs_that_would_share_an_output_name_are_refused(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    ids = block_ids(128, 128, seed=9)
    inputs = [save_ids(tmp_path / "in" / "x_labelIds.png", ids), save_colour(tmp_path / "in" / "x.png", ids)]
    with pytest.raises(TranslateError, match="both be written to .*x_fake.png"):
        quiet_translate(generator, cfg, inputs, tmp_path / "out")


def test_dropout_is_on_by_default_and_seeded_noise_is_reproducible(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    source = [save_ids(tmp_path / "in.png", block_ids(128, 128, seed=12))]
    photo = lambda name, **kw: read_rgb(quiet_translate(generator, cfg, source, tmp_path / name, **kw)[0])  # noqa: E731
    assert np.array_equal(photo("a", seed=1), photo("b", seed=1))
    assert not np.array_equal(photo("c", seed=1), photo("d", seed=2))
    assert np.array_equal(photo("e", dropout=False, seed=1), photo("f", dropout=False, seed=2))


def test_per_image_statistics_by_default_running_on_request_and_the_stored_statistics_never_change(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    source = [save_ids(tmp_path / "in.png", block_ids(128, 256, seed=13))]
    default = read_rgb(quiet_translate(generator, cfg, source, tmp_path / "default", dropout=False)[0])
    per_image = read_rgb(
        quiet_translate(generator, cfg, source, tmp_path / "per_image", dropout=False, norm_mode="per-image")[0]
    )
    running = read_rgb(
        quiet_translate(generator, cfg, source, tmp_path / "running", dropout=False, norm_mode="running")[0]
    )
    assert np.array_equal(default, per_image)
    assert np.abs(per_image.astype(int) - running).mean() > 1
    after = generator.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed
    norms = [m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.track_running_stats and not m.training for m in norms)  # modes restored


def test_photos_do_not_depend_on_the_batch_size_even_with_seeded_dropout(color_run, tmp_path):
    generator, cfg = load_generator(color_run, device="cpu")
    inputs = [save_ids(tmp_path / "in" / f"m{i}.png", block_ids(128, 256, seed=30 + i)) for i in range(5)]
    ones = quiet_translate(generator, cfg, inputs, tmp_path / "b1", batch_size=1, seed=4)
    fours = quiet_translate(generator, cfg, inputs, tmp_path / "b4", batch_size=4, seed=4)  # 4 + 1
    for a, b in zip(ones, fours):
        assert np.array_equal(read_rgb(a), read_rgb(b)), a.name


def test_translation_modes_restores_the_callers_modes(color_run):
    generator, _ = load_generator(color_run, device="cpu")
    generator.train()
    with translation_modes(generator, dropout=False, norm_mode="running"):
        dropouts = [m for m in generator.modules() if isinstance(m, torch.nn.Dropout)]
        assert dropouts and not any(m.training for m in dropouts)
    assert all(m.training for m in generator.modules())
