"""The synthetic data generator: contract schemas, special cases, bad rows, determinism, oracle."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

from twotower_features.generate import (
    GenerateError,
    GenerateParams,
    block_items,
    build_world,
    generate,
)

START = dt.date(2026, 6, 18)
ARGS = dict(users=60, items=80, days=10, start=START, seed=3, embedding_dim=16, bad_row_share=0.05)
RULE_1 = "liked OR shared OR fraction_watched > 0.8"


@pytest.fixture(scope="module")
def gen(spark, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("gen") / "data")
    messages: list[str] = []
    report = generate(spark, out, progress=messages.append, **ARGS)
    return {"out": out, "report": report, "messages": messages}


def _read(spark, gen, table):
    return spark.read.parquet(f"{gen['out']}/{table}")


def _valid(spark, gen):
    """Interactions without the contract-breaking rows, found independently of the generator."""
    items = _read(spark, gen, "items").select("item_id")
    rows = _read(spark, gen, "interactions")
    ok = rows.filter("user_id IS NOT NULL AND time_spent >= 0 AND NOT isnan(fraction_watched)")
    return ok.join(items, "item_id", "left_semi").dropDuplicates()


def test_schemas_match_the_contract(spark, gen):
    expected = {
        "interactions": "struct<user_id:string,item_id:string,event_ts:timestamp,time_spent:double,fraction_watched:double,liked:boolean,shared:boolean,dt:date>",
        "items": "struct<item_id:string,creator_id:string,duration_s:double,dedup_embedding:array<float>,simclr_embedding:array<float>,"
        "item_performance_views:double,item_performance_like_rate:double,creator_performance_followers:double,creator_performance_avg_fw:double>",
        "users": "struct<user_id:string,handset_maker:string,activity_profile:array<float>>",
        "user_stats": "struct<user_id:string,dt:date,ctr:double,timespent:double>",
        "item_stats": "struct<item_id:string,dt:date,ctr:double,timespent:double>",
        "creator_stats": "struct<creator_id:string,dt:date,ctr:double,timespent:double>",
        "ground_truth": "struct<user_id:string,item_id:string,event_ts:timestamp,true_engagement_prob:double>",
    }
    for table, schema in expected.items():
        assert _read(spark, gen, table).schema.simpleString() == schema, table


def test_ids_rows_and_ranges(spark, gen):
    rows = _read(spark, gen, "interactions")
    r = rows.agg(
        F.sum((F.col("dt") != F.to_date("event_ts")).cast("int")).alias("dt_mismatch"),
        F.min("dt").alias("first"),
        F.max("dt").alias("last"),
        F.sum((F.col("time_spent") < 0).cast("int")).alias("negative"),
        F.sum(F.isnan("fraction_watched").cast("int")).alias("nan"),
        F.min("fraction_watched").alias("fw_min"),
        F.max(F.when(~F.isnan("fraction_watched"), F.col("fraction_watched"))).alias("fw_max"),
        F.sum((F.col("fraction_watched") > 1).cast("int")).alias("replays"),
        F.sum((~F.col("item_id").rlike(r"^i\d{6}$")).cast("int")).alias("bad_item_format"),
        F.sum((~F.col("user_id").rlike(r"^u\d{6}$")).cast("int")).alias("bad_user_format"),
    ).first()
    assert r["dt_mismatch"] == 0
    assert (r["first"], r["last"]) == (START, START + dt.timedelta(days=9))
    assert r["negative"] == gen["report"]["bad_rows"]["negative_time_spent"]
    assert r["nan"] == gen["report"]["bad_rows"]["nan_fraction_watched"]
    assert r["fw_min"] >= 0 and r["fw_max"] <= 1.5 and r["replays"] > 0
    assert r["bad_item_format"] == 0 and r["bad_user_format"] == 0
    # time_spent = fraction_watched * duration on valid rows
    items = _read(spark, gen, "items").select("item_id", "duration_s")
    err = _valid(spark, gen).join(items, "item_id").agg(F.max(F.abs(F.col("time_spent") - F.col("fraction_watched") * F.col("duration_s")))).first()[0]
    assert err < 1e-9
    creators = _read(spark, gen, "items").agg(F.sum((~F.col("creator_id").rlike(r"^c\d{4}$")).cast("int"))).first()[0]
    assert creators == 0


def test_embeddings_and_profiles_have_fixed_length(spark, gen):
    items = _read(spark, gen, "items")
    lengths = items.select(F.size("dedup_embedding").alias("d"), F.size("simclr_embedding").alias("s")).distinct().collect()
    assert [(x["d"], x["s"]) for x in lengths] == [(16, 16)]
    assert items.count() == 80 and items.select("item_id").distinct().count() == 80
    users = _read(spark, gen, "users")
    prof = users.select(F.size("activity_profile").alias("n"), F.aggregate("activity_profile", F.lit(0.0), lambda a, x: a + x).alias("s")).collect()
    assert {x["n"] for x in prof} == {8}
    assert all(abs(x["s"] - 1.0) < 1e-5 for x in prof)
    assert users.count() == 60 and users.select("handset_maker").distinct().count() >= 3


def test_interactions_are_partitioned_by_dt_on_disk(gen):
    root = Path(gen["out"]) / "interactions"
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dirs == [f"dt={START + dt.timedelta(days=d)}" for d in range(10)]
    one = next((root / dirs[0]).glob("*.parquet"))
    assert "dt" not in pq.read_schema(one).names


def test_report_file_matches_the_return_value_and_progress_names_tables(gen):
    on_disk = json.loads((Path(gen["out"]) / "generate_report.json").read_text())
    assert on_disk == json.loads(json.dumps(gen["report"]))
    assert on_disk["parameters"]["users"] == 60 and on_disk["parameters"]["start"] == "2026-06-18"
    for table in ("items", "users", "interactions", "ground_truth", "user_stats", "item_stats", "creator_stats"):
        assert any(m.startswith(f"generate: {table}: {gen['report']['rows'][table]} rows") for m in gen["messages"]), table


def test_heavy_users_are_over_the_cap_in_every_window(spark, gen):
    ids = gen["report"]["special_cases"]["heavy_user_ids"]
    assert len(ids) >= 2
    valid = _valid(spark, gen).filter(F.col("user_id").isin(ids))
    # the last 7 days (cap 2000) and the whole 10 days (cap 2000 * 10 / 7 = 2857)
    last7 = valid.filter(F.col("dt") >= START + dt.timedelta(days=3)).groupBy("user_id").count().collect()
    whole = valid.groupBy("user_id").count().collect()
    assert len(last7) == len(ids) and all(r["count"] > 2000 for r in last7)
    assert all(r["count"] > 2000 * 10 / 7 for r in whole)


def test_users_without_positive_and_without_negative_exist(spark, gen):
    sc = gen["report"]["special_cases"]
    per_user = _valid(spark, gen).groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.max(F.expr(RULE_1).cast("int")).alias("any_pos"),
        F.min(F.expr(RULE_1).cast("int")).alias("all_pos"),
        F.min(F.expr("fraction_watched > 0.9").cast("int")).alias("all_pos_2"),
        F.min(F.expr("fraction_watched > 0.99 OR liked OR shared").cast("int")).alias("all_pos_3"),
    )
    no_pos = {r["user_id"] for r in per_user.filter("any_pos = 0 AND n >= 4").collect()}
    no_neg = {r["user_id"] for r in per_user.filter("all_pos = 1 AND all_pos_2 = 1 AND all_pos_3 = 1 AND n >= 4").collect()}
    assert set(sc["no_positive_user_ids"]) <= no_pos and len(sc["no_positive_user_ids"]) >= 2
    assert set(sc["no_negative_user_ids"]) <= no_neg and len(sc["no_negative_user_ids"]) >= 2


def test_cold_and_late_items_and_late_users(spark, gen):
    sc = gen["report"]["special_cases"]
    valid = _valid(spark, gen)
    cold = valid.filter(F.col("item_id").isin(sc["cold_item_ids"])).groupBy("item_id").count().collect()
    assert len(cold) == len(sc["cold_item_ids"]) >= 2
    assert all(1 <= r["count"] < 3 for r in cold)
    assert sum(r["count"] for r in cold) == sc["cold_item_views"]
    late_day = START + dt.timedelta(days=8)
    for col, ids in (("item_id", sc["late_item_ids"]), ("user_id", sc["late_user_ids"])):
        firsts = valid.filter(F.col(col).isin(ids)).groupBy(col).agg(F.min("dt").alias("first")).collect()
        assert len(firsts) == len(ids) >= 2, col
        assert all(r["first"] >= late_day for r in firsts), col


def test_same_instant_pairs_of_one_user_on_different_items(spark, gen):
    pairs = (
        _valid(spark, gen).groupBy("user_id", "event_ts").agg(F.countDistinct("item_id").alias("n_items")).filter("n_items >= 2").count()
    )
    assert pairs >= 1
    assert pairs <= gen["report"]["special_cases"]["same_instant_pairs"]


def test_bad_rows_are_injected_at_the_share_and_counted(spark, gen):
    bad = gen["report"]["bad_rows"]
    rows = _read(spark, gen, "interactions")
    items = _read(spark, gen, "items").select("item_id")
    total = rows.count()
    assert bad["null_user_id"] == rows.filter("user_id IS NULL").count()
    assert bad["unknown_item_id"] == rows.join(items, "item_id", "left_anti").count()
    assert bad["duplicate_event"] == total - rows.dropDuplicates().count()
    kinds = ("null_user_id", "negative_time_spent", "nan_fraction_watched", "unknown_item_id", "duplicate_event")
    assert all(bad[k] > 0 for k in kinds)
    assert bad["total"] == sum(bad[k] for k in kinds)
    assert abs(bad["total"] / total - 0.05) < 0.015
    assert total == gen["report"]["rows"]["interactions"]
    # no bad row comes from a special user (their cases hold on valid rows)
    sc = gen["report"]["special_cases"]
    special = sc["heavy_user_ids"] + sc["no_positive_user_ids"] + sc["no_negative_user_ids"]
    broken = rows.filter(F.col("user_id").isin(special)).filter("time_spent < 0 OR isnan(fraction_watched)").count()
    assert broken == 0


def test_ground_truth_joins_one_to_one_with_valid_interactions(spark, gen):
    valid = _valid(spark, gen)
    truth = _read(spark, gen, "ground_truth")
    keys = ["user_id", "item_id", "event_ts"]
    n_valid, n_truth = valid.count(), truth.count()
    assert n_truth == n_valid == gen["report"]["rows"]["valid_interactions"]
    assert truth.select(*keys).distinct().count() == n_truth
    assert valid.join(truth, keys).count() == n_valid
    lo, hi = truth.agg(F.min("true_engagement_prob"), F.max("true_engagement_prob")).first()
    assert 0.0 <= lo and hi <= 1.0


def test_true_probability_is_informative(spark, gen):
    sc = gen["report"]["special_cases"]
    special = sc["no_positive_user_ids"] + sc["no_negative_user_ids"]  # their prob is 0 / 1 by construction
    df = (
        _valid(spark, gen)
        .join(_read(spark, gen, "ground_truth"), ["user_id", "item_id", "event_ts"])
        .filter(~F.col("user_id").isin(special))
        .select(F.expr(RULE_1).cast("int").alias("label"), "true_engagement_prob", "item_id")
        .toPandas()
    )
    rate = df["label"].mean()
    assert 0.3 <= rate <= 0.7
    oracle = roc_auc_score(df["label"], df["true_engagement_prob"])
    popularity = roc_auc_score(df["label"], df.groupby("item_id")["item_id"].transform("size"))
    assert oracle > 0.65
    assert oracle > popularity + 0.1


def test_stats_tables_are_daily_aggregates_of_valid_interactions(spark, gen):
    valid = _valid(spark, gen).select("user_id", "dt", F.expr(RULE_1).cast("double").alias("pos"), "time_spent").toPandas()
    expected = valid.groupby(["user_id", "dt"]).agg(ctr=("pos", "mean"), timespent=("time_spent", "sum")).reset_index()
    got = _read(spark, gen, "user_stats").toPandas().merge(expected, on=["user_id", "dt"], how="outer", indicator=True)
    assert (got["_merge"] == "both").all()
    assert np.allclose(got["ctr_x"], got["ctr_y"]) and np.allclose(got["timespent_x"], got["timespent_y"])
    creators = _read(spark, gen, "creator_stats")
    assert creators.select("creator_id", "dt").distinct().count() == creators.count()
    assert creators.filter("ctr < 0 OR ctr > 1 OR timespent < 0").count() == 0


def test_same_seed_same_output_other_seed_differs(spark, gen, tmp_path):
    again = generate(spark, str(tmp_path / "again"), progress=None, **ARGS)
    a = _read(spark, gen, "interactions")
    b = spark.read.parquet(str(tmp_path / "again" / "interactions"))
    assert a.exceptAll(b).count() == 0 and b.exceptAll(a).count() == 0
    ia = _read(spark, gen, "items")
    ib = spark.read.parquet(str(tmp_path / "again" / "items"))
    assert ia.exceptAll(ib).count() == 0
    assert again["rows"] == gen["report"]["rows"] and again["bad_rows"] == gen["report"]["bad_rows"]
    generate(spark, str(tmp_path / "other"), progress=None, **{**ARGS, "seed": 4})
    c = spark.read.parquet(str(tmp_path / "other" / "interactions"))
    assert a.exceptAll(c).count() > 0.9 * a.count()


def test_rerun_overwrites(spark, tmp_path):
    out = str(tmp_path / "data")
    generate(spark, out, progress=None, **{**ARGS, "days": 3, "bad_row_share": 0.0})
    report = generate(spark, out, progress=None, **{**ARGS, "days": 2, "bad_row_share": 0.0})
    days = sorted(p.name for p in (tmp_path / "data" / "interactions").iterdir() if p.is_dir())
    assert days == ["dt=2026-06-18", "dt=2026-06-19"]
    assert spark.read.parquet(out + "/interactions").count() == report["rows"]["interactions"]
    assert report["bad_rows"]["total"] == 0


def test_content_embeddings_reflect_topics_and_spread_variance():
    p = GenerateParams(users=20, items=1500, seed=1, embedding_dim=256)
    world = build_world(p)
    emb = block_items(p, world["items"], 0)
    topic = world["items"]["item_topic"][:1500].argmax(axis=1)
    same = topic[:, None] == topic[None, :]
    np.fill_diagonal(same, False)
    cos_gap = {}
    for name in ("simclr", "dedup"):
        x = emb[name].astype(np.float64)
        assert x.shape == (1500, 256) and emb[name].dtype == np.float32
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = xn @ xn.T
        cos_gap[name] = s[same].mean() - s[~same & ~np.eye(1500, dtype=bool)].mean()
        xc = x - x.mean(axis=0)
        var = np.linalg.svd(xc, compute_uv=False) ** 2
        share = np.cumsum(var) / var.sum()
        # 12 topics do not explain everything; 128 components keep clearly more than 64
        assert share[11] < 0.85 and share[127] - share[63] > 0.03, name
    assert cos_gap["dedup"] > 0.1 and cos_gap["simclr"] > cos_gap["dedup"]


@pytest.mark.parametrize(
    "kwargs, name",
    [({"users": 5}, "users"), ({"items": 10}, "items"), ({"days": 0}, "days"), ({"bad_row_share": 0.9}, "bad_row_share"),
     ({"start": "2026-06-18"}, "start"), ({"topics": 1}, "topics"), ({"seed": -1}, "seed")],
)
def test_bad_arguments_name_the_argument(spark, tmp_path, kwargs, name):
    with pytest.raises(GenerateError, match=f"'{name}'"):
        generate(spark, str(tmp_path / "x"), progress=None, **kwargs)
    assert not (tmp_path / "x").exists()
