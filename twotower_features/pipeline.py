"""The feature stages, each a `run_<stage>(spark, cfg, input_dir, output_dir) -> StageReport`.

Stages read what the previous one saved under the output folder (``layout.py``), so each runs
alone as one `spark-submit` (``jobs/<stage>.py``) or all in one session; the orchestration's stage
table (``twotower/stages.py``) says which runner, sections, inputs and outputs each has:

1. ``prepare``    validate (quarantine) → window/split → item average time spent → item
                  filter → label → client filter → weight          → tables/filtered
2. ``embeddings`` PCA per source and KMeans, fitted on the kept train items → artifacts/items
3. ``examples``   user sampling → point-in-time histories → class rebalancing → statistics as
                  of the day before → tower features                 → tables/examples
4. ``tfrecords``  vocabularies, feature_spec.json, sharded TFRecords, manifest

Everything fitted (filters, item averages, PCA, KMeans, normalisation, vocabularies) is fitted
on the train split only and saved under ``artifacts/`` before it is applied.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Callable

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import columns as C
from . import filters as flt
from . import io, zscore
from . import layout as L
from .config import ExperimentConfig
from .embeddings import (
    FittedEmbeddings,
    apply_embeddings,
    collect_vectors,
    fit_embeddings,
    nan_free,
)
from .errors import UserError
from .fingerprint import input_fingerprints
from .history import HistoryParams, compute_histories
from .labels import add_label, add_weight
from .report import StageReport
from .sampling import (
    in_user_sample,
    is_example,
    of_example_users,
    ratio_string,
    rebalance_rates,
    split_and_class_counts,
)
from .spec import Column, FeatureSpec
from .stats_source import read_stats, stats_dates
from .validate import (
    INTERACTION_SCHEMA,
    ITEM_SCHEMA,
    USER_SCHEMA,
    check_day_volume,
    check_schema,
    check_unique,
    day_volumes,
    flag_interactions,
    split_flagged,
)
from .window import assign_split, window_filter

MAX_FIT_ITEMS = 200_000


class StageError(UserError):
    pass


def _save_report(out: str, report: StageReport, log: Callable[[str], None]) -> StageReport:
    report.finish()
    io.write_json_atomic(L.path(out, L.report(report.stage)), report.to_dict())
    log(report.render())
    return report


def _require_rows(stage: str, rows: dict[str, int], cfg: ExperimentConfig) -> None:
    """Refuse a run that leaves no train or validation rows, naming the stage and the days."""
    w = cfg.window
    for split, days in ((C.TRAIN, f"{w.train_start}..{w.train_end}"), (C.VALIDATION, str(w.validation_date))):
        if rows.get(split, 0) == 0:
            raise StageError(
                f"stage {stage} leaves no {split} rows ({days}): see reports/{stage}.json's removals; check the window, "
                "the filters and (for validation) that the day's users were seen in the train window"
            )


def _require_both_classes(n: int, positives: int, cfg: ExperimentConfig) -> None:
    """Refuse train rows of one class only: the label rule decides nothing."""
    if n and positives in (0, n):
        only = "negative" if positives == 0 else "positive"
        raise StageError(f"label.rule {cfg.label.rule!r} makes every one of the {n:,} train rows {only}: a model needs both classes; change label.rule")


def _window_dates(cfg: ExperimentConfig) -> str:
    return f"{C.DT} >= '{cfg.window.train_start}' AND {C.DT} <= '{cfg.window.validation_date}'"


def needed_sources(cfg: ExperimentConfig) -> list[str]:
    s = set()
    if C.ITEM_EMB in cfg.features.item:
        s.add(cfg.embeddings.item_source)
    if {"mean", "concat"} & set(cfg.history.aggregations):
        s.add(cfg.history.source)
    if "clusters" in cfg.history.aggregations:
        s.add("simclr")
    return sorted(s)


# --------------------------------------------------------------------------------------- 1
def run_prepare(spark: SparkSession, cfg: ExperimentConfig, input_dir: str, out: str, log: Callable[[str], None] = print) -> StageReport:
    """Validate, split, fit and apply the filters, label and weight; write tables/filtered."""
    rep = StageReport("prepare")
    raw = check_schema(io.read_table(spark, io.table_path(input_dir, "interactions")), INTERACTION_SCHEMA, "interactions")
    items = check_schema(io.read_table(spark, io.table_path(input_dir, "items")), ITEM_SCHEMA, "items")
    raw = raw.filter(window_filter(cfg.window)).select(*C.INTERACTION_COLUMNS)
    volumes = day_volumes(raw)
    n_in = sum(volumes.values())
    if n_in == 0:
        raise StageError(
            f"no interactions between {cfg.window.train_start} and {cfg.window.validation_date} in "
            f"{io.table_path(input_dir, 'interactions')}: nothing was written"
        )
    # the day's volume against the days before it (quality band), before anything is written
    rep.facts["day_volume"] = check_day_volume(volumes, cfg.window, cfg.quality)
    # rows of items whose needed embeddings are null, hold NaN/Inf or have another length than
    # the rest are quarantined (bad_item_embedding); of items not in the table, unknown_item
    good_items = items.filter(nan_free(items, needed_sources(cfg))).select(C.ITEM_ID)
    # one cached frame with a reason per row (null: valid), so the duplicate check's shuffle runs
    # once for the counts, the valid rows and the quarantined ones
    flagged = flag_interactions(raw, good_items, known_items=items, max_fraction_watched=cfg.quality.max_fraction_watched).cache()
    per_reason = {r[C.QUARANTINE_REASON]: int(r["n"]) for r in flagged.groupBy(C.QUARANTINE_REASON).agg(F.count(F.lit(1)).alias("n")).collect()}
    n_valid = per_reason.pop(None, 0)
    n_bad = sum(per_reason.values())
    valid, bad = split_flagged(flagged)
    log(f"[prepare] {n_in:,} interactions in the window: {n_valid:,} valid, {n_bad:,} quarantined {per_reason or ''}".rstrip())
    rep.rows_in["interactions_in_window"] = n_in
    rep.removed.update({f"quarantine:{k}": v for k, v in sorted(per_reason.items())})
    share = n_bad / n_in
    if share > cfg.quality.max_quarantine_share:
        raise StageError(
            f"{n_bad:,} of {n_in:,} interactions ({share:.2%}) break the input contract, above "
            f"quality.max_quarantine_share={cfg.quality.max_quarantine_share:.2%}: {per_reason}; nothing was written"
        )

    # the label rule against the table's columns and types, before the first write
    df = add_label(assign_split(valid, cfg.window), cfg.label)
    # one pass over the valid train rows per item: the item's average time spent (all valid train
    # rows of the item, before any filter), its row count (the item filter's) and its positives
    per_item = df.filter(F.col(C.SPLIT) == C.TRAIN).groupBy(C.ITEM_ID).agg(
        F.avg(C.TIME_SPENT).alias(C.ITEM_AVG_TIME_SPENT), F.count(F.lit(1)).alias("n"), F.sum(C.LABEL).alias("p")
    ).persist(StorageLevel.MEMORY_AND_DISK)
    labelled = per_item.agg(F.sum("n").alias("n"), F.sum("p").alias("p")).collect()[0]
    n_train, n_pos = int(labelled["n"] or 0), int(labelled["p"] or 0)
    _require_both_classes(n_train, n_pos, cfg)  # the label rule's outcome, before any filter
    # the first write of the stage: every check that can refuse the input has passed
    io.write_json_atomic(L.path(out, L.RESOLVED_CONFIG), cfg.to_dict())
    per_item.select(C.ITEM_ID, C.ITEM_AVG_TIME_SPENT).write.mode("overwrite").parquet(L.path(out, L.ITEM_AVG_TIME_SPENT))
    item_avg = spark.read.parquet(L.path(out, L.ITEM_AVG_TIME_SPENT))

    filtered, item_filter, client_filter = flt.fit_and_apply(
        df, cfg.filters, cfg.window.train_days, L.path(out, L.ITEM_FILTER), L.path(out, L.CLIENT_FILTER), item_counts=per_item
    )
    filtered = add_weight(filtered, cfg.weight).join(item_avg, C.ITEM_ID, "left")

    io.write_delta(filtered, L.path(out, L.FILTERED), partition_by=[C.SPLIT, C.DT], replace_where=_window_dates(cfg), plain=C.PLAIN_ENCODED)
    if n_bad or io.is_delta(L.path(out, L.QUARANTINE)):  # a clean rerun empties the window's quarantine rows
        io.write_delta(bad, L.path(out, L.QUARANTINE), partition_by=[C.DT], replace_where=_window_dates(cfg))

    # the report: rows per split at each step, removals per rule; one aggregation per table read
    # (the valid rows with a flag for the item filter's verdict, the written table with its labels)
    kept_items = flt.kept_ids(item_filter, C.ITEM_ID).withColumn("_kept", F.lit(1))
    split_valid, split_items = {}, {}
    for r in df.join(F.broadcast(kept_items), C.ITEM_ID, "left").groupBy(C.SPLIT).agg(
        F.count(F.lit(1)).alias("n"), F.count("_kept").alias("kept")
    ).collect():
        split_valid[r[C.SPLIT]], split_items[r[C.SPLIT]] = int(r["n"]), int(r["kept"])
    out_tbl = spark.read.format("delta").load(L.path(out, L.FILTERED)).filter(window_filter(cfg.window))
    out_counts = out_tbl.groupBy(C.SPLIT).agg(F.count(F.lit(1)).alias("n"), F.sum(C.LABEL).alias("p")).collect()
    split_out = {r[C.SPLIT]: int(r["n"]) for r in out_counts}
    pos = next((int(r["p"] or 0) for r in out_counts if r[C.SPLIT] == C.TRAIN), 0)
    neg = split_out.get(C.TRAIN, 0) - pos
    rep.rows_in["valid"] = n_valid
    for s in (C.TRAIN, C.VALIDATION):
        rep.removed[f"item_filter:{s}"] = split_valid.get(s, 0) - split_items.get(s, 0)
        rep.removed[f"client_filter:{s}"] = split_items.get(s, 0) - split_out.get(s, 0)
    rep.rows_out = {s: split_out.get(s, 0) for s in (C.TRAIN, C.VALIDATION)}
    rep.facts["item_filter_rules"] = flt.removal_counts(item_filter)
    rep.facts["client_filter_rules"] = flt.removal_counts(client_filter)
    rep.facts["client_max_interactions"] = cfg.filters.client_max_interactions(cfg.window.train_days)
    log(f"[prepare] after the filters: train {rep.rows_out[C.TRAIN]:,} rows ({pos:,} positive, {neg:,} negative), validation {rep.rows_out[C.VALIDATION]:,}")
    _require_rows("prepare", rep.rows_out, cfg)
    _require_both_classes(pos + neg, pos, cfg)
    rep.facts["train_pos_neg"] = ratio_string(pos, neg)
    rep.facts["window"] = f"train {cfg.window.train_start}..{cfg.window.train_end}, validation {cfg.window.validation_date}"
    flagged.unpersist()
    per_item.unpersist()
    return _save_report(out, rep, log)


# --------------------------------------------------------------------------------------- 2
def run_embeddings(spark: SparkSession, cfg: ExperimentConfig, input_dir: str, out: str, log: Callable[[str], None] = print) -> StageReport:
    """Fit PCA per needed source (and KMeans) on the kept train items; write artifacts/items."""
    rep = StageReport("embeddings")
    items = check_schema(io.read_table(spark, io.table_path(input_dir, "items")), ITEM_SCHEMA, "items")
    kept = flt.kept_ids(spark.read.parquet(L.path(out, L.ITEM_FILTER)), C.ITEM_ID)
    catalog = items.join(kept, C.ITEM_ID, "left_semi")
    sources = needed_sources(cfg)
    with_cluster = "clusters" in cfg.history.aggregations
    n_items = catalog.count()
    log(f"[embeddings] {n_items:,} kept train items; PCA {cfg.embeddings.pca_components} of {sources or 'no source'}"
        + (f", KMeans {cfg.embeddings.kmeans_k}" if with_cluster else ""))
    rep.rows_in["kept_train_items"] = n_items
    cols = [C.ITEM_ID, C.CREATOR_ID] + [c for c in items.columns if c.startswith((C.ITEM_PERFORMANCE_PREFIX, C.CREATOR_PERFORMANCE_PREFIX))]
    base = catalog.select(*cols)
    if sources:
        vectors = collect_vectors(catalog, sources, max_items=MAX_FIT_ITEMS, seed=cfg.embeddings.seed)
        fitted = fit_embeddings(vectors, cfg.embeddings.pca_components, kmeans_k=cfg.embeddings.kmeans_k if with_cluster else None, seed=cfg.embeddings.seed)
        fitted.save(L.path(out, L.EMBEDDINGS))
        fitted = FittedEmbeddings.load(L.path(out, L.EMBEDDINGS))
        rep.facts["pca_explained_variance"] = {s: round(v, 4) for s, v in fitted.explained_variance.items()}
        rep.facts["fit_items"] = int(next(iter(vectors.values())).shape[0])
        base = base.join(apply_embeddings(catalog, fitted, with_cluster=with_cluster), C.ITEM_ID)
    table = base.orderBy(C.ITEM_ID).toArrow()
    # a dense index per item (sorted ids), the row of the history matrix file
    import pyarrow as pa

    table = table.append_column("item_idx", pa.array(np.arange(table.num_rows, dtype=np.int32)))
    io.write_parquet_atomic(L.path(out, L.ITEMS), table)
    hsrc = cfg.history.source
    if {"mean", "concat"} & set(cfg.history.aggregations):
        mat = table.column(f"{hsrc}_pca").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)
        np.save(L.path(out, L.HISTORY_MATRIX), mat.astype(np.float32))
    if with_cluster:
        counts = np.bincount(table.column(C.ITEM_CLUSTER).to_numpy(), minlength=cfg.embeddings.kmeans_k)
        rep.facts["cluster_sizes"] = counts.tolist()
    rep.rows_out["catalog_items"] = table.num_rows
    rep.facts["sources"] = sources
    return _save_report(out, rep, log)


# --------------------------------------------------------------------------------------- 3
def _performance_vectors(df: DataFrame) -> DataFrame:
    """`item_performance` / `creator_performance`: the (normalised) numeric columns as one vector, in name order."""
    for prefix, name in ((C.ITEM_PERFORMANCE_PREFIX, "item_performance"), (C.CREATOR_PERFORMANCE_PREFIX, "creator_performance")):
        cs = sorted(c for c in df.columns if c.startswith(prefix))
        if cs:
            df = df.withColumn(name, F.array(*[F.col(c).cast("float") for c in cs]))
    return df


def _stats_as_of_previous_day(spark: SparkSession, input_dir: str, table: str, cfg: ExperimentConfig) -> DataFrame | None:
    """Stats keyed by (id, dt) shifted so that an example on day D joins the row of D-1 (files or PostgreSQL: `cfg.stats`);
    the columns are named after the table (``item_stats``' ctr: ``item_ctr``)."""
    df = read_stats(spark, input_dir, table, cfg.stats, dates=stats_dates(cfg.window.validation_date, cfg.window.train_days), one_row_per_key=True)
    if df is None:
        return None
    key, prefix = C.STATS_TABLES[table], table.removesuffix("_stats")
    return df.select(
        F.col(key), F.date_add(F.col(C.DT), 1).alias(C.DT),
        *[F.col(c).cast("double").alias(f"{prefix}_{c}") for c in (C.STAT_CTR, C.STAT_TIMESPENT) if c in df.columns],
    )


_COUNT = "_n"


def _train_counts_per_key(train: DataFrame) -> DataFrame:
    """The train examples counted per (user_id, dt) and per (item_id, dt), in one aggregation
    (grouping sets): user_id, item_id, dt and ``_COUNT``. A per-user row has no item_id and a
    per-item row no user_id, so joined on either key a row matches only its own kind."""
    return train.groupingSets([[C.USER_ID, C.DT], [C.ITEM_ID, C.DT]], C.USER_ID, C.ITEM_ID, C.DT).agg(F.count(F.lit(1)).alias(_COUNT))


def user_columns(cfg: ExperimentConfig) -> list[str]:
    """The users table's columns the towers use (joined to the examples by user_id; none: the
    table is not read)."""
    return [c for c in (C.HANDSET_MAKER, C.ACTIVITY_PROFILE) if c in cfg.features.user]


def run_examples(spark: SparkSession, cfg: ExperimentConfig, input_dir: str, out: str, log: Callable[[str], None] = print) -> StageReport:
    """Sample users, compute histories, rebalance, join statistics and tower features; tables/examples."""
    rep = StageReport("examples")
    filtered = spark.read.format("delta").load(L.path(out, L.FILTERED)).filter(window_filter(cfg.window))
    rep.rows_in, pos, neg = split_and_class_counts(filtered, cfg.sampling)  # the sampled train rows' classes, for rebalancing

    items = spark.read.parquet(L.path(out, L.ITEMS))
    pos_rate, neg_rate = rebalance_rates(pos, neg, cfg.sampling.target_pos_neg_ratio)
    rep.facts["sampled_train_pos_neg"] = ratio_string(pos, neg)
    rep.facts["user_fraction"] = cfg.sampling.user_fraction
    rep.facts["rebalance_keep_rates"] = {"positive": round(pos_rate, 6), "negative": round(neg_rate, 6)}
    # the example rows: the train rows of sampled users that rebalancing keeps, and the validation
    # rows (of sampled users too with `sampling.validation`); one predicate, which the histories'
    # events below carry as a flag (user sampling keeps all rows of a sampled user, so the
    # histories of sampled users see every filtered row of theirs, as if computed before sampling)
    examples = filtered.filter(is_example(cfg.sampling, pos_rate, neg_rate))

    # statistics as of the day before, normalised with train statistics
    stats = {table: _stats_as_of_previous_day(spark, input_dir, table, cfg) for table in C.STATS_TABLES}
    if stats["user_stats"] is not None:
        # only the rows of users with example rows that day can match (a smaller relation to
        # broadcast or shuffle into the joins below: 47% of it for experiment 8)
        stats["user_stats"] = stats["user_stats"].filter(of_example_users(cfg.sampling, F.col(C.DT) == F.lit(cfg.window.validation_date)))
    # the normalised columns, each with the table it comes from (the items' are added below)
    origin = {c: table for table, st in stats.items() if st is not None for c in st.columns if c not in (C.STATS_TABLES[table], C.DT)}
    users_path, users_cols = io.table_path(input_dir, "users"), user_columns(cfg)
    users = io.read_table(spark, users_path, required=False) if users_cols else None
    if users is not None:
        users = check_schema(users, USER_SCHEMA, "users").select(C.USER_ID, *users_cols)
        # a left join on user_id: a repeated user would copy that user's example rows
        check_unique(users, [C.USER_ID], f"users ({users_path})", rerun_from="examples")
        # only the users with example rows can match: with `sampling.validation`, the sampled ones
        # (the table has no day: without it, any user can have a validation-day row)
        users = users.filter(of_example_users(cfg.sampling, F.lit(True)))

    def joined(item_part: DataFrame, df: DataFrame, *, with_users: bool = True) -> DataFrame:
        """``df`` (the examples, or the train counts per key) with the statistics, ``item_part``'s
        columns and, ``with_users``, the users' joined."""
        for table, key in C.STATS_TABLES.items():
            if key == C.CREATOR_ID:  # creator_id comes with the items
                df = df.join(item_part, C.ITEM_ID, "left")
            if stats[table] is not None:
                df = df.join(stats[table], [key, C.DT], "left")
        return df if users is None or not with_users else df.join(users, C.USER_ID, "left")

    # the items' columns the examples carry: creator_id only. Their performance columns enter the
    # normalisation fit below, but are per item: the tfrecords stage z-scores them in the items
    # (``item_features``) and looks them up there, as it does the item embedding
    item_part = items.select(C.ITEM_ID, C.CREATOR_ID)
    perf_cols = sorted(c for c in items.columns if c.startswith((C.ITEM_PERFORMANCE_PREFIX, C.CREATOR_PERFORMANCE_PREFIX)))
    origin.update({c: "items" for c in perf_cols})
    # the normalisation fit's rows, one per key instead of one per train example: the train
    # examples counted per (user_id, dt) and per (item_id, dt), joined as the examples are (a
    # per-user row gets its user's statistics only, a per-item row its item's, its creator's and
    # the item's columns). A key's values are the same on each of its examples, so the fit
    # weighted by the counts sums exactly the values of the examples joined row by row (its sums
    # are exact: the same statistics bit for bit), without joining every example (0.71x the time
    # of that fit at 50M events, docs/scale.md). One aggregation under left joins: a union of a
    # per-user and a per-item half recomputed the aggregation in the second half, cached or not.
    fit_rows = joined(items.select(C.ITEM_ID, C.CREATOR_ID, *perf_cols), _train_counts_per_key(examples.filter(F.col(C.SPLIT) == C.TRAIN)), with_users=False)
    norm = zscore.fit(fit_rows, list(origin), origin, weight=_COUNT)
    io.write_json_atomic(L.path(out, L.NORMALISATION), norm)

    def finished(df: DataFrame) -> DataFrame:
        """``df`` joined, its statistics normalised."""
        df = joined(item_part, df)
        return zscore.apply(df, {c: v for c, v in norm.items() if c in df.columns})

    # the table's columns, in their order: the examples with creator_id, the statistics and the
    # users' columns, then the histories
    table_columns = finished(examples).columns
    hist = cfg.history.aggregations or cfg.history.keep_lists
    if not hist:
        base = examples
    else:
        # the histories are computed over every filtered event of the users with an example row
        # and come out on the example rows only, carrying the examples' columns: no join back to
        # the sample. With the validation day sampled too, those users are the sampled ones (a
        # filter by row); without, they are the sampled train users and every validation user:
        # the kernel gets every user's events (its shuffle by user is the only one), and a user
        # without an example row returns nothing (cheaper than a semi-join, which shuffled and
        # sorted every event by user once more)
        aggs = cfg.history.aggregations
        events = filtered
        if cfg.sampling.validation:
            events = events.filter(in_user_sample(cfg.sampling))
        events = events.withColumn("_example", is_example(cfg.sampling, pos_rate, neg_rate))
        if aggs:
            events = events.join(F.broadcast(items.select(C.ITEM_ID, "item_idx", *([C.ITEM_CLUSTER] if "clusters" in aggs else []))), C.ITEM_ID, "left")
        matrix = L.path(out, L.HISTORY_MATRIX) if {"mean", "concat"} & set(aggs) else None
        if matrix:
            matrix = io.ship_file(spark, matrix)
        params = HistoryParams(
            n=cfg.history.n, aggregations=aggs, concat_k=cfg.history.concat_k, keep_lists=cfg.history.keep_lists,
            emb_dim=cfg.embeddings.pca_components, n_clusters=cfg.embeddings.kmeans_k, matrix_file=matrix,
            carry=tuple(f for f in filtered.schema if f.name not in (C.USER_ID, C.ITEM_ID, C.EVENT_TS)), output_rows="_example",
        )
        base = compute_histories(events, params)
        keys = [C.USER_ID, C.ITEM_ID, C.EVENT_TS]  # first, as a join of the histories on them put them
        table_columns = keys + [c for c in table_columns if c not in keys] + [c for c in params.output_schema().fieldNames() if c not in table_columns]
    examples = finished(base).select(*table_columns)

    # the per-event columns stored plain (as in tables/filtered): 12% less time writing the table
    # at 10M events; and the arrays' elements (the histories, their cluster distributions, the
    # activity profiles): about 10% less again, in files of the same size (a
    # user's rows are consecutive, and Snappy finds the repeats of its lists in plain pages)
    io.write_delta(
        examples, L.path(out, L.EXAMPLES), partition_by=[C.SPLIT, C.DT], replace_where=_window_dates(cfg), plain=C.PLAIN_ENCODED, plain_arrays=True,
    )
    written = spark.read.format("delta").load(L.path(out, L.EXAMPLES)).filter(window_filter(cfg.window))
    counts = written.groupBy(C.SPLIT).agg(F.count(F.lit(1)).alias("n"), F.sum(C.LABEL).alias("p")).collect()
    rep.rows_out = {r[C.SPLIT]: int(r["n"]) for r in counts}
    rep.facts["label_rate"] = {r[C.SPLIT]: round(int(r["p"]) / max(int(r["n"]), 1), 4) for r in counts}
    train_pos = next((int(r["p"]) for r in counts if r[C.SPLIT] == C.TRAIN), 0)
    log(f"[examples] train {rep.rows_out.get(C.TRAIN, 0):,} examples ({train_pos:,} positive), validation {rep.rows_out.get(C.VALIDATION, 0):,}")
    _require_rows("examples", rep.rows_out, cfg)
    _require_both_classes(rep.rows_out.get(C.TRAIN, 0), train_pos, cfg)
    rep.removed["train:user_sampling"] = rep.rows_in.get(C.TRAIN, 0) - pos - neg
    rep.removed["train:rebalancing"] = pos + neg - rep.rows_out.get(C.TRAIN, 0)
    if not cfg.sampling.validation:
        rep.removed["validation"] = rep.rows_in.get(C.VALIDATION, 0) - rep.rows_out.get(C.VALIDATION, 0)
    return _save_report(out, rep, log)


# --------------------------------------------------------------------------------------- 4
def _vocabulary(df: DataFrame, col: str, min_count: int, max_size: int = 0) -> tuple[list[str], int]:
    """The values of ``col`` seen at least ``min_count`` times, most frequent first (ties by
    value), at most ``max_size`` of them (0: all); and how many qualifying values the cap left
    out (counted only when the cap is reached)."""
    counted = df.filter(F.col(col).isNotNull()).groupBy(col).agg(F.count(F.lit(1)).alias("n")).filter(F.col("n") >= min_count)
    ordered = counted.orderBy(F.col("n").desc(), F.col(col)).select(col)
    words = [r[0] for r in (ordered.limit(max_size) if max_size else ordered).collect()]
    cut = counted.count() - len(words) if max_size and len(words) == max_size else 0
    return words, cut


def spec_columns(cfg: ExperimentConfig, examples: DataFrame, items: DataFrame) -> list[Column]:
    """The TFRecord columns of this experiment (vocabulary sizes are filled in later); an
    array's width read from the frame that holds it (``_holding``: the examples, or the items
    (``item_features``) for a per-item column)."""
    d = cfg.embeddings.pca_components
    cols: list[Column] = []
    user, item = set(cfg.features.user), set(cfg.features.item)
    cols.append(Column(C.USER_ID, "string", (), "user" if C.USER_ID in user else None, "id" if C.USER_ID in user else "key",
                       vocabulary_file=f"{L.VOCAB}/user_id.txt" if C.USER_ID in user else None))
    cols.append(Column(C.ITEM_ID, "string", (), "item" if C.ITEM_ID in item else None, "id" if C.ITEM_ID in item else "key",
                       vocabulary_file=f"{L.VOCAB}/item_id.txt" if C.ITEM_ID in item else None))
    cols += [Column(C.EVENT_TS, "int64", (), None, "key"), Column(C.LABEL, "float32", (), None, "label"), Column(C.WEIGHT, "float32", (), None, "weight")]

    def width(name: str) -> int:
        first = _holding(name, examples, items).select(F.size(name).alias("n")).filter(F.col("n") > 0).limit(1).collect()
        return int(first[0]["n"]) if first else 0

    if C.HANDSET_MAKER in user:
        cols.append(Column(C.HANDSET_MAKER, "string", (), "user", "categorical", vocabulary_file=f"{L.VOCAB}/handset_maker.txt"))
    if C.ACTIVITY_PROFILE in user:
        cols.append(Column(C.ACTIVITY_PROFILE, "float32", (width(C.ACTIVITY_PROFILE),), "user", "dense"))
    for side in ("pos", "neg"):
        if f"{side}_hist_mean" in user:
            cols.append(Column(f"{side}_hist_mean", "float32", (d,), "user", "dense"))
        if f"{side}_hist_concat" in user:
            cols.append(Column(f"{side}_hist_concat", "float32", (cfg.history.concat_k * d,), "user", "dense"))
            cols.append(Column(f"{side}_hist_concat_len", "int64", (), "user", "count"))
        if f"{side}_hist_clusters" in user:
            cols.append(Column(f"{side}_hist_clusters", "float32", (cfg.embeddings.kmeans_k,), "user", "dense"))
        if any(f.startswith(f"{side}_hist_") for f in user):
            cols.append(Column(f"{side}_hist_len", "int64", (), "user", "count"))
    for name, src in (("user_ctr", "user_ctr"), ("user_timespent", "user_timespent")):
        if name in user:
            cols.append(Column(src, "float32", (), "user", "dense"))
    if C.CREATOR_ID in item:
        cols.append(Column(C.CREATOR_ID, "string", (), "item", "categorical", vocabulary_file=f"{L.VOCAB}/creator_id.txt"))
    if C.ITEM_EMB in item:
        cols.append(Column(C.ITEM_EMB, "float32", (d,), "item", "dense"))
    for name in ("item_performance", "creator_performance"):
        if name in item:
            cols.append(Column(name, "float32", (width(name),), "item", "dense"))
    for name in ("item_ctr", "creator_ctr"):
        if name in item:
            cols.append(Column(name, "float32", (), "item", "dense"))
    return cols


# TFRecord columns that are per item: looked up in the items (``item_features``), not stored per example
ITEM_LOOKUPS = (C.ITEM_EMB, "item_performance", "creator_performance")


def _holding(name: str, examples: DataFrame, items: DataFrame) -> DataFrame:
    """The frame that holds TFRecord column ``name``: the items for a per-item column, else the examples."""
    frame = items if name in ITEM_LOOKUPS else examples
    if name not in frame.columns:
        where = "the items (artifacts/items.parquet)" if name in ITEM_LOOKUPS else "the examples table"
        raise StageError(f"feature '{name}' is not in {where}: were stages 'embeddings' and 'examples' run with this config?")
    return frame


def item_features(spark: SparkSession, cfg: ExperimentConfig, out: str) -> DataFrame:
    """artifacts/items.parquet with the per-item features (``ITEM_LOOKUPS``): the model's
    ``item_emb`` (``<embeddings.item_source>_pca``) when it is a feature, and the performance
    columns z-scored with the train window's statistics (normalisation.json, fitted by stage
    'examples') as the ``item_performance`` / ``creator_performance`` vectors."""
    items = spark.read.parquet(L.path(out, L.ITEMS))
    norm = json.loads(Path(out, L.NORMALISATION).read_text())
    items = _performance_vectors(zscore.apply(items, {c: v for c, v in norm.items() if c in items.columns}))
    return items.withColumn(C.ITEM_EMB, F.col(f"{cfg.embeddings.item_source}_pca")) if C.ITEM_EMB in cfg.features.item else items


def tfrecord_rows(examples: DataFrame, items: DataFrame, names: list[str]) -> DataFrame:
    """The ``names`` columns of the examples as the TFRecords hold them: the per-item columns
    (``ITEM_LOOKUPS``) joined from ``items`` (``item_features``) by item."""
    looked_up = [n for n in names if n in ITEM_LOOKUPS]
    rows = examples.select(*[n for n in names if n not in looked_up])
    if looked_up:
        rows = rows.join(items.select(C.ITEM_ID, *looked_up), C.ITEM_ID, "left")
    return rows.select(*names)


def run_tfrecords(spark: SparkSession, cfg: ExperimentConfig, input_dir: str, out: str, log: Callable[[str], None] = print) -> StageReport:
    """Vocabularies, feature_spec.json, TFRecords per split and for the catalog, manifest.json."""
    from .tfrecord.writer import write_tfrecords
    from .validate import has_line_break

    rep = StageReport("tfrecords")
    examples = spark.read.format("delta").load(L.path(out, L.EXAMPLES)).filter(window_filter(cfg.window))
    train = examples.filter(F.col(C.SPLIT) == C.TRAIN)
    items = item_features(spark, cfg, out)
    cols = spec_columns(cfg, examples, items)
    for c in cols:  # before the first write
        _holding(c.name, examples, items)
    vocab_dir = Path(out, L.VOCAB)
    vocab_dir.mkdir(parents=True, exist_ok=True)
    sized = []
    for c in cols:
        if c.vocabulary_file:
            words, cut = _vocabulary(train, c.name, cfg.output.vocabulary_min_count, cfg.output.vocabulary_max_size)
            if cut:
                rep.facts.setdefault("vocabulary_values_over_cap", {})[c.name] = cut
                log(f"vocabulary of '{c.name}' capped at {len(words):,} values (output.vocabulary_max_size); {cut:,} rarer values hash into model.oov_buckets")
            broken = [w for w in words if has_line_break(w)]
            if broken:  # one value per line: such a value would read back as several
                raise StageError(
                    f"{len(broken)} value(s) of '{c.name}' hold a line break, e.g. {broken[0]!r}: {c.vocabulary_file} would have more "
                    "lines than values; fix them in the input (stage 'prepare' quarantines interactions whose user_id, item_id or "
                    "creator_id holds one) and rerun from 'prepare'"
                )
            Path(out, c.vocabulary_file).write_text("\n".join(words) + ("\n" if words else ""))
            c = dataclasses.replace(c, vocabulary_size=len(words))
        sized.append(c)
    freq = train.groupBy(C.ITEM_ID).agg(F.count(F.lit(1)).alias("count")).orderBy(F.col("count").desc(), C.ITEM_ID).toPandas()
    freq.to_csv(L.path(out, L.ITEM_FREQUENCY), index=False)

    names = [c.name for c in sized]
    rows = {}
    shards: dict[str, list[dict[str, object]]] = {}

    def listed(split: str, res: dict) -> list[dict[str, object]]:
        """The shards as written: path relative to the folder, records, bytes (the trainer checks the files against it)."""
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in res["paths"]]
        return [{"path": f"{L.tfrecords(split)}/{n}", "records": int(r), "bytes": int(b)} for n, r, b in zip(names, res["shard_rows"], res["shard_bytes"])]

    for split in (C.TRAIN, C.VALIDATION):
        part = tfrecord_rows(examples.filter(F.col(C.SPLIT) == split), items, names).withColumn(C.LABEL, F.col(C.LABEL).cast("float"))
        res = write_tfrecords(part, L.path(out, L.tfrecords(split)), sized, num_shards=cfg.output.tfrecord_shards, sort_by=[C.USER_ID, C.ITEM_ID, C.EVENT_TS])
        rows[split] = int(res["rows"])
        shards[split] = listed(split, res)
    item_cols = [c for c in sized if c.tower == "item" or c.name == C.ITEM_ID]
    norm = json.loads(Path(out, L.NORMALISATION).read_text())
    last_day = cfg.window.validation_date
    for table in ("item_stats", "creator_stats"):
        st = _stats_as_of_previous_day(spark, input_dir, table, cfg)
        if st is not None:
            st = st.filter(F.col(C.DT) == F.lit(last_day)).drop(C.DT)
            items = zscore.apply(items.join(st, C.STATS_TABLES[table], "left"), {k: v for k, v in norm.items() if k in st.columns})
    res = write_tfrecords(items.select(*[c.name for c in item_cols]), L.path(out, L.tfrecords("catalog")), item_cols, num_shards=1, sort_by=[C.ITEM_ID])
    rows["catalog"] = int(res["rows"])
    shards["catalog"] = listed("catalog", res)

    spec = FeatureSpec(
        columns=tuple(sized),
        keys=(C.USER_ID, C.ITEM_ID, C.EVENT_TS),
        extras={
            "splits": {s: f"{L.tfrecords(s)}/*.tfrecord" for s in (C.TRAIN, C.VALIDATION, "catalog")},
            "catalog_columns": [c.name for c in item_cols],
            "item_frequency_file": L.ITEM_FREQUENCY,
            "items_file": L.ITEMS,
            "rows": rows,
            "experiment": cfg.name,
        },
    )
    spec.save(out)
    counts = examples.groupBy(C.SPLIT).agg(F.count(F.lit(1)).alias("n"), F.sum(C.LABEL).alias("p")).collect()
    prep = json.loads(Path(out, L.report("examples")).read_text())
    manifest = {
        "experiment": cfg.name,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config_hash": cfg.config_hash(),
        "data_hash": cfg.data_hash(),
        "rows": rows,
        L.MANIFEST_SHARDS: shards,
        "label_ratio": {r[C.SPLIT]: ratio_string(int(r["p"]), int(r["n"]) - int(r["p"])) for r in counts},
        "sampling": {"user_fraction": cfg.sampling.user_fraction, "seed": cfg.sampling.seed, **prep["facts"].get("rebalance_keep_rates", {})},
        "inputs": input_fingerprints(input_dir, cfg, spark=lambda: spark),
        "window": {"train_start": str(cfg.window.train_start), "train_end": str(cfg.window.train_end), "validation": str(cfg.window.validation_date)},
    }
    io.write_json_atomic(L.path(out, L.MANIFEST), manifest)
    rep.rows_in = {k: v for k, v in rows.items() if k != "catalog"}
    rep.rows_out = rows
    rep.facts["columns"] = len(sized)
    rep.facts["label_ratio"] = manifest["label_ratio"]
    return _save_report(out, rep, log)
