"""The optimisers the trainer offers (``make_optimizer``), among them ``LazyAdam``, Adam with
sparse row updates for embedding tables."""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

OPTIMIZERS = ("lazy_adam", "adam", "adagrad")


@keras.saving.register_keras_serializable(package="twotower")
class LazyAdam(keras.optimizers.Adam):
    """Adam that updates only the rows of an embedding table that the batch touched.

    Keras 3's Adam (and, in its reads, Adagrad) computes over whole variables every step, so a
    step costs O(table size) per embedding table. For a sparse gradient (``tf.IndexedSlices``,
    what an embedding lookup produces) this optimiser gathers the touched rows' moments,
    updates them and scatters them back, as ``LazyAdam`` of TensorFlow Addons did: rows
    outside the batch keep their moments and do not move. Dense gradients get plain Adam.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdam does not support amsgrad=True")

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        # one row per distinct index; repeated indices (an id twice in the batch) are summed
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(tf.cast(gradient.values, dtype), position, tf.shape(rows)[0])
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(m.value, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v.value, rows) + (1 - beta_2) * tf.square(grad)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        self.assign_sub(variable, tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))


def make_optimizer(learning_rate: float, kind: str = "lazy_adam") -> keras.optimizers.Optimizer:
    """``lazy_adam`` (default): Adam, with sparse row updates for embedding tables (``LazyAdam``);
    ``adam`` / ``adagrad``: Keras' own, for comparison (Adagrad at 10x the learning rate).

    ``benchmarks/bench_train.py`` measures the three: with a 1M-id user vocabulary Keras' Adam and
    Adagrad spend each step on whole-table arithmetic; LazyAdam's step does not grow with it.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {kind!r}")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if kind == "adagrad":
        return keras.optimizers.Adagrad(learning_rate=learning_rate * 10)
    return LazyAdam(learning_rate=learning_rate)
