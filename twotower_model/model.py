"""The two-tower model: two ``Tower``s (``towers.py``), a scoring head and a task that holds
the loss (``tasks.py``).

As in tensorflow/recommenders, towers, task and model are apart: the model computes the two
embeddings and the score and only overrides ``compute_loss``, which hands the batch to the task.

Heads (``ScoringHead``): each tower's output is mapped to a *query* (user) and a *candidate*
(item) vector such that the model's logit is exactly ``dot(query, candidate)``:

- ``dot``: ``q = u``, ``c = v``;
- ``cosine``: ``q = u / |u| / temperature``, ``c = v / |v|`` (the dot of the L2-normalised
  outputs, divided by the temperature);
- ``batchnorm``: ``q = BatchNorm(u)``, ``c = BatchNorm(v)`` (one BatchNormalization per tower).

The exported towers output ``q`` and ``c`` (``export.py``), so any consumer scores with a plain
dot product.

A model trained with the hybrid loss and ``softmax_head = "separate"`` also has a
``RetrievalHead``: a linear map of each tower's output (no bias), L2-normalised, the query
divided by ``softmax_temperature``. The softmax term trains it, full-catalog retrieval uses it
(``retrieval_query`` / ``retrieval_candidate``), and the impressions keep the ranking head.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import keras
from keras import ops

from twotower_features.config import HEADS, ModelConfig
from twotower_features.spec import FeatureSpec

from .data import NEGATIVE, item_id_column
from .metrics import SCORE
from .tasks import (
    CANDIDATE,
    NEGATIVE_CANDIDATE,
    QUERY,
    RETRIEVAL_CANDIDATE,
    RETRIEVAL_QUERY,
    BinaryTask,
    HybridTask,
    InBatchSoftmaxTask,
)
from .towers import Tower


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


@keras.saving.register_keras_serializable(package="twotower")
class RetrievalHead(keras.layers.Layer):
    """Retrieval vectors of its own: ``q = l2n(u @ Wu) / temperature``, ``c = l2n(v @ Wv)``."""

    def __init__(self, dim: int, temperature: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.dim, self.temperature = int(dim), float(temperature)
        self.user_proj = keras.layers.Dense(self.dim, use_bias=False, name="user_retrieval")
        self.item_proj = keras.layers.Dense(self.dim, use_bias=False, name="item_retrieval")

    def build(self, u_shape: Any, v_shape: Any = None) -> None:
        if self.built:
            return
        self.user_proj.build(tuple(u_shape))
        self.item_proj.build(tuple(v_shape if v_shape is not None else u_shape))
        self.built = True

    def query(self, u: Any, training: bool | None = None) -> Any:
        return _l2_normalize(self.user_proj(u)) / self.temperature

    def candidate(self, v: Any, training: bool | None = None) -> Any:
        return _l2_normalize(self.item_proj(v))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "dim": self.dim, "temperature": self.temperature}


def _l2_normalize(x: Any) -> Any:
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=-1, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="twotower")
class TwoTowerModel(keras.Model):
    """``call(features) -> {"query": [b, d], "candidate": [b, d], "score": [b]}``; the score is
    the logit ``dot(query, candidate)``; with a ``retrieval_head`` also ``"retrieval_query"`` and
    ``"retrieval_candidate"``. Training hands the batch to ``task``."""

    def __init__(
        self, user_tower: Tower, item_tower: Tower, head: ScoringHead, task: keras.layers.Layer,
        retrieval_head: RetrievalHead | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if user_tower.output_dim != item_tower.output_dim:
            raise ValueError(
                f"user tower output_dim {user_tower.output_dim} != item tower output_dim {item_tower.output_dim}; the dot product needs equal sizes"
            )
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.head = head
        self.task = task
        self.retrieval_head = retrieval_head

    def build(self, input_shape: Any = None) -> None:
        """Create every weight; the towers know their input shapes from the feature spec."""
        if self.built:
            return
        self.user_tower.build()
        self.item_tower.build()
        self.head.build((None, self.user_tower.output_dim), (None, self.item_tower.output_dim))
        if self.retrieval_head is not None:
            self.retrieval_head.build((None, self.user_tower.output_dim), (None, self.item_tower.output_dim))
        self.built = True

    def get_build_config(self) -> dict[str, Any]:
        return {"from_feature_spec": True}

    def build_from_config(self, config: dict[str, Any]) -> None:
        self.build()

    def call(self, features: Mapping[str, Any], training: bool | None = None) -> dict[str, Any]:
        u = self.user_tower(features, training=training)
        v = self.item_tower(features, training=training)
        q, c = self.head.query(u, training=training), self.head.candidate(v, training=training)
        out = {QUERY: q, CANDIDATE: c, SCORE: ops.sum(q * c, axis=-1)}
        if self.retrieval_head is not None:
            out[RETRIEVAL_QUERY] = self.retrieval_head.query(u, training=training)
            out[RETRIEVAL_CANDIDATE] = self.retrieval_head.candidate(v, training=training)
        names = self.item_tower.feature_names
        if names and all(NEGATIVE + n in features for n in names):  # a training batch with sampled negatives
            neg = self.item_tower({n: features[NEGATIVE + n] for n in names}, training=training)
            out[NEGATIVE_CANDIDATE] = self.retrieval.candidate(neg, training=training)
        return out

    @property
    def retrieval(self) -> ScoringHead | RetrievalHead:
        """The head full-catalog retrieval scores with: the retrieval head, else the ranking head."""
        return self.retrieval_head if self.retrieval_head is not None else self.head

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
            "retrieval_head": ser(self.retrieval_head) if self.retrieval_head is not None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TwoTowerModel":
        de = keras.saving.deserialize_keras_object
        kwargs = {k: de(config[k]) for k in ("user_tower", "item_tower", "head", "task")}
        if config.get("retrieval_head") is not None:
            kwargs["retrieval_head"] = de(config["retrieval_head"])
        return cls(name=config.get("name"), **kwargs)


def build_model(
    spec: FeatureSpec, feat_dir: str | Path, cfg: ModelConfig, *, item_counts: Mapping[str, float] | None = None, catalog_size: int = 0
) -> TwoTowerModel:
    """Both towers from the feature spec, the head and the task of ``cfg`` (``catalog_size``:
    the catalog's item count, which ``cfg.sampled_negatives`` needs)."""
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"cfg must be a ModelConfig, got {type(cfg).__name__}")
    dims = dict(embedding_dim=cfg.embedding_dim, hidden_units=cfg.hidden_units, output_dim=cfg.output_dim, oov_buckets=cfg.oov_buckets)
    user = Tower.from_spec(spec, feat_dir, "user", **dims)
    item = Tower.from_spec(spec, feat_dir, "item", **dims)
    head = ScoringHead(cfg.head, cfg.temperature if cfg.head == "cosine" else 1.0, name="head")
    if cfg.loss == "bce":
        task: keras.layers.Layer = BinaryTask(label=spec.label, weight=spec.weight, name="task")
    elif cfg.loss == "softmax":
        task = InBatchSoftmaxTask(
            label=spec.label, weight=spec.weight, item_key=item_id_column(spec), item_counts=item_counts,
            sampled_negatives=cfg.sampled_negatives, catalog_size=catalog_size, name="task",
        )
    else:
        task = HybridTask(
            label=spec.label, weight=spec.weight, item_key=item_id_column(spec), item_counts=item_counts,
            softmax_weight=cfg.hybrid_weight, separate_head=cfg.softmax_head == "separate",
            sampled_negatives=cfg.sampled_negatives, catalog_size=catalog_size, name="task",
        )
    retrieval = None
    if cfg.loss == "hybrid" and cfg.softmax_head == "separate":
        retrieval = RetrievalHead(cfg.output_dim, cfg.softmax_temperature, name="retrieval_head")
    model = TwoTowerModel(user, item, head, task, retrieval, name="two_tower")
    model.build()
    return model
