"""``feature_spec.json``: the one contract between the Spark side and the TensorFlow side.

Pure Python (no Spark, no TensorFlow): the feature jobs write it next to the TFRecords, the
trainer builds both towers from it and from nothing else.

Every TFRecord column appears once in ``columns``:

- ``dtype``: ``string`` (bytes_list), ``float32`` (float_list) or ``int64`` (int64_list);
- ``shape``: ``[]`` for a scalar, ``[d]`` for a fixed-length vector;
- ``tower``: ``user``, ``item`` or ``null`` (label, weight, keys kept for evaluation);
- ``kind``: ``id`` / ``categorical`` (strings looked up in ``vocabulary_file``, one id per
  line, most frequent first; index 0 is the out-of-vocabulary bucket), ``dense`` (float
  vector or scalar), ``count`` (int64 scalar such as a history length), ``label``,
  ``weight`` or ``key``.

Paths inside the spec are relative to the folder that holds it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .io import write_json_atomic
from .layout import FEATURE_SPEC

SPEC_VERSION = 1


class SpecError(UserError, FileNotFoundError):
    """No feature spec, or one this version cannot read; the message names the file."""


DTYPES = ("string", "float32", "int64")
KINDS = ("id", "categorical", "dense", "count", "label", "weight", "key")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    shape: tuple[int, ...] = ()
    tower: str | None = None
    kind: str = "dense"
    vocabulary_file: str | None = None
    vocabulary_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise ValueError(f"feature spec column {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.kind not in KINDS:
            raise ValueError(f"feature spec column {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.tower not in (None, "user", "item"):
            raise ValueError(f"feature spec column {self.name!r}: tower must be 'user', 'item' or null, got {self.tower!r}")
        if self.kind in ("id", "categorical") and (self.dtype != "string" or self.vocabulary_file is None):
            raise ValueError(f"feature spec column {self.name!r}: an {self.kind} column needs dtype 'string' and a vocabulary_file")
        if len(self.shape) > 1:
            raise ValueError(f"feature spec column {self.name!r}: shape must be [] or [d], got {list(self.shape)}")

    @property
    def length(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True)
class FeatureSpec:
    columns: tuple[Column, ...]
    label: str = "label"
    weight: str = "weight"
    keys: tuple[str, ...] = ("user_id", "item_id")
    # extra facts the trainer may use: item_frequency_file (logQ), catalog glob, counts
    extras: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "keys", tuple(self.keys))
        names = [c.name for c in self.columns]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"feature spec lists column(s) {sorted(dup)} more than once")
        for n in (self.label, self.weight, *self.keys):
            if n not in names:
                raise ValueError(f"feature spec names {n!r} as label/weight/key but has no such column")

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"feature spec has no column {name!r}; it has {[c.name for c in self.columns]}")

    def tower_columns(self, tower: str) -> list[Column]:
        return [c for c in self.columns if c.tower == tower]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["columns"] = [{**asdict(c), "shape": list(c.shape)} for c in self.columns]
        d["keys"] = list(self.keys)
        return d

    def save(self, directory: str | Path) -> Path:
        return write_json_atomic(Path(directory) / FEATURE_SPEC, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeatureSpec":
        if d.get("version") != SPEC_VERSION:
            raise ValueError(f"feature spec version {d.get('version')!r} is not supported (expected {SPEC_VERSION})")
        cols = tuple(Column(**c) for c in d["columns"])
        return cls(columns=cols, label=d["label"], weight=d["weight"], keys=tuple(d["keys"]), extras=d.get("extras", {}), version=d["version"])

    @classmethod
    def load(cls, directory_or_file: str | Path) -> "FeatureSpec":
        p = Path(directory_or_file)
        if p.is_dir():
            p = p / FEATURE_SPEC
        if not p.is_file():
            raise SpecError(f"no feature spec at {str(p)!r}: run `twotower features` first")
        try:
            return cls.from_dict(json.loads(p.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            raise SpecError(f"{p} is not a feature spec this version reads ({type(e).__name__}: {e}): rerun `twotower tfrecords`") from None


def read_vocabulary(spec_dir: str | Path, column: Column) -> list[str]:
    """The vocabulary of an id/categorical column, in file order (index i+1; 0 is OOV)."""
    if column.vocabulary_file is None:
        raise ValueError(f"column {column.name!r} has no vocabulary")
    return Path(spec_dir, column.vocabulary_file).read_text().splitlines()
