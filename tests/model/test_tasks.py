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
