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

``--framing`` times ``frame_records`` alone instead (no TensorFlow), median of ``--repeats``
(default 15) runs, on records of random bytes of the sizes the writer sees: 100k records of
~300 bytes framed 10k at a time (Spark's Arrow batch) and all at once, 10k records of ~3 kB. It
compares how the length headers are checksummed, the rest of the framing being the same:

- distinct: what ``framing`` does, one ``google_crc32c`` call per distinct length in the call;
- per record: one ``google_crc32c`` call per record;
- numpy table: a crc32c table in numpy, vectorised over all headers at once (what framing used
  before, beside ``google_crc32c`` for the data).
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

import google_crc32c
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from twotower_features.spec import Column  # noqa: E402
from twotower_features.tfrecord import framing  # noqa: E402
from twotower_features.tfrecord.encode import EncodedRecords, encode_batch  # noqa: E402
from twotower_features.tfrecord.framing import frame_records  # noqa: E402

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


def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc32c_table()


def length_crcs_numpy_table(lengths: np.ndarray) -> np.ndarray:
    """crc32c of each uint64 as 8 LE bytes, table-driven in numpy over all of them at once."""
    crc = np.full(lengths.shape, 0xFFFFFFFF, dtype=np.uint32)
    for k in range(8):
        b = ((lengths >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint32)
        crc = _CRC_TABLE[(crc ^ b) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def length_crcs_per_record(lengths: np.ndarray) -> np.ndarray:
    """crc32c of each uint64 as 8 LE bytes, one ``google_crc32c`` call per record."""
    return np.fromiter((google_crc32c.value(v.to_bytes(8, "little")) for v in lengths.tolist()), dtype=np.uint32, count=len(lengths))


def bench_framing(repeats: int) -> dict:
    """Median seconds (wall, CPU) of framing each case with each way of checksumming the lengths."""
    rng = np.random.default_rng(0)
    cases = {}
    for label, n, size, per_call in (
        ("100k x ~300 B, 10k per call", 100_000, 300, 10_000),
        ("100k x ~300 B, one call", 100_000, 300, 100_000),
        ("10k x ~3 kB, 10k per call", 10_000, 3_000, 10_000),
    ):
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(rng.integers(size * 5 // 6, size * 7 // 6 + 1, n), out=offsets[1:])  # +-1/6 around the size
        data = rng.integers(0, 256, int(offsets[-1]), dtype=np.uint8).tobytes()
        cases[label] = calls = []  # what encode_batch hands the writer: a buffer and offsets per call
        for i in range(0, n, per_call):
            o = offsets[i : i + per_call + 1]
            calls.append(EncodedRecords(data[o[0] : o[-1]], o - o[0]))
    ways = {"distinct": framing._length_crcs, "per record": length_crcs_per_record, "numpy table": length_crcs_numpy_table}
    shipped = framing._length_crcs
    out: dict = {}
    try:
        for label, calls in cases.items():
            want = frame_records(calls[0])
            runs: dict = {way: [] for way in ways}
            for _ in range(repeats):  # the ways take turns, so a busy spell hits them alike
                for way, fn in ways.items():
                    framing._length_crcs = fn
                    if frame_records(calls[0]) != want:
                        raise SystemExit(f"{way}: framing differs from the shipped one")
                    runs[way].append(timed(lambda: [frame_records(c) for c in calls], 1))
            out[label] = {way: (statistics.median(w for w, _ in r), statistics.median(c for _, c in r)) for way, r in runs.items()}
    finally:
        framing._length_crcs = shipped
    print(f"frame_records, median of {repeats}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for label, times in out.items():
        bw, bc = times["numpy table"]
        cells = "  ".join(f"{way} {w * 1e3:6.1f} ms ({w / bw:.2f}x wall, {c / bc:.2f}x CPU)" for way, (w, c) in times.items())
        print(f"{label:28s} {cells}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--loop-rows", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, help="runs to take the median of (default 3; 15 with --framing)")
    ap.add_argument("--input", help="a Parquet file or folder of rows to write instead of the synthetic table")
    ap.add_argument("--spec", help="feature_spec.json naming the columns of --input")
    ap.add_argument("--json", help="also write the rates to this JSON file")
    ap.add_argument("--framing", action="store_true", help="time frame_records alone: ways of checksumming the length headers")
    args = ap.parse_args()
    if args.framing:
        figures = bench_framing(args.repeats or 15)
        if args.json:
            seconds = {label: {way: {"wall_s": w, "cpu_s": c} for way, (w, c) in t.items()} for label, t in figures.items()}
            Path(args.json).write_text(json.dumps(seconds, indent=2))
        return
    args.repeats = args.repeats or 3

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
