"""What is known per catalog item, read from the features and model folders (no TensorFlow).

- ``read_item_counts``: the train-window interaction count of each item (``extras
  ['item_frequency_file']`` of the feature spec): the trainer's logQ correction and the
  evaluator's popularity reference;
- ``items_artifact``: content embedding, cluster and creator of each item, from the features'
  ``extras['items_file']``; without an ``item_cluster`` column, clusters from a KMeans fitted
  on the content embeddings (the evaluator's diagnostics, the report's embedding plot);
- ``read_item_embeddings`` / ``item_embeddings_table``: the model folder's
  ``item_embeddings.parquet`` (the item tower's output per catalog item).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twotower_features import columns as C
from twotower_features import layout as FL
from twotower_features.config import EmbeddingConfig, ExperimentConfig
from twotower_features.spec import FeatureSpec

from .layout import EMBEDDING, ITEM_EMBEDDINGS_FILE

COUNT = "count"
KMEANS_FIT_SAMPLE = 50_000


# ---- train-window counts --------------------------------------------------------------------
def read_item_counts(features_dir: str | Path, spec: FeatureSpec) -> pd.Series | None:
    """``item_id -> train-window interaction count`` (float, in file order) from the CSV named by
    ``spec.extras['item_frequency_file']`` (header ``item_id,count``), or None when the spec
    names no such file. A named file that is missing or malformed is an error naming it."""
    rel = spec.extras.get("item_frequency_file")
    if rel is None:
        return None
    path = Path(features_dir) / rel
    if not path.is_file():
        raise FileNotFoundError(f"feature spec extras['item_frequency_file'] = {rel!r} does not exist at {str(path)!r}")
    df = pd.read_csv(path, dtype={C.ITEM_ID: str})
    if list(df.columns) != [C.ITEM_ID, COUNT]:
        raise ValueError(f"item frequency file {str(path)!r} must have header '{C.ITEM_ID},{COUNT}', got {list(df.columns)}")
    counts = pd.to_numeric(df[COUNT], errors="coerce")
    bad = df[C.ITEM_ID][counts.isna() | (counts < 0) | df[C.ITEM_ID].isna()]
    if len(bad):
        raise ValueError(f"item frequency file {str(path)!r}: '{COUNT}' must be a number >= 0 and '{C.ITEM_ID}' non-empty; bad rows for items {bad.head(5).tolist()}")
    return pd.Series(counts.astype(float).to_numpy(), index=pd.Index(df[C.ITEM_ID], name=C.ITEM_ID), name=COUNT)


# ---- content, clusters, creators ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ItemsArtifact:
    """Per item asked for (aligned with its ``item_ids``), from the features' items artifact;
    None where the artifact or the column is absent.

    ``content``: ``(n_items, dim)`` float32, the ``content_column`` (``<item_source>_pca``), 0
    for an item missing from the artifact (``items_missing_content`` counts those). ``clusters``
    and ``creators``: one label per item; an item missing from the artifact gets a label of its
    own (``__missing__<item_id>``), which agrees with nothing. ``kmeans_k``: None when the
    clusters are the artifact's ``item_cluster`` column, else the k of the KMeans fitted here.
    """

    items_file: str | None = None
    content: np.ndarray | None = None
    content_column: str | None = None
    clusters: np.ndarray | None = None
    kmeans_k: int | None = None
    creators: np.ndarray | None = None
    items_missing_content: int = 0


def items_artifact(
    features_dir: str | Path, item_ids: Any, *, spec: FeatureSpec | None = None, seed: int = 0
) -> ItemsArtifact:
    """Content embedding, cluster and creator of each of ``item_ids`` from the features folder's
    ``extras['items_file']`` (an empty ``ItemsArtifact`` where the spec names none or it is gone).

    The content column is ``<embeddings.item_source>_pca`` of the folder's resolved config, else
    the first ``*_pca`` column. Without an ``item_cluster`` column the clusters are a KMeans
    (k = ``embeddings.kmeans_k``, at most the number of known items; default 18 without a
    resolved config) fitted here on the known items' content, on a seeded sample of at most
    ``KMEANS_FIT_SAMPLE`` of them, ``n_init=3``, ``random_state=seed``; every known item is
    then labelled by ``predict``.
    """
    spec = spec or FeatureSpec.load(features_dir)
    item_ids = np.asarray(item_ids, dtype=object)
    rel = spec.extras.get("items_file")
    if not rel or not Path(features_dir, rel).is_file():
        return ItemsArtifact()
    table = pq.read_table(Path(features_dir, rel))
    frame_ids = pd.Index(table.column(C.ITEM_ID).to_pylist())
    pos = frame_ids.get_indexer(item_ids)
    known = pos >= 0
    cfg = resolved_config(features_dir)
    pca_cols = [n for n in table.column_names if n.endswith("_pca")]
    preferred = f"{cfg.embeddings.item_source}_pca" if cfg is not None else None
    col = preferred if preferred in pca_cols else (pca_cols[0] if pca_cols else None)
    content = None
    if col is not None:
        arr = table.column(col).combine_chunks()
        mat = arr.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(table.num_rows, -1)
        content = np.zeros((len(item_ids), mat.shape[1]), dtype=np.float32)  # a missing item: cosine 0
        content[known] = mat[pos[known]]
    # an item missing from the artifact gets a label of its own, which agrees with nothing
    unknown_labels = np.array([f"__missing__{i}" for i in item_ids[~known]], dtype=object)
    creators = None
    if C.CREATOR_ID in table.column_names:
        creators = np.empty(len(item_ids), dtype=object)
        creators[known] = np.asarray(table.column(C.CREATOR_ID).to_pylist(), dtype=object)[pos[known]]
        creators[~known] = unknown_labels
    clusters, k = None, None
    if C.ITEM_CLUSTER in table.column_names:
        clusters = np.empty(len(item_ids), dtype=object)
        clusters[known] = table.column(C.ITEM_CLUSTER).to_numpy()[pos[known]]
        clusters[~known] = unknown_labels
    elif content is not None and known.sum() >= 2:
        from sklearn.cluster import KMeans

        kmeans_k = (cfg.embeddings if cfg is not None else EmbeddingConfig()).kmeans_k
        k = int(min(kmeans_k, known.sum()))
        content_known = content[known]
        rng = np.random.default_rng(seed)
        fit = content_known
        if len(fit) > KMEANS_FIT_SAMPLE:
            fit = fit[rng.choice(len(fit), KMEANS_FIT_SAMPLE, replace=False)]
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit)
        clusters = np.empty(len(item_ids), dtype=object)
        clusters[known] = km.predict(content_known)
        clusters[~known] = unknown_labels
    return ItemsArtifact(
        items_file=rel, content=content, content_column=col, clusters=clusters,
        kmeans_k=k, creators=creators, items_missing_content=int((~known).sum()),
    )


def resolved_config(features_dir: str | Path) -> ExperimentConfig | None:
    """The features folder's resolved config, or None where the folder has none."""
    path = Path(features_dir) / FL.RESOLVED_CONFIG
    return ExperimentConfig.from_dict(json.loads(path.read_text())) if path.is_file() else None


# ---- the model's item embeddings ------------------------------------------------------------
def vector_column(vectors: np.ndarray) -> pa.ListArray:
    """A ``(rows, dim)`` matrix as an Arrow list<float> column, one list per row."""
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    return pa.ListArray.from_arrays(pa.array(np.arange(vectors.shape[0] + 1, dtype=np.int32) * dim), pa.array(vectors.reshape(-1), pa.float32()))


def item_embeddings_table(item_ids: np.ndarray, vectors: np.ndarray) -> pa.Table:
    """``item_embeddings.parquet`` as an Arrow table: ``item_id`` (string) and ``embedding``
    (list<float>), one row per item; ``vectors`` is ``(n_items, dim)``."""
    return pa.table({C.ITEM_ID: pa.array(np.asarray(item_ids, dtype=object).tolist(), pa.string()), EMBEDDING: vector_column(vectors)})


def read_item_embeddings(model_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, ``(n_items, dim)`` float32 embeddings) from ``item_embeddings.parquet``."""
    path = Path(model_dir) / ITEM_EMBEDDINGS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {ITEM_EMBEDDINGS_FILE} in {str(model_dir)!r}: run train first")
    table = pq.read_table(path, columns=[C.ITEM_ID, EMBEDDING])
    ids = np.asarray(table.column(C.ITEM_ID).to_pylist(), dtype=object)
    emb = table.column(EMBEDDING).combine_chunks()
    values = emb.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(ids) == 0:
        raise ValueError(f"{str(path)!r} has no items")
    if pd.Index(ids).has_duplicates:
        raise ValueError(f"{str(path)!r} has duplicate item ids")
    return ids, values.reshape(len(ids), -1)
