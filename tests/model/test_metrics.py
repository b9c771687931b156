"""Metrics against hand-computed values, sklearn, and a MIND-style per-user loop."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from twotower_model.metrics import (
    COUNT_KEYS,
    METRIC_KEYS,
    TABLE_METRICS,
    MissingColumnsError,
    _user_score_order,
    compute_metrics,
    evaluate_predictions_file,
    metrics_from_frame,
    reference_scores,
)

L2, L3, L5, L7 = math.log2(2), math.log2(3), math.log2(5), math.log2(7)


# ---- MIND's evaluate.py, per user, written out as an independent reference -----------------
def mind_dcg(y_true, y_score, k):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order[:k])
    gains = 2**y_true - 1
    discounts = np.log2(np.arange(len(y_true)) + 2)
    return np.sum(gains / discounts)


def mind_ndcg(y_true, y_score, k):
    return mind_dcg(y_true, y_score, k) / mind_dcg(y_true, y_true, k)


def mind_mrr(y_true, y_score):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order)
    return np.sum(y_true / (np.arange(len(y_true)) + 1)) / np.sum(y_true)


def loop_ap10(y_true, y_score):
    order = np.argsort(y_score)[::-1]
    y = np.take(y_true, order)[:10]
    hits, total = 0, 0.0
    for rank, label in enumerate(y, start=1):
        if label:
            hits += 1
            total += hits / rank
    return total / min(10, int(np.sum(y_true)))


def loop_metrics(users, labels, scores):
    per = {"ndcg@5": [], "ndcg@10": [], "mrr": [], "cust_map@10": []}
    for u in pd.unique(users):
        m = users == u
        y, s = labels[m], scores[m]
        if y.sum() == 0:
            continue
        per["ndcg@5"].append(mind_ndcg(y, s, 5))
        per["ndcg@10"].append(mind_ndcg(y, s, 10))
        per["mrr"].append(mind_mrr(y, s))
        per["cust_map@10"].append(loop_ap10(y, s))
    return {k: float(np.mean(v)) for k, v in per.items()}, len(per["mrr"])


# ---- hand-computed ---------------------------------------------------------------------------
def test_two_users_by_hand_rows_in_any_order():
    # u1 ranked by score: labels 0 1 0 1 0 (positives at ranks 2 and 4)
    #   DCG@5 = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3)
    #   MRR = (1/2 + 1/4) / 2 = 0.375;  AP@10 = (1/2 + 2/4) / min(10, 2) = 0.5
    # u2 ranked: 1 0 0 -> NDCG 1, MRR 1, AP 1.   u3: no positive -> skipped.
    rows = [
        ("u1", 0, 0.1), ("u2", 0, 0.4), ("u1", 1, 0.3), ("u3", 0, 0.2), ("u1", 0, 0.9),
        ("u2", 1, 0.8), ("u1", 1, 0.7), ("u2", 0, 0.6), ("u1", 0, 0.5), ("u3", 0, 0.95),
    ]
    users, labels, scores = map(np.array, zip(*rows))
    got = compute_metrics(users, labels, scores)
    ndcg_u1 = (1 / L3 + 1 / L5) / (1 / L2 + 1 / L3)
    assert got["ndcg@5"] == pytest.approx((ndcg_u1 + 1.0) / 2)
    assert got["ndcg@10"] == pytest.approx((ndcg_u1 + 1.0) / 2)
    assert got["mrr"] == pytest.approx((0.375 + 1.0) / 2)
    assert got["cust_map@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["rows"] == 10 and got["users"] == 3
    assert got["users_scored"] == 2 and got["rows_scored"] == 8
    assert got["users_skipped_no_positive"] == 1 and got["rows_skipped"] == 2
    assert got["users_all_positive"] == 0 and got["rows_tied_within_user"] == 0
    assert got["undefined"] == {}


def test_cutoffs_at_5_and_10():
    # one user, 12 rows ranked by score; positives at ranks 6 and 11
    #   DCG@5 = 0 -> NDCG@5 = 0
    #   DCG@10 = 1/log2(7); IDCG@10 = 1/log2(2) + 1/log2(3)
    #   MRR = (1/6 + 1/11) / 2 over the whole list
    #   AP@10 = (1/6 * 1) / min(10, 2)   (rank 11 is past the cut-off)
    scores = np.arange(12, 0, -1) / 12.0
    labels = np.zeros(12, dtype=int)
    labels[[5, 10]] = 1
    got = compute_metrics(np.full(12, 7), labels, scores)
    assert got["ndcg@5"] == 0.0
    assert got["ndcg@10"] == pytest.approx((1 / L7) / (1 / L2 + 1 / L3))
    assert got["mrr"] == pytest.approx((1 / 6 + 1 / 11) / 2)
    assert got["cust_map@10"] == pytest.approx((1 / 6) / 2)


def test_ap_divides_by_min_of_10_and_positives():
    # 15 rows all positive: AP@10 = sum_{k<=10} (k/k) / min(10, 15) = 10 / 10 = 1
    got = compute_metrics(np.zeros(15), np.ones(15), np.linspace(1, 0, 15))
    assert got["cust_map@10"] == pytest.approx(1.0)
    # 15 rows, positives at ranks 1..5 and 11..15: precision 1 at ranks 1..5, no positive at 6..10
    #   AP@10 = (1 + 1 + 1 + 1 + 1) / min(10, 10) = 0.5
    split = np.r_[np.ones(5), np.zeros(5), np.ones(5)]
    assert compute_metrics(np.zeros(15), split, np.linspace(1, 0, 15))["cust_map@10"] == pytest.approx(0.5)
    assert got["users_all_positive"] == 1 and got["users_scored"] == 1
    # all-positive user: AUC/MAP undefined (one class), per-user metrics defined
    assert math.isnan(got["auc"]) and math.isnan(got["map"])
    assert set(got["undefined"]) == {"auc", "map"}


def test_ties_ranked_by_original_row_order():
    # user a: scores 0.5, 0.5 with labels 0, 1 -> the negative keeps rank 1, the positive rank 2
    #   MRR = 1/2;  NDCG = (1/log2(3)) / 1;  AP@10 = (1/2) / 1
    # user b: same rows in the other order -> positive first: all 1
    users = ["a", "a", "b", "b"]
    got = compute_metrics(users, [0, 1, 1, 0], [0.5, 0.5, 0.5, 0.5])
    assert got["mrr"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["ndcg@5"] == pytest.approx((1 / L3 + 1.0) / 2)
    assert got["cust_map@10"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["rows_tied_within_user"] == 4
    # equal scores across different users are not ties
    assert compute_metrics(["a", "b"], [1, 0], [0.5, 0.5])["rows_tied_within_user"] == 0


@pytest.mark.parametrize("overflow", [False, True], ids=["unique-key", "stable-key"])
def test_user_score_order_is_lexsort(overflow):
    # the rows' order by user, score descending, row: numpy's lexsort is the reference. Scores
    # on a coarse grid make many ties within a user (and equal scores across users); a huge
    # n_users pushes the key past 63 bits and takes the stable-sort branch.
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 50, size=5_000)
    scores = np.round(rng.normal(size=codes.size), 1)
    scores[::7] = -0.0  # -0.0 == 0.0: one score, one rank
    n_users = 2**55 if overflow else 50  # 2**55 * ranks (~70) * 5000 rows > 2**63
    got = _user_score_order(codes, scores, n_users)
    np.testing.assert_array_equal(got, np.lexsort((-scores, codes)))
    assert _user_score_order(codes[:0], scores[:0], 0).size == 0


# ---- against independent implementations -----------------------------------------------------
@pytest.fixture(scope="module")
def random_predictions():
    rng = np.random.default_rng(42)
    n_users = 400
    sizes = rng.integers(1, 30, size=n_users)
    users = np.repeat(np.array([f"user-{i:04d}" for i in range(n_users)]), sizes)
    users = users[rng.permutation(users.size)]  # rows of a user are scattered
    labels = (rng.random(users.size) < 0.3).astype(int)
    scores = rng.permutation(users.size) / users.size  # distinct: no ties
    weights = rng.uniform(0.5, 3.0, size=users.size)
    return users, labels, scores, weights


def test_per_user_metrics_match_mind_loop(random_predictions):
    users, labels, scores, _ = random_predictions
    got = compute_metrics(users, labels, scores)
    expected, n_scored = loop_metrics(users, labels, scores)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key
    assert got["users_scored"] == n_scored
    assert got["users"] == 400
    assert got["users_skipped_no_positive"] == 400 - n_scored > 0
    skipped_users = {u for u in pd.unique(users) if labels[users == u].sum() == 0}
    assert got["rows_skipped"] == int(np.isin(users, list(skipped_users)).sum())


def test_auc_and_map_match_sklearn_with_and_without_weights(random_predictions):
    users, labels, scores, weights = random_predictions
    got = compute_metrics(users, labels, scores)
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["map"] == pytest.approx(average_precision_score(labels, scores))
    weighted = compute_metrics(users, labels, scores, weights=weights)
    assert weighted["auc"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights))
    assert weighted["map"] == pytest.approx(average_precision_score(labels, scores, sample_weight=weights))
    assert weighted["auc"] != pytest.approx(got["auc"], abs=1e-9)
    # per-user metrics ignore weights
    assert weighted["ndcg@10"] == got["ndcg@10"]


def test_inputs_as_series_with_any_index_and_integer_ids(random_predictions):
    users, labels, scores, _ = random_predictions
    codes = pd.factorize(users)[0] * 7 + 3
    idx = np.arange(users.size)[::-1] * 10
    got = compute_metrics(pd.Series(codes, index=idx), pd.Series(labels.astype(bool), index=idx), pd.Series(scores, index=idx))
    ref = compute_metrics(users, labels, scores)
    assert {k: got[k] for k in METRIC_KEYS + COUNT_KEYS} == {k: ref[k] for k in METRIC_KEYS + COUNT_KEYS}


def test_one_class_and_no_positive_users_are_nan_with_reasons():
    got = compute_metrics(["a", "a", "b"], [0, 0, 0], [0.1, 0.2, 0.3])
    for key in METRIC_KEYS:
        assert math.isnan(got[key]), key
    assert "one class" in got["undefined"]["auc"] and "all 0" in got["undefined"]["auc"]
    assert got["undefined"]["mrr"] == "no user has a positive label"
    assert got["users_scored"] == 0 and got["users_skipped_no_positive"] == 2 and got["rows_skipped"] == 3


# ---- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": [0, 2, 1]}, r"'labels' must be 0 or 1; 1 of 3"),
        ({"labels": ["0", "1", "1"]}, r"'labels' must hold numbers"),
        ({"scores": [0.1, np.nan, np.nan]}, r"'scores' must be finite; 2 NaN and 0 infinite values out of 3"),
        ({"scores": [0.1, np.inf, 0.3]}, r"'scores' must be finite; 0 NaN and 1 infinite"),
        ({"scores": [0.1, 0.2]}, r"one length, got 3, 3 and 2"),
        ({"user_ids": ["a", None, "b"]}, r"'user_ids' must not be null; 1 of 3"),
        ({"weights": [1.0, -1.0, 1.0]}, r"'weights' must be >= 0"),
        ({"weights": [1.0, 1.0]}, r"'weights' must have one value per row \(3\)"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"user_ids": ["a", "a", "b"], "labels": [0, 1, 1], "scores": [0.1, 0.2, 0.3]}
    args.update(kwargs)
    weights = args.pop("weights", None)
    with pytest.raises((ValueError, TypeError), match=message):
        compute_metrics(args["user_ids"], args["labels"], args["scores"], weights=weights)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        compute_metrics([], [], [])


def test_frame_errors_name_columns():
    df = pd.DataFrame({"user_id": ["a", "b"], "label": [1, 0], "score": [0.2, 0.1]})
    with pytest.raises(MissingColumnsError, match=r"missing column\(s\) \['prediction'\]"):
        metrics_from_frame(df, score_col="prediction")
    with pytest.raises(MissingColumnsError, match=r"\['label', 'score'\]"):
        metrics_from_frame(df[["user_id"]])
    with pytest.raises(ValueError, match=r"column 'score' must be finite; 1 NaN"):
        metrics_from_frame(df.assign(score=[0.2, None]))
    with pytest.raises(ValueError, match=r"column 'label' must be 0 or 1; 1 of 2"):
        metrics_from_frame(df.assign(label=[1, 3]))
    with pytest.raises(ValueError, match=r"column 'label' must be 0 or 1"):
        metrics_from_frame(df.assign(label=pd.array([1, None], dtype="Int64")))
    with pytest.raises(TypeError, match=r"column 'score' must be numeric"):
        metrics_from_frame(df.assign(score=["x", "y"]))
    with pytest.raises(ValueError, match=r"column 'user_id' must not be null; 1 of 2"):
        metrics_from_frame(df.assign(user_id=["a", None]))


def test_frame_with_weight_column(random_predictions):
    users, labels, scores, weights = random_predictions
    df = pd.DataFrame({"u": users, "y": labels, "s": scores, "w": weights})
    got = metrics_from_frame(df, "u", "y", "s", weight_col="w")
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores, sample_weight=weights))


# ---- file round trip -------------------------------------------------------------------------
def _frame():
    # u1 ranked: 1 0 -> all 1; u2 ranked: 0 1 -> MRR 1/2, AP 1/2, NDCG 1/log2(3)
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2"],
            "item_id": ["i1", "i2", "i1", "i3"],
            "label": [1, 0, 0, 1],
            "score": [0.9, 0.1, 0.8, 0.3],
        }
    )


def test_predictions_file_round_trip(tmp_path):
    src = tmp_path / "pred.parquet"
    _frame().to_parquet(src)
    out = tmp_path / "reports" / "metrics.json"
    returned = evaluate_predictions_file(str(src), str(out))
    written = json.loads(out.read_text())
    assert set(written) == set(METRIC_KEYS) | set(COUNT_KEYS) | {"undefined"}
    assert written["mrr"] == pytest.approx((1.0 + 0.5) / 2)
    assert written["ndcg@5"] == pytest.approx((1.0 + 1 / L3) / 2)
    assert written["cust_map@10"] == pytest.approx((1.0 + 0.5) / 2)
    # AUC over all rows: positives 0.9, 0.3; negatives 0.1, 0.8 -> pairs won 3 of 4
    assert written["auc"] == pytest.approx(0.75)
    assert written["rows"] == 4 and written["users"] == 2
    assert written == returned


def test_predictions_folder_like_spark_output_and_nan_as_null(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    df = _frame().assign(label=0)
    df.iloc[:2].to_parquet(folder / "part-00000.parquet")
    df.iloc[2:].to_parquet(folder / "part-00001.parquet")
    (folder / "_SUCCESS").write_text("")
    out = tmp_path / "m.json"
    returned = evaluate_predictions_file(folder, out)
    written = json.loads(out.read_text())
    assert written["rows"] == 4 and written["auc"] is None and math.isnan(returned["auc"])
    assert "one class" in written["undefined"]["auc"]


def test_predictions_file_missing_column_and_path(tmp_path):
    src = tmp_path / "p.parquet"
    _frame().drop(columns=["score"]).to_parquet(src)
    with pytest.raises(MissingColumnsError, match=r"missing column\(s\) \['score'\]"):
        evaluate_predictions_file(src, tmp_path / "m.json")
    with pytest.raises(FileNotFoundError, match="'predictions' path does not exist"):
        evaluate_predictions_file(tmp_path / "nope", tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


# ---- reference scores ------------------------------------------------------------------------
def test_reference_scores():
    df = pd.DataFrame({"item_id": ["a", "b", "zz", "a"], "p": [0.1, 0.9, 0.5, 0.2]})
    r1 = reference_scores(df, "random", seed=3)
    assert np.array_equal(r1, reference_scores(df, "random", seed=3))
    assert not np.array_equal(r1, reference_scores(df, "random", seed=4))
    assert ((r1 >= 0) & (r1 < 1)).all() and r1.shape == (4,)
    pop = reference_scores(df, "popularity", train_item_counts={"a": 5, "b": 2})
    assert pop.tolist() == [5.0, 2.0, 0.0, 5.0]
    pop_series = reference_scores(df, "popularity", train_item_counts=pd.Series({"b": 7}))
    assert pop_series.tolist() == [0.0, 7.0, 0.0, 0.0]
    assert reference_scores(df, "oracle", ground_truth="p").tolist() == [0.1, 0.9, 0.5, 0.2]
    assert reference_scores(df, "oracle", ground_truth=[1, 2, 3, 4]).tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="'kind' must be one of"):
        reference_scores(df, "best")
    with pytest.raises(ValueError, match="needs 'train_item_counts'"):
        reference_scores(df, "popularity")
    with pytest.raises(ValueError, match="needs 'ground_truth'"):
        reference_scores(df, "oracle")
    with pytest.raises(MissingColumnsError, match=r"\['q'\]"):
        reference_scores(df, "oracle", ground_truth="q")
    with pytest.raises(ValueError, match=r"one value per row of df \(4\)"):
        reference_scores(df, "oracle", ground_truth=[0.1])


def test_oracle_beats_popularity_beats_random_on_generated_labels():
    # labels drawn from a known probability; popularity correlates with it by construction
    rng = np.random.default_rng(7)
    n_items, n_rows = 200, 20_000
    item_p = rng.beta(2, 5, size=n_items)
    items = rng.integers(0, n_items, size=n_rows)
    df = pd.DataFrame({"user_id": rng.integers(0, 2_000, size=n_rows), "item_id": items, "p": item_p[items]})
    labels = (rng.random(n_rows) < df["p"].to_numpy()).astype(int)
    counts = pd.Series(np.round(item_p * 1000), index=np.arange(n_items))
    auc = {
        kind: compute_metrics(df["user_id"], labels, reference_scores(df, kind, train_item_counts=counts, ground_truth="p"))["auc"]
        for kind in ("random", "popularity", "oracle")
    }
    assert abs(auc["random"] - 0.5) < 0.03
    assert auc["oracle"] > 0.6
    assert auc["popularity"] == pytest.approx(auc["oracle"], abs=0.01)


def test_table_order_lists_the_same_six_metrics():
    assert TABLE_METRICS == ("auc", "ndcg@5", "ndcg@10", "mrr", "map", "cust_map@10")
    assert sorted(TABLE_METRICS) == sorted(METRIC_KEYS) and len(set(METRIC_KEYS)) == 6


# ---- predictions files a user got wrong: a UserError naming the file and what is expected ------
PREDICTIONS_EXPECTED = "expected a Parquet file or folder with columns user_id, item_id, label, score"


def _user_error(call):
    from twotower_features.errors import UserError

    with pytest.raises(UserError) as e:
        call()
    return str(e.value)


def test_predictions_csv_is_not_parquet(tmp_path):
    src = tmp_path / "predictions.csv"
    src.write_text("user_id,item_id,label,score\n1,2,1,0.5\n")
    message = _user_error(lambda: evaluate_predictions_file(src, tmp_path / "m.json"))
    assert message == f"predictions table {src} is not a Parquet file; {PREDICTIONS_EXPECTED}"
    assert not (tmp_path / "m.json").exists()


def test_predictions_folder_with_a_part_that_is_not_parquet(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    _frame().to_parquet(folder / "part-0.parquet")
    (folder / "part-1.csv").write_text("user_id,item_id,label,score\n")
    message = _user_error(lambda: evaluate_predictions_file(folder, tmp_path / "m.json"))
    assert message == f"predictions table {folder}: {folder / 'part-1.csv'} is not a Parquet file; {PREDICTIONS_EXPECTED}"


def test_predictions_folder_without_parquet_files(tmp_path):
    folder = tmp_path / "pred"
    folder.mkdir()
    (folder / "_SUCCESS").write_text("")
    message = _user_error(lambda: evaluate_predictions_file(folder, tmp_path / "m.json"))
    assert message == f"predictions table {folder} holds no Parquet files; {PREDICTIONS_EXPECTED}"


def test_predictions_without_score_names_the_file_and_the_column(tmp_path):
    src = tmp_path / "p.parquet"
    _frame().drop(columns=["score"]).to_parquet(src)
    message = _user_error(lambda: evaluate_predictions_file(src, tmp_path / "m.json"))
    assert message == (
        f"predictions table {src} is missing column(s) ['score']; it has ['user_id', 'item_id', 'label']; {PREDICTIONS_EXPECTED}"
    )


def test_predictions_path_missing_is_a_user_error_and_file_not_found(tmp_path):
    src = tmp_path / "nope"
    with pytest.raises(FileNotFoundError):
        evaluate_predictions_file(src, tmp_path / "m.json")
    assert _user_error(lambda: evaluate_predictions_file(src, tmp_path / "m.json")) == (
        f"'predictions' path does not exist: {src}; {PREDICTIONS_EXPECTED}"
    )


def test_predictions_with_bad_values_name_the_file_and_the_column(tmp_path):
    src = tmp_path / "p.parquet"
    _frame().assign(label=[1, 0, 2, 1]).to_parquet(src)
    assert _user_error(lambda: evaluate_predictions_file(src, tmp_path / "m.json")) == (
        f"predictions table {src}: column 'label' must be 0 or 1; 1 of 4 values are not (e.g. [2.0])"
    )
    _frame().assign(score=["a", "b", "c", "d"]).to_parquet(src)
    assert _user_error(lambda: evaluate_predictions_file(src, tmp_path / "m.json")) == (
        f"predictions table {src}: column 'score' must be numeric or boolean, got dtype object"
    )
    assert not (tmp_path / "m.json").exists()
