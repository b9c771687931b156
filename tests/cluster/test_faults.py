"""Faults and bad inputs, each run for real: a task failing its first attempt, an executor killed
mid-shuffle, the spark-submit driver SIGKILLed before the Delta commit and before the TFRecord
commit then rerun, a corrupt input file, schema drift upstream, NaN/Inf embeddings, a heavy
skewed user. Faults are injected with `twotower_features.faults` (`TWOTOWER_FAULT`); expected
values come from the clean reference run or are computed here with pandas/pyarrow."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from tests.twotower.test_staging import tree_digest
from twotower_features import columns as C
from twotower_features.config import ExperimentConfig
from twotower_features.pipeline import (
    StageError,
    run_embeddings,
    run_examples,
    run_prepare,
)

from .conftest import (
    assert_same_delta_table,
    assert_same_outputs,
    copy_outputs,
    run_submit,
    stage_args,
    submit_command,
    tfrecord_records,
)

pytestmark = pytest.mark.slow


def _fault_env(cluster_env: dict[str, str], fault: str, marks: Path) -> dict[str, str]:
    marks.mkdir(parents=True, exist_ok=True)
    return {**cluster_env, "TWOTOWER_FAULT": fault, "TWOTOWER_FAULT_DIR": str(marks)}


@contextlib.contextmanager
def _reading(read, interval_s: float = 0.5):
    """Call `read()` over and over in a thread while the block runs; yields the list of results."""
    results: list = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            try:
                results.append(read())
            except Exception as e:  # noqa: BLE001 - a failed read is a result the test asserts on
                results.append(e)
            stop.wait(interval_s)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield results
    finally:
        stop.set()
        t.join(timeout=120)


# ------------------------------------------------------------------------------ task and executor faults
def test_task_failing_its_first_attempt_is_retried_with_local_2_2(spark, reference, spark_home, cluster_env, tmp_path):
    out = copy_outputs(reference.out, tmp_path / "out")
    shutil.rmtree(out / "tables" / "examples")  # this run must write the table itself
    marks = tmp_path / "marks"
    env = _fault_env(cluster_env, "task_fails_first_attempt@examples", marks)
    run_submit(submit_command(spark_home, "local[2,2]", "examples", stage_args(reference, out)), env, tmp_path / "examples.log")
    failed = sorted(p.name for p in marks.glob("failed-examples-*"))
    assert failed, "no task attempt failed: the fault did not fire"
    assert_same_delta_table(spark, out / "tables" / "examples", reference.out / "tables" / "examples")


def test_executor_killed_mid_shuffle_in_local_cluster_mode(spark, reference, spark_home, cluster_env, tmp_path):
    out = tmp_path / "out"
    marks = tmp_path / "marks"
    env = _fault_env(cluster_env, "kill_executor_once@examples", marks)
    log = tmp_path / "features.log"
    run_submit(submit_command(spark_home, "local-cluster[2,1,1024]", "features", stage_args(reference, out)), env, log)
    pid = int((marks / "executor-killed").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that executor JVM is gone
    assert "Lost executor" in log.read_text(errors="replace")
    assert_same_outputs(spark, out, reference.out)


def _commits(table: Path) -> list[str]:
    return sorted(p.name for p in (table / "_delta_log").glob("*.json"))


# ------------------------------------------------------------------------------ driver killed, then rerun
# A stage command builds into a staging folder beside --output and publishes it whole
# (twotower/staging.py); the stage's own commits (Delta, the TFRecord swap) happen there. A driver
# killed before either commit leaves --output byte-identical, readable throughout, and its staging
# folder behind; the rerun removes that folder and publishes outputs equal to a clean run's.
def _staging_folders(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.staging-*"))


def _killed_then_rerun(spark, reference, spark_home, cluster_env, tmp_path, *, stage: str, fault: str, mark: str, read) -> None:
    out = copy_outputs(reference.out, tmp_path / "out")
    before = tree_digest(out)
    expected = read(reference.out)
    marks = tmp_path / "marks"
    cmd = submit_command(spark_home, "local[2]", stage, stage_args(reference, out), {"spark.local.dir": str(tmp_path / "local")})
    with _reading(lambda: read(out)) as reads:
        run_submit(cmd, _fault_env(cluster_env, fault, marks), tmp_path / "killed.log", expect_rc=-signal.SIGKILL)
    assert (marks / mark).exists()
    assert reads and all(r == expected for r in reads), reads  # the published output, whole, throughout
    assert tree_digest(out) == before  # not one byte of --output changed
    (staging,) = _staging_folders(out)  # the killed build, never published
    assert any(staging.rglob("*.parquet")) or any(staging.rglob("*.tfrecord"))

    run_submit(cmd, cluster_env, tmp_path / "rerun.log")
    assert _staging_folders(out) == []  # the leftover is cleaned
    later = stage != "tfrecords"  # a rerun stage's later stages' outputs would be stale: removed
    assert (out / "tfrecords").exists() != later and (out / "manifest.json").exists() != later
    assert_same_outputs(spark, out, reference.out, tfrecords=not later)  # equal to the clean run's


def test_driver_killed_before_delta_commit_then_rerun(spark, reference, spark_home, cluster_env, tmp_path):
    _killed_then_rerun(
        spark, reference, spark_home, cluster_env, tmp_path, stage="examples",
        fault="kill_driver_before_delta_commit@examples", mark="driver-killed-before-delta-commit-examples",
        read=lambda out: spark.read.format("delta").load(str(out / "tables" / "examples")).count(),
    )


def test_driver_killed_before_tfrecord_commit_then_rerun(spark, reference, spark_home, cluster_env, tmp_path):
    _killed_then_rerun(
        spark, reference, spark_home, cluster_env, tmp_path, stage="tfrecords",
        fault="kill_driver_before_tfrecord_commit@train", mark="driver-killed-kill_driver_before_tfrecord_commit-train",
        read=lambda out: tfrecord_records(out / "tfrecords" / "train"),
    )


# ------------------------------------------------------------------------------ bad inputs
WINDOW_DAYS = [f"2026-06-{d}" for d in range(19, 27)]  # train 06-19..06-25, validation 06-26
TRAIN_DAYS = WINDOW_DAYS[:-1]


def _config(reference) -> ExperimentConfig:
    return ExperimentConfig.from_file(reference.config)


def _copy_data(reference, tmp_path: Path) -> Path:
    return Path(shutil.copytree(reference.data, tmp_path / "data"))


def _day_files(data: Path, day: str) -> list[Path]:
    return sorted((data / "interactions" / f"dt={day}").glob("*.parquet"))


def _rewrite(path: Path, table: pa.Table) -> None:
    """Write `table` over `path` as a non-Hadoop writer would (no .crc sidecar)."""
    pq.write_table(table, path, coerce_timestamps="us")
    path.with_name(f".{path.name}.crc").unlink(missing_ok=True)


def _interactions(data: Path, days: list[str]) -> pa.Table:
    """The interactions of `days`, read with pyarrow (not Spark), with a `dt` string column."""
    parts = []
    for day in days:
        for f in _day_files(data, day):
            t = pq.read_table(f, columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TS, C.TIME_SPENT, C.FRACTION_WATCHED, C.LIKED, C.SHARED])
            t = t.set_column(2, C.EVENT_TS, pc.cast(t[C.EVENT_TS], pa.timestamp("us", tz="UTC")))
            parts.append(t.append_column(C.DT, pa.array([day] * t.num_rows)))
    return pa.concat_tables(parts)


def test_corrupt_input_file_fails_naming_it_and_keeps_the_previous_output(spark, reference, tmp_path):
    data = _copy_data(reference, tmp_path)
    victim = _day_files(data, "2026-06-22")[0]
    body = victim.read_bytes()
    victim.write_bytes(body[: len(body) // 2])  # a truncated upload: no footer
    victim.with_name(f".{victim.name}.crc").unlink(missing_ok=True)
    out = copy_outputs(reference.out, tmp_path / "out")
    commits = _commits(out / "tables" / "filtered")
    with pytest.raises(Exception) as failure:
        run_prepare(spark, _config(reference), str(data), str(out), log=lambda _: None)
    assert victim.name in str(failure.value)
    assert _commits(out / "tables" / "filtered") == commits
    assert_same_delta_table(spark, out / "tables" / "filtered", reference.out / "tables" / "filtered")


def test_schema_drift_type_widened_upstream(spark, reference, tmp_path):
    """time_spent and fraction_watched were float32 until 06-24 and double from 06-25 on."""
    data = _copy_data(reference, tmp_path)
    for day in ["2026-06-18", *TRAIN_DAYS[:-1]]:
        for f in _day_files(data, day):
            t = pq.read_table(f)
            for col in (C.TIME_SPENT, C.FRACTION_WATCHED):
                t = t.set_column(t.schema.get_field_index(col), col, pc.cast(t[col], pa.float32()))
            _rewrite(f, t)
    out = tmp_path / "out"
    rep = run_prepare(spark, _config(reference), str(data), str(out), log=lambda _: None)
    assert rep.rows_in["interactions_in_window"] == _interactions(reference.data, WINDOW_DAYS).num_rows
    # the same rows as the clean run; values equal up to float32 rounding of the old days
    assert_same_delta_table(spark, out / "tables" / "filtered", reference.out / "tables" / "filtered")


def test_schema_drift_column_added_upstream(spark, reference, tmp_path):
    data = _copy_data(reference, tmp_path)
    for day in WINDOW_DAYS[-2:]:
        for f in _day_files(data, day):
            t = pq.read_table(f)
            _rewrite(f, t.append_column("watch_source", pa.array(["feed"] * t.num_rows)))
    out = tmp_path / "out"
    run_prepare(spark, _config(reference), str(data), str(out), log=lambda _: None)
    assert_same_delta_table(spark, out / "tables" / "filtered", reference.out / "tables" / "filtered")


def test_schema_drift_column_missing_upstream_fails_before_writing(spark, reference, tmp_path):
    """The last two days lost `shared`: those rows cannot be labelled; they are counted as broken
    (24 % of the window here, above the 5 % bound) and nothing is written."""
    data = _copy_data(reference, tmp_path)
    for day in WINDOW_DAYS[-2:]:
        for f in _day_files(data, day):
            _rewrite(f, pq.read_table(f).drop([C.SHARED]))
    lost_column_rows = _interactions(reference.data, WINDOW_DAYS[-2:]).num_rows
    out = tmp_path / "out"
    with pytest.raises(StageError) as failure:
        run_prepare(spark, _config(reference), str(data), str(out), log=lambda _: None)
    assert f"{lost_column_rows:,} of {_interactions(reference.data, WINDOW_DAYS).num_rows:,} interactions" in str(failure.value)
    assert "nothing was written" in str(failure.value)
    assert not (out / "tables").exists()


def test_nan_and_inf_embeddings_quarantine_their_items_rows(spark, reference, tmp_path):
    data = _copy_data(reference, tmp_path)
    window = _interactions(reference.data, WINDOW_DAYS)
    per_item = window.group_by(C.ITEM_ID).aggregate([(C.ITEM_ID, "count")]).sort_by([(f"{C.ITEM_ID}_count", "ascending"), (C.ITEM_ID, "ascending")])
    nan_item, inf_item = per_item[C.ITEM_ID][0].as_py(), per_item[C.ITEM_ID][1].as_py()
    expected_quarantined = per_item[f"{C.ITEM_ID}_count"][0].as_py() + per_item[f"{C.ITEM_ID}_count"][1].as_py()
    (items_file,) = sorted((data / "items").glob("*.parquet"))
    items = pq.read_table(items_file).to_pandas()
    items[C.DEDUP_EMBEDDING] = [np.where(np.arange(len(v)) == 0, np.nan, v) if i == nan_item else v for i, v in zip(items[C.ITEM_ID], items[C.DEDUP_EMBEDDING])]
    items[C.SIMCLR_EMBEDDING] = [np.where(np.arange(len(v)) == 3, np.inf, v) if i == inf_item else v for i, v in zip(items[C.ITEM_ID], items[C.SIMCLR_EMBEDDING])]
    _rewrite(items_file, pa.Table.from_pandas(items, schema=pq.read_schema(items_file), preserve_index=False))

    cfg, out = _config(reference), tmp_path / "out"
    rep = run_prepare(spark, cfg, str(data), str(out), log=lambda _: None)
    quarantine = spark.read.format("delta").load(str(out / "tables" / "quarantine"))
    assert sorted(r[0] for r in quarantine.select(C.ITEM_ID).distinct().collect()) == sorted([nan_item, inf_item])
    assert quarantine.count() == expected_quarantined
    assert {r[0] for r in quarantine.select(C.QUARANTINE_REASON).distinct().collect()} == {"bad_item_embedding"}
    assert rep.rows_in["valid"] == window.num_rows - expected_quarantined  # every row valid or quarantined
    run_embeddings(spark, cfg, str(data), str(out), log=lambda _: None)
    run_examples(spark, cfg, str(data), str(out), log=lambda _: None)
    assert not {nan_item, inf_item} & set(pq.read_table(out / "artifacts" / "items.parquet", columns=[C.ITEM_ID])[C.ITEM_ID].to_pylist())
    ex = spark.read.format("delta").load(str(out / "tables" / "examples"))
    arrays = [f.name for f in ex.schema.fields if f.dataType.simpleString() in ("array<float>", "array<double>")]
    assert {"pos_hist_mean", "neg_hist_mean", "pos_hist_clusters"} <= set(arrays)
    not_finite = F.lit(False)
    for c in arrays:
        not_finite = not_finite | F.exists(c, lambda x: F.isnan(x) | (F.abs(x) == float("inf")))
    assert ex.filter(not_finite).count() == 0
    assert ex.count() > 0


def test_heavy_skewed_user(spark, reference, tmp_path):
    """One user with 200 events a day (1,400 in the train window, under the 2,000 cap; the
    others have ~15): every one of their kept events is an example, with the right history."""
    data = _copy_data(reference, tmp_path)
    rng = np.random.default_rng(11)
    (items_file,) = sorted((data / "items").glob("*.parquet"))
    catalog = pq.read_table(items_file, columns=[C.ITEM_ID])[C.ITEM_ID].to_numpy(zero_copy_only=False)
    heavy = "u_heavy"
    frames = []
    for day in WINDOW_DAYS:
        n = 200
        start = np.datetime64(f"{day}T00:00:00", "us")
        ts = start + np.sort(rng.choice(86_400, n, replace=False)).astype("timedelta64[s]")
        t = pa.table({
            C.USER_ID: [heavy] * n,
            C.ITEM_ID: rng.choice(catalog, n),
            C.EVENT_TS: pa.array(ts, pa.timestamp("us", tz="UTC")),
            C.TIME_SPENT: rng.uniform(0, 60, n),
            C.FRACTION_WATCHED: rng.uniform(0, 1.2, n),
            C.LIKED: rng.random(n) < 0.1,
            C.SHARED: rng.random(n) < 0.05,
        })
        _rewrite(data / "interactions" / f"dt={day}" / "part-heavy-user.parquet", t)
        frames.append(t.append_column(C.DT, pa.array([day] * n)).to_pandas())
    import pandas as pd

    mine = pd.concat(frames, ignore_index=True)
    # expected, independently: items with >= 3 train interactions stay; label = liked or shared or fw > 0.8
    train = pd.concat([_interactions(reference.data, TRAIN_DAYS).to_pandas(), mine[mine[C.DT].isin(TRAIN_DAYS)]])
    counts = train.groupby(C.ITEM_ID).size()
    kept_items = set(counts[counts >= 3].index)
    mine = mine[mine[C.ITEM_ID].isin(kept_items)].copy()
    mine["label"] = mine[C.LIKED] | mine[C.SHARED] | (mine[C.FRACTION_WATCHED] > 0.8)

    cfg, out = _config(reference), tmp_path / "out"
    for run in (run_prepare, run_embeddings, run_examples):
        run(spark, cfg, str(data), str(out), log=lambda _: None)
    ex = spark.read.format("delta").load(str(out / "tables" / "examples")).filter(F.col(C.USER_ID) == heavy)
    got = ex.select(C.ITEM_ID, C.EVENT_TS, C.POS_HISTORY).toPandas()
    assert len(got) == len(mine)
    pos = mine[mine["label"]].sort_values([C.EVENT_TS, C.ITEM_ID], ascending=False)
    n = cfg.history.n
    for row in got.itertuples(index=False):
        ts = pd.Timestamp(row.event_ts).tz_localize("UTC") if pd.Timestamp(row.event_ts).tzinfo is None else pd.Timestamp(row.event_ts)
        expected = pos[pos[C.EVENT_TS] < ts][C.ITEM_ID].head(n).tolist()
        assert list(row.pos_history) == expected, (row.item_id, ts)
