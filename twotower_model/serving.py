"""What a retrieval service loads from a trained model (``twotower export``; the files:
``layout.py``, export folder).

- ``export_identity``: what identifies a model folder for serving: the provenance of its
  training features (config hash, data hash, feature-spec version and sha256), the sha256 of its
  resolved model config and of its ``item_embeddings.parquet``, its retrieval prior;
- ``write_export``: into an export folder, the index over the model's item embeddings
  (``index.py``: exact up to ``exact_limit`` items, HNSW above), the item ids in index order, the
  user embeddings as Parquet (the orchestration turns them into the Delta table,
  ``twotower/export.py``) and ``export.json``;
- ``load_export``: the index and its item ids back, refused (``ExportMismatchError``) unless the
  export was made from the given model folder and its index file is the one it wrote.

User embeddings: one row per user with a validation example, the user tower's retrieval query
(``export.ExportedTowers.embed(side="query")``) from the features of the user's *last*
validation example (latest ``event_ts``, then largest ``item_id``, then record order): the
latest point-in-time state the features hold, the history of every event before that
impression. ``as_of`` is that example's ``event_ts``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from twotower_features import columns as C
from twotower_features.errors import MissingFileError, UserError
from twotower_features.io import file_sha256, write_json_atomic
from twotower_features.spec import FeatureSpec

from . import index as I
from .items import read_item_embeddings, vector_column
from .layout import (
    CONFIG_FILE,
    EMBEDDING,
    EXPORT_MANIFEST,
    INDEX_FILE,
    INDEX_ITEMS_FILE,
    ITEM_EMBEDDINGS_FILE,
)
from .prior import model_prior
from .provenance import COMPARED, check_model, check_split_files, read_model_provenance

EXPORT_VERSION = 1
AS_OF = "as_of"
EXPORT_ID = "export_id"
# the identity facts copied onto every row of the user table (besides export_id)
ROW_IDENTITY = ("config_hash", "feature_spec_version")


class ExportMismatchError(UserError):
    """An export folder was not made from the model folder it is loaded with."""


def export_identity(model_dir: str | Path) -> dict[str, Any]:
    """The facts an export must share with the model folder it serves."""
    model_dir = Path(model_dir)
    for name in (CONFIG_FILE, ITEM_EMBEDDINGS_FILE):
        if not (model_dir / name).is_file():
            raise MissingFileError(f"no {name} in {str(model_dir)!r}: run `twotower train` first")
    features = read_model_provenance(model_dir)
    identity = {k: features.get(k) for k in COMPARED}
    identity["model_config_sha256"] = file_sha256(model_dir / CONFIG_FILE)
    identity["item_embeddings_sha256"] = file_sha256(model_dir / ITEM_EMBEDDINGS_FILE)
    identity["retrieval_prior"] = model_prior(model_dir).as_dict()
    identity[EXPORT_ID] = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return identity


def _user_rows(features_dir: Path, spec: FeatureSpec) -> pd.DataFrame:
    """``user_id``, ``row`` (validation record order) and ``as_of`` of each user's last example."""
    from .data import read_split
    from .evaluate import choose_user_rows

    cols = read_split(features_dir, "validation", spec, [C.USER_ID, C.EVENT_TS, C.ITEM_ID])
    frame = pd.DataFrame({c: v.numpy() for c, v in cols.items()})
    for c in (C.USER_ID, C.ITEM_ID):
        frame[c] = frame[c].str.decode("utf-8")
    chosen = choose_user_rows(frame, last=True)
    chosen[AS_OF] = frame[C.EVENT_TS].to_numpy()[chosen["row"].to_numpy()]
    return chosen


def user_table(users: np.ndarray, vectors: np.ndarray, as_of: np.ndarray, identity: dict[str, Any], validation_date: str | None) -> pa.Table:
    """The user embeddings as Arrow: ``user_id``, ``embedding`` (list<float>), ``as_of``
    (timestamp, UTC; ``as_of`` holds the records' ``event_ts``, microseconds since the epoch), ``validation_date`` (string), and ``export_id``, ``config_hash``,
    ``feature_spec_version`` on every row."""
    n = vectors.shape[0]
    cols: dict[str, Any] = {
        C.USER_ID: pa.array(np.asarray(users, dtype=object).tolist(), pa.string()),
        EMBEDDING: vector_column(vectors),
        AS_OF: pa.array(np.asarray(as_of, dtype=np.int64), pa.timestamp("us", tz="UTC")),  # event_ts: µs since the epoch
        "validation_date": pa.array([validation_date] * n, pa.string()),
        EXPORT_ID: pa.array([identity[EXPORT_ID]] * n, pa.string()),
    }
    for k in ROW_IDENTITY:
        cols[k] = pa.array([None if identity.get(k) is None else str(identity[k])] * n, pa.string())
    return pa.table(cols)


def write_export(
    model_dir: str | Path,
    features_dir: str | Path,
    out_dir: str | Path,
    *,
    kind: str = "auto",
    exact_limit: int = I.EXACT_LIMIT,
    users_file: str | Path | None = None,
    seed: int = 0,
    identity: dict[str, Any] | None = None,
    progress: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Write the index, its item ids, ``export.json`` and the user embeddings (Parquet at
    ``users_file``, default ``out_dir/user_embeddings.parquet``) of the model in ``model_dir``,
    trained on ``features_dir`` (refused otherwise, ``provenance.check_model``). ``identity``:
    ``export_identity(model_dir)`` when the caller has it already (it hashes the model's files).
    Returns the manifest (also ``export.json``)."""
    from .evaluate import user_embeddings_at_rows
    from .items import resolved_config

    started = time.perf_counter()
    model_dir, features_dir, out = Path(model_dir), Path(features_dir), Path(out_dir)
    spec = FeatureSpec.load(features_dir)
    check_model(model_dir, features_dir)
    records = check_split_files(features_dir, ["validation"], spec)["validation"]
    identity = export_identity(model_dir) if identity is None else identity
    I.choose_kind(0, exact_limit, kind)  # the kind and the limit, refused before any work
    out.mkdir(parents=True, exist_ok=True)

    item_ids, vectors = read_item_embeddings(model_dir)
    kind = I.choose_kind(len(item_ids), exact_limit, kind)
    progress(f"building the {kind} index over {len(item_ids):,} items x {vectors.shape[1]}")
    t = time.perf_counter()
    idx = I.build_index(vectors, kind, seed=seed)
    build_s = time.perf_counter() - t
    I.write_index(idx, out / INDEX_FILE)
    pq.write_table(pa.table({C.ITEM_ID: pa.array(item_ids.tolist(), pa.string())}), out / INDEX_ITEMS_FILE)

    chosen = _user_rows(features_dir, spec)
    progress(f"embedding {len(chosen):,} users (their last validation example)")
    vecs = user_embeddings_at_rows(model_dir, features_dir, spec, chosen["row"].to_numpy(), records, side="query")
    if vecs.shape[1] != vectors.shape[1]:
        raise ValueError(f"user queries have {vecs.shape[1]} dimensions, the item embeddings {vectors.shape[1]}: retrain {str(model_dir)!r}")
    cfg = resolved_config(features_dir)
    validation_date = str(cfg.window.validation_date) if cfg is not None else None
    users_file = Path(users_file) if users_file is not None else out / "user_embeddings.parquet"
    pq.write_table(user_table(chosen[C.USER_ID].to_numpy(), vecs, chosen[AS_OF].to_numpy(), identity, validation_date), users_file)

    manifest = {
        "version": EXPORT_VERSION,
        "identity": identity,
        "model_dir": str(model_dir.resolve()),
        "features_dir": str(features_dir.resolve()),
        "index": {**I.index_params(idx), "exact_limit": exact_limit, "build_seconds": build_s, "sha256": file_sha256(out / INDEX_FILE)},
        "items": len(item_ids),
        "users": len(chosen),
        "validation_date": validation_date,
        "user_features_from": "last validation example of the user by event_ts, then item_id, then record order",
        "seconds": time.perf_counter() - started,
    }
    write_json_atomic(out / EXPORT_MANIFEST, manifest)
    return manifest


def read_export_manifest(export_dir: str | Path) -> dict[str, Any]:
    path = Path(export_dir) / EXPORT_MANIFEST
    if not path.is_file():
        raise UserError(f"{str(export_dir)!r} holds no {EXPORT_MANIFEST}: run `twotower export --out {export_dir}` first")
    return json.loads(path.read_text())


@dataclass
class LoadedExport:
    index: Any
    item_ids: np.ndarray
    manifest: dict[str, Any]

    def search(self, queries: Any, k: int) -> np.ndarray:
        """Item ids of the top ``k`` per query (None where the index found fewer)."""
        pos = I.search(self.index, queries, k)
        ids = np.empty(pos.shape, dtype=object)
        ids[pos >= 0] = self.item_ids[pos[pos >= 0]]
        return ids


def check_export(export_dir: str | Path, model_dir: str | Path) -> dict[str, Any]:
    """``export.json`` of ``export_dir``, refused (``ExportMismatchError``) unless its identity
    is ``model_dir``'s and its index file is the one it wrote."""
    manifest = read_export_manifest(export_dir)
    expected = export_identity(model_dir)
    got = manifest.get("identity", {})
    diff = [k for k in expected if got.get(k) != expected[k]]
    if diff:
        raise ExportMismatchError(
            f"the export in {str(export_dir)!r} was not made from the model in {str(model_dir)!r} (they differ in {diff}): "
            f"run `twotower export --model {model_dir} --out {export_dir}` again"
        )
    index_file = Path(export_dir) / INDEX_FILE
    if not index_file.is_file() or file_sha256(index_file) != manifest["index"]["sha256"]:
        raise ExportMismatchError(
            f"{str(index_file)!r} is missing or is not the index {EXPORT_MANIFEST} describes: run `twotower export --out {export_dir}` again"
        )
    return manifest


def load_export(export_dir: str | Path, model_dir: str | Path) -> LoadedExport:
    """The index and its item ids, after ``check_export``."""
    manifest = check_export(export_dir, model_dir)
    items = pq.read_table(Path(export_dir) / INDEX_ITEMS_FILE).column(C.ITEM_ID).to_pylist()
    index = I.read_index(Path(export_dir) / INDEX_FILE)
    if index.ntotal != len(items):
        raise ExportMismatchError(f"{str(export_dir)!r}: the index holds {index.ntotal} items, {INDEX_ITEMS_FILE} {len(items)}")
    return LoadedExport(index, np.asarray(items, dtype=object), manifest)
