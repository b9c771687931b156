"""Throughput of the hand-written TFRecord writer against TensorFlow's own.

Builds N rows of a typical example (2 string ids, 1 int64, 2 float scalars, a 64-float and a
128-float vector) as a pyarrow table and times, median of ``--repeats`` runs, on one core:

- ours: ``encode_batch`` + ``frame_records`` per 10k-row batch (Spark's Arrow batch size),
  streamed to a local file;
- loop: a per-row loop building ``tf.train.Example`` protos and writing them with
  ``tf.io.TFRecordWriter`` (on the first ``--loop-rows`` rows, as it is slow);
- ceiling: ``tf.io.TFRecordWriter`` writing pre-serialised records (framing + I/O only).

Usage: ``python benchmarks/bench_tfrecord.py [--rows 200000] [--repeats 3]``; with ``--input
rows.parquet --spec feature_spec.json`` it times those rows and columns instead (``make bench``
passes rows of the examples table), and ``--json FILE`` saves the rates.
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
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from twotower_features.spec import Column  # noqa: E402
from twotower_features.tfrecord import encode_batch, frame_records  # noqa: E402

COLUMNS = [
    Column("user_id", "string", kind="key"),
    Column("item_id", "string", kind="key"),
    Column("label", "int64", kind="label"),
    Column("weight", "float32", kind="weight"),
    Column("user_ctr", "float32", tower="user"),
    Column("pos_hist_mean", "float32", (64,), tower="user"),
    Column("item_emb", "float32", (128,), tower="item"),
]
BATCH_ROWS = 10_000


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)

    def vectors(d: int) -> pa.Array:
        flat = rng.standard_normal(n * d).astype(np.float32)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat), d).cast(pa.list_(pa.float32()))

    return pa.table(
        {
            "user_id": pa.array([f"u{i:07d}" for i in rng.integers(0, 1_000_000, n)]),
            "item_id": pa.array([f"item-{i}" for i in rng.integers(0, 100_000, n)]),
            "label": pa.array(rng.integers(0, 2, n), pa.int64()),
            "weight": pa.array(rng.uniform(0.5, 3.0, n)),
            "user_ctr": pa.array(rng.uniform(0, 1, n)),
            "pos_hist_mean": vectors(64),
            "item_emb": vectors(128),
        }
    )


def row_loop_features(tf, columns, row: dict) -> dict:
    """One row as ``tf.train.Feature``s, the plain way (any spec columns)."""
    feats = {}
    for c in columns:
        v = row[c.name]
        vals = v if c.shape else [v]
        if c.dtype == "string":
            feats[c.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[(x or "").encode() for x in vals]))
        elif c.dtype == "int64":
            feats[c.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=vals))
        else:
            feats[c.name] = tf.train.Feature(float_list=tf.train.FloatList(value=vals))
    return feats


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of this process (robust to a busy machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--loop-rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--input", help="a Parquet file or folder of rows to write instead of the synthetic table")
    ap.add_argument("--spec", help="feature_spec.json naming the columns of --input")
    ap.add_argument("--json", help="also write the rates to this JSON file")
    args = ap.parse_args()

    columns = COLUMNS
    if args.input:
        import pyarrow.parquet as pq

        from twotower_features.spec import FeatureSpec

        if not args.spec:
            raise SystemExit("--input needs --spec")
        columns = list(FeatureSpec.load(args.spec).columns)
        table = pq.read_table(args.input, columns=[c.name for c in columns]).slice(0, args.rows)
        args.rows = table.num_rows
    else:
        table = make_table(args.rows)
    batches = table.to_batches(max_chunksize=BATCH_ROWS)
    tmp = Path(tempfile.mkdtemp(prefix="bench_tfrecord_"))

    def ours() -> None:
        with open(tmp / "ours.tfrecord", "wb") as f:
            for b in batches:
                f.write(frame_records(encode_batch(b, columns)))

    t_ours = timed(ours, args.repeats)

    import tensorflow as tf

    m = min(args.loop_rows, args.rows)
    py = table.slice(0, m).to_pylist()

    def loop() -> None:
        with tf.io.TFRecordWriter(str(tmp / "loop.tfrecord")) as w:
            for r in py:
                w.write(tf.train.Example(features=tf.train.Features(feature=row_loop_features(tf, columns, r))).SerializeToString())

    t_loop = timed(loop, args.repeats)

    records = [r for b in batches for r in encode_batch(b, columns)]

    def ceiling() -> None:
        with tf.io.TFRecordWriter(str(tmp / "raw.tfrecord")) as w:
            for r in records:
                w.write(r)

    t_raw = timed(ceiling, args.repeats)

    # sanity: our file parses back with TensorFlow, row count and one vector
    n_back = sum(1 for _ in tf.data.TFRecordDataset(str(tmp / "ours.tfrecord")))
    if n_back != args.rows:
        raise SystemExit(f"read back {n_back} records, wrote {args.rows}")

    size = (tmp / "ours.tfrecord").stat().st_size
    print(f"rows: {args.rows} ({size / args.rows:.0f} bytes/record, {size / 1e6:.1f} MB), median of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    rates = {}
    for label, rows, (wall, cpu) in (
        ("ours (encode_batch + frame_records + write)", args.rows, t_ours),
        (f"loop (tf.train.Example + TFRecordWriter, {m} rows)", m, t_loop),
        ("ceiling (TFRecordWriter, pre-serialised records)", args.rows, t_raw),
    ):
        rates[label.split()[0]] = (rows / wall, rows / cpu)
        print(f"{label:52s} {rows / wall:11,.0f} rows/s wall ({wall:.3f} s)  {rows / cpu:11,.0f} rows/s per CPU-second")
    (ow, oc), (lw, lc), (rw, rc) = rates["ours"], rates["loop"], rates["ceiling"]
    print(f"ratio ours/loop: {ow / lw:.1f}x wall, {oc / lc:.1f}x CPU;  ours/ceiling: {ow / rw:.2f}x wall, {oc / rc:.2f}x CPU")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": args.rows, "loop_rows": m, "bytes_per_record": size / args.rows, "columns": [c.name for c in columns],
            "ours_rows_per_s": ow, "loop_rows_per_s": lw, "ceiling_rows_per_s": rw,
            "ours_rows_per_cpu_s": oc, "loop_rows_per_cpu_s": lc, "ceiling_rows_per_cpu_s": rc, "load_avg": os.getloadavg()[0],
        }, indent=2))
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


if __name__ == "__main__":
    main()
