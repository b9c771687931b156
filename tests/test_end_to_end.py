"""End to end on generated data: every stage, the leakage invariant, TFRecords read back by
TensorFlow value for value, a rerun replacing its output, then train and evaluate."""
from __future__ import annotations

import datetime as dt
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from twotower.stages import run as run_features
from twotower_features import columns as C
from twotower_features.config import ExperimentConfig
from twotower_features.generate import generate
from twotower_features.pipeline import run_examples
from twotower_features.spec import FeatureSpec
from twotower_features.stats_source import stats_dates
from twotower_features.validate import ContractError

pytestmark = pytest.mark.slow

N_HIST = 4


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    generate(spark, str(root / "data"), users=120, items=90, days=10, start=dt.date(2026, 6, 26), seed=3, embedding_dim=24, bad_row_share=0.002, progress=None)
    cfg = ExperimentConfig.from_dict(
        {
            "name": "e2e",
            "window": {"validation_date": "2026-07-05", "train_days": 7},
            "label": {"rule": "liked OR shared OR fraction_watched > 0.8"},
            "weight": {"scheme": "engagement_tiers"},
            "sampling": {"user_fraction": 0.8, "seed": 1},
            "history": {"n": N_HIST, "aggregations": ["mean", "concat", "clusters"], "concat_k": 2, "source": "simclr", "keep_lists": True},
            "embeddings": {"item_source": "dedup", "pca_components": 8, "kmeans_k": 4},
            "features": {
                "user": ["user_id", "handset_maker", "pos_hist_mean", "neg_hist_mean", "pos_hist_concat", "pos_hist_clusters", "user_ctr"],
                "item": ["item_id", "creator_id", "item_emb", "item_performance", "item_ctr"],
            },
            "output": {"tfrecord_shards": 2},
            "model": {"epochs": 1, "batch_size": 256, "embedding_dim": 8, "hidden_units": [16], "output_dim": 8},
        }
    )
    out = root / "features"
    reports = run_features(spark, cfg, str(root / "data"), str(out), log=lambda s: None)
    return root, out, cfg, reports


def test_stage_reports_conserve_rows(built):
    _, out, _, reports = built
    prep = reports["prepare"]
    quarantined = sum(v for k, v in prep.removed.items() if k.startswith("quarantine:"))
    assert prep.rows_in["interactions_in_window"] == prep.rows_in["valid"] + quarantined
    removed = sum(v for k, v in prep.removed.items() if k.startswith(("item_filter", "client_filter")))
    assert prep.rows_in["valid"] == sum(prep.rows_out.values()) + removed
    for stage in ("prepare", "embeddings", "examples", "tfrecords"):
        assert json.loads((out / "reports" / f"{stage}.json").read_text())["stage"] == stage


def test_no_history_item_at_or_after_its_example(spark, built):
    _, out, cfg, _ = built
    ex = spark.read.format("delta").load(str(out / "tables" / "examples"))
    events = spark.read.format("delta").load(str(out / "tables" / "filtered"))
    qualifying = {
        "pos_history": F.col(C.LABEL) == 1,
        "neg_history": (F.col(C.LABEL) == 0) & (F.col(C.TIME_SPENT) < F.col(C.ITEM_AVG_TIME_SPENT)),
    }
    for side, rule in qualifying.items():
        # every history item must be a qualifying event of the same user strictly before the example
        hist = ex.select(C.USER_ID, F.col(C.ITEM_ID).alias("ex_item"), C.EVENT_TS, F.posexplode(side).alias("k", "h"))
        earlier = events.filter(rule).select(C.USER_ID, F.col(C.ITEM_ID).alias("h"), F.col(C.EVENT_TS).alias("hts"))
        joined = hist.join(earlier, [C.USER_ID, "h"], "left").filter(F.col("hts") < F.col(C.EVENT_TS))
        n = hist.count()
        assert n > 0, side
        assert joined.select(C.USER_ID, "ex_item", C.EVENT_TS, "k").distinct().count() == n, side


def test_positive_history_equals_an_independent_self_join(spark, built):
    """Recompute pos_history with a plain self-join + rank (no code shared with the stage)."""
    _, out, _, _ = built
    ex = spark.read.format("delta").load(str(out / "tables" / "examples")).select(C.USER_ID, C.ITEM_ID, C.EVENT_TS, "pos_history")
    ev = spark.read.format("delta").load(str(out / "tables" / "filtered")).filter(F.col(C.LABEL) == 1)
    h = ev.select(C.USER_ID, F.col(C.ITEM_ID).alias("h_item"), F.col(C.EVENT_TS).alias("h_ts"))
    pairs = ex.select(C.USER_ID, C.ITEM_ID, C.EVENT_TS).join(h, C.USER_ID).filter(F.col("h_ts") < F.col(C.EVENT_TS))
    w = Window.partitionBy(C.USER_ID, C.ITEM_ID, C.EVENT_TS).orderBy(F.col("h_ts").desc(), F.col("h_item").desc())
    expected = (
        pairs.withColumn("r", F.row_number().over(w)).filter(F.col("r") <= N_HIST)
        .groupBy(C.USER_ID, C.ITEM_ID, C.EVENT_TS).agg(F.sort_array(F.collect_list(F.struct("r", "h_item"))).alias("l"))
        .select(C.USER_ID, C.ITEM_ID, C.EVENT_TS, F.col("l.h_item").alias("expected"))
    )
    cmp = ex.join(expected, [C.USER_ID, C.ITEM_ID, C.EVENT_TS], "left").withColumn("expected", F.coalesce("expected", F.array().cast("array<string>")))
    bad = cmp.filter(F.col("pos_history") != F.col("expected"))
    assert bad.count() == 0, bad.limit(3).collect()


def test_fitted_statistics_ignore_validation_day(spark, built):
    _, out, cfg, _ = built
    avg = spark.read.parquet(str(out / "artifacts" / "item_avg_time_spent"))
    ev = spark.read.format("delta").load(str(out / "tables" / "filtered"))
    val_items = {r[0] for r in ev.filter(F.col(C.SPLIT) == "validation").select(C.ITEM_ID).distinct().collect()}
    vocab = (out / "vocab" / "user_id.txt").read_text().split()
    train_users = {r[0] for r in spark.read.format("delta").load(str(out / "tables" / "examples")).filter(F.col(C.SPLIT) == "train").select(C.USER_ID).distinct().collect()}
    assert set(vocab) == train_users  # vocabularies from the train split only
    assert val_items <= {r[0] for r in avg.select(C.ITEM_ID).collect()}  # every validation item was seen in train


def test_tfrecords_parse_back_value_for_value(spark, built):
    tf = pytest.importorskip("tensorflow")
    _, out, _, _ = built
    spec = FeatureSpec.load(out)
    desc = {c.name: tf.io.FixedLenFeature(list(c.shape), {"string": tf.string, "float32": tf.float32, "int64": tf.int64}[c.dtype]) for c in spec.columns}
    files = sorted(str(p) for p in (out / "tfrecords" / "validation").glob("*.tfrecord"))
    parsed = {}
    for batch in tf.data.TFRecordDataset(files).batch(100_000).map(lambda x: tf.io.parse_example(x, desc)):
        for i in range(int(batch[C.USER_ID].shape[0])):
            key = (batch[C.USER_ID][i].numpy().decode(), batch[C.ITEM_ID][i].numpy().decode(), int(batch[C.EVENT_TS][i].numpy()))
            parsed[key] = {n: batch[n][i].numpy() for n in desc}
    rows = spark.read.format("delta").load(str(out / "tables" / "examples")).filter(F.col(C.SPLIT) == "validation").collect()
    assert len(parsed) == len(rows) > 0
    # the item vectors are per item, not in the examples table: the TFRecords' item_emb is the
    # item's row of items.parquet, and item_performance its performance columns (in name order)
    # z-scored with normalisation.json's train statistics, 0 where null, in float32
    ex_columns = spark.read.format("delta").load(str(out / "tables" / "examples")).columns
    assert not [c for c in ex_columns if c.startswith(("item_performance", "creator_performance", "item_emb", "dedup", "simclr"))]
    assert C.ITEM_CLUSTER not in ex_columns and C.ACTIVITY_PROFILE not in ex_columns  # not a feature of this experiment
    assert C.HANDSET_MAKER in ex_columns and C.CREATOR_ID in ex_columns
    norm = json.loads((out / "artifacts" / "normalisation.json").read_text())
    item_rows = spark.read.parquet(str(out / "artifacts" / "items.parquet")).collect()
    perf = sorted(c for c in item_rows[0].asDict() if c.startswith(C.ITEM_PERFORMANCE_PREFIX))
    assert perf and all(c in norm for c in perf)

    def zscored(x, c):
        m, s = norm[c]
        return 0.0 if x is None else (x - m) / (s if s > 0 else 1.0)

    items = {r[C.ITEM_ID]: r["dedup_pca"] for r in item_rows}
    performance = {r[C.ITEM_ID]: np.asarray([zscored(r[c], c) for c in perf], np.float32) for r in item_rows}
    for r in rows:
        micros = int(r[C.EVENT_TS].replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000) if r[C.EVENT_TS].tzinfo is None else int(r[C.EVENT_TS].timestamp() * 1_000_000)
        got = parsed[(r[C.USER_ID], r[C.ITEM_ID], micros)]
        assert got[C.LABEL] == r[C.LABEL] and got[C.WEIGHT] == np.float32(r[C.WEIGHT])
        np.testing.assert_array_equal(got["pos_hist_mean"], np.asarray(r["pos_hist_mean"], np.float32))
        np.testing.assert_array_equal(got["item_emb"], np.asarray(items[r[C.ITEM_ID]], np.float32))
        np.testing.assert_array_equal(got["item_performance"], performance[r[C.ITEM_ID]])
        assert got[C.HANDSET_MAKER].decode() == (r[C.HANDSET_MAKER] or "")
        assert got["user_ctr"] == np.float32(r["user_ctr"])


def test_rerun_replaces_output(spark, built):
    root, out, cfg, _ = built
    path = str(out / "tables" / "examples")
    before = spark.read.format("delta").load(path)
    n_before = before.count()
    keys_before = sorted(map(tuple, before.select(C.USER_ID, C.ITEM_ID, C.EVENT_TS).collect()))
    run_examples(spark, cfg, str(root / "data"), str(out), log=lambda s: None)
    after = spark.read.format("delta").load(path)
    assert after.count() == n_before
    assert sorted(map(tuple, after.select(C.USER_ID, C.ITEM_ID, C.EVENT_TS).collect())) == keys_before


@pytest.mark.parametrize("table", ["users", "user_stats"])
def test_a_table_that_repeats_its_join_key_fails_the_examples_stage_before_any_write(spark, built, tmp_path, table):
    # the left join on user_id (users) or (user_id, dt) (user_stats) would copy the repeated
    # key's example rows; the stage refuses the table, naming it, the key and its row count, and
    # leaves the previous output as it was
    import shutil

    root, out, cfg, _ = built
    data = tmp_path / "data"
    data.mkdir()
    for t in (root / "data").iterdir():
        if t.name != table:
            (data / t.name).symlink_to(t)
    rows = spark.read.parquet(str(root / "data" / table))
    if table == "user_stats":  # a day the window reads (each example of day d joins d - 1)
        first_day, last_day = stats_dates(cfg.window.validation_date, cfg.window.train_days)
        rows = rows.filter(F.col(C.DT).between(first_day, last_day))
    first = rows.orderBy(*([C.USER_ID, C.DT] if table == "user_stats" else [C.USER_ID])).limit(1)
    spark.read.parquet(str(root / "data" / table)).unionByName(first).write.parquet(str(data / table))
    row = first.collect()[0]
    key = f"\\('{row[C.USER_ID]}', {row[C.DT]}\\)" if table == "user_stats" else f"'{row[C.USER_ID]}'"
    name = "\\(user_id, dt\\)" if table == "user_stats" else "user_id"
    copy = tmp_path / "features"
    shutil.copytree(out, copy, symlinks=True)
    norm_before = (copy / "artifacts" / "normalisation.json").read_bytes()
    n_before = spark.read.format("delta").load(str(copy / "tables" / "examples")).count()
    with pytest.raises(ContractError, match=rf"table '{table} \(.*{table}\)' repeats {name} {key} \(2 rows\): each {name} needs one row"):
        run_examples(spark, cfg, str(data), str(copy), log=lambda s: None)
    assert (copy / "artifacts" / "normalisation.json").read_bytes() == norm_before
    assert spark.read.format("delta").load(str(copy / "tables" / "examples")).count() == n_before


def test_train_and_evaluate_beat_random(built, tmp_path):
    pytest.importorskip("tensorflow")
    from twotower_model.evaluate import evaluate
    from twotower_model.train import train

    root, out, cfg, _ = built
    report = train(str(out), str(tmp_path / "model"), cfg.model, progress=lambda s: None)
    assert report["catalog_items"] > 0
    result = evaluate(str(out), str(tmp_path / "model"), str(tmp_path / "eval"), ground_truth=str(root / "data" / "ground_truth"))
    rows = result["rows"]
    assert set(rows) == {"model", "random", "popularity", "oracle"}
    assert rows["oracle"]["auc"] > rows["random"]["auc"] + 0.05
    # the model learned something: its ranking lift over random is at least a fifth of the oracle's
    assert rows["model"]["auc"] - rows["random"]["auc"] > 0.2 * (rows["oracle"]["auc"] - rows["random"]["auc"])
    assert rows["model"]["rows"] == rows["oracle"]["rows"] > 0


def test_statistics_are_those_of_the_day_before_normalised_with_train_statistics(spark, built):
    """user/item/creator stats of day D-1, z-scored with the train mean and std, recomputed here."""
    root, out, _, _ = built
    norm = json.loads((out / "artifacts" / "normalisation.json").read_text())
    ex = spark.read.format("delta").load(str(out / "tables" / "examples"))
    checked = 0
    for table, key, prefix in (("user_stats", C.USER_ID, "user"), ("item_stats", C.ITEM_ID, "item"), ("creator_stats", C.CREATOR_ID, "creator")):
        raw = spark.read.parquet(str(root / "data" / table))
        for stat in (C.STAT_CTR, C.STAT_TIMESPENT):
            col = f"{prefix}_{stat}"
            m, s = norm[col]
            # the independent fit: train examples joined to their D-1 row, population mean and std
            # in exact rational arithmetic (two passes): the fit's mean is this one rounded once
            values = [Fraction(r["v"]) for r in (
                ex.filter(F.col(C.SPLIT) == "train").select(key, C.DT)
                .join(raw.select(key, F.date_add(C.DT, 1).alias(C.DT), F.col(stat).alias("v")), [key, C.DT], "left")
                .filter(F.col("v").isNotNull()).select("v").collect()
            )]
            mean = sum(values, Fraction(0)) / len(values)
            std = math.sqrt(sum(((v - mean) ** 2 for v in values), Fraction(0)) / len(values))
            assert m == float(mean) and s == pytest.approx(std, rel=1e-15), col
            joined = ex.select(key, C.DT, col).join(
                raw.select(key, F.date_add(C.DT, 1).alias(C.DT), F.col(stat).alias("prev")), [key, C.DT], "left"
            ).withColumn("expected", F.coalesce((F.col("prev") - F.lit(m)) / F.lit(s), F.lit(0.0)))
            rows = joined.select(col, "expected", "prev").collect()
            assert sum(r["prev"] is not None for r in rows) > 0, col
            np.testing.assert_allclose([r[col] for r in rows], [r["expected"] for r in rows], rtol=1e-5, atol=1e-5, err_msg=col)
            checked += len(rows)
    assert checked > 0
    # the items' performance columns: the train examples joined to the items, exactly as above
    items = spark.read.parquet(str(out / "artifacts" / "items.parquet"))
    perf = [c for c in norm if c.startswith((C.ITEM_PERFORMANCE_PREFIX, C.CREATOR_PERFORMANCE_PREFIX))]
    assert perf
    train_items = ex.filter(F.col(C.SPLIT) == "train").select(C.ITEM_ID).join(items, C.ITEM_ID, "left")
    for col in perf:
        values = [Fraction(r[0]) for r in train_items.select(col).filter(F.col(col).isNotNull()).collect()]
        mean = sum(values, Fraction(0)) / len(values)
        std = math.sqrt(sum(((v - mean) ** 2 for v in values), Fraction(0)) / len(values))
        assert norm[col][0] == float(mean) and norm[col][1] == pytest.approx(std if std > 0 else 1.0, rel=1e-15), col


def test_with_the_validation_day_sampled_too_every_example_still_gets_its_users_statistics(spark, built, tmp_path):
    # the user statistics and the users table are filtered to the users with example rows before
    # their joins: with sampling.validation that is the sampled users only (the fixture's run covers
    # the default, where every user's validation day stays); each example row still gets its D-1
    # row, z-scored
    import dataclasses
    import shutil

    root, out, cfg, _ = built
    copy = tmp_path / "features"
    shutil.copytree(out, copy)
    sampled = dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, validation=True))
    run_examples(spark, sampled, str(root / "data"), str(copy), log=lambda s: None)
    m, s = json.loads((copy / "artifacts" / "normalisation.json").read_text())["user_ctr"]
    raw = spark.read.parquet(str(root / "data" / "user_stats")).select(C.USER_ID, F.date_add(C.DT, 1).alias(C.DT), F.col(C.STAT_CTR).alias("prev"))
    ex = spark.read.format("delta").load(str(copy / "tables" / "examples"))
    rows = ex.select(C.USER_ID, C.DT, C.SPLIT, "user_ctr").join(raw, [C.USER_ID, C.DT], "left").collect()
    validation_users = {r[C.USER_ID] for r in rows if r[C.SPLIT] == "validation"}
    all_validation_users = {r[0] for r in spark.read.format("delta").load(str(out / "tables" / "filtered")).filter(F.col(C.SPLIT) == "validation").select(C.USER_ID).distinct().collect()}
    assert 0 < len(validation_users) < len(all_validation_users)  # the validation day was sampled
    assert any(r[C.SPLIT] == "validation" and r["prev"] is not None for r in rows)
    expected = [0.0 if r["prev"] is None else (r["prev"] - m) / s for r in rows]
    np.testing.assert_allclose([r["user_ctr"] for r in rows], expected, rtol=1e-5, atol=1e-5)
    # the users table is filtered to the sampled users likewise: each example keeps its user's handset
    handsets = dict(spark.read.parquet(str(root / "data" / "users")).select(C.USER_ID, C.HANDSET_MAKER).collect())
    got = ex.select(C.USER_ID, C.HANDSET_MAKER).collect()
    assert got and all(r[C.HANDSET_MAKER] is not None and r[C.HANDSET_MAKER] == handsets[r[C.USER_ID]] for r in got)


def test_the_per_event_columns_of_both_tables_are_stored_without_a_dictionary(spark, built):
    """tables/filtered and tables/examples store event_ts, time_spent and fraction_watched plain
    (C.PLAIN_ENCODED), every file and row group, and tables/examples the elements of its arrays
    (the histories, their cluster distributions, the performance vectors); the ids keep their
    dictionary."""
    from tests.features.test_io import delta_encodings

    _, out, _, _ = built
    for table in ("filtered", "examples"):
        for enc in delta_encodings(spark, out / "tables" / table):  # every row group of every file (at least one)
            assert all("PLAIN_DICTIONARY" not in enc[c] for c in C.PLAIN_ENCODED), (table, enc)
            assert "PLAIN_DICTIONARY" in enc[C.USER_ID], (table, enc)
            elements = [c for c in enc if c.endswith(".list.element")]
            assert table == "filtered" or {"pos_history.list.element", "pos_hist_clusters.list.element"} <= set(elements), (table, enc)
            assert all("PLAIN_DICTIONARY" not in enc[c] for c in elements), (table, enc)


def test_empty_window_fails_before_any_write(spark, built, tmp_path):
    import dataclasses

    from twotower_features.pipeline import StageError, run_prepare

    root, _, cfg, _ = built
    far = dataclasses.replace(cfg, window=dataclasses.replace(cfg.window, validation_date=dt.date(2030, 1, 1)))
    out = tmp_path / "never"
    with pytest.raises(StageError, match="no interactions between 2029-12-25 and 2030-01-01"):
        run_prepare(spark, far, str(root / "data"), str(out), log=lambda s: None)
    assert not out.exists()


def _perturb_validation_day(spark, src: Path, dst: Path, day: dt.date) -> int:
    """A copy of the inputs whose validation day (and the stats rows only validation examples read)
    has more, different rows: new events of known users, new users, changed statistics."""
    import shutil

    for t in ("items", "users", "ground_truth"):
        shutil.copytree(src / t, dst / t)
    inter = spark.read.parquet(str(src / "interactions"))
    val = inter.filter(F.col(C.DT) == F.lit(day))
    changed = val.select(
        C.USER_ID, C.ITEM_ID, (F.col(C.EVENT_TS) + F.expr("INTERVAL 1 SECOND")).alias(C.EVENT_TS),
        (F.col(C.TIME_SPENT) * 7 + 3).alias(C.TIME_SPENT), (1 - F.col(C.FRACTION_WATCHED)).alias(C.FRACTION_WATCHED),
        (~F.col(C.LIKED)).alias(C.LIKED), (~F.col(C.SHARED)).alias(C.SHARED), C.DT,
    )
    strangers = val.select(
        F.concat(F.lit("new_"), C.USER_ID).alias(C.USER_ID), C.ITEM_ID, C.EVENT_TS, C.TIME_SPENT, C.FRACTION_WATCHED,
        F.lit(True).alias(C.LIKED), C.SHARED, C.DT,
    )
    extra = changed.unionByName(strangers)
    inter.unionByName(extra).write.partitionBy(C.DT).parquet(str(dst / "interactions"))
    for table in ("user_stats", "item_stats", "creator_stats"):
        st = spark.read.parquet(str(src / table))
        late = F.col(C.DT) >= F.lit(day - dt.timedelta(days=1))
        st.select(*[F.when(late, F.col(c) * 3 + 0.5).otherwise(F.col(c)).alias(c) if c in (C.STAT_CTR, C.STAT_TIMESPENT) else F.col(c) for c in st.columns]).write.parquet(str(dst / table))
    return extra.count()


def test_validation_day_rows_do_not_move_any_fitted_statistic(spark, built, tmp_path):
    """Rerun the whole pipeline on inputs whose validation day differs: every fitted artifact and
    every train example must come out identical, while the validation examples do change."""
    root, out, cfg, _ = built
    data_b = tmp_path / "data"
    added = _perturb_validation_day(spark, root / "data", data_b, cfg.window.validation_date)
    assert added > 0
    out_b = tmp_path / "features"
    run_features(spark, cfg, str(data_b), str(out_b), log=lambda s: None)

    for name in ("item_avg_time_spent", "item_filter", "client_filter"):
        a = spark.read.parquet(str(out / "artifacts" / name))
        b = spark.read.parquet(str(out_b / "artifacts" / name))
        assert a.count() == b.count() > 0 and a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0, name
    ea, eb = np.load(out / "artifacts" / "embeddings.npz"), np.load(out_b / "artifacts" / "embeddings.npz")
    assert sorted(ea.files) == sorted(eb.files) and ea.files
    for k in ea.files:
        np.testing.assert_array_equal(ea[k], eb[k], err_msg=k)
    assert json.loads((out / "artifacts" / "normalisation.json").read_text()) == json.loads((out_b / "artifacts" / "normalisation.json").read_text())
    for f in sorted((out / "vocab").glob("*.txt")):
        assert f.read_text() == (out_b / "vocab" / f.name).read_text(), f.name
    assert (out / "artifacts" / "item_frequency.csv").read_text() == (out_b / "artifacts" / "item_frequency.csv").read_text()

    def split(path: Path, s: str):
        return spark.read.format("delta").load(str(path / "tables" / "examples")).filter(F.col(C.SPLIT) == s)

    ta, tb = split(out, "train"), split(out_b, "train")
    assert ta.count() == tb.count() > 0
    assert ta.exceptAll(tb).count() == 0 and tb.exceptAll(ta).count() == 0
    va, vb = split(out, "validation"), split(out_b, "validation")
    assert vb.count() > va.count()  # the perturbed validation day did reach the validation examples


def test_failed_reruns_leave_the_features_folder_byte_identical(spark, built, tmp_path, monkeypatch):
    """Five different failures, each a rerun of `features` (the production entry, stages.run) into
    a good features folder: the folder's every file is identical afterwards, nothing is left
    beside it but its lock, and the reason is named."""
    import dataclasses
    import shutil

    from tests.twotower.test_staging import tree_digest
    from twotower_features.errors import UserError
    from twotower_features.tfrecord import writer

    root, out, cfg, _ = built
    good = shutil.copytree(out, tmp_path / "features")
    before = tree_digest(good)
    data = root / "data"
    broken_stats = tmp_path / "broken-stats"
    shutil.copytree(data, broken_stats)
    shutil.rmtree(broken_stats / "user_stats")
    spark.createDataFrame([("u", dt.date(2026, 7, 1), "x")], "user_id string, dt date, ctr string").write.parquet(str(broken_stats / "user_stats"))

    def replace(**sections):
        return dataclasses.replace(cfg, **{k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    failures = [
        # prepare: the label rule gives one class only
        (replace(label={"rule": "fraction_watched < 0"}), data, r"makes every one of the .* train rows negative", None),
        # prepare: nothing in the window
        (replace(window={"validation_date": dt.date(2030, 1, 1)}), data, r"no interactions between 2029-12-25 and 2030-01-01", None),
        # embeddings, after prepare succeeded in the staging folder: PCA wider than the embeddings
        (replace(embeddings={"pca_components": 30}), data, r"embeddings.pca_components=30 needs at least", None),
        # examples: a statistics table breaks the contract
        (cfg, broken_stats, r"'ctr' must be double, got string", None),
        # tfrecords: the disk fills up while the shards are written (not a user error: a bug-like failure)
        (cfg, data, r"No space left on device", disk_full),
    ]
    for bad_cfg, inputs, message, fault in failures:
        with monkeypatch.context() as m:
            if fault is not None:
                m.setattr(writer, "write_tfrecords", fault)
            with pytest.raises((UserError, OSError), match=message):
                run_features(spark, bad_cfg, str(inputs), str(good), log=lambda s: None)
        assert tree_digest(good) == before, message
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".features")) == [".features.lock"]
