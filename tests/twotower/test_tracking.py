"""MLflow tracking helpers: params, metric names, the default store."""
from __future__ import annotations

from twotower import tracking as T


def test_tracking_helpers():
    assert T.flat_params({"window": {"train_days": 7}, "features": {"user": ["a", "b"]}, "name": "n"}) == {
        "window.train_days": "7", "features.user": '["a", "b"]', "name": "n"}
    rec = {"metrics": {"rows": {"model": {"auc": 0.7, "ndcg@5": 0.5, "undefined": {}}, "popularity": {"auc": 0.6, "mrr": None}},
                       "diagnostics": {"model": {"recall@10": 0.2, "cluster_agreement@10": None}, "k": [10]}},
           "timings": {"train": 3.5}}
    assert T.tracked_metrics(rec) == {"auc": 0.7, "ndcg_at_5": 0.5, "popularity.auc": 0.6, "diag.model.recall_at_10": 0.2, "time.train_s": 3.5}


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert T.default_tracking_uri(tmp_path) == "http://tracking:5000"
