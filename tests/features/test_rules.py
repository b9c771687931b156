"""Each stage rule on tiny hand-made frames; expected values are worked out in the comments."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from twotower_features import columns as C
from twotower_features import filters as flt
from twotower_features.config import (
    FilterConfig,
    LabelConfig,
    SamplingConfig,
    WeightConfig,
    WindowConfig,
)
from twotower_features.history import HistoryParams, mark_history_events, user_histories
from twotower_features.labels import LabelRuleError, add_label, add_weight
from twotower_features.sampling import (
    downsample,
    is_example,
    rebalance_rates,
    sample_users,
    split_and_class_counts,
)
from twotower_features.validate import (
    INTERACTION_SCHEMA,
    ContractError,
    check_schema,
    quarantine_interactions,
)
from twotower_features.window import assign_split

DAY = dt.date(2026, 7, 1)
SCHEMA = "user_id string, item_id string, event_ts timestamp, time_spent double, fraction_watched double, liked boolean, shared boolean, dt date"


def ts(day: dt.date, second: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, 12, 0, 0) + dt.timedelta(seconds=second)


def row(user, item, second=0, *, day=DAY, time_spent=10.0, fw=0.5, liked=False, shared=False):
    t = ts(day, second)
    return (user, item, t, time_spent, fw, liked, shared, t.date())


def frame(spark, rows):
    return spark.createDataFrame(rows, SCHEMA)


# ------------------------------------------------------------------------ window
def test_window_split_keeps_train_days_and_validation_day(spark):
    w = WindowConfig(validation_date=dt.date(2026, 7, 5), train_days=2)  # train 07-03, 07-04
    rows = [row("u", f"i{d}", day=dt.date(2026, 7, d)) for d in (2, 3, 4, 5, 6)]
    got = {r[C.DT].day: r[C.SPLIT] for r in assign_split(frame(spark, rows), w).collect()}
    assert got == {3: "train", 4: "train", 5: "validation"}  # 07-02 and 07-06 are outside


# ------------------------------------------------------------------------ labels and weights
@pytest.mark.parametrize(
    "rule,fw,liked,shared,expected",
    [
        ("liked OR shared OR fraction_watched > 0.8", 0.8, False, False, 0),  # exactly at the threshold: not > 0.8
        ("liked OR shared OR fraction_watched > 0.8", 0.8000001, False, False, 1),
        ("liked OR shared OR fraction_watched > 0.8", 0.1, True, False, 1),
        ("fraction_watched > 0.9", 0.9, True, True, 0),
        ("fraction_watched > 0.99 OR liked OR shared", 0.99, False, True, 1),
        ("fraction_watched > 0.99 OR liked OR shared", 0.99, False, False, 0),
    ],
)
def test_label_rules(spark, rule, fw, liked, shared, expected):
    df = add_label(frame(spark, [row("u", "i", fw=fw, liked=liked, shared=shared)]), LabelConfig(rule))
    assert df.collect()[0][C.LABEL] == expected


def test_label_rule_errors_name_the_problem(spark):
    df = frame(spark, [row("u", "i")])
    with pytest.raises(LabelRuleError, match="watch_pct"):
        add_label(df, LabelConfig("watch_pct > 0.5"))
    with pytest.raises(LabelRuleError, match="must be boolean"):
        add_label(df, LabelConfig("fraction_watched * 2"))


def test_engagement_tier_weights(spark):
    rule = LabelConfig("liked OR shared OR fraction_watched > 0.8")
    rows = [
        row("u", "a", fw=0.9),  # fw only -> 1.2
        row("u", "b", fw=0.1, liked=True),  # liked -> 1.5
        row("u", "c", fw=0.1, shared=True),  # shared -> 2.0
        row("u", "d", fw=0.9, liked=True),  # two of three -> 2.5
        row("u", "e", fw=0.9, liked=True, shared=True),  # all three -> 3.0
        row("u", "f", fw=0.1),  # negative -> 1.0
    ]
    df = add_weight(add_label(frame(spark, rows), rule), WeightConfig("engagement_tiers"))
    got = {r[C.ITEM_ID]: r[C.WEIGHT] for r in df.collect()}
    assert got == {"a": 1.2, "b": 1.5, "c": 2.0, "d": 2.5, "e": 3.0, "f": 1.0}


def test_sqrt_time_spent_weights(spark):
    rows = [row("u", "a", fw=0.95, time_spent=16.0), row("u", "b", fw=0.95, time_spent=100.0), row("u", "c", fw=0.1, time_spent=49.0)]
    df = add_weight(add_label(frame(spark, rows), LabelConfig("fraction_watched > 0.9")), WeightConfig("sqrt_time_spent"))
    got = {r[C.ITEM_ID]: r[C.WEIGHT] for r in df.collect()}
    # sqrt(16) = 4; sqrt(100) = 10 capped at 8; negative -> 1.0 whatever its time
    assert got == {"a": 4.0, "b": 8.0, "c": 1.0}


# ------------------------------------------------------------------------ filters
def test_item_filter_boundary(spark):
    rows = [row(f"u{k}", "three", k) for k in range(3)] + [row(f"u{k}", "two", k) for k in range(2)]
    fitted = flt.fit_item_filter(frame(spark, rows), FilterConfig())
    got = {r[C.ITEM_ID]: (r["n"], r["keep"]) for r in fitted.collect()}
    assert got == {"three": (3, True), "two": (2, False)}


def test_client_filter_rules_and_scaled_cap(spark):
    cfg = FilterConfig(client_max_interactions_per_7d=7)  # a 14-day window: cap 7 * 14 / 7 = 14
    mix = lambda u, n: [row(u, f"i{k}", k, fw=0.9 if k == 0 else 0.1) for k in range(n)]  # 1 positive, n-1 negatives
    rows = (
        mix("four", 4)  # exactly 4: kept
        + mix("three", 3)  # 3 < 4: client_min_interactions
        + mix("at_cap", 14)  # exactly at the cap: kept
        + mix("over_cap", 15)  # 15 > 14: client_max_interactions
        + [row("only_pos", f"i{k}", k, fw=0.9) for k in range(5)]  # no negative
        + [row("only_neg", f"i{k}", k, fw=0.1) for k in range(5)]  # no positive
    )
    df = add_label(frame(spark, rows), LabelConfig("fraction_watched > 0.8"))
    fitted = flt.fit_client_filter(df, cfg, train_days=14)
    got = {r[C.USER_ID]: r["rule"] for r in fitted.collect()}
    assert got == {
        "four": None,
        "three": "client_min_interactions",
        "at_cap": None,
        "over_cap": "client_max_interactions",
        "only_pos": "client_min_negatives",
        "only_neg": "client_min_positives",
    }
    assert cfg.client_max_interactions(7) == 7 and FilterConfig().client_max_interactions(14) == 4000


def test_validation_rows_follow_train_filters(spark):
    """An item seen only on the validation day, or a user absent from train, has no validation rows."""
    w = WindowConfig(validation_date=dt.date(2026, 7, 5), train_days=1)
    train_day, val_day = dt.date(2026, 7, 4), dt.date(2026, 7, 5)
    rows = [row(f"u{k}", "popular", k, day=train_day) for k in range(3)]
    rows += [row("u0", "popular", 10, day=val_day), row("u0", "val_only", 11, day=val_day), row("newcomer", "popular", 12, day=val_day)]
    df = assign_split(frame(spark, rows), w)
    item_filter = flt.fit_item_filter(df.filter(F.col(C.SPLIT) == "train"), FilterConfig())
    kept = flt.apply_item_filter(df, item_filter)
    users = spark.createDataFrame([("u0", True), ("u1", True)], "user_id string, keep boolean")
    out = flt.apply_client_filter(kept, users).filter(F.col(C.SPLIT) == "validation")
    assert [(r[C.USER_ID], r[C.ITEM_ID]) for r in out.collect()] == [("u0", "popular")]


# ------------------------------------------------------------------------ validation / quarantine
def test_quarantine_reasons_and_conservation(spark):
    rows = [
        row("u", "i1", 0),
        row("u", "i1", 0),  # exact duplicate of the first: one is quarantined
        row(None, "i1", 1),
        row("u", "i1", 2, time_spent=-1.0),
        row("u", "i1", 3, fw=float("nan")),
        row("u", "ghost", 4),
    ]
    items = spark.createDataFrame([("i1",)], "item_id string")
    valid, bad = quarantine_interactions(frame(spark, rows), items)
    reasons = sorted(r[C.QUARANTINE_REASON] for r in bad.collect())
    assert reasons == ["bad_fraction_watched", "bad_time_spent", "duplicate_event", "null_id", "unknown_item"]
    assert valid.count() == 1 and valid.count() + bad.count() == len(rows)


def test_schema_check_names_the_column(spark):
    df = frame(spark, [row("u", "i")]).withColumn(C.LIKED, F.lit(1))
    with pytest.raises(ContractError, match="'liked' must be boolean"):
        check_schema(df, INTERACTION_SCHEMA, "interactions")
    with pytest.raises(ContractError, match="lacks column"):
        check_schema(df.drop(C.DT), INTERACTION_SCHEMA, "interactions")


# ------------------------------------------------------------------------ sampling
def test_user_sampling_is_deterministic_and_by_user(spark):
    rows = [row(f"u{k:03d}", f"i{j}", j) for k in range(400) for j in range(2)]
    df = frame(spark, rows)
    a = sample_users(df, SamplingConfig(user_fraction=0.3, seed=5))
    b = sample_users(df.repartition(7), SamplingConfig(user_fraction=0.3, seed=5))
    users_a = {r[C.USER_ID] for r in a.collect()}
    assert users_a == {r[C.USER_ID] for r in b.collect()}  # partitioning does not matter
    assert a.count() == 2 * len(users_a)  # whole users, both rows each
    assert 0.2 < len(users_a) / 400 < 0.4
    c = {r[C.USER_ID] for r in sample_users(df, SamplingConfig(user_fraction=0.3, seed=6)).collect()}
    assert c != users_a


def test_split_and_class_counts_are_the_sampled_train_rows_labels_in_one_pass(spark):
    rows = [(f"u{k:03d}", f"i{j}", ts(DAY, j), "train" if j < 3 else "validation", int(k % 4 == j)) for k in range(300) for j in range(5)]
    df = spark.createDataFrame(rows, f"{C.USER_ID} string, {C.ITEM_ID} string, {C.EVENT_TS} timestamp, {C.SPLIT} string, {C.LABEL} int")
    cfg = SamplingConfig(user_fraction=0.5, seed=3)
    sampled = {r[C.USER_ID] for r in sample_users(df, cfg).select(C.USER_ID).distinct().collect()}
    assert 0 < len(sampled) < 300
    # by hand: a user's train rows are j = 0, 1, 2, positive where k % 4 == j
    train = [(k, j) for k in range(300) for j in range(3) if f"u{k:03d}" in sampled]
    pos = sum(1 for k, j in train if k % 4 == j)
    per_split, p, n = split_and_class_counts(df, cfg)
    assert per_split == {"train": 900, "validation": 600}
    assert (p, n) == (pos, len(train) - pos) and 0 < pos < len(train)
    assert split_and_class_counts(df.filter(F.col(C.SPLIT) == "validation"), cfg) == ({"validation": 600}, 0, 0)


@pytest.mark.parametrize("validation", [False, True])
def test_is_example_is_user_sampling_then_rebalancing_row_by_row(spark, validation):
    # the examples stage's written rows come from this flag: it must pick exactly the rows of
    # sample_users (train only, or both splits) then downsample on the train split, as a union
    rows = [(f"u{k:03d}", f"i{j}", ts(DAY, j), split, j % 3 == 0) for k in range(300) for j in range(4) for split in ("train", "validation")]
    df = spark.createDataFrame(rows, f"{C.USER_ID} string, {C.ITEM_ID} string, {C.EVENT_TS} timestamp, {C.SPLIT} string, _pos boolean")
    df = df.withColumn(C.LABEL, F.col("_pos").cast("int"))
    cfg = SamplingConfig(user_fraction=0.5, seed=3, validation=validation)
    pos_rate, neg_rate = 0.6, 0.8
    sampled = sample_users(df if validation else df.filter(F.col(C.SPLIT) == "train"), cfg)
    if not validation:
        sampled = sampled.unionByName(df.filter(F.col(C.SPLIT) == "validation"))
    expected = downsample(sampled.filter(F.col(C.SPLIT) == "train"), pos_rate, neg_rate, cfg.seed).unionByName(sampled.filter(F.col(C.SPLIT) == "validation"))
    key = lambda d: sorted((r[C.USER_ID], r[C.ITEM_ID], r[C.SPLIT]) for r in d.select(C.USER_ID, C.ITEM_ID, C.SPLIT).collect())
    got = df.filter(is_example(cfg, pos_rate, neg_rate))
    assert key(got) == key(expected)
    n_train = sum(1 for r in key(got) if r[2] == "train")
    assert 0 < n_train < 600  # both decisions removed train rows: the test is not vacuous
    assert sum(1 for r in key(got) if r[2] == "validation") == (len(key(expected.filter(F.col(C.SPLIT) == "validation"))) if validation else 1200)


def test_rebalance_rates():
    # 70 positives, 30 negatives, target 1:1 -> keep 30/70 of positives
    assert rebalance_rates(70, 30, 1.0) == pytest.approx((30 / 70, 1.0))
    # 40 positives, 60 negatives, target 1:1 -> keep 40/60 of negatives
    assert rebalance_rates(40, 60, 1.0) == pytest.approx((1.0, 40 / 60))
    assert rebalance_rates(40, 60, 0.0) == (1.0, 1.0)


# ------------------------------------------------------------------------ histories
def _user_table(events, avg):
    """events: (item, second, label, time_spent); avg: item -> average time spent. The history
    flags are written here by hand (the rule: a negative below its item's average), for the
    tests of the list mechanics; the rule itself is tested through `mark_history_events`."""
    base = dt.datetime(2026, 7, 1, tzinfo=dt.timezone.utc)
    t = pa.table(
        {
            C.USER_ID: ["u"] * len(events),
            C.ITEM_ID: [e[0] for e in events],
            C.EVENT_TS: pa.array([base + dt.timedelta(seconds=e[1]) for e in events], pa.timestamp("us", tz="UTC")),
            "_is_pos": [e[2] == 1 for e in events],
            "_is_neg": [e[2] == 0 and e[3] < avg[e[0]] for e in events],
        }
    )
    return t


def test_history_lists_point_in_time_ties_and_negative_rule(spark):
    # (item, second, label, time_spent); every item's train average time spent is 10.0
    events = [
        ("a", 0, 1, 5.0),  # positive at t0
        ("c", 10, 1, 5.0),  # two positives at the same instant t10: ...
        ("b", 10, 1, 5.0),  # ... most recent first among them is 'c' (item_id descending)
        ("d", 20, 0, 10.0),  # negative but time_spent == item average: NOT a negative-history item
        ("e", 30, 0, 9.9),  # negative below the average: enters the negative history
        ("a", 40, 0, 1.0),
    ]
    # the flags come from the function production calls (pipeline -> compute_histories)
    df = frame(spark, [row("u", item, sec, time_spent=spent) for item, sec, _, spent in events])
    df = df.withColumn(C.LABEL, F.when(F.col(C.ITEM_ID).isin("b", "c") | ((F.col(C.ITEM_ID) == "a") & (F.col(C.TIME_SPENT) == 5.0)), 1).otherwise(0))
    df = df.withColumn(C.ITEM_AVG_TIME_SPENT, F.lit(10.0))
    marked = mark_history_events(df).select(C.USER_ID, C.ITEM_ID, C.EVENT_TS, "_is_pos", "_is_neg").toArrow()
    p = HistoryParams(n=2, aggregations=(), concat_k=1, keep_lists=True, emb_dim=0, n_clusters=0, matrix_file=None)
    out = user_histories(marked, p).to_pylist()
    got = {(r[C.ITEM_ID], r[C.EVENT_TS].second): (r["pos_history"], r["neg_history"]) for r in out}
    assert got[("a", 0)] == ([], [])
    # b and c at t10 do not see each other (same instant), only 'a'
    assert got[("b", 10)] == (["a"], []) and got[("c", 10)] == (["a"], [])
    # at t20: positives before are a, b, c -> last 2, most recent first, tie by item_id desc: c, b
    assert got[("d", 20)] == (["c", "b"], [])
    assert got[("e", 30)] == (["c", "b"], [])  # 'd' had time_spent == average: not negative history
    assert got[("a", 40)] == (["c", "b"], ["e"])
    assert [r["pos_hist_len"] for r in out] == [0, 1, 1, 2, 2, 2]


def test_history_aggregations_match_the_lists(tmp_path):
    rng = np.random.default_rng(0)
    n_items, d, k = 6, 3, 4
    matrix = rng.normal(size=(n_items, d)).astype(np.float32)
    np.save(tmp_path / "m.npy", matrix)
    clusters = np.array([0, 1, 2, 3, 0, 1], dtype=np.int32)
    events = [(f"i{j % n_items}", s, int(s % 3 != 0), 1.0) for j, s in enumerate(range(0, 40, 2))]
    t = _user_table(events, {f"i{j}": 5.0 for j in range(n_items)})
    t = t.append_column("item_idx", pa.array([int(e[0][1:]) for e in events], pa.int32()))
    t = t.append_column(C.ITEM_CLUSTER, pa.array([int(clusters[int(e[0][1:])]) for e in events], pa.int32()))
    p = HistoryParams(n=3, aggregations=("mean", "concat", "clusters"), concat_k=2, keep_lists=True, emb_dim=d, n_clusters=k, matrix_file=str(tmp_path / "m.npy"))
    for r in user_histories(t, p).to_pylist():
        for side in ("pos", "neg"):
            ids = [int(x[1:]) for x in r[f"{side}_history"]]
            # independent computation from the id list
            exp_mean = matrix[ids].astype(np.float64).mean(0) if ids else np.zeros(d)
            np.testing.assert_allclose(r[f"{side}_hist_mean"], exp_mean, rtol=1e-5, atol=1e-6)
            exp_cat = np.zeros((2, d), np.float32)
            for j, i in enumerate(ids[:2]):
                exp_cat[j] = matrix[i]
            np.testing.assert_allclose(r[f"{side}_hist_concat"], exp_cat.reshape(-1), rtol=1e-6)
            exp_cl = np.bincount(clusters[ids], minlength=k) / len(ids) if ids else np.zeros(k)
            np.testing.assert_allclose(r[f"{side}_hist_clusters"], exp_cl, rtol=1e-6)


def test_history_marks_use_item_average(spark):
    # (time_spent, label, item average) -> (_is_pos, _is_neg): a negative enters the negative
    # history only strictly below its item's average; a positive is always a positive
    cases = [
        (5.0, 0, 10.0, False, True),
        (9.999, 0, 10.0, False, True),
        (10.0, 0, 10.0, False, False),  # equal: not below
        (15.0, 0, 10.0, False, False),
        (5.0, 1, 10.0, True, False),
        (5.0, 0, None, False, False),  # no train average for the item: never a negative-history item
    ]
    rows = [row("u", "a", k, time_spent=t) for k, (t, *_rest) in enumerate(cases)]
    df = frame(spark, rows).withColumn("_k", F.second(C.EVENT_TS))
    labels = F.create_map(*[x for k, c in enumerate(cases) for x in (F.lit(k), F.lit(c[1]))])
    avgs = F.create_map(*[x for k, c in enumerate(cases) for x in (F.lit(k), F.lit(c[2]).cast("double"))])
    df = df.withColumn(C.LABEL, labels[F.col("_k")]).withColumn(C.ITEM_AVG_TIME_SPENT, avgs[F.col("_k")])
    got = sorted((r["_k"], r["_is_pos"], bool(r["_is_neg"])) for r in mark_history_events(df).collect())
    assert got == [(k, c[3], c[4]) for k, c in enumerate(cases)]
