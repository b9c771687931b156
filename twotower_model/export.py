"""Saving a trained model to a model folder and loading it back (the names: ``layout.py``).

- ``save_model``: ``model.keras`` (the whole Keras model) and the two towers, each exported as
  a SavedModel whose ``serving_default`` signature maps the tower's raw feature tensors by
  column name to ``{"embedding": [batch, output_dim]}``, its half of the head included;
- ``load_model``: the Keras model back (towers, head, task);
- ``load_towers``: the two exported towers (``ExportedTowers``), which score without Keras.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import keras
import tensorflow as tf

from . import optimizer  # noqa: F401  registers LazyAdam, which model.keras names, for load_model
from .layout import EMBEDDING, ITEM_TOWER_DIR, MODEL_FILE, USER_TOWER_DIR
from .model import TwoTowerModel


def save_model(model: TwoTowerModel, model_dir: str | Path) -> None:
    """``model.keras`` plus the two exported towers under ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / MODEL_FILE)
    export_tower(model, "user", model_dir / USER_TOWER_DIR)
    export_tower(model, "item", model_dir / ITEM_TOWER_DIR)


class _TowerExport(tf.Module):
    def __init__(self, model: TwoTowerModel, side: str) -> None:
        super().__init__(name=f"{side}_tower_export")
        self.tower = model.user_tower if side == "user" else model.item_tower
        self.head = model.head
        self.side = side
        self.embed = tf.function(self._embed)

    def _embed(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.tower(features, training=False)
        vec = self.head.query(out, training=False) if self.side == "user" else self.head.candidate(out, training=False)
        return {EMBEDDING: vec}


def export_tower(model: TwoTowerModel, side: str, path: str | Path) -> None:
    """Save one tower (with its half of the head) as a SavedModel with a ``serving_default``
    signature: raw feature tensors by column name -> ``{"embedding": [batch, output_dim]}``."""
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    module = _TowerExport(model, side)
    signature = module.embed.get_concrete_function(module.tower.input_signature())
    tf.saved_model.save(module, str(path), signatures={"serving_default": signature})


def load_model(model_dir: str | Path) -> TwoTowerModel:
    """The Keras model saved by ``save_model`` (towers, head and task)."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {str(model_dir)!r}: run train first")
    return keras.saving.load_model(path)


class ExportedTowers:
    """The two exported towers of a model folder; ``score`` = dot of their embeddings."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self._sigs = {}
        self.feature_names: dict[str, list[str]] = {}
        for side, sub in (("user", USER_TOWER_DIR), ("item", ITEM_TOWER_DIR)):
            path = model_dir / sub
            if not path.is_dir():
                raise FileNotFoundError(f"no exported {side} tower at {str(path)!r}: run train first")
            sig = tf.saved_model.load(str(path)).signatures["serving_default"]
            self._sigs[side] = sig
            self.feature_names[side] = sorted(sig.structured_input_signature[1])

    def embed(self, side: str, features: Mapping[str, Any]) -> tf.Tensor:
        if side not in self._sigs:
            raise ValueError(f"side must be 'user' or 'item', got {side!r}")
        missing = [n for n in self.feature_names[side] if n not in features]
        if missing:
            raise KeyError(f"the {side} tower needs feature(s) {missing}")
        return self._sigs[side](**{n: tf.convert_to_tensor(features[n]) for n in self.feature_names[side]})[EMBEDDING]

    def score(self, features: Mapping[str, Any]) -> tf.Tensor:
        return tf.reduce_sum(self.embed("user", features) * self.embed("item", features), axis=-1)


def load_towers(model_dir: str | Path) -> ExportedTowers:
    """The two exported towers of ``model_dir``."""
    return ExportedTowers(model_dir)
