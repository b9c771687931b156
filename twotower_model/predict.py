"""Scoring with a trained model: the logit of every record of a split (``predict``) and the
retrieval candidate vector of every catalog item (``iter_item_embeddings``,
``write_item_embeddings``; the ranking head's candidate unless the model has a retrieval head).

Each takes a model in memory (``TwoTowerModel``) or a model folder, scored with its exported
towers (``export.load_towers``); both give the same numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import tensorflow as tf

from twotower_features import columns as C
from twotower_features.io import write_parquet_atomic
from twotower_features.spec import FeatureSpec

from .data import CATALOG, item_id_column, make_dataset, split_columns
from .export import load_towers
from .items import item_embeddings_table, read_item_counts
from .metrics import SCORE
from .model import TwoTowerModel
from .prior import RetrievalPrior, item_prior, model_prior, with_item_prior

PREDICT_BATCH = 4096


def _scorer(model_or_dir: TwoTowerModel | str | Path) -> tuple[Callable[[Mapping[str, Any]], tf.Tensor], list[str], list[str]]:
    """(score function, user features, item features) of an in-memory model or a model folder."""
    if isinstance(model_or_dir, TwoTowerModel):
        model = model_or_dir
        fn = tf.function(lambda f: model(f, training=False)[SCORE], reduce_retracing=True)
        return fn, model.user_tower.feature_names, model.item_tower.feature_names
    if isinstance(model_or_dir, (str, Path)):
        towers = load_towers(model_or_dir)
        return towers.score, towers.feature_names["user"], towers.feature_names["item"]
    raise TypeError(f"model_dir_or_model must be a TwoTowerModel or a model folder path, got {type(model_or_dir).__name__}")


def _item_embedder(model_or_dir: TwoTowerModel | str | Path) -> tuple[Callable[[Mapping[str, Any]], tf.Tensor], list[str]]:
    """(retrieval candidate function, item features) of an in-memory model or a model folder."""
    if isinstance(model_or_dir, TwoTowerModel):
        model = model_or_dir
        fn = tf.function(
            lambda f: model.retrieval.candidate(model.item_tower(f, training=False), training=False), reduce_retracing=True
        )
        return fn, model.item_tower.feature_names
    if isinstance(model_or_dir, (str, Path)):
        towers = load_towers(model_or_dir)
        return (lambda f: towers.embed("candidate", f)), towers.feature_names["item"]
    raise TypeError(f"model_dir_or_model must be a TwoTowerModel or a model folder path, got {type(model_or_dir).__name__}")


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") for v in values], dtype=object)


def predict(
    model_dir_or_model: TwoTowerModel | str | Path,
    feat_dir: str | Path,
    split: str = "validation",
    *,
    batch_size: int = PREDICT_BATCH,
) -> pd.DataFrame:
    """Score every record of ``split``: columns user_id, item_id, event_ts, label, weight, score
    (the logit), in record order. A path scores with the exported towers, a model in memory."""
    spec = FeatureSpec.load(feat_dir)
    score_fn, user_feats, item_feats = _scorer(model_dir_or_model)
    names = {c.name for c in spec.columns}
    keep = [n for n in (C.USER_ID, C.ITEM_ID, C.EVENT_TS) if n in names] + [spec.label, spec.weight]
    keep = list(dict.fromkeys(keep))
    columns = list(dict.fromkeys([*keep, *user_feats, *item_feats]))
    ds = make_dataset(feat_dir, split, spec, batch_size=batch_size, shuffle=False, seed=0, columns=columns)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in [*keep, SCORE]}
    for batch in ds:
        parts[SCORE].append(np.asarray(score_fn(batch), dtype=np.float32))
        for n in keep:
            v = batch[n].numpy()
            parts[n].append(_decode(v) if v.dtype == object else v)
    out = {n: (np.concatenate(p) if p else np.array([])) for n, p in parts.items()}
    return pd.DataFrame(out)


def iter_item_embeddings(
    model_dir_or_model: TwoTowerModel | str | Path, feat_dir: str | Path, *, spec: FeatureSpec | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (item ids, candidate embeddings) over the catalog split."""
    spec = spec or FeatureSpec.load(feat_dir)
    embed, item_feats = _item_embedder(model_dir_or_model)
    key = item_id_column(spec)
    columns = list(dict.fromkeys([key, *item_feats]))
    available = set(split_columns(spec, CATALOG))
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"catalog records lack item tower column(s) {missing}")
    for batch in make_dataset(feat_dir, CATALOG, spec, batch_size=PREDICT_BATCH, shuffle=False, seed=0, columns=columns):
        yield _decode(batch[key].numpy()), np.asarray(embed(batch), dtype=np.float32)


def write_item_embeddings(
    model_dir_or_model: TwoTowerModel | str | Path,
    feat_dir: str | Path,
    out_path: str | Path,
    *,
    spec: FeatureSpec | None = None,
    prior: RetrievalPrior | None = None,
) -> int:
    """The candidate embedding of every catalog item, written to ``out_path`` as
    ``item_embeddings.parquet`` (``items.item_embeddings_table``); returns the row count.

    With an active ``prior`` (default: a model folder's own, ``prior.model_prior``; none for a
    model in memory) each vector gets the item's retrieval prior as one more dimension
    (``prior.py``), from the features' train-window counts."""
    spec = spec or FeatureSpec.load(feat_dir)
    if prior is None:
        prior = model_prior(model_dir_or_model) if isinstance(model_dir_or_model, (str, Path)) else RetrievalPrior()
    ids, vecs = [], []
    for i, v in iter_item_embeddings(model_dir_or_model, feat_dir, spec=spec):
        ids.append(i)
        vecs.append(v)
    ids_arr = np.concatenate(ids) if ids else np.array([], dtype=object)
    mat = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    if prior.active and len(ids_arr):
        mat = with_item_prior(mat, item_prior(ids_arr, read_item_counts(feat_dir, spec), prior))
    write_parquet_atomic(out_path, item_embeddings_table(ids_arr, mat))
    return len(ids_arr)
