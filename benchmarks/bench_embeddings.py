"""Stage 7 design choice: PCA + KMeans fitted with scikit-learn on the driver vs Spark ML.

Same synthetic catalog for both (items x 256 dims drawn around 40 topic centres, like the
generator's simclr embeddings), same session, medians of `--runs`. Prints per catalog size:

- wall time of the fit, end to end from the Spark table: scikit-learn includes collecting the
  vectors to the driver (`collect_vectors`, Arrow) and fitting PCA-64 + KMeans-18 (4 inits);
  Spark ML includes `array_to_vector`, `PCA.fit`, the projection and `KMeans.fit` (k-means||);
- quality: PCA explained-variance ratio; KMeans inertia of each method's centres over its own
  projection (both are orthogonal projections onto the same top-64 subspace, so comparable);
  adjusted Rand index of each clustering against the true topics.

    .venv/bin/python benchmarks/bench_embeddings.py --items 50000 200000 --runs 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

DIM, TOPICS, PCA_K, KMEANS_K = 256, 40, 64, 18


def make_catalog(n: int, path: Path, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(TOPICS, DIM)).astype(np.float32)
    topic = rng.integers(0, TOPICS, n)
    x = centres[topic] + 0.6 * rng.normal(size=(n, DIM)).astype(np.float32)
    ids = pa.array([f"i{k:08d}" for k in range(n)])
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), DIM).cast(pa.list_(pa.float32()))
    pq.write_table(pa.table({"item_id": ids, "simclr_embedding": emb}), path / "items.parquet", row_group_size=50_000)
    return topic


def inertia(z: np.ndarray, centres: np.ndarray) -> float:
    d = (z**2).sum(1)[:, None] - 2 * z @ centres.T + (centres**2).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0).sum())


def labels_of(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d = (z**2).sum(1)[:, None] - 2 * z @ centres.T + (centres**2).sum(1)[None, :]
    return d.argmin(1)


def fit_sklearn(items) -> tuple[float, dict]:
    from twotower_features.embeddings import collect_vectors, fit_embeddings

    t0 = time.perf_counter()
    vec = collect_vectors(items, ["simclr"], max_items=10**9, seed=0)
    fitted = fit_embeddings(vec, PCA_K, kmeans_k=KMEANS_K, seed=0)
    secs = time.perf_counter() - t0
    z = fitted.transform("simclr", vec["simclr"]).astype(np.float64)
    return secs, {"explained": fitted.explained_variance["simclr"], "inertia": inertia(z, fitted.centers), "labels": labels_of(z, fitted.centers)}


def fit_spark_ml(items) -> tuple[float, dict]:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import array_to_vector, vector_to_array
    t0 = time.perf_counter()
    v = items.select("item_id", array_to_vector("simclr_embedding").alias("x")).cache()
    pca = PCA(k=PCA_K, inputCol="x", outputCol="z").fit(v)
    z = pca.transform(v).select("item_id", "z").cache()
    km = KMeans(k=KMEANS_K, featuresCol="z", seed=0, maxIter=50).fit(z)
    secs = time.perf_counter() - t0
    zz = z.select("item_id", vector_to_array("z").alias("z")).orderBy("item_id").toArrow()
    zn = zz.column("z").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(zz.num_rows, -1)
    centres = np.array([c for c in km.clusterCenters()])
    out = {"explained": float(np.sum(pca.explainedVariance.toArray())), "inertia": inertia(zn, centres), "labels": labels_of(zn, centres)}
    v.unpersist()
    z.unpersist()
    return secs, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[50_000, 200_000])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()

    from sklearn.metrics import adjusted_rand_score

    from twotower_features.session import build_session

    spark = build_session("bench-embeddings", master=args.master, conf={"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"})
    print(f"PCA-{PCA_K} + KMeans-{KMEANS_K} over items x {DIM} dims, {TOPICS} true topics; median of {args.runs} runs, {args.master}")
    print(f"{'items':>9s} {'method':>12s} {'fit s':>8s} {'explained':>10s} {'inertia':>14s} {'ARI topics':>11s}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.items:
            d = Path(tmp, str(n))
            d.mkdir()
            topic = make_catalog(n, d)
            items = spark.read.parquet(str(d / "items.parquet"))
            res = {}
            for name, fn in (("scikit-learn", fit_sklearn), ("spark-ml", fit_spark_ml)):
                times, q = [], None
                for _ in range(args.runs):
                    secs, q = fn(items)
                    times.append(secs)
                res[name] = (statistics.median(times), q)
                print(f"{n:>9,d} {name:>12s} {res[name][0]:8.2f} {q['explained']:10.4f} {q['inertia']:14.4g} {adjusted_rand_score(topic, q['labels']):11.4f}", flush=True)
            ratio = res["spark-ml"][0] / res["scikit-learn"][0]
            print(f"{n:>9,d} spark-ml / scikit-learn time: {ratio:.2f}x; inertia ratio {res['spark-ml'][1]['inertia'] / res['scikit-learn'][1]['inertia']:.4f}", flush=True)
    spark.stop()


if __name__ == "__main__":
    main()
