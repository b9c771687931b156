"""MLflow tracking of experiment and sweep runs: one MLflow run per finished run record
(``experiment.py``, ``sweep.py``).

The config goes in as flat params, the model row's metrics bare (``auc``), reference rows and
diagnostics prefixed, the code version and data as tags, and the config, manifest, stage reports
and metrics as artifacts. MLflow is imported only when a run is logged.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from twotower_features import layout as L
from twotower_features.errors import UserError
from twotower_model import layout as ML

RUN_FILE = "run.json"
STAGES_FILE = "stages.json"
DEFAULT_MLFLOW_EXPERIMENT = "twotower"


class TrackingError(UserError):
    """MLflow is not installed or refused the run; the message says what to do."""


def default_tracking_uri(root: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite file under ``root``. (MLflow 3 refuses its
    old ``./mlruns`` file store unless ``MLFLOW_ALLOW_FILE_STORE=true``; SQLite is its default.)"""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def metric_name(name: str) -> str:
    """An MLflow metric name (letters, digits, ``_ - . / `` and space): ``ndcg@5`` -> ``ndcg_at_5``."""
    return name.replace("@", "_at_")


def flat_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"window": {"train_days": 7}}`` -> ``{"window.train_days": "7"}``; lists as JSON."""
    out: dict[str, str] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, f"{name}."))
        else:
            out[name] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return out


def tracked_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a run record as MLflow metrics: the model row bare (``auc``), reference
    rows prefixed (``popularity.auc``), diagnostics (``diag.model.recall_at_10``), timings."""
    out: dict[str, float] = {}
    metrics = record.get("metrics") or {}
    for row, values in (metrics.get("rows") or {}).items():
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                out[metric_name(k if row == "model" else f"{row}.{k}")] = float(v)
    diag = metrics.get("diagnostics") or {}
    for row in ("model", "popularity", "random"):
        for k, v in (diag.get(row) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                out[metric_name(f"diag.{row}.{k}")] = float(v)
    for k, v in (record.get("timings") or {}).items():
        out[f"time.{k}_s"] = float(v)
    return out


def log_to_mlflow(record: Mapping[str, Any], run_dir: Path, features_dir: Path, *, tracking_uri: str, experiment: str = DEFAULT_MLFLOW_EXPERIMENT, artifact_root: Path | None = None) -> str:
    """One MLflow run for a finished experiment run: config as params, metrics, tags for code
    version and data, and the config, manifest, stage reports and metrics as artifacts."""
    try:
        import mlflow
    except ImportError:
        raise TrackingError("tracking needs MLflow: pip install 'twotower[catalog]' (mlflow-skinny, sqlalchemy, alembic)") from None
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        # the UI opens a model-training experiment on its runs table (else on a GenAI overview)
        exp_id = client.create_experiment(experiment, artifact_location=location, tags={"mlflow.experimentKind": "custom_model_development"})
    else:
        exp_id = exp.experiment_id
    code = record.get("code_version") or {}
    tags = {
        "experiment": record["experiment"],
        "config_hash": record["config_hash"],
        "data_hash": record["data_hash"],
        "features_dir": str(features_dir),
        "package_version": str(code.get("package_version")),
        "git_dirty": str(code.get("git_dirty")),
        "mlflow.note.content": record.get("description") or "",
    }
    if record.get("stages"):  # an experiment run, which built or reused its features
        tags["features_key"] = record["stages"]["tfrecords"]["key"]
        tags["stages"] = json.dumps({s: v["action"] for s, v in record["stages"].items()})
    if record.get("input_dir"):
        tags["input_dir"] = record["input_dir"]
    if record.get("sweep"):  # a sweep run (sweep.py): its point and the trained towers it shares
        tags.update({f"sweep.{k}": str(record["sweep"][k]) for k in ("name", "point", "trained")})
    if code.get("git_commit"):
        tags["mlflow.source.git.commit"] = code["git_commit"]
    ms = lambda iso: int(_dt.datetime.fromisoformat(iso).timestamp() * 1000)  # noqa: E731
    run = client.create_run(exp_id, start_time=ms(record["started_at"]), run_name=record["run_name"], tags=tags)
    rid = run.info.run_id
    try:
        params = flat_params(record["config"])
        params["model.seed.effective"] = str(record["model_seed"])
        items = list(params.items())
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, v in tracked_metrics(record).items()]
        for i in range(0, max(len(items), len(metrics)), 100):
            client.log_batch(rid, metrics=metrics[i:i + 100], params=[Param(k, v[:6000]) for k, v in items[i:i + 100]])
        for rel, dest in (
            (L.RESOLVED_CONFIG, "features"), (L.MANIFEST, "features"), (L.FEATURE_SPEC, "features"),
            (STAGES_FILE, "features"),
        ):
            if (features_dir / rel).is_file():
                client.log_artifact(rid, str(features_dir / rel), dest)
        if (features_dir / L.REPORTS).is_dir():
            client.log_artifacts(rid, str(features_dir / L.REPORTS), f"features/{L.REPORTS}")
        for rel in (f"eval/{ML.METRICS_FILE}", f"model/{ML.REPORT_FILE}", f"model/{ML.CONFIG_FILE}", RUN_FILE):
            if (run_dir / rel).is_file():
                client.log_artifact(rid, str(run_dir / rel), str(Path(rel).parent) if "/" in rel else None)
        client.set_terminated(rid, "FINISHED", end_time=ms(record["finished_at"]))
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid
