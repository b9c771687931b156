"""The two-tower model: two ``Tower``s, a scoring head and a task that holds the loss.

As in tensorflow/recommenders, towers, task and model are apart: the model computes the two
embeddings and the score and only overrides ``compute_loss``, which hands the batch to the task.

Heads (``ScoringHead``): each tower's output is mapped to a *query* (user) and a *candidate*
(item) vector such that the model's logit is exactly ``dot(query, candidate)``:

- ``dot``: ``q = u``, ``c = v``;
- ``cosine``: ``q = u / |u| / temperature``, ``c = v / |v|`` (the dot of the L2-normalised
  outputs, divided by the temperature);
- ``batchnorm``: ``q = BatchNorm(u)``, ``c = BatchNorm(v)`` (one BatchNormalization per tower).

The exported towers output ``q`` and ``c``, so any consumer scores with a plain dot product.

Tasks: ``BinaryTask`` (sample-weighted binary cross-entropy on the logit, the weighted mean
``sum(w * bce) / sum(w)``) and ``InBatchSoftmaxTask`` (in-batch sampled softmax over the
batch's items with the positives as queries and the logQ correction of Yi et al., RecSys 2019).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf
from keras import ops

from twotower_features.config import HEADS, ModelConfig
from twotower_features.spec import FeatureSpec

from .data import item_id_column
from .towers import Tower

QUERY = "query"
CANDIDATE = "candidate"
SCORE = "score"


@keras.saving.register_keras_serializable(package="twotower")
class ScoringHead(keras.layers.Layer):
    """Maps tower outputs to query/candidate vectors whose dot product is the logit."""

    def __init__(self, kind: str = "dot", temperature: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {kind!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.kind = kind
        self.temperature = float(temperature)
        if kind == "batchnorm":
            self.user_norm = keras.layers.BatchNormalization(name="user_batchnorm")
            self.item_norm = keras.layers.BatchNormalization(name="item_batchnorm")

    def build(self, u_shape: Any, v_shape: Any = None) -> None:
        if self.built:
            return
        if self.kind == "batchnorm":
            self.user_norm.build(tuple(u_shape))
            self.item_norm.build(tuple(v_shape if v_shape is not None else u_shape))
        self.built = True

    def query(self, u: Any, training: bool | None = None) -> Any:
        if self.kind == "cosine":
            return _l2_normalize(u) / self.temperature
        if self.kind == "batchnorm":
            return self.user_norm(u, training=training)
        return u

    def candidate(self, v: Any, training: bool | None = None) -> Any:
        if self.kind == "cosine":
            return _l2_normalize(v)
        if self.kind == "batchnorm":
            return self.item_norm(v, training=training)
        return v

    def call(self, u: Any, v: Any, training: bool | None = None) -> tuple[Any, Any]:
        return self.query(u, training=training), self.candidate(v, training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "kind": self.kind, "temperature": self.temperature}


def _l2_normalize(x: Any) -> Any:
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="twotower")
class BinaryTask(keras.layers.Layer):
    """Sample-weighted binary cross-entropy on the logit: ``sum(w * bce) / sum(w)``."""

    def __init__(self, label: str = "label", weight: str | None = "weight", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.weight = weight

    def call(self, features: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        logits = outputs[SCORE]
        labels = ops.cast(ops.reshape(features[self.label], (-1,)), logits.dtype)
        per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
        w = _weights(features, self.weight, labels)
        return tf.math.divide_no_nan(ops.sum(per_row * w), ops.sum(w))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label": self.label, "weight": self.weight}


@keras.saving.register_keras_serializable(package="twotower")
class InBatchSoftmaxTask(keras.layers.Layer):
    """In-batch sampled softmax with logQ correction (Yi et al., RecSys 2019).

    The queries are the batch's positive rows (label > 0); the candidates are the items of all
    rows of the batch; row i's positive is column i. Each logit is corrected by
    ``- log(q_item)``, ``q_item`` the item's share of the train-window interactions
    (``item_counts``; an item not counted gets a count of 1). Candidates with the same item id
    as the query's positive ("accidental hits") are masked out. Per-query losses are averaged
    with the queries' sample weights. A batch without a positive has loss 0.
    """

    def __init__(
        self,
        label: str = "label",
        weight: str | None = "weight",
        item_key: str = "item_id",
        item_counts: Mapping[str, float] | None = None,
        remove_accidental_hits: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.weight = weight
        self.item_key = item_key
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.item_counts = {str(k): float(v) for k, v in (item_counts or {}).items()}
        bad = [k for k, v in self.item_counts.items() if not (v >= 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"item_counts must be finite numbers >= 0; bad items: {bad[:5]}")
        self._log_q = None
        if self.item_counts:
            total = sum(max(c, 1.0) for c in self.item_counts.values())
            keys = tf.constant(list(self.item_counts), tf.string)
            values = tf.constant([math.log(max(c, 1.0) / total) for c in self.item_counts.values()], tf.float32)
            self._log_q = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, values), default_value=math.log(1.0 / total)
            )

    @property
    def logq_correction(self) -> bool:
        return self._log_q is not None

    def call(self, features: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        query, candidate = outputs[QUERY], outputs[CANDIDATE]
        item_ids = ops.reshape(features[self.item_key], (-1,))
        labels = ops.cast(ops.reshape(features[self.label], (-1,)), query.dtype)
        positive = labels > 0
        logits = ops.matmul(query, ops.transpose(candidate))  # [queries=batch, candidates=batch]
        if self._log_q is not None:
            logits = logits - self._log_q.lookup(item_ids)[None, :]
        n = ops.shape(logits)[0]
        eye = ops.eye(n, dtype="bool")
        if self.remove_accidental_hits:
            same = ops.equal(item_ids[:, None], item_ids[None, :])
            logits = ops.where(ops.logical_and(same, ops.logical_not(eye)), -1e9, logits)
        per_row = tf.nn.softmax_cross_entropy_with_logits(labels=ops.cast(eye, logits.dtype), logits=logits)
        w = _weights(features, self.weight, labels) * ops.cast(positive, logits.dtype)
        return tf.math.divide_no_nan(ops.sum(per_row * w), ops.sum(w))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "label": self.label,
            "weight": self.weight,
            "item_key": self.item_key,
            "item_counts": self.item_counts,
            "remove_accidental_hits": self.remove_accidental_hits,
        }


def _weights(features: Mapping[str, Any], name: str | None, labels: Any) -> Any:
    """The batch's sample weights as a float vector like ``labels`` (ones when ``name`` is None)."""
    if name is None:
        return ops.ones_like(labels)
    return ops.cast(ops.reshape(features[name], (-1,)), labels.dtype)


@keras.saving.register_keras_serializable(package="twotower")
class TwoTowerModel(keras.Model):
    """``call(features) -> {"query": [b, d], "candidate": [b, d], "score": [b]}``; the score is
    the logit ``dot(query, candidate)``. Training hands the batch to ``task``."""

    def __init__(self, user_tower: Tower, item_tower: Tower, head: ScoringHead, task: keras.layers.Layer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if user_tower.output_dim != item_tower.output_dim:
            raise ValueError(
                f"user tower output_dim {user_tower.output_dim} != item tower output_dim {item_tower.output_dim}; the dot product needs equal sizes"
            )
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.head = head
        self.task = task

    def build(self, input_shape: Any = None) -> None:
        """Create every weight; the towers know their input shapes from the feature spec."""
        if self.built:
            return
        self.user_tower.build()
        self.item_tower.build()
        self.head.build((None, self.user_tower.output_dim), (None, self.item_tower.output_dim))
        self.built = True

    def get_build_config(self) -> dict[str, Any]:
        return {"from_feature_spec": True}

    def build_from_config(self, config: dict[str, Any]) -> None:
        self.build()

    def call(self, features: Mapping[str, Any], training: bool | None = None) -> dict[str, Any]:
        q = self.head.query(self.user_tower(features, training=training), training=training)
        c = self.head.candidate(self.item_tower(features, training=training), training=training)
        return {QUERY: q, CANDIDATE: c, SCORE: ops.sum(q * c, axis=-1)}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' hook: the task's loss on the batch ``x`` (labels and weights are columns of it)."""
        loss = self.task(x, y_pred)
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def get_config(self) -> dict[str, Any]:
        ser = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "user_tower": ser(self.user_tower),
            "item_tower": ser(self.item_tower),
            "head": ser(self.head),
            "task": ser(self.task),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TwoTowerModel":
        de = keras.saving.deserialize_keras_object
        kwargs = {k: de(config[k]) for k in ("user_tower", "item_tower", "head", "task")}
        return cls(name=config.get("name"), **kwargs)


def build_model(spec: FeatureSpec, feat_dir: str | Path, cfg: ModelConfig, *, item_counts: Mapping[str, float] | None = None) -> TwoTowerModel:
    """Both towers from the feature spec, the head and the task of ``cfg``."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    dims = dict(embedding_dim=cfg.embedding_dim, hidden_units=cfg.hidden_units, output_dim=cfg.output_dim)
    user = Tower.from_spec(spec, feat_dir, "user", **dims)
    item = Tower.from_spec(spec, feat_dir, "item", **dims)
    head = ScoringHead(cfg.head, cfg.temperature if cfg.head == "cosine" else 1.0, name="head")
    if cfg.loss == "bce":
        task: keras.layers.Layer = BinaryTask(label=spec.label, weight=spec.weight, name="task")
    else:
        task = InBatchSoftmaxTask(label=spec.label, weight=spec.weight, item_key=item_id_column(spec), item_counts=item_counts, name="task")
    model = TwoTowerModel(user, item, head, task, name="two_tower")
    model.build()
    return model


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
