"""The features folder checked against its manifest before train and evaluate, and a model
refused on a features folder it was not trained on (``provenance.py``), on the tiny folder."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct

import pytest

tf = pytest.importorskip("tensorflow")

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.errors import UserError  # noqa: E402
from twotower_model import evaluate as tevaluate  # noqa: E402
from twotower_model import export as texport  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402
from twotower_model.provenance import (  # noqa: E402
    IncompleteFeaturesError,
    ProvenanceError,
    check_split_files,
)

from .tiny_features import SMALL, write_features  # noqa: E402

CFG = ModelConfig(head="dot", epochs=1, **SMALL)
SHARD = "tfrecords/train/part-00001.tfrecord"  # the second half of 600 train records: 300


def quiet(_: str) -> None:
    pass


def refused(root) -> str:
    """The fix every incomplete-folder message ends with."""
    return re.escape(f"; the features folder is incomplete: rerun `twotower tfrecords --config CONFIG --input INPUT --output {root}`")


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "feat"
    write_features(root)
    return root


def test_a_whole_folder_passes_with_the_manifest_counts(folder):
    assert check_split_files(folder, ["train", "validation", "catalog"]) == {"train": 600, "validation": 200, "catalog": 30}


def test_train_refuses_a_deleted_shard(folder, tmp_path):
    size = (folder / SHARD).stat().st_size
    (folder / SHARD).unlink()
    expected = f"split 'train' of features folder '{folder}': {SHARD} is missing (manifest.json lists it: 300 records, {size:,} bytes)"
    with pytest.raises(IncompleteFeaturesError, match=re.escape(expected) + refused(folder)) as e:
        ttrain.train(folder, tmp_path / "model", CFG, progress=quiet)
    assert isinstance(e.value, UserError)
    assert not (tmp_path / "model").exists()  # refused before training


def test_train_refuses_a_shard_cut_mid_record(folder, tmp_path):
    body = (folder / SHARD).read_bytes()
    (first,) = struct.unpack("<Q", body[:8])
    cut = 16 + first + 12 + 5  # record 1 whole (16 bytes of framing), then 5 data bytes of record 2
    (folder / SHARD).write_bytes(body[:cut])
    expected = f"split 'train' of features folder '{folder}': {SHARD} is truncated: it has {cut:,} bytes, manifest.json lists {len(body):,}"
    with pytest.raises(IncompleteFeaturesError, match=re.escape(expected) + refused(folder)):
        ttrain.train(folder, tmp_path / "model", CFG, progress=quiet)
    # a manifest that agrees with the cut size: the header walk finds the cut
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"]["train"][1]["bytes"] = cut
    (folder / "manifest.json").write_text(json.dumps(manifest))
    expected = f"{SHARD} is damaged (TFRecord file '{folder / SHARD}' is truncated: record 2 (offset {16 + first:,}) needs"
    with pytest.raises(IncompleteFeaturesError, match=re.escape(expected)):
        ttrain.fit_model(folder, CFG, progress=quiet)


def test_train_refuses_a_record_count_that_differs(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"]["validation"][0]["records"] = 199
    (folder / "manifest.json").write_text(json.dumps(manifest))
    expected = "split 'validation' of features folder"
    with pytest.raises(IncompleteFeaturesError, match=f"{expected}.*part-00000.tfrecord holds 200 records, manifest.json lists 199"):
        ttrain.fit_model(folder, CFG, progress=quiet)


def test_train_refuses_an_extra_shard(folder, tmp_path):
    shutil.copy(folder / SHARD, folder / "tfrecords/train/part-00002.tfrecord")
    expected = f"split 'train' of features folder '{folder}': tfrecords/train/part-00002.tfrecord is not in manifest.json (it lists 2 file(s) for this split)"
    with pytest.raises(IncompleteFeaturesError, match=re.escape(expected) + refused(folder)):
        ttrain.train(folder, tmp_path / "model", CFG, progress=quiet)


def test_train_refuses_a_catalog_shard_changed_and_a_folder_without_shard_lists(folder, tmp_path):
    with open(folder / "tfrecords/catalog/part-00000.tfrecord", "ab") as f:
        f.write(b"\0")
    with pytest.raises(IncompleteFeaturesError, match=r"split 'catalog' .*part-00000.tfrecord has \S+ bytes, manifest.json lists \S+: it was changed"):
        ttrain.train(folder, tmp_path / "model", CFG, progress=quiet)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["shards"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IncompleteFeaturesError, match="lists no TFRecord shards"):
        ttrain.fit_model(folder, CFG, progress=quiet)
    (folder / "manifest.json").unlink()
    with pytest.raises(IncompleteFeaturesError, match=f"has no manifest.json{refused(folder)}"):
        ttrain.fit_model(folder, CFG, progress=quiet)


# ---- provenance ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_folders(tmp_path_factory):
    """Folders A and B with the same columns and shapes (other data, other hashes), a model trained on A."""
    a, b = tmp_path_factory.mktemp("feat_a"), tmp_path_factory.mktemp("feat_b")
    write_features(a, seed=0, config_hash="aaaa1111", data_hash="da0000")
    write_features(b, seed=1, config_hash="bbbb2222", data_hash="db0000")
    model_dir = tmp_path_factory.mktemp("model_a")
    ttrain.train(a, model_dir, CFG, progress=quiet)
    return a, b, model_dir


def test_train_stamps_the_model_and_its_towers(two_folders):
    a, _, model_dir = two_folders
    expected = {
        "config_hash": "aaaa1111",
        "data_hash": "da0000",
        "feature_spec_version": 1,
        "feature_spec_sha256": hashlib.sha256((a / "feature_spec.json").read_bytes()).hexdigest(),
        "features_created_at": "2026-07-06T00:00:00+00:00",
        "features_dir": str(a.resolve()),
    }
    assert json.loads((model_dir / "provenance.json").read_text()) == expected
    towers = texport.load_towers(model_dir, features_dir=a)  # the right folder passes
    assert towers.provenance == {"user": expected, "item": expected}
    # read from the SavedModel alone, without this package's loader
    raw = tf.saved_model.load(str(model_dir / "item_tower")).provenance.numpy().decode()
    assert json.loads(raw) == expected


def test_evaluate_refuses_a_model_trained_on_other_features(two_folders, tmp_path):
    a, b, model_dir = two_folders
    expected = (
        f"model '{model_dir}' was trained on other features than '{b}': config_hash aaaa1111 (model) vs bbbb2222 (features), "
        "data_hash da0000 vs db0000. "  # the specs are alike, the creation times too
        f"Train on this folder (`twotower train --features {b} --model DIR`), or evaluate with the features the model was "
        f"trained on ({a.resolve()})"
    )
    with pytest.raises(ProvenanceError, match=re.escape(expected)) as e:
        tevaluate.evaluate(str(b), str(model_dir), str(tmp_path / "eval"))
    assert isinstance(e.value, UserError)
    assert not (tmp_path / "eval").exists()
    # the towers alone, given folder B
    with pytest.raises(ProvenanceError, match=re.escape(f"exported user tower '{model_dir / 'user_tower'}' was trained on other features than '{b}'")):
        texport.load_towers(model_dir, features_dir=b)


def test_evaluate_refuses_a_rebuilt_folder_and_an_unstamped_model(two_folders, tmp_path, trained_dot, feat):
    a, _, model_dir = two_folders
    # the same hashes, written again later: the records may differ
    rebuilt = tmp_path / "rebuilt"
    write_features(rebuilt, seed=0, config_hash="aaaa1111", data_hash="da0000", created_at="2026-07-07T00:00:00+00:00")
    with pytest.raises(ProvenanceError, match=r"config_hash aaaa1111 \(model\) vs aaaa1111 \(features\), data_hash da0000 vs da0000; also differ: features_created_at\."):
        tevaluate.evaluate(str(rebuilt), str(model_dir), str(tmp_path / "eval"))
    # a model saved without provenance (export.save_model alone)
    root, _ = feat
    _, _, unstamped = trained_dot
    with pytest.raises(ProvenanceError, match=re.escape(f"model '{unstamped}' has no provenance.json")):
        tevaluate.evaluate(str(root), str(unstamped), str(tmp_path / "eval"))
    with pytest.raises(ProvenanceError, match="exported user tower .* carries no provenance"):
        texport.load_towers(unstamped, features_dir=root)
    assert texport.load_towers(unstamped).provenance == {"user": None, "item": None}  # no folder given: no check


def test_evaluate_refuses_an_incomplete_validation_split(two_folders, tmp_path):
    a, _, model_dir = two_folders
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    shutil.copy(copy / "feature_spec.json", copy / "feature_spec.json.bak")  # not a split file: ignored
    (copy / "tfrecords/validation/part-00000.tfrecord").unlink()
    # same manifest and spec bytes as A: provenance passes, the missing file does not
    with pytest.raises(IncompleteFeaturesError, match=re.escape(f"split 'validation' of features folder '{copy}': tfrecords/validation/part-00000.tfrecord is missing")):
        tevaluate.evaluate(str(copy), str(model_dir), str(tmp_path / "eval"))
