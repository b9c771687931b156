"""The Spark writer: a DataFrame -> sharded TFRecord files, published atomically.

``write_tfrecords(df, out_dir, columns, num_shards=...)`` encodes and frames each Spark task's
Arrow batches inside ``df.mapInArrow`` (``encode.encode_batch``, ``framing.frame_records``),
streams them to a staging file per task, then names the shards, writes ``_SUCCESS`` and swaps
the new folder in (see there).
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any, Iterator, Sequence

import pyarrow as pa
from pyarrow import fs as pafs

from .. import faults
from ..spec import Column
from .encode import TFRecordError, check_columns_present, encode_batch
from .framing import frame_records

__all__ = ["write_tfrecords", "shard_name", "SUCCESS_FILE"]

SUCCESS_FILE = "_SUCCESS"


def shard_name(partition: int, num_shards: int, prefix: str = "part") -> str:
    """The published file name of shard ``partition``: ``<prefix>-00002-of-00004.tfrecord``."""
    return f"{prefix}-{partition:05d}-of-{num_shards:05d}.tfrecord"


def _resolve(uri: str):
    """(pyarrow FileSystem, path inside it, URI to hand to executors) for a path or URI."""
    if "://" not in uri:
        uri = os.path.abspath(uri)
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path.rstrip("/") or "/", uri.rstrip("/")


def _join_uri(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts)


def _spark_type_ok(col: Column, dt) -> bool:
    from pyspark.sql import types as T

    if col.shape:
        if not isinstance(dt, T.ArrayType):
            return False
        dt = dt.elementType
    if col.dtype == "string":
        return isinstance(dt, (T.StringType, T.BinaryType))
    if col.dtype == "float32":
        return isinstance(dt, (T.FloatType, T.DoubleType, T.DecimalType, T.ByteType, T.ShortType, T.IntegerType, T.LongType))
    return isinstance(dt, (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.BooleanType, T.TimestampType, T.TimestampNTZType))


_RESULT_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("attempt", pa.int64()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
    ]
)
_RESULT_DDL = "partition int, attempt long, path string, rows long, bytes long"


def _shard_writer(staging_uri: str, columns: list[Column]):
    """The mapInArrow function: encode the task's batches and stream them to one staging file."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        partition, attempt = ctx.partitionId(), ctx.taskAttemptId()
        filesystem, staging = pafs.FileSystem.from_uri(staging_uri)
        path = f"{staging.rstrip('/')}/part-{partition}-attempt-{attempt}.tfrecord"
        rows = nbytes = 0
        try:
            with filesystem.open_output_stream(path) as out:
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    body = frame_records(encode_batch(batch, columns))
                    out.write(body)
                    rows += batch.num_rows
                    nbytes += len(body)
        except BaseException:
            try:
                filesystem.delete_file(path)
            except OSError:
                pass
            raise
        yield pa.RecordBatch.from_pylist(
            [{"partition": partition, "attempt": attempt, "path": _join_uri(staging_uri, posixpath.basename(path)), "rows": rows, "bytes": nbytes}],
            schema=_RESULT_SCHEMA,
        )

    return write


def _siblings(filesystem, path: str, marker: str) -> list[str]:
    parent, base = posixpath.split(path)
    infos = filesystem.get_file_info(pafs.FileSelector(parent or "/", allow_not_found=True))
    return sorted(i.path for i in infos if posixpath.basename(i.path).startswith(f"{base}{marker}") and i.type == pafs.FileType.Directory)


def _exists(filesystem, path: str) -> bool:
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _recover_and_clean(filesystem, path: str) -> None:
    """Undo what a killed run left: restore a previous output moved aside, drop tmp folders."""
    olds = _siblings(filesystem, path, ".old-")
    if not _exists(filesystem, path):
        # killed between "move old away" and "move new in": the old output is still whole
        complete = [o for o in olds if _exists(filesystem, posixpath.join(o, SUCCESS_FILE))]
        if complete:
            filesystem.move(complete[-1], path)
            olds.remove(complete[-1])
    for p in olds + _siblings(filesystem, path, ".tmp-"):
        filesystem.delete_dir(p)


def write_tfrecords(
    df,
    out_dir: str,
    columns: Sequence[Column],
    *,
    num_shards: int,
    prefix: str = "part",
    partition_by: Sequence[str] | None = None,
    sort_by: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``df`` as ``num_shards`` TFRecord files of ``tf.train.Example`` into ``out_dir``.

    ``out_dir`` is a local path or a URI that ``pyarrow.fs`` understands (``hdfs://``,
    ``s3://``, ...); on a cluster it must be storage that every executor and the driver see.
    ``df`` must hold every column of ``columns`` (extra columns are dropped first). Rows are
    spread over the shards round-robin, or with ``partition_by`` by a hash of those columns (all
    rows of a key in one shard, e.g. a user's impressions). With ``sort_by`` (columns that are a
    unique key) rows go to shards by a hash of the key (of ``partition_by`` when both are given)
    and are sorted by it within each shard, so the files are the same, byte for byte, on every
    run. Each Spark task encodes its Arrow batches and streams them into a staging file (Spark's
    Python workers import ``encode`` and ``framing``, never TensorFlow); the driver then names
    the shards ``<prefix>-00000-of-00004.tfrecord`` (empty shards are written too, so the count
    is stable), writes ``_SUCCESS`` (JSON: rows, shards, bytes, rows per shard) and publishes.

    Publication is atomic for readers: everything is written into a fresh sibling folder
    ``<out_dir>.tmp-<uuid>``, then the previous output is renamed to ``<out_dir>.old-<uuid>``,
    the new folder renamed to ``out_dir`` and the old one deleted. A failed run deletes its tmp
    folder and leaves the previous output as it was; a run killed outright leaves siblings that
    the next run cleans (restoring the previous output if it was killed between the two
    renames). Between the two renames ``out_dir`` is briefly absent, never partial. One writer
    per ``out_dir`` at a time. The swap renames folders, which local disks and HDFS do; on an
    object store without folder rename (S3 may be one; not tested) the swap step fails, the tmp
    folder is removed and the previous output stays.

    Staging files are named ``part-<partition>-attempt-<task attempt id>.tfrecord`` (Spark's
    app-wide unique task attempt id, so retried or speculative attempts never share a file); the
    driver publishes the one attempt per partition that Spark reports as successful.

    Returns ``{"rows", "shards", "bytes", "paths", "shard_rows", "shard_bytes"}``: paths of the
    published shards, in order, and the records and bytes of each, in the same order.
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if not isinstance(prefix, str) or not prefix or "/" in prefix:
        raise ValueError(f"prefix must be a non-empty file name prefix without '/', got {prefix!r}")
    columns = list(columns)
    if not columns:
        raise TFRecordError("columns must name at least one feature spec column")
    check_columns_present(df.columns, columns, what="the DataFrame")
    schema = {f.name: f.dataType for f in df.schema.fields}
    for col in columns:
        if not _spark_type_ok(col, schema[col.name]):
            raise TFRecordError(
                f"column {col.name!r} has Spark type {schema[col.name].simpleString()}, which cannot be written as "
                f"feature spec dtype {col.dtype} shape {list(col.shape)}"
            )
    part_cols = list(partition_by or [])
    missing = [c for c in part_cols if c not in df.columns]
    if missing:
        raise ValueError(f"partition_by column(s) {missing} are not in the DataFrame")

    filesystem, path, uri = _resolve(out_dir)
    _recover_and_clean(filesystem, path)
    run = uuid.uuid4().hex
    tmp_path, tmp_uri = f"{path}.tmp-{run}", f"{uri}.tmp-{run}"
    staging_path = posixpath.join(tmp_path, f"_staging-{run}")
    staging_uri = _join_uri(tmp_uri, f"_staging-{run}")
    old_path = f"{path}.old-{run}"
    filesystem.create_dir(staging_path, recursive=True)
    try:
        from pyspark.sql import functions as F

        def quoted(name: str):
            return F.col("`" + name.replace("`", "``") + "`")

        names = [c.name for c in columns]
        keep = names + [c for c in dict.fromkeys([*part_cols, *(sort_by or ())]) if c not in names]
        selected = df.select(*map(quoted, keep))
        if part_cols or sort_by:
            # hash partitioning is a function of the row, so every run puts a row in the same shard
            selected = selected.repartition(num_shards, *map(quoted, part_cols or sort_by))
        else:
            selected = selected.repartition(num_shards)
        if sort_by:
            selected = selected.sortWithinPartitions(*map(quoted, sort_by))
        selected = selected.select(*map(quoted, names))
        results = selected.mapInArrow(_shard_writer(staging_uri, columns), _RESULT_DDL).collect()

        by_partition: dict[int, Any] = {}
        for r in results:
            by_partition.setdefault(int(r["partition"]), r)
        shard_rows: list[int] = []
        shard_bytes: list[int] = []
        paths: list[str] = []
        total_bytes = 0
        for p in range(num_shards):
            name = shard_name(p, num_shards, prefix)
            dest = posixpath.join(tmp_path, name)
            r = by_partition.get(p)
            if r is None:  # Spark ran no task for an empty partition: the shard is empty
                with filesystem.open_output_stream(dest):
                    pass
                shard_rows.append(0)
                shard_bytes.append(0)
            else:
                src = posixpath.join(staging_path, posixpath.basename(r["path"]))
                filesystem.move(src, dest)
                shard_rows.append(int(r["rows"]))
                shard_bytes.append(int(r["bytes"]))
                total_bytes += int(r["bytes"])
            paths.append(_join_uri(uri, name))
        rows = sum(shard_rows)
        filesystem.delete_dir(staging_path)
        with filesystem.open_output_stream(posixpath.join(tmp_path, SUCCESS_FILE)) as f:
            f.write(json.dumps({"rows": rows, "shards": num_shards, "bytes": total_bytes, "shard_rows": shard_rows}).encode())

        faults.driver_checkpoint("kill_driver_before_tfrecord_commit", posixpath.basename(path))  # tests only
        had_old = _exists(filesystem, path)
        if had_old:
            filesystem.move(path, old_path)
        filesystem.move(tmp_path, path)
    except BaseException:
        try:
            if _exists(filesystem, tmp_path):
                filesystem.delete_dir(tmp_path)
            if _exists(filesystem, old_path) and not _exists(filesystem, path):
                filesystem.move(old_path, path)  # the swap failed half-way: put the previous output back
        except OSError:
            pass
        raise
    if had_old:
        try:
            filesystem.delete_dir(old_path)
        except OSError:
            pass  # published already; the next run deletes the leftover
    return {"rows": rows, "shards": num_shards, "bytes": total_bytes, "paths": paths, "shard_rows": shard_rows, "shard_bytes": shard_bytes}


