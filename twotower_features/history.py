"""Stage 6: point-in-time watch histories and their aggregations.

For every event, the positive history is the last N items the user watched with label 1, and
the negative history the last N with label 0 and `time_spent` below the item's train-window
average, both **strictly before** the event's `event_ts` (an event never sees itself nor an
event at the same instant). Order: most recent first; equal timestamps by `item_id` descending.

Each user's events are processed as one time-ordered stream (`applyInArrow` per user; the
client filter bounds a user's events). Nothing is computed per (event, history item) pair:
with the user's positives in time order and a prefix sum of their embeddings, the mean of the
last N before an event is one subtraction, cluster counts are a prefix sum of one-hot rows, and
the last k items are k gathers; `searchsorted` on the timestamps finds where "strictly before"
ends. So the aggregations cost O(d) per event whatever N is, and never need the id lists, which
are built only when `keep_lists` is on (audit; off at billion-row scale).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C

POS, NEG = "pos", "neg"
_MATRIX_CACHE: dict[str, np.ndarray] = {}


@dataclass(frozen=True)
class HistoryParams:
    n: int
    aggregations: tuple[str, ...]
    concat_k: int
    keep_lists: bool
    emb_dim: int
    n_clusters: int
    matrix_file: str | None  # .npy of item embeddings, row = item_idx; shipped with addFile

    def output_schema(self) -> T.StructType:
        f = [
            T.StructField(C.USER_ID, T.StringType()),
            T.StructField(C.ITEM_ID, T.StringType()),
            T.StructField(C.EVENT_TS, T.TimestampType()),
        ]
        for side in (POS, NEG):
            f.append(T.StructField(f"{side}_hist_len", T.IntegerType()))
            if self.keep_lists:
                f.append(T.StructField(f"{side}_history", T.ArrayType(T.StringType())))
            if "mean" in self.aggregations:
                f.append(T.StructField(f"{side}_hist_mean", T.ArrayType(T.FloatType())))
            if "concat" in self.aggregations:
                f.append(T.StructField(f"{side}_hist_concat", T.ArrayType(T.FloatType())))
                f.append(T.StructField(f"{side}_hist_concat_len", T.IntegerType()))
            if "clusters" in self.aggregations:
                f.append(T.StructField(f"{side}_hist_clusters", T.ArrayType(T.FloatType())))
        return T.StructType(f)


def mark_history_events(events: DataFrame) -> DataFrame:
    """Flag which events can enter a positive / negative history (needs label, time_spent, item average)."""
    return events.withColumn("_is_pos", F.col(C.LABEL) == 1).withColumn(
        "_is_neg",
        (F.col(C.LABEL) == 0)
        & F.col(C.ITEM_AVG_TIME_SPENT).isNotNull()
        & (F.col(C.TIME_SPENT) < F.col(C.ITEM_AVG_TIME_SPENT)),
    )


def _load_matrix(path: str) -> np.ndarray:
    m = _MATRIX_CACHE.get(path)
    if m is None:
        if not os.path.exists(path):
            from pyspark import SparkFiles

            path_local = SparkFiles.get(os.path.basename(path))
        else:
            path_local = path
        m = np.load(path_local, mmap_mode="r")
        _MATRIX_CACHE[path] = m
    return m


def _fixed_list(values: np.ndarray, width: int) -> pa.Array:
    """An Arrow list<float> column from an (m, width) float32 array without Python loops."""
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    m = values.size // width if width else 0
    offsets = pa.array(np.arange(0, (m + 1) * width, width, dtype=np.int32) if width else np.zeros(1, np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, type=pa.float32()))


def user_histories(table: pa.Table, p: HistoryParams) -> pa.Table:
    """All history features of one user's events (a pure function; Spark calls it per user)."""
    ts = table.column(C.EVENT_TS).cast(pa.int64()).to_numpy()
    items = np.asarray(table.column(C.ITEM_ID).to_pylist(), dtype=object)
    # time order, equal instants by item_id ascending: the later in this order is the more recent
    order = np.lexsort((items.astype(str), ts))
    ts, items = ts[order], items[order]
    flags = {POS: table.column("_is_pos").to_numpy(zero_copy_only=False)[order], NEG: table.column("_is_neg").to_numpy(zero_copy_only=False)[order]}
    m = len(ts)
    out: dict[str, pa.Array] = {
        C.USER_ID: pa.array(np.asarray(table.column(C.USER_ID).to_pylist(), dtype=object)[order], pa.string()),
        C.ITEM_ID: pa.array(items, pa.string()),
        C.EVENT_TS: pa.array(ts, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
    }
    need_emb = "mean" in p.aggregations or "concat" in p.aggregations
    idx = table.column("item_idx").to_numpy(zero_copy_only=False)[order] if (need_emb or "clusters" in p.aggregations) else None
    matrix = _load_matrix(p.matrix_file) if need_emb else None
    clusters = table.column(C.ITEM_CLUSTER).to_numpy(zero_copy_only=False)[order] if "clusters" in p.aggregations else None

    for side in (POS, NEG):
        sel = np.flatnonzero(flags[side])
        # number of history events strictly before each event's instant
        before = np.searchsorted(ts[sel], ts, side="left")
        length = np.minimum(before, p.n)
        start = before - length
        out[f"{side}_hist_len"] = pa.array(length.astype(np.int32))
        if p.keep_lists:
            hist_items = items[sel]
            out[f"{side}_history"] = pa.array([hist_items[s:e][::-1].tolist() for s, e in zip(start, before)], pa.list_(pa.string()))
        if need_emb:
            emb = np.asarray(matrix[idx[sel]], dtype=np.float64) if len(sel) else np.zeros((0, p.emb_dim))
            if "mean" in p.aggregations:
                csum = np.zeros((len(sel) + 1, p.emb_dim))
                np.cumsum(emb, axis=0, out=csum[1:])
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = (csum[before] - csum[start]) / length[:, None]
                mean[length == 0] = 0.0
                out[f"{side}_hist_mean"] = _fixed_list(mean, p.emb_dim)
            if "concat" in p.aggregations:
                k = p.concat_k
                cat = np.zeros((m, k, p.emb_dim), dtype=np.float32)
                for j in range(k):  # j-th most recent
                    pos = before - 1 - j
                    ok = pos >= 0
                    cat[ok, j] = emb[pos[ok]]
                out[f"{side}_hist_concat"] = _fixed_list(cat.reshape(m, k * p.emb_dim), k * p.emb_dim)
                out[f"{side}_hist_concat_len"] = pa.array(np.minimum(before, k).astype(np.int32))
        if "clusters" in p.aggregations:
            onehot = np.zeros((len(sel) + 1, p.n_clusters))
            if len(sel):
                onehot[np.arange(1, len(sel) + 1), clusters[sel]] = 1.0
            counts = np.cumsum(onehot, axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                dist = (counts[before] - counts[start]) / length[:, None]
            dist[length == 0] = 0.0
            out[f"{side}_hist_clusters"] = _fixed_list(dist, p.n_clusters)
    schema_names = [f.name for f in p.output_schema().fields]
    return pa.table({k: out[k] for k in schema_names})


def compute_histories(events: DataFrame, params: HistoryParams) -> DataFrame:
    """One row per event with its history features.

    `events` needs user_id, item_id, event_ts, label, time_spent, item_avg_time_spent and,
    for embedding aggregations, item_idx (row of the matrix file) and item_cluster.
    """
    cols = [C.USER_ID, C.ITEM_ID, C.EVENT_TS, "_is_pos", "_is_neg"]
    if params.aggregations:
        cols.append("item_idx")
    if "clusters" in params.aggregations:
        cols.append(C.ITEM_CLUSTER)
    marked = mark_history_events(events).select(*cols)
    schema = params.output_schema()
    return marked.groupBy(C.USER_ID).applyInArrow(lambda t: user_histories(t, params), schema)
