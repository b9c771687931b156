"""Reading the feature job's TFRecords as ``tf.data`` pipelines, driven by ``feature_spec.json``.

The pipeline is the one the tf.data performance guide recommends for many small records
(list the shards, interleave the files, shuffle, batch *before* parsing: one vectorised
``tf.io.parse_example`` per batch instead of one parse per record, prefetch), with one change:
tf.data's per-element cost (about 6 us per record through an interleave and a shuffle buffer on
the development machine, more than parsing the record) is paid per block of ``BLOCK`` records.
Each file is read in blocks of ``BLOCK`` consecutive records; the files' blocks are interleaved
and shuffled in a buffer of ``shuffle_buffer / BLOCK`` blocks; then each window of
``shuffle_buffer`` records is permuted (a seeded permutation, new every epoch), and cut into
batches. A record can end up anywhere in its window, as with a ``shuffle_buffer``-record buffer.

``in_memory`` parses a split once into one tensor per column and then runs the same file
shuffle, interleave, block shuffle, window permutation and batching over record *positions*,
gathering each window from the table: the batches are the streamed pipeline's, record for
record, and epochs after the first cost no read or parse (``cache_fits`` decides when a split
is small enough).
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterable, Mapping

import tensorflow as tf

from twotower_features.errors import MissingFileError, UserError
from twotower_features.spec import Column, FeatureSpec

SPLITS_KEY = "splits"
CATALOG = "catalog"
# the feature spec's column dtypes as TensorFlow dtypes
TF_DTYPES = {"string": tf.string, "float32": tf.float32, "int64": tf.int64}
# records read, interleaved and shuffled together (see the module's docstring)
BLOCK = 64


def feature_description(spec: FeatureSpec, columns: Iterable[str] | None = None) -> dict[str, tf.io.FixedLenFeature]:
    """``tf.io.parse_example`` description of ``columns`` (default: every spec column).

    Every column is required in every record (no default value): a record that lacks one fails
    the parse with the column's name instead of silently producing zeros.
    """
    names = [c.name for c in spec.columns] if columns is None else list(columns)
    return {n: _fixed_len(spec.column(n)) for n in names}


def _fixed_len(col: Column) -> tf.io.FixedLenFeature:
    return tf.io.FixedLenFeature(shape=list(col.shape), dtype=TF_DTYPES[col.dtype])


def split_columns(spec: FeatureSpec, split: str) -> list[str]:
    """The columns that records of ``split`` hold.

    Train/validation records hold every spec column; catalog records hold one row per item:
    ``item_id`` plus every item-tower column.
    """
    if split != CATALOG:
        return [c.name for c in spec.columns]
    item_key = item_id_column(spec)
    return [item_key] + [c.name for c in spec.tower_columns("item") if c.name != item_key]


def item_id_column(spec: FeatureSpec) -> str:
    """Name of the item key: ``item_id``, which must be one of the feature spec's keys."""
    if "item_id" in spec.keys:
        return "item_id"
    raise ValueError(f"feature spec keys {list(spec.keys)} have no 'item_id'; the trainer needs it to name items")


def split_files(feat_dir: str | Path, split: str, spec: FeatureSpec) -> list[str]:
    """The TFRecord shards of ``split``, sorted, from the glob in ``spec.extras['splits']``."""
    splits = spec.extras.get(SPLITS_KEY)
    if not isinstance(splits, dict):
        raise ValueError(f"feature spec in {str(feat_dir)!r} has no extras['{SPLITS_KEY}'] mapping split name -> TFRecord glob")
    if split not in splits:
        raise ValueError(f"split {split!r} is not in the feature spec; expected one of {sorted(splits)}")
    pattern = str(Path(feat_dir) / splits[split])
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise MissingFileError(f"split {split!r}: no TFRecord files match {pattern!r}")
    return files


def shard_files(files: list[str], shard: tuple[int, int], split: str) -> list[str]:
    """Worker ``index``'s share of ``split``'s sorted ``files`` when ``count`` workers split them
    by file (``shard = (index, count)``): files ``index, index + count, index + 2 count, ...``.
    A ``UserError`` when there are fewer files than workers (a worker would have none)."""
    index, count = shard
    if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard!r}")
    if len(files) < count:
        raise UserError(
            f"split {split!r} has {len(files)} TFRecord file(s) for {count} workers: the workers split the files between "
            f"them (worker i reads files i, i+{count}, ...), so each needs at least one; rebuild the features with "
            f"[output] tfrecord_shards >= {count} (a multiple of {count} gives every worker as many files)"
        )
    return files[index::count]


def make_dataset(
    feat_dir: str | Path,
    split: str,
    spec: FeatureSpec,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    columns: Iterable[str] | None = None,
    repeat: bool = False,
    deterministic: bool | None = None,
    shuffle_buffer: int = 10_000,
    shard: tuple[int, int] | None = None,
    in_memory: bool = False,
) -> tf.data.Dataset:
    """Batches of parsed records of ``split`` as dicts ``column name -> tensor [batch, *shape]``.

    ``columns`` defaults to every column that the split's records hold (see ``split_columns``).
    Without ``shuffle`` the order is the sorted file order, then record order within a file
    (files are read one after the other; parsing stays parallel). With ``shuffle``, up to 8
    files are interleaved and records shuffled (by blocks and windows, see the module's
    docstring); ``deterministic`` (default: ``not shuffle``) fixes the interleave order, so
    that with a ``seed`` the order is reproducible too, at a small cost in throughput.
    ``repeat`` repeats the records before batching: every batch is full.
    ``shard = (index, count)`` reads only worker ``index``'s files of ``count`` workers
    (``shard_files``). ``in_memory`` parses the records once, here, and serves the same
    batches from memory (see the module's docstring).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be an integer >= 1, got {shuffle_buffer!r}")
    if deterministic is None:
        deterministic = not shuffle
    description = _split_description(spec, split, columns)
    files = split_files(feat_dir, split, spec)
    if shard is not None:
        files = shard_files(files, shard, split)

    if in_memory:  # the files' records parsed once; each file is then its span of positions
        table, counts = _parse_files(files, description)
        starts = list(itertools.accumulate(counts, initial=0))[:-1]
        ds = tf.data.Dataset.from_tensor_slices((tf.constant(starts, tf.int64), tf.constant(counts, tf.int64)))
        open_file = lambda start, count: tf.data.Dataset.range(start, start + count).batch(BLOCK)  # noqa: E731
        parse = lambda positions: {c: tf.gather(t, positions) for c, t in table.items()}  # noqa: E731
    else:
        ds = tf.data.Dataset.from_tensor_slices(files)
        open_file = lambda f: tf.data.TFRecordDataset(f).batch(BLOCK)  # noqa: E731
        parse = lambda records: tf.io.parse_example(records, description)  # noqa: E731
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    # positions interleave in order without threads (a deterministic parallel interleave
    # yields the same order; for files, the reads overlap)
    parallel = {} if in_memory else {"num_parallel_calls": tf.data.AUTOTUNE, "deterministic": deterministic}
    ds = ds.interleave(open_file, cycle_length=min(len(files), 8) if shuffle else 1, block_length=1, **parallel)
    if shuffle:
        ds = ds.shuffle(max(1, shuffle_buffer // BLOCK), seed=seed, reshuffle_each_iteration=True)
        ds = tf.data.Dataset.zip((ds.rebatch(shuffle_buffer), tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)))
        ds = ds.map(_permuted, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    elif in_memory:
        ds = ds.rebatch(shuffle_buffer)
    if in_memory:  # one gather per window of positions (per batch, the gathers cost as much as training)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.rebatch(batch_size)
    if not in_memory:
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return ds.prefetch(tf.data.AUTOTUNE)


def _permuted(window: tf.Tensor, draw: tf.Tensor) -> tf.Tensor:
    """``window``'s elements in a permutation drawn from ``draw`` (one draw per window)."""
    seed = tf.stack([draw, tf.constant(0, tf.int64)])
    return tf.gather(window, tf.argsort(tf.random.stateless_uniform(tf.shape(window)[:1], seed=seed)))


def _split_description(spec: FeatureSpec, split: str, columns: Iterable[str] | None) -> dict[str, tf.io.FixedLenFeature]:
    """``feature_description`` of ``columns`` (default: all ``split``'s records hold), refusing a
    column its records do not hold."""
    held = split_columns(spec, split)
    names = held if columns is None else list(columns)
    missing = [n for n in names if n not in held]
    if missing:
        raise ValueError(f"split {split!r} records do not hold column(s) {missing}; they hold {held}")
    return feature_description(spec, names)


def _parse_files(files: list[str], description: dict[str, tf.io.FixedLenFeature]) -> tuple[dict[str, tf.Tensor], list[int]]:
    """Every record of ``files``, in file then record order, as one tensor per column; and
    each file's record count. Files are read and parsed in parallel, one per core at a time
    (each batch tagged with its file's position, so the order does not depend on the threads)."""
    empty = tf.io.parse_example(tf.constant([], tf.string), description)  # the columns' shapes, should no file hold a record
    parts: list[dict[str, list[tf.Tensor]]] = [{c: [] for c in description} for _ in files]
    counts = [0] * len(files)
    names = tf.constant(files, tf.string)

    def read(i):
        return tf.data.TFRecordDataset(names[i]).batch(8192).map(lambda records: (i, tf.io.parse_example(records, description)))

    lanes = max(1, min(len(files), os.cpu_count() or 1))
    for i, batch in tf.data.Dataset.range(len(files)).interleave(read, cycle_length=lanes, num_parallel_calls=lanes, deterministic=True):
        i = int(i)
        for c in description:
            parts[i][c].append(batch[c])
        counts[i] += int(next(iter(batch.values())).shape[0])
    return {c: tf.concat([empty[c]] + [t for p in parts for t in p[c]], axis=0) for c in description}, counts


def memory_cache_default() -> int:
    """The default of ``twotower train --memory-cache-mb``, in bytes: a quarter of this machine's
    memory. A train split whose files take at most this many bytes is parsed once and trained on
    from memory (``make_dataset(in_memory=True)``); the parsed columns take about as much memory
    as the files take disk."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # no sysconf (not POSIX): the former fixed default
        return 2 << 30


def cache_fits(feat_dir: str | Path, split: str, spec: FeatureSpec, limit: int) -> bool:
    """Whether ``split``'s files take at most ``limit`` bytes (``make_dataset``'s ``in_memory``)."""
    return sum(Path(f).stat().st_size for f in split_files(feat_dir, split, spec)) <= limit


def count_records(feat_dir: str | Path, split: str, spec: FeatureSpec) -> int:
    """Number of records in ``split`` (one pass over the raw bytes, no parsing)."""
    files = split_files(feat_dir, split, spec)
    ds = tf.data.TFRecordDataset(files).batch(4096).map(lambda b: tf.shape(b, out_type=tf.int64)[0])
    return int(ds.reduce(tf.constant(0, tf.int64), lambda acc, n: acc + n).numpy())


# the batch keys of the catalog items sampled as extra softmax negatives: NEGATIVE + column name
NEGATIVE = "negative__"


def read_split(feat_dir: str | Path, split: str, spec: FeatureSpec, columns: Iterable[str]) -> dict[str, tf.Tensor]:
    """Every record of ``split`` in record order, as one tensor per column (for the catalog: a
    table small enough to hold, items x item features)."""
    names = list(columns)
    table, counts = _parse_files(split_files(feat_dir, split, spec), _split_description(spec, split, names)) if names else ({}, [])
    if not sum(counts):
        raise ValueError(f"split {split!r} in {str(feat_dir)!r} has no records")
    return table


def with_sampled_negatives(ds: tf.data.Dataset, catalog: Mapping[str, tf.Tensor], count: int, seed: int) -> tf.data.Dataset:
    """``ds``'s batches, each with ``count`` catalog rows drawn uniformly with replacement
    (``NEGATIVE + column`` keys). The draws are a function of ``seed`` and the batch's position
    only (``Dataset.random`` zipped in): the same every epoch and every run."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    n = int(next(iter(catalog.values())).shape[0])
    table = {k: tf.convert_to_tensor(v) for k, v in catalog.items()}

    def add(batch, draw):
        idx = tf.random.stateless_uniform([count], seed=tf.stack([draw, tf.constant(seed, tf.int64)]), maxval=n, dtype=tf.int64)
        return {**batch, **{NEGATIVE + k: tf.gather(t, idx) for k, t in table.items()}}

    return tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed))).map(add, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
