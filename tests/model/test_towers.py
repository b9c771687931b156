"""The towers' layers (``towers.py``)."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")


def test_id_embedding_gradient_is_sparse():
    from twotower_model.towers import IdEmbedding

    layer = IdEmbedding(1000, 4)
    layer.build()
    with tf.GradientTape() as tape:
        out = layer(tf.constant([3, 7, 3]))
        loss = tf.reduce_sum(out)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    assert sorted(grad.indices.numpy().tolist()) == [3, 3, 7]
    np.testing.assert_allclose(out.numpy()[0], layer.embeddings.numpy()[3])


def test_saved_model_config_holds_no_vocabulary_or_item_counts(feat, tmp_path):
    """model.keras keeps the vocabularies and the logQ counts as files of its archive, not in
    its config.json; reloaded, the lookups map every value to the same index and the task has
    the same counts."""
    import json
    import zipfile

    from twotower_features.config import ModelConfig
    from twotower_features.spec import FeatureSpec
    from twotower_model.export import load_model, save_model
    from twotower_model.train import fit_model

    from .tiny_features import ITEMS, SMALL, USER_VOCAB

    root, _ = feat
    model, _ = fit_model(root, ModelConfig(head="cosine", loss="hybrid", epochs=1, **SMALL), progress=lambda s: None)
    save_model(model, tmp_path)
    with zipfile.ZipFile(tmp_path / "model.keras") as z:
        config = z.read("config.json").decode()
        assets = [n for n in z.namelist() if n.startswith("assets/")]
    assert "u00" not in config and "i07" not in config  # no vocabulary value, no counted item id
    assert json.loads(config)["config"]["user_tower"]["config"]["vocabulary_sizes"]["user_id"] == len(USER_VOCAB)
    assert any(n.endswith("vocabulary.txt") for n in assets) and any(n.endswith("item_counts.tsv") for n in assets)
    loaded = load_model(tmp_path)
    probe = tf.constant(["u00", USER_VOCAB[-1], "never-seen"])
    np.testing.assert_array_equal(loaded.user_tower.lookups["user_id"](probe).numpy(), model.user_tower.lookups["user_id"](probe).numpy())
    assert loaded.task.softmax.item_counts == model.task.softmax.item_counts and loaded.task.logq_correction
    assert set(loaded.task.softmax.item_counts) <= set(ITEMS)
    assert FeatureSpec.load(root)  # the features folder is untouched


def test_values_outside_the_vocabulary_hash_into_the_oov_buckets(feat):
    """With 4 buckets an unseen value maps to one of indices 0..3, the same one every time, and
    not all unseen values to one row; known values keep their file order after the buckets."""
    from twotower_features.spec import FeatureSpec
    from twotower_model.towers import Tower

    from .tiny_features import USER_VOCAB

    root, _ = feat
    tower = Tower.from_spec(FeatureSpec.load(root), root, "user", embedding_dim=4, hidden_units=(), output_dim=4, oov_buckets=4)
    lookup = tower.lookups["user_id"]
    unseen = tf.constant([f"new-user-{i}" for i in range(40)])
    first, again = lookup(unseen).numpy(), lookup(unseen).numpy()
    np.testing.assert_array_equal(first, again)
    assert set(first) <= {0, 1, 2, 3} and len(set(first)) > 1
    np.testing.assert_array_equal(lookup(tf.constant(USER_VOCAB[:3])).numpy(), [4, 5, 6])
    assert tower.embeddings["user_id"].input_dim == len(USER_VOCAB) + 4
    with pytest.raises(ValueError, match="oov_buckets must be an integer >= 1"):
        Tower(columns=[{"name": "user_id", "dtype": "string", "shape": [], "kind": "id"}], vocabularies={"user_id": ["a"]}, oov_buckets=0)
