"""Stage 6: point-in-time watch histories and their aggregations.

For every event, the positive history is the last N items the user watched with label 1, and
the negative history the last N with label 0 and `time_spent` below the item's train-window
average, both **strictly before** the event's `event_ts` (an event never sees itself nor an
event at the same instant). Order: most recent first; equal timestamps by `item_id` descending.

Events are hash-partitioned by user and sorted by (user, event_ts, item_id); each Python worker
streams its partition through `user_histories` in chunks of whole users (`mapInArrow`), so the
Python call overhead is paid per chunk of ~100k rows, not per user (the client filter bounds a
user's events, so a chunk is bounded too). Nothing is computed per (event, history item) pair:
with the chunk's history events in (user, time) order and a prefix sum of their embeddings, the
mean of the last N before an event is one subtraction, cluster counts are a prefix sum of
one-hot rows, and the last k items are k gathers; a running count of history events, read at
the first row of the event's (user, instant) and of its user, says where "strictly before" ends
and where the user's history starts. So the aggregations cost O(d) per event whatever N is,
and never need the id lists, which are built only when `keep_lists` is on (audit; off at
billion-row scale). With `output_rows` (the examples stage: every event of a sampled user
enters the histories, only the sampled examples come out) the windows and gathers are taken at
the returned rows only; the prefix sums still run over every history event.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C

POS, NEG = "pos", "neg"
HISTORY_LISTS = {POS: C.POS_HISTORY, NEG: C.NEG_HISTORY}
CHUNK_ROWS = 100_000  # rows per call of user_histories (whole users; a chunk costs ~50 MB at N=100)
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
    # columns of the events returned unchanged beside the histories
    carry: tuple[T.StructField, ...] = ()
    # a boolean column of the events: only its true rows are returned (all events still form histories)
    output_rows: str | None = None

    def output_schema(self) -> T.StructType:
        f = [
            T.StructField(C.USER_ID, T.StringType()),
            T.StructField(C.ITEM_ID, T.StringType()),
            T.StructField(C.EVENT_TS, T.TimestampType()),
            *self.carry,
        ]
        for side in (POS, NEG):
            f.append(T.StructField(f"{side}_hist_len", T.IntegerType()))
            if self.keep_lists:
                f.append(T.StructField(HISTORY_LISTS[side], T.ArrayType(T.StringType())))
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


def _in_order(table: pa.Table) -> bool:
    """Whether ``table``'s rows are sorted by (user_id, event_ts, item_id), as Arrow's
    ``sort_by`` orders them (strings by their bytes, as Spark does)."""
    m = table.num_rows
    if m < 2:
        return True
    ties = None  # rows whose keys so far equal the previous row's
    for name in (C.USER_ID, C.EVENT_TS, C.ITEM_ID):
        col = table.column(name)
        if col.null_count:
            return False
        a, b = col.slice(0, m - 1), col.slice(1)
        down = pc.less(b, a)
        if ties is not None:
            down = pc.and_(down, ties)
        if pc.any(down).as_py():
            return False
        ties = pc.equal(b, a) if ties is None else pc.and_(ties, pc.equal(b, a))
    return True


def user_histories(table: pa.Table, p: HistoryParams) -> pa.Table:
    """All history features of the events in ``table``: one user's or many users', in any order
    (a pure function; Spark calls it on chunks of whole users).

    The rows are sorted by (user, instant, item_id) (unless they come so, as from Spark); a
    running count of history events, read at the first row of each row's (user, instant) and
    of its user, then makes "strictly before, same user" two gathers over the whole chunk, and
    prefix sums over the chunk give every user's window sums (a window never crosses its user's
    first history event)."""
    if not _in_order(table):  # Spark's partitions come sorted so (sortWithinPartitions)
        table = table.sort_by([(C.USER_ID, "ascending"), (C.EVENT_TS, "ascending"), (C.ITEM_ID, "ascending")])
    table = table.combine_chunks()
    m = table.num_rows
    ts = table.column(C.EVENT_TS).cast(pa.int64()).to_numpy()
    users = table.column(C.USER_ID)
    new_user = np.ones(m, dtype=bool)
    if m > 1:
        new_user[1:] = pc.not_equal(users.slice(1), users.slice(0, m - 1)).to_numpy(zero_copy_only=False)
    new_instant = new_user.copy()
    new_instant[1:] |= ts[1:] != ts[:-1]
    # each row's first row of its user and of its (user, instant): "strictly before, same user"
    # is then a count of flagged rows before those two rows (no search)
    user_first = np.maximum.accumulate(np.where(new_user, np.arange(m), 0))
    instant_first = np.maximum.accumulate(np.where(new_instant, np.arange(m), 0))
    # the rows returned (all rows still enter the histories): histories are taken at these only
    rows = None if p.output_rows is None else np.flatnonzero(table.column(p.output_rows).fill_null(False).to_numpy(zero_copy_only=False))
    m_out = m if rows is None else len(rows)
    if rows is not None:
        user_first, instant_first = user_first[rows], instant_first[rows]
    taken = table if rows is None else table.take(pa.array(rows))
    out: dict[str, Any] = {c: taken.column(c) for c in (C.USER_ID, C.ITEM_ID, C.EVENT_TS, *(f.name for f in p.carry))}
    flags = {POS: table.column("_is_pos"), NEG: table.column("_is_neg")}
    need_emb = "mean" in p.aggregations or "concat" in p.aggregations
    idx = table.column("item_idx").fill_null(0).to_numpy(zero_copy_only=False) if (need_emb or "clusters" in p.aggregations) else None
    matrix = _load_matrix(p.matrix_file) if need_emb else None
    clusters = table.column(C.ITEM_CLUSTER).fill_null(0).to_numpy(zero_copy_only=False) if "clusters" in p.aggregations else None

    for side in (POS, NEG):
        flag = flags[side].fill_null(False).to_numpy(zero_copy_only=False)
        sel = np.flatnonzero(flag)
        flagged_before = np.zeros(m + 1, dtype=np.int64)  # [i]: history events in rows 0..i-1
        np.cumsum(flag, out=flagged_before[1:])
        # history events (of any user) before this row's (user, instant), and those of earlier users
        end = flagged_before[instant_first]
        before = end - flagged_before[user_first]
        length = np.minimum(before, p.n)
        start = end - length  # the window is sel[start:end], most recent last
        out[f"{side}_hist_len"] = pa.array(length.astype(np.int32))
        if p.keep_lists:
            offsets = np.zeros(m_out + 1, dtype=np.int64)
            np.cumsum(length, out=offsets[1:])
            within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], length)
            flat = np.repeat(end - 1, length) - within  # most recent first
            values = table.column(C.ITEM_ID).take(pa.array(sel[flat]))
            out[HISTORY_LISTS[side]] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
        if need_emb:
            emb = np.asarray(matrix[idx[sel]], dtype=np.float64) if len(sel) else np.zeros((0, p.emb_dim))
            if "mean" in p.aggregations:
                csum = np.zeros((len(sel) + 1, p.emb_dim))
                np.cumsum(emb, axis=0, out=csum[1:])
                with np.errstate(invalid="ignore", divide="ignore"):
                    mean = (csum[end] - csum[start]) / length[:, None]
                mean[length == 0] = 0.0
                out[f"{side}_hist_mean"] = _fixed_list(mean, p.emb_dim)
            if "concat" in p.aggregations:
                k = p.concat_k
                cat = np.zeros((m_out, k, p.emb_dim), dtype=np.float32)
                for j in range(k):  # j-th most recent
                    ok = before > j
                    cat[ok, j] = emb[end[ok] - 1 - j]
                out[f"{side}_hist_concat"] = _fixed_list(cat.reshape(m_out, k * p.emb_dim), k * p.emb_dim)
                out[f"{side}_hist_concat_len"] = pa.array(np.minimum(before, k).astype(np.int32))
        if "clusters" in p.aggregations:
            counts = np.zeros((len(sel) + 1, p.n_clusters), dtype=np.int32)
            if len(sel):
                counts[np.arange(1, len(sel) + 1), clusters[sel]] = 1
            np.cumsum(counts, axis=0, out=counts)
            # float32 division of exact integers: correctly rounded, so equal to the float64
            # quotient rounded to float32 (53 >= 2 * 24 + 2 bits: double rounding is harmless)
            dist = np.zeros((m_out, p.n_clusters), dtype=np.float32)
            np.divide((counts[end] - counts[start]).astype(np.float32), length[:, None].astype(np.float32), out=dist, where=length[:, None] > 0)
            out[f"{side}_hist_clusters"] = _fixed_list(dist, p.n_clusters)
    schema_names = [f.name for f in p.output_schema().fields]
    return pa.table({k: out[k] for k in schema_names})


def _stream_histories(batches: Iterator[pa.RecordBatch], p: HistoryParams, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """``user_histories`` over a partition sorted by user, in chunks of at least ``chunk_rows``
    rows that end on a user boundary (the last user of a chunk is held back until its rows end)."""
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        n_pending += batch.num_rows
        if n_pending < chunk_rows:
            continue
        t = pa.Table.from_batches(pending)
        users = t.column(C.USER_ID)
        others = np.flatnonzero(~pc.equal(users, users[-1]).to_numpy(zero_copy_only=False))
        if len(others) == 0:
            continue  # one user so far: keep reading
        cut = int(others[-1]) + 1
        yield from user_histories(t.slice(0, cut), p).to_batches()
        rest = t.slice(cut)
        pending, n_pending = rest.to_batches(), rest.num_rows
    if n_pending:
        yield from user_histories(pa.Table.from_batches(pending), p).to_batches()


def compute_histories(events: DataFrame, params: HistoryParams, *, chunk_rows: int = CHUNK_ROWS) -> DataFrame:
    """One row per event with its history features (per event where `params.output_rows` is true,
    with `params.carry` beside them: the histories of a sample come out with the sample's columns,
    no join back to it).

    `events` needs user_id, item_id, event_ts, label, time_spent, item_avg_time_spent and,
    for embedding aggregations, item_idx (row of the matrix file) and item_cluster. The events
    are hash-partitioned by ``hash(user_id)`` (Spark's partition count, coalesced by adaptive
    execution; never a partitioning left over from an upstream join, see below) and sorted by
    user and time; each Python worker then streams its partition through ``user_histories`` in chunks
    of whole users (at least ``chunk_rows`` rows), so the per-call overhead is per chunk, not
    per user, and a worker holds one chunk at a time.
    """
    cols = [C.USER_ID, C.ITEM_ID, C.EVENT_TS, "_is_pos", "_is_neg", *(f.name for f in params.carry)]
    if params.output_rows:
        cols.append(params.output_rows)
    if params.aggregations:
        cols.append("item_idx")
    if "clusters" in params.aggregations:
        cols.append(C.ITEM_CLUSTER)
    marked = mark_history_events(events)
    if params.aggregations:  # an event of an item without a row of the matrix is in no history
        for flag in ("_is_pos", "_is_neg"):
            marked = marked.withColumn(flag, F.col(flag) & F.col("item_idx").isNotNull())
    # with `output_rows`, a carried column is null on the other rows (history-only events, most
    # of a sample's: never output), so that it crosses the shuffle and the sort as a null bit
    carried = {f.name for f in params.carry} if params.output_rows else set()
    marked = marked.select(*[F.when(F.col(params.output_rows), F.col(c)).alias(c) if c in carried else F.col(c) for c in cols])
    schema = params.output_schema()
    # by a hash of user_id, not by user_id: when the events come out of a join shuffled by user_id,
    # Spark drops a repartition by that same key as redundant, and adaptive execution may turn
    # the join into a broadcast whose side it reads map by map (a local shuffle read), which
    # splits a user's events across partitions: the histories would be cut short. A key the
    # plan cannot already satisfy keeps this shuffle (AQE only coalesces whole partitions of it)
    stream = marked.repartition(F.hash(C.USER_ID)).sortWithinPartitions(C.USER_ID, C.EVENT_TS, C.ITEM_ID)
    return stream.mapInArrow(lambda batches: _stream_histories(batches, params, chunk_rows), schema)
