"""What identifies the rows a run reads from each input table: one fingerprint for every caller.

``table_fingerprint(path, dates)`` hashes the data files behind the rows of ``dates`` (all files
when the table has no ``dt`` partitions), without a Spark session:

- **Delta**: the live files of the latest version, from the transaction log (the last checkpoint
  and the JSON commits after it): relative path, size and deletion vector of each. Delta never
  rewrites a data file in place, so these identify its rows. A log this reader does not know
  (a v2 checkpoint, commits removed with no checkpoint) falls back to the table's latest version:
  coarser (any commit changes it), never wrong.
- **Parquet**: file names, sizes and modification times (nanoseconds), pruned by ``dt=``
  partition folders.

Only the files of the dates read count, so a new day landing in a ``dt``-partitioned table does
not change an older date's fingerprint. The path is recorded but is not part of the fingerprint:
a moved input folder is not a change. ``input_fingerprints`` applies it to every input table of
a run (statistics read from PostgreSQL get a content hash computed by Spark, see stats_source).
The feature manifest, experiment stage reuse and nightly stage skipping all use this module.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import columns as C
from .io import data_files

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from .config import ExperimentConfig

def _in_range(day: str | None, dates: tuple[_dt.date, _dt.date] | None) -> bool:
    if dates is None or day is None:
        return True
    try:
        d = _dt.date.fromisoformat(day)
    except ValueError:
        return True  # an unparseable partition value is kept: over-inclusive, never stale
    return dates[0] <= d <= dates[1]


def _delta_entries(path: Path, dates: tuple[_dt.date, _dt.date] | None) -> list[str] | None:
    """Entries of the live data files of a Delta table, or None when the log layout is unknown."""
    log = path / "_delta_log"
    live: dict[str, str] = {}
    part_of: dict[str, str | None] = {}
    start = 0
    last = log / "_last_checkpoint"
    if last.is_file():
        info = json.loads(last.read_text())
        if "v2Checkpoint" in info:
            return None
        version, parts = int(info["version"]), info.get("parts")
        names = (
            [f"{version:020d}.checkpoint.parquet"] if not parts
            else [f"{version:020d}.checkpoint.{i:010d}.{int(parts):010d}.parquet" for i in range(1, int(parts) + 1)]
        )
        if not all((log / n).is_file() for n in names):
            return None
        import pyarrow.parquet as pq

        for n in names:
            for add in pq.read_table(log / n, columns=["add"]).column("add").to_pylist():
                if add:
                    _take_add(add, live, part_of)
        start = version + 1
    commits = [v for v in _commit_versions(log) if v >= start]
    if start == 0 and (not commits or commits[0] != 0):
        return None
    for expected, v in enumerate(commits, start=start):
        if v != expected:  # a gap: commits cleaned up without a checkpoint we can read
            return None
        for line in (log / f"{v:020d}.json").read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if action.get("add"):
                _take_add(action["add"], live, part_of)
            elif action.get("remove"):
                live.pop(action["remove"]["path"], None)
    return sorted(e for p, e in live.items() if _in_range(part_of.get(p), dates))


def _take_add(add: dict[str, Any], live: dict[str, str], part_of: dict[str, str | None]) -> None:
    values = add.get("partitionValues") or {}
    if isinstance(values, list):  # a map read from a checkpoint: [(key, value), ...]
        values = dict(values)
    dv = add.get("deletionVector")
    dv_id = f"{dv.get('storageType')}{dv.get('pathOrInlineDv')}@{dv.get('offset')}" if dv else ""
    live[add["path"]] = f"{add['path']}:{add.get('size')}:{dv_id}"
    part_of[add["path"]] = values.get(C.DT)


def _commit_versions(log: Path) -> list[int]:
    """The versions of the JSON commits in a ``_delta_log`` (``00000000000000000012.json``), sorted."""
    return sorted(int(p.name[:20]) for p in log.glob("*.json") if p.name[:20].isdigit() and len(p.name) == 25)


def _delta_version(path: Path) -> int:
    commits = _commit_versions(path / "_delta_log")
    return commits[-1] if commits else -1


def _parquet_entries(root: Path, dates: tuple[_dt.date, _dt.date] | None) -> list[str]:
    """The files Spark reads as the table's data (``io.data_files``), in the ``dt=`` partitions of ``dates``."""
    out = []
    for f in data_files(root):
        rel = os.path.relpath(f, root)
        part = next((p for p in Path(rel).parts[:-1] if p.startswith(f"{C.DT}=")), None)
        if part is not None and not _in_range(part.split("=", 1)[1], dates):
            continue
        st = f.stat()
        out.append(f"{rel}:{st.st_size}:{st.st_mtime_ns}")
    return sorted(out)


def _digest(entries: list[str]) -> str:
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def table_fingerprint(path: str | Path, *, dates: tuple[_dt.date, _dt.date] | None = None) -> dict[str, Any]:
    """``{"path", "format", "files", "fingerprint"}`` of a Delta or Parquet table for ``dates``
    (first, last; inclusive), or ``{"path", "present": False}`` when it does not exist."""
    root = Path(path)
    if not root.exists():
        return {"path": str(path), "present": False}
    if (root / "_delta_log").is_dir():
        entries = _delta_entries(root, dates)
        if entries is None:
            return {"path": str(path), "format": "delta", "version": _delta_version(root)}
        return {"path": str(path), "format": "delta", "files": len(entries), "fingerprint": _digest(entries)}
    entries = _parquet_entries(root, dates)
    return {"path": str(path), "format": "parquet", "files": len(entries), "fingerprint": _digest(entries)}


def table_dates(cfg: ExperimentConfig) -> dict[str, tuple[_dt.date, _dt.date] | None]:
    """The days of each input table a run of ``cfg.window`` reads (None: the whole table)."""
    from .stats_source import stats_dates

    w = cfg.window
    sd = stats_dates(w.validation_date, w.train_days)
    return {C.INTERACTIONS: (w.train_start, w.validation_date), C.ITEMS: None, C.USERS: None, **{t: sd for t in C.STATS_TABLES}}


def input_fingerprints(input_dir: str | Path, cfg: ExperimentConfig, *, spark: Callable[[], SparkSession] | None = None) -> dict[str, dict[str, Any]]:
    """The fingerprint of every input table for the dates a run of ``cfg`` reads. ``spark`` (a
    factory, called only when needed) reads statistics kept in PostgreSQL."""
    out: dict[str, dict[str, Any]] = {}
    for name, dates in table_dates(cfg).items():
        if name in C.STATS_TABLES and cfg.stats.source == "postgres":
            from .stats_source import postgres_fingerprint

            if spark is None:
                raise ValueError(f"statistics table {name} is read from PostgreSQL: its fingerprint needs a Spark session")
            out[name] = postgres_fingerprint(spark(), name, cfg.stats, dates)
        else:
            out[name] = table_fingerprint(Path(input_dir, name).resolve(), dates=dates)
    return out
