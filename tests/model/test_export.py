"""The exported towers (``export.py``) against the model they were exported from."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from twotower_model import predict as tpredict  # noqa: E402


def test_saved_towers_score_like_the_in_memory_model(feat, trained_dot):
    root, _ = feat
    model, _, model_dir = trained_dot
    in_memory = tpredict.predict(model, root, "validation")
    exported = tpredict.predict(model_dir, root, "validation")
    pd.testing.assert_frame_equal(in_memory.drop(columns="score"), exported.drop(columns="score"))
    np.testing.assert_allclose(exported["score"], in_memory["score"], atol=1e-5, rtol=1e-5)
    assert in_memory["score"].std() > 0


def test_load_model_alone_finds_every_saved_class(trained_dot):
    """In a fresh process, ``load_model`` registers every class that model.keras names
    (the tasks and LazyAdam live in modules of their own)."""
    _, _, model_dir = trained_dot
    code = (
        "import sys; from twotower_model.export import load_model; m = load_model(sys.argv[1]); "
        "print(type(m).__name__, type(m.task).__name__, type(m.optimizer).__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, cwd=Path(__file__).parents[2],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["TwoTowerModel", "BinaryTask", "LazyAdam"]
