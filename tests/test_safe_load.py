"""Files read from a run directory (weights, RNG states) or given as a segmenter are loaded as tensors and plain
values only: a pickled object that would run code is refused, naming the file, before it runs."""

import random

import numpy as np
import pytest
import torch

from p2p_dist.errors import BadFileError
from p2p_dist.eval.segmenter.cache import load_segmenter
from p2p_dist.train.checkpoint import ENGINE_TAG, load_weights, restore_rng_state, save_rng_state


class CreatesAFile:
    """Unpickling calls open(marker, "w"): the file appearing is the proof that loading ran the author's code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def checkpoint_dir(root, payload: dict):
    path = root / "step_000001" / "G" / ENGINE_TAG
    path.mkdir(parents=True)
    torch.save(payload, path / "mp_rank_00_model_states.pt")
    return root / "step_000001"


def test_weights_with_a_code_running_pickle_are_refused_in_one_line_naming_the_file_and_it_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = checkpoint_dir(tmp_path, {"module": {"w": torch.ones(2)}, "extra": CreatesAFile(marker)})
    with pytest.raises(BadFileError) as refused:
        load_weights(ckpt, "G")
    message = str(refused.value)
    assert str(ckpt / "G" / ENGINE_TAG / "mp_rank_00_model_states.pt") in message and "refused" in message
    assert "\n" not in message
    assert not marker.exists()


def test_weights_of_tensors_and_plain_values_load(tmp_path):
    ckpt = checkpoint_dir(tmp_path, {"module": {"w": torch.arange(3.0)}, "global_steps": 7, "ds_version": "0.19"})
    assert torch.equal(load_weights(ckpt, "G")["w"], torch.arange(3.0))


@pytest.mark.parametrize("damage", [lambda data: data[:2000], lambda data: b"hello\n"], ids=["truncated", "text"])
def test_a_damaged_or_foreign_weights_file_is_a_bad_file_naming_it(tmp_path, damage):
    ckpt = checkpoint_dir(tmp_path, {"module": {"w": torch.ones(1000)}})
    weights = ckpt / "G" / ENGINE_TAG / "mp_rank_00_model_states.pt"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(BadFileError, match=f"{weights}: not a readable torch file"):
        load_weights(ckpt, "G")


def test_rng_states_restore_every_generator_from_their_file(tmp_path):
    path = tmp_path / "rank_00000.pt"
    save_rng_state(path)
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(path)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_an_rng_file_with_a_code_running_pickle_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "rank_00000.pt"
    torch.save({"torch": torch.get_rng_state(), "numpy": CreatesAFile(marker)}, path)
    with pytest.raises(BadFileError, match=f"{path}: refused"):
        restore_rng_state(path)
    assert not marker.exists()


def test_a_segmenter_file_with_a_code_running_pickle_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "payload-ran", tmp_path / "segmenter.pt"
    torch.save({"format": CreatesAFile(marker)}, path)
    with pytest.raises(BadFileError, match=f"{path}: refused"):
        load_segmenter(path)
    assert not marker.exists()
