"""TFRecord framing, checked byte for byte against ``tf.io.TFRecordWriter`` and read back by TensorFlow."""
from __future__ import annotations

import numpy as np
import pytest

from twotower_features.errors import UserError
from twotower_features.tfrecord.encode import encode_batch
from twotower_features.tfrecord.framing import (
    FramingError,
    count_records,
    frame_records,
    masked_crc32c,
)

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


# ---- count_records: the header walk
def test_count_records_matches_tensorflow_and_the_hand_count(tmp_path):
    records = [b"", b"a", bytes(range(256)) * 70, "ü".encode(), b"a"]  # 5 records, lengths 0, 1, 17920, 2, 1
    path = tmp_path / "x.tfrecord"
    path.write_bytes(frame_records(records))
    # 16 bytes of framing per record: 5 * 16 + (0 + 1 + 17920 + 2 + 1)
    assert path.stat().st_size == 5 * 16 + 17924
    assert count_records(path) == 5 == sum(1 for _ in tf.data.TFRecordDataset(str(path)))
    (tmp_path / "empty.tfrecord").write_bytes(b"")
    assert count_records(tmp_path / "empty.tfrecord") == 0
    # TensorFlow's own writer frames the same way
    assert count_records(str(tmp_path / "x.tfrecord")) == count_records(_tf_file(tmp_path / "tf.tfrecord", records))


def _tf_file(path, records):
    tf_writer_bytes(path, records)
    return path


@pytest.mark.parametrize(
    "cut, where",
    [
        (16 + 3 + 5, "ends 5 byte\\(s\\) into the header of record 2"),  # record 1 is 16 + 3 bytes; 5 header bytes of record 2
        (16 + 3 + 12 + 2, "record 2 \\(offset 19\\) needs 23 bytes, the file ends after 14"),  # mid-data of record 2 (12 + 7 + 4 bytes)
        (16 + 3 + 23 - 1, "record 2 \\(offset 19\\) needs 23 bytes, the file ends after 22"),  # its data crc lacks a byte
    ],
)
def test_count_records_refuses_a_truncated_file(tmp_path, cut, where):
    body = frame_records([b"abc", b"defghij", b"k"])  # 19 + 23 + 17 = 59 bytes
    assert len(body) == 59
    path = tmp_path / "cut.tfrecord"
    path.write_bytes(body[:cut])
    with pytest.raises(FramingError, match=f"'{path}' is truncated: .*{where}") as e:
        count_records(path)
    assert isinstance(e.value, UserError)
    # cut at a record boundary the framing is whole: 2 records (only a size check can tell)
    path.write_bytes(body[:42])
    assert count_records(path) == 2


def test_count_records_refuses_a_corrupt_length(tmp_path):
    body = bytearray(frame_records([b"abc", b"defghij"]))
    body[19] ^= 0x01  # the first byte of record 2's length: 7 -> 6, its checksum no longer matches
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(body))
    with pytest.raises(FramingError, match="length checksum of record 2 \\(offset 19\\) does not match"):
        count_records(path)
    path.write_bytes(b"not a tfrecord file at all")
    with pytest.raises(FramingError, match="record 1 \\(offset 0\\)"):
        count_records(path)
