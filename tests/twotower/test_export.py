"""`twotower export` end to end on the tiny features: the published folder with its Delta user
table, a rerun replacing it, a refused run leaving it byte-identical, and the user table's
loader refusing another model."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("faiss")

from twotower.export import check_export_output, read_user_embeddings, run_export  # noqa: E402
from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.errors import UserError  # noqa: E402
from twotower_model import serving as S  # noqa: E402

from ..model.tiny_features import SMALL, write_features  # noqa: E402

QUIET = dict(log=lambda s: None)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from twotower_model.train import train

    root = tmp_path_factory.mktemp("feat_export")
    written = write_features(root)
    model_dir = tmp_path_factory.mktemp("model_export")
    train(root, model_dir, ModelConfig(head="cosine", temperature=0.1, epochs=2, **SMALL), progress=lambda s: None)
    return root, written, model_dir


def test_export_publishes_the_index_and_a_delta_user_table(spark, trained, tmp_path):
    root, written, model_dir = trained
    out = tmp_path / "export"
    manifest = run_export(lambda: spark, str(root), str(model_dir), str(out), **QUIET)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "index_items.parquet", "items.faiss", "user_embeddings"]
    assert (out / "user_embeddings" / "_delta_log").is_dir()
    users = read_user_embeddings(spark, out, model_dir)
    assert users.count() == manifest["users"] == len(set(written["validation"]["user_id"]))
    assert sorted(r[0] for r in users.select("user_id").collect()) == sorted(set(written["validation"]["user_id"]))
    row = users.orderBy("user_id").first()
    assert len(row["embedding"]) == manifest["index"]["dim"] and row["export_id"] == manifest["identity"]["export_id"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")] == [".export.lock"]  # no staging left

    # a rerun replaces the export with the same content; a run refused by a check leaves it as it was
    before = _digest(out)
    run_export(lambda: spark, str(root), str(model_dir), str(out), **QUIET)
    assert S.load_export(out, model_dir).manifest["identity"] == manifest["identity"]
    after = _digest(out)
    assert {k for k in after if not k.startswith("user_embeddings/")} == {k for k in before if not k.startswith("user_embeddings/")}
    other_feat = tmp_path / "other_features"
    write_features(other_feat, config_hash="cfg1")
    with pytest.raises(UserError, match="cfg1|config_hash"):
        run_export(lambda: spark, str(other_feat), str(model_dir), str(out), **QUIET)
    assert _digest(out) == after


def test_user_table_loader_refuses_another_models_export(spark, trained, tmp_path):
    root, written, model_dir = trained
    out = tmp_path / "export"
    run_export(lambda: spark, str(root), str(model_dir), str(out), **QUIET)
    other = tmp_path / "model_other"
    from twotower_model.train import train

    train(root, other, ModelConfig(head="cosine", temperature=0.1, epochs=2, **{**SMALL, "seed": 9}), progress=lambda s: None)
    with pytest.raises(S.ExportMismatchError, match="was not made from the model"):
        read_user_embeddings(spark, out, other)


def test_output_checks(tmp_path):
    model, feat = tmp_path / "model", tmp_path / "feat"
    model.mkdir(), feat.mkdir()
    with pytest.raises(UserError, match="--model"):
        check_export_output(model, model, feat)
    with pytest.raises(UserError, match="--features"):
        check_export_output(feat / "export", model, feat)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not an export folder"):
        check_export_output(busy, model, feat)
    assert check_export_output(tmp_path / "new", model, feat) == tmp_path / "new"
