"""The label rule is data (`twotower_features/label_rule.py`, built by `labels.rule_column`).

Valid rules: the column built from the parsed rule is checked row by row against Spark's own
reading of the same text (`F.expr(rule)`), an independent method, on interaction rows with
nulls and boundary values; the seed rules also against labels worked out by hand. Refused
rules: the message names the culprit, and nothing of the rule runs.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from twotower_features import columns as C
from twotower_features import label_rule as R
from twotower_features.config import ConfigError, ExperimentConfig, LabelConfig
from twotower_features.labels import (
    LabelRuleError,
    add_label,
    label_column,
    rule_column,
)

SCHEMA = "user_id string, item_id string, event_ts timestamp, time_spent double, fraction_watched double, liked boolean, shared boolean, dt date"
REPO = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 7, 1)
NOON = dt.datetime(2026, 7, 1, 12, 0, 0)

# (user_id, item_id, time_spent, fraction_watched, liked, shared); event_ts NOON + k seconds
ROWS = [
    ("u1", "i1", 10.0, 0.9, False, False),  # fraction exactly 0.9
    ("u2", "i2", 11.0, 0.8, False, False),  # exactly 0.8
    ("u3", "i3", 0.0, 0.0, False, False),  # nothing watched
    ("u1", "i4", 64.0, 0.99, True, False),  # exactly 0.99
    ("u2", "i5", 100.0, 1.5, False, True),  # a replay
    ("u3", "i6", 9.5, 0.5, None, True),  # liked unknown
    ("u1", "i7", None, None, True, None),  # time, fraction and shared unknown
    ("it's", "i8", 3.0, 0.95, None, None),
    (None, "i9", 10.0, 0.9000001, False, None),
    ("u4", "i10", 1.0, 0.05, True, True),
]


@pytest.fixture(scope="module")
def interactions(spark):
    rows = [(u, i, NOON + dt.timedelta(seconds=k), t, fw, lk, sh, DAY if k % 2 == 0 else DAY + dt.timedelta(days=1)) for k, (u, i, t, fw, lk, sh) in enumerate(ROWS)]
    return spark.createDataFrame(rows, SCHEMA)


# ------------------------------------------------------------------------------ same as Spark SQL
SEEDS = [
    "liked OR shared OR fraction_watched > 0.8",
    "fraction_watched > 0.9",
    "fraction_watched > 0.99 OR liked OR shared",
]
VALID = SEEDS + [
    # precedence: AND before OR; NOT takes the whole comparison; a predicate after a comparison
    "liked OR shared AND fraction_watched > 0.9",
    "(liked OR shared) AND fraction_watched > 0.9",
    "NOT liked = shared",
    "NOT liked AND shared",
    "NOT NOT liked",
    "fraction_watched > 0.8 IS NULL",
    "liked = shared = false",
    # comparisons, their spellings, case and back-quotes
    "fraction_watched >= 0.9 AND time_spent <= 10 AND item_id != 'i2' AND item_id <> 'i3'",
    "fraction_watched == 0.9 OR time_spent < 1 OR fraction_watched = 1.5",
    "`fraction_watched` >= .9 and not `Liked`",
    "Fraction_Watched > 1e-3 AND LIKED IS NOT NULL",
    # IS NULL, BETWEEN (inclusive), IN (with NULL in the list)
    "liked IS NULL OR shared IS NOT NULL AND fraction_watched IS NULL",
    "fraction_watched BETWEEN 0.8 AND 0.9",
    "fraction_watched NOT BETWEEN 0.5 AND 0.9 OR liked",
    "time_spent BETWEEN 10 AND 10",
    "user_id IN ('u1', 'u3', 'it''s')",
    "user_id NOT IN ('u1', NULL)",
    "fraction_watched IN (0.9, 1, 1.5e0, -1)",
    "fraction_watched NOT IN (0.9, 0.8)",
    # arithmetic: / is fractional (10 / 4 = 2.5 on bigints), %, unary minus, decimal literals
    "floor(time_spent) / 4 = 2.5",
    "time_spent % 7 = 3",
    "-time_spent < -9.75",
    "time_spent * 2 - 1 >= 19 + 0.5 * 2",
    "fraction_watched * 10 - 8 > 0.9 - 0.1 * 2",
    "0.1 + 0.2 = 0.3 AND liked",
    "- - 1 = 1 AND shared",
    "99999999999999999999 > time_spent AND -2147483648 < time_spent",
    # the functions
    "abs(fraction_watched - 1) < 0.05",
    "coalesce(liked, shared, false)",
    "least(fraction_watched, 1) >= 0.9 AND greatest(time_spent, 5) = 10",
    "round(fraction_watched, 1) = 0.9 OR round(time_spent) = 11",
    "round(fraction_watched * 100, -1) = 90",
    "floor(fraction_watched * 10) = 9 OR ceil(time_spent) = 11",
    "sqrt(time_spent) >= 3 AND ln(time_spent + 1) > 2",
    "log10(time_spent) >= 1 OR exp(fraction_watched) > 2.5",
    "pow(fraction_watched, 2) > 0.81",
    "if(liked, fraction_watched > 0.5, fraction_watched > 0.9)",
    "IF(shared IS NULL, 1, 0.5) = 1",
    # dates and timestamps against ISO strings
    "dt = '2026-07-01' AND event_ts >= '2026-07-01 12:00:04'",
]


@pytest.fixture(scope="module")
def both(interactions):
    """Per row (in ROWS order): for each rule, (our column, Spark SQL's reading of the text)."""
    cols = []
    for k, rule in enumerate(VALID):
        cols += [rule_column(R.parse(rule)).alias(f"ours{k}"), F.expr(rule).alias(f"spark{k}")]
    df = interactions.select(C.ITEM_ID, *cols)
    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    rows = sorted(df.collect(), key=lambda r: int(r[C.ITEM_ID][1:]))
    return types, rows


@pytest.mark.parametrize("k", range(len(VALID)), ids=VALID)
def test_rule_means_what_spark_sql_means(both, k):
    types, rows = both
    ours = [r[f"ours{k}"] for r in rows]
    spark_sql = [r[f"spark{k}"] for r in rows]
    assert ours == spark_sql
    assert types[f"ours{k}"] == types[f"spark{k}"] == "boolean"


def test_the_comparison_rows_tell_rules_apart(both):
    """A comparison that could not fail would let everything through: on these rows all rules
    but two are true on some row and false on another (`user_id NOT IN ('u1', NULL)` is never
    true, the bounds rule never false), and nearly all of them give different columns."""
    _, rows = both
    outcomes = [tuple(r[f"spark{k}"] for r in rows) for k in range(len(VALID))]
    assert sum({True, False} <= set(o) for o in outcomes) == len(VALID) - 2
    assert len(set(outcomes)) >= len(VALID) - 7


@pytest.mark.parametrize(
    "rule,expected",
    [
        # by hand, rows in ROWS order; a NULL rule is label 0
        ("liked OR shared OR fraction_watched > 0.8", [1, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
        ("fraction_watched > 0.9", [0, 0, 0, 1, 1, 0, 0, 1, 1, 0]),
        ("fraction_watched > 0.99 OR liked OR shared", [0, 0, 0, 1, 1, 1, 1, 0, 0, 1]),
    ],
)
def test_seed_rules_by_hand(interactions, rule, expected):
    out = add_label(interactions, LabelConfig(rule)).select(C.ITEM_ID, C.LABEL).collect()
    assert [r[C.LABEL] for r in sorted(out, key=lambda r: int(r[C.ITEM_ID][1:]))] == expected


def test_literals_are_typed_as_spark_sql_types_them(spark):
    rules = ["0.9", "1e-3", ".5", "1", "2147483648", "99999999999999999999", "-2147483648", "'it''s'", "TRUE", "NULL", "0.0000001"]
    # the literal alone is not a rule: read it inside one, `coalesce(LITERAL) IS NULL`
    ours = [rule_column(R.parse(f"coalesce({r}) IS NULL").operand.args[0]) for r in rules]
    df = spark.range(1).select(*[c.alias(f"o{k}") for k, c in enumerate(ours)], *[F.expr(r).alias(f"s{k}") for k, r in enumerate(rules)])
    types = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    assert [types[f"o{k}"] for k in range(len(rules))] == [types[f"s{k}"] for k in range(len(rules))]
    assert [types[f"s{k}"] for k in range(len(rules))] == ["decimal(1,1)", "double", "decimal(1,1)", "int", "bigint", "decimal(20,0)", "int", "string", "boolean", "void", "decimal(7,7)"]
    row = df.collect()[0]
    assert [row[f"o{k}"] for k in range(len(rules))] == [row[f"s{k}"] for k in range(len(rules))]


# ------------------------------------------------------------------------------ the tree
def test_precedence_as_spark_sql():
    a_or_bc = R.parse("liked OR shared AND fraction_watched > 0.9")
    assert a_or_bc.op == "OR" and a_or_bc.right.op == "AND"
    not_eq = R.parse("NOT liked = shared")
    assert isinstance(not_eq, R.Unary) and not_eq.op == "NOT" and not_eq.operand.op == "="
    arith = R.parse("time_spent - 1 - 2 * -3 > 0").left  # ((time_spent - 1) - (2 * -3))
    assert arith.op == "-" and arith.left.op == "-" and arith.right.op == "*"
    assert arith.right.right == R.Literal(-3, "int", 21)  # -3 is one literal, as SQL reads it


def test_rule_reads_contract_columns_only():
    assert R.columns(R.parse("liked OR `SHARED` OR coalesce(fraction_watched, 0) > 0.8")) == {"liked", "shared", "fraction_watched"}


# ------------------------------------------------------------------------------ refusals
REFUSED = [
    # (rule, what the message must name)
    ("reflect('org.apache.spark.util.Utils', 'createDirectory', '/tmp/x')", "function 'reflect' (character 1) is not allowed (allowed: abs, coalesce"),
    ("liked OR reflect('java.lang.System', 'exit', 0) = 1", "function 'reflect' (character 10)"),
    ("java_method('java.lang.Math', 'abs', -1) = 1", "function 'java_method'"),
    ("java.lang.System", "'java.' (character 1) is not allowed"),
    ("EXISTS (SELECT 1 FROM parquet.`/tmp`)", "'EXISTS' (character 1) is not allowed: a rule is a boolean expression over the interaction columns"),
    ("parquet.`/tmp/x` IS NULL", "'parquet.'"),
    ("liked OR (SELECT true)", "'SELECT' (character 11) is not allowed"),
    ("rand() > 0.5", "function 'rand'"),
    ("current_date() = dt", "'current_date' (character 1)"),
    ("watch_pct > 0.5", "unknown column 'watch_pct' (character 1) (the interaction contract has: user_id, item_id, event_ts"),
    ("liked; DROP TABLE x", "';' (character 6)"),
    ("liked -- comment", "'--' (character 7) is not allowed: comments"),
    ("liked /*+ hint */", "'/*' (character 7)"),
    ("transform(array(1), x -> x + 1)", "function 'transform'"),
    ("fraction_watched -> 1", "'->' (character 18) is not allowed: lambdas"),
    ("", "the rule is empty"),
    ("user_id = 'abc", "\"'abc\" (character 11) is not allowed: an unterminated string"),
    ("user_id = `abc", "unterminated back-quoted name"),
    ("count(*) > 0", "function 'count'"),
    ("coalesce(*)", "the wildcard '*' (character 10)"),
    ("liked || shared", "'||' (character 7)"),
    ("!liked", "'!' (character 1) is not allowed: write NOT"),
    ("liked <=> shared", "'<=>'"),
    ("user_id = \"u1\"", "'\"' (character 11) is not allowed: write strings in single quotes"),
    ("user_id = 'a\\'b'", "backslashes are not allowed"),
    ("1L > 0", "'1L' (character 1)"),
    ("x'41' = user_id", "typed or prefixed literal \"x'41'\""),
    ("DATE '2026-07-01' = dt", "'DATE' (character 1)"),
    ("user_id LIKE 'u%'", "'LIKE' (character 9)"),
    ("liked IS TRUE", "unexpected 'TRUE' (character 10)"),
    ("liked AND shared AND", "unexpected end of the rule (character 21)"),
    ("(liked OR shared", "expected ')' to close '('"),
    ("pow(fraction_watched) > 1", "function 'pow' (character 1) takes 2 arguments, got 1"),
    ("round(time_spent, fraction_watched) > 1", "the scale of round"),
    ("user_id IN (item_id)", "IN lists literals only, found 'item_id'"),
    ("time_spent / 0 > 1", "division by zero (character 12)"),
    ("fraction_watched > 1e999", "'1e999' (character 20) is not allowed: the number is out of range"),
    ("time_spent + 1", "the rule must be boolean, it is the result of arithmetic"),
    ("coalesce(2 * 3)", "the rule must be boolean, it is a number"),
    ("liked OR -time_spent", "OR (character 7) needs a condition, got the result of arithmetic"),
    ("liked AND 'yes'", "AND (character 7) needs a condition, got a string ('yes')"),
    ("time_spent + '1' > 2", "'+' (character 12) takes numbers, got a string ('1')"),
    ("abs('1') > 0", "function 'abs' (character 1) takes numbers"),
    ("coalesce(1, 'x') = 1", "function 'coalesce' (character 1) mixes a string ('x') with a number (1)"),
    ("x" * 2001, "2001 characters long, more than 2000"),
]


@pytest.mark.parametrize("rule,culprit", REFUSED, ids=[r[:40] for r, _ in REFUSED])
def test_refused_rule_names_the_culprit(rule, culprit):
    with pytest.raises(LabelRuleError) as err:
        R.parse(rule)
    assert str(err.value).startswith("label.rule: ")
    assert culprit in str(err.value)
    # the config refuses it at load, as a ConfigError naming the key
    with pytest.raises(ConfigError, match="^(label.rule: |config 'label.rule')"):
        ExperimentConfig.from_dict({"label": {"rule": rule}})


def test_deep_nesting_fails_fast_with_a_message():
    for rule, message in [
        ("(" * 10_000 + "liked" + ")" * 10_000, "more than 2000"),
        ("(" * 51 + "liked" + ")" * 51, re.escape("more than 50 deep (character 51)")),
        ("abs(" * 60 + "1" + ")" * 60 + " > 0", "more than 50 deep"),
        ("NOT " * 300 + "liked", "more than 100 operations"),
        (" OR ".join(["liked"] * 150), "more than 100 operations"),
    ]:
        start = time.perf_counter()
        with pytest.raises(LabelRuleError, match=message):
            R.parse(rule)
        assert time.perf_counter() - start < 1.0
    assert isinstance(R.parse("(" * 45 + "liked" + ")" * 45), R.Col)


def test_config_refuses_a_bad_rule_before_any_spark():
    """In a fresh interpreter: loading the config refuses the rule with a ConfigError naming
    label.rule, and Spark was never imported."""
    script = (
        "import json, sys\n"
        "from twotower_features.config import ConfigError, ExperimentConfig\n"
        "try:\n"
        "    ExperimentConfig.from_dict({'label': {'rule': \"liked OR reflect('java.lang.System', 'exit', 0) = 1\"}})\n"
        "    out = 'accepted'\n"
        "except ConfigError as e:\n"
        "    out = str(e)\n"
        "print(json.dumps([out, 'pyspark' in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    message, spark_loaded = json.loads(done.stdout)
    assert message.startswith("label.rule: function 'reflect' (character 10) is not allowed")
    assert spark_loaded is False


# ------------------------------------------------------------------------------ nothing runs
def test_a_refused_rule_runs_nothing(spark, interactions, tmp_path):
    root = tmp_path / "made_by_rule"
    rule = f"reflect('org.apache.spark.util.Utils', 'createDirectory', '{root}', 'x') IS NOT NULL"
    with pytest.raises(LabelRuleError, match="function 'reflect'"):
        label_column(rule, interactions)
    with pytest.raises(ConfigError, match="function 'reflect'"):
        LabelConfig(rule)
    assert not root.exists()
    # the control: the same text given to Spark's SQL parser does create the directory
    spark.range(1).select(F.expr(rule)).collect()
    assert root.is_dir() and len(list(root.iterdir())) == 1


# ------------------------------------------------------------------------------ label_column
def test_label_column_checks_the_frame(interactions):
    # a string against a number: accepted at config load (the column's type is not known
    # there), refused once the frame says fraction_watched is a double
    cfg = LabelConfig("fraction_watched > '0.9'")
    with pytest.raises(LabelRuleError, match=r"'>' \(character 18\) mixes a string \('0.9'\) with a number \(fraction_watched\)"):
        add_label(interactions, cfg)
    with pytest.raises(LabelRuleError, match=r"mixes a string \('u1'\) with a boolean \(liked\)"):
        label_column("liked = 'u1'", interactions)
    with pytest.raises(LabelRuleError, match=r"mixes a string \(user_id\) with a number \(5\)"):
        label_column("user_id = 5", interactions)
    with pytest.raises(LabelRuleError, match=r"reads \['shared'\], which the interactions table lacks"):
        label_column("liked OR shared", interactions.drop(C.SHARED))
    with pytest.raises(LabelRuleError, match="the rule must be boolean, it is a number"):
        label_column("coalesce(time_spent, fraction_watched)", interactions)
    # Spark's own typing stays the last check: dt + 1 is a date (DateAdd)
    with pytest.raises(LabelRuleError, match="must be boolean, it is date"):
        label_column("coalesce(dt + 1, dt)", interactions)
    with pytest.raises(LabelRuleError, match="does not type-check"):
        label_column("liked + 1 > 0", interactions)
