"""Reading inputs (Delta or Parquet) and writing outputs atomically and idempotently.

The one home of atomic writes: ``write_json_atomic`` and ``write_parquet_atomic`` write a
temporary file next to the target and rename it into place, so a reader sees the old file or the
new one, never a partial one. Importing this module does not import Spark (the model package
uses the writers).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from . import faults
from .errors import UserError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import Column, DataFrame, SparkSession

# Spark refuses Parquet's TIMESTAMP(NANOS) unless this (SQLConf, since 3.2.4) reads it as a long
NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
INFER_TIMESTAMP_NTZ = "spark.sql.parquet.inferTimestampNTZ.enabled"
_DELTA_LOG_ENTRY = re.compile(r"^\d{20}\.")  # a commit (00000000000000000000.json) or a checkpoint
_INPUT_FIX = "expected a Delta table or a folder of Parquet files (`twotower generate --out DIR` writes sample input tables)"


class InputError(UserError, ValueError):
    """An input table is missing, empty or unreadable; the message names its path and the fix."""


def is_delta(path: str) -> bool:
    return Path(path, "_delta_log").is_dir()


def table_path(root: str, name: str) -> str:
    return str(Path(root) / name)


def _local_path(path: str) -> Path | None:
    """The local path of ``path`` (a plain path or a ``file:`` URI); None for a remote store."""
    if path.startswith("file:"):
        return Path(urlparse(path).path)
    return None if "://" in path else Path(path)


def _hidden(name: str) -> bool:
    """Spark's rule for names a file source skips (``_SUCCESS``, ``.crc``; not ``_col=v`` folders)."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def data_files(path: str | Path) -> list[Path]:
    """The files Spark would read as the data of the Parquet table at ``path``, sorted as Spark
    sorts them for schema inference (by full path). Hidden names (``_``, ``.``) are skipped,
    files and folders alike; a plain file is its own data file. Lists the folder only: no Spark."""
    path = Path(path)
    if path.is_file():
        return [path]
    found: list[Path] = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        found.extend(Path(root, f) for f in files if not _hidden(f))
    return sorted(found, key=str)


def nanos_timestamp_columns(table: str, data_file: Path) -> dict[str, bool]:
    """The top-level TIMESTAMP(NANOS) columns of a Parquet file, from its footer (pyarrow, no
    Spark): ``{column: isAdjustedToUTC}``. pandas writes ``datetime64[ns]`` columns so.

    Raises ``InputError`` when the file is not Parquet, or when such a timestamp sits inside a
    struct, list or map (Spark cannot read it; the message says how to rewrite the table).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(data_file)
    except (pa.ArrowException, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"input table {table}: {data_file} is not a readable Parquet file ({reason}); {_INPUT_FIX}") from None
    flat = {f.name for f in pf.schema_arrow if not pa.types.is_nested(f.type)}
    out: dict[str, bool] = {}
    schema = pf.schema
    for i in range(len(schema)):
        col = schema.column(i)
        if col.logical_type.type != "TIMESTAMP":
            continue
        logical = json.loads(col.logical_type.to_json())
        if logical.get("timeUnit") != "nanoseconds":
            continue
        if col.path not in flat:
            raise InputError(
                f"input table {table}: column '{col.path}' is a nanosecond timestamp inside a nested column, which Spark "
                "cannot read; rewrite the table with microseconds, e.g. pandas "
                '`df.to_parquet(..., coerce_timestamps="us", allow_truncated_timestamps=True)`'
            )
        out[col.path] = bool(logical.get("isAdjustedToUTC"))
    return out


def _check_exists(path: str, local: Path) -> None:
    """Refuses an existing input that holds nothing to read (no Spark job runs)."""
    if is_delta(str(local)):
        if not any(_DELTA_LOG_ENTRY.match(p.name) for p in (local / "_delta_log").iterdir()):
            raise InputError(f"input table {path} has a _delta_log without any commit: {_INPUT_FIX}")
    elif not data_files(local):
        raise InputError(f"input table {path} holds no data files: {_INPUT_FIX}")


@contextmanager
def _sql_conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """``key`` set to ``value`` in the session while the block runs, then restored (or unset)."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def _micros_from_nanos(name: str, adjusted_to_utc: bool, ntz: bool) -> Column:
    """A nanosecond count (the long Spark reads with ``nanosAsLong``) as the timestamp Spark gives
    for the same column stored in microseconds: ``timestamp`` when adjusted to UTC (or NTZ
    inference is off), else ``timestamp_ntz``. Exact to the microsecond; the nanoseconds below it
    are dropped rounding down, towards the past, as numpy's ``astype("datetime64[us]")`` does
    (pyarrow's ``coerce_timestamps="us"`` rounds towards 1970: the two differ before 1970 only)."""
    from pyspark.sql import functions as F

    q = "`" + name.replace("`", "``") + "`"
    micros = f"({q} - pmod({q}, 1000)) div 1000"  # floor division on longs: no double rounding
    if adjusted_to_utc or not ntz:
        return F.expr(f"timestamp_micros({micros})")
    return F.expr(f"timestampadd(MICROSECOND, {micros}, TIMESTAMP_NTZ'1970-01-01 00:00:00')")


def check_input_table(path: str, *, required: bool = True) -> bool:
    """Whether the input table at ``path`` is there to read (False: optional and absent), after
    refusing a missing required table or an empty one with ``InputError``; no Spark."""
    local = _local_path(path)
    if local is None:
        return True
    if not local.exists():
        if required:
            raise InputError(f"input table {path} does not exist: {_INPUT_FIX}")
        return False
    _check_exists(path, local)
    return True


def read_table(spark: SparkSession, path: str, *, required: bool = True) -> DataFrame | None:
    """A Delta table when `path` holds a `_delta_log`, else Parquet; None if optional and absent.

    A local input is checked before Spark reads it, without a Spark job: a missing table (when
    ``required``), an existing one with no data files (an empty folder, only ``_SUCCESS``; also
    when optional) or an empty ``_delta_log`` raise ``InputError`` naming the path and the fix.
    Remote paths (``s3a://``, ``hdfs://``) go to Spark unchecked.

    **Nanosecond timestamps.** pandas writes ``datetime64[ns]`` columns as Parquet
    TIMESTAMP(NANOS), which Spark refuses (``PARQUET_TYPE_ILLEGAL``). When the footer of the
    table's first data file (the one Spark infers the schema from) holds such top-level columns,
    the table is read with ``spark.sql.legacy.parquet.nanosAsLong=true`` and each of them is
    turned back into a timestamp, exact to the microsecond (nanoseconds below it are dropped).
    The setting is needed only while the DataFrame is created: Spark converts the footer's types
    when it infers the schema, and the scan then reads the columns as the longs of that schema
    whatever the setting is (tests check both Parquet readers). So it is set for this call only
    and restored before it returns; it is session-wide meanwhile, so another thread reading
    Parquet in the same session at that moment would see it too. Not for Delta tables (Delta
    stores microseconds) nor remote paths.
    """
    local = _local_path(path)
    if not check_input_table(path, required=required):
        return None
    if local is None:
        return spark.read.format("delta").load(path) if is_delta(path) else spark.read.parquet(path)
    if is_delta(str(local)):
        return spark.read.format("delta").load(path)
    nanos = nanos_timestamp_columns(path, data_files(local)[0])
    if not nanos:
        return spark.read.parquet(path)
    with _sql_conf(spark, NANOS_AS_LONG, "true"):
        df = spark.read.parquet(path)
    ntz = str(spark.conf.get(INFER_TIMESTAMP_NTZ, "true")).lower() == "true"
    return df.withColumns({c: _micros_from_nanos(c, utc, ntz) for c, utc in nanos.items()})


def write_delta(
    df: DataFrame, path: str, *, partition_by: list[str], replace_where: str | None = None, plain: tuple[str, ...] = (), plain_arrays: bool = False,
) -> None:
    """Write a Delta table; with `replace_where`, a rerun replaces exactly those rows (idempotent).

    Delta commits atomically: a failed write leaves the previous version readable.
    The columns named in `plain` are stored without Parquet's dictionary encoding (for columns
    whose values nearly all differ, where it only costs time); with `plain_arrays`, the elements
    of every array column too. Delta does not pass a writer's options to Parquet, so the setting
    is the session's for the duration of this write.
    """
    df = faults.wrap_delta_write(df, path)  # unchanged unless TWOTOWER_FAULT is set (tests)
    writer = df.write.format("delta").mode("overwrite").option("partitionOverwriteMode", "static")
    if replace_where and is_delta(path):
        writer = writer.option("replaceWhere", replace_where)
    else:
        writer = writer.option("overwriteSchema", "true")
    conf = df.sparkSession.conf
    columns = [c for c in plain if c in df.columns] + (_array_elements(df) if plain_arrays else [])
    keys = [f"parquet.enable.dictionary#{c}" for c in columns]
    before = {k: conf.get(k, None) for k in keys}
    for k in keys:
        conf.set(k, "false")
    try:
        writer.partitionBy(*partition_by).save(path)
    finally:
        for k, v in before.items():
            if v is None:
                conf.unset(k)
            else:
                conf.set(k, v)


def _array_elements(df: DataFrame) -> list[str]:
    """The Parquet paths of the elements of ``df``'s top-level array columns, as Spark writes them
    into a Delta table: ``name.list.element``, or ``name.bag.array`` under
    ``spark.sql.parquet.writeLegacyFormat`` (Delta writes every column nullable, elements too)."""
    from pyspark.sql.types import ArrayType

    legacy = str(df.sparkSession.conf.get("spark.sql.parquet.writeLegacyFormat", "false")).lower() == "true"
    return [f"{f.name}.{'bag.array' if legacy else 'list.element'}" for f in df.schema if isinstance(f.dataType, ArrayType)]


def _temporary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON with sorted keys (``default=str``), renamed into place."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_parquet_atomic(path: str | Path, table: pa.Table) -> Path:
    """One Parquet file from an Arrow table, renamed into place."""
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = _temporary(path)
    try:
        pq.write_table(table, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks of 16 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def ship_file(spark: SparkSession, path: str) -> str:
    """``SparkContext.addFile`` a copy of ``path`` named after its content; return the copy's path.

    A session refuses a second file of the same name from another folder, executors keep added
    files by name, and Python workers may cache what they loaded by path: a content-addressed
    name keeps several experiments, or a rerun after new embeddings, apart in one session. The
    copy lives in the session's temporary folder, deleted when the session stops.
    """
    src = Path(path)
    shipped = Path(spark.sparkContext._temp_dir) / f"{src.stem}-{file_sha256(src)[:16]}{src.suffix}"
    if not shipped.exists():
        tmp = shipped.with_name(f".{shipped.name}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(src, tmp)
        tmp.replace(shipped)
        spark.sparkContext.addFile(str(shipped))
    return str(shipped)
