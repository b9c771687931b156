"""The input contract: schema checks that name the column, and row checks that quarantine.

Rows that break the contract are never dropped silently: each gets a reason code, goes to the
quarantine table, and is counted; the caller fails the run when their share exceeds the bound.
"""
from __future__ import annotations

import datetime as _dt
import functools
import statistics
from typing import Any, Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C
from .config import QualityConfig, WindowConfig
from .errors import UserError

# expected type, and the types accepted as that type (safe widenings)
_NUMERIC = (T.DoubleType, T.FloatType, T.IntegerType, T.LongType, T.ShortType, T.DecimalType)
INTERACTION_SCHEMA: dict[str, tuple[str, tuple[type, ...]]] = {
    C.USER_ID: ("string", (T.StringType,)),
    C.ITEM_ID: ("string", (T.StringType,)),
    C.EVENT_TS: ("timestamp", (T.TimestampType, T.TimestampNTZType)),
    C.TIME_SPENT: ("double", _NUMERIC),
    C.FRACTION_WATCHED: ("double", _NUMERIC),
    C.LIKED: ("boolean", (T.BooleanType,)),
    C.SHARED: ("boolean", (T.BooleanType,)),
    C.DT: ("date", (T.DateType,)),
}
ITEM_SCHEMA: dict[str, tuple[str, tuple[type, ...]]] = {
    C.ITEM_ID: ("string", (T.StringType,)),
    C.CREATOR_ID: ("string", (T.StringType,)),
    C.DURATION_S: ("double", _NUMERIC),
    C.DEDUP_EMBEDDING: ("array<float>", (T.ArrayType,)),
    C.SIMCLR_EMBEDDING: ("array<float>", (T.ArrayType,)),
}
USER_SCHEMA: dict[str, tuple[str, tuple[type, ...]]] = {
    C.USER_ID: ("string", (T.StringType,)),
    C.HANDSET_MAKER: ("string", (T.StringType,)),
    C.ACTIVITY_PROFILE: ("array<float>", (T.ArrayType,)),
}


STATS_VALUE_COLUMNS = (C.STAT_CTR, C.STAT_TIMESPENT)


def stats_schema(key: str, present: tuple[str, ...] | list[str] = ()) -> dict[str, tuple[str, tuple[type, ...]]]:
    """A statistics table keyed by `key` (user_id, item_id, creator_id) and day; the value
    columns (`ctr`, `timespent`) are optional and must be numeric when `present`."""
    schema = {key: ("string", (T.StringType,)), C.DT: ("date", (T.DateType,))}
    schema.update({c: ("double", _NUMERIC) for c in STATS_VALUE_COLUMNS if c in present})
    return schema

# characters that end a line for ``str.splitlines``, which reads the vocabulary files back
# (``spec.read_vocabulary``): an id holding one would become several vocabulary lines
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def has_line_break(value: str) -> bool:
    """True when ``value`` holds a character of ``LINE_BREAKS``."""
    return any(c in value for c in LINE_BREAKS)


def line_break_in(col: str) -> F.Column:
    """True where the string column ``col`` holds a character of ``LINE_BREAKS`` (null stays null).

    One ``contains`` per character: a fifth of the time of a regular expression's character
    class (``rlike``) over the 10M-event bench's ids, where nearly every id holds none.
    """
    return functools.reduce(lambda a, b: a | b, [F.col(col).contains(c) for c in LINE_BREAKS])


# reason codes, in the order they are checked (a row gets the first that applies)
NULL_ID = "null_id"
BAD_ID_CHARACTERS = "bad_id_characters"  # user_id or item_id holds a line break (LINE_BREAKS); checked again for the item's creator_id, see below
BAD_TIME_SPENT = "bad_time_spent"  # null, NaN, negative or infinite
BAD_FRACTION = "bad_fraction_watched"  # null, NaN, negative or infinite
FRACTION_ABOVE_MAX = "fraction_watched_above_max"  # above quality.max_fraction_watched (when set)
NULL_FLAG = "null_flag"
DT_MISMATCH = "dt_mismatch"
UNKNOWN_ITEM = "unknown_item"  # not in the items table
# with ``known_items`` only: the item's creator_id holds a line break (BAD_ID_CHARACTERS, checked
# here), else an embedding the run needs is null, holds NaN/Inf/null or has another length
BAD_ITEM_EMBEDDING = "bad_item_embedding"
DUPLICATE_EVENT = "duplicate_event"


class ContractError(UserError, ValueError):
    """An input table does not have the contract's columns or types."""


class QualityError(UserError):
    """The input is outside a configured quality band (volume, empty day); nothing was written."""


def check_schema(df: DataFrame, expected: dict[str, tuple[str, tuple[type, ...]]], table: str) -> DataFrame:
    """Check names and types; cast accepted widenings to the contract type. Extra columns pass."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in expected if c not in fields]
    if missing:
        raise ContractError(f"table '{table}' lacks column(s) {missing}; it has {sorted(fields)}")
    for name, (type_name, accepted) in expected.items():
        if not isinstance(fields[name], accepted):
            raise ContractError(f"table '{table}' column '{name}' must be {type_name}, got {fields[name].simpleString()}")
    out = df
    for name, (type_name, _) in expected.items():
        if type_name == "double" and not isinstance(fields[name], T.DoubleType):
            out = out.withColumn(name, F.col(name).cast("double"))
        if type_name == "timestamp" and isinstance(fields[name], T.TimestampNTZType):
            out = out.withColumn(name, F.col(name).cast("timestamp"))
    return out


def check_unique(df: DataFrame, key: list[str], table: str, *, rerun_from: str) -> None:
    """Refuse a table that repeats a value of ``key`` (a left join on it would copy the rows it
    joins), naming up to three repeated values and their row counts. A row whose key holds a
    null joins nothing and is let through. One aggregation; nothing is collected but the three."""
    repeated = (
        df.filter(functools.reduce(lambda a, b: a & b, [F.col(k).isNotNull() for k in key]))
        .groupBy(*key).agg(F.count(F.lit(1)).alias("_rows"))
        .filter(F.col("_rows") > 1)
    )
    first = repeated.orderBy(*key).limit(3).collect()
    if first:
        def value(r) -> str:
            shown = [repr(r[k]) if isinstance(r[k], str) else str(r[k]) for k in key]
            return shown[0] if len(key) == 1 else f"({', '.join(shown)})"

        name = key[0] if len(key) == 1 else f"({', '.join(key)})"
        listed = ", ".join(f"{value(r)} ({r['_rows']} rows)" for r in first)
        raise ContractError(
            f"table '{table}' repeats {name} {listed}{' and more' if len(first) == 3 else ''}: each {name} needs one row, "
            f"or the join on it copies example rows; deduplicate the table and rerun from '{rerun_from}'"
        )


def _bad(col: str) -> F.Column:
    return F.col(col).isNull() | F.isnan(F.col(col)) | (F.col(col) < 0) | (F.col(col) == float("inf"))


def quarantine_interactions(
    interactions: DataFrame,
    item_ids: DataFrame,
    *,
    max_fraction_watched: float = 0.0,
    known_items: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Split interactions into (valid, quarantined with a `reason` column): ``split_flagged`` of
    ``flag_interactions``."""
    return split_flagged(flag_interactions(interactions, item_ids, max_fraction_watched=max_fraction_watched, known_items=known_items))


def split_flagged(flagged: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(valid rows without the `reason` column, quarantined rows with it) of ``flag_interactions``'
    output. Two filters over one frame: cache `flagged` first when both are used, or each
    recomputes the duplicate check (a shuffle of every row)."""
    reason = F.col(C.QUARANTINE_REASON)
    return flagged.filter(reason.isNull()).drop(C.QUARANTINE_REASON), flagged.filter(reason.isNotNull())


def flag_interactions(
    interactions: DataFrame,
    item_ids: DataFrame,
    *,
    max_fraction_watched: float = 0.0,
    known_items: DataFrame | None = None,
) -> DataFrame:
    """The interactions with a `reason` column: null for a valid row, else why it is quarantined.

    `item_ids` is a one-column frame of the usable item ids (``item_id``). Of several identical
    events (same user, item and instant) the first by (time_spent, fraction_watched, liked, shared)
    is kept and the others are quarantined as duplicates, so the choice is deterministic.
    `max_fraction_watched` > 0 quarantines rows watched more than that many times over. A row
    whose user_id or item_id holds a line break (``LINE_BREAKS``) is quarantined as
    ``bad_id_characters``: it would corrupt the vocabulary files (one id per line).

    Without `known_items`, an item not in `item_ids` is ``unknown_item``. With `known_items`,
    every item of the items table (an ``item_id`` column, and ``creator_id`` when it has one;
    the whole items table will do), ``unknown_item`` means "not in the items table" and a
    known item that is not usable gets a reason of its own: ``bad_id_characters`` when its
    creator_id holds a line break (its rows go, so the item never reaches the catalog or the
    creator vocabulary), else ``bad_item_embedding`` (the caller leaves out of `item_ids` the
    items whose needed embedding is null, holds NaN/Inf/null or has another length than the
    others: ``embeddings.nan_free``).
    """
    if not isinstance(max_fraction_watched, (int, float)) or max_fraction_watched < 0:
        raise ValueError(f"max_fraction_watched must be a number >= 0 (0 = no bound), got {max_fraction_watched!r}")
    above_max = (F.col(C.FRACTION_WATCHED) > F.lit(float(max_fraction_watched))) if max_fraction_watched > 0 else F.lit(False)
    usable = item_ids.select(F.col(C.ITEM_ID).alias("_usable_item")).distinct()
    if known_items is None:
        df = interactions.join(usable, F.col(C.ITEM_ID) == F.col("_usable_item"), "left")
        unknown, bad_creator, bad_item = F.col("_usable_item").isNull(), F.lit(False), F.lit(False)
        temporary = ["_usable_item"]
    else:
        if C.ITEM_ID not in known_items.columns:
            raise ValueError(f"known_items must have a column '{C.ITEM_ID}', it has {known_items.columns}")
        creator = line_break_in(C.CREATOR_ID) if C.CREATOR_ID in known_items.columns else F.lit(False)
        # one row per item id, even if the items table repeats one with two creators
        known = known_items.groupBy(F.col(C.ITEM_ID).alias("_known_item")).agg(F.max(F.coalesce(creator, F.lit(False))).alias("_bad_creator"))
        # both per-item tables as one (joined while small): one join of the interactions
        per_item = known.join(usable, F.col("_known_item") == F.col("_usable_item"), "full").withColumn(
            "_item", F.coalesce(F.col("_known_item"), F.col("_usable_item"))
        )
        df = interactions.join(per_item, F.col(C.ITEM_ID) == F.col("_item"), "left")
        unknown = F.col("_known_item").isNull() & F.col("_usable_item").isNull()
        bad_creator = F.coalesce(F.col("_bad_creator"), F.lit(False))
        bad_item = F.col("_usable_item").isNull()
        temporary = ["_usable_item", "_known_item", "_bad_creator", "_item"]
    reason = (
        F.when(F.col(C.USER_ID).isNull() | F.col(C.ITEM_ID).isNull() | F.col(C.EVENT_TS).isNull(), F.lit(NULL_ID))
        .when(line_break_in(C.USER_ID) | line_break_in(C.ITEM_ID), F.lit(BAD_ID_CHARACTERS))
        .when(_bad(C.TIME_SPENT), F.lit(BAD_TIME_SPENT))
        .when(_bad(C.FRACTION_WATCHED), F.lit(BAD_FRACTION))
        .when(above_max, F.lit(FRACTION_ABOVE_MAX))
        .when(F.col(C.LIKED).isNull() | F.col(C.SHARED).isNull(), F.lit(NULL_FLAG))
        .when(F.col(C.DT) != F.to_date(F.col(C.EVENT_TS)), F.lit(DT_MISMATCH))
        .when(unknown, F.lit(UNKNOWN_ITEM))
        .when(bad_creator, F.lit(BAD_ID_CHARACTERS))
        .when(bad_item, F.lit(BAD_ITEM_EMBEDDING))
    )
    df = df.withColumn(C.QUARANTINE_REASON, reason).drop(*temporary)
    w = Window.partitionBy(C.USER_ID, C.ITEM_ID, C.EVENT_TS).orderBy(
        F.col(C.QUARANTINE_REASON).asc_nulls_first(), C.TIME_SPENT, C.FRACTION_WATCHED, C.LIKED, C.SHARED
    )
    return df.withColumn(
        C.QUARANTINE_REASON,
        F.when(F.col(C.QUARANTINE_REASON).isNull() & (F.row_number().over(w) > 1), F.lit(DUPLICATE_EVENT)).otherwise(F.col(C.QUARANTINE_REASON)),
    )


# ------------------------------------------------------------------------------ volume
def day_volumes(interactions: DataFrame) -> dict[_dt.date, int]:
    """Rows per `dt` (one aggregation; the caller filters the dates first)."""
    return {r[C.DT]: int(r["n"]) for r in interactions.groupBy(C.DT).agg(F.count(F.lit(1)).alias("n")).collect()}


def check_day_volume(volumes: Mapping[_dt.date, int], window: WindowConfig, quality: QualityConfig) -> dict[str, Any]:
    """The validation day's row count against the median of the `volume_lookback_days` days
    before it (at most the train window's days: only those were read).

    Days of the window absent from `volumes` count as 0. Raises QualityError when the day is
    empty (unless `allow_empty_day`) or its ratio to that median is outside [min, max] (a 0
    bound is off). Returns the facts for the stage report.
    """
    day = window.validation_date
    n = int(volumes.get(day, 0))
    lookback = min(quality.volume_lookback_days, window.train_days)
    recent = [int(volumes.get(day - _dt.timedelta(days=k), 0)) for k in range(1, lookback + 1)]
    baseline = float(statistics.median(recent)) if recent else 0.0
    facts: dict[str, Any] = {"day": str(day), "rows": n, "recent_days": len(recent), "recent_median": baseline}
    if n == 0 and not quality.allow_empty_day:
        raise QualityError(
            f"no interactions on {day} (the validation day; median of the {len(recent)} days before: {baseline:g}): "
            "the day's data has not arrived or is lost: wait for it, or choose another validation date. Nothing was written"
        )
    if baseline <= 0:
        facts["ratio"] = None
        facts["band"] = "not checked: no rows in the days before"
        return facts
    ratio = n / baseline
    facts["ratio"] = round(ratio, 4)
    lo, hi = quality.min_day_volume_ratio, quality.max_day_volume_ratio
    facts["band"] = [lo or None, hi or None]
    if (lo and ratio < lo) or (hi and ratio > hi):
        raise QualityError(
            f"{n:,} interactions on {day} are {ratio:.2f}x the median of the {len(recent)} days before ({baseline:,.0f}), "
            f"outside quality.min_day_volume_ratio={lo:g} .. quality.max_day_volume_ratio={hi or float('inf'):g}; nothing was written"
        )
    return facts


# ------------------------------------------------------------------------------ conservation
def conservation(report: Mapping[str, Any]) -> dict[str, Any]:
    """Row conservation of one saved stage report: rows in = rows out + removed per rule.

    `prepare`: interactions in the window = train + validation rows out + quarantined (per
    reason) + item/client filter removals; `embeddings`: kept items = catalog items;
    `examples`: rows in per split = rows out + sampling, rebalancing and validation removals;
    `tfrecords`: examples in per split = records out per split (the catalog is extra).
    """
    stage = report["stage"]
    rows_in, rows_out, removed = dict(report["rows_in"]), dict(report["rows_out"]), dict(report["removed"])
    if stage == "prepare":
        n_in = int(rows_in["interactions_in_window"])
        n_out = sum(int(v) for v in rows_out.values())
    elif stage == "tfrecords":
        n_in = sum(int(v) for v in rows_in.values())
        n_out = sum(int(rows_out.get(k, 0)) for k in rows_in)
    else:
        n_in = sum(int(v) for v in rows_in.values())
        n_out = sum(int(v) for v in rows_out.values())
    quarantined = sum(int(v) for k, v in removed.items() if k.startswith("quarantine:"))
    filtered = {k: int(v) for k, v in removed.items() if not k.startswith("quarantine:")}
    return {
        "rows_in": n_in,
        "rows_out": n_out,
        "quarantined": quarantined,
        "filtered": filtered,
        "holds": n_in == n_out + quarantined + sum(filtered.values()),
    }
