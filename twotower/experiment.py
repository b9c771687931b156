"""The experiment catalog runner: features (reusing stage outputs) -> train -> evaluate -> tracking.

``run_experiment`` runs one experiment end to end under a root folder::

    ROOT/features/<key>/     feature outputs, one folder per distinct feature result (see below)
    ROOT/runs/<run name>/    model/, eval/ (metrics.json) and run.json, the run's record
    ROOT/mlflow.db           the default MLflow tracking store (MLFLOW_TRACKING_URI overrides)
    ROOT/mlartifacts/        the artifacts of those MLflow runs

**Stage reuse.** Each feature stage has a key (``fingerprints.stage_keys``, the same key nightly
skips by): the key of the stage before it, the config sections the stage reads and what it
derives from others (the stage table, ``stages.py``), and the fingerprints of the input tables it
reads. Equal keys mean equal outputs, so a stage whose key was already built under ROOT is not
run again: its outputs (the stage table's ``outputs``) are hard-linked (copied where links are
impossible) from the folder that built them. A feature folder is named by its last stage's
key, so experiments whose feature configs are equal (the seed's #8, #9, #10 differ only in the
model head) share one folder and build nothing. Each folder's ``stages.json`` records the stages
it holds and where they came from; a stage is recorded only once it has finished, so an
interrupted build resumes at the stage that failed. One runner per ROOT at a time.

A Spark session is started only when a stage has to be built (or statistics kept in PostgreSQL
have to be fingerprinted).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from twotower_features import layout as L
from twotower_features.config import ExperimentConfig
from twotower_features.errors import UserError
from twotower_features.fingerprint import input_fingerprints
from twotower_features.io import write_json_atomic
from twotower_model import layout as ML
from twotower_model.evaluate import evaluate, format_table
from twotower_model.metrics import write_metrics_json
from twotower_model.train import train

from .fingerprints import code_version, stage_keys
from .stages import STAGES, run_stage
from .staging import link_or_copy
from .tracking import (
    DEFAULT_MLFLOW_EXPERIMENT,
    RUN_FILE,
    STAGES_FILE,
    default_tracking_uri,
    log_to_mlflow,
)


class ExperimentError(UserError):
    """A run cannot go on; the message says what is missing or wrong."""


# ---- the feature store: folders of feature outputs, shared by stage key ---------------------
def _read_stages(folder: Path) -> dict[str, Any]:
    p = folder / STAGES_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _link_tree(src: Path, dst: Path) -> None:
    """``src`` (file or folder) at ``dst``, its large immutable files hard-linked and the rest
    copied (``staging.link_or_copy``), so a later write to ``dst`` never edits the shared ones."""
    if dst.exists() or dst.is_symlink():
        _remove(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=link_or_copy)
    else:
        link_or_copy(src, dst)


class FeatureStore:
    """Feature folders under ``root``, one per last-stage key, with stage-level reuse."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, keys: Mapping[str, str]) -> Path:
        return self.root / keys[STAGES[-1].name]

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
        for stage in (s.name for s in STAGES):
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
        for st in STAGES:
            stage = st.name
            step = plan[stage]
            t0 = time.monotonic()
            if step["action"] == "reuse":
                src = Path(step["from"])
                for rel in st.outputs:
                    if (src / rel).exists():
                        _link_tree(src / rel, target / rel)
                    elif (target / rel).exists():
                        _remove(target / rel)
                log(f"== stage {stage}: reused from {src.name} (key {keys[stage]})")
            elif step["action"] == "build":
                log(f"== stage {stage}: building (key {keys[stage]})")
                run_stage(st, spark_factory(), cfg, input_dir, str(target), log)
            else:
                log(f"== stage {stage}: up to date (key {keys[stage]})")
            if step["action"] != "done":
                record[stage] = {
                    "key": keys[stage], "action": step["action"], "from": step.get("from"),
                    "seconds": round(time.monotonic() - t0, 2),
                    "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                }
                write_json_atomic(target / STAGES_FILE, record)
            step["key"] = keys[stage]
            step["seconds"] = round(time.monotonic() - t0, 2)
            if step["action"] == "done":
                step["built_seconds"] = record[stage].get("seconds")
        return target, plan


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
    inputs = input_fingerprints(input_dir, cfg, spark=spark_factory)
    features_dir, stages = FeatureStore(root / "features").build(cfg, input_dir, inputs, spark_factory=spark_factory, log=log)
    write_json_atomic(features_dir / L.RESOLVED_CONFIG, cfg.to_dict())
    timings["features"] = round(time.monotonic() - t0, 2)

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
        write_metrics_json(metrics, eval_dir / ML.METRICS_FILE)
    metrics = json.loads((eval_dir / ML.METRICS_FILE).read_text())  # NaN as null, as saved
    timings["evaluate"] = round(time.monotonic() - t0, 2)
    log(format_table(metrics["rows"]))

    manifest_path = features_dir / L.MANIFEST
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
        write_json_atomic(run_dir / RUN_FILE, record)
        record["mlflow"] = {"tracking_uri": uri, "experiment": mlflow_experiment}
        record["mlflow"]["run_id"] = log_to_mlflow(
            record, run_dir, features_dir, tracking_uri=uri, experiment=mlflow_experiment, artifact_root=root / "mlartifacts",
        )
        log(f"== tracked in MLflow: {uri} experiment {mlflow_experiment!r} run {record['mlflow']['run_id']} ({time.monotonic() - t0:.1f}s)")
    write_json_atomic(run_dir / RUN_FILE, record)
    return record
