"""Stage 2: item filter, then client filter, fitted on the train window and applied by id.

`fit_item_filter` and `fit_client_filter` return per-id tables (counts and a `keep` flag, with
the first rule an id fails); `apply_item_filter` and `apply_client_filter` keep the rows whose
item, then user, was kept.
An item or user that never appeared in the train window is not in those tables, so it has no
validation rows either.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import columns as C
from .config import FilterConfig

ITEM_BELOW_MIN = "item_min_interactions"
CLIENT_RULES = ("client_min_interactions", "client_max_interactions", "client_min_positives", "client_min_negatives")


def fit_item_filter(train: DataFrame, cfg: FilterConfig) -> DataFrame:
    """item_id, n, keep, rule: items with >= item_min_interactions valid train rows are kept."""
    return item_filter_from_counts(train.groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias("n")), cfg)


def item_filter_from_counts(counts: DataFrame, cfg: FilterConfig) -> DataFrame:
    """``fit_item_filter`` from the train rows counted per item already (item_id, n)."""
    return (
        counts.select(C.ITEM_ID, "n")
        .withColumn("keep", F.col("n") >= cfg.item_min_interactions)
        .withColumn("rule", F.when(~F.col("keep"), F.lit(ITEM_BELOW_MIN)))
    )


def fit_client_filter(train_after_items: DataFrame, cfg: FilterConfig, train_days: int) -> DataFrame:
    """user_id, n, positives, negatives, keep, rule (the first rule failed, in CLIENT_RULES order).

    Needs `label`. The interaction cap scales with the window (2000 per 7 days).
    """
    cap = cfg.client_max_interactions(train_days)
    stats = train_after_items.groupBy(C.USER_ID).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.col(C.LABEL)).alias("positives"),
        F.sum(1 - F.col(C.LABEL)).alias("negatives"),
    )
    rule = (
        F.when(F.col("n") < cfg.client_min_interactions, F.lit(CLIENT_RULES[0]))
        .when(F.col("n") > cap, F.lit(CLIENT_RULES[1]))
        .when(F.col("positives") < cfg.client_min_positives, F.lit(CLIENT_RULES[2]))
        .when(F.col("negatives") < cfg.client_min_negatives, F.lit(CLIENT_RULES[3]))
    )
    return stats.withColumn("rule", rule).withColumn("keep", F.col("rule").isNull())


def kept_ids(fitted: DataFrame, id_col: str) -> DataFrame:
    return fitted.filter(F.col("keep")).select(id_col)


def apply_item_filter(df: DataFrame, item_filter: DataFrame) -> DataFrame:
    return df.join(kept_ids(item_filter, C.ITEM_ID), C.ITEM_ID, "left_semi")


def apply_client_filter(df: DataFrame, client_filter: DataFrame) -> DataFrame:
    return df.join(kept_ids(client_filter, C.USER_ID), C.USER_ID, "left_semi")


def fit_and_apply(
    df: DataFrame, cfg: FilterConfig, train_days: int, item_path: str, client_path: str, item_counts: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Stage 2 as the prepare stage runs it: the item filter fitted on ``df``'s train rows,
    written to ``item_path`` and applied as read back; then the client filter, fitted on the
    train rows left, likewise with ``client_path``. Read back from files, a fitted table is a
    small relation of known size, so Spark broadcasts it into the semi-join when it is under
    ``spark.sql.autoBroadcastJoinThreshold`` (a shuffle join above). Returns (rows kept by both,
    item filter, client filter), the filters as read back. ``item_counts`` (item_id, n: ``df``'s
    train rows per item), when the caller has them, saves the item filter's pass over ``df``."""
    read = df.sparkSession.read
    train = F.col(C.SPLIT) == C.TRAIN
    fitted = fit_item_filter(df.filter(train), cfg) if item_counts is None else item_filter_from_counts(item_counts, cfg)
    fitted.write.mode("overwrite").parquet(item_path)
    item_filter = read.parquet(item_path)
    after_items = apply_item_filter(df, item_filter)
    fit_client_filter(after_items.filter(train), cfg, train_days).write.mode("overwrite").parquet(client_path)
    client_filter = read.parquet(client_path)
    return apply_client_filter(after_items, client_filter), item_filter, client_filter


def removal_counts(fitted: DataFrame) -> dict[str, dict[str, int]]:
    """{rule: {'ids': n_ids, 'train_rows': rows}} from a fitted filter table."""
    rows = fitted.filter(~F.col("keep")).groupBy("rule").agg(F.count(F.lit(1)).alias("ids"), F.sum("n").alias("rows")).collect()
    return {r["rule"]: {"ids": int(r["ids"]), "train_rows": int(r["rows"])} for r in rows}
