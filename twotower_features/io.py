"""Reading inputs (Delta or Parquet) and writing outputs atomically and idempotently.

The one home of atomic writes: ``write_json_atomic`` and ``write_parquet_atomic`` write a
temporary file next to the target and rename it into place, so a reader sees the old file or the
new one, never a partial one. Importing this module does not import Spark (the model package
uses the writers).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import faults

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession


def is_delta(path: str) -> bool:
    return Path(path, "_delta_log").is_dir()


def table_path(root: str, name: str) -> str:
    return str(Path(root) / name)


def read_table(spark: SparkSession, path: str, *, required: bool = True) -> DataFrame | None:
    """A Delta table when `path` holds a `_delta_log`, else Parquet; None if optional and absent."""
    if not Path(path).exists() and "://" not in path:
        if required:
            raise FileNotFoundError(f"input table {path!r} does not exist")
        return None
    if is_delta(path):
        return spark.read.format("delta").load(path)
    return spark.read.parquet(path)


def write_delta(df: DataFrame, path: str, *, partition_by: list[str], replace_where: str | None = None) -> None:
    """Write a Delta table; with `replace_where`, a rerun replaces exactly those rows (idempotent).

    Delta commits atomically: a failed write leaves the previous version readable.
    """
    df = faults.wrap_delta_write(df, path)  # unchanged unless TWOTOWER_FAULT is set (tests)
    writer = df.write.format("delta").mode("overwrite").option("partitionOverwriteMode", "static")
    if replace_where and is_delta(path):
        writer = writer.option("replaceWhere", replace_where)
    else:
        writer = writer.option("overwriteSchema", "true")
    writer.partitionBy(*partition_by).save(path)


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


def ship_file(spark: SparkSession, path: str) -> str:
    """``SparkContext.addFile`` a copy of ``path`` named after its content; return the copy's path.

    A session refuses a second file of the same name from another folder, executors keep added
    files by name, and Python workers may cache what they loaded by path: a content-addressed
    name keeps several experiments, or a rerun after new embeddings, apart in one session. The
    copy lives in the session's temporary folder, deleted when the session stops.
    """
    src = Path(path)
    h = hashlib.sha256()
    with open(src, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    shipped = Path(spark.sparkContext._temp_dir) / f"{src.stem}-{h.hexdigest()[:16]}{src.suffix}"
    if not shipped.exists():
        tmp = shipped.with_name(f".{shipped.name}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(src, tmp)
        tmp.replace(shipped)
        spark.sparkContext.addFile(str(shipped))
    return str(shipped)
