"""What the TFRecord tests share: a batch of every accepted Arrow type, its values written out by
hand, and a reader built from the spec columns with TensorFlow (independent of the writer)."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from twotower_features.spec import Column


def description(columns):
    """The parse description a reader builds from the spec columns (independent of the writer)."""
    import tensorflow as tf

    dtypes = {"string": tf.string, "float32": tf.float32, "int64": tf.int64}
    return {c.name: tf.io.FixedLenFeature(list(c.shape), dtypes[c.dtype]) for c in columns}


def parse(records, columns):
    import tensorflow as tf

    parsed = tf.io.parse_example(tf.constant(list(records), dtype=tf.string), description(columns))
    return {k: v.numpy() for k, v in parsed.items()}


ALL_COLUMNS = [
    Column("user_id", "string", kind="key"),
    Column("raw", "string"),
    Column("label", "int64", kind="label"),
    Column("small", "int64"),
    Column("flag", "int64"),
    Column("ts", "int64"),
    Column("weight", "float32", kind="weight"),
    Column("ctr", "float32"),
    Column("emb", "float32", (3,), tower="item"),
    Column("fixed_emb", "float32", (2,), tower="user"),
    Column("ids", "int64", (2,)),
    Column("tags", "string", (2,)),
]


def all_types_batch() -> pa.RecordBatch:
    return pa.record_batch(
        {
            "user_id": pa.array(["u1", "", "ünïcødé-日本", None], pa.string()),
            "raw": pa.array([b"\x00\xff", b"", b"x" * 300, b"y"], pa.large_binary()),
            "label": pa.array([0, -1, 2**62 + 3, -(2**62) - 5], pa.int64()),
            "small": pa.array([1, -128, 127, 0], pa.int8()),
            "flag": pa.array([True, False, True, False]),
            "ts": pa.array(
                [dt.datetime(2026, 7, 5, 12, 0, 0, 123456), dt.datetime(1970, 1, 1), dt.datetime(1969, 12, 31, 23, 59, 59), dt.datetime(2000, 1, 1)],
                pa.timestamp("us", tz="UTC"),
            ),
            "weight": pa.array([0.1, 1.0, 2.5, -3.25], pa.float64()),
            "ctr": pa.array([0.5, 0.25, 1e-8, 3.0e38], pa.float32()),
            "emb": pa.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [1e-3, 2e-3, 3e-3], [7.0, 8.0, 9.0]], pa.list_(pa.float64())),
            "fixed_emb": pa.array([[1.5, 2.5], [0.0, 0.1], [-0.1, 1e10], [4.0, 5.0]], pa.list_(pa.float32(), 2)),
            "ids": pa.array([[1, -1], [0, 2**40], [-(2**63), 2**63 - 1], [5, 6]], pa.list_(pa.int64())),
            "tags": pa.array([["a", "bb"], ["", None], ["日", "x"], ["c", "d"]], pa.list_(pa.string())),
            "ignored_extra": pa.array([1, 2, 3, 4]),
        }
    )


# Expected values written out by hand (float32 rounding via numpy, timestamps in microseconds).
EXPECTED = {
    "user_id": [b"u1", b"", "ünïcødé-日本".encode(), b""],
    "raw": [b"\x00\xff", b"", b"x" * 300, b"y"],
    "label": [0, -1, 2**62 + 3, -(2**62) - 5],
    "small": [1, -128, 127, 0],
    "flag": [1, 0, 1, 0],
    "ts": [1_783_252_800_123_456, 0, -1_000_000, 946_684_800_000_000],
    "weight": np.array([0.1, 1.0, 2.5, -3.25], np.float32),
    "ctr": np.array([0.5, 0.25, 1e-8, 3.0e38], np.float32),
    "emb": np.array([[0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [1e-3, 2e-3, 3e-3], [7.0, 8.0, 9.0]], np.float32),
    "fixed_emb": np.array([[1.5, 2.5], [0.0, 0.1], [-0.1, 1e10], [4.0, 5.0]], np.float32),
    "ids": [[1, -1], [0, 2**40], [-(2**63), 2**63 - 1], [5, 6]],
    "tags": [[b"a", b"bb"], [b"", b""], ["日".encode(), b"x"], [b"c", b"d"]],
}
