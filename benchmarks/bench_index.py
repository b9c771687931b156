"""The retrieval index on a large generated catalog (issue 14): recall@K against exact search,
queries/s, build time and size, for each index kind of ``twotower_model.index``.

Generated item vectors: ``--clusters`` Gaussian clusters in ``--dim`` dimensions (the cluster
centres standard normal, each item its centre plus noise of sd ``--spread``), L2-normalised like
the retrieval head's candidates; the queries are drawn the same way and divided by 0.1 (the
demo's softmax temperature), so inner product ranks like the trained model's. The reference is
exact search (``IndexFlatIP``) over the same matrix.

With ``--like MODEL_DIR`` the vectors are drawn instead from a Gaussian with the mean and
covariance of that model folder's ``item_embeddings.parquet`` (e.g. ``demo-output/model``: 32
dimensions, 95 % of the variance in 10 components), L2-normalised again: a catalog shaped like a
trained model's. The clustered default has 64 dimensions of isotropic noise, a harder case for
any graph or cell index than a trained model's vectors.

    .venv/bin/python benchmarks/bench_index.py [--items 1000000] [--kinds hnsw ivf] [--like DIR] [--json out.json]

Prints, per kind: build seconds, index bytes, recall@10 and recall@K against exact search over
``--recall-queries`` queries, and queries/s (median of ``--runs`` timed passes over
``--queries`` queries, batches of ``--batch``) on this machine's cores, next to exact search's
queries/s measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twotower_model import index as I  # noqa: E402


def generate(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 200_000
    for a in range(0, n, step):
        b = min(n, a + step)
        x = centres[rng.integers(0, clusters, b - a)] + spread * rng.standard_normal((b - a, dim)).astype(np.float32)
        out[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def generate_like(model_dir: str, n: int, seed: int) -> np.ndarray:
    from twotower_model.items import read_item_embeddings

    _, v = read_item_embeddings(model_dir)
    v = v.astype(np.float64)
    rng = np.random.default_rng(seed)
    x = rng.multivariate_normal(v.mean(axis=0), np.cov(v, rowvar=False), size=n, method="eigh").astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_qps(index, queries: np.ndarray, k: int, runs: int, batch: int) -> float:
    rates = []
    for _ in range(runs):
        t = time.perf_counter()
        for a in range(0, len(queries), batch):
            index.search(queries[a:a + batch], k)
        rates.append(len(queries) / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--spread", type=float, default=0.6)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--kinds", nargs="+", default=["hnsw", "ivf"], choices=I.KINDS)
    p.add_argument("--recall-queries", type=int, default=2000)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ef-search", type=int, nargs="*", default=[], help="Also search HNSW with these efSearch values.")
    p.add_argument("--nprobe", type=int, nargs="*", default=[], help="Also search IVF with these nprobe values.")
    p.add_argument("--like", default=None, help="Model folder whose item embeddings' mean and covariance the vectors are drawn from.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    t = time.perf_counter()
    n_queries = max(a.queries, a.recall_queries)
    if a.like:
        items, queries = generate_like(a.like, a.items, a.seed), generate_like(a.like, n_queries, a.seed + 1) / 0.1
    else:
        items = generate(a.items, a.dim, a.clusters, a.spread, a.seed)
        queries = generate(n_queries, a.dim, a.clusters, a.spread, a.seed + 1) / 0.1
    a.dim = items.shape[1]
    print(f"generated {a.items:,} items x {a.dim} ({'like ' + a.like if a.like else 'clustered'}) in {time.perf_counter() - t:.1f} s; {os.cpu_count()} cores", flush=True)

    exact = I.build_index(items, "exact")
    ref = I.search(exact, queries[: a.recall_queries], a.k)
    exact_qps = timed_qps(exact, queries[: a.queries], a.k, a.runs, a.batch)
    result = {"items": a.items, "dim": a.dim, "k": a.k, "data": f"like {a.like}" if a.like else f"clustered ({a.clusters} clusters, spread {a.spread})", "cores": os.cpu_count(), "exact": {"queries_per_s": exact_qps, "bytes": items.nbytes}}
    print(f"exact     {'':>10} {items.nbytes / 2**20:9.1f} MiB {'':>10} {'':>10} {exact_qps:10.0f} q/s", flush=True)
    print(f"{'kind':<9} {'build s':>10} {'size':>13} {'recall@10':>10} {f'recall@{a.k}':>10} {'queries/s':>14}")
    for kind in a.kinds:
        t = time.perf_counter()
        index = I.build_index(items, kind, seed=a.seed)
        build = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "index.faiss")
            I.write_index(index, path)
            size = path.stat().st_size
        got = I.search(index, queries[: a.recall_queries], a.k)
        r_k = I.recall_against_exact(got, ref)
        r_10 = I.recall_against_exact(got[:, :10], ref[:, :10])
        qps = timed_qps(index, queries[: a.queries], a.k, a.runs, a.batch)
        result[kind] = {
            "build_seconds": build, "bytes": size, "recall@10": r_10, f"recall@{a.k}": r_k, "queries_per_s": qps,
            "qps_over_exact": qps / exact_qps, "params": I.index_params(index), "other_settings": [],
        }
        print(f"{kind:<9} {build:10.1f} {size / 2**20:9.1f} MiB {r_10:10.4f} {r_k:10.4f} {qps:10.0f} q/s  ({qps / exact_qps:.1f}x exact)  {I.index_params(index)}", flush=True)
        name, values = ("efSearch", a.ef_search) if kind == "hnsw" else ("nprobe", a.nprobe) if kind == "ivf" else ("", [])
        for v in values:
            if kind == "hnsw":
                index.hnsw.efSearch = v
            else:
                index.nprobe = v
            got = I.search(index, queries[: a.recall_queries], a.k)
            r_k, r_10 = I.recall_against_exact(got, ref), I.recall_against_exact(got[:, :10], ref[:, :10])
            qps = timed_qps(index, queries[: a.queries], a.k, a.runs, a.batch)
            result[kind]["other_settings"].append({name: v, "recall@10": r_10, f"recall@{a.k}": r_k, "queries_per_s": qps})
            print(f"  {name}={v:<6} {'':>21} {r_10:10.4f} {r_k:10.4f} {qps:10.0f} q/s  ({qps / exact_qps:.1f}x exact)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
