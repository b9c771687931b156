"""Time the evaluator: vectorised metrics against a MIND-style loop, and the catalog diagnostics.

    .venv/bin/python benchmarks/bench_metrics.py [--rows 1000000 --users 100000 --loop-users 10000]
        [--diag-users 10000 --diag-items 100000 --diag-dim 64 --diag-k 100]

Part 1 prints the median of ``--repeats`` (3) timings of ``compute_metrics`` (all six metrics)
on ``--rows`` predictions and of its per-user part alone, the loop's time on ``--loop-users``
users (a random sample, grouping included) extrapolated linearly to all users, and two ratios:
per-user metrics alone, and all six metrics (the loop evaluator also pays sklearn's AUC and MAP
over all rows, timed here); checks that both agree on the sample. ``--json FILE`` also writes
the timings (``speedup_whole``: all six metrics).

Part 2 (skipped with ``--diag-users 0``) times the full-catalog diagnostics of ``evaluate`` on
random embeddings: exact top-K by batched matrix product (``topk_from_embeddings``), the list
diagnostics at K (recall, NDCG, coverage, Gini, overlap, intra-list similarity), and the
neighbourhood agreement of ``--neighbour-sample`` items; prints the exact top-K throughput in
users x items x dim multiply-adds per second and the catalog size at which an exact scan
exceeds a time budget (see docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from twotower_model.diagnostics import (
    neighbourhood_agreements,
    topk_from_embeddings,
    topk_lists_report,
)
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
    parser.add_argument("--diag-users", type=int, default=10_000, help="users of the diagnostics timing (0: skip)")
    parser.add_argument("--diag-items", type=int, default=100_000)
    parser.add_argument("--diag-dim", type=int, default=64)
    parser.add_argument("--diag-k", type=int, default=100)
    parser.add_argument("--neighbour-sample", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the timings to this JSON file")
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
    # both evaluators compute AUC and MAP over all rows with sklearn: the loop evaluator pays it too
    t_global, _ = timed(lambda: (roc_auc_score(labels, scores), average_precision_score(labels, scores)), args.repeats)
    loop_whole = extrapolated + t_global
    print(f"sklearn AUC + MAP over all rows   : {t_global:7.3f} s (in both evaluators)")
    print(f"speed-up, per-user metrics        : {extrapolated / t_per_user:7.1f}x")
    print(f"speed-up, all six metrics         : {loop_whole / t_all:7.1f}x (loop + the same AUC/MAP: {loop_whole:.3f} s)")
    print("metrics: " + ", ".join(f"{k}={full[k]:.4f}" for k in ("auc", "map", "ndcg@5", "ndcg@10", "mrr", "cust_map@10")))
    result = {
        "rows": args.rows, "users": n_users, "repeats": args.repeats, "loop_users": int(len(sample_users)),
        "compute_metrics_s": t_all, "compute_metrics_string_ids_s": t_str, "per_user_s": t_per_user,
        "sklearn_auc_map_s": t_global, "loop_sample_s": t_loop, "loop_extrapolated_s": extrapolated,
        "loop_whole_s": loop_whole, "speedup_per_user": extrapolated / t_per_user, "speedup_whole": loop_whole / t_all,
    }
    if args.diag_users:
        result["diagnostics"] = time_diagnostics(args, rng)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def time_diagnostics(args, rng) -> dict:
    n_u, n_i, dim, k = args.diag_users, args.diag_items, args.diag_dim, args.diag_k
    u = rng.normal(size=(n_u, dim)).astype(np.float32)
    it = rng.normal(size=(n_i, dim)).astype(np.float32)
    content = rng.normal(size=(n_i, dim)).astype(np.float32)
    clusters = rng.integers(0, 18, size=n_i)
    creators = rng.integers(0, n_i // 20, size=n_i)
    positives = [rng.choice(n_i, size=5, replace=False) for _ in range(n_u)]
    print(f"\ndiagnostics: {n_u:,} users x {n_i:,} items x {dim} dims, K={k}")
    chunk = max(1, (1 << 24) // n_i)  # the batch size topk_from_embeddings uses

    def products_only() -> None:
        for lo in range(0, n_u, chunk):
            u[lo:lo + chunk] @ it.T

    t_mm, _ = timed(products_only, 1)
    t_topk, top = timed(lambda: topk_from_embeddings(u, it, k), args.repeats)
    madds = n_u * n_i * dim
    rate = madds / t_topk
    print(f"  matrix product alone (batched)   : {t_mm:7.3f} s ({madds / t_mm / 1e9:.1f} G multiply-adds/s)")
    print(f"  exact top-{k} (product + partition): {t_topk:7.3f} s (median of {args.repeats}; "
          f"{rate / 1e9:.1f} G users*items*dim/s, {n_u * n_i / t_topk / 1e6:.0f} M scores/s)")
    t_lists, _ = timed(lambda: topk_lists_report(top, n_i, [10, k], positives_per_user=positives, content_emb=content), 1)
    print(f"  list diagnostics at 10 and {k}     : {t_lists:7.3f} s (recall, NDCG, coverage, Gini, overlap, intra-list)")
    sample = min(args.neighbour_sample, n_i)
    t_nb, _ = timed(lambda: neighbourhood_agreements(it, {"cluster": clusters, "creator": creators}, [10, k], sample=sample), 1)
    print(f"  neighbourhood agreement, {sample:,} queries: {t_nb:7.3f} s")
    print(f"  total                            : {t_topk + t_lists + t_nb:7.3f} s")
    for users, minutes in ((10_000, 10), (50_000, 10), (50_000, 60)):
        print(f"  exact top-{k} within {minutes} min for {users:,} users at this rate: "
              f"{rate * minutes * 60 / (users * dim):14,.0f} items (users * items * dim / rate)")
    return {
        "users": n_u, "items": n_i, "dim": dim, "k": k, "repeats": args.repeats,
        "matmul_s": t_mm, "topk_s": t_topk, "topk_rate_madds_per_s": rate, "lists_s": t_lists,
        "neighbour_queries": sample, "neighbours_s": t_nb,
    }


if __name__ == "__main__":
    main()
