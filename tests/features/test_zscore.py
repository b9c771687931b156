"""The exact normalisation fit (``zscore``): its sums against Python's ``Fraction`` (an
independent exact method), its mean and standard deviation worked out by hand, and the fit
in Spark giving the same statistics, bit for bit, for the same rows in any partitioning."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pyarrow as pa
import pytest

from twotower_features import zscore
from twotower_features.validate import ContractError
from twotower_features.zscore import Sums

# values where float addition in another order gives another result, the extremes of float64
# (the smallest subnormal, the largest finite), signed zeros
AWKWARD = [1e16, 1.0, -1e16, 1.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -1.7976931348623157e308, 0.0, -0.0, 0.1, 0.2, 0.3]


def exact(values):
    """(n, sum x, sum x*x) as fractions, by Python's exact rational arithmetic."""
    fr = [Fraction(v) for v in values]
    return len(fr), sum(fr, Fraction(0)), sum((f * f for f in fr), Fraction(0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sums_equal_the_exact_rational_sums_over_the_whole_float_range(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(70_000) * 10.0 ** rng.integers(-320, 300, 70_000)  # more rows than one chunk
    x[:len(AWKWARD)] = AWKWARD
    rng.shuffle(x)
    s = Sums.of(pa.array(x))
    n, lin, sq = exact(x.tolist())
    assert (s.n, s.nonfinite) == (n, 0)
    assert Fraction(s.linear, 2 ** 1126) == lin
    assert Fraction(s.square, 2 ** 2252) == sq


def test_weighted_sums_equal_the_sums_of_the_rows_each_value_stands_for():
    rng = np.random.default_rng(4)
    x = rng.standard_normal(5_000) * 10.0 ** rng.integers(-30, 30, 5_000)
    x[:len(AWKWARD)] = AWKWARD
    w = rng.integers(0, 40, 5_000)
    w[:3] = [2 ** 40 + 5, 0, 1]  # a weight far beyond any chunk, a zero weight
    s = Sums.of(pa.array(x), pa.array(w))
    assert (s.n, s.nonfinite) == (int(w.sum()), 0)
    assert Fraction(s.linear, 2 ** 1126) == sum(Fraction(v) * int(k) for v, k in zip(x.tolist(), w.tolist()))
    assert Fraction(s.square, 2 ** 2252) == sum(Fraction(v) ** 2 * int(k) for v, k in zip(x.tolist(), w.tolist()))
    # against the rows themselves (the weights small enough to repeat them)
    small = w[3:]
    assert Sums.of(pa.array(x[3:]), pa.array(small)) == Sums.of(pa.array(np.repeat(x[3:], small)))
    # a null value leaves its weight out; a NaN counts as many non-finite rows as its weight
    s = Sums.of(pa.array([1.0, None, float("nan"), 3.0], type=pa.float64()), pa.array([2, 5, 3, 1]))
    assert (s.n, s.nonfinite, s.mean_std()[0]) == (3, 3, 5 / 3)


def test_sums_leave_nulls_out_and_count_nan_and_infinities_apart():
    s = Sums.of(pa.array([1.5, None, float("nan"), 2.5, float("inf"), None, float("-inf")], type=pa.float64()))
    assert (s.n, s.nonfinite) == (2, 3)
    assert Fraction(s.linear, 2 ** 1126) == 4 and Fraction(s.square, 2 ** 2252) == Fraction(17, 2)  # 2.25 + 6.25


def test_merged_sums_do_not_depend_on_how_the_rows_are_split():
    x = [random.Random(3).uniform(-1e6, 1e6) for _ in range(5_000)] + AWKWARD
    whole = Sums.of(pa.array(x))
    parts = Sums()
    for lo, hi in ((0, 7), (7, 2_000), (2_000, len(x))):
        parts = parts.merge(Sums.of(pa.array(x[hi - 1:lo - 1 if lo else None:-1])))  # each part reversed
    assert parts == whole


def test_mean_and_std_by_hand():
    # 1, 2, 3, 4: mean 5/2, variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 5/4
    assert Sums.of(pa.array([1.0, 2.0, 3.0, 4.0])).mean_std() == (2.5, math.sqrt(1.25))
    # 1e16, 1, -1e16, 1: the exact mean is 0.5 (left-to-right float addition gives 0.5 only by luck
    # of order: 1e16 + 1 == 1e16); the variance is (2 * (1e16 - 0.5)**2 + 2 * 0.25) / 4
    mean, std = Sums.of(pa.array([1e16, 1.0, -1e16, 1.0])).mean_std()
    assert mean == 0.5
    assert std == math.sqrt(float((2 * (Fraction(10 ** 16) - Fraction(1, 2)) ** 2 + Fraction(1, 2)) / 4))
    # no value: centred on 0 with scale 1; one value: std 0, reported as 1
    assert Sums().mean_std() == (0.0, 1.0)
    assert Sums.of(pa.array([7.25, 7.25])).mean_std() == (7.25, 1.0)
    # the largest finite double and its negative: mean 0, variance beyond float64, std the value itself
    assert Sums.of(pa.array([1.7976931348623157e308, -1.7976931348623157e308])).mean_std() == (0.0, 1.7976931348623157e308)


def test_the_spark_fit_is_the_same_for_any_partitioning_and_matches_the_exact_statistics(spark):
    r = random.Random(5)
    rows = [(r.uniform(0, 1), r.lognormvariate(3, 2) if i % 5 else None, i) for i in range(3_000)] + [(v, 1.0, -i) for i, v in enumerate(AWKWARD) if abs(v) < 1e300]
    df = spark.createDataFrame(rows, "ctr double, timespent double, k long")
    fits = [
        zscore.fit(df.coalesce(1), ["ctr", "timespent"]),
        zscore.fit(df.repartition(7, "k"), ["ctr", "timespent"]),
        zscore.fit(df.orderBy("timespent", "k").repartition(3), ["ctr", "timespent"]),
    ]
    assert fits[0] == fits[1] == fits[2]
    for i, col in enumerate(("ctr", "timespent")):
        n, lin, sq = exact([row[i] for row in rows if row[i] is not None])
        mean = lin / n
        assert fits[0][col] == (float(mean), math.sqrt(float(sq / n - mean * mean)))


def test_the_weighted_spark_fit_equals_the_fit_over_the_rows_the_weights_stand_for(spark):
    r = random.Random(6)
    keys = [(r.uniform(0, 1), r.lognormvariate(3, 2) if i % 7 else None, r.randint(1, 9)) for i in range(400)]
    weighted = spark.createDataFrame(keys, "ctr double, timespent double, n int").repartition(5)
    rows = spark.createDataFrame([(c, t) for c, t, n in keys for _ in range(n)], "ctr double, timespent double").repartition(3)
    assert zscore.fit(weighted, ["ctr", "timespent"], weight="n") == zscore.fit(rows, ["ctr", "timespent"])


def test_a_nan_on_the_train_rows_names_the_column_and_its_table(spark):
    df = spark.createDataFrame([(0.5,), (float("nan"),), (None,)], "user_ctr double")
    with pytest.raises(ContractError, match=r"column 'user_ctr' \(from user_stats\) holds 1 NaN or infinite value\(s\).*rerun from 'examples'"):
        zscore.fit(df, ["user_ctr"], {"user_ctr": "user_stats"})
    assert zscore.fit(df.filter("user_ctr = 0.5 or user_ctr is null"), ["user_ctr"]) == {"user_ctr": (0.5, 1.0)}
