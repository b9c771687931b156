"""Fixtures shared by the model tests: the tiny features folder and a model trained on it once."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def feat(tmp_path_factory):
    from .tiny_features import write_features

    root = tmp_path_factory.mktemp("feat")
    written = write_features(root)
    return root, written


@pytest.fixture(scope="session")
def trained_dot(feat, tmp_path_factory):
    """A dot-head model trained and saved once, with the in-memory model kept for parity checks."""
    from twotower_features.config import ModelConfig
    from twotower_model.export import save_model
    from twotower_model.train import fit_model

    from .tiny_features import SMALL

    root, _ = feat
    cfg = ModelConfig(head="dot", epochs=4, **SMALL)
    model, report = fit_model(root, cfg, progress=lambda s: None)
    model_dir = tmp_path_factory.mktemp("model_dot")
    save_model(model, model_dir)
    return model, report, model_dir
