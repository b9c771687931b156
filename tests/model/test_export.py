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


@pytest.fixture(scope="module")
def trained_hybrid(feat, tmp_path_factory):
    from twotower_features.config import ModelConfig
    from twotower_model.export import save_model
    from twotower_model.train import fit_model

    from .tiny_features import SMALL

    root, _ = feat
    cfg = ModelConfig(head="cosine", loss="hybrid", hybrid_weight=0.5, epochs=3, **SMALL)
    model, report = fit_model(root, cfg, progress=lambda s: None)
    model_dir = tmp_path_factory.mktemp("model_hybrid")
    save_model(model, model_dir)
    return model, report, model_dir


def test_hybrid_model_saved_towers_and_keras_file_score_like_the_in_memory_model(feat, trained_hybrid):
    from twotower_model.export import load_model
    from twotower_model.tasks import HybridTask

    root, _ = feat
    model, report, model_dir = trained_hybrid
    assert report["loss"] == "hybrid" and report["hybrid_weight"] == 0.5 and report["logq_correction"]
    in_memory = tpredict.predict(model, root, "validation")
    exported = tpredict.predict(model_dir, root, "validation")
    np.testing.assert_allclose(exported["score"], in_memory["score"], atol=1e-5, rtol=1e-5)
    assert in_memory["score"].std() > 0
    loaded = load_model(model_dir)
    assert isinstance(loaded.task, HybridTask) and loaded.task.softmax_weight == 0.5
    assert loaded.task.get_config()["item_counts"] == model.task.get_config()["item_counts"]
    reloaded = tpredict.predict(loaded, root, "validation")
    np.testing.assert_allclose(reloaded["score"], in_memory["score"], atol=1e-5, rtol=1e-5)
