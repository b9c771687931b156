"""The hand-written ``tf.train.Example`` encoder, checked against TensorFlow's parser and protos."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from twotower_features.spec import Column
from twotower_features.tfrecord.encode import TFRecordError, encode_batch

from .conftest import ALL_COLUMNS, EXPECTED, all_types_batch, parse

tf = pytest.importorskip("tensorflow")


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
# errors
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
