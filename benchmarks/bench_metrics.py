"""Time the vectorised evaluator against a per-user Python loop in the style of MIND's evaluate.py.

    .venv/bin/python benchmarks/bench_metrics.py [--rows 1000000 --users 100000 --loop-users 10000]

Prints the median of ``--repeats`` timings of ``compute_metrics`` (all six metrics) and of its
per-user part alone, the loop's time on ``--loop-users`` users (a random sample, grouping
included) extrapolated linearly to all users, and the ratio; checks that both agree on the
sample. ``--topk-users`` also times the exact full-catalog top-K of the diagnostics.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd

from twotower_model.diagnostics import topk_from_embeddings
from twotower_model.metrics import _per_user, compute_metrics


def mind_dcg(y_true, y_score, k):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order[:k])
    gains = 2**y_true - 1
    discounts = np.log2(np.arange(len(y_true)) + 2)
    return np.sum(gains / discounts)


def mind_mrr(y_true, y_score):
    order = np.argsort(y_score)[::-1]
    y_true = np.take(y_true, order)
    return np.sum(y_true / (np.arange(len(y_true)) + 1)) / np.sum(y_true)


def mind_ap10(y_true, y_score):
    order = np.argsort(y_score)[::-1]
    y = np.take(y_true, order)[:10]
    precision = np.cumsum(y) / (np.arange(len(y)) + 1)
    return np.sum(precision * y) / min(10, np.sum(y_true))


def loop_metrics(users, labels, scores):
    """Per-user loop: group rows by user, then MIND's functions user by user."""
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    sums = {"ndcg@5": 0.0, "ndcg@10": 0.0, "mrr": 0.0, "cust_map@10": 0.0}
    scored = 0
    for idx in np.split(order, bounds):
        y, s = labels[idx], scores[idx]
        if y.sum() == 0:
            continue
        scored += 1
        sums["ndcg@5"] += mind_dcg(y, s, 5) / mind_dcg(y, y, 5)
        sums["ndcg@10"] += mind_dcg(y, s, 10) / mind_dcg(y, y, 10)
        sums["mrr"] += mind_mrr(y, s)
        sums["cust_map@10"] += mind_ap10(y, s)
    return {k: v / scored for k, v in sums.items()}


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--loop-users", type=int, default=10_000, help="users in the loop's sample (all: --users)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--topk-users", type=int, default=0, help="also time top-K for this many users")
    parser.add_argument("--topk-items", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    users = rng.integers(0, args.users, size=args.rows)
    labels = (rng.random(args.rows) < 0.3).astype(np.int8)
    scores = rng.random(args.rows)
    user_strings = pd.Series(users).map("user-{:07d}".format).to_numpy(dtype=object)
    print(f"{args.rows:,} rows, {len(np.unique(users)):,} users, {labels.mean():.1%} positive")

    t_all, full = timed(lambda: compute_metrics(users, labels, scores), args.repeats)
    t_str, _ = timed(lambda: compute_metrics(user_strings, labels, scores), args.repeats)
    codes = pd.factorize(users)[0].astype(np.int64)
    n_users = int(codes.max()) + 1
    t_per_user, _ = timed(lambda: _per_user(codes, labels, scores, n_users), args.repeats)
    print(f"compute_metrics, int user ids     : {t_all:7.3f} s (median of {args.repeats})")
    print(f"compute_metrics, string user ids  : {t_str:7.3f} s")
    print(f"  of which per-user metrics only  : {t_per_user:7.3f} s")

    sample_users = rng.choice(np.unique(users), size=min(args.loop_users, n_users), replace=False)
    mask = np.isin(users, sample_users)
    su, sy, ss = users[mask], labels[mask], scores[mask]
    t_loop, loop = timed(lambda: loop_metrics(su, sy, ss), args.repeats)
    vec = compute_metrics(su, sy, ss)
    for key, value in loop.items():
        if not np.isclose(vec[key], value, rtol=1e-12):
            raise SystemExit(f"mismatch on the sample: {key} vectorised {vec[key]} loop {value}")
    extrapolated = t_loop * n_users / len(sample_users)
    print(f"MIND-style loop, {len(sample_users):,} users          : {t_loop:7.3f} s (median of {args.repeats}; metrics agree)")
    print(f"MIND-style loop, extrapolated to {n_users:,}: {extrapolated:7.3f} s")
    print(f"speed-up, per-user metrics        : {extrapolated / t_per_user:7.1f}x")
    print(f"speed-up, whole compute_metrics   : {extrapolated / t_all:7.1f}x (loop has no AUC/MAP)")
    print(f"metrics: " + ", ".join(f"{k}={full[k]:.4f}" for k in ("auc", "map", "ndcg@5", "ndcg@10", "mrr", "cust_map@10")))

    if args.topk_users:
        dim = 64
        u = rng.normal(size=(args.topk_users, dim)).astype(np.float32)
        it = rng.normal(size=(args.topk_items, dim)).astype(np.float32)
        t_topk, _ = timed(lambda: topk_from_embeddings(u, it, 10), 1)
        madds = args.topk_users * args.topk_items * dim
        print(f"top-10, {args.topk_users:,} users x {args.topk_items:,} items x {dim}: {t_topk:.3f} s "
              f"({madds:.2e} multiply-adds, {madds / t_topk / 1e9:.1f} G/s)")


if __name__ == "__main__":
    main()
