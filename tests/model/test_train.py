"""The trainer (``train.py``) on the tiny features folder (``tiny_features.py``)."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")

from sklearn.metrics import roc_auc_score  # noqa: E402

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_model import export as texport  # noqa: E402
from twotower_model import predict as tpredict  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402

from .tiny_features import ITEMS, SMALL, write_features  # noqa: E402


@pytest.mark.parametrize("head", ["dot", "cosine", "batchnorm"])
def test_each_head_learns_and_exports(feat, tmp_path, head):
    root, written = feat
    cfg = ModelConfig(head=head, epochs=4, temperature=0.2, **SMALL)
    lines: list[str] = []
    report = ttrain.train(root, tmp_path, cfg, progress=lines.append)

    assert report["loss_per_epoch"][-1] < report["loss_per_epoch"][0]
    assert report["examples"] == 4 * 600 and report["examples_per_second"] > 0
    assert any(line.startswith("epoch 4/4") for line in lines)
    on_disk = json.loads((tmp_path / "train_report.json").read_text())
    assert on_disk["final_loss"] == pytest.approx(report["final_loss"])
    assert json.loads((tmp_path / "resolved_model_config.json").read_text())["head"] == head

    scored = tpredict.predict(tmp_path, root, "train")
    assert list(scored.columns) == ["user_id", "item_id", "event_ts", "label", "weight", "score"]
    assert roc_auc_score(scored["label"], scored["score"]) > 0.75
    # the Keras reload scores like the exported towers
    reloaded = tpredict.predict(texport.load_model(tmp_path), root, "train")
    np.testing.assert_allclose(reloaded["score"], scored["score"], atol=1e-5, rtol=1e-5)

    emb = pq.read_table(tmp_path / "item_embeddings.parquet").to_pandas()
    assert sorted(emb["item_id"]) == ITEMS
    assert {len(v) for v in emb["embedding"]} == {8}
    if head == "cosine":
        np.testing.assert_allclose(np.linalg.norm(np.stack(emb["embedding"]), axis=1), 1.0, rtol=1e-5)


def test_softmax_with_logq_trains(feat, tmp_path):
    root, _ = feat
    cfg = ModelConfig(head="cosine", loss="softmax", epochs=3, temperature=0.2, **SMALL)
    report = ttrain.train(root, tmp_path, cfg, progress=lambda s: None)
    assert report["logq_correction"] is True
    assert all(math.isfinite(x) for x in report["loss_per_epoch"])
    assert report["loss_per_epoch"][-1] < report["loss_per_epoch"][0]
    scored = tpredict.predict(tmp_path, root, "train")
    assert roc_auc_score(scored["label"], scored["score"]) > 0.6


def test_training_is_deterministic_given_seed(feat):
    root, _ = feat
    cfg = ModelConfig(head="dot", epochs=1, **SMALL)
    runs = []
    for _ in range(2):
        model, report = ttrain.fit_model(root, cfg, progress=lambda s: None)
        runs.append((tpredict.predict(model, root, "validation")["score"].to_numpy(), report["final_loss"]))
    np.testing.assert_allclose(runs[0][0], runs[1][0], atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-6)


def test_missing_vocabulary_file_is_named(tmp_path):
    write_features(tmp_path, n_train=20, n_val=5)
    (tmp_path / "vocab/handset_maker.txt").unlink()
    with pytest.raises(FileNotFoundError, match="handset_maker.txt"):
        ttrain.train(tmp_path, tmp_path / "model", ModelConfig(epochs=1, **SMALL), progress=lambda s: None)


def test_vocabulary_size_mismatch_is_named(tmp_path):
    write_features(tmp_path, n_train=20, n_val=5)
    (tmp_path / "vocab/item_id.txt").write_text("i00\ni01\n")
    with pytest.raises(ValueError, match="'item_id'.*vocabulary_size=30.*2 lines"):
        ttrain.fit_model(tmp_path, ModelConfig(epochs=1, **SMALL), progress=lambda s: None)


def test_bad_item_frequency_header_is_named(tmp_path):
    write_features(tmp_path, n_train=20, n_val=5)
    (tmp_path / "item_frequency.csv").write_text("item,n\ni00,3\n")
    with pytest.raises(ValueError, match="item_id,count"):
        ttrain.fit_model(tmp_path, ModelConfig(loss="softmax", epochs=1, **SMALL), progress=lambda s: None)


def test_training_from_memory_equals_training_streamed(feat):
    """The train split parsed into memory (the default when its files fit) trains exactly as
    the streamed pipeline: same batches, so the same losses and weights."""
    root, _ = feat
    cfg = ModelConfig(epochs=2, **SMALL)
    streamed_model, streamed = ttrain.fit_model(root, cfg, progress=lambda s: None, memory_cache_bytes=0)
    lines: list[str] = []
    cached_model, cached = ttrain.fit_model(root, cfg, progress=lines.append)
    assert (streamed["train_in_memory"], cached["train_in_memory"]) == (False, True)
    assert streamed["train_load_seconds"] == 0.0 and cached["train_load_seconds"] > 0  # only a parse into memory is a load
    assert any("parsed the train split into memory" in line for line in lines)
    assert cached["loss_per_epoch"] == streamed["loss_per_epoch"] and cached["validation_loss"] == streamed["validation_loss"]
    for a, b in zip(streamed_model.get_weights(), cached_model.get_weights()):
        np.testing.assert_array_equal(a, b)
