"""`twotower sweep` (``twotower/sweep.py``): the grid file (points, canonical dedupe, names, every
refusal naming the key), the summary's arithmetic from hand-made records, and one real sweep on
the tiny features: trainings shared across priors, resumable, tracked in MLflow, and its page
rendered in headless Chromium."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from twotower import sweep as W
from twotower_features.config import ExperimentConfig, ModelConfig

from .test_report import CHROMIUM, render_in_chromium

BASE = ModelConfig(head="dot", loss="bce", seed=7)


def _grid(tmp_path: Path, text: str, base: ModelConfig = BASE) -> W.Grid:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return W.read_grid(path, base)


def test_grid_is_points_plus_the_cartesian_product_in_canonical_form(tmp_path):
    grid = _grid(tmp_path, """
seeds = [1, 2]
[grid]
loss = ["bce", "hybrid"]
hybrid_weight = [0.1, 0.3]
[[point]]
head = "cosine"
[[point]]
head = "dot"
""")
    # explicit points first, then the product; hybrid_weight means nothing for bce: both bce
    # combinations are the base model, already there as the point head=dot
    assert [p.name for p in grid.points] == ["head=cosine", "head=dot", "hybrid_weight=0.1,loss=hybrid", "hybrid_weight=0.3,loss=hybrid"]
    assert grid.seeds == (1, 2)
    assert len(grid.runs()) == 8
    assert grid.points[1].model == BASE and grid.points[1].settings == {"head": "dot"}
    assert grid.points[2].model == ModelConfig(head="dot", loss="hybrid", hybrid_weight=0.1, seed=7)
    assert grid.points[2].settings == {"loss": "hybrid", "hybrid_weight": 0.1}


def test_prior_weight_without_a_prior_is_one_point(tmp_path):
    grid = _grid(tmp_path, """
[grid]
retrieval_prior = ["none", "log_count"]
prior_weight = [0.5, 1.0]
""")
    assert [p.name for p in grid.points] == [
        "retrieval_prior=none", "prior_weight=0.5,retrieval_prior=log_count", "prior_weight=1.0,retrieval_prior=log_count"]
    assert grid.points[0].model == BASE
    assert grid.seeds == (7,)  # the base config's seed


@pytest.mark.parametrize("text, message", [
    ("colour = 1\n[grid]\nloss = ['bce']", "unknown key(s) ['colour']"),
    ("[grid]\nlos = ['bce']", "'los' is not a sweepable setting"),
    ("[grid]\nseed = [1, 2]", "model seeds go in the top-level 'seeds' list"),
    ("[[point]]\nseed = 3", "model seeds go in the top-level 'seeds' list"),
    ("[grid]\nloss = 'bce'", "[grid] 'loss' must be a non-empty list"),
    ("[grid]\nloss = []", "[grid] 'loss' must be a non-empty list"),
    ("[grid]\nloss = ['bce', 'focal']", "model.loss"),
    ("[grid]\nlearning_rate = [0.01, -1.0]", "model.learning_rate"),
    ("[grid]\nhidden_units = [[64], ['x']]", "model.hidden_units"),
    ("seeds = []\n[grid]\nloss = ['bce']", "'seeds' must be a non-empty list of distinct integers"),
    ("seeds = [1, 1]\n[grid]\nloss = ['bce']", "'seeds' must be a non-empty list of distinct integers"),
    ("seeds = [true]\n[grid]\nloss = ['bce']", "'seeds' must be a non-empty list of distinct integers"),
    ("seeds = [1]", "has no points"),
    ("grid = 3", "[grid] must be a table"),
    ("point = 3", "'point' must be an array of tables"),
    ("[grid]\nlearning_rate = [" + ", ".join(str(0.001 * (i + 1)) for i in range(401)) + "]", "over the limit of 400 runs"),
    ("[grid\nloss = 1", "is not valid TOML"),
])
def test_grid_refusals_name_the_file_and_key(tmp_path, text, message):
    with pytest.raises(W.SweepError) as e:
        _grid(tmp_path, text)
    assert message in str(e.value) and "grid.toml" in str(e.value)


def test_a_missing_grid_file_is_named(tmp_path):
    with pytest.raises(W.SweepError, match="grid file .*nope.toml' does not exist"):
        W.read_grid(tmp_path / "nope.toml", BASE)


def test_point_names_are_folder_names():
    assert W.point_name({}) == "base"
    assert W.point_name({"loss": "bce"}) == "loss=bce"
    assert W.point_name({"hidden_units": (64, 32), "loss": "hybrid"}) == "hidden_units=64-32,loss=hybrid"
    assert W.point_name({"head": "../../etc"}) == "head=..-..-etc"


def test_training_key_ignores_the_prior_but_not_the_seed_or_loss():
    a = ModelConfig(head="cosine")
    assert W.training_key(a) == W.training_key(ModelConfig(head="cosine", retrieval_prior="log_count", prior_weight=3.0))
    assert W.training_key(a) == W.training_key(ModelConfig(head="cosine", hybrid_weight=0.9))  # no effect without hybrid
    assert W.training_key(a) != W.training_key(ModelConfig(head="cosine", seed=2))
    assert W.training_key(a) != W.training_key(ModelConfig(head="cosine", loss="hybrid"))


# ---- the summary, from hand-made records ----------------------------------------------------
def _record(point: str, seed: int, auc: float, r10: float, r100: float = 0.5) -> dict:
    rows = {
        "model": {"auc": auc, "ndcg@5": 0.8, "ndcg@10": 0.85, "mrr": 0.5, "map": 0.7, "cust_map@10": 0.75},
        "random": {"auc": 0.5, "ndcg@5": 0.7, "ndcg@10": 0.78, "mrr": 0.42, "map": 0.58, "cust_map@10": 0.67},
        "popularity": {"auc": 0.55, "ndcg@5": 0.75, "ndcg@10": 0.81, "mrr": 0.44, "map": 0.63, "cust_map@10": 0.71},
        "oracle": {"auc": 0.75, "ndcg@5": 0.85, "ndcg@10": 0.88, "mrr": 0.49, "map": 0.79, "cust_map@10": 0.81},
    }
    diag = {"model": {"recall@10": r10, "recall@100": r100}, "popularity": {"recall@10": 0.3, "recall@100": 0.6}, "random": {"recall@10": 0.01, "recall@100": 0.1}}
    return {"run_name": f"{point}-seed{seed}", "model_seed": seed, "metrics": {"rows": rows, "diagnostics": diag}, "sweep": {"point": point}}


def test_summary_means_spread_lift_share_pareto_and_popularity(tmp_path):
    grid = _grid(tmp_path, "seeds = [1, 2]\n[grid]\nloss = ['bce', 'softmax', 'hybrid']")
    a, b, c = (p.name for p in grid.points)
    records = [
        _record(a, 1, 0.70, 0.20), _record(a, 2, 0.72, 0.22),  # best AUC
        _record(b, 1, 0.60, 0.40, 0.7), _record(b, 2, 0.62, 0.44, 0.7),  # best recall, beats popularity
        _record(c, 1, 0.59, 0.30), _record(c, 2, 0.61, 0.32),  # dominated by b
    ]
    s = W.summarise("t", grid, records)
    pa, pb, pc = s["points"]
    assert pa["stats"]["auc"]["mean"] == pytest.approx(0.71)
    assert pa["stats"]["auc"]["sd"] == pytest.approx(0.0141421356, rel=1e-6)  # sqrt(2 * 0.01^2 / 1)
    assert pa["auc_lift_share"] == pytest.approx(0.21 / 0.25)
    assert (pa["pareto"], pb["pareto"], pc["pareto"]) == (True, True, False)
    # b's recalls beat popularity's (0.42 > 0.3, 0.7 > 0.6) and so do its six seed metrics; a's recall@10 does not
    assert (pa["beats_popularity"], pb["beats_popularity"]) == (False, True)
    assert s["references"]["popularity"]["recall@10"] == 0.3 and s["references"]["oracle"]["recall@10"] is None
    assert W.varying(s) == ["loss"]
    assert [W.point_label(e, ["hybrid_weight", "loss"]) for e in s["points"]] == ["loss=bce", "loss=softmax", "hybrid_weight=0.3, loss=hybrid"]
    md = W.markdown(s)
    assert "| 2 | loss=softmax * | 2 | 0.6100 ± 0.0141 |" in md
    assert "|  | oracle |  | 0.7500 |" in md


# ---- one real sweep on the tiny features -----------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from tests.model.tiny_features import SMALL, write_features

    feat = tmp_path_factory.mktemp("sweep_features")
    write_features(feat)
    base = ExperimentConfig(model=ModelConfig(head="dot", epochs=2, **SMALL))
    grid_file = feat.parent / "grid.toml"
    grid_file.write_text("seeds = [3, 4]\n[grid]\nretrieval_prior = ['none', 'log_count']\nprior_weight = [0.7]\n")
    grid = W.read_grid(grid_file, base.model)
    out = tmp_path_factory.mktemp("sweep_out")
    lines: list[str] = []
    summary = W.run_sweep(feat, grid, out, base=base, name="tiny", log=lines.append)
    return feat, grid, base, out, summary, lines


def test_sweep_trains_once_per_seed_and_shares_the_towers_across_priors(swept):
    _, _, _, out, summary, lines = swept
    assert len(list((out / "trained").iterdir())) == 2  # two seeds, one training each
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "prior_weight=0.7,retrieval_prior=log_count-seed3", "prior_weight=0.7,retrieval_prior=log_count-seed4",
        "retrieval_prior=none-seed3", "retrieval_prior=none-seed4"]
    assert sum("towers reused" in line for line in lines) == 2
    none, prior = summary["points"]
    for i in range(2):  # the prior leaves the impression metrics alone and moves retrieval
        assert {k: none["runs"][i][k] for k in ("auc", "map")} == {k: prior["runs"][i][k] for k in ("auc", "map")}
    assert [r["seed"] for r in none["runs"]] == [3, 4]
    assert none["stats"]["auc"]["n"] == 2
    assert json.loads((out / "sweep.json").read_text())["points"][1]["point"] == "prior_weight=0.7,retrieval_prior=log_count"
    assert (out / "sweep.md").read_text().startswith("# Sweep tiny")


def test_sweep_runs_are_tracked_in_mlflow(swept):
    mlflow = pytest.importorskip("mlflow")
    _, _, _, out, _, _ = swept
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("twotower-sweep")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(p.name for p in (out / "runs").iterdir())
    for r in runs:
        assert r.data.tags["sweep.name"] == "tiny" and r.data.params["model.retrieval_prior"] in ("none", "log_count")
        assert 0 <= r.data.metrics["auc"] <= 1 and "diag.model.recall_at_10" in r.data.metrics


def test_rerunning_a_sweep_keeps_finished_runs(swept):
    feat, grid, base, out, summary, _ = swept
    trained = {p.name: p.stat().st_mtime_ns for p in (out / "trained").iterdir()}
    lines: list[str] = []
    again = W.run_sweep(feat, grid, out, base=base, name="tiny", track=False, log=lines.append)
    assert sum("done before, kept" in line for line in lines) == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "trained").iterdir()} == trained
    assert [p["stats"] for p in again["points"]] == [p["stats"] for p in summary["points"]]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium'; `make system-deps` installs it)")
def test_sweep_page_renders_in_headless_chromium(swept, tmp_path):
    _, _, _, out, _, _ = swept
    dom, images = render_in_chromium((out / "sweep.html").read_text(), tmp_path)
    assert list(images) == ["plot-sweep"]
    w, rest = images["plot-sweep"].split("x", 1)
    assert int(w) > 300 and int(rest.split(":")[0]) > 200 and rest.endswith(":true")
    names = [n.removesuffix(" *") for n in re.findall(r'<tr><td class="num">\d</td><td class="text">([^<]+)</td>', dom)]
    assert names == ["retrieval_prior=none", "prior_weight=0.7,retrieval_prior=log_count"]
