"""The trainer evaluates through the hook it is handed and never imports the evaluation package itself."""

import subprocess
import sys

import pytest

from p2p_dist.config import load_config

from runs import ROOT


def test_importing_the_trainer_imports_neither_eval_nor_inference_nor_tune():
    code = (
        "import sys, p2p_dist.train.loop; print(sorted(m for m in sys.modules "
        "if m.split('.')[:2] in (['p2p_dist', 'eval'], ['p2p_dist', 'inference'], ['p2p_dist', 'tune'])))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_periodic_evaluation_without_a_hook_is_refused_before_anything_starts():
    from p2p_dist.train.loop import train

    with pytest.raises(ValueError, match="eval.every=5 .* no evaluation hook"):
        train(load_config(None, ["eval.every=5", "train.steps=10"]))
