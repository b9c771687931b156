"""Scoring (``predict.py``): the item embeddings file and out-of-vocabulary ids."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")

from twotower_model import export as texport  # noqa: E402
from twotower_model import predict as tpredict  # noqa: E402

from .tiny_features import N_ITEMS, USER_VOCAB  # noqa: E402


def test_item_embeddings_file_matches_item_tower(feat, trained_dot, tmp_path):
    root, written = feat
    model, _, model_dir = trained_dot
    n = tpredict.write_item_embeddings(model_dir, root, tmp_path / "emb.parquet")
    assert n == N_ITEMS
    emb = pq.read_table(tmp_path / "emb.parquet").to_pandas().set_index("item_id")
    towers = texport.load_towers(model_dir)
    direct = towers.embed("item", {"item_id": tf.constant(["i05"]), "item_emb": written["catalog"]["item_emb"][5:6]}).numpy()[0]
    np.testing.assert_allclose(emb.loc["i05", "embedding"], direct, atol=1e-6)
    # score = dot(user embedding, item embedding) for a validation row
    val = written["validation"]
    row = {k: v[:1] for k, v in val.items()}
    u = towers.embed("user", row).numpy()[0]
    expected = float(u @ emb.loc[row["item_id"][0], "embedding"])
    assert float(towers.score(row).numpy()[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_out_of_vocabulary_ids_score(feat, trained_dot):
    root, written = feat
    _, _, model_dir = trained_dot
    scored = tpredict.predict(model_dir, root, "validation")
    oov = scored["user_id"].isin(["u38", "u39"])
    assert oov.any() and np.isfinite(scored.loc[oov, "score"]).all()
    towers = texport.load_towers(model_dir)
    row = {
        "user_id": tf.constant(["never-seen", "also-new", USER_VOCAB[0]]),
        "handset_maker": tf.constant(["apple", "apple", "apple"]),
        "user_vec": np.tile(np.float32([[1, 0, 0, 0]]), (3, 1)),
        "hist_len": np.array([3, 3, 3], np.int64),
    }
    u = towers.embed("user", row).numpy()
    # both unseen ids fall into the one OOV bucket: same embedding; a known id differs
    np.testing.assert_allclose(u[0], u[1], atol=1e-6)
    assert not np.allclose(u[0], u[2])
    unseen_handset = dict(row, handset_maker=tf.constant(["nokia", "nokia", "nokia"]))
    assert np.isfinite(towers.embed("user", unseen_handset).numpy()).all()
