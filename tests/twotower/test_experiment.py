"""The catalog runner: the reuse plan; then, on generated data, stage reuse against a build from
scratch and a tracked end-to-end run whose second experiment needs no Spark at all."""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from twotower import experiment as X
from twotower import tracking as T
from twotower.stages import NAMES, STAGES
from twotower_features.config import ExperimentConfig
from twotower_features.fingerprint import input_fingerprints


def _folder(store: Path, keys: dict, done: tuple[str, ...]) -> Path:
    f = store / keys["tfrecords"]
    f.mkdir(parents=True)
    (f / T.STAGES_FILE).write_text(json.dumps({s: {"key": keys[s]} for s in done}))
    return f


def test_plan_reuses_the_longest_finished_prefix(tmp_path):
    store = X.FeatureStore(tmp_path)
    a = {"prepare": "p1", "embeddings": "e1", "examples": "x1", "tfrecords": "t1"}
    b = {"prepare": "p1", "embeddings": "e1", "examples": "x2", "tfrecords": "t2"}
    c = {"prepare": "p1", "embeddings": "e2", "examples": "x3", "tfrecords": "t3"}
    fa = _folder(tmp_path, a, NAMES)
    assert store.plan(a) == {s: {"action": "done", "from": None} for s in NAMES}
    assert store.plan(b) == {"prepare": {"action": "reuse", "from": str(fa)}, "embeddings": {"action": "reuse", "from": str(fa)},
                             "examples": {"action": "build"}, "tfrecords": {"action": "build"}}
    assert [v["action"] for v in store.plan(c).values()] == ["reuse", "build", "build", "build"]
    # an interrupted build of c (prepare finished) resumes at embeddings
    _folder(tmp_path, c, ("prepare",))
    assert [v["action"] for v in store.plan(c).values()] == ["done", "build", "build", "build"]


def test_plan_never_reuses_after_a_build(tmp_path):
    # a folder holding a matching examples key but a different prepare key cannot exist for
    # chained keys; the plan must still not reuse a later stage once it builds an earlier one
    store = X.FeatureStore(tmp_path)
    _folder(tmp_path, {"prepare": "pX", "embeddings": "eX", "examples": "x1", "tfrecords": "tX"}, NAMES)
    plan = store.plan({"prepare": "p1", "embeddings": "e1", "examples": "x1", "tfrecords": "t1"})
    assert [v["action"] for v in plan.values()] == ["build"] * 4


# ---- on generated data ------------------------------------------------------------------------
SMALL_MODEL = {"epochs": 1, "batch_size": 256, "embedding_dim": 8, "hidden_units": [16], "output_dim": 8}


def _cfg(name: str, **over) -> ExperimentConfig:
    d = {
        "name": name,
        "window": {"validation_date": "2026-07-05", "train_days": 7},
        "label": {"rule": "fraction_watched > 0.9"},
        "weight": {"scheme": "sqrt_time_spent"},
        "sampling": {"user_fraction": 0.8, "seed": 1},
        "history": {"n": 4, "concat_k": 2, "aggregations": ["mean", "clusters"], "source": "simclr"},
        "embeddings": {"item_source": "simclr", "pca_components": 8, "kmeans_k": 4},
        "features": {"user": ["user_id", "pos_hist_mean", "pos_hist_clusters"], "item": ["item_id", "item_emb"]},
        "output": {"tfrecord_shards": 1},
        "model": dict(SMALL_MODEL),
    }
    for k, v in over.items():
        d[k] = {**d[k], **v} if isinstance(v, dict) else v
    return ExperimentConfig.from_dict(d)


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    from twotower_features.generate import generate

    root = tmp_path_factory.mktemp("catalog")
    generate(spark, str(root / "data"), users=100, items=70, days=10, start=dt.date(2026, 6, 26), seed=5, embedding_dim=16, progress=None)
    return root


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_stage_reuse_matches_a_build_from_scratch(spark, data, tmp_path):
    from pyspark.testing import assertDataFrameEqual

    store = X.FeatureStore(tmp_path / "features")
    inputs = input_fingerprints(data / "data", _cfg("a"))
    quiet = dict(spark_factory=lambda: spark, log=lambda s: None)
    a = _cfg("a")
    fa, plan_a = store.build(a, str(data / "data"), inputs, **quiet)
    assert [v["action"] for v in plan_a.values()] == ["build"] * 4
    # every file the pipeline wrote belongs to a stage's declared outputs (else reuse would miss it)
    declared = [p for stage in STAGES for p in stage.outputs] + ["resolved_config.json", T.STAGES_FILE]
    undeclared = {f for f in _files(fa) if not any(f == d or f.startswith(d + "/") for d in declared)}
    assert undeclared == set()

    b = _cfg("b", features={"user": ["user_id", "pos_hist_clusters"], "item": ["item_emb"]})
    fb, plan_b = store.build(b, str(data / "data"), inputs, **quiet)
    assert [v["action"] for v in plan_b.values()] == ["reuse", "reuse", "reuse", "build"]
    some_filtered = next(p for p in (fb / "tables" / "filtered").rglob("*.parquet"))
    assert some_filtered.stat().st_nlink >= 2  # hard-linked, not copied
    assert os.path.samefile(some_filtered, fa / some_filtered.relative_to(fb))

    # b built from scratch in its own store: same examples, same TFRecord rows, same vocabularies
    fresh, plan_f = X.FeatureStore(tmp_path / "fresh").build(b, str(data / "data"), inputs, **quiet)
    assert [v["action"] for v in plan_f.values()] == ["build"] * 4
    read = lambda f: spark.read.format("delta").load(str(f / "tables" / "examples")).drop("pos_history", "neg_history")  # noqa: E731
    assertDataFrameEqual(read(fb), read(fresh))
    assert json.loads((fb / "manifest.json").read_text())["rows"] == json.loads((fresh / "manifest.json").read_text())["rows"]
    assert json.loads((fb / "feature_spec.json").read_text()) == json.loads((fresh / "feature_spec.json").read_text())


@pytest.mark.slow
def test_run_experiment_tracks_and_reuses_features(spark, data, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    root = tmp_path / "root"
    rec = X.run_experiment(_cfg("dot"), data / "data", root, spark_factory=lambda: spark, log=lambda s: None)
    assert [v["action"] for v in rec["stages"].values()] == ["build"] * 4
    saved = json.loads((root / "runs" / "dot" / "run.json").read_text())
    assert saved["config"]["model"]["head"] == "dot" and saved["manifest"]["rows"]["train"] > 0
    assert set(saved["metrics"]["rows"]) == {"model", "random", "popularity", "oracle"}
    assert set(saved["timings"]) == {"features", "train", "evaluate"}

    def no_spark():
        raise AssertionError("the second experiment shares every feature stage: Spark must not start")

    rec2 = X.run_experiment(_cfg("cos", model={"head": "cosine"}), data / "data", root, spark_factory=no_spark, seed=7, log=lambda s: None)
    assert [v["action"] for v in rec2["stages"].values()] == ["done"] * 4
    assert rec2["features_dir"] == rec["features_dir"] and rec2["run_name"] == "cos-seed7" and rec2["model_seed"] == 7
    assert json.loads((root / "runs" / "cos-seed7" / "eval" / "metrics.json").read_text())["experiment"] == "cos"

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name("twotower")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"dot", "cos-seed7"}
    r = runs["cos-seed7"]
    assert r.info.status == "FINISHED"
    assert r.data.params["model.head"] == "cosine" and r.data.params["model.seed"] == "7"
    assert r.data.metrics["auc"] == pytest.approx(rec2["metrics"]["rows"]["model"]["auc"])
    assert r.data.metrics["oracle.auc"] == pytest.approx(rec2["metrics"]["rows"]["oracle"]["auc"])
    assert r.data.tags["data_hash"] == _cfg("cos").data_hash() == _cfg("dot").data_hash()
    if rec2["code_version"]["git_commit"]:
        assert r.data.tags["mlflow.source.git.commit"] == rec2["code_version"]["git_commit"]
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)} | {a.path for a in client.list_artifacts(r.info.run_id, "features")}
    assert {"run.json", "features/manifest.json", "features/resolved_config.json"} <= artifacts
    assert str((root / "mlartifacts").resolve()) in r.info.artifact_uri
