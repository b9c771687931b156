"""TFRecord framing: serialised records -> the bytes of a TFRecord file.

Per record: the length as a uint64 LE, the masked crc32c of those 8 bytes, the data, the masked
crc32c of the data; mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32). Every
crc32c comes from ``google_crc32c`` (hardware-accelerated where the CPU has it).

``count_records`` walks those headers back (lengths and their checksums, never the data), so a
file's record count is known without TensorFlow and without reading it whole.
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any, Iterable

import google_crc32c
import numpy as np

from ..errors import UserError
from .encode import EncodedRecords

__all__ = ["frame_records", "masked_crc32c", "count_records", "FramingError"]

_HEADER = struct.Struct("<QI")  # length, masked crc32c of the length
_FOOTER = 4  # masked crc32c of the data


class FramingError(UserError, ValueError):
    """A TFRecord file is truncated or its framing is corrupt; the message names the file and offset."""

_MASK_DELTA = np.uint32(0xA282EAD8)


def _mask(crc: np.ndarray) -> np.ndarray:
    """TFRecord's mask of each crc32c (uint32 arithmetic, wrapping)."""
    crc = crc.astype(np.uint32, copy=False)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + _MASK_DELTA


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked crc32c of ``data``."""
    return int(_mask(np.array([google_crc32c.value(bytes(data))], dtype=np.uint32))[0])


def _length_crcs(lengths: np.ndarray) -> np.ndarray:
    """crc32c of each uint64 of ``lengths`` written as 8 little-endian bytes.

    One library call per distinct length: the records of a batch have few distinct lengths, and
    a call per record costs more than the rest of the header work (``bench_tfrecord.py --framing``).
    """
    distinct, index = np.unique(lengths, return_inverse=True)
    crcs = np.fromiter((google_crc32c.value(v.to_bytes(8, "little")) for v in distinct.tolist()), dtype=np.uint32, count=len(distinct))
    return crcs[index]


def frame_records(records: EncodedRecords | Iterable[bytes]) -> bytes:
    """The TFRecord file body for ``records`` (serialised protos, in order); see the module docstring."""
    if isinstance(records, EncodedRecords):
        data, offsets = records.data, records.offsets
    else:
        items = [bytes(r) for r in records]
        data = b"".join(items)
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in items], out=offsets[1:])
    n = len(offsets) - 1
    if n == 0:
        return b""
    lengths = np.diff(offsets).astype(np.uint64)
    o = offsets.tolist()
    slices = [data[a:b] for a, b in zip(o[:-1], o[1:])]
    data_crc = _mask(np.fromiter(map(google_crc32c.value, slices), dtype=np.uint32, count=n))
    # glue[i] = data crc of record i - 1 (4 bytes) + length and length crc of record i (12 bytes)
    glue = np.zeros((n + 1, 16), dtype=np.uint8)
    glue[1:, 0:4] = data_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    glue[:n, 4:12] = lengths.astype("<u8").view(np.uint8).reshape(n, 8)
    glue[:n, 12:16] = _mask(_length_crcs(lengths)).astype("<u4").view(np.uint8).reshape(n, 4)
    g = glue.tobytes()
    pieces: list[Any] = [None] * (2 * n + 1)
    pieces[0] = g[4:16]
    pieces[1::2] = slices
    pieces[2:-1:2] = [g[a : a + 16] for a in range(16, 16 * n, 16)]
    pieces[-1] = g[16 * n : 16 * n + 4]
    return b"".join(pieces)


def count_records(path: str | os.PathLike) -> int:
    """The number of records in the TFRecord file at ``path``, from its framing alone.

    Walks the headers: reads each record's 8-byte length and checks the masked crc32c of it that
    follows, then skips the data and its 4-byte checksum (the data checksums are not verified, so
    the cost is per record, not per byte). Raises ``FramingError`` naming the file and the byte
    offset when the file ends inside a record (a truncated file) or a length checksum does not
    match (a corrupt file, or not a TFRecord file). An empty file holds 0 records.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return 0
    expected: dict[int, int] = {}  # length -> its masked crc32c; records have few distinct lengths
    n = pos = 0
    unpack = _HEADER.unpack_from
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        while pos < size:
            if size - pos < _HEADER.size:
                raise FramingError(
                    f"TFRecord file {str(path)!r} is truncated: it ends {size - pos} byte(s) into the header of record {n + 1} "
                    f"(offset {pos:,} of {size:,} bytes)"
                )
            length, crc = unpack(m, pos)
            want = expected.get(length)
            if want is None:
                want = expected[length] = masked_crc32c(length.to_bytes(8, "little"))
            if crc != want:
                raise FramingError(
                    f"TFRecord file {str(path)!r} is corrupt: the length checksum of record {n + 1} (offset {pos:,}) does not "
                    "match; the file is damaged or not a TFRecord file"
                )
            end = pos + _HEADER.size + length + _FOOTER
            if end > size:
                raise FramingError(
                    f"TFRecord file {str(path)!r} is truncated: record {n + 1} (offset {pos:,}) needs {end - pos:,} bytes, "
                    f"the file ends after {size - pos:,}"
                )
            pos = end
            n += 1
    return n
