"""The evaluator's metrics (SPEC, "Metrics"): the seed's six numbers over scored predictions.

Over all rows (sample weights apply here only):

- ``auc``: ``sklearn.metrics.roc_auc_score``.
- ``map``: ``sklearn.metrics.average_precision_score``.

Per user, as in MIND's ``evaluate.py`` (each user's rows are one impression list, ranked by
score), averaged over the users that have at least one positive:

- ``ndcg@5``, ``ndcg@10``: DCG@k / ideal DCG@k, gains ``2^label - 1``, discount
  ``log2(rank + 1)`` with ranks starting at 1.
- ``mrr``: ``sum(label / rank) / sum(label)`` over the whole list (MIND's ``mrr_score``; with
  several positives this is the mean reciprocal rank of the positives, not only the first).
- ``cust_map@10``: AP@10 = ``sum_{rank <= 10} precision@rank * label_rank / min(10, positives)``.

**Ties.** Within a user, rows are ranked by score descending and, among equal scores, by their
original row order (a stable sort). MIND uses ``np.argsort(y_score)[::-1]``, whose order among
ties is an implementation detail of numpy's sort; with tie-free scores both give the same
ranking. ``rows_tied_within_user`` counts the rows that share their score with another row of
the same user, so a model that collapsed to near-constant outputs is visible in the report.

**Counts** (the keys next to the metrics):

- ``rows``, ``users``: all rows / distinct users given (``auc`` and ``map`` use all rows).
- ``rows_scored``, ``users_scored``: rows / users entering the per-user averages, i.e. users
  with at least one positive.
- ``users_skipped_no_positive``, ``rows_skipped``: users without a positive and their rows;
  ideal DCG and MRR are undefined for them.
- ``users_all_positive``: scored users with no negative (their per-user metrics are 1 for any
  model); they are included in the averages, as in MIND, and counted for context.
- ``rows_tied_within_user``: see "Ties".
- ``undefined``: ``{metric: reason}`` for every metric reported as NaN; empty when all are
  defined. AUC and MAP are NaN when the labels hold one class only (both are uninformative
  then; sklearn would raise or return a constant), per-user metrics when no user has a
  positive. In the JSON file NaN is written as ``null``.

The per-user metrics are vectorised: one sort by (user, -score, row), ranks from group
starts, per-user sums with ``np.bincount``; no Python loop per user
(``benchmarks/bench_metrics.py`` compares with a MIND-style loop).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from twotower_features import columns as C
from twotower_features.errors import MissingFileError, UserError
from twotower_features.io import write_json_atomic

SCORE = "score"  # the model's score (logit) column of a predictions table
NDCG_KS = (5, 10)
CUST_MAP_K = 10
# the seed's six metrics: the order ``compute_metrics`` computes them in (over all rows, then per user)
PER_USER_METRICS = ("ndcg@5", "ndcg@10", "mrr", "cust_map@10")
METRIC_KEYS = ("auc", "map", *PER_USER_METRICS)
# the same six in the seed's table order, for printed tables and reports
TABLE_METRICS = ("auc", "ndcg@5", "ndcg@10", "mrr", "map", "cust_map@10")
COUNT_KEYS = (
    "rows",
    "users",
    "rows_scored",
    "users_scored",
    "users_skipped_no_positive",
    "rows_skipped",
    "users_all_positive",
    "rows_tied_within_user",
)
REFERENCE_KINDS = ("random", "popularity", "oracle")
PREDICTION_COLUMNS = (C.USER_ID, C.ITEM_ID, C.LABEL, SCORE)


class MissingColumnsError(UserError, ValueError):
    """A frame or table lacks required columns; the message names them and lists what it has."""


def _as_1d(values: Any, name: str) -> np.ndarray | pd.Series | pd.Index:
    if isinstance(values, (pd.Series, pd.Index)):
        return values
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    return arr


def _labels01(labels: Any, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold numbers 0/1 or booleans, got dtype {arr.dtype}")
    bad = ~((arr == 0) | (arr == 1))
    n_bad = int(bad.sum())
    if n_bad:
        examples = pd.unique(arr[bad])[:5].tolist()
        raise ValueError(f"{name} must be 0 or 1; {n_bad} of {arr.size} values are not (e.g. {examples})")
    return arr.astype(np.int8)


def _finite_scores(scores: Any, name: str) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.dtype.kind not in "iufb":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    n_nan = int(np.isnan(arr).sum())
    n_inf = int(np.isinf(arr).sum())
    if n_nan or n_inf:
        raise ValueError(
            f"{name} must be finite; {n_nan} NaN and {n_inf} infinite values out of {arr.size} rows "
            "(a model that emits NaN has diverged; fix the scores rather than drop the rows)"
        )
    return arr


def _weights(weights: Any, n: int, name: str) -> np.ndarray | None:
    if weights is None:
        return None
    arr = _finite_scores(weights, name)
    if arr.size != n:
        raise ValueError(f"{name} must have one value per row ({n}), got {arr.size}")
    if (arr < 0).any():
        raise ValueError(f"{name} must be >= 0; {int((arr < 0).sum())} values are negative")
    if arr.sum() <= 0:
        raise ValueError(f"{name} must not be all zero")
    return arr


def _ideal_dcg_table(k: int) -> np.ndarray:
    """ideal[m] = DCG of m positives at ranks 1..m = sum_{r=1}^{m} 1 / log2(r + 1), m = 0..k."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])


def _user_score_order(codes: np.ndarray, s: np.ndarray, n_users: int) -> np.ndarray:
    """The rows ordered by user code, then score descending, then row: ``np.lexsort((-s, codes))``
    at a third of its time. The scores become dense ranks (one unstable sort: equal scores get
    one rank), so that a row's place is one integer key, ``(code, rank, row)``; while that
    key fits in 63 bits it is unique and an unstable sort of it is exact, otherwise the row
    is left out and a stable sort keeps the row order among equal keys."""
    n = codes.size
    if n == 0:
        return np.zeros(0, np.int64)
    by_score = np.argsort(s)
    ascending = s[by_score]
    dense = np.empty(n, np.int64)
    dense[by_score] = np.concatenate([[0], np.cumsum(ascending[1:] != ascending[:-1])])
    ranks = int(dense[by_score[-1]]) + 1
    key = codes.astype(np.int64) * ranks + (ranks - 1 - dense)  # higher score, smaller key
    if n_users * ranks * n < 2**63:
        return np.argsort(key * n + np.arange(n, dtype=np.int64))
    return np.argsort(key, kind="stable")


def _per_user(codes: np.ndarray, y: np.ndarray, s: np.ndarray, n_users: int) -> dict[str, Any]:
    """Per-user NDCG@5/10, MRR and AP@10, vectorised; codes are 0..n_users-1, all present."""
    n = codes.size
    order = _user_score_order(codes, s, n_users)  # equal scores keep their original row order
    c = codes[order]
    ys = y[order].astype(np.int64)
    ss = s[order]
    starts = np.flatnonzero(np.concatenate([[True], c[1:] != c[:-1]]))
    sizes = np.diff(np.append(starts, n))
    rank = np.arange(1, n + 1) - np.repeat(starts, sizes)  # 1-based rank within the user

    positives = np.bincount(c, weights=ys, minlength=n_users).astype(np.int64)
    has_pos = positives > 0
    gains = np.exp2(ys) - 1.0
    discounted = gains / np.log2(rank + 1.0)

    out: dict[str, np.ndarray] = {}
    for k in NDCG_KS:
        dcg = np.bincount(c, weights=np.where(rank <= k, discounted, 0.0), minlength=n_users)
        idcg = _ideal_dcg_table(k)[np.minimum(positives, k)]
        out[f"ndcg@{k}"] = dcg[has_pos] / idcg[has_pos]

    rr = np.bincount(c, weights=ys / rank, minlength=n_users)
    out["mrr"] = rr[has_pos] / positives[has_pos]

    cum = np.cumsum(ys)
    hits = cum - np.repeat(cum[starts] - ys[starts], sizes)  # positives at ranks 1..rank
    k = CUST_MAP_K
    ap_num = np.bincount(c, weights=np.where(rank <= k, hits / rank * ys, 0.0), minlength=n_users)
    out[f"cust_map@{k}"] = ap_num[has_pos] / np.minimum(positives[has_pos], k)

    same_user = c[1:] == c[:-1]
    tie = same_user & (ss[1:] == ss[:-1])
    tied = np.zeros(n, dtype=bool)
    tied[1:] |= tie
    tied[:-1] |= tie
    sizes_by_user = np.bincount(c, minlength=n_users)
    return {
        "per_user": out,
        "users_scored": int(has_pos.sum()),
        "rows_scored": int(sizes_by_user[has_pos].sum()),
        "users_all_positive": int((has_pos & (positives == sizes_by_user)).sum()),
        "rows_tied_within_user": int(tied.sum()),
    }


def compute_metrics(user_ids: Any, labels: Any, scores: Any, *, weights: Any = None) -> dict[str, Any]:
    """The seed's six metrics with row and user counts; see the module docstring for every key.

    ``user_ids``, ``labels`` (0/1 or bool), ``scores`` (finite) and the optional ``weights``
    (>= 0, used by AUC and MAP only, as ``sample_weight``) are 1-D numpy arrays, pandas Series
    or sequences of one length.
    """
    users = _as_1d(user_ids, "'user_ids'")
    y = _labels01(labels, "'labels'")
    s = _finite_scores(scores, "'scores'")
    n = len(users)
    if y.size != n or s.size != n:
        raise ValueError(
            f"'user_ids', 'labels' and 'scores' must have one length, got {n}, {y.size} and {s.size}"
        )
    if n == 0:
        raise ValueError("'user_ids', 'labels' and 'scores' are empty: there is nothing to evaluate")
    w = _weights(weights, n, "'weights'")
    codes, uniques = pd.factorize(users, use_na_sentinel=True)
    n_null = int((codes < 0).sum())
    if n_null:
        raise ValueError(f"'user_ids' must not be null; {n_null} of {n} rows have a null user id")
    n_users = len(uniques)

    result: dict[str, Any] = {}
    undefined: dict[str, str] = {}
    n_pos = int(y.sum())
    if n_pos in (0, n):
        reason = f"labels hold one class only (all {int(n_pos == n)}): AUC and MAP are undefined"
        result["auc"] = result["map"] = math.nan
        undefined["auc"] = undefined["map"] = reason
    else:
        result["auc"] = float(roc_auc_score(y, s, sample_weight=w))
        result["map"] = float(average_precision_score(y, s, sample_weight=w))

    per = _per_user(codes.astype(np.int64), y, s, n_users)
    for key in PER_USER_METRICS:
        values = per["per_user"][key]
        if values.size:
            result[key] = float(values.mean())
        else:
            result[key] = math.nan
            undefined[key] = "no user has a positive label"

    result.update(
        rows=n,
        users=n_users,
        rows_scored=per["rows_scored"],
        users_scored=per["users_scored"],
        users_skipped_no_positive=n_users - per["users_scored"],
        rows_skipped=n - per["rows_scored"],
        users_all_positive=per["users_all_positive"],
        rows_tied_within_user=per["rows_tied_within_user"],
        undefined=undefined,
    )
    return result


def _require_columns(df: pd.DataFrame, required: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"'df' must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise MissingColumnsError(f"{what} is missing column(s) {missing}; it has {list(df.columns)}")


def _numeric_column(df: pd.DataFrame, col: str) -> np.ndarray:
    """The column as float64 with nulls as NaN; a non-numeric column is a TypeError naming it."""
    series = df[col]
    if series.dtype.kind not in "iufb":
        raise TypeError(f"column '{col}' must be numeric or boolean, got dtype {series.dtype}")
    return series.to_numpy(dtype=np.float64, na_value=np.nan)


def metrics_from_frame(
    df: pd.DataFrame,
    user_col: str = C.USER_ID,
    label_col: str = C.LABEL,
    score_col: str = SCORE,
    *,
    weight_col: str | None = None,
) -> dict[str, Any]:
    """``compute_metrics`` over a pandas frame; errors name the offending column."""
    required = [user_col, label_col, score_col] + ([weight_col] if weight_col else [])
    _require_columns(df, required, "the predictions frame")
    n_null = int(df[user_col].isna().sum())
    if n_null:
        raise ValueError(f"column '{user_col}' must not be null; {n_null} of {len(df)} rows are null")
    y = _labels01(_numeric_column(df, label_col), f"column '{label_col}'")
    s = _finite_scores(_numeric_column(df, score_col), f"column '{score_col}'")
    w = _numeric_column(df, weight_col) if weight_col else None
    if w is not None:
        w = _weights(w, len(df), f"column '{weight_col}'")
    return compute_metrics(df[user_col], y, s, weights=w)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def write_metrics_json(metrics: Mapping[str, Any], out: str | os.PathLike) -> Path:
    """Write ``metrics`` as JSON (NaN as null) atomically (``twotower_features.io``)."""
    return write_json_atomic(out, _json_safe(dict(metrics)))


class PredictionsError(UserError, ValueError):
    """A predictions table that cannot be read or scored; the message names its path."""


class PredictionsNotFoundError(PredictionsError, MissingFileError):
    """The predictions path does not exist."""


_PREDICTIONS_EXPECTED = f"expected a Parquet file or folder with columns {', '.join(PREDICTION_COLUMNS)}"


def read_predictions(predictions: str | os.PathLike) -> pd.DataFrame:
    """A predictions table (parquet file or folder of parts, e.g. Spark output) as pandas.

    Reads ``user_id``, ``item_id``, ``label``, ``score`` only; files whose names start with
    ``_`` or ``.`` (``_SUCCESS``, ``.crc``) are ignored, as by Spark. A path that does not
    exist, is not Parquet, holds no Parquet file or lacks a column raises a ``PredictionsError``
    (``MissingColumnsError`` for the columns) naming the path and what is expected.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds

    path = Path(predictions)
    if not path.exists():
        raise PredictionsNotFoundError(f"'predictions' path does not exist: {path}; {_PREDICTIONS_EXPECTED}")

    def unreadable(e: Exception) -> PredictionsError:
        text = str(e)
        source = re.search(r"Parquet input source '(.*?)': Parquet magic bytes not found", text)
        if source and Path(source.group(1)) == path:
            return PredictionsError(f"predictions table {path} is not a Parquet file; {_PREDICTIONS_EXPECTED}")
        if source:
            return PredictionsError(f"predictions table {path}: {source.group(1)} is not a Parquet file; {_PREDICTIONS_EXPECTED}")
        reason = text.splitlines()[0][:300] if text else type(e).__name__
        return PredictionsError(f"predictions table {path} is not readable as Parquet ({reason}); {_PREDICTIONS_EXPECTED}")

    try:
        dataset = ds.dataset(str(path), format="parquet", partitioning="hive")
    except (pa.ArrowException, OSError) as e:
        raise unreadable(e) from None
    if not dataset.files:
        raise PredictionsError(f"predictions table {path} holds no Parquet files; {_PREDICTIONS_EXPECTED}")
    names = dataset.schema.names
    missing = [c for c in PREDICTION_COLUMNS if c not in names]
    if missing:
        raise MissingColumnsError(
            f"predictions table {path} is missing column(s) {missing}; it has {names}; {_PREDICTIONS_EXPECTED}"
        )
    try:
        return dataset.to_table(columns=list(PREDICTION_COLUMNS)).to_pandas()
    except (pa.ArrowException, OSError) as e:  # a later part that is not Parquet, or of another schema
        raise unreadable(e) from None


def evaluate_predictions_file(predictions: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Metrics of a predictions table (``user_id``, ``item_id``, ``label``, ``score``), written
    to ``out`` as JSON and returned; backs ``twotower metrics --predictions FILE --out FILE.json``.

    Every refusal is a ``UserError`` naming the file: ``read_predictions``'s, and a column the
    metrics cannot use (a label that is not 0/1, a null ``user_id``, a NaN or non-numeric score).
    """
    frame = read_predictions(predictions)
    try:
        metrics = metrics_from_frame(frame)
    except UserError:
        raise
    except (ValueError, TypeError) as e:  # the checks of the columns' values, which name the column
        raise PredictionsError(f"predictions table {Path(predictions)}: {e}") from None
    write_metrics_json(metrics, out)
    return metrics


def reference_scores(
    df: pd.DataFrame,
    kind: str,
    *,
    train_item_counts: Mapping[Any, float] | pd.Series | None = None,
    ground_truth: str | Sequence[float] | np.ndarray | pd.Series | None = None,
    seed: int = 0,
    item_col: str = C.ITEM_ID,
) -> np.ndarray:
    """Scores of a reference model for the rows of ``df``, to score in the same run as a model.

    - ``random``: uniform [0, 1) from ``numpy.random.default_rng(seed)``; AUC ~ 0.5.
    - ``popularity``: the item's interaction count in the train window, from
      ``train_item_counts`` (mapping or Series item_id -> count); items absent from it score 0.
      Many rows tie; ties are ranked by row order (see the module docstring).
    - ``oracle``: the true engagement probability, ``ground_truth`` being a column name of
      ``df`` (e.g. ``columns.TRUE_PROB`` from the generator) or an array aligned with ``df``.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"'df' must be a pandas DataFrame, got {type(df).__name__}")
    if kind == "random":
        return np.random.default_rng(seed).random(len(df))
    if kind == "popularity":
        if train_item_counts is None:
            raise ValueError("kind='popularity' needs 'train_item_counts' (item_id -> train-window count)")
        _require_columns(df, [item_col], "'df'")
        counts = train_item_counts if isinstance(train_item_counts, pd.Series) else pd.Series(dict(train_item_counts))
        if counts.index.has_duplicates:
            raise ValueError("'train_item_counts' must have one count per item id; its index has duplicates")
        mapped = df[item_col].map(counts)
        return _finite_scores(mapped.fillna(0.0).to_numpy(dtype=np.float64), "'train_item_counts'")
    if kind == "oracle":
        if ground_truth is None:
            raise ValueError(
                "kind='oracle' needs 'ground_truth': a column name of df "
                f"(e.g. '{C.TRUE_PROB}') or an array aligned with df"
            )
        if isinstance(ground_truth, str):
            _require_columns(df, [ground_truth], "'df'")
            values = df[ground_truth].to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = np.asarray(ground_truth, dtype=np.float64)
            if values.shape != (len(df),):
                raise ValueError(f"'ground_truth' must have one value per row of df ({len(df)}), got shape {values.shape}")
        return _finite_scores(values, "'ground_truth'")
    raise ValueError(f"'kind' must be one of {REFERENCE_KINDS}, got {kind!r}")
