"""Nightly and backfill: the published snapshot per date, skipping what is complete and unchanged,
identical reruns, backfill = nightly, a day with no data, failures that leave the published
snapshot alone, and the date lock between processes."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from twotower.lock import ExclusiveLock, LockBusy
from twotower.nightly import NightlyError, backfill, published_path, run_date
from twotower.stages import NAMES as STAGES
from twotower_features import columns as C

from .conftest import PREV, D, copy_root, quiet, small_config

REPO = Path(__file__).resolve().parents[2]


def link_target(root: Path, day: dt.date) -> str:
    return os.readlink(published_path(root, day))


def tfrecords(path: Path) -> list[bytes]:
    """The records of TFRecord files (length, crc, data, crc framing), sorted: the set of examples."""
    out = []
    for f in sorted(path.glob("*.tfrecord")):
        raw = f.read_bytes()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            out.append(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
    return sorted(out)


def digest(spark, snap: Path) -> dict[str, object]:
    """Everything a snapshot holds, in a comparable form: table rows sorted, TFRecord records sorted,
    other files by content; run-specific values (times, run ids) left out."""
    d: dict[str, object] = {}
    for name in ("filtered", "examples", "quarantine"):
        p = snap / "tables" / name
        if p.exists():
            df = spark.read.format("delta").load(str(p))
            d[f"tables/{name}"] = sorted(repr(sorted(r.asDict().items())) for r in df.collect())
    for name in ("item_avg_time_spent", "item_filter", "client_filter"):
        d[f"artifacts/{name}"] = sorted(repr(r) for r in pq.read_table(snap / "artifacts" / name).to_pylist())
    for split in ("train", "validation", "catalog"):
        d[f"tfrecords/{split}"] = [hashlib.sha256(r).hexdigest() for r in tfrecords(snap / "tfrecords" / split)]
    for f in sorted(snap.rglob("*")):
        rel = f.relative_to(snap).as_posix()
        if not f.is_file() or rel.startswith(("tables/", "tfrecords/", "_stages/", "_SUCCESS")) or "/item_avg_time_spent/" in rel or "/item_filter/" in rel or "/client_filter/" in rel:
            continue
        if rel == "manifest.json":
            m = json.loads(f.read_text())
            m.pop("created_at")
            d[rel] = m
        elif rel.endswith(".npz"):
            import numpy as np

            with np.load(f) as z:  # the zip entries carry write times: compare the arrays
                d[rel] = {k: z[k].tolist() for k in sorted(z.files)}
        elif rel.startswith("reports/"):
            r = json.loads(f.read_text())
            r.pop("seconds")
            d[rel] = r
        else:
            d[rel] = hashlib.sha256(f.read_bytes()).hexdigest()
    return d


# ------------------------------------------------------------------------------ one nightly
def test_nightly_publishes_one_complete_snapshot_per_date(spark, nightly_root, small_inputs):
    root = nightly_root
    for day in (PREV, D):
        target = link_target(root, day)
        assert target.startswith(f".snapshots/{day}/")
        snap = published_path(root, day).resolve()
        assert (snap / "_SUCCESS").is_file()
        assert sorted(p.stem for p in (snap / "_stages").glob("*.json")) == sorted(STAGES)
        manifest = json.loads((snap / "manifest.json").read_text())
        # the window of date D: validation D, train the 2 days before
        assert manifest["window"] == {"train_start": str(day - dt.timedelta(days=2)), "train_end": str(day - dt.timedelta(days=1)), "validation": str(day)}
        ex = spark.read.format("delta").load(str(snap / "tables" / "examples"))
        days = {(r[C.SPLIT], r[C.DT]) for r in ex.select(C.SPLIT, C.DT).distinct().collect()}
        assert days == {("train", day - dt.timedelta(days=2)), ("train", day - dt.timedelta(days=1)), ("validation", day)}
        record = json.loads((root / "_nightly" / f"{day}.json").read_text())
        assert record["status"] == "published" and record["published"] == Path(target).name
        assert all(record["stages"][s]["action"] == "ran" and record["stages"][s]["conservation"]["holds"] for s in STAGES)
        # rows in = every raw interaction of the 3 days, counted here from the Parquet files directly
        raw = pq.read_table(small_inputs / "interactions").to_pandas()
        raw_dt = raw[C.DT].astype(str)
        expected_in = int(((raw_dt >= str(day - dt.timedelta(days=2))) & (raw_dt <= str(day))).sum())
        cons = record["stages"]["prepare"]["conservation"]
        assert cons["rows_in"] == expected_in
        q = spark.read.format("delta").load(str(snap / "tables" / "quarantine")).count()
        assert cons["quarantined"] == q == record["quarantine"]["rows"] > 0


def test_an_unchanged_rerun_skips_every_stage(spark, nightly_root, small_inputs, tmp_path):
    root = copy_root(nightly_root, tmp_path / "root")
    before = {day: link_target(root, day) for day in (PREV, D)}
    rec = run_date(spark, small_config(), str(small_inputs), str(root), D, log=quiet)
    assert rec["status"] == "up_to_date"
    assert {s: v["action"] for s, v in rec["stages"].items()} == {s: "skipped" for s in STAGES}
    recs = backfill(spark, small_config(), str(small_inputs), str(root), PREV, D, log=quiet)
    assert [r["status"] for r in recs] == ["up_to_date", "up_to_date"]
    assert {day: link_target(root, day) for day in (PREV, D)} == before
    assert sorted(p.name for p in (root / ".snapshots" / str(D)).iterdir()) == [Path(before[D]).name]


def _plan(spark, cfg, inputs, root, day=D) -> tuple[list[str], list[str]] | str:
    rec = run_date(spark, cfg, str(inputs), str(root), day, dry_run=True, log=quiet)
    return "up_to_date" if rec["status"] == "up_to_date" else (rec["plan"]["reuse"], rec["plan"]["run"])


def test_what_reruns_follows_the_changed_input_or_config(spark, nightly_root, small_inputs, tmp_path):
    root = copy_root(nightly_root, tmp_path / "root")
    data = tmp_path / "data"
    shutil.copytree(small_inputs, data)  # copy2 keeps modification times: the same data
    cfg = small_config()
    assert _plan(spark, cfg, data, root) == "up_to_date"
    # a new day after D lands: D's window did not change
    late = spark.read.parquet(str(data / "interactions")).filter(F.col(C.DT) == F.lit(D)).withColumn(C.DT, F.lit(D + dt.timedelta(days=1)))
    late.write.mode("append").partitionBy(C.DT).parquet(str(data / "interactions"))
    assert _plan(spark, cfg, data, root) == "up_to_date"
    # the statistics config (read by examples and tfrecords only)
    assert _plan(spark, small_config(stats={"fetch_size": 500}), data, root) == (["prepare", "embeddings"], ["examples", "tfrecords"])
    # the label rule: everything
    assert _plan(spark, small_config(label={"rule": "liked"}), data, root) == ([], list(STAGES))
    # late statistics rows: examples and tfrecords
    us = spark.read.parquet(str(data / "user_stats"))
    us.limit(1).withColumn(C.USER_ID, F.lit("late-user")).write.mode("append").parquet(str(data / "user_stats"))
    assert _plan(spark, cfg, data, root) == (["prepare", "embeddings"], ["examples", "tfrecords"])
    # a rewritten partition inside the window: everything
    part = next((data / "interactions" / f"dt={D - dt.timedelta(days=1)}").glob("*.parquet"))
    os.utime(part, ns=(time.time_ns(), time.time_ns()))
    assert _plan(spark, cfg, data, root) == ([], list(STAGES))
    # the same change for PREV's window too (D-1 is PREV's validation day)
    assert _plan(spark, cfg, data, root, PREV) == ([], list(STAGES))


def test_backfill_reruns_identically_and_equals_the_nightly_outputs(spark, nightly_root, small_inputs, tmp_path):
    """`backfill --force` over the two nightly dates in the same root: every date is rebuilt into a
    new snapshot that replaces the published one, and it holds exactly what the nightly run wrote."""
    root = copy_root(nightly_root, tmp_path / "root")
    nightly = {day: published_path(root, day).resolve() for day in (PREV, D)}
    recs = backfill(spark, small_config(), str(small_inputs), str(root), PREV, D, force=True, log=quiet)
    assert [r["status"] for r in recs] == ["published", "published"]
    for day, rec in zip((PREV, D), recs):
        assert {s: v["action"] for s, v in rec["stages"].items()} == {s: "ran" for s in STAGES}
        new = published_path(root, day).resolve()
        assert new != nightly[day] and nightly[day].is_dir()  # replaced; the previous one stays readable
        a, b = digest(spark, nightly[day]), digest(spark, new)
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key] == b[key], f"{day}: {key} differs"
        assert len(a["tables/examples"]) > 0 and len(a["tfrecords/validation"]) > 0


def test_a_day_with_no_data_fails_and_publishes_nothing(spark, nightly_root, small_inputs, tmp_path):
    root = copy_root(nightly_root, tmp_path / "root")
    day = D + dt.timedelta(days=1)  # no interactions on 07-06; its train days 07-04, 07-05 have data
    with pytest.raises(NightlyError, match=r"2026-07-06: stage prepare failed: QualityError: no interactions on 2026-07-06 .* nothing is published for this date"):
        run_date(spark, small_config(), str(small_inputs), str(root), day, log=quiet)
    assert not os.path.lexists(published_path(root, day))
    snaps = root / ".snapshots" / str(day)
    assert not snaps.exists() or not any(snaps.iterdir())
    rec = json.loads((root / "_nightly" / f"{day}.json").read_text())
    assert rec["status"] == "failed" and rec["stages"]["prepare"]["action"] == "failed"
    # a range with that day: the other dates still run with --keep-going
    recs = backfill(spark, small_config(), str(small_inputs), str(root), D, day, keep_going=True, log=quiet)
    assert [r["status"] for r in recs] == ["up_to_date", "failed"]


def test_a_failed_stage_leaves_the_published_snapshot_alone(spark, nightly_root, small_inputs, tmp_path):
    root = copy_root(nightly_root, tmp_path / "root")
    data = tmp_path / "data"
    shutil.copytree(small_inputs, data)
    before = link_target(root, D)
    files_before = sorted(p.relative_to(root).as_posix() for p in published_path(root, D).resolve().rglob("*"))
    # the statistics table breaks the contract: only the examples stage reads it
    shutil.rmtree(data / "user_stats")
    spark.createDataFrame([("u", D, "x")], "user_id string, dt date, ctr string").write.parquet(str(data / "user_stats"))
    with pytest.raises(NightlyError, match=r"stage examples failed: ContractError: .*'ctr' must be double, got string; the published snapshot \(.*\) is unchanged"):
        run_date(spark, small_config(), str(data), str(root), D, log=quiet)
    assert link_target(root, D) == before
    assert sorted(p.relative_to(root).as_posix() for p in published_path(root, D).resolve().rglob("*")) == files_before
    rec = json.loads((root / "_nightly" / f"{D}.json").read_text())
    assert rec["status"] == "failed" and rec["stages"]["prepare"]["action"] == "reused" and rec["stages"]["examples"]["action"] == "failed"


# ------------------------------------------------------------------------------ the lock
_HOLDER = textwrap.dedent("""
    import sys, time
    from twotower.lock import ExclusiveLock
    path, log, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with ExclusiveLock(path, run_id=sys.argv[4], wait_s=120, poll_s=0.05) as lock:
        with open(log, "a") as f:
            f.write(f"enter {sys.argv[4]} {lock.generation}\\n")
        time.sleep(hold)
        with open(log, "a") as f:
            f.write(f"exit {sys.argv[4]} {lock.generation}\\n")
""")


def _python(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_never_hold_the_date_lock_together(tmp_path):
    lock, log = tmp_path / "d.lock", tmp_path / "events"
    procs = [_python(_HOLDER, str(lock), str(log), "0.5", name) for name in ("a", "b", "c")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    events = log.read_text().split()
    lines = [events[i:i + 3] for i in range(0, len(events), 3)]
    # each enter is followed by the exit of the same holder before anyone else enters
    assert [l[0] for l in lines] == ["enter", "exit"] * 3
    for enter, exit_ in zip(lines[::2], lines[1::2]):
        assert enter[1:] == exit_[1:]
    assert sorted(l[1] for l in lines[::2]) == ["a", "b", "c"]
    assert [int(l[2]) for l in lines[::2]] == [1, 2, 3]  # generations in order of entry


def test_nightly_refuses_a_date_held_by_another_process_and_survives_its_death(spark, nightly_root, small_inputs, tmp_path):
    root = copy_root(nightly_root, tmp_path / "root")
    lock = root / ".locks" / f"{D}.lock"
    holder = _python(textwrap.dedent(f"""
        import sys, time
        from twotower.lock import ExclusiveLock
        ExclusiveLock({str(lock)!r}, run_id="other-run").acquire()
        print("held", flush=True)
        time.sleep(300)
    """))
    try:
        assert holder.stdout.readline().strip() == "held"
        records_before = sorted((root / "_nightly").rglob("*.json"))
        with pytest.raises(LockBusy, match=rf"held by pid {holder.pid} on host .* \(run other-run"):
            run_date(spark, small_config(), str(small_inputs), str(root), D, log=quiet)
        assert sorted((root / "_nightly").rglob("*.json")) == records_before  # it wrote nothing
        # another date is not blocked
        assert run_date(spark, small_config(), str(small_inputs), str(root), PREV, log=quiet)["status"] == "up_to_date"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # the kernel released the dead holder's lock: no stale lock to clean up by hand
    rec = run_date(spark, small_config(), str(small_inputs), str(root), D, log=quiet)
    assert rec["status"] == "up_to_date"
    assert rec["lock"]["previous_holder_died"]["pid"] == holder.pid
    with ExclusiveLock(lock) as again:
        assert again.previous_holder_died is None  # the nightly run released it properly


@pytest.mark.slow
def test_two_concurrent_nightly_processes_of_one_date_run_one_after_the_other(nightly_root, small_inputs, tmp_path):
    """Two `twotower nightly` processes for the same date, started together on inputs whose late
    statistics make examples and tfrecords stale: one rebuilds and publishes, the other waits for
    the lock, then finds the date up to date, based on the snapshot the first one published."""
    root = copy_root(nightly_root, tmp_path / "root")
    data = tmp_path / "data"
    shutil.copytree(small_inputs, data)
    cfg_file = tmp_path / "cfg.toml"
    cfg = small_config()
    cfg_file.write_text(_toml(cfg.to_dict()))
    import pyarrow as pa

    us = pq.read_table(data / "user_stats")
    pq.write_table(us.slice(0, 1).set_column(0, "user_id", pa.array(["late-user"])), data / "user_stats" / "late.parquet")
    records_before = set((root / "_nightly" / str(D)).glob("*.json"))
    env = {**os.environ, "TWOTOWER_SPARK_LOG_LEVEL": "ERROR"}
    cmd = [str(REPO / ".venv" / "bin" / "twotower"), "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false",
           "nightly", "--config", str(cfg_file), "--input", str(data), "--output", str(root), "--date", str(D), "--lock-wait", "900"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    runs = [json.loads(f.read_text()) for f in set((root / "_nightly" / str(D)).glob("*.json")) - records_before]
    new = sorted(runs, key=lambda r: r["lock"]["generation"])
    assert [r["status"] for r in new] == ["published", "up_to_date"]
    first, second = new
    assert second["lock"]["generation"] == first["lock"]["generation"] + 1
    assert second["based_on"] == first["published"] == Path(link_target(root, D)).name
    assert {s: v["action"] for s, v in first["stages"].items()} == {"prepare": "reused", "embeddings": "reused", "examples": "ran", "tfrecords": "ran"}


def _toml(d: dict) -> str:
    lines = [f"name = {json.dumps(d['name'])}"]
    for section, values in d.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"
