"""``twotower_model.serving``: the export of a tiny trained model (the model with a separate
retrieval head, so the queries come from the ``retrieval_query`` signature) against an
independent recomputation, and the loader's refusals of a mismatched pair."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.errors import UserError  # noqa: E402
from twotower_model import index as I  # noqa: E402
from twotower_model import serving as S  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402
from twotower_model.export import ExportedTowers  # noqa: E402
from twotower_model.items import read_item_embeddings  # noqa: E402
from twotower_model.layout import (  # noqa: E402
    EXPORT_MANIFEST,
    INDEX_FILE,
    INDEX_ITEMS_FILE,
    ITEM_EMBEDDINGS_FILE,
)

from .tiny_features import SMALL, write_features  # noqa: E402

CFG = ModelConfig(head="cosine", temperature=0.1, loss="hybrid", softmax_head="separate", softmax_temperature=0.1, epochs=2, **SMALL)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat_serving")
    written = write_features(root)
    model_dir = tmp_path_factory.mktemp("model_serving")
    ttrain.train(root, model_dir, CFG, progress=lambda s: None)
    out = tmp_path_factory.mktemp("export")
    manifest = S.write_export(model_dir, root, out, progress=lambda s: None)
    return root, written, model_dir, out, manifest


def _last_rows(validation: dict[str, np.ndarray]) -> pd.DataFrame:
    """Each user's last validation record: latest event_ts, then largest item_id, then position
    (a plain loop, independent of evaluate.choose_user_rows)."""
    best: dict[str, tuple] = {}
    for pos, (u, ts, item) in enumerate(zip(validation["user_id"], validation["event_ts"], validation["item_id"])):
        key = (int(ts), str(item), pos)
        if u not in best or key > best[u]:
            best[u] = key
    return pd.DataFrame([(u, k[2], k[0]) for u, k in sorted(best.items())], columns=["user_id", "row", "event_ts"])


def test_export_files_and_manifest(exported):
    root, written, model_dir, out, manifest = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([INDEX_FILE, INDEX_ITEMS_FILE, EXPORT_MANIFEST, "user_embeddings.parquet"])
    item_ids, vectors = read_item_embeddings(model_dir)
    assert manifest["items"] == len(item_ids) == 30
    assert manifest["index"]["kind"] == "exact" and manifest["index"]["dim"] == vectors.shape[1]
    assert pq.read_table(out / INDEX_ITEMS_FILE).column("item_id").to_pylist() == item_ids.tolist()
    assert manifest["users"] == len(set(written["validation"]["user_id"]))
    assert manifest["identity"] == S.export_identity(model_dir)


def test_user_embeddings_are_the_retrieval_queries_of_the_last_validation_example(exported):
    root, written, model_dir, out, manifest = exported
    val = written["validation"]
    last = _last_rows(val)
    table = pq.read_table(out / "user_embeddings.parquet").to_pandas()
    assert table["user_id"].tolist() == last["user_id"].tolist()
    # the as_of timestamps are the records' event_ts (microseconds since the epoch)
    as_of_us = table["as_of"].astype("datetime64[us, UTC]").astype("int64").to_numpy()
    np.testing.assert_array_equal(as_of_us, last["event_ts"].to_numpy())
    assert set(table["export_id"]) == {manifest["identity"]["export_id"]}
    assert set(table["config_hash"]) == {"cfg0"}
    # the user tower's retrieval_query signature on those records, called directly
    sig = tf.saved_model.load(str(model_dir / "user_tower")).signatures["retrieval_query"]
    rows = last["row"].to_numpy()
    names = sorted(sig.structured_input_signature[1])
    expected = sig(**{n: tf.constant(val[n][rows]) for n in names})["embedding"].numpy()
    np.testing.assert_allclose(np.stack(table["embedding"].to_numpy()), expected, rtol=1e-5, atol=1e-6)


def test_loaded_index_answers_like_numpy(exported):
    root, written, model_dir, out, manifest = exported
    loaded = S.load_export(out, model_dir)
    item_ids, vectors = read_item_embeddings(model_dir)
    queries = np.stack(pq.read_table(out / "user_embeddings.parquet").to_pandas()["embedding"].to_numpy()).astype(np.float32)
    got = loaded.search(queries, 5)
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    expected = item_ids[np.argsort(-scores, axis=1, kind="stable")[:, :5]]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ["auto", "hnsw"])
def test_an_export_past_the_exact_limit_finds_the_same_lists(exported, tmp_path, kind):
    root, written, model_dir, out, manifest = exported
    m = S.write_export(model_dir, root, tmp_path / kind, exact_limit=10, kind=kind, progress=lambda s: None)
    assert m["index"]["kind"] == ("ivf" if kind == "auto" else kind) and m["index"]["exact_limit"] == 10
    queries = np.stack(pq.read_table(out / "user_embeddings.parquet").to_pandas()["embedding"].to_numpy())
    exact = S.load_export(out, model_dir).search(queries, 10)
    approx = S.load_export(tmp_path / kind, model_dir).search(queries, 10)
    # 30 items: IVF has one cell and HNSW visits every node, so both find the exact lists
    assert np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)]) == 1.0


def test_loader_refuses_an_export_of_another_model(exported, tmp_path):
    root, written, model_dir, out, manifest = exported
    other = tmp_path / "other_model"
    shutil.copytree(model_dir, other)
    ids, vectors = read_item_embeddings(other)
    from twotower_model.items import item_embeddings_table

    pq.write_table(item_embeddings_table(ids, vectors[::-1].copy()), other / "item_embeddings.parquet")
    with pytest.raises(S.ExportMismatchError, match=r"item_embeddings_sha256.*twotower export"):
        S.load_export(out, other)
    shutil.copy(model_dir / "item_embeddings.parquet", other / "item_embeddings.parquet")
    assert S.load_export(out, other).manifest["identity"] == manifest["identity"]  # the same files again: accepted
    retrained = tmp_path / "retrained"
    ttrain.train(root, retrained, ModelConfig(**{**CFG.__dict__, "seed": 4}), progress=lambda s: None)
    with pytest.raises(S.ExportMismatchError, match="model_config_sha256"):
        S.load_export(out, retrained)


def test_loader_refuses_a_swapped_index_file(exported, tmp_path):
    root, written, model_dir, out, manifest = exported
    copy = tmp_path / "export"
    shutil.copytree(out, copy)
    _, vectors = read_item_embeddings(model_dir)
    I.write_index(I.build_index(vectors[:, ::-1].copy(), "exact"), copy / INDEX_FILE)
    with pytest.raises(S.ExportMismatchError, match="is not the index"):
        S.load_export(copy, model_dir)
    (copy / EXPORT_MANIFEST).unlink()
    with pytest.raises(S.UserError, match="twotower export"):
        S.load_export(copy, model_dir)


def test_a_half_written_model_folder_is_a_user_error_naming_what_is_missing(exported, tmp_path):
    """The model's files but its item embeddings and towers (a copy cut short): each reader
    refuses with the path and the command to run, as a ``UserError`` (one line at the CLI, no
    traceback), and an index file that is not there likewise."""
    _, _, model_dir, _, _ = exported
    half = tmp_path / "half"
    half.mkdir()
    for p in model_dir.iterdir():
        if p.is_file() and p.name != ITEM_EMBEDDINGS_FILE:
            shutil.copy(p, half / p.name)
    with pytest.raises(UserError, match=rf"no {ITEM_EMBEDDINGS_FILE} in '.*half': run `twotower train` first"):
        S.export_identity(half)
    with pytest.raises(UserError, match=r"no exported user tower at '.*half/user_tower': run train first"):
        ExportedTowers(half)
    with pytest.raises(UserError, match=r"no index file '.*nothing\.faiss': run `twotower export` first"):
        I.read_index(tmp_path / "nothing.faiss")
