"""The retrieval prior: what full-catalog retrieval adds to the model's score (no TensorFlow).

A BCE model learns P(engaged | shown), which carries no popularity; retrieving from the whole
catalog needs it back. With ``model.retrieval_prior = "log_count"`` each item's candidate
vector gets one extra dimension, ``prior_weight * log(1 + train count)`` (``item_prior``,
``with_item_prior``; an item without a train count gets 0), and each user's query vector one
extra dimension of 1.0 (the exported user tower's ``retrieval_query`` signature, ``export.py``),
so that

    dot(query + [1], candidate + [prior]) = model score + prior

and an inner-product index over ``item_embeddings.parquet`` serves the sum unchanged. The
towers themselves, and so every impression score (``predict``, the evaluator's AUC and the
other seed metrics), are untouched: the prior is for retrieval only.

``predict.write_item_embeddings`` writes the item side; ``evaluate.catalog_diagnostics`` reads
it back and queries it with the user tower's retrieval signature. Which prior a model folder's item embeddings carry is its
``resolved_model_config.json`` (``model_prior``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from twotower_features.config import RETRIEVAL_PRIORS, ModelConfig

from .layout import CONFIG_FILE


@dataclass(frozen=True)
class RetrievalPrior:
    """``kind`` one of ``config.RETRIEVAL_PRIORS``; ``weight`` the item side's multiplier."""

    kind: str = "none"
    weight: float = 1.0

    @classmethod
    def of(cls, cfg: ModelConfig) -> RetrievalPrior:
        return cls(cfg.retrieval_prior, float(cfg.prior_weight))

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": self.weight}


def model_prior(model_dir: str | Path) -> RetrievalPrior:
    """The prior of a model folder's item embeddings, from its ``resolved_model_config.json``
    (none where the folder has no such file or the file no prior key: models trained before it)."""
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        return RetrievalPrior()
    d = json.loads(path.read_text())
    kind, weight = d.get("retrieval_prior", "none"), d.get("prior_weight", 1.0)
    if kind not in RETRIEVAL_PRIORS:
        raise ValueError(f"{str(path)!r}: 'retrieval_prior' must be one of {RETRIEVAL_PRIORS}, got {kind!r}")
    return RetrievalPrior(kind, float(weight))


def item_prior(item_ids: Any, counts: pd.Series | None, prior: RetrievalPrior) -> np.ndarray:
    """Per item of ``item_ids``: ``prior.weight * log1p(train count)`` (float32; 0 for an item
    without a count). ``counts``: ``items.read_item_counts``, required for ``"log_count"``."""
    if prior.kind != "log_count":
        raise ValueError(f"no item prior for retrieval_prior {prior.kind!r}")
    if counts is None:
        raise FileNotFoundError("retrieval_prior 'log_count' needs the features' item frequency file (extras['item_frequency_file'])")
    c = counts.reindex(pd.Index(np.asarray(item_ids, dtype=object))).fillna(0.0).to_numpy(np.float64)
    return (prior.weight * np.log1p(c)).astype(np.float32)


def with_item_prior(vectors: np.ndarray, prior_values: np.ndarray) -> np.ndarray:
    """``(n_items, d)`` candidate vectors with ``prior_values`` appended as column ``d``."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return np.concatenate([vectors, np.asarray(prior_values, np.float32).reshape(-1, 1)], axis=1)


def without_item_prior(vectors: np.ndarray, prior: RetrievalPrior) -> np.ndarray:
    """The item tower's own part of stored candidate vectors (the prior column dropped)."""
    return np.asarray(vectors)[:, :-1] if prior.active else np.asarray(vectors)
