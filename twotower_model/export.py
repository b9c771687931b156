"""Saving a trained model to a model folder and loading it back (the names: ``layout.py``).

- ``save_model``: ``model.keras`` (the whole Keras model) and the two towers, each exported as
  a SavedModel whose ``serving_default`` signature maps the tower's raw feature tensors by
  column name to ``{"embedding": [batch, output_dim]}``, its half of the head included;
- ``load_model``: the Keras model back (towers, head, task);
- ``load_towers``: the two exported towers (``ExportedTowers``), which score without Keras;
  given the features folder, it refuses towers trained on other features (``provenance.py``);
- ``set_retrieval_prior``: a trained model folder's retrieval prior changed in place (the prior
  does not touch training, ``prior.py``).

Full-catalog retrieval may score other vectors than the impressions: a model with a retrieval
prior or a separate retrieval head (``model.py``) exports its user tower with a second
signature, ``layout.RETRIEVAL_SIGNATURE``: the retrieval query (with the prior's 1.0 appended),
the vector a retrieval service sends to an inner-product index over ``item_embeddings.parquet``;
with a separate head the item tower gets ``layout.CANDIDATE_SIGNATURE``, the vectors that file
holds (before the prior's column).

Each exported tower carries the provenance of its training features (``provenance.py``) as
the JSON string variable ``layout.TOWER_PROVENANCE`` (empty when saved without one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf

from twotower_features.errors import MissingFileError

from . import optimizer  # noqa: F401  registers LazyAdam, which model.keras names, for load_model
from .layout import (
    CANDIDATE_SIGNATURE,
    EMBEDDING,
    ITEM_TOWER_DIR,
    MODEL_FILE,
    RETRIEVAL_SIGNATURE,
    TOWER_PROVENANCE,
    USER_TOWER_DIR,
)
from .model import TwoTowerModel
from .prior import RetrievalPrior
from .provenance import check_provenance, features_provenance


def save_model(
    model: TwoTowerModel, model_dir: str | Path, *, provenance: Mapping[str, Any] | None = None, prior: RetrievalPrior | None = None
) -> None:
    """``model.keras`` plus the two exported towers under ``model_dir``, each carrying
    ``provenance`` (``provenance.features_provenance`` of the training features) when given; the
    towers with their retrieval signatures when ``prior`` is active or the model has a
    retrieval head (``export_tower``)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / MODEL_FILE)
    export_tower(model, "user", model_dir / USER_TOWER_DIR, provenance=provenance, prior=prior)
    export_tower(model, "item", model_dir / ITEM_TOWER_DIR, provenance=provenance)


class _TowerExport(tf.Module):
    def __init__(self, model: TwoTowerModel, side: str, provenance: Mapping[str, Any] | None, with_prior: bool = False) -> None:
        super().__init__(name=f"{side}_tower_export")
        self.tower = model.user_tower if side == "user" else model.item_tower
        self.head = model.head
        self.retrieval = model.retrieval
        self.side = side
        self.with_prior = with_prior
        text = json.dumps(dict(provenance), sort_keys=True) if provenance else ""
        setattr(self, TOWER_PROVENANCE, tf.Variable(text, trainable=False, dtype=tf.string, name=TOWER_PROVENANCE))
        self.embed = tf.function(self._embed)
        self.retrieval_query = tf.function(self._retrieval_query)
        self.retrieval_candidate = tf.function(self._retrieval_candidate)

    def _embed(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.tower(features, training=False)
        vec = self.head.query(out, training=False) if self.side == "user" else self.head.candidate(out, training=False)
        return {EMBEDDING: vec}

    def _retrieval_query(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        vec = self.retrieval.query(self.tower(features, training=False), training=False)
        if self.with_prior:
            vec = tf.concat([vec, tf.ones_like(vec[:, :1])], axis=1)  # the prior's multiplier
        return {EMBEDDING: vec}

    def _retrieval_candidate(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {EMBEDDING: self.retrieval.candidate(self.tower(features, training=False), training=False)}


def export_tower(
    model: TwoTowerModel, side: str, path: str | Path, *, provenance: Mapping[str, Any] | None = None, prior: RetrievalPrior | None = None
) -> None:
    """Save one tower (with its half of the head) as a SavedModel with a ``serving_default``
    signature: raw feature tensors by column name -> ``{"embedding": [batch, output_dim]}``,
    and ``provenance`` as its ``layout.TOWER_PROVENANCE`` string variable. The user tower of a
    model with an active ``prior`` or a retrieval head also gets ``layout.RETRIEVAL_SIGNATURE``:
    the retrieval query, with 1.0 appended for the prior; the item tower of a model with a
    retrieval head gets ``layout.CANDIDATE_SIGNATURE``."""
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    with_prior = prior is not None and prior.active
    module = _TowerExport(model, side, provenance, with_prior=with_prior)
    spec = module.tower.input_signature()
    signatures = {"serving_default": module.embed.get_concrete_function(spec)}
    separate = model.retrieval_head is not None
    if side == "user" and (with_prior or separate):
        signatures[RETRIEVAL_SIGNATURE] = module.retrieval_query.get_concrete_function(spec)
    if side == "item" and separate:
        signatures[CANDIDATE_SIGNATURE] = module.retrieval_candidate.get_concrete_function(spec)
    tf.saved_model.save(module, str(path), signatures=signatures)


def load_model(model_dir: str | Path) -> TwoTowerModel:
    """The Keras model saved by ``save_model`` (towers, head and task)."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise MissingFileError(f"no {MODEL_FILE} in {str(model_dir)!r}: run train first")
    return keras.saving.load_model(path)


class ExportedTowers:
    """The two exported towers of a model folder; ``score`` = dot of their embeddings.

    ``provenance[side]``: the training features' provenance the tower carries (None when it was
    saved without). With ``features_dir``, each tower's provenance must equal that folder's
    (``provenance.check_provenance``), else ``ProvenanceError``."""

    def __init__(self, model_dir: str | Path, features_dir: str | Path | None = None) -> None:
        model_dir = Path(model_dir)
        self._sigs = {}
        self.feature_names: dict[str, list[str]] = {}
        self.provenance: dict[str, dict[str, Any] | None] = {}
        expected = features_provenance(features_dir) if features_dir is not None else None
        for side, sub in (("user", USER_TOWER_DIR), ("item", ITEM_TOWER_DIR)):
            path = model_dir / sub
            if not path.is_dir():
                raise MissingFileError(f"no exported {side} tower at {str(path)!r}: run train first")
            loaded = tf.saved_model.load(str(path))
            var = getattr(loaded, TOWER_PROVENANCE, None)
            text = var.numpy().decode("utf-8") if var is not None else ""
            self.provenance[side] = json.loads(text) if text else None
            if expected is not None:
                check_provenance(self.provenance[side], expected, model_dir=path, feat_dir=features_dir, what=f"exported {side} tower")
            sig = loaded.signatures["serving_default"]
            self._sigs[side] = sig
            self.feature_names[side] = sorted(sig.structured_input_signature[1])
            for extra, name in (("query", RETRIEVAL_SIGNATURE), ("candidate", CANDIDATE_SIGNATURE)):
                if name in loaded.signatures:
                    self._sigs[extra] = loaded.signatures[name]

    def embed(self, side: str, features: Mapping[str, Any]) -> tf.Tensor:
        """``side``: ``"user"`` or ``"item"``, the vectors whose dot is the impression score;
        ``"query"`` and ``"candidate"``, the full-catalog retrieval vectors (the query with the
        prior's 1.0 when the model has a prior): the extra signatures, else the same as user, item."""
        if side not in ("user", "item", "query", "candidate"):
            raise ValueError(f"side must be 'user', 'item', 'query' or 'candidate', got {side!r}")
        tower = "item" if side in ("item", "candidate") else "user"
        sig = self._sigs.get(side, self._sigs[tower])
        names = self.feature_names[tower]
        missing = [n for n in names if n not in features]
        if missing:
            raise KeyError(f"the {tower} tower needs feature(s) {missing}")
        return sig(**{n: tf.convert_to_tensor(features[n]) for n in names})[EMBEDDING]

    def score(self, features: Mapping[str, Any]) -> tf.Tensor:
        return tf.reduce_sum(self.embed("user", features) * self.embed("item", features), axis=-1)


def load_towers(model_dir: str | Path, features_dir: str | Path | None = None) -> ExportedTowers:
    """The two exported towers of ``model_dir``; given ``features_dir``, refused (``ProvenanceError``)
    unless they were trained on that features folder."""
    return ExportedTowers(model_dir, features_dir)


def set_retrieval_prior(model_dir: str | Path, prior: RetrievalPrior) -> None:
    """Re-export ``model_dir``'s user tower for ``prior`` (with or without the retrieval
    signature) from its ``model.keras``, keeping the tower's provenance. The folder's old user
    tower is removed first, so files hard-linked from another folder are never written through.
    The caller rewrites the item embeddings and the resolved config (``train.set_retrieval_prior``)."""
    import shutil

    model_dir = Path(model_dir)
    old = load_towers(model_dir)
    model = load_model(model_dir)
    shutil.rmtree(model_dir / USER_TOWER_DIR)
    export_tower(model, "user", model_dir / USER_TOWER_DIR, provenance=old.provenance["user"], prior=prior)
