"""The experiment report: the seed's table side by side, diagnostics, reference rows, seed spread.

``write_report(root, out)`` reads the run records ``experiment run`` left under
``root/runs/*/run.json`` (with their ``metrics.json``) and writes ``report.md`` and
``report.html``, a self-contained page (inline CSS, plots embedded as base64 PNG) with:

- the seed's table: one row per experiment, AUC, NDCG@5, NDCG@10, MRR, MAP, CUST-MAP@10;
- the reference rows (random, popularity, oracle), once per group of experiments that were
  scored on the same validation rows with the same labels (their reference rows are equal);
- the full-catalog diagnostics at K = 10 when the runs have them (``-`` where absent);
- the spread over model seeds for experiments run with several (``--seed``): mean, sample
  standard deviation, min and max;
- plots: metric bars per experiment (reference rows as markers, one standard deviation as an
  error bar where several seeds ran), catalog coverage curves, and a 2-D PCA projection of each
  experiment's item embeddings coloured by KMeans cluster (the features' ``item_cluster`` when
  the experiment computed it, else KMeans with ``embeddings.kmeans_k`` clusters fitted here on
  the item's content embedding, seeded).

The experiment's primary run is the one without a seed override (run name = experiment name),
else its lowest seed. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from twotower_features import layout as FL
from twotower_features.errors import UserError
from twotower_model.items import items_artifact, read_item_embeddings
from twotower_model.layout import ITEM_EMBEDDINGS_FILE
from twotower_model.metrics import REFERENCE_KINDS, TABLE_METRICS
from twotower_model.prior import model_prior, without_item_prior

from .tracking import RUN_FILE

HEADERS = {"auc": "AUC", "ndcg@5": "NDCG@5", "ndcg@10": "NDCG@10", "mrr": "MRR", "map": "MAP", "cust_map@10": "CUST-MAP@10"}
DIAG_COLUMNS = ("recall", "ndcg", "coverage", "gini", "overlap", "intra_list_similarity", "cluster_agreement", "creator_agreement")
DIAG_HEADERS = {
    "recall": "recall", "ndcg": "NDCG", "coverage": "coverage", "gini": "Gini", "overlap": "overlap",
    "intra_list_similarity": "intra-list sim", "cluster_agreement": "cluster agr", "creator_agreement": "creator agr",
}
DIAG_K = 10
MAX_PROJECTED_ITEMS = 5000


class ReportError(UserError):
    """No runs to report, or a run record that cannot be read; the message names the file."""


# ---- reading ------------------------------------------------------------------------------
def load_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every ``root/runs/*/run.json``, sorted by experiment then model seed."""
    runs_dir = Path(root) / "runs"
    files = sorted(runs_dir.glob(f"*/{RUN_FILE}")) if runs_dir.is_dir() else []
    if not files:
        raise ReportError(f"no run records under {str(runs_dir)!r}: run `twotower experiment run NAME --root {root}` first")
    runs = []
    for f in files:
        try:
            run = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ReportError(f"run record {str(f)!r} is not valid JSON: {e}") from None
        for key in ("experiment", "run_name", "metrics"):
            if key not in run:
                raise ReportError(f"run record {str(f)!r} lacks {key!r}")
        run["_dir"] = str(f.parent)
        runs.append(run)
    return sorted(runs, key=lambda r: (r["experiment"], r.get("model_seed") or 0, r["run_name"]))


def primary_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Per experiment: the run named after it (no seed override), else the lowest seed."""
    out: dict[str, Mapping[str, Any]] = {}
    for r in runs:
        cur = out.get(r["experiment"])
        if cur is None or (r["run_name"] == r["experiment"] and cur["run_name"] != cur["experiment"]):
            out[r["experiment"]] = r
    return dict(sorted(out.items()))


def _value(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def model_row(run: Mapping[str, Any]) -> dict[str, Any]:
    return (run.get("metrics") or {}).get("rows", {}).get("model", {})


# ---- computing -------------------------------------------------------------------------------
def seed_spread(runs: Sequence[Mapping[str, Any]], metrics: Sequence[str] = TABLE_METRICS) -> dict[str, dict[str, Any]]:
    """For experiments run with two or more distinct model seeds: per metric ``mean``, ``sd``
    (sample standard deviation, n - 1), ``min``, ``max`` over those runs, and ``seeds``."""
    by_exp: dict[str, dict[int, Mapping[str, Any]]] = {}
    for r in runs:
        by_exp.setdefault(r["experiment"], {})[r.get("model_seed")] = r
    out: dict[str, dict[str, Any]] = {}
    for exp, by_seed in sorted(by_exp.items()):
        if len(by_seed) < 2:
            continue
        entry: dict[str, Any] = {"seeds": sorted(s for s in by_seed if s is not None), "n": len(by_seed)}
        for m in metrics:
            vals = np.array([v for v in (_value(model_row(r).get(m)) for r in by_seed.values()) if v is not None])
            if len(vals) >= 2:
                entry[m] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)), "min": float(vals.min()), "max": float(vals.max()), "n": int(len(vals))}
        out[exp] = entry
    return out


def reference_groups(primary: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Experiments whose reference rows (random, popularity, oracle) are equal, grouped: they
    were scored on the same validation rows with the same labels."""
    groups: dict[str, dict[str, Any]] = {}
    for exp, run in primary.items():
        rows = (run.get("metrics") or {}).get("rows", {})
        refs = {name: rows[name] for name in REFERENCE_KINDS if name in rows}
        diag = (run.get("metrics") or {}).get("diagnostics") or {}
        sig = json.dumps({n: {m: v.get(m) for m in (*TABLE_METRICS, "rows_scored", "users_scored")} for n, v in refs.items()}, sort_keys=True)
        g = groups.setdefault(sig, {"experiments": [], "rows": refs, "diagnostics": {n: diag.get(n) for n in ("popularity", "random") if diag.get(n)}})
        g["experiments"].append(exp)
    return list(groups.values())


def short_name(experiment: str) -> str:
    """``exp08_simclr_cluster18_creator`` -> ``exp08``; other names unchanged."""
    head = experiment.split("_", 1)[0]
    return head if head.startswith("exp") and head[3:].isdigit() else experiment


def _fmt(v: Any, digits: int = 4) -> str:
    x = _value(v)
    return "-" if x is None else f"{x:.{digits}f}"


def _diag_k(primary: Mapping[str, Mapping[str, Any]]) -> int | None:
    for run in primary.values():
        ks = ((run.get("metrics") or {}).get("diagnostics") or {}).get("k") or []
        if ks:
            return DIAG_K if DIAG_K in ks else ks[0]
    return None


# ---- tables (shared by Markdown and HTML) -----------------------------------------------------
def tables(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every table of the report as ``{"title", "header", "rows", "note"}`` with formatted cells."""
    primary = primary_runs(runs)
    out: dict[str, dict[str, Any]] = {}
    header = ["experiment", *[HEADERS[m] for m in TABLE_METRICS], "rows", "users"]
    rows = []
    for exp, run in primary.items():
        m = model_row(run)
        rows.append([exp, *[_fmt(m.get(k)) for k in TABLE_METRICS], str(m.get("rows_scored", m.get("rows", "-"))), str(m.get("users_scored", "-"))])
    out["metrics"] = {"title": "Experiments (validation day, model row)", "header": header, "rows": rows,
                      "note": "Rows and users scored: users with at least one positive; AUC and MAP over all scored rows."}

    ref_rows = []
    for g in reference_groups(primary):
        label = ", ".join(short_name(e) for e in g["experiments"])
        for name in REFERENCE_KINDS:
            if name in g["rows"]:
                r = g["rows"][name]
                ref_rows.append([name, label, *[_fmt(r.get(k)) for k in TABLE_METRICS]])
    out["references"] = {"title": "Reference rows (per group of experiments scored on the same rows and labels)",
                         "header": ["reference", "experiments", *[HEADERS[m] for m in TABLE_METRICS]], "rows": ref_rows,
                         "note": "random: seeded uniform scores; popularity: train-window interactions of the item; oracle: the generator's true engagement probability."}

    k = _diag_k(primary)
    if k is not None:
        drows = []
        for exp, run in primary.items():
            d = ((run.get("metrics") or {}).get("diagnostics") or {}).get("model") or {}
            drows.append([exp, *[_fmt(d.get(f"{c}@{k}")) for c in DIAG_COLUMNS]])
        for g in reference_groups(primary):
            label = ", ".join(short_name(e) for e in g["experiments"])
            for name in ("popularity", "random"):
                d = g["diagnostics"].get(name) or {}
                if d:
                    drows.append([f"{name} ({label})", *[_fmt(d.get(f"{c}@{k}")) for c in DIAG_COLUMNS]])
        out["diagnostics"] = {"title": f"Full-catalog diagnostics at K = {k} (top-{k} lists over the whole catalog)",
                              "header": ["row", *[f"{DIAG_HEADERS[c]}@{k}" for c in DIAG_COLUMNS]], "rows": drows,
                              "note": "coverage: share of the catalog in anyone's list; Gini: popularity concentration of the lists; overlap: mean share of a list shared with another user's; "
                                      "intra-list sim: mean content cosine within a list; cluster/creator agr: share of an item's embedding neighbours in its KMeans cluster / by its creator (random row: chance level)."}

    spread = seed_spread(runs)
    if spread:
        srows = []
        for exp, s in spread.items():
            srows.append([exp, ", ".join(map(str, s["seeds"])) or "-", *[
                (f"{s[m]['mean']:.4f} ± {s[m]['sd']:.4f} [{s[m]['min']:.4f}, {s[m]['max']:.4f}]" if m in s else "-") for m in TABLE_METRICS
            ]])
        out["spread"] = {"title": "Spread over model seeds (mean ± sample sd [min, max])",
                         "header": ["experiment", "seeds", *[HEADERS[m] for m in TABLE_METRICS]], "rows": srows,
                         "note": "Same features, same data; only the model seed (initial weights, shuffling) differs."}
    return out


def markdown(runs: Sequence[Mapping[str, Any]]) -> str:
    parts = ["# twotower experiment report", ""]
    for t in tables(runs).values():
        parts += [f"## {t['title']}", "", "| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        parts += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        parts += ["", t["note"], ""]
    return "\n".join(parts)


# ---- plots ----------------------------------------------------------------------------------
def figure_png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(runs: Sequence[Mapping[str, Any]]) -> str:
    """One panel per seed metric: a bar per experiment, the reference rows as markers, one sd
    over seeds as an error bar where an experiment ran with several seeds."""
    plt = pyplot()
    primary = primary_runs(runs)
    spread = seed_spread(runs)
    names = list(primary)
    x = np.arange(len(names))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), sharex=True)
    markers = {"random": ("v", "tab:gray"), "popularity": ("s", "tab:orange"), "oracle": ("*", "tab:green")}
    for ax, m in zip(axes.flat, TABLE_METRICS):
        vals = [_value(model_row(primary[n]).get(m)) for n in names]
        err = [spread.get(n, {}).get(m, {}).get("sd", np.nan) for n in names]
        ax.bar(x, [v if v is not None else 0.0 for v in vals], yerr=err, color="tab:blue", alpha=0.8, capsize=3, label="model")
        for ref, (mk, col) in markers.items():
            ys = [_value((primary[n].get("metrics") or {}).get("rows", {}).get(ref, {}).get(m)) for n in names]
            if any(y is not None for y in ys):
                ax.scatter(x, [y if y is not None else np.nan for y in ys], marker=mk, color=col, zorder=3, label=ref)
        shown = [v for v in vals if v is not None] + [
            y for ref in markers for y in (_value((primary[n].get("metrics") or {}).get("rows", {}).get(ref, {}).get(m)) for n in names) if y is not None]
        if shown:
            lo, hi = min(shown), max(shown)
            pad = max(0.02, 0.1 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(1.0, hi + pad) if hi <= 1.0 else hi + pad)
        ax.set_title(HEADERS[m])
        ax.set_xticks(x, [short_name(n) for n in names], rotation=60, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, bbox_to_anchor=(0.5, -0.03))
    fig.suptitle("Seed metrics per experiment (bars: model, error bar: sd over seeds; markers: reference rows; y axes do not start at 0)")
    fig.tight_layout()
    return figure_png(fig)


def plot_coverage(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """Catalog coverage of the top-K lists against K, per experiment, with the references."""
    primary = primary_runs(runs)
    curves = {n: (r.get("metrics") or {}).get("coverage_curve") for n, r in primary.items()}
    curves = {n: c for n, c in curves.items() if c and c.get("k")}
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cmap = plt.get_cmap("tab20")
    for i, (n, c) in enumerate(curves.items()):
        ax.plot(c["k"], c["model"], marker="o", ms=3, color=cmap(i % 20), label=short_name(n))
    first = next(iter(curves.values()))
    for ref, style in (("popularity", "k--"), ("random", "k:")):
        if first.get(ref):
            ax.plot(first["k"], first[ref], style, label=ref)
    ax.set_xscale("log")
    ax.set_xlabel("K (top-K list length)")
    ax.set_ylabel("catalog coverage@K")
    ax.set_title("Catalog coverage of top-K lists")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return figure_png(fig)


def item_projection(run: Mapping[str, Any], *, seed: int = 0) -> dict[str, Any] | None:
    """2-D PCA of the run's item embeddings with a KMeans cluster per item (see the module
    docstring; the clusters are ``twotower_model.items.items_artifact``'s, as the evaluator's
    diagnostics use them), or None when the model folder is gone."""
    model_dir, features_dir = Path(run.get("model_dir", "")), Path(run.get("features_dir", ""))
    if not (model_dir / ITEM_EMBEDDINGS_FILE).is_file():
        return None
    ids, emb = read_item_embeddings(model_dir)
    emb = without_item_prior(emb, model_prior(model_dir)).astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(ids) > MAX_PROJECTED_ITEMS:
        keep = np.sort(rng.choice(len(ids), MAX_PROJECTED_ITEMS, replace=False))
        ids, emb = ids[keep], emb[keep]
    centred = emb - emb.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T if vt.shape[0] >= 2 else np.c_[centred[:, :1], np.zeros(len(ids))]
    explained = (s[:2] ** 2).sum() / max((s ** 2).sum(), 1e-12)
    clusters, source = None, None
    if (features_dir / FL.FEATURE_SPEC).is_file():
        art = items_artifact(features_dir, ids, seed=seed)
        if art.clusters is not None:
            missing = np.array([isinstance(c, str) and c.startswith("__missing__") for c in art.clusters])
            codes, _ = pd.factorize(np.where(missing, None, art.clusters), use_na_sentinel=True, sort=True)
            clusters = np.where(missing, -1, codes)
            source = ("features' KMeans item_cluster" if art.kmeans_k is None
                      else f"KMeans(k={art.kmeans_k}) on {art.content_column}, fitted for the report")
    return {"xy": xy, "clusters": clusters, "cluster_source": source, "explained": float(explained), "items": len(ids)}


def plot_embeddings(runs: Sequence[Mapping[str, Any]]) -> str | None:
    """A panel per experiment: the item embeddings' 2-D PCA projection coloured by cluster."""
    primary = primary_runs(runs)
    projections = {n: item_projection(r) for n, r in primary.items()}
    projections = {n: p for n, p in projections.items() if p is not None}
    if not projections:
        return None
    plt = pyplot()
    cols = min(4, len(projections))
    nrows = math.ceil(len(projections) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 4.0 * nrows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax in axes.flat[len(projections):]:
        ax.axis("off")
    for ax, (n, p) in zip(axes.flat, projections.items()):
        c = p["clusters"]
        colours = [cmap(int(v) % 20) if v >= 0 else (0.7, 0.7, 0.7, 1.0) for v in c] if c is not None else "tab:blue"
        ax.scatter(p["xy"][:, 0], p["xy"][:, 1], s=4, c=colours, linewidths=0)
        ax.set_title(f"{short_name(n)}: {p['items']} items, PCA {p['explained']:.0%} var", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        if p["cluster_source"]:
            ax.set_xlabel(p["cluster_source"], fontsize=7)
    fig.suptitle("Item embeddings (model's item tower), 2-D PCA, coloured by KMeans cluster")
    fig.tight_layout()
    return figure_png(fig)


# ---- HTML -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:8px 0 4px 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f3f7} td.text,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
p.note{font-size:12px;color:#555;margin:2px 0 18px 0}
img{max-width:100%;border:1px solid #ddd;margin:6px 0 18px 0}
"""


def _html_table(tid: str, t: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t["header"])
    def cell(c: str) -> str:
        text = not c[:1].isdigit() and c != "-"
        return f'<td class="text">{html.escape(c)}</td>' if text else f"<td>{html.escape(c)}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in t["rows"])
    return (f'<h2>{html.escape(t["title"])}</h2>\n<table id="{tid}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>\n'
            f'<p class="note">{html.escape(t["note"])}</p>\n')


def render_html(runs: Sequence[Mapping[str, Any]]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>twotower experiment report</title>",
        f"<style>{CSS}</style></head><body>", "<h1>twotower experiment report</h1>",
        f"<p>{len(primary_runs(runs))} experiments, {len(runs)} runs.</p>",
    ]
    for tid, t in tables(runs).items():
        parts.append(_html_table(tid, t))
    plots = (
        ("plot-metrics", "Seed metrics per experiment", plot_metrics(runs)),
        ("plot-coverage", "Catalog coverage curves", plot_coverage(runs)),
        ("plot-embeddings", "Item embeddings by KMeans cluster", plot_embeddings(runs)),
    )
    for pid, title, png in plots:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if png is None:
            parts.append(f'<p class="note" id="{pid}-missing">Not available: the runs hold no data for this plot.</p>')
        else:
            parts.append(f'<img id="{pid}" alt="{html.escape(title)}" src="data:image/png;base64,{png}">')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(root: str | Path, out: str | Path | None = None) -> dict[str, str]:
    """``report.md`` and ``report.html`` from the runs under ``root``; returns their paths."""
    runs = load_runs(root)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    md, page = out / "report.md", out / "report.html"
    md.write_text(markdown(runs) + "\n")
    page.write_text(render_html(runs))
    return {"markdown": str(md), "html": str(page)}
