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
