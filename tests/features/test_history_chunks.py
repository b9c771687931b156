"""Histories of many users at once: chunked streaming equals one call per user."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import functions as F
from pyspark.sql import types as T

from twotower_features import columns as C
from twotower_features.history import HistoryParams, compute_histories, user_histories

BASE = dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc)
K = 4


def _events(seed: int = 0) -> pa.Table:
    """Users of very different sizes, coarse timestamps (many same-instant ties), labels 0/1."""
    rng = np.random.default_rng(seed)
    rows = []
    for u, n in enumerate([1, 2, 40, 3, 0, 25, 7, 60, 1, 12]):
        for _ in range(n):
            rows.append((f"u{u}", f"i{rng.integers(0, 9)}", int(rng.integers(0, 15)), int(rng.integers(0, 2)), float(rng.uniform(0, 20))))
    rng.shuffle(rows)
    return pa.table({
        C.USER_ID: [r[0] for r in rows],
        C.ITEM_ID: [r[1] for r in rows],
        C.EVENT_TS: pa.array([BASE + dt.timedelta(minutes=r[2]) for r in rows], pa.timestamp("us", tz="UTC")),
        C.LABEL: pa.array([r[3] for r in rows], pa.int32()),
        C.TIME_SPENT: [r[4] for r in rows],
        C.ITEM_AVG_TIME_SPENT: [10.0] * len(rows),
        "item_idx": pa.array([int(r[1][1:]) for r in rows], pa.int32()),
        C.ITEM_CLUSTER: pa.array([int(r[1][1:]) % K for r in rows], pa.int32()),
    })


def _key(r: dict) -> tuple:
    return (r[C.USER_ID], r[C.ITEM_ID], r["ts"])


def test_chunked_spark_histories_equal_one_call_per_user(spark):
    params = HistoryParams(n=3, aggregations=("clusters",), concat_k=2, keep_lists=True, emb_dim=0, n_clusters=K, matrix_file=None)
    t = _events()
    # reference: the pure function on each user's rows alone
    marked = t.append_column("_is_pos", pa.array([x == 1 for x in t.column(C.LABEL).to_pylist()]))
    marked = marked.append_column("_is_neg", pa.array([lab == 0 and s < 10.0 for lab, s in zip(t.column(C.LABEL).to_pylist(), t.column(C.TIME_SPENT).to_pylist())]))
    expected = {}
    for u in sorted(set(t.column(C.USER_ID).to_pylist())):
        one = marked.filter(pc.equal(marked.column(C.USER_ID), u))
        out = user_histories(one, params)
        out = out.append_column("ts", out.column(C.EVENT_TS).cast(pa.int64()))
        for r in out.to_pylist():
            expected.setdefault(_key(r), []).append(r)
    df = spark.createDataFrame(t.to_pandas())
    for chunk_rows in (1, 5, 1000):  # a chunk per user, chunks cutting users, one chunk
        got = {}
        for r in compute_histories(df, params, chunk_rows=chunk_rows).withColumn("ts", F.unix_micros(C.EVENT_TS)).collect():
            d = r.asDict()
            got.setdefault(_key(d), []).append(d)
        assert sorted(got) == sorted(expected), chunk_rows
        for k, rows in expected.items():
            g = got[k]
            assert len(g) == len(rows)
            for side in ("pos", "neg"):
                assert sorted(x[f"{side}_history"] for x in g) == sorted(x[f"{side}_history"] for x in rows), (chunk_rows, k, side)
                assert sorted(x[f"{side}_hist_len"] for x in g) == sorted(x[f"{side}_hist_len"] for x in rows)
                np.testing.assert_allclose(sorted(x[f"{side}_hist_clusters"] for x in g), sorted(x[f"{side}_hist_clusters"] for x in rows), rtol=1e-6)


def test_carried_columns_and_output_rows(spark):
    """With ``carry`` and ``output_rows`` the kernel returns the flagged events only, with their
    carried columns as given and the histories of every event (unflagged ones still enter
    them); an event of an item without a matrix row (item_idx null) enters no history."""
    params = HistoryParams(n=3, aggregations=("clusters",), concat_k=2, keep_lists=True, emb_dim=0, n_clusters=K, matrix_file=None)
    t = _events(1)
    t = t.append_column("tag", pa.array([f"t{i}" for i in range(t.num_rows)]))
    t = t.append_column("_keep", pa.array([i % 3 != 0 for i in range(t.num_rows)]))
    df = spark.createDataFrame(t.to_pandas())
    full = {_key(r.asDict()): r.asDict() for r in compute_histories(df, params).withColumn("ts", F.unix_micros(C.EVENT_TS)).collect()}
    carried = HistoryParams(**{**params.__dict__, "carry": tuple(f for f in df.schema if f.name in ("tag", C.TIME_SPENT)), "output_rows": "_keep"})
    got = [r.asDict() for r in compute_histories(df, carried).withColumn("ts", F.unix_micros(C.EVENT_TS)).collect()]
    given = {(r[C.USER_ID], r[C.ITEM_ID], int(r[C.EVENT_TS].timestamp() * 1_000_000), r["tag"]): r for r in t.to_pylist()}
    kept = [k for k, r in given.items() if r["_keep"]]
    assert sorted((g[C.USER_ID], g[C.ITEM_ID], g["ts"], g["tag"]) for g in got) == sorted(kept)
    for g in got:
        src = given[(g[C.USER_ID], g[C.ITEM_ID], g["ts"], g["tag"])]
        assert g[C.TIME_SPENT] == src[C.TIME_SPENT]
        ref = full[_key(g)]
        for c in ("pos_history", "neg_history", "pos_hist_len", "neg_hist_len", "pos_hist_clusters", "neg_hist_clusters"):
            assert g[c] == ref[c], c
    # one user: a positive of an item with no matrix row is in no history, yet is returned
    one = spark.createDataFrame(
        [("u", item, BASE + dt.timedelta(minutes=m), 1, 1.0, 10.0, idx, idx, True) for m, (item, idx) in enumerate([("a", 0), ("b", None), ("c", 2)])],
        f"{C.USER_ID} string, {C.ITEM_ID} string, {C.EVENT_TS} timestamp, {C.LABEL} int, {C.TIME_SPENT} double, "
        f"{C.ITEM_AVG_TIME_SPENT} double, item_idx int, {C.ITEM_CLUSTER} int, _keep boolean",
    )
    rows = {r[C.ITEM_ID]: r for r in compute_histories(one, HistoryParams(**{**params.__dict__, "output_rows": "_keep"})).collect()}
    assert rows["b"]["pos_history"] == ["a"] and rows["c"]["pos_history"] == ["a"]  # "b" is in no history
    assert rows["c"]["pos_hist_clusters"] == [1.0, 0.0, 0.0, 0.0]


def test_output_rows_equal_the_full_run_at_those_rows_for_every_aggregation(tmp_path):
    """``user_histories`` takes the histories at the flagged rows only (the others still enter
    them): for mean, concat, clusters and the id lists, each returned row equals the same event's
    row of the run without ``output_rows``, and the rows come in the same order."""
    d = 3
    matrix = np.random.default_rng(7).normal(size=(9, d)).astype(np.float32)
    np.save(tmp_path / "m.npy", matrix)
    params = HistoryParams(n=4, aggregations=("mean", "concat", "clusters"), concat_k=2, keep_lists=True, emb_dim=d, n_clusters=K, matrix_file=str(tmp_path / "m.npy"))
    t = _events(3)
    t = t.append_column("_is_pos", pa.array([x == 1 for x in t.column(C.LABEL).to_pylist()]))
    t = t.append_column("_is_neg", pa.array([lab == 0 and s < 10.0 for lab, s in zip(t.column(C.LABEL).to_pylist(), t.column(C.TIME_SPENT).to_pylist())]))
    t = t.append_column("_keep", pa.array([i % 4 == 1 or (i % 7 == 0 and None) for i in range(t.num_rows)], pa.bool_()))  # a null counts as false
    t = t.append_column("tag", pa.array([f"t{i}" for i in range(t.num_rows)]))
    tag = (T.StructField("tag", T.StringType()),)
    full_tagged = user_histories(t, HistoryParams(**{**params.__dict__, "carry": tag})).to_pylist()
    got = user_histories(t, HistoryParams(**{**params.__dict__, "carry": tag, "output_rows": "_keep"})).to_pylist()
    keep = {f"t{i}" for i, k in enumerate(t.column("_keep").to_pylist()) if k}
    assert [r["tag"] for r in got] == [r["tag"] for r in full_tagged if r["tag"] in keep]  # the flagged rows, in the same order
    assert len(got) == len(keep) > 0
    ref = {r["tag"]: r for r in full_tagged}
    for r in got:
        assert r == ref[r["tag"]]
    # and the full run itself against the definition, for one aggregation: the mean of the last n positives strictly before
    rows = t.to_pylist()
    for r in got:
        src = next(x for x in rows if x["tag"] == r["tag"])
        before = sorted((x for x in rows if x[C.USER_ID] == src[C.USER_ID] and x[C.EVENT_TS] < src[C.EVENT_TS] and x["_is_pos"]),
                        key=lambda x: (x[C.EVENT_TS], x[C.ITEM_ID]), reverse=True)[: params.n]
        assert r["pos_history"] == [x[C.ITEM_ID] for x in before]
        want = np.mean([matrix[x["item_idx"]] for x in before], axis=0) if before else np.zeros(d)
        np.testing.assert_allclose(r["pos_hist_mean"], want, rtol=1e-5, atol=1e-6)


def test_histories_stay_whole_when_adaptive_execution_turns_a_user_join_into_a_broadcast(spark, tmp_path):
    """Events that come out of a join shuffled by user_id, which adaptive execution turns into a
    broadcast at run time (planned as a sort-merge join: the planner's threshold is 1 byte, the
    run-time one 10 MB) and then reads map by map (a local shuffle read). Spark drops a
    repartition by user_id after such a join as redundant, and at 10M events the histories then
    came out cut short (a user's events in several partitions). The kernel's own shuffle must be
    in the final plan, and the histories equal those of the same events given directly."""
    params = HistoryParams(n=3, aggregations=("clusters",), concat_k=2, keep_lists=True, emb_dim=0, n_clusters=K, matrix_file=None)
    t = _events(5)
    df = spark.createDataFrame(t.to_pandas()).repartition(3)  # several map tasks, a user's events in each
    df.write.parquet(str(tmp_path / "events"))
    spark.createDataFrame([(f"u{u}",) for u in range(10)], "user_id string").write.parquet(str(tmp_path / "users"))
    expected = {_key(r.asDict()): r.asDict() for r in compute_histories(df, params).withColumn("ts", F.unix_micros(C.EVENT_TS)).collect()}
    settings = {"spark.sql.adaptive.enabled": "true", "spark.sql.autoBroadcastJoinThreshold": "1", "spark.sql.adaptive.autoBroadcastJoinThreshold": "10m",
                "spark.sql.adaptive.localShuffleReader.enabled": "true"}
    before = {k: spark.conf.get(k, None) for k in settings}
    try:
        for k, v in settings.items():
            spark.conf.set(k, v)
        joined = spark.read.parquet(str(tmp_path / "events")).join(spark.read.parquet(str(tmp_path / "users")), C.USER_ID, "left_semi")
        hist = compute_histories(joined, params).withColumn("ts", F.unix_micros(C.EVENT_TS))
        got = {_key(r.asDict()): r.asDict() for r in hist.collect()}
        plan = hist._jdf.queryExecution().executedPlan().toString()  # adaptive execution's final plan, once run
    finally:
        for k, v in before.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)
    assert "AQEShuffleRead local" in plan and "BroadcastHashJoin" in plan  # the case: the join became a broadcast read map by map
    assert "Exchange hashpartitioning(hash(user_id" in plan and "REPARTITION_BY_COL" in plan, plan  # the kernel's shuffle stayed
    assert sorted(got) == sorted(expected)
    for k, r in expected.items():
        for c in ("pos_history", "neg_history", "pos_hist_len", "neg_hist_len", "pos_hist_clusters", "neg_hist_clusters"):
            assert got[k][c] == r[c], (k, c)


def test_rows_already_in_order_skip_the_sort_and_give_the_same_histories(tmp_path):
    """``_in_order`` is true exactly when the rows are sorted by (user, event_ts, item_id), ties
    at each level included (checked against Python's sort of the same keys); the histories of a
    sorted table, which skip the sort, equal those of the same rows shuffled, which do not."""
    from twotower_features.history import _in_order

    t = _events(5)
    keys = list(zip(t.column(C.USER_ID).to_pylist(), t.column(C.EVENT_TS).to_pylist(), t.column(C.ITEM_ID).to_pylist()))
    assert keys != sorted(keys) and not _in_order(t)
    ordered = t.take(pa.array(sorted(range(t.num_rows), key=lambda i: keys[i])))
    assert _in_order(ordered)
    # one swap of two neighbours that differ only in their last key, then only in their time
    o_keys = [keys[i] for i in sorted(range(t.num_rows), key=lambda i: keys[i])]
    for level in (2, 1):
        i = next(j for j in range(len(o_keys) - 1) if o_keys[j][:level] == o_keys[j + 1][:level] and o_keys[j][level] != o_keys[j + 1][level])
        swapped = list(range(t.num_rows))
        swapped[i], swapped[i + 1] = i + 1, i
        assert not _in_order(ordered.take(pa.array(swapped))), level
    with_null = ordered.set_column(1, C.ITEM_ID, pa.array([None, *ordered.column(C.ITEM_ID).to_pylist()[1:]], pa.string()))
    assert not _in_order(with_null)  # Arrow sorts nulls last: sort

    t = t.append_column("_is_pos", pc.equal(t.column(C.LABEL), 1))
    t = t.append_column("_is_neg", pc.and_(pc.equal(t.column(C.LABEL), 0), pc.less(t.column(C.TIME_SPENT), 10.0)))
    ordered = t.take(pa.array(sorted(range(t.num_rows), key=lambda i: keys[i])))
    params = HistoryParams(n=3, aggregations=("clusters",), concat_k=2, keep_lists=True, emb_dim=2, n_clusters=K, matrix_file=None)
    assert user_histories(ordered, params).to_pylist() == user_histories(t, params).to_pylist()
