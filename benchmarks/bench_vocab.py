"""A model with 1M user ids and 1M item ids (issue 14): how big its saved config is, how long
saving and loading take, and training examples/s.

Generated features: ``user_id`` (user tower) and ``item_id`` + a 16-dim item vector (item
tower), vocabulary files of ``--users`` and ``--items`` lines, the train-window counts of every
item (the hybrid loss's logQ table), ``--examples`` train records. The model is the demo's
(cosine head, hybrid loss, separate retrieval head) with ``--embedding-dim`` (default 8, to
keep the archive small; the tables dominate it either way).

    .venv/bin/python benchmarks/bench_vocab.py [--users 1000000 --items 1000000] [--json out.json]
    # the same measurement on another checkout of the code (e.g. the commit before a change):
    .venv/bin/python benchmarks/bench_vocab.py --code /path/to/other/checkout --data-dir D

Prints: examples/s (the trainer's report, after the warm-up call), model.keras bytes and the
bytes of its config.json, the exported user tower's bytes, seconds to save, and seconds to load
``model.keras`` (median of ``--loads``).

Measured on the 2-core development machine (one run each, same generated data, 200k examples,
1M users x 1M items; "before" is commit e635587, vocabularies and item counts in the config):

                             before          after (vocabularies and counts as files)
    config.json in model.keras   37.7 MB         3.1 kB
    model.keras                  229.8 MB        221.8 MB
    exported user tower          49.0 MB         40.0 MB
    save                         20.4 s          7.4 s
    load model.keras (median 3)  11.4 s          6.4 s
    training examples/s          54.8k           54.2k
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _code_path() -> Path:
    if "--code" in sys.argv:
        return Path(sys.argv[sys.argv.index("--code") + 1]).resolve()
    return Path(__file__).resolve().parents[1]


sys.path.insert(0, str(_code_path()))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.spec import Column, FeatureSpec  # noqa: E402

SPLITS = {"train": "tfrecords/train/*.tfrecord", "validation": "tfrecords/validation/*.tfrecord", "catalog": "tfrecords/catalog/*.tfrecord"}


def write_data(root: Path, *, users: int, items: int, examples: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab/user_id.txt").write_text("".join(f"u{i}\n" for i in range(users)))
    (root / "vocab/item_id.txt").write_text("".join(f"i{i}\n" for i in range(items)))
    item_vec = rng.normal(0, 1, (items, 16)).astype(np.float32)
    pop = rng.zipf(1.3, items).astype(np.float64)

    def examples_of(n: int):
        u = rng.integers(0, users, n)
        it = rng.choice(items, n, p=pop / pop.sum())
        label = (rng.random(n) < 0.4).astype(np.float32)
        for r in range(n):
            f = {
                "user_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"u{u[r]}".encode()])),
                "item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"i{it[r]}".encode()])),
                "item_vec": tf.train.Feature(float_list=tf.train.FloatList(value=item_vec[it[r]].tolist())),
                "label": tf.train.Feature(float_list=tf.train.FloatList(value=[label[r]])),
                "weight": tf.train.Feature(float_list=tf.train.FloatList(value=[1.0])),
            }
            yield it[r], tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()

    counts = np.zeros(items, np.int64)
    for split, n in (("train", examples), ("validation", max(examples // 20, 1))):
        (root / "tfrecords" / split).mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(root / "tfrecords" / split / "part-00000.tfrecord")) as w:
            for item, rec in examples_of(n):
                w.write(rec)
                if split == "train":
                    counts[item] += 1
    (root / "tfrecords/catalog").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(root / "tfrecords/catalog/part-00000.tfrecord")) as w:
        for i in range(min(items, 1000)):  # the catalog split is not read here
            f = {"item_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"i{i}".encode()])),
                 "item_vec": tf.train.Feature(float_list=tf.train.FloatList(value=item_vec[i].tolist()))}
            w.write(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
    (root / "item_frequency.csv").write_text("item_id,count\n" + "".join(f"i{i},{max(int(c), 1)}\n" for i, c in enumerate(counts)))
    columns = (
        Column("user_id", "string", (), "user", "id", "vocab/user_id.txt", users),
        Column("item_id", "string", (), "item", "id", "vocab/item_id.txt", items),
        Column("item_vec", "float32", (16,), "item", "dense"),
        Column("label", "float32", (), None, "label"),
        Column("weight", "float32", (), None, "weight"),
    )
    FeatureSpec(columns=columns, keys=("user_id", "item_id"), extras={"splits": SPLITS, "item_frequency_file": "item_frequency.csv"}).save(root)
    manifest = {"rows": {}, "shards": {}}
    for split in SPLITS:
        files = sorted((root / "tfrecords" / split).glob("*.tfrecord"))
        n = sum(1 for _ in tf.data.TFRecordDataset([str(f) for f in files]))
        manifest["rows"][split] = n
        manifest["shards"][split] = [{"path": str(f.relative_to(root)), "records": n, "bytes": f.stat().st_size} for f in files]
    (root / "manifest.json").write_text(json.dumps(manifest))


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def measure(root: Path, out: Path, *, embedding_dim: int, loads: int) -> dict:
    import keras

    from twotower_model.export import load_model, save_model
    from twotower_model.train import fit_model

    cfg = ModelConfig(head="cosine", temperature=0.05, loss="hybrid", hybrid_weight=1.0, softmax_head="separate", softmax_temperature=0.1,
                      embedding_dim=embedding_dim, hidden_units=(32,), output_dim=16, epochs=1, batch_size=512)
    model, report = fit_model(root, cfg, progress=lambda s: None)
    t0 = time.perf_counter()
    save_model(model, out)
    save_s = time.perf_counter() - t0
    with zipfile.ZipFile(out / "model.keras") as z:
        config_bytes = len(z.read("config.json"))
    times = []
    for _ in range(loads):
        keras.backend.clear_session()
        t0 = time.perf_counter()
        load_model(out)
        times.append(time.perf_counter() - t0)
    return {
        "examples_per_second": report["examples_per_second"],
        "model_keras_bytes": _bytes(out / "model.keras"),
        "config_json_bytes": config_bytes,
        "user_tower_bytes": _bytes(out / "user_tower"),
        "save_seconds": save_s,
        "load_seconds_median": statistics.median(times),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--embedding-dim", type=int, default=8)
    ap.add_argument("--loads", type=int, default=3)
    ap.add_argument("--data-dir", default=None, help="reuse/keep the generated features here")
    ap.add_argument("--code", default=None, help="import twotower from this checkout instead of this one")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_vocab_")
    try:
        root = Path(args.data_dir) if args.data_dir else Path(tmp) / "features"
        if not (root / "feature_spec.json").is_file():
            t = time.perf_counter()
            write_data(root, users=args.users, items=args.items, examples=args.examples)
            print(f"wrote {args.users:,} users x {args.items:,} items, {args.examples:,} examples in {time.perf_counter() - t:.0f} s to {root}")
        res = measure(root, Path(tmp) / "model", embedding_dim=args.embedding_dim, loads=args.loads)
        res.update(code=str(_code_path()), users=args.users, items=args.items, examples=args.examples)
        for k, v in res.items():
            print(f"{k:24s} {v:,.3f}" if isinstance(v, float) else f"{k:24s} {v:,}" if isinstance(v, int) else f"{k:24s} {v}")
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
