"""Evaluate a trained model on the validation day, next to reference rows from the same run.

Rows: the model, `random` (seeded uniform scores), `popularity` (train-window interaction count
of the item) and, when the generator's ground truth is given, `oracle` (each row's true
engagement probability). All are scored with the same metrics over the same rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from twotower_features import columns as C
from twotower_features.spec import FeatureSpec

from .metrics import compute_metrics, reference_scores

TABLE_METRICS = ("auc", "ndcg@5", "ndcg@10", "mrr", "map", "cust_map@10")


def read_ground_truth(path: str) -> pd.DataFrame:
    """user_id, item_id, event_ts (int64 microseconds), true_engagement_prob."""
    t = pads.dataset(path, format="parquet", partitioning="hive").to_table(columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TS, C.TRUE_PROB])
    ts = t.column(C.EVENT_TS).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return pd.DataFrame({C.USER_ID: t.column(C.USER_ID).to_pandas(), C.ITEM_ID: t.column(C.ITEM_ID).to_pandas(), C.EVENT_TS: ts.to_numpy(), C.TRUE_PROB: t.column(C.TRUE_PROB).to_numpy()})


def item_counts(features_dir: str, spec: FeatureSpec) -> pd.Series:
    f = spec.extras.get("item_frequency_file")
    if not f or not Path(features_dir, f).is_file():
        raise FileNotFoundError(f"no item frequency file in {features_dir!r}: the popularity row needs it")
    df = pd.read_csv(Path(features_dir, f), dtype={C.ITEM_ID: str})
    return df.set_index(C.ITEM_ID)["count"].astype(float)


def evaluate(features_dir: str, model_dir: str, out_dir: str, *, ground_truth: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Predict the validation split, score model and reference rows, write predictions and metrics."""
    from .train import predict

    spec = FeatureSpec.load(features_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = predict(model_dir, features_dir, split="validation")
    preds.to_parquet(out / "predictions.parquet", index=False)
    scores: dict[str, np.ndarray] = {"model": preds["score"].to_numpy()}
    scores["random"] = reference_scores(preds, "random", seed=seed)
    scores["popularity"] = reference_scores(preds, "popularity", train_item_counts=item_counts(features_dir, spec))
    if ground_truth:
        gt = read_ground_truth(ground_truth)
        merged = preds[[C.USER_ID, C.ITEM_ID, C.EVENT_TS]].merge(gt, on=[C.USER_ID, C.ITEM_ID, C.EVENT_TS], how="left", validate="one_to_one")
        missing = int(merged[C.TRUE_PROB].isna().sum())
        if missing:
            raise ValueError(f"{missing} validation rows have no ground-truth row in {ground_truth!r}")
        scores["oracle"] = reference_scores(merged, "oracle", ground_truth=C.TRUE_PROB)
    rows = {name: compute_metrics(preds[C.USER_ID], preds[C.LABEL].astype(int), s) for name, s in scores.items()}
    result = {"experiment": spec.extras.get("experiment"), "rows": rows}
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    return result


def _json_default(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return str(v)


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The seed's table: one line per model/reference, AUC first."""
    head = f"{'':12s}" + "".join(f"{m:>12s}" for m in TABLE_METRICS) + f"{'rows':>10s}{'users':>8s}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        vals = "".join(f"{m.get(k, float('nan')):12.4f}" for k in TABLE_METRICS)
        lines.append(f"{name:12s}{vals}{m.get('rows_scored', m.get('rows', 0)):>10}{m.get('users_scored', 0):>8}")
    return "\n".join(lines)
