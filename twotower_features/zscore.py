"""Normalisation statistics: each column's mean and population standard deviation, fitted
exactly (``fit``), and the z-score applied with them (``apply``).

Spark's ``avg`` and ``stddev_pop`` add doubles in the order its tasks happen to read the rows,
so their last digits follow the partitioning: the sizes of the input table's files, the
number of cores. Here the sums are exact integers. Every finite double is ``q * 2**(e - 53)``
with integers ``|q| < 2**53`` and ``e >= -1073`` (``np.frexp``), so ``x`` is an integer multiple
of ``2**-1126`` and ``x * x`` one of ``2**-2252``. Each task adds its rows' multiples as Python
integers (``Sums.of``, vectorised: ``q`` is cut into 18-bit pieces whose products, summed per
exponent by float64 ``bincount`` over at most ``_CHUNK`` rows, stay below ``2**53``, where
float64 adds integers exactly); the driver adds the tasks' integers and divides once
(``Sums.mean_std``). The fit is therefore a function of the rows alone: any partitioning,
file layout or core count gives the same ``normalisation.json``, bit for bit, and its mean is
the correctly rounded mean of the values.
"""
from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from typing import Iterator, Mapping

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .validate import ContractError

_LINEAR = 1126  # x == k * 2**-_LINEAR for an integer k, for every finite double x
_SQUARE = 2 * _LINEAR
_BINS = 1073 + 1025  # np.frexp's exponents of finite doubles, -1073..1024, from 0
_CHUNK = 1 << 15  # rows per bincount: a piece product is below 2**37, so a bin's sum stays below 2**52
_M18 = (1 << 18) - 1


@dataclasses.dataclass(frozen=True)
class Sums:
    """One column's exact sums: ``n`` finite values, ``linear`` = sum(x) * 2**1126 and
    ``square`` = sum(x * x) * 2**2252 (integers), and ``nonfinite`` NaN or infinite values."""

    n: int = 0
    linear: int = 0
    square: int = 0
    nonfinite: int = 0

    @staticmethod
    def of(values: pa.Array, weights: pa.Array | None = None) -> Sums:
        """The exact sums of a float64 Arrow array (nulls left out), each value counted once or
        ``weights`` times (non-negative integers, no null: a value that stands for that many rows).
        A weighted sum is the sum over the weights' bits: sum(w * x) == sum over k of
        2**k * sum(x where bit k of w is set), each an unweighted exact sum shifted by k."""
        valid = values.is_valid().to_numpy(zero_copy_only=False)
        x = values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)[valid]
        if weights is None:
            w = np.ones(x.size, dtype=np.int64)  # one bit: the loop below is one unweighted sum
        else:
            w = weights.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)[valid]
            if w.size and int(w.min()) < 0:
                raise ValueError(f"weights must not be negative, got {int(w.min())}")
        finite = np.isfinite(x)
        x, wf = x[finite], w[finite]
        linear = square = 0
        for k in range(int(wf.max()).bit_length() if wf.size else 0):
            lin, sq = _exact(x[(wf >> k) & 1 == 1])
            linear += lin << k
            square += sq << k
        return Sums(int(wf.sum()), linear, square, int(w[~finite].sum()))

    def merge(self, other: Sums) -> Sums:
        return Sums(self.n + other.n, self.linear + other.linear, self.square + other.square, self.nonfinite + other.nonfinite)

    def mean_std(self) -> tuple[float, float]:
        """(mean, population standard deviation): the mean rounded once from the exact one, the
        deviation the root of the exact variance (to float64's precision); with no value
        (0.0, 1.0), and a deviation of 0 reported as 1.0 (the z-score then only centres the column)."""
        if self.n == 0:
            return 0.0, 1.0
        mean = float(Fraction(self.linear, self.n << _LINEAR))
        # n * sum(x*x) - sum(x)**2, in units of 2**-2252: exact, and never negative; the
        # standard deviation is its root over n * 2**1126, taken in integers (with 64 more bits,
        # so the root's truncation is below float64's precision) as the variance can exceed float64
        spread = self.n * self.square - self.linear * self.linear
        std = float(Fraction(math.isqrt(spread << 128), (self.n << _LINEAR) << 64))
        return mean, (std if std > 0 else 1.0)


def _exact(x: np.ndarray) -> tuple[int, int]:
    """sum(x) * 2**1126 and sum(x*x) * 2**2252 of finite doubles, exactly."""
    linear = square = 0
    for start in range(0, x.size, _CHUNK):
        lin, sq = _chunk_sums(x[start:start + _CHUNK])
        linear += lin
        square += sq
    return linear, square


def _chunk_sums(x: np.ndarray) -> tuple[int, int]:
    """sum(x) * 2**1126 and sum(x*x) * 2**2252 of at most ``_CHUNK`` finite doubles, exactly."""
    m, e = np.frexp(x)
    q = np.ldexp(m, 53).astype(np.int64)  # x == q * 2**(e - 53), exactly
    a, b, c = ((q >> 36).astype(np.float64), ((q >> 18) & _M18).astype(np.float64), (q & _M18).astype(np.float64))
    # x * 2**1126 == q << (e + 1073) and x*x * 2**2252 == q*q << 2*(e + 1073); q == a*2**36 + b*2**18 + c
    # with |a| < 2**17 and 0 <= b, c < 2**18, so q*q == a*a*2**72 + 2ab*2**54 + (b*b + 2ac)*2**36 + 2bc*2**18 + c*c
    shift = (e + 1073).astype(np.intp)
    bins = np.flatnonzero(np.bincount(shift, minlength=_BINS))

    def per_bin(w: np.ndarray) -> list[int]:
        return [int(v) for v in np.bincount(shift, weights=w, minlength=_BINS)[bins]]

    la, lb, lc = per_bin(a), per_bin(b), per_bin(c)
    sa, sab, sbac, sbc, sc = per_bin(a * a), per_bin(2 * a * b), per_bin(b * b + 2 * a * c), per_bin(2 * b * c), per_bin(c * c)
    linear = square = 0
    for i, s in enumerate(bins.tolist()):
        linear += ((la[i] << 36) + (lb[i] << 18) + lc[i]) << s
        square += ((sa[i] << 72) + (sab[i] << 54) + (sbac[i] << 36) + (sbc[i] << 18) + sc[i]) << (2 * s)
    return linear, square


_TASK_SCHEMA = "column string, n long, nonfinite long, linear string, square string"


def fit(
    df: DataFrame, cols: list[str], origin: Mapping[str, str] | None = None, *, weight: str | None = None, rerun_from: str = "examples"
) -> dict[str, tuple[float, float]]:
    """{column: (mean, population standard deviation)} of ``df``'s numeric ``cols``, exactly
    (see the module): one pass, each task adding its rows' sums, the driver adding the tasks'.
    With ``weight``, each row stands for that many rows (a non-negative integer column: a
    count per key), and the statistics are exactly those of the rows it stands for. A NaN or
    infinite value is the input's mistake: a ``ContractError`` names the column and, from
    ``origin`` ({column: table}), the table it comes from."""
    if not cols:
        return {}
    weights = [F.coalesce(F.col(weight).cast("long"), F.lit(0)).alias(weight)] if weight else []

    def per_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        sums = [Sums() for _ in cols]
        for batch in batches:
            w = batch.column(len(cols)) if weight else None
            sums = [s.merge(Sums.of(batch.column(i), w)) for i, s in enumerate(sums)]
        yield pa.RecordBatch.from_pydict({
            "column": cols, "n": [s.n for s in sums], "nonfinite": [s.nonfinite for s in sums],
            "linear": [str(s.linear) for s in sums], "square": [str(s.square) for s in sums],
        })

    total = {c: Sums() for c in cols}
    for r in df.select(*[F.col(c).cast("double") for c in cols], *weights).mapInArrow(per_task, _TASK_SCHEMA).collect():
        total[r["column"]] = total[r["column"]].merge(Sums(int(r["n"]), int(r["linear"]), int(r["square"]), int(r["nonfinite"])))
    for c, s in total.items():
        if s.nonfinite:
            where = f" (from {origin[c]})" if origin and c in origin else ""
            raise ContractError(
                f"column {c!r}{where} holds {s.nonfinite:,} NaN or infinite value(s) on the train rows: its "
                f"normalisation needs finite numbers; fix or null those values and rerun from {rerun_from!r}"
            )
    return {c: total[c].mean_std() for c in cols}


def apply(df: DataFrame, stats: Mapping[str, tuple[float, float]]) -> DataFrame:
    """Each column of ``stats`` as ``(x - mean) / std`` in float, 0 where it is null."""
    for c, (m, s) in stats.items():
        df = df.withColumn(c, F.coalesce(((F.col(c) - F.lit(m)) / F.lit(s if s > 0 else 1.0)), F.lit(0.0)).cast("float"))
    return df
