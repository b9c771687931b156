"""The reference implementations ``make bench`` times ours against (never used by the product).

- ``naive_spark_histories``: the straightforward Spark window: per event, ``collect_list`` of
  every earlier event of the user (``rowsBetween(unboundedPreceding, -1)`` in
  ``(event_ts, item_id)`` order), then per side: keep the history events strictly before the
  event's instant, sort most recent first (ties: ``item_id`` descending), take N, and
  aggregate with higher-order functions. Quadratic in a user's events.
- ``duckdb_history_sql``: the same rule in DuckDB SQL, linear: each side's history events are
  numbered in time order with running per-cluster counts (window sums); an ASOF join finds,
  per event, the last history event strictly before its instant (its number = the history
  length before the event), and an equi-join fetches the running counts N events earlier, so
  a cluster distribution is one subtraction.
- ``duckdb_filter_sql``: the item filter then the client filter of stage 2 in DuckDB SQL.

All three compute the SPEC's stage-6 rule on a table with ``user_id``, ``item_id``,
``event_ts``, ``label``, ``time_spent``, ``item_avg_time_spent``, ``item_cluster``: positive
history = label 1; negative history = label 0 and ``time_spent < item_avg_time_spent``.
Outputs per event: ``pos_hist_len``, ``neg_hist_len``, ``pos_hist_clusters``,
``neg_hist_clusters`` (share of each cluster among the last N; zeros when empty).
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

SIDES = ("pos", "neg")


# ------------------------------------------------------------------------------ Spark window
# (Spark reads a lambda's arity to choose (x) or (x, index): no default arguments in them)
def _strictly_before(flag: str):
    return lambda x: x[flag] & (x["_ts"] < F.col("_ts"))


def _cluster_share(h, length):
    return lambda c: F.when(length > 0, F.size(F.filter(h, lambda x: x["item_cluster"] == c)) / length).otherwise(F.lit(0.0)).cast("float")


def naive_spark_histories(events: DataFrame, n: int, n_clusters: int, keep_lists: bool = False) -> DataFrame:
    w = Window.partitionBy("user_id").orderBy("_ts", "item_id").rowsBetween(Window.unboundedPreceding, -1)
    df = events.select(
        "user_id", "item_id", "event_ts", "item_cluster",
        F.unix_micros("event_ts").alias("_ts"),
        (F.col("label") == 1).alias("_pos"),
        ((F.col("label") == 0) & F.col("item_avg_time_spent").isNotNull() & (F.col("time_spent") < F.col("item_avg_time_spent"))).alias("_neg"),
    )
    df = df.withColumn("_earlier", F.collect_list(F.struct("_ts", "item_id", "item_cluster", "_pos", "_neg")).over(w))
    out = [F.col("user_id"), F.col("item_id"), F.col("event_ts")]
    for side in SIDES:
        df = df.withColumn(f"_{side}_hist", F.slice(F.reverse(F.array_sort(F.filter("_earlier", _strictly_before(f"_{side}")))), 1, n))
        h = F.col(f"_{side}_hist")
        length = F.size(h)
        dist = F.transform(F.sequence(F.lit(0), F.lit(n_clusters - 1)), _cluster_share(h, length))
        out += [length.cast("int").alias(f"{side}_hist_len"), dist.alias(f"{side}_hist_clusters")]
        if keep_lists:
            out.append(F.transform(h, lambda x: x["item_id"]).alias(f"{side}_history"))
    return df.select(*out)


# ------------------------------------------------------------------------------ DuckDB
def _side_sql(side: str, cond: str, n: int, k: int) -> tuple[str, str]:
    """CTEs of one side: the numbered history stream with running cluster counts, and the
    per-event ASOF + equi-join that yields length and cluster distribution."""
    counts = ", ".join(f"sum((c = {j})::INTEGER) OVER w AS k{j}" for j in range(k))
    stream = f"""
{side}_s AS (
  SELECT user_id, ts, row_number() OVER w AS rn, lead(ts) OVER w AS next_ts, {counts}
  FROM ev WHERE {cond}
  WINDOW w AS (PARTITION BY user_id ORDER BY ts, item_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),
{side}_last AS (SELECT * FROM {side}_s WHERE next_ts IS NULL OR next_ts <> ts)"""
    dist = ", ".join(
        f"CASE WHEN a.rn IS NULL THEN 0.0 ELSE (a.k{j} - coalesce(b.k{j}, 0))::FLOAT / least(a.rn, {n}) END" for j in range(k)
    )
    per_event = f"""
{side}_f AS (
  SELECT e.user_id, e.item_id, e.ts, least(coalesce(a.rn, 0), {n})::INTEGER AS {side}_hist_len,
         [{dist}]::FLOAT[] AS {side}_hist_clusters
  FROM ev e
  ASOF LEFT JOIN {side}_last a ON e.user_id = a.user_id AND e.ts > a.ts
  LEFT JOIN {side}_s b ON b.user_id = e.user_id AND b.rn = a.rn - {n}
)"""
    return stream, per_event


def duckdb_history_sql(source: str, n: int, n_clusters: int) -> str:
    """A SELECT over ``source`` (a table expression, e.g. ``read_parquet('dir/*.parquet')``)
    with one row per event: user_id, item_id, ts (microseconds), pos/neg hist len and clusters."""
    ctes = [f"""ev AS (
  SELECT user_id, item_id, epoch_us(event_ts) AS ts, item_cluster AS c,
         label = 1 AS is_pos,
         label = 0 AND item_avg_time_spent IS NOT NULL AND time_spent < item_avg_time_spent AS is_neg
  FROM {source}
)"""]
    for side, cond in (("pos", "is_pos"), ("neg", "is_neg")):
        ctes += _side_sql(side, cond, n, n_clusters)
    return (
        "WITH " + ",".join(ctes) + """
SELECT p.user_id, p.item_id, p.ts, p.pos_hist_len, p.pos_hist_clusters, q.neg_hist_len, q.neg_hist_clusters
FROM pos_f p JOIN neg_f q ON p.user_id = q.user_id AND p.item_id = q.item_id AND p.ts = q.ts"""
    )


def duckdb_history_checksum_sql(source: str, n: int, n_clusters: int) -> str:
    """Consumes every output column (what the timed run executes)."""
    return (
        "SELECT count(*) AS rows, sum(pos_hist_len + neg_hist_len) AS lens, "
        "sum(list_sum(pos_hist_clusters)) + sum(list_sum(neg_hist_clusters)) AS mass, "
        f"sum(hash(user_id, item_id)) AS h FROM ({duckdb_history_sql(source, n, n_clusters)})"
    )


def duckdb_filter_sql(source: str, *, item_min: int, client_min: int, client_max: int, min_pos: int, min_neg: int) -> str:
    """Rows kept by the item filter then the client filter (both fitted on split = 'train')."""
    return f"""
WITH t AS (SELECT * FROM {source}),
items AS (SELECT item_id FROM t WHERE split = 'train' GROUP BY item_id HAVING count(*) >= {item_min}),
after_items AS (SELECT * FROM t SEMI JOIN items USING (item_id)),
clients AS (
  SELECT user_id FROM after_items WHERE split = 'train' GROUP BY user_id
  HAVING count(*) >= {client_min} AND count(*) <= {client_max} AND sum(label) >= {min_pos} AND sum(1 - label) >= {min_neg}
)
SELECT * FROM after_items SEMI JOIN clients USING (user_id)"""
