"""The layout of a features folder (``twotower features --output``): one name per file or folder.

Paths are relative to the folder. The stages write them (``pipeline.py``), the orchestration's
stage table (``twotower/stages.py``) says which stage owns which, and the trainer and evaluator
read them; all three use these names.
"""
from __future__ import annotations

from pathlib import Path

RESOLVED_CONFIG = "resolved_config.json"
FEATURE_SPEC = "feature_spec.json"  # its contents: spec.py
MANIFEST = "manifest.json"
# the key of manifest.json that lists, per split, the TFRecord shards as written: ``{split: [{"path"
# (relative to the folder), "records", "bytes"}, ...]}``; the trainer checks the files against it
MANIFEST_SHARDS = "shards"
REPORTS = "reports"

# prepare
FILTERED = "tables/filtered"
QUARANTINE = "tables/quarantine"
ITEM_AVG_TIME_SPENT = "artifacts/item_avg_time_spent"
ITEM_FILTER = "artifacts/item_filter"
CLIENT_FILTER = "artifacts/client_filter"
# embeddings
EMBEDDINGS = "artifacts/embeddings.npz"
ITEMS = "artifacts/items.parquet"
HISTORY_MATRIX = "artifacts/history_matrix.npy"
# examples
EXAMPLES = "tables/examples"
NORMALISATION = "artifacts/normalisation.json"
# tfrecords
VOCAB = "vocab"
TFRECORDS = "tfrecords"
ITEM_FREQUENCY = "artifacts/item_frequency.csv"


def tfrecords(split: str) -> str:
    """The folder of ``split``'s TFRecord shards (``train``, ``validation``, ``catalog``)."""
    return f"{TFRECORDS}/{split}"


def report(stage: str) -> str:
    """The report of ``stage``: rows in, rows out, removed per rule."""
    return f"{REPORTS}/{stage}.json"


def path(out: str | Path, rel: str) -> str:
    """``rel`` under the features folder ``out``, as a string (Spark takes strings)."""
    return str(Path(out) / rel)
