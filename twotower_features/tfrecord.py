"""TFRecord files of ``tf.train.Example`` protos, written from Spark without TensorFlow.

Three layers, each usable on its own:

- ``encode_batch(batch, columns)`` serialises one ``tf.train.Example`` per row of a pyarrow
  ``RecordBatch`` (or ``Table``) by hand, in the protobuf wire format::

      Example  {1: Features {1: map<string, Feature> entry {1: key, 2: Feature}}}
      Feature  {1: BytesList {1: repeated bytes} | 2: FloatList {1: packed float32}
                | 3: Int64List {1: packed varint}}

  The work is vectorised over the batch with numpy (key prefixes and length varints computed
  once per column, float payloads converted with one ``astype('<f4')`` per batch); only the
  final join of each record's two halves is a per-row step. The result is an
  ``EncodedRecords`` (one buffer plus offsets), iterable as ``bytes``.
- ``frame_records(records)`` frames serialised records as a TFRecord file body: per record a
  uint64 LE length, the masked crc32c of those 8 bytes, the data, the masked crc32c of the data.
- ``write_tfrecords(df, out_dir, columns, num_shards=...)`` writes a Spark DataFrame as
  ``num_shards`` shard files through ``df.mapInArrow``, published atomically (see there).

Column mapping (a spec ``Column`` -> the Arrow types accepted, each row -> one Feature):

================  ==========  ===============================================================
dtype             shape       Arrow column
================  ==========  ===============================================================
``string``        ``()``      string / large_string / binary (and views, dictionaries of
                              them); UTF-8 bytes are written as they are. **null -> empty
                              string** (``b""``).
``string``        ``(d,)``    list / large_list / fixed_size_list of the above, exactly d
                              values per row; null elements -> empty string.
``float32``       ``()``      float16/32/64, integers, decimals; cast to float32
                              (round to nearest, as protobuf does). null -> error.
``float32``       ``(d,)``    list / large_list / fixed_size_list of those, exactly d values
                              per row. null list or null element -> error.
``int64``         ``()``      int8..int64, uint8..uint64 (> 2^63-1 -> error), bool (0/1),
                              timestamp (microseconds since the epoch, UTC). null -> error.
``int64``         ``(d,)``    list / large_list / fixed_size_list of those, exactly d values.
================  ==========  ===============================================================

A wrong vector length or a null where none is allowed raises ``TFRecordError`` naming the
column, the row (index within the batch) and what was expected; columns of the batch that are
not in ``columns`` are ignored. The order of the features inside a record is not the spec order
(protobuf maps are unordered; variable-width features come first); parsers do not care.

This module never imports TensorFlow: the Spark side must not need it.
"""
from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import google_crc32c

from . import faults
from .spec import Column

__all__ = [
    "TFRecordError",
    "EncodedRecords",
    "encode_batch",
    "frame_records",
    "masked_crc32c",
    "write_tfrecords",
    "shard_name",
    "check_columns_present",
    "SUCCESS_FILE",
]

SUCCESS_FILE = "_SUCCESS"
_crc32c_value = google_crc32c.value


class TFRecordError(ValueError):
    """A column cannot be encoded as its feature spec says; the message names it."""


# ---------------------------------------------------------------------------------------------
# protobuf wire format helpers
# ---------------------------------------------------------------------------------------------
# Field tags (field number << 3 | wire type 2 = length-delimited): every field we write is
# length-delimited; packed float/int64 lists too.
_TAG1 = 0x0A  # field 1: Example.features, Features.feature (map entry), entry key, *List.value
_TAG2 = 0x12  # field 2: map entry value (Feature), Feature.float_list
_TAG3 = 0x1A  # field 3: Feature.int64_list
_LIST_TAG = {"string": _TAG1, "float32": _TAG2, "int64": _TAG3}  # Feature's oneof field

_VARINT_THRESHOLDS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)


def _varint_bytes(value: int) -> bytes:
    """The varint encoding of a non-negative Python int."""
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _varint_len(values: np.ndarray) -> np.ndarray:
    """Encoded length in bytes (1..10) of each uint64 in ``values``, as int64."""
    n = np.ones(values.shape, dtype=np.int64)
    for t in _VARINT_THRESHOLDS:
        m = values >= t
        if not m.any():
            break
        n += m
    return n


def _put_varints(out: np.ndarray, pos: np.ndarray, values: np.ndarray, lengths: np.ndarray) -> None:
    """Write varint ``values`` (uint64) with known ``lengths`` at byte positions ``pos`` of ``out``."""
    maxlen = int(lengths.max()) if len(lengths) else 0
    for k in range(maxlen):
        sel = lengths > k
        if sel.all():
            v, p, more = values, pos, lengths > k + 1
        else:
            v, p, more = values[sel], pos[sel], lengths[sel] > k + 1
        byte = ((v >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        byte |= more.astype(np.uint8) << 7
        out[p + k] = byte


# ---------------------------------------------------------------------------------------------
# segments: per-row byte strings assembled column by column
# ---------------------------------------------------------------------------------------------
@dataclass
class _Const:
    """The same bytes in every row."""

    data: bytes

    def lengths(self, n: int) -> int:
        return len(self.data)


@dataclass
class _Varint:
    """One varint per row (uint64 values; negative int64 already reinterpreted)."""

    values: np.ndarray
    lens: np.ndarray

    def lengths(self, n: int) -> np.ndarray:
        return self.lens


@dataclass
class _Bytes:
    """A variable-length byte string per row: ``data[offsets[i]:offsets[i+1]]``."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, n + 1

    def lengths(self, n: int) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass
class _Fixed:
    """``width`` bytes per row, one row of a 2-D uint8 array."""

    rows: np.ndarray  # uint8 (n, width)

    def lengths(self, n: int) -> int:
        return self.rows.shape[1]


def _varint_seg(values: np.ndarray | int) -> _Const | _Varint:
    if isinstance(values, (int, np.integer)):
        return _Const(_varint_bytes(int(values)))
    v = values.astype(np.uint64, copy=False)
    return _Varint(v, _varint_len(v))


def _merge_consts(segs: list) -> list:
    out: list = []
    for s in segs:
        if isinstance(s, _Const) and out and isinstance(out[-1], _Const):
            out[-1] = _Const(out[-1].data + s.data)
        elif not (isinstance(s, _Const) and not s.data):
            out.append(s)
    return out


def _seg_len_total(n: int, segs: list) -> np.ndarray | int:
    total: np.ndarray | int = 0
    for s in segs:
        total = total + s.lengths(n)
    return total


def _assemble(n: int, segs: list) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the segments row by row: (buffer uint8, offsets int64 of length n + 1)."""
    segs = _merge_consts(segs)
    row_len = np.broadcast_to(np.asarray(_seg_len_total(n, segs), dtype=np.int64), (n,))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(row_len, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint8)
    pos = offsets[:-1].copy()
    for s in segs:
        if isinstance(s, _Const):
            m = len(s.data)
            if m == 1:
                out[pos] = s.data[0]
            else:
                out[pos[:, None] + np.arange(m)] = np.frombuffer(s.data, dtype=np.uint8)
        elif isinstance(s, _Varint):
            _put_varints(out, pos, s.values, s.lens)
        elif isinstance(s, _Bytes):
            lens = np.diff(s.offsets)
            start, stop = int(s.offsets[0]), int(s.offsets[-1])
            if stop > start:
                dest = np.repeat(pos - s.offsets[:-1], lens) + np.arange(start, stop)
                out[dest] = s.data[start:stop]
        else:  # _Fixed
            w = s.rows.shape[1]
            if w:
                out[pos[:, None] + np.arange(w)] = s.rows
        pos += s.lengths(n)
    return out, offsets


def _assemble_fixed(n: int, segs: list) -> np.ndarray:
    """Concatenate constant-width segments row by row into an (n, width) uint8 array."""
    segs = _merge_consts(segs)
    width = int(_seg_len_total(n, segs))
    out = np.empty((n, width), dtype=np.uint8)
    a = 0
    for s in segs:
        w = s.lengths(n)
        if isinstance(s, _Const):
            out[:, a : a + w] = np.frombuffer(s.data, dtype=np.uint8)
        else:
            out[:, a : a + w] = s.rows
        a += w
    return out


# ---------------------------------------------------------------------------------------------
# Arrow columns -> list payloads
# ---------------------------------------------------------------------------------------------
def _type_error(col: Column, typ: pa.DataType, expected: str) -> TFRecordError:
    return TFRecordError(f"column {col.name!r} (feature spec dtype {col.dtype}, shape {list(col.shape)}) must be {expected}; got Arrow type {typ}")


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _is_stringish(t: pa.DataType) -> bool:
    return (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_string_view(t)
        or pa.types.is_binary_view(t)
    )


def _unwrap_dictionary(arr: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(arr.type):
        return arr.dictionary_decode()
    return arr


def _split_vector(col: Column, arr: pa.Array) -> tuple[pa.Array, int]:
    """For a shape (d,) column: the flattened values, checked to hold exactly d per row."""
    t = arr.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        raise _type_error(col, t, f"a list of {col.shape[0]} values per row")
    d = col.shape[0]
    if arr.null_count:
        row = _first_true(arr.is_null().to_numpy(zero_copy_only=False))
        raise TFRecordError(f"column {col.name!r}: row {row} of the batch is null; expected a list of {d} values (feature spec shape [{d}])")
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        arr = arr.cast(pa.large_list(t.value_type))
    if pa.types.is_fixed_size_list(t):
        lens_ok = t.list_size == d
        if not lens_ok:
            raise TFRecordError(f"column {col.name!r}: every row has {t.list_size} values, expected {d} (feature spec shape [{d}])")
    else:
        lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = lens != d
        if bad.any():
            row = _first_true(bad)
            raise TFRecordError(f"column {col.name!r}: row {row} of the batch has {int(lens[row])} values, expected {d} (feature spec shape [{d}])")
    return arr.flatten(), d


def _null_element_error(col: Column, values: pa.Array, d: int) -> TFRecordError:
    item = _first_true(values.is_null().to_numpy(zero_copy_only=False))
    row = item // d if d else 0
    return TFRecordError(f"column {col.name!r}: row {row} of the batch has a null at position {item - row * d}; expected {col.dtype} values only")


def _non_null_values(col: Column, arr: pa.Array, type_ok, expected_type: str, expected_value: str) -> pa.Array:
    """The flat values of a scalar or vector column, after checking their type and that none is null."""
    arr = _unwrap_dictionary(arr)
    if col.shape:
        values, d = _split_vector(col, arr)
    else:
        values, d = arr, 1
    if not type_ok(values.type):
        raise _type_error(col, arr.type, expected_type)
    if values.null_count:
        if col.shape:
            raise _null_element_error(col, values, d)
        row = _first_true(values.is_null().to_numpy(zero_copy_only=False))
        raise TFRecordError(f"column {col.name!r}: row {row} of the batch is null; expected {expected_value}")
    return values


def _float_values(col: Column, arr: pa.Array) -> np.ndarray:
    """float32 column -> (n * d,) little-endian float32 values."""
    values = _non_null_values(
        col, arr, lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t),
        "float/double (or integer/decimal)" + (" list elements" if col.shape else ""), "a float32 value",
    )
    t = values.type
    if pa.types.is_decimal(t):
        values = values.cast(pa.float64())
    return values.to_numpy(zero_copy_only=False).astype("<f4", copy=False)


def _int_values(col: Column, arr: pa.Array) -> np.ndarray:
    """int64 column -> (n * d,) int64 values (timestamps in microseconds since the epoch)."""
    values = _non_null_values(
        col, arr, lambda t: pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_timestamp(t),
        "an integer, boolean or timestamp" + (" list" if col.shape else ""), "an int64 value",
    )
    t = values.type
    if pa.types.is_timestamp(t):
        raw = values.cast(pa.int64()).to_numpy(zero_copy_only=False)
        unit = t.unit
        if unit == "s":
            return raw * 1_000_000
        if unit == "ms":
            return raw * 1_000
        if unit == "ns":
            return raw // 1_000
        return raw
    try:
        return values.cast(pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid as e:
        raise TFRecordError(f"column {col.name!r}: a value does not fit in int64 ({e})") from None


def _string_values(col: Column, arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """string column -> (data uint8, offsets int64 of n * d + 1); nulls are empty strings."""
    arr = _unwrap_dictionary(arr)
    if col.shape:
        values, _ = _split_vector(col, arr)
    else:
        values = arr
    t = values.type
    if not _is_stringish(t):
        raise _type_error(col, arr.type, "a string or binary" + (" list" if col.shape else ""))
    if not (pa.types.is_large_binary(t)):
        values = values.cast(pa.large_binary())
    if values.null_count:
        values = values.fill_null(b"")
    _, off_buf, data_buf = values.buffers()
    m = len(values)
    offsets = np.frombuffer(off_buf, dtype=np.int64, count=values.offset + m + 1)[values.offset :]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return data, offsets


# ---------------------------------------------------------------------------------------------
# Feature entries
# ---------------------------------------------------------------------------------------------
def _entry(col: Column, list_segs: list, list_len: np.ndarray | int) -> tuple[list, np.ndarray | int]:
    """Segments of one ``Features.feature`` map entry field for every row, and its byte length.

    Field = 0x0A varint(E) entry; entry = 0x0A varint(len key) key 0x12 varint(F) Feature;
    Feature = tag varint(L) <list>.
    """
    key = col.name.encode("utf-8")
    feat_len = 1 + _len_of_varint(list_len) + list_len
    key_part = bytes([_TAG1]) + _varint_bytes(len(key)) + key + bytes([_TAG2])
    entry_len = len(key_part) + _len_of_varint(feat_len) + feat_len
    segs = [
        _Const(bytes([_TAG1])),
        _varint_seg(entry_len),
        _Const(key_part),
        _varint_seg(feat_len),
        _Const(bytes([_LIST_TAG[col.dtype]])),
        _varint_seg(list_len),
        *list_segs,
    ]
    return segs, 1 + _len_of_varint(entry_len) + entry_len


def _len_of_varint(v: np.ndarray | int) -> np.ndarray | int:
    if isinstance(v, (int, np.integer)):
        return len(_varint_bytes(int(v)))
    return _varint_len(v.astype(np.uint64, copy=False))


def _column_entry(col: Column, arr: pa.Array, n: int) -> tuple[list, np.ndarray | int, bool]:
    """(segments, entry field length, fixed width?) of one spec column over the batch."""
    d = col.length
    if col.dtype == "float32":
        payload = _float_values(col, arr).view(np.uint8).reshape(n, 4 * d)
        list_segs = [_Const(bytes([_TAG1]) + _varint_bytes(4 * d)), _Fixed(payload)]
        segs, length = _entry(col, list_segs, 1 + len(_varint_bytes(4 * d)) + 4 * d)
        return segs, length, True
    if col.dtype == "int64":
        values = _int_values(col, arr).view(np.uint64)  # two's complement for negatives
        if d == 1:
            vseg = _varint_seg(values)
            payload_len = vseg.lens
            payload = [vseg]
        else:
            stream, item_off = _assemble(n * d, [_varint_seg(values)])
            row_off = item_off[::d]
            payload_len = np.diff(row_off)
            payload = [_Bytes(stream, row_off)]
        list_segs = [_Const(bytes([_TAG1])), _varint_seg(payload_len), *payload]
        segs, length = _entry(col, list_segs, 1 + _varint_len(payload_len.astype(np.uint64)) + payload_len)
        return segs, length, False
    # string: BytesList = d times (0x0A varint(len) bytes)
    data, offsets = _string_values(col, arr)
    if d == 1:
        slen = np.diff(offsets)
        list_segs = [_Const(bytes([_TAG1])), _varint_seg(slen), _Bytes(data, offsets)]
        list_len = 1 + _varint_len(slen.astype(np.uint64)) + slen
    else:
        slen = np.diff(offsets)
        stream, item_off = _assemble(n * d, [_Const(bytes([_TAG1])), _varint_seg(slen), _Bytes(data, offsets)])
        row_off = item_off[::d]
        list_segs = [_Bytes(stream, row_off)]
        list_len = np.diff(row_off)
    segs, length = _entry(col, list_segs, list_len)
    return segs, length, False


@dataclass(frozen=True)
class EncodedRecords:
    """Serialised ``tf.train.Example`` records: record i is ``data[offsets[i]:offsets[i + 1]]``."""

    data: bytes
    offsets: np.ndarray  # int64, len(records) + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record index {i} out of range for {len(self)} records")
        i %= len(self)
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[bytes]:
        d = self.data
        o = self.offsets.tolist()
        return (d[a:b] for a, b in zip(o[:-1], o[1:]))

    def to_list(self) -> list[bytes]:
        return list(self)

    @property
    def nbytes(self) -> int:
        return len(self.data)


def _column_array(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        if isinstance(col, pa.ChunkedArray):  # pyarrow < 15 returned a ChunkedArray
            col = pa.concat_arrays(col.chunks) if col.num_chunks else pa.array([], type=col.type)
    return col


def check_columns_present(names: Iterable[str], columns: Sequence[Column], what: str = "the batch") -> None:
    """Raise ``TFRecordError`` naming every spec column missing from ``names``."""
    have = set(names)
    missing = [c.name for c in columns if c.name not in have]
    if missing:
        raise TFRecordError(f"column(s) {missing} of the feature spec are missing from {what}; it has {sorted(have)}")


def encode_batch(batch: pa.RecordBatch | pa.Table, columns: Sequence[Column]) -> EncodedRecords:
    """Serialise each row of ``batch`` as a ``tf.train.Example`` holding ``columns``.

    See the module docstring for the accepted Arrow types, nulls and errors.
    """
    if not isinstance(batch, (pa.RecordBatch, pa.Table)):
        raise TypeError(f"batch must be a pyarrow RecordBatch or Table, got {type(batch).__name__}")
    columns = list(columns)
    if not columns:
        raise TFRecordError("columns must name at least one feature spec column")
    names = [c.name for c in columns]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise TFRecordError(f"column(s) {dup} are listed more than once")
    check_columns_present(batch.schema.names, columns)
    n = batch.num_rows

    head: list = []
    head_len: np.ndarray | int = 0
    tail: list = []
    tail_len = 0
    for col in columns:
        segs, length, fixed = _column_entry(col, _column_array(batch, col.name), n)
        if fixed:
            tail += segs
            tail_len += int(length)
        else:
            head += segs
            head_len = head_len + length
    total = head_len + tail_len  # bytes inside Example.features
    head = [_Const(bytes([_TAG1])), _varint_seg(total if isinstance(total, np.ndarray) else int(total)), *head]
    if n == 0:
        return EncodedRecords(b"", np.zeros(1, dtype=np.int64))
    head_buf, head_off = _assemble(n, head)
    if tail_len == 0:
        return EncodedRecords(head_buf.tobytes(), head_off)
    tail_buf = _assemble_fixed(n, tail).tobytes()
    hb = head_buf.tobytes()
    ho = head_off.tolist()
    pieces: list[Any] = [None] * (2 * n)
    pieces[0::2] = [hb[a:b] for a, b in zip(ho[:-1], ho[1:])]
    pieces[1::2] = [tail_buf[a : a + tail_len] for a in range(0, n * tail_len, tail_len)]
    offsets = head_off + np.arange(n + 1, dtype=np.int64) * tail_len
    return EncodedRecords(b"".join(pieces), offsets)


# ---------------------------------------------------------------------------------------------
# TFRecord framing
# ---------------------------------------------------------------------------------------------
def _crc32c_table() -> np.ndarray:
    poly = 0x82F63B78
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table[i] = c
    return table


_CRC_TABLE = _crc32c_table()
_MASK_DELTA = np.uint32(0xA282EAD8)


def _mask(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint32, copy=False)
    return ((crc >> np.uint32(15)) | (crc << np.uint32(17))) + _MASK_DELTA


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked crc32c of ``data``."""
    crc = _crc32c_value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _crc32c_of_u64le(values: np.ndarray) -> np.ndarray:
    """crc32c of each uint64 written as 8 little-endian bytes, vectorised (table-driven)."""
    crc = np.full(values.shape, 0xFFFFFFFF, dtype=np.uint32)
    for k in range(8):
        b = ((values >> np.uint64(8 * k)) & np.uint64(0xFF)).astype(np.uint32)
        crc = _CRC_TABLE[(crc ^ b) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return crc ^ np.uint32(0xFFFFFFFF)


def frame_records(records: EncodedRecords | Iterable[bytes]) -> bytes:
    """The TFRecord file body for ``records`` (serialised protos, in order).

    Per record: uint64 LE length, uint32 LE masked crc32c of the length bytes, the data,
    uint32 LE masked crc32c of the data; mask(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8.
    """
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
    data_crc = _mask(np.fromiter(map(_crc32c_value, slices), dtype=np.uint32, count=n))
    # glue[i] = data crc of record i - 1 (4 bytes) + length and length crc of record i (12 bytes)
    glue = np.zeros((n + 1, 16), dtype=np.uint8)
    glue[1:, 0:4] = data_crc.astype("<u4").view(np.uint8).reshape(n, 4)
    glue[:n, 4:12] = lengths.astype("<u8").view(np.uint8).reshape(n, 8)
    glue[:n, 12:16] = _mask(_crc32c_of_u64le(lengths)).astype("<u4").view(np.uint8).reshape(n, 4)
    g = glue.tobytes()
    pieces: list[Any] = [None] * (2 * n + 1)
    pieces[0] = g[4:16]
    pieces[1::2] = slices
    pieces[2:-1:2] = [g[a : a + 16] for a in range(16, 16 * n, 16)]
    pieces[-1] = g[16 * n : 16 * n + 4]
    return b"".join(pieces)


# ---------------------------------------------------------------------------------------------
# Spark writer
# ---------------------------------------------------------------------------------------------
def shard_name(partition: int, num_shards: int, prefix: str = "part") -> str:
    return f"{prefix}-{partition:05d}-of-{num_shards:05d}.tfrecord"


def _resolve(uri: str):
    """(pyarrow FileSystem, path inside it, URI to hand to executors) for a path or URI."""
    from pyarrow import fs as pafs

    if "://" not in uri:
        uri = os.path.abspath(uri)
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path.rstrip("/") or "/", uri.rstrip("/")


def _join_uri(uri: str, *parts: str) -> str:
    return posixpath.join(uri, *parts)


def _spark_type_ok(col: Column, dt) -> bool:
    from pyspark.sql import types as T

    if col.shape:
        if not isinstance(dt, T.ArrayType):
            return False
        dt = dt.elementType
    if col.dtype == "string":
        return isinstance(dt, (T.StringType, T.BinaryType))
    if col.dtype == "float32":
        return isinstance(dt, (T.FloatType, T.DoubleType, T.DecimalType, T.ByteType, T.ShortType, T.IntegerType, T.LongType))
    return isinstance(dt, (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.BooleanType, T.TimestampType, T.TimestampNTZType))


_RESULT_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("attempt", pa.int64()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
    ]
)
_RESULT_DDL = "partition int, attempt long, path string, rows long, bytes long"


def _shard_writer(staging_uri: str, columns: list[Column]):
    """The mapInArrow function: encode the task's batches and stream them to one staging file."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyarrow import fs as pafs
        from pyspark import TaskContext

        ctx = TaskContext.get()
        partition, attempt = ctx.partitionId(), ctx.taskAttemptId()
        filesystem, staging = pafs.FileSystem.from_uri(staging_uri)
        path = f"{staging.rstrip('/')}/part-{partition}-attempt-{attempt}.tfrecord"
        rows = nbytes = 0
        try:
            with filesystem.open_output_stream(path) as out:
                for batch in batches:
                    if batch.num_rows == 0:
                        continue
                    body = frame_records(encode_batch(batch, columns))
                    out.write(body)
                    rows += batch.num_rows
                    nbytes += len(body)
        except BaseException:
            try:
                filesystem.delete_file(path)
            except OSError:
                pass
            raise
        yield pa.RecordBatch.from_pylist(
            [{"partition": partition, "attempt": attempt, "path": _join_uri(staging_uri, posixpath.basename(path)), "rows": rows, "bytes": nbytes}],
            schema=_RESULT_SCHEMA,
        )

    return write


def _siblings(filesystem, path: str, marker: str) -> list[str]:
    from pyarrow import fs as pafs

    parent, base = posixpath.split(path)
    infos = filesystem.get_file_info(pafs.FileSelector(parent or "/", allow_not_found=True))
    return sorted(i.path for i in infos if posixpath.basename(i.path).startswith(f"{base}{marker}") and i.type == pafs.FileType.Directory)


def _exists(filesystem, path: str) -> bool:
    from pyarrow import fs as pafs

    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def _recover_and_clean(filesystem, path: str) -> None:
    """Undo what a killed run left: restore a previous output moved aside, drop tmp folders."""
    olds = _siblings(filesystem, path, ".old-")
    if not _exists(filesystem, path):
        # killed between "move old away" and "move new in": the old output is still whole
        complete = [o for o in olds if _exists(filesystem, posixpath.join(o, SUCCESS_FILE))]
        if complete:
            filesystem.move(complete[-1], path)
            olds.remove(complete[-1])
    for p in olds + _siblings(filesystem, path, ".tmp-"):
        filesystem.delete_dir(p)


def write_tfrecords(
    df,
    out_dir: str,
    columns: Sequence[Column],
    *,
    num_shards: int,
    prefix: str = "part",
    partition_by: Sequence[str] | None = None,
    sort_by: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Write ``df`` as ``num_shards`` TFRecord files of ``tf.train.Example`` into ``out_dir``.

    ``out_dir`` is a local path or a URI that ``pyarrow.fs`` understands (``hdfs://``,
    ``s3://``, ...); on a cluster it must be storage that every executor and the driver see.
    ``df`` must hold every column of ``columns`` (extra columns are dropped first). Rows are
    spread over the shards round-robin, or with ``partition_by`` by a hash of those columns (all
    rows of a key in one shard, e.g. a user's impressions). With ``sort_by`` (columns that are a
    unique key) rows go to shards by a hash of the key and are sorted by it within each shard, so
    the files are the same, byte for byte, on every run. Each Spark task encodes its Arrow
    batches and streams them into a staging file; the driver then names the shards
    ``<prefix>-00000-of-00004.tfrecord`` (empty shards are written too, so the count is stable),
    writes ``_SUCCESS`` (JSON: rows, shards, bytes, rows per shard) and publishes.

    Publication is atomic for readers: everything is written into a fresh sibling folder
    ``<out_dir>.tmp-<uuid>``, then the previous output is renamed to ``<out_dir>.old-<uuid>``,
    the new folder renamed to ``out_dir`` and the old one deleted. A failed run deletes its tmp
    folder and leaves the previous output as it was; a run killed outright leaves siblings that
    the next run cleans (restoring the previous output if it was killed between the two
    renames). Between the two renames ``out_dir`` is briefly absent, never partial. One writer
    per ``out_dir`` at a time. The swap renames folders, which local disks and HDFS do; on an
    object store without folder rename (S3 may be one; not tested) the swap step fails, the tmp
    folder is removed and the previous output stays.

    Staging files are named ``part-<partition>-attempt-<task attempt id>.tfrecord`` (Spark's
    app-wide unique task attempt id, so retried or speculative attempts never share a file); the
    driver publishes the one attempt per partition that Spark reports as successful.

    Returns ``{"rows", "shards", "bytes", "paths"}`` (paths of the published shards, in order).
    """
    if not isinstance(num_shards, int) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")
    if not isinstance(prefix, str) or not prefix or "/" in prefix:
        raise ValueError(f"prefix must be a non-empty file name prefix without '/', got {prefix!r}")
    columns = list(columns)
    if not columns:
        raise TFRecordError("columns must name at least one feature spec column")
    check_columns_present(df.columns, columns, what="the DataFrame")
    schema = {f.name: f.dataType for f in df.schema.fields}
    for col in columns:
        if not _spark_type_ok(col, schema[col.name]):
            raise TFRecordError(
                f"column {col.name!r} has Spark type {schema[col.name].simpleString()}, which cannot be written as "
                f"feature spec dtype {col.dtype} shape {list(col.shape)}"
            )
    part_cols = list(partition_by or [])
    missing = [c for c in part_cols if c not in df.columns]
    if missing:
        raise ValueError(f"partition_by column(s) {missing} are not in the DataFrame")

    filesystem, path, uri = _resolve(out_dir)
    _recover_and_clean(filesystem, path)
    run = uuid.uuid4().hex
    tmp_path, tmp_uri = f"{path}.tmp-{run}", f"{uri}.tmp-{run}"
    staging_path = posixpath.join(tmp_path, f"_staging-{run}")
    staging_uri = _join_uri(tmp_uri, f"_staging-{run}")
    old_path = f"{path}.old-{run}"
    filesystem.create_dir(staging_path, recursive=True)
    try:
        from pyspark.sql import functions as F

        def quoted(name: str):
            return F.col("`" + name.replace("`", "``") + "`")

        names = [c.name for c in columns]
        keep = names + [c for c in dict.fromkeys([*part_cols, *(sort_by or ())]) if c not in names]
        selected = df.select(*map(quoted, keep))
        if part_cols or sort_by:
            # hash partitioning is a function of the row, so every run puts a row in the same shard
            selected = selected.repartition(num_shards, *map(quoted, part_cols or sort_by))
        else:
            selected = selected.repartition(num_shards)
        if sort_by:
            selected = selected.sortWithinPartitions(*map(quoted, sort_by))
        selected = selected.select(*map(quoted, names))
        results = selected.mapInArrow(_shard_writer(staging_uri, columns), _RESULT_DDL).collect()

        by_partition: dict[int, Any] = {}
        for r in results:
            by_partition.setdefault(int(r["partition"]), r)
        shard_rows: list[int] = []
        paths: list[str] = []
        total_bytes = 0
        for p in range(num_shards):
            name = shard_name(p, num_shards, prefix)
            dest = posixpath.join(tmp_path, name)
            r = by_partition.get(p)
            if r is None:  # Spark ran no task for an empty partition: the shard is empty
                with filesystem.open_output_stream(dest):
                    pass
                shard_rows.append(0)
            else:
                _, src = _resolve_path(r["path"])
                filesystem.move(src, dest)
                shard_rows.append(int(r["rows"]))
                total_bytes += int(r["bytes"])
            paths.append(_join_uri(uri, name))
        rows = sum(shard_rows)
        filesystem.delete_dir(staging_path)
        with filesystem.open_output_stream(posixpath.join(tmp_path, SUCCESS_FILE)) as f:
            f.write(json.dumps({"rows": rows, "shards": num_shards, "bytes": total_bytes, "shard_rows": shard_rows}).encode())

        faults.driver_checkpoint("kill_driver_before_tfrecord_commit", posixpath.basename(path))  # tests only
        had_old = _exists(filesystem, path)
        if had_old:
            filesystem.move(path, old_path)
        filesystem.move(tmp_path, path)
    except BaseException:
        try:
            if _exists(filesystem, tmp_path):
                filesystem.delete_dir(tmp_path)
            if _exists(filesystem, old_path) and not _exists(filesystem, path):
                filesystem.move(old_path, path)  # the swap failed half-way: put the previous output back
        except OSError:
            pass
        raise
    if had_old:
        try:
            filesystem.delete_dir(old_path)
        except OSError:
            pass  # published already; the next run deletes the leftover
    return {"rows": rows, "shards": num_shards, "bytes": total_bytes, "paths": paths}


def _resolve_path(uri: str):
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(uri)
