"""The experiment report: tables from hand-written run records, the seed spread, reference-row
groups, graceful degradation, the embedding projection, and the HTML page in headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower import report as R
from twotower_features.spec import Column, FeatureSpec

METRICS = ("auc", "ndcg@5", "ndcg@10", "mrr", "map", "cust_map@10")


def _row(base: float, rows: int = 100, users: int = 10) -> dict:
    """Metric values base, base+0.01, ... in TABLE_METRICS order."""
    return {m: round(base + 0.01 * i, 6) for i, m in enumerate(METRICS)} | {"rows_scored": rows, "users_scored": users}


REFS_A = {"random": _row(0.50), "popularity": _row(0.55), "oracle": _row(0.80)}
REFS_C = {"random": _row(0.49, 90, 9), "popularity": _row(0.52, 90, 9)}


def _write_run(root: Path, experiment: str, seed: int | None, model: dict, refs: dict, *, diagnostics=None, curve=None,
               model_dir: Path | None = None, features_dir: Path | None = None, config: dict | None = None) -> None:
    name = experiment if seed is None else f"{experiment}-seed{seed}"
    metrics = {"experiment": experiment, "rows": {"model": model, **refs}}
    if diagnostics is not None:
        metrics["diagnostics"] = diagnostics
    if curve is not None:
        metrics["coverage_curve"] = curve
    rec = {"experiment": experiment, "run_name": name, "model_seed": 1 if seed is None else seed, "metrics": metrics,
           "model_dir": str(model_dir or root / "nowhere"), "features_dir": str(features_dir or root / "nowhere"), "config": config or {}}
    d = root / "runs" / name
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps(rec))


@pytest.fixture()
def root(tmp_path):
    _write_run(tmp_path, "exp01_a", None, _row(0.61, 100, 10), REFS_A)
    _write_run(tmp_path, "exp02_b", None, _row(0.60, 100, 10), REFS_A)
    # exp02_b over seeds 2 and 3: AUC 0.60 (the primary run, seed 1), 0.62, 0.67
    _write_run(tmp_path, "exp02_b", 2, _row(0.62, 100, 10), REFS_A)
    _write_run(tmp_path, "exp02_b", 3, _row(0.67, 100, 10), REFS_A)
    _write_run(tmp_path, "exp03_c", None, {"auc": float("nan"), "ndcg@5": 0.5, "rows_scored": 90, "users_scored": 9}, REFS_C)
    return tmp_path


def test_markdown_table_rows_are_the_model_rows(root):
    md = R.markdown(R.load_runs(root))
    assert "| experiment | AUC | NDCG@5 | NDCG@10 | MRR | MAP | CUST-MAP@10 | rows | users |" in md
    assert "| exp01_a | 0.6100 | 0.6200 | 0.6300 | 0.6400 | 0.6500 | 0.6600 | 100 | 10 |" in md
    # the primary run of exp02_b is the one without a seed override, not seeds 2 or 3
    assert "| exp02_b | 0.6000 | 0.6100 | 0.6200 | 0.6300 | 0.6400 | 0.6500 | 100 | 10 |" in md
    # missing and non-finite values print as '-'
    assert "| exp03_c | - | 0.5000 | - | - | - | - | 90 | 9 |" in md


def test_seed_spread_mean_and_sample_sd():
    runs = [{"experiment": "e", "run_name": f"e-seed{s}", "model_seed": s, "metrics": {"rows": {"model": {"auc": v}}}}
            for s, v in ((1, 0.60), (2, 0.62), (3, 0.67))]
    runs.append({"experiment": "single", "run_name": "single", "model_seed": 1, "metrics": {"rows": {"model": {"auc": 0.7}}}})
    spread = R.seed_spread(runs)
    assert list(spread) == ["e"]
    # mean 0.63; deviations -0.03, -0.01, 0.04; squares sum 0.0026; / (3 - 1) = 0.0013
    assert spread["e"]["auc"]["mean"] == pytest.approx(0.63)
    assert spread["e"]["auc"]["sd"] == pytest.approx(0.0013 ** 0.5)
    assert (spread["e"]["auc"]["min"], spread["e"]["auc"]["max"]) == (0.60, 0.67)
    assert spread["e"]["seeds"] == [1, 2, 3]


def test_spread_table_and_reference_groups_in_report(root):
    t = R.tables(R.load_runs(root))
    assert [r[0] for r in t["spread"]["rows"]] == ["exp02_b"]
    # AUC of exp02_b over seeds 1, 2, 3: 0.60, 0.62, 0.67 as in the test above
    assert t["spread"]["rows"][0][2] == "0.6300 ± 0.0361 [0.6000, 0.6700]"
    refs = t["references"]["rows"]
    # exp01 and exp02 share their reference rows; exp03 has its own and no oracle
    assert [r[:3] for r in refs] == [
        ["random", "exp01, exp02", "0.5000"], ["popularity", "exp01, exp02", "0.5500"], ["oracle", "exp01, exp02", "0.8000"],
        ["random", "exp03", "0.4900"], ["popularity", "exp03", "0.5200"],
    ]


def test_report_without_diagnostics_or_embeddings_degrades(root, tmp_path):
    paths = R.write_report(root, tmp_path / "out")
    page = Path(paths["html"]).read_text()
    assert "diagnostics" not in R.tables(R.load_runs(root))
    assert 'id="plot-metrics"' in page
    assert 'id="plot-coverage-missing"' in page and 'id="plot-embeddings-missing"' in page


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(R.ReportError, match="no run records"):
        R.load_runs(tmp_path)


def _two_cluster_run(root: Path, rng) -> tuple[Path, Path]:
    """Items a0..a29 around +5*e1 with cluster 0, b0..b29 around -5*e1 with cluster 1."""
    ids = [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)]
    emb = rng.normal(0, 0.3, (60, 6))
    emb[:30, 0] += 5
    emb[30:, 0] -= 5
    model_dir, feat_dir = root / "model", root / "features"
    model_dir.mkdir()
    (feat_dir / "artifacts").mkdir(parents=True)
    pq.write_table(pa.table({"item_id": ids, "embedding": [list(map(float, r)) for r in emb]}), model_dir / "item_embeddings.parquet")
    order = rng.permutation(60)  # the artifact's row order differs from the model's
    pq.write_table(pa.table({"item_id": [ids[i] for i in order], "item_cluster": [0 if ids[i][0] == "a" else 1 for i in order]}),
                   feat_dir / "artifacts" / "items.parquet")
    cols = (Column("item_id", "string", (), None, "key"), Column("label", "float32", (), None, "label"), Column("weight", "float32", (), None, "weight"))
    FeatureSpec(columns=cols, keys=("item_id",), extras={"items_file": "artifacts/items.parquet"}).save(feat_dir)
    return model_dir, feat_dir


def test_item_projection_keeps_clusters_apart(tmp_path):
    model_dir, feat_dir = _two_cluster_run(tmp_path, np.random.default_rng(0))
    p = R.item_projection({"model_dir": str(model_dir), "features_dir": str(feat_dir)})
    assert p["cluster_source"] == "features' KMeans item_cluster"
    assert p["clusters"].tolist() == [0] * 30 + [1] * 30
    # the first principal axis is the +-5 e1 direction: its sign separates the two groups
    first = p["xy"][:, 0]
    assert (np.sign(first[:30]) == np.sign(first[0])).all() and (np.sign(first[30:]) == -np.sign(first[0])).all()
    assert p["explained"] > 0.9


def _full_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    model_dir, feat_dir = _two_cluster_run(tmp_path, np.random.default_rng(1))
    diag = {"k": [10], "model": {f"{c}@10": 0.1 * (i + 1) for i, c in enumerate(R.DIAG_COLUMNS)},
            "popularity": {"recall@10": 0.05, "coverage@10": 0.01}, "random": {"recall@10": 0.01, "coverage@10": 0.9}}
    curve = {"k": [1, 5, 10, 20], "model": [0.1, 0.3, 0.5, 0.7], "popularity": [0.01, 0.02, 0.03, 0.05], "random": [0.5, 0.9, 1.0, 1.0]}
    for i, exp in enumerate(("exp01_a", "exp02_b", "exp03_c")):
        _write_run(root, exp, None, _row(0.6 + 0.01 * i), REFS_A, diagnostics=diag, curve=curve, model_dir=model_dir, features_dir=feat_dir)
    return root


def test_diagnostics_table_from_run_records(tmp_path):
    t = R.tables(R.load_runs(_full_root(tmp_path)))["diagnostics"]
    assert t["header"][:3] == ["row", "recall@10", "NDCG@10"]
    assert t["rows"][0] == ["exp01_a", "0.1000", "0.2000", "0.3000", "0.4000", "0.5000", "0.6000", "0.7000", "0.8000"]
    assert t["rows"][3][:4] == ["popularity (exp01, exp02, exp03)", "0.0500", "-", "0.0100"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# appended to a copy of the page: after load, records what the browser decoded into the DOM
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => i.id + ':' + i.naturalWidth + 'x' + i.naturalHeight + ':' + i.complete);
  document.body.setAttribute('data-probe', imgs.join(';'));
});
</script>"""


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--virtual-time-budget=10000"]


def render_in_chromium(page: str, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """The DOM headless Chromium makes of ``page`` (self-contained: no http(s) link) and, per
    image id, ``WIDTHxHEIGHT:complete`` as the browser decoded it."""
    assert "http://" not in page and "https://" not in page  # self-contained
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, f"the page's load handler did not run; DOM starts {dom[:300]!r}"
    return dom, dict(x.split(":", 1) for x in found.group(1).split(";"))


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium'; `make system-deps` installs it)")
def test_html_page_renders_in_headless_chromium(tmp_path):
    root = _full_root(tmp_path)
    paths = R.write_report(root, tmp_path / "out")
    dom, images = render_in_chromium(Path(paths["html"]).read_text(), tmp_path)
    assert set(images) == {"plot-metrics", "plot-coverage", "plot-embeddings"}
    for name, info in images.items():
        w, rest = info.split("x", 1)
        h, complete = rest.split(":")
        assert int(w) > 100 and int(h) > 100 and complete == "true", (name, info)
    table = re.search(r'<table id="metrics">(.*?)</table>', dom, re.S).group(1)
    assert re.findall(r"<tr><td class=\"text\">(exp\d\d_\w)</td>", table) == ["exp01_a", "exp02_b", "exp03_c"]
    assert "<td>0.6100</td>" in table  # exp02_b's AUC
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, "--window-size=1400,2400", f"--screenshot={shot}", Path(paths["html"]).as_uri()], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
