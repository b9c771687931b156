"""Production runs: the stage chain for one date (nightly) and for a range of dates (backfill).

The run for date D is the experiment with `window.validation_date = D`: the train window is the
`train_days` days before D, D is the validation day. Its outputs form one *snapshot*, a folder
with the layout of `twotower features --output`, published under the output root:

    ROOT/D                      -> .snapshots/D/<build>   the published snapshot (a symbolic link)
    ROOT/.snapshots/D/<build>/  one build: tables/, artifacts/, tfrecords/, manifest.json, ...
                   _stages/<stage>.json   completeness marker: fingerprint, report, conservation
                   _SUCCESS               the build is complete (written just before publishing)
    ROOT/.locks/D.lock          the date's exclusive lock (see lock.py)
    ROOT/_nightly/D.json        the record of the last run for D; _nightly/D/<run>.json all runs

A snapshot is written once and never modified after it is published; a rerun builds a new one
and swaps the link with one `rename` (atomic on POSIX), so a reader that opens ROOT/D sees the
old snapshot or the new one, never a mix, and the previous snapshot stays readable until the
next publish. A failed run leaves the published snapshot as it was.

Skipping: each stage has a fingerprint, its stage key (``fingerprints.stage_keys``, the key
experiment stage reuse uses too): the upstream key, the config sections the stage reads, the
package version, and the inputs it reads for D's dates (data files of Delta/Parquet tables, or a
content hash of PostgreSQL tables). A stage whose marker in the published snapshot (or in an
unfinished build) has the same fingerprint is complete and is not run again; the first stage
whose fingerprint differs and every stage after it are run. A new day landing in a
`dt`-partitioned table does not change an older date's fingerprint.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import SparkSession

from twotower_features import io
from twotower_features.config import ExperimentConfig
from twotower_features.errors import UserError
from twotower_features.fingerprint import input_fingerprints
from twotower_features.validate import conservation

from .fingerprints import stage_keys
from .lock import ExclusiveLock, LockBusy
from .stages import BY_NAME, NAMES, run_stage

SNAPSHOTS = ".snapshots"
LOCKS = ".locks"
RECORDS = "_nightly"
SUCCESS = "_SUCCESS"
MARKERS = "_stages"


class NightlyError(UserError):
    """A nightly/backfill run failed; the published snapshot of the date is unchanged."""


def for_date(cfg: ExperimentConfig, day: _dt.date) -> ExperimentConfig:
    """The experiment with D as validation day (train window: the `train_days` days before D)."""
    return dataclasses.replace(cfg, window=dataclasses.replace(cfg.window, validation_date=day))


def date_range(start: _dt.date, end: _dt.date) -> list[_dt.date]:
    if end < start:
        raise ValueError(f"--end ({end}) must not be before --start ({start})")
    return [start + _dt.timedelta(days=k) for k in range((end - start).days + 1)]


# ------------------------------------------------------------------------------ layout
def published_path(root: str | Path, day: _dt.date) -> Path:
    return Path(root) / day.isoformat()


def _snapshots(root: str | Path, day: _dt.date) -> Path:
    return Path(root) / SNAPSHOTS / day.isoformat()


def published_snapshot(root: str | Path, day: _dt.date) -> Path | None:
    """The folder the date's link points to, or None when nothing is published for it."""
    link = published_path(root, day)
    if not link.is_symlink():
        if link.exists():
            raise NightlyError(f"{link} exists but is not a link to a snapshot: it was not written by `twotower nightly`; move it away")
        return None
    target = link.resolve()
    return target if (target / SUCCESS).is_file() else None


def _markers(snapshot: Path | None) -> dict[str, dict[str, Any]]:
    if snapshot is None or not (snapshot / MARKERS).is_dir():
        return {}
    out = {}
    for s in NAMES:
        f = snapshot / MARKERS / f"{s}.json"
        if f.is_file():
            out[s] = json.loads(f.read_text())
    return out


def _unfinished_builds(root: str | Path, day: _dt.date) -> list[Path]:
    d = _snapshots(root, day)
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if p.is_dir() and not (p / SUCCESS).exists()), key=lambda p: p.name)


def _new_id() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


# ------------------------------------------------------------------------------ one date
def _copy_stages(src: Path, dst: Path, keep: tuple[str, ...]) -> None:
    """Seed a build with a published snapshot's outputs; only the markers of `keep` stages stay valid."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(SUCCESS, MARKERS))
    (dst / MARKERS).mkdir(parents=True, exist_ok=True)
    for s in keep:
        shutil.copy2(src / MARKERS / f"{s}.json", dst / MARKERS / f"{s}.json")


def _publish(root: Path, day: _dt.date, build: Path, keep_previous: Path | None) -> None:
    link = published_path(root, day)
    tmp = root / f".{day.isoformat()}.link-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(build, root), tmp)
    os.replace(tmp, link)  # atomic: readers see the old target or the new one
    # keep the new snapshot and the one just replaced (a reader may still be in it); drop older ones
    keep = {build.name, keep_previous.name if keep_previous is not None else build.name}
    for p in _snapshots(root, day).iterdir():
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _leading(markers: dict[str, dict[str, Any]], fps: dict[str, str], stages: tuple[str, ...]) -> int:
    """How many of `stages`, in order, have a marker with the current fingerprint."""
    k = 0
    for s in stages:
        if markers.get(s, {}).get("fingerprint") != fps[s]:
            break
        k += 1
    return k


def _save_record(root: Path, record: dict[str, Any]) -> None:
    day = record["date"]
    io.write_json_atomic(root / RECORDS / day / f"{record['run_id']}.json", record)
    io.write_json_atomic(root / RECORDS / f"{day}.json", record)


def run_date(
    spark: SparkSession | Callable[[], SparkSession],
    cfg: ExperimentConfig,
    input_dir: str,
    root: str,
    day: _dt.date,
    *,
    until: str = NAMES[-1],
    force: bool = False,
    dry_run: bool = False,
    lock_wait_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Bring the outputs of `day` up to date through stage `until`; publish when the chain is complete.

    ``spark`` is a session or a factory called once a session is needed (after the date's lock
    is taken: a busy date fails without starting one). Returns the run record (also saved under
    ROOT/_nightly/). `force` rebuilds every stage;
    `dry_run` only reports which stages would run. Raises NightlyError (the published snapshot
    unchanged) when a stage fails, and LockBusy when another run holds the date.
    """
    get_spark = (lambda: spark) if isinstance(spark, SparkSession) else spark
    if until not in NAMES:
        raise ValueError(f"unknown stage {until!r}; expected one of {list(NAMES)}")
    stages = NAMES[: NAMES.index(until) + 1]
    rootp = Path(root)
    cfg_d = for_date(cfg, day)
    run_id = _new_id()
    say = lambda msg: log(f"[nightly {day}] {msg}")  # noqa: E731
    record: dict[str, Any] = {
        "date": day.isoformat(), "run_id": run_id, "experiment": cfg.name, "until": until, "force": force, "dry_run": dry_run,
        "window": {"train_start": str(cfg_d.window.train_start), "train_end": str(cfg_d.window.train_end), "validation": str(day)},
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "stages": {},
    }
    with ExclusiveLock(rootp / LOCKS / f"{day.isoformat()}.lock", run_id=run_id, wait_s=lock_wait_s) as lock:
        record["lock"] = {"generation": lock.generation, "previous_holder_died": lock.previous_holder_died}
        if lock.previous_holder_died:
            say(f"the previous holder of the lock died without releasing it: {lock.previous_holder_died}")
        inputs = input_fingerprints(input_dir, cfg_d, spark=get_spark)
        fps = stage_keys(cfg_d, inputs)
        record["inputs"], record["fingerprints"] = inputs, fps
        pub = published_snapshot(rootp, day)
        pub_markers = _markers(pub)
        record["based_on"] = pub.name if pub else None
        k_pub = 0 if force else _leading(pub_markers, fps, stages)
        if k_pub == len(stages):
            for s in stages:
                record["stages"][s] = {"action": "skipped", "why": "published output complete; inputs and config unchanged",
                                       "snapshot": pub.name, "conservation": pub_markers[s].get("conservation")}
                say(f"{s}: up to date in snapshot {pub.name}, skipped")
            record["status"] = "up_to_date"
            record["published"] = pub.name
            if not dry_run:
                _save_record(rootp, record)
            return record

        # an unfinished build (an earlier stage-by-stage run, or a failed one) may be resumed
        builds = _unfinished_builds(rootp, day)
        build = builds[-1] if builds else None
        k_build = 0 if (force or build is None) else _leading(_markers(build), fps, stages)
        if build is not None and k_build >= k_pub and k_build > 0:
            start, origin = k_build, f"unfinished build {build.name}"
        elif k_pub > 0:
            start, origin, build = k_pub, f"published snapshot {pub.name}", None
        else:
            start, origin, build = 0, None, None
        record["plan"] = {"reuse": list(stages[:start]), "run": list(stages[start:]), "from": origin}
        say(f"run {list(stages[start:])}" + (f", reuse {list(stages[:start])} from {origin}" if start else ""))
        if dry_run:
            record["status"] = "dry_run"
            return record

        for b in builds:
            if b != build:  # leftovers of failed runs: this run holds the lock, nobody else uses them
                shutil.rmtree(b, ignore_errors=True)
        if build is None:
            build = _snapshots(rootp, day) / _new_id()
            if start > 0:
                _copy_stages(pub, build, stages[:start])
        else:
            for s in NAMES[start:]:  # markers of stale stages
                (build / MARKERS / f"{s}.json").unlink(missing_ok=True)
        record["build"] = build.name
        for s in stages[:start]:
            m = _markers(build)[s]
            record["stages"][s] = {"action": "reused", "from": origin, "conservation": m.get("conservation")}

        for s in stages[start:]:
            say(f"== stage {s}")
            try:
                rep = run_stage(BY_NAME[s], get_spark(), cfg_d, input_dir, str(build), log).to_dict()
                cons = conservation(rep)
                if not cons["holds"]:
                    raise NightlyError(f"stage {s}: rows are not conserved: {cons}")
            except Exception as e:
                record["stages"][s] = {"action": "failed", "error": f"{type(e).__name__}: {e}"}
                record["status"] = "failed"
                record["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                _save_record(rootp, record)
                if build.exists() and not any(build.iterdir()):
                    build.rmdir()
                kept = f"the published snapshot ({pub.name}) is unchanged" if pub else "nothing is published for this date"
                raise NightlyError(f"{day}: stage {s} failed: {type(e).__name__}: {e}; {kept}") from e
            marker = {"stage": s, "fingerprint": fps[s], "run_id": run_id,
                      "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                      "report": rep, "conservation": cons}
            io.write_json_atomic(build / MARKERS / f"{s}.json", marker)
            record["stages"][s] = {"action": "ran", "conservation": cons}
            say(f"{s}: rows in {cons['rows_in']:,} = out {cons['rows_out']:,} + quarantined {cons['quarantined']:,} + filtered {sum(cons['filtered'].values()):,}")

        if "prepare" in record["stages"] and record["stages"]["prepare"].get("conservation"):
            c = record["stages"]["prepare"]["conservation"]
            record["quarantine"] = {"rows": c["quarantined"], "share": round(c["quarantined"] / max(c["rows_in"], 1), 6)}
        if len(stages) == len(NAMES):
            io.write_json_atomic(build / SUCCESS, {"run_id": run_id, "date": day.isoformat(), "fingerprints": fps})
            _publish(rootp, day, build, keep_previous=pub)
            record["published"] = build.name
            record["status"] = "published"
            say(f"published {published_path(rootp, day)} -> {build.name}")
        else:
            record["status"] = "built_through_" + until
        record["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        _save_record(rootp, record)
    return record


def backfill(
    spark: SparkSession | Callable[[], SparkSession],
    cfg: ExperimentConfig,
    input_dir: str,
    root: str,
    start: _dt.date,
    end: _dt.date,
    *,
    keep_going: bool = False,
    log: Callable[[str], None] = print,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """`run_date` for every date from `start` to `end` (inclusive), oldest first.

    Each date is independent (its own lock, fingerprints and snapshot), so a backfill equals
    the nightly runs of those dates. Raises NightlyError at the first failure (LockBusy as it is:
    another run holds that date); with `keep_going` it runs every date and returns the records,
    failed dates with status "failed".
    """
    records = []
    for day in date_range(start, end):
        try:
            records.append(run_date(spark, cfg, input_dir, root, day, log=log, **kwargs))
        except Exception as e:
            if isinstance(e, LockBusy) and not keep_going:
                raise
            if not keep_going:
                raise NightlyError(f"backfill {start}..{end} stopped at {day} ({len(records)} dates done): {e}") from e
            log(f"[backfill] {day} failed, going on: {e}")
            records.append({"date": day.isoformat(), "status": "failed", "error": f"{type(e).__name__}: {e}"})
    return records
