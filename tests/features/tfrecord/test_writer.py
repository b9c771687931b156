"""The Spark writer: shards written through mapInArrow, parsed back by TensorFlow, published atomically."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from twotower_features.spec import Column
from twotower_features.tfrecord.encode import TFRecordError
from twotower_features.tfrecord.framing import frame_records
from twotower_features.tfrecord.writer import SUCCESS_FILE, write_tfrecords

from .conftest import parse

tf = pytest.importorskip("tensorflow")

SPARK_COLUMNS = [
    Column("user_id", "string", kind="key"),
    Column("label", "int64", kind="label"),
    Column("weight", "float32", kind="weight"),
    Column("emb", "float32", (3,), tower="item"),
]


def spark_rows(n: int, offset: int = 0, bad_row: int | None = None):
    rows = []
    for i in range(offset, offset + n):
        emb = [i * 0.1, -i * 1.0, 0.5] if i != bad_row else [1.0, 2.0]
        rows.append((f"user-{i}-ü" if i % 3 else "", i * 7 - 2**40, float(i) / 3, emb, f"extra{i}"))
    return rows


def spark_df(spark, rows):
    return spark.createDataFrame(rows, "user_id string, label long, weight double, emb array<float>, extra string")


def read_shards(paths, columns=SPARK_COLUMNS):
    records = [r.numpy() for p in paths for r in tf.data.TFRecordDataset(p)]
    if not records:
        return set()
    got = parse(records, columns)
    return {
        (got["user_id"][i].decode(), int(got["label"][i]), float(got["weight"][i]), tuple(float(x) for x in got["emb"][i]))
        for i in range(len(records))
    }


def expected_set(df):
    """Rows as Spark holds them, rounded to float32 as TFRecords store floats."""
    f32 = lambda x: float(np.float32(x))  # noqa: E731
    return {(r.user_id, r.label, f32(r.weight), tuple(f32(x) for x in r.emb)) for r in df.collect()}


def listing(path):
    return sorted(os.listdir(path))


def test_write_tfrecords_round_trip_replace_and_failure(spark, tmp_path):
    out = str(tmp_path / "examples")
    df = spark_df(spark, spark_rows(40))

    res = write_tfrecords(df, out, SPARK_COLUMNS, num_shards=3)
    names = [f"part-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert listing(out) == [SUCCESS_FILE, *names]
    assert res["rows"] == 40 and res["shards"] == 3
    assert res["paths"] == [os.path.join(out, n) for n in names]
    assert res["bytes"] == sum(os.path.getsize(p) for p in res["paths"])
    # per shard, in path order: the file's size on disk and its record count as TensorFlow reads it
    assert res["shard_bytes"] == [os.path.getsize(p) for p in res["paths"]]
    assert res["shard_rows"] == [sum(1 for _ in tf.data.TFRecordDataset(p)) for p in res["paths"]]
    assert read_shards(res["paths"]) == expected_set(df)
    success = json.loads((tmp_path / "examples" / SUCCESS_FILE).read_text())
    assert success["rows"] == 40 and success["shards"] == 3 and sum(success["shard_rows"]) == 40
    assert all(r > 0 for r in success["shard_rows"])  # round-robin spreads the rows
    assert listing(tmp_path) == ["examples"]  # no tmp/old siblings left behind

    # a second run with other rows and another shard count replaces the first entirely
    df2 = spark_df(spark, spark_rows(10, offset=100))
    res2 = write_tfrecords(df2, out, SPARK_COLUMNS, num_shards=2, prefix="train")
    assert listing(out) == [SUCCESS_FILE, "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert read_shards(res2["paths"]) == expected_set(df2)
    assert listing(tmp_path) == ["examples"]
    before = {n: (tmp_path / "examples" / n).read_bytes() for n in listing(out)}

    # a run whose encoder fails inside a task leaves the previous output as it was
    bad = spark_df(spark, spark_rows(20, bad_row=13))
    with pytest.raises(Exception, match=r"column 'emb': row \d+ of the batch has 2 values, expected 3"):
        write_tfrecords(bad, out, SPARK_COLUMNS, num_shards=3)
    assert {n: (tmp_path / "examples" / n).read_bytes() for n in listing(out)} == before
    assert listing(tmp_path) == ["examples"]


def test_write_tfrecords_empty_shards_and_partition_key(spark, tmp_path):
    out = str(tmp_path / "few")
    df = spark_df(spark, spark_rows(2))
    res = write_tfrecords(df, out, SPARK_COLUMNS, num_shards=5, partition_by=["user_id"])
    assert len(res["paths"]) == 5 and res["rows"] == 2
    sizes = [os.path.getsize(p) for p in res["paths"]]
    assert sizes.count(0) >= 3  # empty shards still exist, so the shard count is stable
    assert res["shard_bytes"] == sizes and sum(res["shard_rows"]) == 2
    assert [n == 0 for n in res["shard_rows"]] == [s == 0 for s in sizes]
    assert read_shards(res["paths"]) == expected_set(df)


def test_write_tfrecords_cleans_stale_siblings_and_restores_moved_output(spark, tmp_path):
    out = tmp_path / "ex"
    stale = tmp_path / "ex.tmp-0123abcd"
    stale.mkdir()
    (stale / "part-00000-of-00001.tfrecord").write_bytes(b"partial")
    # a run killed between "move old away" and "move new in": only the moved-aside copy exists
    moved = tmp_path / "ex.old-4567ef"
    moved.mkdir()
    (moved / "part-00000-of-00001.tfrecord").write_bytes(frame_records([b"old"]))
    (moved / SUCCESS_FILE).write_text('{"rows": 1}')

    bad = spark_df(spark, spark_rows(5, bad_row=2))
    with pytest.raises(Exception, match="column 'emb'"):
        write_tfrecords(bad, str(out), SPARK_COLUMNS, num_shards=1)
    assert listing(tmp_path) == ["ex"]  # previous output restored, stale tmp gone
    assert listing(out) == [SUCCESS_FILE, "part-00000-of-00001.tfrecord"]
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(out / "part-00000-of-00001.tfrecord"))] == [b"old"]


def test_write_tfrecords_checks_columns_on_driver(spark, tmp_path):
    df = spark_df(spark, spark_rows(3)).drop("weight")
    with pytest.raises(TFRecordError, match=r"\['weight'\].*missing from the DataFrame"):
        write_tfrecords(df, str(tmp_path / "x"), SPARK_COLUMNS, num_shards=1)
    df = spark_df(spark, spark_rows(3))
    with pytest.raises(TFRecordError, match=r"column 'user_id' has Spark type string.*float32"):
        write_tfrecords(df, str(tmp_path / "x"), [Column("user_id", "float32")], num_shards=1)
    with pytest.raises(ValueError, match="num_shards must be an integer >= 1"):
        write_tfrecords(df, str(tmp_path / "x"), SPARK_COLUMNS, num_shards=0)
    assert not (tmp_path / "x").exists()


def test_write_tfrecords_sort_by_gives_identical_files_whatever_the_input_order(spark, tmp_path):
    rows = spark_rows(30)
    a = spark_df(spark, rows).repartition(1)
    b = spark_df(spark, list(reversed(rows))).repartition(4)  # other order, other partitioning
    keys = ["user_id", "label"]  # unique together (label is distinct per row)
    ra = write_tfrecords(a, str(tmp_path / "a"), SPARK_COLUMNS, num_shards=3, sort_by=keys)
    rb = write_tfrecords(b, str(tmp_path / "b"), SPARK_COLUMNS, num_shards=3, sort_by=keys)
    files_a = [open(p, "rb").read() for p in ra["paths"]]
    assert files_a == [open(p, "rb").read() for p in rb["paths"]]
    assert read_shards(ra["paths"]) == expected_set(a)
    for p in ra["paths"]:  # within a shard, records come sorted by the key
        records = [rec.numpy() for rec in tf.data.TFRecordDataset(p)]
        if records:
            got = parse(records, SPARK_COLUMNS)
            keys_in_file = [(u.decode(), int(lab)) for u, lab in zip(got["user_id"], got["label"])]
            assert keys_in_file == sorted(keys_in_file)
