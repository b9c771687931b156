"""Per-item facts (``items.py``) from hand-made feature and model folders; no TensorFlow."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower_features.config import EmbeddingConfig, ExperimentConfig
from twotower_features.spec import Column, FeatureSpec
from twotower_model import items as titems

COLUMNS = (
    Column("item_id", "string", (), "item", "id", "vocab/item_id.txt", 6),
    Column("label", "float32", (), None, "label"),
    Column("weight", "float32", (), None, "weight"),
)
# two far-apart blobs of content vectors: items a, b, c near (10, 0); d, e near (0, 10)
ARTIFACT_IDS = ["e", "a", "d", "b", "c"]
BLOB = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}


def _spec(root, **extras) -> FeatureSpec:
    spec = FeatureSpec(columns=COLUMNS, keys=("item_id",), extras=extras)
    spec.save(root)
    return spec


def _write_artifact(root) -> None:
    rng = np.random.default_rng(0)
    centre = {0: [10.0, 0.0], 1: [0.0, 10.0]}
    simclr = np.array([centre[BLOB[i]] for i in ARTIFACT_IDS]) + rng.normal(0, 0.1, (5, 2))
    (root / "artifacts").mkdir()
    pq.write_table(pa.table({
        "item_id": ARTIFACT_IDS,
        "creator_id": ["c1", "c2", "c1", "c2", "c3"],
        # dedup_pca is the first *_pca column: pure noise, it must not be chosen below
        "dedup_pca": pa.array(rng.normal(size=(5, 3)).astype(np.float32).tolist(), pa.list_(pa.float32())),
        "simclr_pca": pa.array(simclr.astype(np.float32).tolist(), pa.list_(pa.float32())),
    }), root / "artifacts" / "items.parquet")


def test_read_item_counts_keeps_file_order_and_names_missing_files(tmp_path):
    (tmp_path / "freq.csv").write_text("item_id,count\nb,7\na,2\nc,0\n")
    counts = titems.read_item_counts(tmp_path, _spec(tmp_path, item_frequency_file="freq.csv"))
    assert counts.index.tolist() == ["b", "a", "c"] and counts.tolist() == [7.0, 2.0, 0.0]
    assert counts.dtype == np.float64
    assert titems.read_item_counts(tmp_path, _spec(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="'gone.csv'"):
        titems.read_item_counts(tmp_path, _spec(tmp_path, item_frequency_file="gone.csv"))
    (tmp_path / "bad.csv").write_text("item_id,count\na,-1\n")
    with pytest.raises(ValueError, match=r"bad rows for items \['a'\]"):
        titems.read_item_counts(tmp_path, _spec(tmp_path, item_frequency_file="bad.csv"))


def test_items_artifact_fits_kmeans_on_the_configured_content_column(tmp_path):
    spec = _spec(tmp_path, items_file="artifacts/items.parquet")
    _write_artifact(tmp_path)
    cfg = ExperimentConfig(embeddings=EmbeddingConfig(item_source="simclr", kmeans_k=2))
    (tmp_path / "resolved_config.json").write_text(json.dumps(cfg.to_dict()))
    ids = np.array(["a", "b", "zz", "c", "d", "e"], dtype=object)  # "zz" is not in the artifact

    art = titems.items_artifact(tmp_path, ids, spec=spec, seed=3)
    assert art.content_column == "simclr_pca" and art.kmeans_k == 2 and art.items_missing_content == 1
    assert art.items_file == "artifacts/items.parquet"
    table = pq.read_table(tmp_path / "artifacts" / "items.parquet").to_pandas().set_index("item_id")
    np.testing.assert_array_equal(art.content[0], np.float32(table.loc["a", "simclr_pca"]))
    np.testing.assert_array_equal(art.content[2], [0.0, 0.0])
    known = [0, 1, 3, 4, 5]
    labels = art.clusters[known].tolist()
    # the two blobs are the two clusters, whichever label each gets
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4]
    assert art.clusters[2] == "__missing__zz" and art.creators[2] == "__missing__zz"
    assert art.creators[known].tolist() == ["c2", "c2", "c3", "c1", "c1"]


def test_items_artifact_without_resolved_config_or_artifact(tmp_path):
    spec = _spec(tmp_path, items_file="artifacts/items.parquet")
    _write_artifact(tmp_path)
    art = titems.items_artifact(tmp_path, ["a", "b", "c"], spec=spec)
    # no config: the first *_pca column, k = min(EmbeddingConfig's 18, the 3 known items)
    assert art.content_column == "dedup_pca" and art.kmeans_k == 3
    assert sorted(art.clusters.tolist()) == [0, 1, 2]
    empty = titems.items_artifact(tmp_path, ["a"], spec=_spec(tmp_path))
    assert empty.content is None and empty.clusters is None and empty.creators is None and empty.items_file is None


def test_item_embeddings_table_reads_back(tmp_path):
    vectors = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], np.float32)
    pq.write_table(titems.item_embeddings_table(np.array(["x", "y", "z"], dtype=object), vectors), tmp_path / "item_embeddings.parquet")
    assert pq.read_schema(tmp_path / "item_embeddings.parquet").types == [pa.string(), pa.list_(pa.float32())]
    ids, emb = titems.read_item_embeddings(tmp_path)
    assert ids.tolist() == ["x", "y", "z"]
    np.testing.assert_array_equal(emb, vectors)
    pq.write_table(titems.item_embeddings_table(np.array(["x", "x"], dtype=object), vectors[:2]), tmp_path / "item_embeddings.parquet")
    with pytest.raises(ValueError, match="duplicate item ids"):
        titems.read_item_embeddings(tmp_path)
    with pytest.raises(FileNotFoundError, match="run train first"):
        titems.read_item_embeddings(tmp_path / "nowhere")
