"""`twotower export`: a trained model's serving files (``twotower_model.serving``) published as
one folder: the item index, its item ids, ``export.json`` and the user embeddings as a Delta
table (``user_embeddings/``) for a serving store to load.

The TensorFlow side writes the index and the user embeddings as Parquet into a staging copy
of the folder; Spark turns the Parquet into the Delta table there; the staging folder replaces
the published one only when all of it was written (``staging.staged``: one writer at a time, a
failed run leaves the previous export as it was). Everything checkable is checked before the
first write: the model folder, that it was trained on the features folder, the output path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twotower_features import io
from twotower_features.errors import UserError
from twotower_model import index as I
from twotower_model import layout as ML

from .staging import staged

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

EXPORT_FILES = (ML.INDEX_FILE, ML.INDEX_ITEMS_FILE, ML.USER_EMBEDDINGS_TABLE, ML.EXPORT_MANIFEST)
USERS_PARQUET = "user_embeddings.staging.parquet"  # in the staging folder only (Spark skips names starting with _ or .)


def check_export_output(out: str | Path, model_dir: str | Path, features_dir: str | Path) -> Path:
    """``out`` as an absolute path, refused when it is (or holds, or lies in) the model or the
    features folder, or is a non-empty folder that is not an export."""
    out_p = Path(os.path.abspath(out))
    for name, other in (("--model", model_dir), ("--features", features_dir)):
        o = Path(os.path.abspath(other))
        if out_p == o or o in out_p.parents or out_p in o.parents:
            raise UserError(f"--out {out} would overwrite {name} {other}: give the export its own folder")
    if out_p.exists() and (not out_p.is_dir() or (any(out_p.iterdir()) and not (out_p / ML.EXPORT_MANIFEST).is_file())):
        raise UserError(f"--out {out} exists and is not an export folder (no {ML.EXPORT_MANIFEST}): give an empty or new folder")
    return out_p


def run_export(
    spark: Callable[[], SparkSession],
    features_dir: str,
    model_dir: str,
    out: str,
    *,
    kind: str = "auto",
    exact_limit: int = I.EXACT_LIMIT,
    lock_wait_s: float = 0.0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Write the export of ``model_dir`` (trained on ``features_dir``) to ``out``; ``spark`` is
    a factory started once the TensorFlow side is done. Returns ``export.json``'s content."""
    from twotower_model.provenance import check_model
    from twotower_model.serving import export_identity, write_export

    out_p = check_export_output(out, model_dir, features_dir)
    I.choose_kind(0, exact_limit, kind)  # a bad choice fails before any work
    check_model(model_dir, features_dir)
    identity = export_identity(model_dir)  # the model folder is whole (hashed once: write_export takes it)
    with staged(out_p, drop=EXPORT_FILES, lock_wait_s=lock_wait_s, log=log) as build:
        users = build / USERS_PARQUET
        manifest = write_export(
            model_dir, features_dir, build, kind=kind, exact_limit=exact_limit, users_file=users, identity=identity, progress=log,
        )
        log(f"writing the Delta table {ML.USER_EMBEDDINGS_TABLE}/ ({manifest['users']:,} users)")
        session = spark()
        io.write_delta(session.read.parquet(str(users)), str(build / ML.USER_EMBEDDINGS_TABLE), partition_by=[])
        written = session.read.format("delta").load(str(build / ML.USER_EMBEDDINGS_TABLE)).count()
        if written != manifest["users"]:
            raise RuntimeError(f"the Delta table holds {written} users, the export {manifest['users']}")
        users.unlink()
        log(f"== publishing {out_p}")
    log(f"exported {manifest['items']:,} items ({manifest['index']['kind']} index) and {manifest['users']:,} users to {out_p}")
    return manifest


def read_user_embeddings(spark: SparkSession, export_dir: str | Path, model_dir: str | Path) -> DataFrame:
    """The export's user table, refused (``serving.ExportMismatchError``) unless the export was
    made from ``model_dir`` (``serving.check_export``) and every row carries its ``export_id``."""
    from twotower_model.serving import EXPORT_ID, ExportMismatchError, check_export

    manifest = check_export(export_dir, model_dir)
    path = str(Path(export_dir) / ML.USER_EMBEDDINGS_TABLE)
    df = spark.read.format("delta").load(path)
    ids = [r[0] for r in df.select(EXPORT_ID).distinct().limit(2).collect()]
    if ids and ids != [manifest["identity"][EXPORT_ID]]:
        raise ExportMismatchError(
            f"{path} holds rows of export {ids}, {ML.EXPORT_MANIFEST} says {manifest['identity'][EXPORT_ID]!r}: "
            f"run `twotower export --out {export_dir}` again"
        )
    return df
