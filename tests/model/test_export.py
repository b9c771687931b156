"""The exported towers (``export.py``) against the model they were exported from."""
from __future__ import annotations

import math
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
    assert loaded.task.softmax.item_counts == model.task.softmax.item_counts and loaded.task.logq_correction  # an asset of model.keras
    reloaded = tpredict.predict(loaded, root, "validation")
    np.testing.assert_allclose(reloaded["score"], in_memory["score"], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def trained_separate(feat, tmp_path_factory):
    """A hybrid model with a separate retrieval head and a retrieval prior, through ``train``."""
    from twotower_features.config import ModelConfig
    from twotower_model.train import fit_model, train

    from .tiny_features import SMALL

    root, _ = feat
    cfg = ModelConfig(head="cosine", loss="hybrid", hybrid_weight=0.5, softmax_head="separate", softmax_temperature=0.2,
                      retrieval_prior="log_count", prior_weight=0.5, epochs=2, **SMALL)
    model_dir = tmp_path_factory.mktemp("model_separate")
    train(root, model_dir, cfg, progress=lambda s: None)
    model, _ = fit_model(root, cfg, progress=lambda s: None)  # the same model again, in memory (seeded)
    return model, model_dir, cfg


def test_separate_retrieval_head_vectors_by_numpy_and_every_export_agrees(feat, trained_separate):
    """Retrieval query = l2n(u @ Wu) / 0.2 and candidate = l2n(v @ Wv), from the towers' outputs
    and the head's kernels; the exported signatures, the reloaded Keras file and the item file
    give those vectors, and the impressions keep the ranking head."""
    from twotower_features.spec import FeatureSpec
    from twotower_model.data import item_id_column, make_dataset
    from twotower_model.export import load_model, load_towers
    from twotower_model.items import read_item_counts, read_item_embeddings
    from twotower_model.tasks import RETRIEVAL_CANDIDATE, RETRIEVAL_QUERY

    root, _ = feat
    model, model_dir, cfg = trained_separate
    spec = FeatureSpec.load(root)
    batch = next(iter(make_dataset(root, "validation", spec, batch_size=64, shuffle=False, seed=0)))
    u = model.user_tower(batch, training=False).numpy().astype(np.float64)
    v = model.item_tower(batch, training=False).numpy().astype(np.float64)
    wu = model.retrieval_head.user_proj.kernel.numpy().astype(np.float64)
    wv = model.retrieval_head.item_proj.kernel.numpy().astype(np.float64)
    l2n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    query, cand = l2n(u @ wu) / 0.2, l2n(v @ wv)
    out = model(batch, training=False)
    np.testing.assert_allclose(out[RETRIEVAL_QUERY].numpy(), query, atol=1e-5)
    np.testing.assert_allclose(out[RETRIEVAL_CANDIDATE].numpy(), cand, atol=1e-5)
    assert not np.allclose(out["query"].numpy(), query, atol=1e-3)  # the ranking head is another map
    loaded = load_model(model_dir)
    for key in (RETRIEVAL_QUERY, RETRIEVAL_CANDIDATE, "score"):
        np.testing.assert_allclose(loaded(batch, training=False)[key].numpy(), out[key].numpy(), atol=1e-5)
    towers = load_towers(model_dir)
    np.testing.assert_allclose(towers.embed("query", batch).numpy(), np.hstack([query, np.ones((len(query), 1))]), atol=1e-5)
    np.testing.assert_allclose(towers.embed("candidate", batch).numpy(), cand, atol=1e-5)
    np.testing.assert_allclose(towers.score(batch).numpy(), out["score"].numpy(), atol=1e-4)
    # item_embeddings.parquet: each catalog item's candidate, then 0.5 * log1p(train count)
    ids, emb = read_item_embeddings(model_dir)
    catalog = next(iter(make_dataset(root, "catalog", spec, batch_size=4096, shuffle=False, seed=0)))
    cat = l2n(model.item_tower(catalog, training=False).numpy().astype(np.float64) @ wv)
    assert [x.decode() for x in catalog[item_id_column(spec)].numpy()] == list(ids)
    np.testing.assert_allclose(emb[:, :-1], cat, atol=1e-5)
    counts = read_item_counts(root, spec)
    np.testing.assert_allclose(emb[:, -1], [0.5 * np.log1p(counts.get(i, 0.0)) for i in ids], rtol=1e-5)


def test_a_model_trained_with_sampled_negatives_saves_and_reloads(feat, tmp_path):
    """Mixed negative sampling only changes training: the exported towers and the reloaded
    Keras file score like the model in memory, which scores without negatives."""
    from twotower_features.config import ModelConfig
    from twotower_model.export import load_model
    from twotower_model.train import train

    from .tiny_features import ITEMS, SMALL

    root, _ = feat
    cfg = ModelConfig(head="cosine", loss="hybrid", softmax_head="separate", sampled_negatives=16, epochs=2, **SMALL)
    report = train(root, tmp_path, cfg, progress=lambda s: None)
    assert report["sampled_negatives"] == 16 and all(math.isfinite(x) for x in report["loss_per_epoch"])
    loaded = load_model(tmp_path)
    assert loaded.task.softmax.sampled_negatives == 16 and loaded.task.softmax.catalog_size == len(ITEMS)
    exported = tpredict.predict(tmp_path, root, "validation")
    reloaded = tpredict.predict(loaded, root, "validation")
    np.testing.assert_allclose(reloaded["score"], exported["score"], atol=1e-5, rtol=1e-5)
