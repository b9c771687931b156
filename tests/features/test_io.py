"""Reading input tables (`io.read_table`) and config files: what is read, and what is refused
before Spark runs a job, with the path, the column and the fix in the message."""
from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from twotower_features import io
from twotower_features.config import ConfigError, ExperimentConfig
from twotower_features.errors import UserError

FIX = "expected a Delta table or a folder of Parquet files (`twotower generate --out DIR` writes sample input tables)"
DAY = dt.date(2026, 6, 18)


@contextmanager
def no_spark_job(spark, *, expect_jobs: bool = False):
    """Run the block in a job group of its own; fail if it ran a Spark job (or, as the control,
    if ``expect_jobs`` and it ran none)."""
    sc = spark.sparkContext
    group = f"probe-{id(object())}"
    sc.setJobGroup(group, "test_io probe")
    try:
        yield
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    jobs = list(sc.statusTracker().getJobIdsForGroup(group))
    if expect_jobs:
        assert jobs, "the control read ran no Spark job: the probe would not see one"
    else:
        assert jobs == [], f"Spark jobs ran before the error: {jobs}"


@contextmanager
def session_conf(spark, key: str, value: str):
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        spark.conf.unset(key) if before is None else spark.conf.set(key, before)


def parquet_timestamp_units(folder: Path) -> dict[str, tuple[str, bool]]:
    """{column: (unit, isAdjustedToUTC)} of the TIMESTAMP columns of the first data file."""
    f = min(folder.rglob("*.parquet"))
    schema = pq.ParquetFile(f).schema
    out = {}
    for i in range(len(schema)):
        col = schema.column(i)
        if col.logical_type.type == "TIMESTAMP":
            lt = json.loads(col.logical_type.to_json())
            out[col.path] = (lt["timeUnit"], lt["isAdjustedToUTC"])
    return out


# ------------------------------------------------------------------------------ nanosecond timestamps
# the traps: digits below the microsecond (dropped), a value one nanosecond short of midnight (a
# double would round it up to the next day), a negative count before 1970 (rounds down, to the
# past, as numpy does), a null
NANO_TIMES = ["2026-06-18 01:02:03.123456789", "2026-06-18 23:59:59.999999999", "1969-12-31 23:59:59.999999500", None]
# the same instants truncated to the microsecond, written by hand
MICRO_TIMES = [
    dt.datetime(2026, 6, 18, 1, 2, 3, 123456),
    dt.datetime(2026, 6, 18, 23, 59, 59, 999999),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
    None,
]


def pandas_interactions(tz: str | None = None) -> pd.DataFrame:
    ts = pd.to_datetime(pd.Series(NANO_TIMES, dtype="object"))
    assert ts.dtype == "datetime64[ns]"
    if tz:
        ts = ts.dt.tz_localize(tz)
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4"],
            "item_id": ["i1", "i2", "i3", "i4"],
            "event_ts": ts,
            "time_spent": [1.5, 2.0, 3.0, 4.0],
            "dt": [DAY, DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1)],
        }
    )


@pytest.mark.parametrize("vectorized", ["true", "false"])
def test_pandas_nanosecond_timestamps_read_to_the_microsecond(spark, tmp_path, vectorized):
    frame = pandas_interactions()
    folder = tmp_path / "interactions"
    frame.to_parquet(folder, partition_cols=["dt"])
    # the premise: pyarrow wrote TIMESTAMP(NANOS, false), the type Spark refuses on its own
    assert parquet_timestamp_units(folder) == {"event_ts": ("nanoseconds", False)}
    conf_before = spark.conf.get(io.NANOS_AS_LONG, None)

    with session_conf(spark, "spark.sql.parquet.enableVectorizedReader", vectorized):
        df = io.read_table(spark, str(folder))
        # the setting is back before any row is read: the scan needs only the inferred schema
        assert spark.conf.get(io.NANOS_AS_LONG, None) == conf_before
        rows = df.orderBy("user_id").collect()

    types = {f.name: f.dataType for f in df.schema.fields}
    # a naive pandas timestamp is what Spark reads as timestamp_ntz when stored in microseconds
    assert types["event_ts"] == T.TimestampNTZType() and types["dt"] == T.DateType()
    assert df.columns == ["user_id", "item_id", "event_ts", "time_spent", "dt"]
    got = [r["event_ts"] for r in rows]
    assert got == MICRO_TIMES
    # independently: pandas' own truncation to microseconds
    expected = [None if pd.isna(t) else t.to_pydatetime() for t in frame["event_ts"].astype("datetime64[us]")]
    assert got == expected
    assert [r["dt"] for r in rows] == [DAY, DAY, DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=1)]
    assert [r["time_spent"] for r in rows] == [1.5, 2.0, 3.0, 4.0]


def test_pandas_utc_nanosecond_timestamps_read_as_timestamp(spark, tmp_path):
    frame = pandas_interactions(tz="UTC")
    folder = tmp_path / "interactions"
    frame.to_parquet(folder, partition_cols=["dt"])
    assert parquet_timestamp_units(folder) == {"event_ts": ("nanoseconds", True)}

    df = io.read_table(spark, str(folder))
    assert df.schema["event_ts"].dataType == T.TimestampType()
    got = [r["us"] for r in df.orderBy("user_id").select(F.unix_micros("event_ts").alias("us")).collect()]
    # microseconds since the epoch, by hand: 2026-06-18 is day 20622 after 1970-01-01
    day_us = 20622 * 86_400_000_000
    assert got == [day_us + 3_723_123_456, day_us + 86_399_999_999, -1, None]
    expected = frame["event_ts"].dt.tz_convert(None).astype("datetime64[us]")
    assert got == [None if pd.isna(t) else int(t.value // 1000) for t in expected]


def test_the_users_own_nanos_setting_is_kept(spark, tmp_path):
    folder = tmp_path / "interactions"
    pandas_interactions().to_parquet(folder, partition_cols=["dt"])
    with session_conf(spark, io.NANOS_AS_LONG, "true"):
        df = io.read_table(spark, str(folder))
        assert spark.conf.get(io.NANOS_AS_LONG) == "true"
    assert [r["event_ts"] for r in df.orderBy("user_id").collect()] == MICRO_TIMES


def test_microsecond_tables_are_read_as_spark_reads_them(spark, tmp_path):
    folder = tmp_path / "interactions"
    pandas_interactions().to_parquet(folder, partition_cols=["dt"], coerce_timestamps="us", allow_truncated_timestamps=True)
    assert parquet_timestamp_units(folder) == {"event_ts": ("microseconds", False)}
    df = io.read_table(spark, str(folder))
    plain = spark.read.parquet(str(folder))
    assert df.schema == plain.schema
    assert df.orderBy("user_id").collect() == plain.orderBy("user_id").collect()
    # (pyarrow's own truncation rounds towards 1970: the pre-1970 value became 1970-01-01 00:00:00)
    assert [r["event_ts"] for r in df.orderBy("user_id").collect()] == [*MICRO_TIMES[:2], dt.datetime(1970, 1, 1), None]


def test_nested_nanosecond_timestamps_are_refused_before_any_job(spark, tmp_path):
    folder = tmp_path / "sessions"
    folder.mkdir()
    ts = pa.array([1_781_744_523_123_456_789], type=pa.timestamp("ns"))
    table = pa.table({"user_id": ["u1"], "visit": pa.StructArray.from_arrays([ts], names=["at"])})
    pq.write_table(table, folder / "part-0.parquet")
    with no_spark_job(spark), pytest.raises(io.InputError) as e:
        io.read_table(spark, str(folder))
    assert str(e.value) == (
        f"input table {folder}: column 'visit.at' is a nanosecond timestamp inside a nested column, which Spark "
        'cannot read; rewrite the table with microseconds, e.g. pandas `df.to_parquet(..., coerce_timestamps="us", allow_truncated_timestamps=True)`'
    )


# ------------------------------------------------------------------------------ missing and empty tables
def test_a_missing_required_table_names_the_path_and_the_fix(spark, tmp_path):
    path = tmp_path / "interactions"
    with no_spark_job(spark), pytest.raises(io.InputError) as e:
        io.read_table(spark, str(path))
    assert str(e.value) == f"input table {path} does not exist: {FIX}"
    assert isinstance(e.value, UserError)


def test_a_missing_optional_table_is_none(spark, tmp_path):
    assert io.read_table(spark, str(tmp_path / "users"), required=False) is None


@pytest.mark.parametrize("required", [True, False])
def test_an_empty_table_folder_is_refused_before_any_job(spark, tmp_path, required):
    path = tmp_path / "interactions"
    (path / "dt=2026-06-18").mkdir(parents=True)  # a partition folder without files
    (path / "_SUCCESS").write_text("")
    (path / ".part-0.parquet.crc").write_bytes(b"crc")
    (path / "_temporary").mkdir()
    (path / "_temporary" / "part-0.parquet").write_bytes(b"half written")
    with no_spark_job(spark), pytest.raises(io.InputError) as e:
        io.read_table(spark, str(path), required=required)
    assert str(e.value) == f"input table {path} holds no data files: {FIX}"


def test_the_job_probe_sees_a_schema_inference(spark, tmp_path):
    # the control for the tests above: reading a real Parquet folder runs a Spark job
    path = tmp_path / "items"
    path.mkdir()
    pd.DataFrame({"item_id": ["i1"], "duration_s": [3.0]}).to_parquet(path / "part-0.parquet")
    with no_spark_job(spark, expect_jobs=True):
        df = io.read_table(spark, str(path))
    assert df.columns == ["item_id", "duration_s"]


def test_a_delta_log_without_commits_is_refused(spark, tmp_path):
    path = tmp_path / "items"
    (path / "_delta_log").mkdir(parents=True)
    (path / "_delta_log" / ".00000000000000000000.json.crc").write_bytes(b"")
    with no_spark_job(spark), pytest.raises(io.InputError) as e:
        io.read_table(spark, str(path))
    assert str(e.value) == f"input table {path} has a _delta_log without any commit: {FIX}"


def test_a_data_file_that_is_not_parquet_is_named(spark, tmp_path):
    path = tmp_path / "interactions"
    path.mkdir()
    (path / "interactions.csv").write_text("user_id,item_id\nu1,i1\n")
    with no_spark_job(spark), pytest.raises(io.InputError) as e:
        io.read_table(spark, str(path))
    message = str(e.value)
    assert message.startswith(f"input table {path}: {path / 'interactions.csv'} is not a readable Parquet file (")
    assert message.endswith(f"); {FIX}")


def test_data_files_follow_sparks_hidden_file_rule(tmp_path):
    for rel in ["b/part-1.parquet", "a/part-0.parquet", "_col=1/part-2.parquet", "_tmp/part-3.parquet", ".hidden/x.parquet",
                "_SUCCESS", "._SUCCESS.crc", "a/.part-0.parquet.crc", "c.parquet._COPYING_", "d.parquet"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    got = [str(p.relative_to(tmp_path)) for p in io.data_files(tmp_path)]
    assert got == ["_col=1/part-2.parquet", "a/part-0.parquet", "b/part-1.parquet", "d.parquet"]
    assert io.data_files(tmp_path / "d.parquet") == [tmp_path / "d.parquet"]


# ------------------------------------------------------------------------------ config files
def test_a_config_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"description = 'caf\xe9'\n")  # latin-1: 0xe9 is the 19th byte (offset 18)
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_file(path)
    assert str(e.value) == (
        f"config file {str(path)!r} is not UTF-8: byte 0xe9 at offset 18 (line 1); "
        "TOML files must be UTF-8, save it with that encoding"
    )


def test_a_non_utf8_byte_on_a_later_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_bytes(b"name = 'x'\n\ndescription = '\xff'\n")  # offset 11 + 1 + 15
    with pytest.raises(ConfigError, match=r"byte 0xff at offset 27 \(line 3\)"):
        ExperimentConfig.from_file(path)


def test_a_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_file(tmp_path)
    assert str(e.value) == f"config file {str(tmp_path)!r} is a directory; expected a TOML file"


def test_an_unreadable_config_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.toml"
    path.write_text("name = 'x'\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # tests may run as root, where chmod does not stop a read
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_file(path)
    assert str(e.value) == f"config file {str(path)!r} cannot be read: Permission denied"


def test_a_missing_config_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_file(path)
    assert str(e.value) == f"config file {str(path)!r} does not exist"


def delta_encodings(spark, path) -> list[dict[str, tuple]]:
    """Each row group of the Delta table at ``path``: {Parquet column path: its encodings}."""
    out = []
    for f in spark.read.format("delta").load(str(path)).inputFiles():
        meta = pq.ParquetFile(unquote(urlparse(f).path)).metadata
        for g in range(meta.num_row_groups):
            out.append({meta.row_group(g).column(i).path_in_schema: meta.row_group(g).column(i).encodings for i in range(meta.num_columns)})
    assert out
    return out


def test_a_delta_write_stores_the_plain_columns_without_a_dictionary_for_that_write_only(spark, tmp_path):
    # Delta ignores a writer's Parquet options: the setting is the session's during the write
    from twotower_features import columns as C

    df = spark.range(5000).select(
        (F.col("id") % 3).cast("string").alias(C.USER_ID),
        F.timestamp_seconds(F.col("id")).alias(C.EVENT_TS),
        (F.col("id") % 7).cast("double").alias(C.TIME_SPENT),  # 7 values: a dictionary would be used
        (F.col("id") % 7).cast("double").alias("other"),  # the control: the same values, another name
        F.lit(DAY).alias(C.DT),
    )

    io.write_delta(df, str(tmp_path / "plain"), partition_by=[C.DT], plain=C.PLAIN_ENCODED)
    for enc in delta_encodings(spark, tmp_path / "plain"):
        assert "PLAIN_DICTIONARY" not in enc[C.EVENT_TS] and "PLAIN_DICTIONARY" not in enc[C.TIME_SPENT], enc
        assert "PLAIN_DICTIONARY" in enc[C.USER_ID] and "PLAIN_DICTIONARY" in enc["other"], enc
    assert spark.conf.get(f"parquet.enable.dictionary#{C.TIME_SPENT}", None) is None  # restored
    io.write_delta(df, str(tmp_path / "default"), partition_by=[C.DT])
    for enc in delta_encodings(spark, tmp_path / "default"):
        assert "PLAIN_DICTIONARY" in enc[C.TIME_SPENT], enc
    assert sorted(spark.read.format("delta").load(str(tmp_path / "plain")).collect()) == sorted(df.collect())


@pytest.mark.parametrize("legacy", [False, True], ids=["standard_lists", "legacy_lists"])
def test_plain_arrays_stores_every_array_columns_elements_without_a_dictionary(spark, tmp_path, legacy):
    """The elements of each array column, in the layout Spark writes (Parquet's standard
    ``list.element``, or with ``spark.sql.parquet.writeLegacyFormat`` ``bag.array``, for elements
    that may be null or not: Delta writes them nullable), lose their dictionary with
    ``plain_arrays``; the scalar columns keep theirs."""
    df = spark.range(5000).select(
        (F.col("id") % 3).cast("string").alias("user_id"),  # the control: 3 values, a dictionary
        F.array((F.col("id") % 5).cast("string"), F.lit("i1")).alias("ids"),  # nullable elements
        F.array(F.lit(0.5).cast("float"), F.lit(0.25).cast("float")).alias("vec"),  # elements never null
        F.lit(DAY).alias("dt"),
    )
    assert df.schema["ids"].dataType.containsNull and not df.schema["vec"].dataType.containsNull
    leaves = {"ids": "ids.bag.array", "vec": "vec.bag.array"} if legacy else {"ids": "ids.list.element", "vec": "vec.list.element"}

    spark.conf.set("spark.sql.parquet.writeLegacyFormat", str(legacy).lower())
    try:
        io.write_delta(df, str(tmp_path / "plain"), partition_by=["dt"], plain_arrays=True)
        assert not [k for k in spark.conf.getAll if k.startswith("parquet.enable.dictionary")]  # restored
        io.write_delta(df, str(tmp_path / "default"), partition_by=["dt"])
    finally:
        spark.conf.unset("spark.sql.parquet.writeLegacyFormat")
    for enc in delta_encodings(spark, tmp_path / "plain"):
        assert set(leaves.values()) <= set(enc), enc
        assert all("PLAIN_DICTIONARY" not in enc[p] for p in leaves.values()), enc
        assert "PLAIN_DICTIONARY" in enc["user_id"], enc
    for enc in delta_encodings(spark, tmp_path / "default"):
        assert all("PLAIN_DICTIONARY" in enc[p] for p in leaves.values()), enc
    assert sorted(spark.read.format("delta").load(str(tmp_path / "plain")).collect()) == sorted(df.collect())
