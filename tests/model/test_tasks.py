"""The tasks' losses (``tasks.py``) against numpy."""
from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from twotower_model import tasks as ttasks  # noqa: E402
from twotower_model.metrics import SCORE  # noqa: E402


def test_binary_task_is_weighted_mean_bce():
    logits = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
    labels = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    weights = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    expected = (bce * weights).sum() / weights.sum()
    got = ttasks.BinaryTask()({"label": labels, "weight": weights}, {SCORE: tf.constant(logits)})
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_in_batch_softmax_with_logq_matches_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 3)).astype(np.float32)
    c = rng.normal(size=(4, 3)).astype(np.float32)
    items = np.array(["a", "b", "a", "c"], dtype=object)
    labels = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    weights = np.array([1.0, 2.0, 1.0, 1.5], np.float32)
    counts = {"a": 6.0, "b": 3.0}  # "c" is uncounted -> count 1; total = 6 + 3 = 9 (+1 for unseen)
    log_q = {"a": math.log(6 / 9), "b": math.log(3 / 9), "c": math.log(1 / 9)}
    expected_num, expected_den = 0.0, 0.0
    for i in range(4):
        if labels[i] == 0:
            continue
        row = []
        for j in range(4):
            if j != i and items[j] == items[i]:
                continue  # accidental hit removed
            row.append((j, float(q[i] @ c[j]) - log_q[items[j]]))
        logits = np.array([v for _, v in row])
        pos = [k for k, (j, _) in enumerate(row) if j == i][0]
        ce = -(logits[pos] - np.log(np.exp(logits).sum()))
        expected_num += weights[i] * ce
        expected_den += weights[i]
    task = ttasks.InBatchSoftmaxTask(item_counts=counts)
    got = task(
        {"label": labels, "weight": weights, "item_id": tf.constant(items.astype(str))},
        {ttasks.QUERY: tf.constant(q), ttasks.CANDIDATE: tf.constant(c)},
    )
    assert float(got) == pytest.approx(expected_num / expected_den, rel=1e-5)


def test_in_batch_softmax_without_positives_is_zero():
    task = ttasks.InBatchSoftmaxTask()
    got = task(
        {"label": np.zeros(3, np.float32), "weight": np.ones(3, np.float32), "item_id": tf.constant(["a", "b", "c"])},
        {ttasks.QUERY: tf.ones((3, 2)), ttasks.CANDIDATE: tf.ones((3, 2))},
    )
    assert float(got) == 0.0


def test_hybrid_is_bce_plus_weighted_in_batch_softmax_by_hand():
    """4 rows, 2-dim vectors written out; row 2 shows the same item as row 0 (an accidental hit
    for row 0's softmax), row 1 is a negative (no softmax query of its own, still a candidate)."""
    q = np.array([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0], [-1.0, 1.0]], np.float32)
    c = np.array([[0.5, 0.5], [1.0, -0.5], [-0.5, 1.0], [0.0, 1.5]], np.float32)
    items = np.array(["a", "b", "a", "c"])
    labels = np.array([1.0, 0.0, 1.0, 1.0], np.float32)
    weights = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
    counts = {"a": 4.0, "b": 2.0, "c": 2.0}  # total 8: q = 1/2, 1/4, 1/4
    w_soft = 0.3

    s = (q.astype(np.float64) * c).sum(axis=1)  # logits 0.5, 1.0, 2.0, 1.5
    np.testing.assert_allclose(s, [0.5, 1.0, 2.0, 1.5])
    bce = np.log1p(np.exp(-s)) * labels + np.log1p(np.exp(s)) * (1 - labels)
    bce_loss = (weights * bce).sum() / weights.sum()

    log_q = np.log(np.array([4.0, 2.0, 4.0, 2.0]) / 8.0)  # per candidate column
    full = q.astype(np.float64) @ c.T.astype(np.float64) - log_q[None, :]
    num = den = 0.0
    for i in (0, 2, 3):  # the positives
        keep = [j for j in range(4) if j == i or items[j] != items[i]]
        row = full[i, keep]
        ce = -(full[i, i] - np.log(np.exp(row).sum()))
        num += weights[i] * ce
        den += weights[i]
    expected = bce_loss + w_soft * num / den

    features = {"label": labels, "weight": weights, "item_id": tf.constant(items)}
    outputs = {ttasks.QUERY: tf.constant(q), ttasks.CANDIDATE: tf.constant(c), SCORE: tf.constant(s.astype(np.float32))}
    task = ttasks.HybridTask(item_counts=counts, softmax_weight=w_soft)
    assert float(task(features, outputs)) == pytest.approx(expected, rel=1e-5)
    # weight 0 is the BCE task alone
    assert float(ttasks.HybridTask(item_counts=counts, softmax_weight=0.0)(features, outputs)) == pytest.approx(bce_loss, rel=1e-5)

    # a separate retrieval head: the softmax term reads the retrieval pair (q, c here), the BCE
    # still the score; the ranking pair is now other vectors, which the shared task would read
    separate = dict(outputs) | {
        ttasks.RETRIEVAL_QUERY: tf.constant(q), ttasks.RETRIEVAL_CANDIDATE: tf.constant(c),
        ttasks.QUERY: tf.constant(-3.0 * q), ttasks.CANDIDATE: tf.constant(c[::-1].copy()),
    }
    sep_task = ttasks.HybridTask(item_counts=counts, softmax_weight=w_soft, separate_head=True)
    assert float(sep_task(features, separate)) == pytest.approx(expected, rel=1e-5)
    assert float(task(features, separate)) != pytest.approx(expected, rel=1e-3)


def test_hybrid_config_round_trips(tmp_path):
    task = ttasks.HybridTask(label="y", weight=None, item_key="iid", item_counts={"a": 2.0}, softmax_weight=1.5, separate_head=True, name="task")
    again = ttasks.HybridTask.from_config(task.get_config())
    assert again.get_config() == task.get_config() and "item_counts" not in task.get_config()
    assert (again.softmax_weight, again.item_key, again.separate_head) == (1.5, "iid", True)
    # the counts travel as an asset file (model.keras), whatever the catalog's size
    assert not again.logq_correction
    task.softmax.save_assets(str(tmp_path))
    again.softmax.load_assets(str(tmp_path))
    assert again.softmax.item_counts == {"a": 2.0} and again.logq_correction
    assert (again.softmax.query_key, again.softmax.candidate_key) == (ttasks.RETRIEVAL_QUERY, ttasks.RETRIEVAL_CANDIDATE)


@pytest.mark.parametrize("value", [-0.1, math.inf, math.nan])
def test_hybrid_weight_must_be_finite_at_least_zero(value):
    with pytest.raises(ValueError, match="softmax_weight must be a finite number >= 0"):
        ttasks.HybridTask(softmax_weight=value)


def test_in_batch_softmax_with_sampled_negatives_by_hand():
    """Mixed negative sampling: 3 rows (rows 0 and 2 positives) and 2 catalog items sampled
    (one of them is row 0's positive item "a": masked for row 0 only). Every logit is corrected
    by log(B q + M / N) with B = 3, M = 2, N = 10; items' shares q from the counts."""
    from twotower_model.data import NEGATIVE

    q = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], np.float32)
    c = np.array([[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]], np.float32)
    neg = np.array([[0.5, -0.5], [1.0, 2.0]], np.float32)
    items, neg_items = np.array(["a", "b", "c"]), np.array(["a", "d"])
    labels = np.array([1.0, 0.0, 1.0], np.float32)
    weights = np.array([2.0, 1.0, 1.0], np.float32)
    counts = {"a": 5.0, "b": 3.0, "c": 2.0}  # total 10; "d" uncounted -> count 1 -> q = 1/10
    share = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.1}
    corr = {k: math.log(3 * v + 2 / 10) for k, v in share.items()}
    num = den = 0.0
    for i in (0, 2):
        row = [float(q[i] @ c[j]) - corr[items[j]] for j in range(3)]  # no in-batch repeats
        for k in range(2):
            row.append(-1e9 if neg_items[k] == items[i] else float(q[i] @ neg[k]) - corr[neg_items[k]])
        row = np.array(row)
        ce = -(row[i] - np.log(np.exp(row - row.max()).sum()) - row.max())
        num += weights[i] * ce
        den += weights[i]
    task = ttasks.InBatchSoftmaxTask(item_counts=counts, sampled_negatives=2, catalog_size=10)
    features = {"label": labels, "weight": weights, "item_id": tf.constant(items), NEGATIVE + "item_id": tf.constant(neg_items)}
    outputs = {ttasks.QUERY: tf.constant(q), ttasks.CANDIDATE: tf.constant(c), ttasks.NEGATIVE_CANDIDATE: tf.constant(neg)}
    assert float(task(features, outputs)) == pytest.approx(num / den, rel=1e-5)
    # a batch without sampled negatives (as in evaluation) is the plain in-batch softmax
    plain = {k: v for k, v in outputs.items() if k != ttasks.NEGATIVE_CANDIDATE}
    assert float(task(features, plain)) == pytest.approx(float(ttasks.InBatchSoftmaxTask(item_counts=counts)(features, plain)), rel=1e-6)


def test_sampled_negatives_need_a_catalog_size():
    with pytest.raises(ValueError, match="needs catalog_size"):
        ttasks.InBatchSoftmaxTask(sampled_negatives=4)
    again = ttasks.HybridTask.from_config(ttasks.HybridTask(sampled_negatives=4, catalog_size=9).get_config())
    assert (again.softmax.sampled_negatives, again.softmax.catalog_size) == (4, 9)
