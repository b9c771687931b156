"""Reading the features folder's TFRecords (``data.py``) on the tiny features folder."""
from __future__ import annotations

import math

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from twotower_features.spec import FeatureSpec  # noqa: E402
from twotower_model import data as tdata  # noqa: E402


def test_feature_description_follows_spec(feat):
    root, _ = feat
    desc = tdata.feature_description(FeatureSpec.load(root), ["user_id", "user_vec", "hist_len"])
    assert desc == {
        "user_id": tf.io.FixedLenFeature([], tf.string),
        "user_vec": tf.io.FixedLenFeature([4], tf.float32),
        "hist_len": tf.io.FixedLenFeature([], tf.int64),
    }


def test_dataset_yields_written_values_exactly(feat):
    root, written = feat
    spec = FeatureSpec.load(root)
    batches = list(tdata.make_dataset(root, "train", spec, batch_size=7, shuffle=False, seed=0))
    assert len(batches) == math.ceil(600 / 7)
    for name, expected in written["train"].items():
        got = np.concatenate([b[name].numpy() for b in batches])
        if expected.dtype == object:
            got = np.array([x.decode() for x in got], dtype=object)
            assert got.tolist() == expected.tolist(), name
        else:
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_catalog_split_holds_item_columns_only(feat):
    root, written = feat
    spec = FeatureSpec.load(root)
    assert tdata.split_columns(spec, "catalog") == ["item_id", "item_emb"]
    (batch,) = list(tdata.make_dataset(root, "catalog", spec, batch_size=100, shuffle=False, seed=0))
    assert sorted(batch) == ["item_emb", "item_id"]
    np.testing.assert_array_equal(batch["item_emb"].numpy(), written["catalog"]["item_emb"])


def test_shuffled_dataset_is_a_permutation_and_reproducible(feat):
    root, written = feat
    spec = FeatureSpec.load(root)

    def order():
        ds = tdata.make_dataset(root, "train", spec, batch_size=50, shuffle=True, seed=5, columns=["event_ts"], deterministic=True)
        return np.concatenate([b["event_ts"].numpy() for b in ds])

    first, second = order(), order()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, written["train"]["event_ts"])
    np.testing.assert_array_equal(np.sort(first), np.sort(written["train"]["event_ts"]))


def test_a_shuffle_window_mixes_records_not_just_blocks(feat):
    """Files are read and shuffled in blocks of ``BLOCK`` consecutive records (tf.data's
    per-element cost paid per block); the window permutation must still scatter the records:
    with one window over the whole split (600 records in 2 files, 10 blocks), a batch of 50
    drawn uniformly touches nearly every block, and two consecutive records of the output are
    almost never consecutive in the files (a block-level shuffle alone would keep 63 of 64)."""
    root, _ = feat
    spec = FeatureSpec.load(root)
    ds = tdata.make_dataset(root, "train", spec, batch_size=50, shuffle=True, seed=5, columns=["event_ts"],
                            deterministic=True, shuffle_buffer=600)
    # written order: record i of the split has event_ts base + i seconds; file 0 holds 0..299
    order = [((b["event_ts"].numpy() - 1_780_000_000_000_000) // 1_000_000) for b in ds]
    first, flat = order[0], np.concatenate(order)
    blocks = {(i // 300, (i % 300) // tdata.BLOCK) for i in first}
    assert len(blocks) >= 8, sorted(blocks)
    adjacent = np.mean(np.abs(np.diff(flat)) == 1)
    assert adjacent < 0.05, adjacent
    np.testing.assert_array_equal(np.sort(flat), np.arange(600))


def test_the_memory_cache_default_is_a_quarter_of_the_machines_memory():
    total_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert tdata.memory_cache_default() == pytest.approx(total_kb * 1024 / 4, rel=0.01)


@pytest.mark.parametrize("repeat, shard", [(False, None), (True, (1, 2))])
def test_in_memory_batches_are_the_streamed_batches(feat, repeat, shard):
    """The split parsed once and served by position gives the streamed pipeline's batches,
    record for record, epoch after epoch (each epoch reshuffled alike), also repeated over one
    worker's files, read as multi-worker training reads it: one iterator over several passes
    (36 batches of 64 from one worker's ~300 records), each pass reshuffled alike."""
    root, _ = feat
    spec = FeatureSpec.load(root)

    def epochs(in_memory):
        ds = tdata.make_dataset(root, "train", spec, batch_size=64, shuffle=True, seed=3, deterministic=True,
                                repeat=repeat, shard=shard, in_memory=in_memory)
        return [[{k: v.numpy() for k, v in b.items()} for b in (ds.take(36) if repeat else ds)] for _ in range(1 if repeat else 3)]

    streamed, cached = epochs(False), epochs(True)
    assert [len(e) for e in cached] == [len(e) for e in streamed] and len(streamed[0]) >= 10
    for s_epoch, c_epoch in zip(streamed, cached):
        for s_batch, c_batch in zip(s_epoch, c_epoch):
            assert sorted(c_batch) == sorted(s_batch)
            for k in s_batch:
                assert c_batch[k].dtype == s_batch[k].dtype, k
                np.testing.assert_array_equal(c_batch[k], s_batch[k], err_msg=k)
    if not repeat:
        assert not np.array_equal(streamed[0][0]["event_ts"], streamed[1][0]["event_ts"])  # epochs are reshuffled


def test_cache_fits_compares_the_split_files_bytes(feat):
    root, _ = feat
    spec = FeatureSpec.load(root)
    size = sum(p.stat().st_size for p in (root / "tfrecords" / "train").glob("*.tfrecord"))
    assert size > 0
    assert tdata.cache_fits(root, "train", spec, size) and not tdata.cache_fits(root, "train", spec, size - 1)


def test_unknown_split_is_named(feat):
    root, _ = feat
    with pytest.raises(ValueError, match="'test'.*expected one of"):
        tdata.make_dataset(root, "test", FeatureSpec.load(root), batch_size=8, shuffle=False, seed=0)


def test_asking_catalog_for_a_label_is_named(feat):
    root, _ = feat
    with pytest.raises(ValueError, match=r"'catalog' records do not hold column\(s\) \['label'\]"):
        tdata.make_dataset(root, "catalog", FeatureSpec.load(root), batch_size=8, shuffle=False, seed=0, columns=["item_id", "label"])


def test_sampled_negatives_are_catalog_rows_drawn_by_seed_and_position(feat):
    """Each batch gains M catalog rows (ids and item features of the same rows), the same draws
    for the same seed in every pass, other draws for another seed."""
    from twotower_model.data import NEGATIVE, read_split, with_sampled_negatives

    root, written = feat
    spec = FeatureSpec.load(root)
    catalog = read_split(root, "catalog", spec, ["item_id", "item_emb"])
    assert [x.decode() for x in catalog["item_id"].numpy()] == list(written["catalog"]["item_id"])
    base = tdata.make_dataset(root, "train", spec, batch_size=64, shuffle=False, seed=0, columns=["item_id", "label"])
    ds = with_sampled_negatives(base, catalog, 5, seed=11)
    by_id = {i: v for i, v in zip(written["catalog"]["item_id"], written["catalog"]["item_emb"])}
    first = [b[NEGATIVE + "item_id"].numpy() for b in ds]
    again = [b[NEGATIVE + "item_id"].numpy() for b in ds]
    other = [b[NEGATIVE + "item_id"].numpy() for b in with_sampled_negatives(base, catalog, 5, seed=12)]
    assert all((a == b).all() for a, b in zip(first, again))
    assert any((a != b).any() for a, b in zip(first, other))
    for b in ds.take(3):
        ids = [x.decode() for x in b[NEGATIVE + "item_id"].numpy()]
        assert len(ids) == 5 and set(ids) <= set(by_id)
        np.testing.assert_array_equal(b[NEGATIVE + "item_emb"].numpy(), np.stack([by_id[i] for i in ids]))
        assert b["label"].shape[0] <= 64  # the batch itself unchanged
    drawn = np.concatenate(first)
    assert len(set(drawn)) > len(by_id) // 2  # spread over the catalog, not one item
