import importlib.util
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "data_throughput.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("data_throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["dali", "webdataset"])
def test_throughput_function_returns_images_per_second_across_epochs(marker_shards, benchmark, backend):
    # 3 warm-up + 2 x 4 timed batches of 3 run through 3 epochs of the 4-batch split.
    result = benchmark.measure_throughput(
        marker_shards,
        backend=backend,
        batch_size=3,
        batches=4,
        repeats=2,
        warmup=3,
        num_workers=1,
        load_size=40,
        crop_size=32,
    )
    assert result["backend"] == backend and result["label_format"] == "png"
    assert result["prefetch"] == {"dali": "on_demand", "webdataset": "workers"}[backend]  # training's, on a CPU
    assert len(result["images_per_s_repeats"]) == 2 and result["images_per_s"] > 0
