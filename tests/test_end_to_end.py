"""End to end on generated data: every stage, the leakage invariant, TFRecords read back by
TensorFlow value for value, a rerun replacing its output, then train and evaluate."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from twotower_features import columns as C
from twotower_features.config import ExperimentConfig
from twotower_features.generate import generate
from twotower_features.pipeline import run_features, run_examples
from twotower_features.spec import FeatureSpec

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
    for r in rows:
        micros = int(r[C.EVENT_TS].replace(tzinfo=dt.timezone.utc).timestamp() * 1_000_000) if r[C.EVENT_TS].tzinfo is None else int(r[C.EVENT_TS].timestamp() * 1_000_000)
        got = parsed[(r[C.USER_ID], r[C.ITEM_ID], micros)]
        assert got[C.LABEL] == r[C.LABEL] and got[C.WEIGHT] == np.float32(r[C.WEIGHT])
        np.testing.assert_array_equal(got["pos_hist_mean"], np.asarray(r["pos_hist_mean"], np.float32))
        np.testing.assert_array_equal(got["item_emb"], np.asarray(r["item_emb"], np.float32))
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
    assert rows["model"]["rows"] == rows["oracle"]["rows"] > 0
