"""The optimisers (``optimizer.py``): LazyAdam's sparse steps by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from twotower_model import optimizer as toptimizer  # noqa: E402


def test_lazy_adam_moves_only_touched_rows_by_hand_computed_steps():
    lr = 0.1
    table = tf.Variable(np.zeros((3, 2), np.float32))
    opt = toptimizer.LazyAdam(learning_rate=lr)
    opt.build([table])
    # step 1: row 0 twice (gradients sum to [2, -4]); step 2: row 1 only
    opt.apply_gradients([(tf.IndexedSlices(tf.constant([[1.0, -2.0], [1.0, -2.0]]), tf.constant([0, 0]), tf.constant([3, 2])), table)])
    opt.apply_gradients([(tf.IndexedSlices(tf.constant([[0.5, 0.5]]), tf.constant([1]), tf.constant([3, 2])), table)])
    # Adam's first step on a row is lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|); row 0 is
    # not touched at step 2, so a lazy optimiser leaves it where step 1 put it. Row 1 sees its
    # first gradient at step 2: m = 0.1 * 0.5, v = 0.001 * 0.25, alpha = lr * sqrt(1 - 0.999^2) / (1 - 0.9^2)
    alpha = lr * math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    row1 = alpha * (0.1 * 0.5) / (math.sqrt(0.001 * 0.25) + 1e-7)
    expected = np.array([[-lr, lr], [-row1, -row1], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-4)
    # the same steps with Keras' dense Adam move row 0 again at step 2 (its momentum)
    dense = tf.Variable(np.zeros((3, 2), np.float32))
    adam = tf.keras.optimizers.Adam(learning_rate=lr)
    adam.build([dense])
    adam.apply_gradients([(tf.constant([[2.0, -4.0], [0, 0], [0, 0]]), dense)])
    adam.apply_gradients([(tf.constant([[0.0, 0.0], [0.5, 0.5], [0, 0]]), dense)])
    assert abs(dense.numpy()[0, 0]) > lr * 1.5


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="optimizer must be one of.*'sgd'"):
        toptimizer.make_optimizer(0.01, "sgd")
