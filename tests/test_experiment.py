"""The catalog runner: stage keys (which experiments share which feature stages), the reuse plan,
input identity, tracking helpers; then, on generated data, stage reuse against a build from
scratch and a tracked end-to-end run whose second experiment needs no Spark at all."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from twotower_features import experiment as X
from twotower_features.cli import EXPERIMENTS_DIR
from twotower_features.config import ExperimentConfig

INPUTS = {"interactions": {"path": "/data/interactions", "format": "parquet", "fingerprint": "abc"}}


def _catalog(name: str) -> ExperimentConfig:
    return ExperimentConfig.from_file(EXPERIMENTS_DIR / f"{name}.toml")


def _keys(name: str, inputs=INPUTS) -> dict[str, str]:
    return X.stage_keys(_catalog(name), inputs)


def _shared(a: dict, b: dict) -> list[str]:
    return [s for s in X.STAGES if a[s] == b[s]]


CATALOG = {
    1: "exp01_base_dedup", 2: "exp02_base_dedup_weighted", 3: "exp03_simclr_history_mean", 4: "exp04_dedup_history_mean",
    5: "exp05_simclr_history_ids", 6: "exp06_dedup_history_ids", 7: "exp07_simclr_concat5_creator",
    8: "exp08_simclr_cluster18_creator", 9: "exp09_cluster18_cosine", 10: "exp10_cluster18_batchnorm", 11: "exp11_simclr_history_cosine",
}


def test_catalog_stage_sharing():
    k = {i: _keys(n) for i, n in CATALOG.items()}
    every = list(X.STAGES)
    first3 = ["prepare", "embeddings", "examples"]
    # 8, 9, 10 differ only in the model head: one feature folder
    assert _shared(k[8], k[9]) == every and _shared(k[8], k[10]) == every
    # 3, 5, 11: same window, label, weight, sampling, history and simclr embeddings; tower features differ
    assert _shared(k[3], k[5]) == first3 and _shared(k[3], k[11]) == first3 and _shared(k[5], k[11]) == first3
    assert _shared(k[4], k[6]) == first3
    # 3 and 4 need different embedding sources, whose NaN rows prepare quarantines: nothing shared
    assert _shared(k[3], k[4]) == []
    # 7 and 8: same label and sources (prepare); concat needs the history matrix, clusters need KMeans
    assert _shared(k[7], k[8]) == ["prepare"]
    # 1 and 2 differ in the sample weight, applied in prepare
    assert _shared(k[1], k[2]) == []
    # stages built for the whole catalog: prepare {1} {2} {3,5,11} {4,6} {7,8,9,10};
    # embeddings and examples the same but 7 apart from 8-10; tfrecords all but 9 and 10
    assert [len({v[s] for v in k.values()}) for s in X.STAGES] == [5, 6, 6, 9]


def test_every_config_section_is_keyed_by_a_stage():
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"name", "description", "model"}
    keyed = [s for stage in X.STAGES for s in X.STAGE_SECTIONS[stage]]
    assert sorted(keyed) == sorted(sections)  # each once: a new section must be given to its stage


def test_keys_follow_the_sections_each_stage_reads():
    base = _catalog("exp03_simclr_history_mean")
    kb = X.stage_keys(base, INPUTS)

    def changed(**sections) -> list[str]:
        cfg = base
        for section, values in sections.items():
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
        kc = X.stage_keys(cfg, INPUTS)
        return [s for s in X.STAGES if kc[s] != kb[s]]

    assert changed(model={"head": "cosine", "epochs": 9}) == []
    assert X.stage_keys(dataclasses.replace(base, name="other", description="x"), INPUTS) == kb
    assert changed(features={"user": ("user_id",)}) == ["tfrecords"]
    assert changed(output={"tfrecord_shards": 7}) == ["tfrecords"]
    assert changed(history={"n": 5}) == ["examples", "tfrecords"]
    assert changed(sampling={"user_fraction": 0.5}) == ["examples", "tfrecords"]
    assert changed(stats={"user_table": "other_user_stats"}) == ["examples", "tfrecords"]
    assert changed(embeddings={"pca_components": 64}) == ["embeddings", "examples", "tfrecords"]
    assert changed(label={"rule": "liked"}) == list(X.STAGES)
    assert changed(window={"train_days": 8}) == list(X.STAGES)
    other_inputs = {"interactions": {**INPUTS["interactions"], "fingerprint": "abd"}}
    assert all(X.stage_keys(base, other_inputs)[s] != kb[s] for s in X.STAGES)


def _folder(store: Path, keys: dict, done: tuple[str, ...]) -> Path:
    f = store / keys["tfrecords"]
    f.mkdir(parents=True)
    (f / X.STAGES_FILE).write_text(json.dumps({s: {"key": keys[s]} for s in done}))
    return f


def test_plan_reuses_the_longest_finished_prefix(tmp_path):
    store = X.FeatureStore(tmp_path)
    a = {"prepare": "p1", "embeddings": "e1", "examples": "x1", "tfrecords": "t1"}
    b = {"prepare": "p1", "embeddings": "e1", "examples": "x2", "tfrecords": "t2"}
    c = {"prepare": "p1", "embeddings": "e2", "examples": "x3", "tfrecords": "t3"}
    fa = _folder(tmp_path, a, X.STAGES)
    assert store.plan(a) == {s: {"action": "done", "from": None} for s in X.STAGES}
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
    _folder(tmp_path, {"prepare": "pX", "embeddings": "eX", "examples": "x1", "tfrecords": "tX"}, X.STAGES)
    plan = store.plan({"prepare": "p1", "embeddings": "e1", "examples": "x1", "tfrecords": "t1"})
    assert [v["action"] for v in plan.values()] == ["build"] * 4


def test_input_identity_changes_with_the_files(tmp_path):
    inter = tmp_path / "interactions" / "dt=2026-07-01"
    inter.mkdir(parents=True)
    (inter / "part-0.parquet").write_bytes(b"x" * 10)
    first = X.input_identity(tmp_path)
    assert first["interactions"]["files"] == 1 and first["items"] == {"path": str((tmp_path / "items").resolve()), "present": False}
    (inter / "part-1.parquet").write_bytes(b"y" * 5)
    second = X.input_identity(tmp_path)
    assert second["interactions"]["fingerprint"] != first["interactions"]["fingerprint"]
    log = tmp_path / "items" / "_delta_log"
    log.mkdir(parents=True)
    for v in (0, 1, 2):
        (log / f"{v:020d}.json").write_text("{}")
    (log / "00000000000000000002.checkpoint.parquet").write_bytes(b"")
    assert X.input_identity(tmp_path)["items"]["version"] == 2


def test_tracking_helpers():
    assert X.flat_params({"window": {"train_days": 7}, "features": {"user": ["a", "b"]}, "name": "n"}) == {
        "window.train_days": "7", "features.user": '["a", "b"]', "name": "n"}
    rec = {"metrics": {"rows": {"model": {"auc": 0.7, "ndcg@5": 0.5, "undefined": {}}, "popularity": {"auc": 0.6, "mrr": None}},
                       "diagnostics": {"model": {"recall@10": 0.2, "cluster_agreement@10": None}, "k": [10]}},
           "timings": {"train": 3.5}}
    assert X.tracked_metrics(rec) == {"auc": 0.7, "ndcg_at_5": 0.5, "popularity.auc": 0.6, "diag.model.recall_at_10": 0.2, "time.train_s": 3.5}


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert X.default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert X.default_tracking_uri(tmp_path) == "http://tracking:5000"


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
    inputs = X.input_identity(data / "data")
    quiet = dict(spark_factory=lambda: spark, log=lambda s: None)
    a = _cfg("a")
    fa, plan_a = store.build(a, str(data / "data"), inputs, **quiet)
    assert [v["action"] for v in plan_a.values()] == ["build"] * 4
    # every file the pipeline wrote belongs to a stage's declared outputs (else reuse would miss it)
    declared = [p for outs in X.STAGE_OUTPUTS.values() for p in outs] + ["resolved_config.json", X.STAGES_FILE]
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
