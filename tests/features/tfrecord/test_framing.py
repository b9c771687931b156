"""TFRecord framing, checked byte for byte against ``tf.io.TFRecordWriter`` and read back by TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest

from twotower_features.tfrecord.encode import encode_batch
from twotower_features.tfrecord.framing import frame_records, masked_crc32c

from .conftest import ALL_COLUMNS, all_types_batch

tf = pytest.importorskip("tensorflow")


def tf_writer_bytes(path, records) -> bytes:
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    return path.read_bytes()


def test_frame_matches_tensorflow_writer_and_reads_back(tmp_path):
    records = encode_batch(all_types_batch(), ALL_COLUMNS)
    ours = frame_records(records)
    assert frame_records(records.to_list()) == ours  # generic path == fast path
    path = tmp_path / "ours.tfrecord"
    path.write_bytes(ours)
    read = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    assert read == records.to_list()
    assert tf_writer_bytes(tmp_path / "tf.tfrecord", records) == ours


def test_frame_repeated_and_distinct_lengths_match_tensorflow_writer(tmp_path):
    """Length checksums are computed once per distinct length; each record still gets its own."""
    rng = np.random.default_rng(7)
    lengths = [*rng.integers(0, 40, 300), 127, 128, 16384, 70000, *[5] * 50]
    rng.shuffle(lengths)
    records = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in lengths]
    assert frame_records(records) == tf_writer_bytes(tmp_path / "tf.tfrecord", records)


def test_frame_arbitrary_records_and_crc(tmp_path):
    records = [b"", b"a", bytes(range(256)) * 70, "ü".encode()]
    path = tmp_path / "x.tfrecord"
    path.write_bytes(frame_records(records))
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(path))] == records
    # TFRecord's documented example value: masked crc32c of b"" is 0xa282ead8 (crc 0)
    assert masked_crc32c(b"") == 0xA282EAD8
    # crc32c("123456789") = 0xe3069283 (the CRC-32C check value), masked by hand
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_frame_no_records_is_empty():
    assert frame_records(encode_batch(all_types_batch().slice(0, 0), ALL_COLUMNS)) == b""
    assert frame_records([]) == b""


def test_corrupted_frame_is_rejected(tmp_path):
    body = bytearray(frame_records([b"hello world"]))
    body[14] ^= 0x01  # flip a data bit: the data crc no longer matches
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(body))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))
