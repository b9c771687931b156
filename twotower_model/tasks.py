"""The tasks: what the two-tower model is trained to minimise, given a batch and its outputs.

As in tensorflow/recommenders, the task holds the loss: ``TwoTowerModel.compute_loss`` hands
it the batch (``features``, which holds the label, weight and item id columns) and the model's
outputs (``outputs``: ``QUERY``, ``CANDIDATE`` and ``SCORE``, the logit ``dot(query, candidate)``).

- ``BinaryTask``: sample-weighted binary cross-entropy on the logit, the weighted mean
  ``sum(w * bce) / sum(w)``;
- ``InBatchSoftmaxTask``: in-batch sampled softmax over the batch's items with the positives as
  queries and the logQ correction of Yi et al., RecSys 2019;
- ``HybridTask``: ``BinaryTask + softmax_weight * InBatchSoftmaxTask`` on the same batch: the
  BCE ranks the impressions, the softmax term teaches the embeddings to retrieve from the catalog;
  with ``separate_head`` the softmax term scores the retrieval head's vectors
  (``RETRIEVAL_QUERY``, ``RETRIEVAL_CANDIDATE``) instead of the ranking head's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf
from keras import ops

from .data import NEGATIVE
from .metrics import SCORE

# the model's outputs besides SCORE (see model.py); the retrieval pair only with a retrieval head
QUERY = "query"
CANDIDATE = "candidate"
RETRIEVAL_QUERY = "retrieval_query"
RETRIEVAL_CANDIDATE = "retrieval_candidate"
# the candidate vectors of the catalog items sampled as extra negatives (training batches only)
NEGATIVE_CANDIDATE = "negative_candidate"
# the softmax task's item counts in a saved model.keras: "<item id as JSON>\t<count>" per line
ITEM_COUNTS_ASSET = "item_counts.tsv"


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
    with the queries' sample weights. A batch without a positive has loss 0. ``query_key`` and
    ``candidate_key`` name the outputs it scores.

    Mixed negative sampling (Yang et al., WWW 2020): with ``sampled_negatives`` = M > 0 and a
    batch that carries them (the ``NEGATIVE_CANDIDATE`` output, ids in ``data.NEGATIVE`` +
    ``item_key``), M items drawn uniformly from a catalog of ``catalog_size`` = N items join
    every query's candidates. Each candidate's logit is then corrected by the log of its
    expected count in the pooled sample, ``log(B q_item + M / N)`` (B the batch size), and a
    sampled item equal to the query's positive is masked like an in-batch accidental hit.
    """

    def __init__(
        self,
        label: str = "label",
        weight: str | None = "weight",
        item_key: str = "item_id",
        item_counts: Mapping[str, float] | None = None,
        remove_accidental_hits: bool = True,
        query_key: str = QUERY,
        candidate_key: str = CANDIDATE,
        sampled_negatives: int = 0,
        catalog_size: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.label = label
        self.weight = weight
        self.item_key = item_key
        self.query_key, self.candidate_key = query_key, candidate_key
        self.sampled_negatives, self.catalog_size = int(sampled_negatives), int(catalog_size)
        if self.sampled_negatives < 0 or (self.sampled_negatives and self.catalog_size < 1):
            raise ValueError(f"sampled_negatives must be >= 0 and needs catalog_size >= 1, got {sampled_negatives!r}, {catalog_size!r}")
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self._set_item_counts(item_counts)

    def _set_item_counts(self, item_counts: Mapping[str, float] | None) -> None:
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

    # the counts travel as a file of the model.keras archive, not in its config: one line per item
    def save_assets(self, dir_path: str) -> None:
        if self.item_counts:
            with open(Path(dir_path) / ITEM_COUNTS_ASSET, "w", encoding="utf-8") as f:
                f.writelines(f"{json.dumps(k)}\t{v!r}\n" for k, v in self.item_counts.items())

    def load_assets(self, dir_path: str) -> None:
        path = Path(dir_path) / ITEM_COUNTS_ASSET
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                self._set_item_counts({json.loads(k): float(v) for k, v in (line.rstrip("\n").split("\t") for line in f)})

    @property
    def logq_correction(self) -> bool:
        return self._log_q is not None

    def call(self, features: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        query, candidate = outputs[self.query_key], outputs[self.candidate_key]
        item_ids = ops.reshape(features[self.item_key], (-1,))
        labels = ops.cast(ops.reshape(features[self.label], (-1,)), query.dtype)
        positive = labels > 0
        logits = ops.matmul(query, ops.transpose(candidate))  # [queries=batch, candidates=batch]
        n = ops.shape(logits)[0]
        eye = ops.eye(n, dtype="bool")
        targets = ops.cast(eye, logits.dtype)
        sampled = self.sampled_negatives > 0 and NEGATIVE_CANDIDATE in outputs
        if sampled:
            neg_ids = ops.reshape(features[NEGATIVE + self.item_key], (-1,))
            neg_logits = ops.matmul(query, ops.transpose(outputs[NEGATIVE_CANDIDATE]))  # [batch, M]
        if self._log_q is not None and sampled:
            batch, share = ops.cast(n, logits.dtype), self.sampled_negatives / self.catalog_size
            logits = logits - ops.log(batch * ops.exp(self._log_q.lookup(item_ids)) + share)[None, :]
            neg_logits = neg_logits - ops.log(batch * ops.exp(self._log_q.lookup(neg_ids)) + share)[None, :]
        elif self._log_q is not None:
            logits = logits - self._log_q.lookup(item_ids)[None, :]
        if self.remove_accidental_hits:
            same = ops.equal(item_ids[:, None], item_ids[None, :])
            logits = ops.where(ops.logical_and(same, ops.logical_not(eye)), -1e9, logits)
            if sampled:
                neg_logits = ops.where(ops.equal(item_ids[:, None], neg_ids[None, :]), -1e9, neg_logits)
        if sampled:
            logits = ops.concatenate([logits, neg_logits], axis=1)
            targets = ops.concatenate([targets, ops.zeros_like(neg_logits)], axis=1)
        per_row = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
        w = _weights(features, self.weight, labels) * ops.cast(positive, logits.dtype)
        return tf.math.divide_no_nan(ops.sum(per_row * w), ops.sum(w))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "label": self.label,
            "weight": self.weight,
            "item_key": self.item_key,
            "remove_accidental_hits": self.remove_accidental_hits,
            "query_key": self.query_key,
            "candidate_key": self.candidate_key,
            "sampled_negatives": self.sampled_negatives,
            "catalog_size": self.catalog_size,
        }


@keras.saving.register_keras_serializable(package="twotower")
class HybridTask(keras.layers.Layer):
    """``BinaryTask`` on every row plus ``softmax_weight`` times ``InBatchSoftmaxTask`` on the
    batch's positives (logQ correction from ``item_counts``, accidental hits masked); both
    terms are those classes' own losses, with the same label and weight columns. With
    ``separate_head`` the softmax term scores the retrieval head's outputs."""

    def __init__(
        self,
        label: str = "label",
        weight: str | None = "weight",
        item_key: str = "item_id",
        item_counts: Mapping[str, float] | None = None,
        remove_accidental_hits: bool = True,
        softmax_weight: float = 0.3,
        separate_head: bool = False,
        sampled_negatives: int = 0,
        catalog_size: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        softmax_weight = float(softmax_weight)
        if not (softmax_weight >= 0 and math.isfinite(softmax_weight)):
            raise ValueError(f"softmax_weight must be a finite number >= 0, got {softmax_weight!r}")
        self.softmax_weight = softmax_weight
        self.separate_head = bool(separate_head)
        keys = (RETRIEVAL_QUERY, RETRIEVAL_CANDIDATE) if self.separate_head else (QUERY, CANDIDATE)
        self.binary = BinaryTask(label=label, weight=weight, name="binary")
        self.softmax = InBatchSoftmaxTask(
            label=label, weight=weight, item_key=item_key, item_counts=item_counts,
            remove_accidental_hits=remove_accidental_hits, query_key=keys[0], candidate_key=keys[1],
            sampled_negatives=sampled_negatives, catalog_size=catalog_size, name="softmax",
        )

    def build(self, *args: Any, **kwargs: Any) -> None:
        """No weights anywhere: marks the two stateless tasks built too (else a reload warns)."""
        self.binary.built = self.softmax.built = True
        self.built = True

    @property
    def item_key(self) -> str:
        return self.softmax.item_key

    @property
    def logq_correction(self) -> bool:
        return self.softmax.logq_correction

    def call(self, features: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        return self.binary(features, outputs) + self.softmax_weight * self.softmax(features, outputs)

    def get_config(self) -> dict[str, Any]:
        sm = self.softmax
        return {
            **super().get_config(),
            "label": sm.label,
            "weight": sm.weight,
            "item_key": sm.item_key,
            "remove_accidental_hits": sm.remove_accidental_hits,
            "softmax_weight": self.softmax_weight,
            "separate_head": self.separate_head,
            "sampled_negatives": sm.sampled_negatives,
            "catalog_size": sm.catalog_size,
        }


def _weights(features: Mapping[str, Any], name: str | None, labels: Any) -> Any:
    """The batch's sample weights as a float vector like ``labels`` (ones when ``name`` is None)."""
    if name is None:
        return ops.ones_like(labels)
    return ops.cast(ops.reshape(features[name], (-1,)), labels.dtype)
