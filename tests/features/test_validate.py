"""Quarantine reasons of ``validate.quarantine_interactions`` for ids that would corrupt a vocabulary
file and for items whose embedding is unusable, with ``embeddings.nan_free`` choosing the usable
items as ``pipeline.run_prepare`` does. Every expected reason is written down per row."""
from __future__ import annotations

import datetime as dt

import pytest

from twotower_features import columns as C
from twotower_features.embeddings import embedding_lengths, nan_free
from twotower_features.pipeline import _vocabulary
from twotower_features.spec import Column, read_vocabulary
from twotower_features.validate import (
    LINE_BREAKS,
    ContractError,
    check_unique,
    has_line_break,
    line_break_in,
    quarantine_interactions,
)

SCHEMA = "user_id string, item_id string, event_ts timestamp, time_spent double, fraction_watched double, liked boolean, shared boolean, dt date"
ITEMS_SCHEMA = "item_id string, creator_id string, duration_s double, dedup_embedding array<float>, simclr_embedding array<float>"
DAY = dt.date(2026, 7, 4)


def ev(user, item, second, *, time_spent=10.0, ts=True):
    t = dt.datetime(2026, 7, 4, 10, 0, 0) + dt.timedelta(seconds=second)
    return (user, item, t if ts else None, time_spent, 0.5, False, False, DAY)


def reasons(bad) -> dict[tuple, str]:
    return {(r[C.USER_ID], r[C.ITEM_ID], r[C.EVENT_TS].second if r[C.EVENT_TS] else None): r[C.QUARANTINE_REASON] for r in bad.collect()}


def test_line_break_characters_are_those_splitlines_breaks_on():
    for c in LINE_BREAKS:
        assert len(f"a{c}b".splitlines()) == 2, repr(c)
    assert not has_line_break("u 1\t-é") and has_line_break("u\n1") and has_line_break("u\r1")


def test_the_spark_check_finds_the_line_breaks_has_line_break_finds(spark):
    values = [None, "", "u 1\t-\u00e9", "plain", "\u2027\u202a\u0084\u0086\x1f", *LINE_BREAKS, *(f"a{c}b" for c in LINE_BREAKS), "x\u2028"]
    got = [r[0] for r in spark.createDataFrame([(v,) for v in values], "v string").select(line_break_in("v")).collect()]
    assert got == [None if v is None else has_line_break(v) for v in values]


def test_ids_with_a_line_break_are_quarantined_and_the_vocabulary_has_one_line_per_id(spark, tmp_path):
    rows = [
        ev("u1", "i1", 1),
        ev("u2", "i1", 2),
        ev("u\n3", "i1", 3),  # bad_id_characters
        ev("u4", "i\r1", 4),  # bad_id_characters (the item id)
        ev("u5\r\n", "i1", 5),  # bad_id_characters
        ev("u\n6", "i1", 6, ts=False),  # null_id comes first
        ev("u\n7", "i1", 7, time_spent=-1.0),  # bad_id_characters comes before bad_time_spent
        ev("u8\u2028", "i1", 8),  # a line break for str.splitlines too
    ]
    items = spark.createDataFrame([("i1",), ("i\r1",)], "item_id string")
    valid, bad = quarantine_interactions(spark.createDataFrame(rows, SCHEMA), items)
    assert reasons(bad) == {
        ("u\n3", "i1", 3): "bad_id_characters",
        ("u4", "i\r1", 4): "bad_id_characters",
        ("u5\r\n", "i1", 5): "bad_id_characters",
        ("u\n6", "i1", None): "null_id",
        ("u\n7", "i1", 7): "bad_id_characters",
        ("u8\u2028", "i1", 8): "bad_id_characters",
    }
    assert sorted(r[C.USER_ID] for r in valid.collect()) == ["u1", "u2"]

    # the vocabulary as run_tfrecords writes it, read back as the trainer reads it
    col = Column(C.USER_ID, "string", (), "user", "id", vocabulary_file="user_id.txt")

    def written(frame) -> tuple[list[str], list[str]]:
        words, _ = _vocabulary(frame, C.USER_ID, 1)
        (tmp_path / "user_id.txt").write_text("\n".join(words) + ("\n" if words else ""))
        return words, read_vocabulary(tmp_path, col)

    # unquarantined, 8 distinct ids read back as 13 lines (u\n3, u5\r\n, u\n6, u\n7 and u8\u2028 break)
    words, lines = written(spark.createDataFrame(rows, SCHEMA))
    assert len(words) == 8 and len(lines) == 13
    # after the quarantine: one line per id
    words, lines = written(valid)
    assert lines == words == ["u1", "u2"]


def test_vocabulary_keeps_the_most_frequent_values_up_to_its_cap(spark):
    # counts by hand: a 3, b 2, c 2, d 1, e 1 (and a null, never a value)
    ids = ["a", "a", "a", "b", "b", "c", "c", "d", "e", None]
    frame = spark.createDataFrame([(u,) for u in ids], "user_id string")
    assert _vocabulary(frame, C.USER_ID, 1) == (["a", "b", "c", "d", "e"], 0)  # ties by value
    assert _vocabulary(frame, C.USER_ID, 1, 3) == (["a", "b", "c"], 2)
    assert _vocabulary(frame, C.USER_ID, 1, 2) == (["a", "b"], 3)  # b and c tie: b by value
    assert _vocabulary(frame, C.USER_ID, 2, 3) == (["a", "b", "c"], 0)  # exactly 3 qualify
    assert _vocabulary(frame, C.USER_ID, 2, 10) == (["a", "b", "c"], 0)


def test_check_unique_names_the_first_repeated_keys_and_lets_null_keys_through(spark):
    d1, d2 = dt.date(2026, 7, 3), dt.date(2026, 7, 4)
    rows = [
        ("u1", d1), ("u1", d2), ("u2", d1),  # no repeat of (user_id, dt); u1 twice by user_id
        (None, d1), (None, d1), ("u3", None), ("u3", None),  # a null in the key: joins nothing
    ]
    frame = spark.createDataFrame(rows, "user_id string, dt date")
    assert check_unique(frame, [C.USER_ID, C.DT], "user_stats (s)", rerun_from="examples") is None
    with pytest.raises(ContractError) as e:
        check_unique(frame, [C.USER_ID], "users (p)", rerun_from="examples")
    # u1 has 2 rows; u3's two rows count too (only a null in the key itself lets a row through)
    assert str(e.value) == (
        "table 'users (p)' repeats user_id 'u1' (2 rows), 'u3' (2 rows): each user_id needs one row, "
        "or the join on it copies example rows; deduplicate the table and rerun from 'examples'"
    )
    repeated = spark.createDataFrame(rows + [("u2", d1)] * 2 + [("u1", d2), ("u0", d2), ("u0", d2), ("u4", d1), ("u4", d1)], "user_id string, dt date")
    with pytest.raises(ContractError) as e:
        check_unique(repeated, [C.USER_ID, C.DT], "user_stats (s)", rerun_from="examples")
    # in key order: (u0, d2) 2 rows, (u1, d2) 2, (u2, d1) 3; (u4, d1) is the "more"
    assert str(e.value).startswith(
        "table 'user_stats (s)' repeats (user_id, dt) ('u0', 2026-07-04) (2 rows), ('u1', 2026-07-04) (2 rows), "
        "('u2', 2026-07-03) (3 rows) and more: each (user_id, dt) needs one row"
    )


@pytest.fixture(scope="module")
def items(spark):
    return spark.createDataFrame(
        [
            ("i1", "c1", 30.0, [1.0, 2.0, 3.0], [1.0]),
            ("i2", "c1", 30.0, None, [1.0]),  # null embedding
            ("i3", "c2", 30.0, [1.0, float("nan"), 3.0], [1.0]),  # NaN
            ("i4", "c2", 30.0, [float("inf"), 2.0, 3.0], [1.0]),  # Inf
            ("i5", "c3", 30.0, [1.0, 2.0], [1.0]),  # 2 values, the others 3
            ("i6", "c3", 30.0, [1.0, None, 3.0], [1.0]),  # a null value
            ("i7", "c\n7", 30.0, [1.0, 2.0, 3.0], [1.0]),  # a good embedding, a creator id with a line break
            ("i8", "c4", 30.0, [4.0, 5.0, 6.0], [float("nan")]),  # only the simclr embedding, not needed, holds NaN
        ],
        ITEMS_SCHEMA,
    )


def test_embedding_lengths_is_the_length_most_items_have(spark, items):
    # dedup lengths of the non-null rows: 3 x6 (i1, i3, i4, i6, i7, i8), 2 x1 (i5)
    assert embedding_lengths(items, ["dedup"]) == {"dedup": 3}
    tie = spark.createDataFrame([("a", None, 1.0, [1.0, 2.0], [1.0]), ("b", None, 1.0, [1.0], [1.0])], ITEMS_SCHEMA)
    assert embedding_lengths(tie, ["dedup", "simclr"]) == {"dedup": 2, "simclr": 1}  # a tie goes to the longer
    nothing = spark.createDataFrame([("a", None, 1.0, None, None)], ITEMS_SCHEMA)
    assert embedding_lengths(nothing, ["dedup"]) == {"dedup": None}


def test_usable_items_are_the_finite_full_length_ones(items):
    good = sorted(r[C.ITEM_ID] for r in items.filter(nan_free(items, ["dedup"])).collect())
    assert good == ["i1", "i7", "i8"]
    # simclr: every one has 1 finite value except i8
    assert sorted(r[C.ITEM_ID] for r in items.filter(nan_free(items, ["simclr"])).collect()) == ["i1", "i2", "i3", "i4", "i5", "i6", "i7"]


# one row per item, plus one of an item absent from the items table and one that breaks two rules
ITEM_ROWS = [ev("u1", f"i{k}", k) for k in range(1, 9)] + [ev("u1", "ghost", 9), ev("u2", "i3", 10, time_spent=-1.0)]


def test_items_with_a_bad_embedding_or_creator_get_their_own_reason(spark, items):
    good = items.filter(nan_free(items, ["dedup"])).select(C.ITEM_ID)
    valid, bad = quarantine_interactions(spark.createDataFrame(ITEM_ROWS, SCHEMA), good, known_items=items)
    assert reasons(bad) == {
        ("u1", "i2", 2): "bad_item_embedding",  # null
        ("u1", "i3", 3): "bad_item_embedding",  # NaN
        ("u1", "i4", 4): "bad_item_embedding",  # Inf
        ("u1", "i5", 5): "bad_item_embedding",  # short
        ("u1", "i6", 6): "bad_item_embedding",  # null value
        ("u1", "i7", 7): "bad_id_characters",  # its creator_id
        ("u1", "ghost", 9): "unknown_item",  # not in the items table
        ("u2", "i3", 10): "bad_time_spent",  # the row's own fault comes first
    }
    assert sorted(r[C.ITEM_ID] for r in valid.collect()) == ["i1", "i8"]


def test_without_known_items_an_unusable_item_is_unknown_as_before(spark, items):
    good = items.filter(nan_free(items, ["dedup"])).select(C.ITEM_ID)
    valid, bad = quarantine_interactions(spark.createDataFrame(ITEM_ROWS, SCHEMA), good)
    expected = {("u1", f"i{k}", k): "unknown_item" for k in (2, 3, 4, 5, 6)}
    expected |= {("u1", "ghost", 9): "unknown_item", ("u2", "i3", 10): "bad_time_spent"}
    # i7's creator is not seen without known_items: its rows pass (run_tfrecords refuses the vocabulary)
    assert reasons(bad) == expected
    assert sorted(r[C.ITEM_ID] for r in valid.collect()) == ["i1", "i7", "i8"]


def test_known_items_may_repeat_an_item_and_may_lack_creator_id(spark):
    rows = [ev("u1", "i1", 1), ev("u1", "i2", 2), ev("u1", "i3", 3)]
    good = spark.createDataFrame([("i1",)], "item_id string")
    # i1 twice (two creators, one broken: its rows go), i2 once without a usable embedding
    known = spark.createDataFrame([("i1", "c1"), ("i1", "c\r1"), ("i2", "c2")], "item_id string, creator_id string")
    valid, bad = quarantine_interactions(spark.createDataFrame(rows, SCHEMA), good, known_items=known)
    assert reasons(bad) == {("u1", "i1", 1): "bad_id_characters", ("u1", "i2", 2): "bad_item_embedding", ("u1", "i3", 3): "unknown_item"}
    assert valid.count() == 0
    valid, bad = quarantine_interactions(spark.createDataFrame(rows, SCHEMA), good, known_items=known.select(C.ITEM_ID))
    assert reasons(bad) == {("u1", "i2", 2): "bad_item_embedding", ("u1", "i3", 3): "unknown_item"}
    assert [r[C.ITEM_ID] for r in valid.collect()] == ["i1"]
    with pytest.raises(ValueError, match="known_items must have a column 'item_id'"):
        quarantine_interactions(spark.createDataFrame(rows, SCHEMA), good, known_items=known.select(C.CREATOR_ID))
