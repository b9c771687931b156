"""Staged outputs: one writer per features folder, published whole or not at all."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from twotower.lock import ExclusiveLock, LockBusy
from twotower.staging import OutputError, check_output, staged


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` (names and bytes), for before/after comparisons."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _published(root: Path) -> Path:
    out = root / "features"
    (out / "tables" / "filtered" / "_delta_log").mkdir(parents=True)
    (out / "tables" / "filtered" / "_delta_log" / "00000000000000000000.json").write_text('{"add": 1}\n')
    (out / "tables" / "filtered" / "part-0.parquet").write_bytes(b"P" * 100)
    (out / "artifacts").mkdir()
    (out / "artifacts" / "normalisation.json").write_text('{"a": [0, 1]}\n')
    (out / "tfrecords" / "train").mkdir(parents=True)
    (out / "tfrecords" / "train" / "part-00000-of-00001.tfrecord").write_bytes(b"T" * 50)
    (out / "resolved_config.json").write_text("{}\n")
    return out


def test_a_failed_build_leaves_the_output_byte_identical(tmp_path):
    out = _published(tmp_path)
    before = tree_digest(out)
    with pytest.raises(RuntimeError, match="stage failed"):
        with staged(out, drop=["tfrecords", "artifacts/normalisation.json"], log=lambda s: None) as build:
            (build / "tfrecords").mkdir()
            (build / "tfrecords" / "new.tfrecord").write_bytes(b"half")
            (build / "tables" / "filtered" / "_delta_log" / "00000000000000000000.json").write_text("rewritten")
            raise RuntimeError("stage failed")
    assert tree_digest(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".features.staging")] == []


def test_a_successful_build_replaces_the_dropped_outputs_and_keeps_the_rest(tmp_path):
    out = _published(tmp_path)
    parquet = out / "tables" / "filtered" / "part-0.parquet"
    inode = parquet.stat().st_ino
    with staged(out, drop=["tfrecords", "artifacts/normalisation.json"], log=lambda s: None) as build:
        assert not (build / "tfrecords").exists() and not (build / "artifacts" / "normalisation.json").exists()
        # big immutable files are linked, small ones copied: a write to a copy cannot reach the original
        assert (build / "tables" / "filtered" / "part-0.parquet").stat().st_ino == inode
        assert (build / "resolved_config.json").stat().st_ino != (out / "resolved_config.json").stat().st_ino
        (build / "resolved_config.json").write_text('{"new": true}\n')
        (build / "tfrecords" / "validation").mkdir(parents=True)
        (build / "tfrecords" / "validation" / "v.tfrecord").write_bytes(b"V")
        assert (out / "resolved_config.json").read_text() == "{}\n"  # not yet published
    assert sorted(tree_digest(out)) == [
        "resolved_config.json", "tables/filtered/_delta_log/00000000000000000000.json",
        "tables/filtered/part-0.parquet", "tfrecords/validation/v.tfrecord",
    ]
    assert (out / "resolved_config.json").read_text() == '{"new": true}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == [".features.lock", "features"]


def test_one_writer_per_output(tmp_path):
    out = _published(tmp_path)
    with ExclusiveLock(tmp_path / ".features.lock", run_id="other-run"):
        with pytest.raises(LockBusy, match="other-run"):
            with staged(out, log=lambda s: None):
                pass


def test_a_run_killed_between_the_two_renames_is_undone_by_the_next(tmp_path):
    out = _published(tmp_path)
    before = tree_digest(out)
    os.rename(out, tmp_path / ".features.old-deadbeef")  # killed after the first rename
    (tmp_path / ".features.staging-cafe").mkdir()  # and its staging folder left behind
    seen = []
    with staged(out, drop=["tfrecords"], log=seen.append) as build:
        assert (build / "resolved_config.json").is_file()  # seeded from the restored folder
    assert any("restored" in s for s in seen)
    assert {k: v for k, v in before.items() if not k.startswith("tfrecords")} == tree_digest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".features.lock", "features"]


@pytest.mark.parametrize("relative", ["in", "in/interactions", "in/items/sub"])
def test_an_output_that_is_or_lies_in_an_input_is_refused(tmp_path, relative):
    (tmp_path / "in" / "interactions").mkdir(parents=True)
    (tmp_path / "in" / "items").mkdir()
    with pytest.raises(OutputError, match="would overwrite the input"):
        check_output(tmp_path / relative, tmp_path / "in", ("interactions", "items"))


def test_an_output_holding_the_input_is_refused(tmp_path):
    (tmp_path / "out" / "in" / "interactions").mkdir(parents=True)
    with pytest.raises(OutputError, match="would overwrite the input"):
        check_output(tmp_path / "out", tmp_path / "out" / "in", ("interactions",))


def test_a_foreign_folder_is_not_replaced(tmp_path):
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="did not write"):
        check_output(tmp_path / "home", tmp_path / "in", ("interactions",))
    assert check_output(tmp_path / "in" / "features-next-to-tables", tmp_path / "in", ("interactions",)).name == "features-next-to-tables"
