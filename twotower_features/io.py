"""Reading inputs (Delta or Parquet) and writing outputs atomically and idempotently."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from . import faults


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


def table_version(spark: SparkSession, path: str) -> dict[str, Any]:
    """What identifies the version of an input: Delta's version, or a hash of Parquet file names/sizes/mtimes."""
    if not Path(path).exists():
        return {"path": path, "present": False}
    if is_delta(path):
        from delta.tables import DeltaTable

        last = DeltaTable.forPath(spark, path).history(1).select("version").collect()[0][0]
        return {"path": path, "format": "delta", "version": int(last)}
    return {"path": path, "format": "parquet", **parquet_fingerprint(path)}


def parquet_fingerprint(path: str | Path) -> dict[str, Any]:
    """`files` and a `fingerprint` of a Parquet folder: the hash of its files' names, sizes, mtimes."""
    h = hashlib.sha256()
    n = 0
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            if f.endswith(".parquet"):
                st = os.stat(os.path.join(root, f))
                h.update(f"{os.path.relpath(os.path.join(root, f), path)}:{st.st_size}:{int(st.st_mtime)}".encode())
                n += 1
    return {"files": n, "fingerprint": h.hexdigest()[:16]}


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


def write_json_atomic(path: str | Path, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    return path


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written folder into place: readers see the old folder or the new one, never a mix."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    if final.exists():
        final.rename(old)
    Path(staging).rename(final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


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
