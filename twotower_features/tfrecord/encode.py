"""``tf.train.Example`` protos serialised by hand from pyarrow batches, without TensorFlow.

``encode_batch(batch, columns)`` serialises one ``tf.train.Example`` per row of a pyarrow
``RecordBatch`` (or ``Table``) in the protobuf wire format::

    Example  {1: Features {1: map<string, Feature> entry {1: key, 2: Feature}}}
    Feature  {1: BytesList {1: repeated bytes} | 2: FloatList {1: packed float32}
              | 3: Int64List {1: packed varint}}

The work is vectorised over the batch with numpy (key prefixes and length varints computed once
per column, each float column converted with one ``astype('<f4')``); the per-row steps are only
slicing and joining each record's two halves (its variable-width and its fixed-width features).
The result is an ``EncodedRecords`` (one buffer plus offsets), iterable as ``bytes``.

Column mapping (a spec ``Column`` -> the Arrow types accepted, each row -> one Feature):

================  ==========  ===============================================================
dtype             shape       Arrow column
================  ==========  ===============================================================
``string``        ``()``      string / large_string / binary / large_binary / fixed_size_binary
                              (and views, dictionaries of them); UTF-8 bytes are written as
                              they are. **null -> empty string** (``b""``).
``string``        ``(d,)``    list / large_list / fixed_size_list / list_view of the above,
                              exactly d values per row; null elements -> empty string.
``float32``       ``()``      float16/32/64, integers, decimals; cast to float32
                              (round to nearest, as protobuf does). null -> error.
``float32``       ``(d,)``    list / large_list / fixed_size_list / list_view of those, exactly
                              d values per row. null list or null element -> error.
``int64``         ``()``      int8..int64, uint8..uint64 (> 2^63-1 -> error), bool (0/1),
                              timestamp (microseconds since the epoch, UTC). null -> error.
``int64``         ``(d,)``    list / large_list / fixed_size_list / list_view of those, exactly
                              d values per row. null list or null element -> error.
================  ==========  ===============================================================

A wrong vector length or a null where none is allowed raises ``TFRecordError`` naming the
column, the row (index within the batch) and what was expected; columns of the batch that are
not in ``columns`` are ignored. The order of the features inside a record is not the spec order
(protobuf maps are unordered; variable-width features come first); parsers do not care.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import UserError
from ..spec import Column

__all__ = ["TFRecordError", "EncodedRecords", "encode_batch", "check_columns_present"]


class TFRecordError(UserError, ValueError):
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
        if t.list_size != d:
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

    def __iter__(self) -> Iterator[bytes]:
        d = self.data
        o = self.offsets.tolist()
        return (d[a:b] for a, b in zip(o[:-1], o[1:]))

    def to_list(self) -> list[bytes]:
        return list(self)


def _column_array(batch: pa.RecordBatch | pa.Table, name: str) -> pa.Array:
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
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


