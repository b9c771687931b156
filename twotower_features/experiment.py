"""The experiment catalog runner: features (reusing stage outputs) -> train -> evaluate -> tracking.

``run_experiment`` runs one experiment end to end under a root folder::

    ROOT/features/<key>/     feature outputs, one folder per distinct feature result (see below)
    ROOT/runs/<run name>/    model/, eval/ (metrics.json) and run.json, the run's record
    ROOT/mlflow.db           the default MLflow tracking store (MLFLOW_TRACKING_URI overrides)
    ROOT/mlartifacts/        the artifacts of those MLflow runs

**Stage reuse.** Each feature stage gets a key: a hash of the key of the stage before it, the
config sections the stage reads (``STAGE_SECTIONS``), the facts it derives from other sections
(``_derived``) and, for ``prepare``, the identity of the input tables (path plus Delta version or
Parquet file fingerprint). Equal keys mean equal outputs, so a stage whose key was already built
under ROOT is not run again: its outputs (``STAGE_OUTPUTS``) are hard-linked (copied where links
are impossible) from the folder that built them. A feature folder is named by its last stage's
key, so experiments whose feature configs are equal (the seed's #8, #9, #10 differ only in the
model head) share one folder and build nothing. Each folder's ``stages.json`` records the stages
it holds and where they came from; a stage is recorded only once it has finished, so an
interrupted build resumes at the stage that failed. One runner per ROOT at a time.

The Spark side never imports TensorFlow: the trainer and evaluator are imported when a run
reaches them, and a Spark session is started only when a stage has to be built.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from .config import ExperimentConfig
from .io import parquet_fingerprint

STAGES = ("prepare", "embeddings", "examples", "tfrecords")
INPUT_TABLES = ("interactions", "items", "users", "user_stats", "item_stats", "creator_stats")

# The config sections each stage reads itself; what it reads from other sections is in `_derived`.
# Every section but `model` is in one stage (a test checks); `name` and `description` are in none.
# Statistics read from a database (`stats.source = "postgres"`) are keyed by the `stats` section
# only: their rows for past days are taken as immutable.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("window", "filters", "label", "weight", "quality"),
    "embeddings": ("embeddings",),
    "examples": ("sampling", "history", "stats"),
    "tfrecords": ("features", "output"),
}

# What each stage writes under the feature folder (relative paths). `resolved_config.json` is
# written by the runner for each experiment.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "prepare": (
        "tables/filtered", "tables/quarantine", "artifacts/item_avg_time_spent", "artifacts/item_filter",
        "artifacts/client_filter", "reports/prepare.json",
    ),
    "embeddings": ("artifacts/embeddings.npz", "artifacts/items.parquet", "artifacts/history_matrix.npy", "reports/embeddings.json"),
    "examples": ("tables/examples", "artifacts/normalisation.json", "reports/examples.json"),
    "tfrecords": ("vocab", "tfrecords", "artifacts/item_frequency.csv", "feature_spec.json", "manifest.json", "reports/tfrecords.json"),
}
STAGES_FILE = "stages.json"
RUN_FILE = "run.json"
DEFAULT_MLFLOW_EXPERIMENT = "twotower"


class ExperimentError(RuntimeError):
    """A run cannot go on; the message says what is missing or wrong."""


# ---- keys -------------------------------------------------------------------------------
def _needed_sources(cfg: ExperimentConfig) -> list[str]:
    from .pipeline import _needed_sources

    return _needed_sources(cfg)


def _derived(stage: str, cfg: ExperimentConfig) -> dict[str, Any]:
    """What a stage reads from sections other than its own, as the pipeline reads it."""
    aggs = set(cfg.history.aggregations)
    if stage == "prepare":
        # items whose embeddings hold NaN are quarantined, for the sources the experiment needs
        return {"needed_sources": _needed_sources(cfg)}
    if stage == "embeddings":
        return {
            "needed_sources": _needed_sources(cfg),
            "clusters": "clusters" in aggs,
            "history_matrix_source": cfg.history.source if aggs & {"mean", "concat"} else None,
        }
    if stage == "examples":
        return {"item_emb": "item_emb" in cfg.features.item}
    return {}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(cfg: ExperimentConfig, inputs: Mapping[str, Any]) -> dict[str, str]:
    """The key of each feature stage: equal keys, equal outputs (see the module docstring)."""
    d = cfg.to_dict()
    keys: dict[str, str] = {}
    previous = _digest({"inputs": dict(inputs)})
    for stage in STAGES:
        previous = _digest({
            "upstream": previous,
            "stage": stage,
            "sections": {s: d[s] for s in STAGE_SECTIONS[stage]},
            "derived": _derived(stage, cfg),
        })
        keys[stage] = previous
    return keys


def input_identity(input_dir: str | Path) -> dict[str, Any]:
    """Per input table: absolute path and version (Delta: the last commit in ``_delta_log``;
    Parquet: a hash of file names, sizes and modification times), without a Spark session."""
    out: dict[str, Any] = {}
    for name in INPUT_TABLES:
        path = Path(input_dir, name).resolve()
        if not path.exists():
            out[name] = {"path": str(path), "present": False}
        elif (path / "_delta_log").is_dir():
            commits = [int(p.stem) for p in (path / "_delta_log").glob("*.json") if p.stem.isdigit()]
            out[name] = {"path": str(path), "format": "delta", "version": max(commits) if commits else -1}
        else:
            out[name] = {"path": str(path), "format": "parquet", **parquet_fingerprint(path)}
    return out


# ---- the feature store: folders of feature outputs, shared by stage key ---------------------
def _read_stages(folder: Path) -> dict[str, Any]:
    p = folder / STAGES_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (file or folder) to ``dst``; copy where a link is impossible. A later
    write to ``dst`` replaces files (atomic renames, Delta's new files), never edits the shared ones."""
    if dst.exists() or dst.is_symlink():
        _remove(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link)
    else:
        link(str(src), str(dst))


class FeatureStore:
    """Feature folders under ``root``, one per last-stage key, with stage-level reuse."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, keys: Mapping[str, str]) -> Path:
        return self.root / keys[STAGES[-1]]

    def find(self, stage: str, key: str, *, exclude: Path | None = None) -> Path | None:
        """A folder holding a finished ``stage`` with this ``key`` (not ``exclude``), or None."""
        if not self.root.is_dir():
            return None
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if exclude is not None and folder.resolve() == exclude.resolve():
                continue
            if _read_stages(folder).get(stage, {}).get("key") == key:
                return folder
        return None

    def plan(self, keys: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Per stage: ``done`` (already in the experiment's folder), ``reuse`` (from another
        folder: ``from``) or ``build``. Once a stage is built, every later one is built too."""
        target = self.folder(keys)
        have = _read_stages(target)
        plan: dict[str, dict[str, Any]] = {}
        building = False
        for stage in STAGES:
            if not building and have.get(stage, {}).get("key") == keys[stage]:
                plan[stage] = {"action": "done", "from": have[stage].get("from")}
                continue
            source = None if building else self.find(stage, keys[stage], exclude=target)
            if source is None:
                building = True
                plan[stage] = {"action": "build"}
            else:
                plan[stage] = {"action": "reuse", "from": str(source)}
        return plan

    def build(
        self,
        cfg: ExperimentConfig,
        input_dir: str,
        inputs: Mapping[str, Any],
        *,
        spark_factory: Callable[[], Any],
        log: Callable[[str], None] = print,
    ) -> tuple[Path, dict[str, dict[str, Any]]]:
        """Bring the experiment's feature folder up to date; returns it and what each stage did
        (``action``, ``from``, ``key``, ``seconds``). Spark starts only if a stage is built."""
        keys = stage_keys(cfg, inputs)
        target = self.folder(keys)
        target.mkdir(parents=True, exist_ok=True)
        plan = self.plan(keys)
        record = _read_stages(target)
        for stage in STAGES:
            step = plan[stage]
            t0 = time.monotonic()
            if step["action"] == "reuse":
                src = Path(step["from"])
                for rel in STAGE_OUTPUTS[stage]:
                    if (src / rel).exists():
                        _link_tree(src / rel, target / rel)
                    elif (target / rel).exists():
                        _remove(target / rel)
                log(f"== stage {stage}: reused from {src.name} (key {keys[stage]})")
            elif step["action"] == "build":
                from .pipeline import RUNNERS

                log(f"== stage {stage}: building (key {keys[stage]})")
                RUNNERS[stage](spark_factory(), cfg, input_dir, str(target), log)
            else:
                log(f"== stage {stage}: up to date (key {keys[stage]})")
            if step["action"] != "done":
                record[stage] = {
                    "key": keys[stage], "action": step["action"], "from": step.get("from"),
                    "seconds": round(time.monotonic() - t0, 2),
                    "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                _write_json(target / STAGES_FILE, record)
            step["key"] = keys[stage]
            step["seconds"] = round(time.monotonic() - t0, 2)
            if step["action"] == "done":
                step["built_seconds"] = record[stage].get("seconds")
        return target, plan


# ---- code version and tracking -------------------------------------------------------------
def code_version() -> dict[str, Any]:
    """Package version and, when the package is a git checkout, the commit and whether the
    working tree differs from it."""
    from importlib import metadata

    try:
        version = metadata.version("twotower")
    except metadata.PackageNotFoundError:
        version = None
    out: dict[str, Any] = {"package_version": version, "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


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
        raise ExperimentError("tracking needs MLflow: pip install 'twotower[catalog]' (mlflow-skinny, sqlalchemy, alembic)") from None
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
        "features_key": record["stages"]["tfrecords"]["key"],
        "stages": json.dumps({s: v["action"] for s, v in record["stages"].items()}),
        "input_dir": record["input_dir"],
        "package_version": str(code.get("package_version")),
        "git_dirty": str(code.get("git_dirty")),
        "mlflow.note.content": record.get("description") or "",
    }
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
            ("resolved_config.json", "features"), ("manifest.json", "features"), ("feature_spec.json", "features"),
            (STAGES_FILE, "features"),
        ):
            if (features_dir / rel).is_file():
                client.log_artifact(rid, str(features_dir / rel), dest)
        if (features_dir / "reports").is_dir():
            client.log_artifacts(rid, str(features_dir / "reports"), "features/reports")
        for rel in ("eval/metrics.json", "model/train_report.json", "model/resolved_model_config.json", RUN_FILE):
            if (run_dir / rel).is_file():
                client.log_artifact(rid, str(run_dir / rel), str(Path(rel).parent) if "/" in rel else None)
        client.set_terminated(rid, "FINISHED", end_time=ms(record["finished_at"]))
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


# ---- one run --------------------------------------------------------------------------------
def run_name(cfg: ExperimentConfig, seed: int | None) -> str:
    return cfg.name if seed is None else f"{cfg.name}-seed{seed}"


def run_experiment(
    cfg: ExperimentConfig,
    input_dir: str | Path,
    root: str | Path,
    *,
    spark_factory: Callable[[], Any],
    seed: int | None = None,
    epochs: int | None = None,
    tracking_uri: str | None = None,
    mlflow_experiment: str = DEFAULT_MLFLOW_EXPERIMENT,
    track: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Features (reusing stages built before under ``root``), train, evaluate, record.

    ``seed`` overrides ``model.seed`` (the run is then named ``<name>-seed<seed>``), ``epochs``
    ``model.epochs``. The oracle row is scored when ``input_dir/ground_truth`` exists (the
    generator writes it). Returns the run record, also written to ``ROOT/runs/<run>/run.json``.
    """
    root = Path(root)
    input_dir = str(Path(input_dir).resolve())
    if not Path(input_dir, "interactions").exists():
        raise ExperimentError(f"input folder {input_dir!r} has no 'interactions' table")
    model_cfg = cfg.model
    if seed is not None:
        model_cfg = dataclasses.replace(model_cfg, seed=seed)
    if epochs is not None:
        model_cfg = dataclasses.replace(model_cfg, epochs=epochs)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    name = run_name(cfg, seed)
    started = _dt.datetime.now(_dt.timezone.utc)
    timings: dict[str, float] = {}

    log(f"== experiment {name}: {cfg.description}")
    t0 = time.monotonic()
    inputs = input_identity(input_dir)
    features_dir, stages = FeatureStore(root / "features").build(cfg, input_dir, inputs, spark_factory=spark_factory, log=log)
    _write_json(features_dir / "resolved_config.json", cfg.to_dict())
    timings["features"] = round(time.monotonic() - t0, 2)

    from twotower_model.evaluate import evaluate, format_table
    from twotower_model.metrics import write_metrics_json
    from twotower_model.train import train

    run_dir = root / "runs" / name
    model_dir, eval_dir = run_dir / "model", run_dir / "eval"
    t0 = time.monotonic()
    log("== train")
    train(str(features_dir), str(model_dir), model_cfg, progress=log)
    timings["train"] = round(time.monotonic() - t0, 2)
    t0 = time.monotonic()
    log("== evaluate")
    gt = Path(input_dir, "ground_truth")
    metrics = evaluate(str(features_dir), str(model_dir), str(eval_dir), ground_truth=str(gt) if gt.exists() else None)
    if metrics.get("experiment") != cfg.name:
        # the feature folder may have been built by another experiment with the same data config
        metrics = {**metrics, "features_built_by": metrics.get("experiment"), "experiment": cfg.name}
        write_metrics_json(metrics, eval_dir / "metrics.json")
    metrics = json.loads((eval_dir / "metrics.json").read_text())  # NaN as null, as saved
    timings["evaluate"] = round(time.monotonic() - t0, 2)
    log(format_table(metrics["rows"]))

    manifest_path = features_dir / "manifest.json"
    record: dict[str, Any] = {
        "experiment": cfg.name,
        "run_name": name,
        "description": cfg.description,
        "model_seed": model_cfg.seed,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "data_hash": cfg.data_hash(),
        "input_dir": input_dir,
        "inputs": inputs,
        "features_dir": str(features_dir.resolve()),
        "model_dir": str(model_dir.resolve()),
        "eval_dir": str(eval_dir.resolve()),
        "stages": stages,
        "manifest": json.loads(manifest_path.read_text()) if manifest_path.is_file() else None,
        "metrics": metrics,
        "timings": timings,
        "code_version": code_version(),
    }
    if track:
        uri = tracking_uri or default_tracking_uri(root)
        t0 = time.monotonic()
        _write_json(run_dir / RUN_FILE, record)
        record["mlflow"] = {"tracking_uri": uri, "experiment": mlflow_experiment}
        record["mlflow"]["run_id"] = log_to_mlflow(
            record, run_dir, features_dir, tracking_uri=uri, experiment=mlflow_experiment, artifact_root=root / "mlartifacts",
        )
        log(f"== tracked in MLflow: {uri} experiment {mlflow_experiment!r} run {record['mlflow']['run_id']} ({time.monotonic() - t0:.1f}s)")
    _write_json(run_dir / RUN_FILE, record)
    return record
