"""Trainer throughput on experiment-8-sized synthetic features: tf.data alone vs training.

Spec like experiment 8: user tower = user_id + pos/neg history cluster distributions (18 each)
+ user ctr and timespent; item tower = 64-dim item embedding + item and creator ctr (no
item_id); 5k catalog items, 200k train examples in 8 shards.

Measures (each after a warm-up: the first batch, or the first call of the train function):
- tf.data records/s: the training input pipeline (shuffle, batch, parse) iterated alone;
- training examples/s from the same train records held in memory (``--from-memory``: the
  input pipeline's batches cached in RAM by a full pass before training, so the trainer never
  waits on files or parsing), against the trainer's default (the split parsed into memory once
  when its files fit ``--memory-cache-mb``, that parse counted as training time) and against
  the streamed pipeline (``train_tfrecords_over_memory``, ``train_streamed_over_memory``): is
  input ever the bottleneck?
- training examples/s for each optimiser kind (``twotower_model.optimizer.make_optimizer``),
  optionally again with the user vocabulary padded to ``--big-vocab`` ids (unseen ids),
  which shows what dense Adam over a large embedding table costs;
and prints the ratio training / tf.data.

    .venv/bin/python benchmarks/bench_train.py [--examples 200000] [--big-vocab 1000000]

Measured on the 2-core development machine while other jobs ran (load ~5, so runs vary by
+-30 %), 200k examples, batch 512, 1 epoch, ModelConfig defaults:

    tf.data alone                        160k-260k records/s
    lazy_adam, 20k user ids              120k-200k examples/s
    lazy_adam, 1M user ids               150k-210k examples/s
    Keras Adam, 20k / 1M user ids        75k-80k / 0.4k-0.8k examples/s
    Keras Adagrad, 20k / 1M user ids     95k-140k / 1.8k-2.8k examples/s

(the 1M-id numbers for adam/adagrad from ``--examples 20000 --big-vocab 1000000
--big-vocab-optimizers lazy_adam,adam,adagrad``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.spec import Column, FeatureSpec  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402
from twotower_model.data import make_dataset  # noqa: E402
from twotower_model.optimizer import OPTIMIZERS  # noqa: E402
from twotower_model.train import fit_model  # noqa: E402

SPLITS = {
    "train": "tfrecords/train/*.tfrecord",
    "validation": "tfrecords/validation/*.tfrecord",
    "catalog": "tfrecords/catalog/*.tfrecord",
}


def _columns(n_users: int) -> list[Column]:
    return [
        Column("user_id", "string", (), "user", "id", "vocab/user_id.txt", n_users),
        Column("pos_hist_clusters", "float32", (18,), "user", "dense"),
        Column("neg_hist_clusters", "float32", (18,), "user", "dense"),
        Column("user_ctr", "float32", (), "user", "dense"),
        Column("user_timespent", "float32", (), "user", "dense"),
        Column("item_id", "string", (), None, "key"),
        Column("item_emb", "float32", (64,), "item", "dense"),
        Column("item_ctr", "float32", (), "item", "dense"),
        Column("creator_ctr", "float32", (), "item", "dense"),
        Column("label", "float32", (), None, "label"),
        Column("weight", "float32", (), None, "weight"),
        Column("event_ts", "int64", (), None, "key"),
    ]


def _f(values: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.atleast_1d(values).tolist()))


def _b(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))


def _i(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def write_data(root: Path, *, examples: int, users: int, items: int, shards: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 18
    user_pref = rng.dirichlet(np.full(k, 0.3), users).astype(np.float32)
    item_cluster = rng.integers(0, k, items)
    item_emb = (rng.normal(0, 1, (k, 64))[item_cluster] + rng.normal(0, 0.5, (items, 64))).astype(np.float32)
    item_ctr = rng.normal(0, 1, items).astype(np.float32)
    creator_ctr = rng.normal(0, 1, items).astype(np.float32)

    def rows(n: int, offset: int):
        u = rng.integers(0, users, n)
        it = rng.integers(0, items, n)
        p = 0.1 + 0.8 * user_pref[u, item_cluster[it]]
        label = (rng.random(n) < p).astype(np.float32)
        pos = user_pref[u] + rng.normal(0, 0.02, (n, k)).astype(np.float32)
        neg = rng.dirichlet(np.ones(k), n).astype(np.float32)
        uctr = rng.normal(0, 1, n).astype(np.float32)
        uts = rng.normal(0, 1, n).astype(np.float32)
        for r in range(n):
            feats = {
                "user_id": _b(f"u{u[r]}"),
                "pos_hist_clusters": _f(pos[r]),
                "neg_hist_clusters": _f(neg[r]),
                "user_ctr": _f(uctr[r]),
                "user_timespent": _f(uts[r]),
                "item_id": _b(f"i{it[r]}"),
                "item_emb": _f(item_emb[it[r]]),
                "item_ctr": _f(item_ctr[it[r]]),
                "creator_ctr": _f(creator_ctr[it[r]]),
                "label": _f(label[r]),
                "weight": _f(np.float32(1.0)),
                "event_ts": _i(1_780_000_000_000_000 + offset + r),
            }
            yield tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()

    shards_written: dict[str, list[dict]] = {}

    def listed(split: str, name: str, records: int) -> None:
        rel = f"tfrecords/{split}/{name}"
        shards_written.setdefault(split, []).append({"path": rel, "records": records, "bytes": (root / rel).stat().st_size})

    def write(split: str, n: int, n_shards: int, offset: int) -> None:
        (root / "tfrecords" / split).mkdir(parents=True, exist_ok=True)
        per = -(-n // n_shards)
        for s in range(n_shards):
            m = min(per, n - s * per)
            with tf.io.TFRecordWriter(str(root / "tfrecords" / split / f"part-{s:05d}.tfrecord")) as w:
                for rec in rows(m, offset + s * per):
                    w.write(rec)
            listed(split, f"part-{s:05d}.tfrecord", m)

    write("train", examples, shards, 0)
    write("validation", max(examples // 20, 1), 1, examples)
    (root / "tfrecords" / "catalog").mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(root / "tfrecords/catalog/part-00000.tfrecord")) as w:
        for i in range(items):
            feats = {"item_id": _b(f"i{i}"), "item_emb": _f(item_emb[i]), "item_ctr": _f(item_ctr[i]), "creator_ctr": _f(creator_ctr[i])}
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    listed("catalog", "part-00000.tfrecord", items)
    write_spec(root, users)
    # the manifest the trainer checks the files against (provenance.check_split_files)
    manifest = {
        "experiment": "bench_train", "created_at": "2026-07-06T00:00:00+00:00", "config_hash": "bench", "data_hash": "bench",
        "rows": {k: sum(x["records"] for x in v) for k, v in shards_written.items()}, "shards": shards_written,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))


def write_spec(root: Path, vocab_users: int) -> None:
    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab/user_id.txt").write_text("\n".join(f"u{i}" for i in range(vocab_users)) + "\n")
    FeatureSpec(columns=tuple(_columns(vocab_users)), keys=("user_id", "item_id", "event_ts"), extras={"splits": SPLITS}).save(root)


def pipeline_records_per_s(root: Path, cfg: ModelConfig) -> float:
    spec = FeatureSpec.load(root)
    cols = [c.name for c in spec.columns if c.tower is not None] + [spec.label, spec.weight]
    ds = make_dataset(root, "train", spec, batch_size=cfg.batch_size, shuffle=True, seed=cfg.seed, columns=cols, deterministic=True)
    it = iter(ds)
    first = next(it)
    n, t0 = 0, time.perf_counter()
    for b in it:
        n += int(b[spec.label].shape[0])
    del first
    return n / (time.perf_counter() - t0)


def fit_from_memory(root: Path, cfg: ModelConfig, optimizer: str) -> dict:
    """``fit_model`` with the train split's batches cached in memory first: the dataset
    ``fit_model`` builds (same files, shuffle, batches) is wrapped in ``Dataset.cache()`` and
    iterated once before training, so every epoch reads batches from RAM."""
    real = ttrain.make_dataset

    def cached(feat_dir, split, *args, **kwargs):
        ds = real(feat_dir, split, *args, **kwargs)
        if split != "train":
            return ds
        ds = ds.cache()
        for _ in ds:  # fill the cache: the training below never touches a file
            pass
        return ds

    ttrain.make_dataset = cached
    try:
        return fit_model(root, cfg, progress=lambda s: None, optimizer=optimizer, memory_cache_bytes=0)[1]
    finally:
        ttrain.make_dataset = real


def with_load(report: dict) -> float:
    """A training report's examples/s (after the warm-up) with the train split's parse into
    memory, when there was one, counted as training time: the rate from the files on disk."""
    seconds = report["examples"] / report["examples_per_second"]
    return report["examples"] / (seconds + report["train_load_seconds"] * report["train_in_memory"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=ModelConfig().epochs)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--big-vocab", type=int, default=0, help="also train with the user vocabulary padded to this many ids")
    ap.add_argument(
        "--big-vocab-optimizers", default="lazy_adam",
        help="optimisers for the --big-vocab runs (adam and adagrad run at ~0.4k and ~2k examples/s with 1M ids: use a small --examples)",
    )
    ap.add_argument("--from-memory", type=int, default=1, help="also train from the records cached in memory (1) or not (0)")
    ap.add_argument("--data-dir", default=None, help="reuse/keep the generated data here (default: a temporary folder); "
                    "any features folder with feature_spec.json works, e.g. a `twotower features` output")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args()

    tmp = None
    if args.data_dir:
        root = Path(args.data_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="bench_train_")
        root = Path(tmp)
    try:
        if not (root / "feature_spec.json").is_file():
            t = time.perf_counter()
            write_data(root, examples=args.examples, users=args.users, items=args.items, shards=args.shards, seed=0)
            print(f"wrote {args.examples} examples in {time.perf_counter() - t:.1f} s to {root}")
        cfg = ModelConfig(epochs=args.epochs, batch_size=args.batch_size)
        results = {"tf_data_records_per_s": pipeline_records_per_s(root, cfg)}
        print(f"tf.data alone: {results['tf_data_records_per_s']:,.0f} records/s")
        runs = [("", root, args.optimizers)]
        if args.big_vocab:
            big = root / f"vocab_{args.big_vocab}"
            if not (big / "feature_spec.json").is_file():
                big.mkdir(exist_ok=True)
                if not (big / "tfrecords").exists():
                    (big / "tfrecords").symlink_to(root / "tfrecords")
                write_spec(big, args.big_vocab)
            runs.append((f" (user vocab {args.big_vocab:,})", big, args.big_vocab_optimizers))
        for label, feat, kinds in runs:
            for kind in kinds.split(","):
                _, report = fit_model(feat, cfg, progress=lambda s: None, optimizer=kind)
                key = f"train_examples_per_s[{kind}]{label}"
                results[key] = report["examples_per_second"]
                print(
                    f"training, optimizer {kind}{label}: {report['examples_per_second']:,.0f} examples/s "
                    f"(ratio to tf.data {report['examples_per_second'] / results['tf_data_records_per_s']:.2f}), "
                    f"loss {report['final_loss']:.4f}, validation loss {report['validation_loss']:.4f}"
                )
                if not label and kind == args.optimizers.split(",")[0]:
                    default_report = report
        if args.from_memory:
            kind = args.optimizers.split(",")[0]
            streamed = fit_model(root, cfg, progress=lambda s: None, optimizer=kind, memory_cache_bytes=0)[1]
            memory = fit_from_memory(root, cfg, kind)
            # the trainer's default (the split parsed into memory when it fits, that parse
            # counted) and the streamed pipeline, each over training from cached batches
            results[f"train_examples_per_s_from_memory[{kind}]"] = with_load(memory)
            results[f"train_examples_per_s_streamed[{kind}]"] = with_load(streamed)
            results[f"train_in_memory[{kind}]"] = default_report["train_in_memory"]
            results[f"train_load_seconds[{kind}]"] = default_report["train_load_seconds"]
            results[f"train_tfrecords_over_memory[{kind}]"] = ratio = with_load(default_report) / with_load(memory)
            results[f"train_streamed_over_memory[{kind}]"] = streamed_ratio = with_load(streamed) / with_load(memory)
            print(
                f"optimizer {kind}, {cfg.epochs} epoch(s), examples/s over the whole training loop: from memory {with_load(memory):,.0f}; "
                f"from TFRecords {with_load(default_report):,.0f} (parsed into memory: {default_report['train_in_memory']}, {default_report['train_load_seconds']:.1f} s counted), "
                f"ratio {ratio:.2f}; streamed {with_load(streamed):,.0f}, ratio {streamed_ratio:.2f}"
            )
        print(json.dumps(results, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
