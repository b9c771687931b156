"""The hand-written TFRecord writer, checked against TensorFlow's own parser, protos and writer."""
from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pyarrow as pa
import pytest

from twotower_features.spec import Column
from twotower_features.tfrecord import (
    SUCCESS_FILE,
    TFRecordError,
    encode_batch,
    frame_records,
    masked_crc32c,
    write_tfrecords,
)

tf = pytest.importorskip("tensorflow")

_TF_DTYPES = {"string": tf.string, "float32": tf.float32, "int64": tf.int64}


def description(columns):
    """The parse description a reader builds from the spec columns (independent of the writer)."""
    return {c.name: tf.io.FixedLenFeature(list(c.shape), _TF_DTYPES[c.dtype]) for c in columns}


def parse(records, columns):
    parsed = tf.io.parse_example(tf.constant(list(records), dtype=tf.string), description(columns))
    return {k: v.numpy() for k, v in parsed.items()}


# ---------------------------------------------------------------------------------------------
# encoder
# ---------------------------------------------------------------------------------------------
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


def test_encode_parses_back_value_for_value():
    records = encode_batch(all_types_batch(), ALL_COLUMNS)
    assert len(records) == 4
    got = parse(records, ALL_COLUMNS)
    assert set(got) == {c.name for c in ALL_COLUMNS}
    for name, want in EXPECTED.items():
        if isinstance(want, np.ndarray):
            assert got[name].dtype == np.float32
            np.testing.assert_array_equal(got[name], want, err_msg=name)  # exact float32 bits
        else:
            assert got[name].tolist() == want, name


def test_encode_equals_tensorflow_protos():
    """Each record decodes to the same Example proto that TensorFlow builds from the values."""
    records = encode_batch(all_types_batch(), ALL_COLUMNS).to_list()
    for i, rec in enumerate(records):
        feats = {}
        for c in ALL_COLUMNS:
            v = EXPECTED[c.name][i]
            v = v.tolist() if isinstance(v, np.ndarray) else v
            v = v if isinstance(v, list) else [v]
            if c.dtype == "string":
                feats[c.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
            elif c.dtype == "int64":
                feats[c.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=v))
            else:
                feats[c.name] = tf.train.Feature(float_list=tf.train.FloatList(value=v))
        want = tf.train.Example(features=tf.train.Features(feature=feats))
        got = tf.train.Example.FromString(rec)
        assert got == want, f"row {i}"
        # the same message re-serialised by protobuf has the same length (no stray bytes)
        assert len(got.SerializeToString()) == len(rec)


def test_encode_table_with_chunks_and_sliced_batch():
    batch = all_types_batch()
    table = pa.Table.from_batches([batch.slice(0, 1), batch.slice(1, 3)])
    whole = encode_batch(batch, ALL_COLUMNS).to_list()
    assert encode_batch(table, ALL_COLUMNS).to_list() == whole
    assert encode_batch(batch.slice(2, 2), ALL_COLUMNS).to_list() == whole[2:]


def test_encode_empty_batch():
    batch = all_types_batch().slice(0, 0)
    records = encode_batch(batch, ALL_COLUMNS)
    assert len(records) == 0 and records.to_list() == []
    assert frame_records(records) == b""


def test_encode_many_rows_with_long_strings_and_vectors():
    """Varints of 2-3 bytes for lengths (records > 127 and > 16383 bytes)."""
    rng = np.random.default_rng(3)
    n, d = 50, 5000
    ids = ["k" * int(k) for k in rng.integers(0, 200, n)]
    vec = rng.standard_normal((n, d)).astype(np.float32)
    big = pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), d).cast(pa.list_(pa.float32()))
    batch = pa.record_batch({"id": pa.array(ids), "v": big, "c": pa.array(rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64))})
    cols = [Column("id", "string"), Column("v", "float32", (d,)), Column("c", "int64")]
    got = parse(encode_batch(batch, cols), cols)
    assert [x.decode() for x in got["id"]] == ids
    np.testing.assert_array_equal(got["v"], vec)
    assert got["c"].tolist() == batch.column("c").to_pylist()


# ---------------------------------------------------------------------------------------------
# framing
# ---------------------------------------------------------------------------------------------
def test_frame_matches_tensorflow_writer_and_reads_back(tmp_path):
    records = encode_batch(all_types_batch(), ALL_COLUMNS)
    ours = frame_records(records)
    assert frame_records(records.to_list()) == ours  # generic path == fast path
    path = tmp_path / "ours.tfrecord"
    path.write_bytes(ours)
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert read == records.to_list()

    ref = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(ref)) as w:
        for r in records:
            w.write(r)
    assert ref.read_bytes() == ours


def test_frame_arbitrary_records_and_crc(tmp_path):
    records = [b"", b"a", bytes(range(256)) * 70, "ü".encode()]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(frame_records(records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    # TFRecord's documented example value: masked crc32c of b"" is 0xa282ead8 (crc 0)
    assert masked_crc32c(b"") == 0xA282EAD8


def test_corrupted_frame_is_rejected(tmp_path):
    body = bytearray(frame_records([b"hello world"]))
    body[14] ^= 0x01  # flip a data bit: the data crc no longer matches
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(body))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))


# ---------------------------------------------------------------------------------------------
# encoder errors
# ---------------------------------------------------------------------------------------------
def test_error_missing_column():
    batch = pa.record_batch({"a": pa.array([1])})
    with pytest.raises(TFRecordError, match=r"\['b'\].*missing"):
        encode_batch(batch, [Column("a", "int64"), Column("b", "float32")])


def test_error_wrong_vector_length():
    batch = pa.record_batch({"emb": pa.array([[1.0, 2.0], [1.0], [3.0, 4.0]], pa.list_(pa.float32()))})
    with pytest.raises(TFRecordError, match=r"column 'emb': row 1 of the batch has 1 values, expected 2"):
        encode_batch(batch, [Column("emb", "float32", (2,))])


def test_error_null_in_float_column():
    batch = pa.record_batch({"w": pa.array([1.0, None, 2.0])})
    with pytest.raises(TFRecordError, match=r"column 'w': row 1 of the batch is null"):
        encode_batch(batch, [Column("w", "float32")])


def test_error_null_element_and_null_vector():
    cols = [Column("emb", "float32", (2,))]
    with pytest.raises(TFRecordError, match=r"column 'emb': row 1 of the batch has a null at position 0"):
        encode_batch(pa.record_batch({"emb": pa.array([[1.0, 2.0], [None, 1.0]])}), cols)
    with pytest.raises(TFRecordError, match=r"column 'emb': row 0 of the batch is null"):
        encode_batch(pa.record_batch({"emb": pa.array([None, [1.0, 1.0]], pa.list_(pa.float64()))}), cols)


def test_error_null_int_wrong_type_and_overflow():
    with pytest.raises(TFRecordError, match=r"column 'n': row 2 of the batch is null; expected an int64"):
        encode_batch(pa.record_batch({"n": pa.array([1, 2, None])}), [Column("n", "int64")])
    with pytest.raises(TFRecordError, match=r"column 'n'.*must be an integer, boolean or timestamp; got Arrow type string"):
        encode_batch(pa.record_batch({"n": pa.array(["1"])}), [Column("n", "int64")])
    with pytest.raises(TFRecordError, match=r"column 's'.*must be a string or binary; got Arrow type int64"):
        encode_batch(pa.record_batch({"s": pa.array([1])}), [Column("s", "string")])
    with pytest.raises(TFRecordError, match=r"column 'u'.*does not fit in int64"):
        encode_batch(pa.record_batch({"u": pa.array([2**64 - 1], pa.uint64())}), [Column("u", "int64")])
    with pytest.raises(TFRecordError, match=r"column 'v'.*list of 2 values"):
        encode_batch(pa.record_batch({"v": pa.array([1.0])}), [Column("v", "float32", (2,))])


# ---------------------------------------------------------------------------------------------
# Spark writer
# ---------------------------------------------------------------------------------------------
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
