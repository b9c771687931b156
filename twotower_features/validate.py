"""The input contract: schema checks that name the column, and row checks that quarantine.

Rows that break the contract are never dropped silently: each gets a reason code, goes to the
quarantine table, and is counted; the caller fails the run when their share exceeds the bound.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C

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

# reason codes, in the order they are checked (a row gets the first that applies)
NULL_ID = "null_id"
BAD_TIME_SPENT = "bad_time_spent"
BAD_FRACTION = "bad_fraction_watched"
NULL_FLAG = "null_flag"
DT_MISMATCH = "dt_mismatch"
UNKNOWN_ITEM = "unknown_item"
DUPLICATE_EVENT = "duplicate_event"
REASONS = (NULL_ID, BAD_TIME_SPENT, BAD_FRACTION, NULL_FLAG, DT_MISMATCH, UNKNOWN_ITEM, DUPLICATE_EVENT)


class ContractError(ValueError):
    """An input table does not have the contract's columns or types."""


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


def _bad(col: str) -> F.Column:
    return F.col(col).isNull() | F.isnan(F.col(col)) | (F.col(col) < 0) | (F.col(col) == float("inf"))


def quarantine_interactions(interactions: DataFrame, item_ids: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Split interactions into (valid, quarantined with a `reason` column).

    `item_ids` is a one-column frame of known item ids. Of several identical events
    (same user, item and instant) the first by (time_spent, fraction_watched, liked, shared)
    is kept and the others are quarantined as duplicates, so the choice is deterministic.
    """
    known = item_ids.select(F.col(C.ITEM_ID).alias("_known_item")).distinct()
    df = interactions.join(known, F.col(C.ITEM_ID) == F.col("_known_item"), "left")
    reason = (
        F.when(F.col(C.USER_ID).isNull() | F.col(C.ITEM_ID).isNull() | F.col(C.EVENT_TS).isNull(), F.lit(NULL_ID))
        .when(_bad(C.TIME_SPENT), F.lit(BAD_TIME_SPENT))
        .when(_bad(C.FRACTION_WATCHED), F.lit(BAD_FRACTION))
        .when(F.col(C.LIKED).isNull() | F.col(C.SHARED).isNull(), F.lit(NULL_FLAG))
        .when(F.col(C.DT) != F.to_date(F.col(C.EVENT_TS)), F.lit(DT_MISMATCH))
        .when(F.col("_known_item").isNull(), F.lit(UNKNOWN_ITEM))
    )
    df = df.withColumn(C.QUARANTINE_REASON, reason).drop("_known_item")
    w = Window.partitionBy(C.USER_ID, C.ITEM_ID, C.EVENT_TS).orderBy(
        F.col(C.QUARANTINE_REASON).asc_nulls_first(), C.TIME_SPENT, C.FRACTION_WATCHED, C.LIKED, C.SHARED
    )
    df = df.withColumn(
        C.QUARANTINE_REASON,
        F.when(F.col(C.QUARANTINE_REASON).isNull() & (F.row_number().over(w) > 1), F.lit(DUPLICATE_EVENT)).otherwise(F.col(C.QUARANTINE_REASON)),
    )
    valid = df.filter(F.col(C.QUARANTINE_REASON).isNull()).drop(C.QUARANTINE_REASON)
    bad = df.filter(F.col(C.QUARANTINE_REASON).isNotNull())
    return valid, bad
