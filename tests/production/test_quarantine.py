"""The input contract at read, the quarantine table and its reason codes, row conservation, and the
quality bands (quarantined share, the day's volume, an empty day) that fail a run before it
writes anything. Inputs are hand-made; every expected count is worked out in the comments."""
from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from twotower_features import columns as C
from twotower_features.config import ExperimentConfig, QualityConfig, WindowConfig
from twotower_features.pipeline import StageError, run_prepare
from twotower_features.validate import (
    ContractError,
    QualityError,
    check_day_volume,
    conservation,
    quarantine_interactions,
)

D = dt.date(2026, 7, 5)  # validation day; train_days = 2: train 07-03, 07-04
SCHEMA = "user_id string, item_id string, event_ts timestamp, time_spent double, fraction_watched double, liked boolean, shared boolean, dt date"
ITEMS_SCHEMA = "item_id string, creator_id string, duration_s double, dedup_embedding array<float>, simclr_embedding array<float>"


def ev(user, item, day, second, *, time_spent=10.0, fw=0.5, liked=False, shared=False, dt_=None):
    t = dt.datetime(day.year, day.month, day.day, 10, 0, 0) + dt.timedelta(seconds=second)
    return (user, item, t, time_spent, fw, liked, shared, dt_ or t.date())


def valid_day(day: dt.date) -> list[tuple]:
    """10 valid rows: users u1, u2 x items i1..i4 (+ two more of u1), half positive (fw 0.9), half negative."""
    rows = []
    for k, (u, i) in enumerate([("u1", "i1"), ("u1", "i2"), ("u1", "i3"), ("u1", "i4"), ("u2", "i1"), ("u2", "i2"), ("u2", "i3"), ("u2", "i4"), ("u1", "i1"), ("u2", "i2")]):
        rows.append(ev(u, i, day, 100 * k, fw=0.9 if k % 2 == 0 else 0.3))
    return rows


D3, D4 = D - dt.timedelta(days=2), D - dt.timedelta(days=1)
# one row per reason code, all on the train day 07-04 (the first four checks apply in this order)
BAD = [
    (ev(None, "i1", D4, 5001), "null_id"),
    (ev("u1", "i1", D4, 5002, time_spent=-3.0), "bad_time_spent"),
    (ev("u1", "i1", D4, 5003, time_spent=float("nan")), "bad_time_spent"),
    (ev("u1", "i1", D4, 5004, fw=float("nan")), "bad_fraction_watched"),
    (ev("u1", "i1", D4, 5005, fw=50.0), "fraction_watched_above_max"),  # quality.max_fraction_watched = 10
    (ev("u1", "i1", D4, 5006, liked=None), "null_flag"),
    (ev("u1", "i1", D3, 5007, dt_=D4), "dt_mismatch"),  # event on 07-03 filed under dt 07-04
    (ev("u1", "ghost", D4, 5008), "unknown_item"),  # not in the items table
    (ev("u2", "i5", D4, 5009), "bad_item_embedding"),  # i5 is in the items table; its dedup embedding holds NaN
    (ev("u1", "i2", D4, 100), "duplicate_event"),  # the same (user, item, instant) as valid row k=1 of 07-04
]
OUTSIDE = [ev("u1", "i1", dt.date(2026, 7, 1), 7)]  # before the window: never read, never counted


def write_inputs(spark, root: Path, rows: list[tuple]) -> str:
    spark.createDataFrame(rows, SCHEMA).write.mode("overwrite").partitionBy(C.DT).parquet(str(root / "interactions"))
    items = [(f"i{k}", "c1", 30.0, [float(k), 1.0], [1.0, float(k)]) for k in range(1, 5)] + [("i5", "c1", 30.0, [float("nan"), 1.0], [1.0, 1.0])]
    spark.createDataFrame(items, ITEMS_SCHEMA).write.mode("overwrite").parquet(str(root / "items"))
    return str(root)


def cfg(**quality) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "quarantine",
        "window": {"validation_date": D.isoformat(), "train_days": 2},
        "filters": {"item_min_interactions": 1, "client_min_interactions": 1},
        "embeddings": {"item_source": "dedup", "pca_components": 2},
        "features": {"user": ["user_id"], "item": ["item_id", "item_emb"]},
        "quality": {"max_quarantine_share": 0.3, "max_fraction_watched": 10.0, **quality},
    })


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def dirty_inputs(spark, tmp_path_factory) -> str:
    # window rows: 07-03: 10, 07-04: 10 + 10 bad, 07-05: 10 -> 40 in the window, 10 quarantined (25 %)
    rows = valid_day(D3) + valid_day(D4) + valid_day(D) + [r for r, _ in BAD] + OUTSIDE
    return write_inputs(spark, tmp_path_factory.mktemp("dirty"), rows)


def test_each_broken_row_is_quarantined_with_its_reason_and_rows_are_conserved(spark, dirty_inputs, tmp_path):
    out = tmp_path / "out"
    rep = run_prepare(spark, cfg(), dirty_inputs, str(out), log=quiet).to_dict()
    q = spark.read.format("delta").load(str(out / "tables" / "quarantine"))
    got = sorted(((r[C.USER_ID], r[C.ITEM_ID], r[C.EVENT_TS], r[C.QUARANTINE_REASON]) for r in q.collect()), key=repr)
    expected = sorted(((r[0], r[1], r[2], reason) for r, reason in BAD), key=repr)
    assert got == expected
    assert rep["rows_in"] == {"interactions_in_window": 40, "valid": 30}
    assert {k: v for k, v in rep["removed"].items() if k.startswith("quarantine:")} == {
        "quarantine:null_id": 1, "quarantine:bad_time_spent": 2, "quarantine:bad_fraction_watched": 1,
        "quarantine:fraction_watched_above_max": 1, "quarantine:null_flag": 1, "quarantine:dt_mismatch": 1,
        "quarantine:unknown_item": 1, "quarantine:bad_item_embedding": 1, "quarantine:duplicate_event": 1,
    }
    cons = conservation(rep)
    # 40 in = 10 quarantined + 30 valid; the 30 valid rows are out or removed by a filter rule
    assert cons["rows_in"] == 40 and cons["quarantined"] == 10 and cons["holds"]
    assert cons["rows_out"] + sum(cons["filtered"].values()) == 30
    filtered = spark.read.format("delta").load(str(out / "tables" / "filtered"))
    assert filtered.count() == cons["rows_out"]
    assert filtered.filter(F.col(C.FRACTION_WATCHED) > 10).count() == 0
    # the day's volume (raw rows): 07-05 has 10, the two days before 10 and 20 -> median 15, ratio 10 / 15
    assert rep["facts"]["day_volume"]["rows"] == 10 and rep["facts"]["day_volume"]["recent_median"] == 15.0
    assert rep["facts"]["day_volume"]["ratio"] == round(10 / 15, 4)


def test_the_stage_checks_each_interaction_once_for_the_counts_the_valid_and_the_quarantined_rows(spark, dirty_inputs, tmp_path, monkeypatch):
    # time_spent passes through a Python UDF that counts its calls: every read of the window's
    # rows that needs time_spent (the reasons, the duplicate check's order, the valid rows) calls
    # it once per row. The flagged rows are cached once, so the 40 rows of the window are read
    # once; the valid rows and the quarantined ones as two frames cached apart read them twice (80)
    from pyspark.sql.types import DoubleType

    from twotower_features import io

    calls = spark.sparkContext.accumulator(0)

    def counted(x):
        calls.add(1)
        return x

    counting = F.udf(counted, DoubleType())
    read_table = io.read_table

    def read_counting(spark_, path, *args, **kwargs):
        df = read_table(spark_, path, *args, **kwargs)
        return df.withColumn(C.TIME_SPENT, counting(C.TIME_SPENT)) if path.rstrip("/").endswith("interactions") else df

    monkeypatch.setattr(io, "read_table", read_counting)
    rep = run_prepare(spark, cfg(), dirty_inputs, str(tmp_path / "out"), log=quiet)
    assert rep.rows_in == {"interactions_in_window": 40, "valid": 30}
    assert calls.value == 40


def test_quarantined_share_above_the_bound_fails_before_writing(spark, dirty_inputs, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(StageError, match=r"10 of 40 interactions \(25.00%\) break the input contract, above quality.max_quarantine_share=20.00%"):
        run_prepare(spark, cfg(max_quarantine_share=0.2), dirty_inputs, str(out), log=quiet)
    assert not out.exists()


def test_day_volume_out_of_band_fails_before_writing(spark, dirty_inputs, tmp_path):
    out = tmp_path / "out"
    # ratio 10 / 15 = 0.67 < 0.7
    with pytest.raises(QualityError, match=r"10 interactions on 2026-07-05 are 0.67x the median of the 2 days before \(15\)"):
        run_prepare(spark, cfg(min_day_volume_ratio=0.7, volume_lookback_days=2), dirty_inputs, str(out), log=quiet)
    assert not out.exists()
    # a band that holds it: 0.6 <= 0.67 <= 1.5
    rep = run_prepare(spark, cfg(min_day_volume_ratio=0.6, max_day_volume_ratio=1.5, volume_lookback_days=2), dirty_inputs, str(out), log=quiet)
    assert rep.facts["day_volume"]["band"] == [0.6, 1.5]


def test_a_day_with_no_data_fails_before_writing(spark, tmp_path):
    inputs = write_inputs(spark, tmp_path / "in", valid_day(D3) + valid_day(D4))  # nothing on 07-05
    out = tmp_path / "out"
    with pytest.raises(QualityError, match="no interactions on 2026-07-05"):
        run_prepare(spark, cfg(), inputs, str(out), log=quiet)
    assert not out.exists()
    # allow_empty_day lets the volume check pass; a run without validation rows still fails, saying so
    with pytest.raises(StageError, match=r"stage prepare leaves no validation rows \(2026-07-05\)"):
        run_prepare(spark, cfg(allow_empty_day=True), inputs, str(out), log=quiet)


def test_a_clean_rerun_empties_the_quarantine_of_its_window(spark, dirty_inputs, tmp_path):
    out = tmp_path / "out"
    run_prepare(spark, cfg(), dirty_inputs, str(out), log=quiet)
    assert spark.read.format("delta").load(str(out / "tables" / "quarantine")).count() == 10
    clean = write_inputs(spark, tmp_path / "clean", valid_day(D3) + valid_day(D4) + valid_day(D))
    run_prepare(spark, cfg(), clean, str(out), log=quiet)
    assert spark.read.format("delta").load(str(out / "tables" / "quarantine")).count() == 0


def test_contract_errors_name_the_column_and_the_expected_type(spark, tmp_path):
    from twotower_features.config import StatsConfig
    from twotower_features.stats_source import read_stats

    rows = valid_day(D)
    bad = spark.createDataFrame(rows, SCHEMA).withColumn(C.TIME_SPENT, F.col(C.TIME_SPENT).cast("string"))
    bad.write.partitionBy(C.DT).parquet(str(tmp_path / "in" / "interactions"))
    write_inputs(spark, tmp_path / "ok", rows)
    (tmp_path / "ok" / "items").rename(tmp_path / "in" / "items")
    with pytest.raises(ContractError, match="table 'interactions' column 'time_spent' must be double, got string"):
        run_prepare(spark, cfg(), str(tmp_path / "in"), str(tmp_path / "out"), log=quiet)
    assert not (tmp_path / "out").exists()
    spark.createDataFrame([("u1", D, "0.5")], "user_id string, dt date, ctr string").write.parquet(str(tmp_path / "in" / "user_stats"))
    with pytest.raises(ContractError, match=r"table 'user_stats \(.*user_stats\)' column 'ctr' must be double, got string"):
        read_stats(spark, str(tmp_path / "in"), "user_stats", StatsConfig())
    spark.createDataFrame([(1, D, 0.5)], "item_id int, dt date, ctr double").write.parquet(str(tmp_path / "in" / "item_stats"))
    with pytest.raises(ContractError, match="column 'item_id' must be string, got int"):
        read_stats(spark, str(tmp_path / "in"), "item_stats", StatsConfig())


def test_fraction_bound_is_exclusive_and_off_by_default(spark):
    rows = [ev("u1", "i1", D, 1, fw=10.0), ev("u1", "i1", D, 2, fw=10.5), ev("u1", "i1", D, 3, fw=1.7)]
    items = spark.createDataFrame([("i1",)], "item_id string")
    frame = spark.createDataFrame(rows, SCHEMA)
    _, bad = quarantine_interactions(frame, items, max_fraction_watched=10.0)
    assert [(r[C.FRACTION_WATCHED], r[C.QUARANTINE_REASON]) for r in bad.collect()] == [(10.5, "fraction_watched_above_max")]
    valid, bad = quarantine_interactions(frame, items)  # 0 = no upper bound: replays of any length pass
    assert valid.count() == 3 and bad.count() == 0


def test_day_volume_band_by_hand():
    q = QualityConfig(min_day_volume_ratio=0.5, max_day_volume_ratio=2.0, volume_lookback_days=3)
    w = WindowConfig(validation_date=D, train_days=7)
    days = {D - dt.timedelta(days=1): 100, D - dt.timedelta(days=2): 80, D - dt.timedelta(days=3): 120, D - dt.timedelta(days=4): 1}
    # median(100, 80, 120) = 100 (07-01 is beyond the 3-day lookback)
    assert check_day_volume({**days, D: 150}, w, q)["ratio"] == 1.5
    with pytest.raises(QualityError, match="40 interactions on 2026-07-05 are 0.40x"):
        check_day_volume({**days, D: 40}, w, q)
    with pytest.raises(QualityError, match="are 2.50x"):
        check_day_volume({**days, D: 250}, w, q)
    # the lookback never reaches before the train window (those days were not read): median(100, 80) = 90
    assert check_day_volume({**days, D: 90}, WindowConfig(validation_date=D, train_days=2), q)["recent_median"] == 90.0
    # a missing day of the window counts as 0: median(100, 0, 120) = 100
    del days[D - dt.timedelta(days=2)]
    assert check_day_volume({**days, D: 60}, w, q)["recent_median"] == 100.0
    # no history at all: the band cannot be checked, the run is not failed for it
    assert check_day_volume({D: 5}, w, q)["ratio"] is None


def test_conservation_of_a_report_by_hand():
    rep = {"stage": "examples", "rows_in": {"train": 100, "validation": 20}, "rows_out": {"train": 70, "validation": 20},
           "removed": {"train:user_sampling": 25, "train:rebalancing": 5, "validation": 0}}
    assert conservation(rep) == {"rows_in": 120, "rows_out": 90, "quarantined": 0, "filtered": {"train:user_sampling": 25, "train:rebalancing": 5, "validation": 0}, "holds": True}
    rep["removed"]["train:rebalancing"] = 4  # one row unaccounted for
    assert conservation(rep)["holds"] is False
