"""A tiny features folder for the trainer's tests, written here with tf.train.Example.

The synthetic data has a learnable structure: users and items each belong to one of two groups;
a user engages with an item of its own group with probability 0.9, else 0.1. The group is
visible through the ids (consistent per user/item) and, noisily, through ``user_vec`` and
``item_emb``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf

from twotower_features.spec import Column, FeatureSpec

N_USERS, N_ITEMS = 40, 30
USERS = [f"u{i:02d}" for i in range(N_USERS)]
ITEMS = [f"i{i:02d}" for i in range(N_ITEMS)]
# u38/u39 never appear in train: not in the vocabulary, they are OOV in validation
USER_VOCAB = USERS[:-2]
HANDSETS = ["apple", "samsung", "xiaomi"]

COLUMNS = [
    Column("user_id", "string", (), "user", "id", "vocab/user_id.txt", len(USER_VOCAB)),
    Column("handset_maker", "string", (), "user", "categorical", "vocab/handset_maker.txt", len(HANDSETS)),
    Column("user_vec", "float32", (4,), "user", "dense"),
    Column("hist_len", "int64", (), "user", "count"),
    Column("item_id", "string", (), "item", "id", "vocab/item_id.txt", N_ITEMS),
    Column("item_emb", "float32", (8,), "item", "dense"),
    Column("label", "float32", (), None, "label"),
    Column("weight", "float32", (), None, "weight"),
    Column("event_ts", "int64", (), None, "key"),
]
SPLITS = {
    "train": "tfrecords/train/*.tfrecord",
    "validation": "tfrecords/validation/*.tfrecord",
    "catalog": "tfrecords/catalog/*.tfrecord",
}
CATALOG_COLUMNS = ["item_id", "item_emb"]

SMALL = dict(embedding_dim=8, hidden_units=(16,), output_dim=8, batch_size=64, learning_rate=0.02, seed=3)


def _feature(col: Column, value) -> tf.train.Feature:
    v = np.atleast_1d(value)
    if col.dtype == "string":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(x).encode() for x in v]))
    if col.dtype == "float32":
        return tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32).tolist()))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64).tolist()))


def _write_records(path: Path, frame: dict[str, np.ndarray], names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {c.name: c for c in COLUMNS}
    n = len(frame[names[0]])
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(n):
            feats = {name: _feature(cols[name], frame[name][i]) for name in names}
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())


def _make_rows(rng: np.random.Generator, n: int, users: list[str], user_group, item_group, item_vecs, user_hand) -> dict[str, np.ndarray]:
    u = rng.choice(len(users), n)
    it = rng.choice(N_ITEMS, n)
    ug = np.array([user_group[users[k]] for k in u])
    ig = item_group[it]
    p = np.where(ug == ig, 0.9, 0.1)
    label = (rng.random(n) < p).astype(np.float32)
    user_vec = np.stack([ug, 1 - ug, np.zeros(n), np.zeros(n)], axis=1) + rng.normal(0, 0.5, (n, 4))
    return {
        "user_id": np.array([users[k] for k in u], dtype=object),
        "handset_maker": np.array([user_hand[users[k]] for k in u], dtype=object),
        "user_vec": user_vec.astype(np.float32),
        "hist_len": rng.integers(0, 200, n).astype(np.int64),
        "item_id": np.array([ITEMS[k] for k in it], dtype=object),
        "item_emb": item_vecs[it],
        "label": label,
        "weight": np.where(label > 0, 2.0, 1.0).astype(np.float32),
        "event_ts": (1_780_000_000_000_000 + np.arange(n) * 1_000_000).astype(np.int64),
    }


def _slice(frame: dict[str, np.ndarray], a: int, b: int) -> dict[str, np.ndarray]:
    return {k: v[a:b] for k, v in frame.items()}


SHARDS = {  # the files of each split, as write_features writes them (train: two halves of n_train)
    "train": ["tfrecords/train/part-00000.tfrecord", "tfrecords/train/part-00001.tfrecord"],
    "validation": ["tfrecords/validation/part-00000.tfrecord"],
    "catalog": ["tfrecords/catalog/part-00000.tfrecord"],
}


def write_manifest(root: Path, records: dict[str, list[int]], *, config_hash: str = "cfg0", data_hash: str = "data0",
                   created_at: str = "2026-07-06T00:00:00+00:00") -> dict:
    """``manifest.json`` as the tfrecords stage writes it: hashes, time, and per split the shards
    (``SHARDS``) with the record counts given here and their sizes on disk."""
    shards = {
        split: [{"path": rel, "records": n, "bytes": (root / rel).stat().st_size} for rel, n in zip(SHARDS[split], records[split])]
        for split in SHARDS
    }
    manifest = {
        "experiment": "tiny", "created_at": created_at, "config_hash": config_hash, "data_hash": data_hash,
        "rows": {s: sum(records[s]) for s in SHARDS}, "shards": shards,
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def write_features(root: Path, *, seed: int = 0, n_train: int = 600, n_val: int = 200, **manifest) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    user_group = {u: int(rng.integers(0, 2)) for u in USERS}
    user_hand = {u: HANDSETS[int(rng.integers(0, 3))] for u in USERS}
    item_group = rng.integers(0, 2, N_ITEMS)
    item_vecs = (np.concatenate([np.eye(2)[item_group], np.zeros((N_ITEMS, 6))], axis=1) + rng.normal(0, 0.3, (N_ITEMS, 8))).astype(np.float32)

    train = _make_rows(rng, n_train, USER_VOCAB, user_group, item_group, item_vecs, user_hand)
    val = _make_rows(rng, n_val, USERS, user_group, item_group, item_vecs, user_hand)
    catalog = {"item_id": np.array(ITEMS, dtype=object), "item_emb": item_vecs}
    names = [c.name for c in COLUMNS]
    half = n_train // 2
    _write_records(root / "tfrecords/train/part-00000.tfrecord", _slice(train, 0, half), names)
    _write_records(root / "tfrecords/train/part-00001.tfrecord", _slice(train, half, n_train), names)
    _write_records(root / "tfrecords/validation/part-00000.tfrecord", val, names)
    _write_records(root / "tfrecords/catalog/part-00000.tfrecord", catalog, CATALOG_COLUMNS)

    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab/user_id.txt").write_text("\n".join(USER_VOCAB) + "\n")
    (root / "vocab/handset_maker.txt").write_text("\n".join(HANDSETS) + "\n")
    (root / "vocab/item_id.txt").write_text("\n".join(ITEMS) + "\n")
    counts = pd.Series(train["item_id"]).value_counts()
    pd.DataFrame({"item_id": counts.index, "count": counts.values}).to_csv(root / "item_frequency.csv", index=False)
    FeatureSpec(
        columns=tuple(COLUMNS),
        keys=("user_id", "item_id", "event_ts"),
        extras={"splits": SPLITS, "item_frequency_file": "item_frequency.csv"},
    ).save(root)
    write_manifest(root, {"train": [half, n_train - half], "validation": [n_val], "catalog": [N_ITEMS]}, **manifest)
    return {"train": train, "validation": val, "catalog": catalog}
