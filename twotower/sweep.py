"""`twotower sweep`: a grid of ``[model]`` settings trained and scored over one built features
folder, with model seeds, tracked in MLflow, summarised on a page that plots AUC against
full-catalog recall@10 beside the random, popularity and oracle rows.

The grid file is TOML, read as data only (``read_grid``; nothing in it is run or followed)::

    seeds = [1, 2, 3]        # model seeds of every point (default: the base config's model.seed)

    [grid]                   # the cartesian product of these [model] settings ...
    loss = ["bce", "hybrid"]
    hybrid_weight = [0.1, 0.3]

    [[point]]                # ... and/or explicit points, each a few [model] settings
    head = "dot"

A point is the base ``[model]`` (the one saved with the features, or ``--config``'s) with its
settings applied, in canonical form (``ModelConfig.canonical``): settings that change nothing
(a hybrid weight without the hybrid loss, a prior weight without a prior) are dropped, and
equal models are one point, named by the settings of the first combination that gives it
(``base`` for none).

Runs that train the same towers (``ModelConfig.training_dict`` and the seed) train once, into
``OUT/trained/<key>``; each run's model folder is a linked copy given its own retrieval prior
(``train.set_retrieval_prior``): priors and prior weights cost an evaluation, not a training.

    OUT/sweep.json               grid, points, every run's metrics, per point mean and spread
    OUT/sweep.md, sweep.html     the table and the AUC-against-recall@10 plot
    OUT/trained/<key>/           one trained model per distinct training
    OUT/runs/<point>-seed<S>/    model/, eval/ (metrics.json) and run.json
    OUT/mlflow.db                the default tracking store (MLFLOW_TRACKING_URI overrides)

Rerunning the command resumes: a run whose ``run.json`` holds the same model config is kept.
One sweep per OUT at a time (a lock). Tuning belongs on features whose validation day lies in
the train window of the features it is then confirmed on (docs/evaluation.md), never on the
day a result is reported for.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import html
import itertools
import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from twotower_features import layout as L
from twotower_features.config import (
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    read_toml,
)
from twotower_features.errors import UserError
from twotower_features.io import write_json_atomic
from twotower_model import layout as ML
from twotower_model.metrics import TABLE_METRICS

from .fingerprints import code_version
from .lock import ExclusiveLock
from .report import CSS, HEADERS, figure_png, pyplot
from .staging import link_or_copy
from .tracking import RUN_FILE, default_tracking_uri, log_to_mlflow

SWEEP_FILE = "sweep.json"
MARKDOWN_FILE = "sweep.md"
HTML_FILE = "sweep.html"
LOCK_FILE = ".sweep.lock"
TRAINED_DIR = "trained"
RUNS_DIR = "runs"
DEFAULT_MLFLOW_EXPERIMENT = "twotower-sweep"
# the grid's runs are trained one after another: a grid of more is a typo, not a plan
MAX_RUNS = 400
RECALLS = ("recall@10", "recall@100")
FIGURES = (*TABLE_METRICS, *RECALLS)
_GRID_KEYS = ("seeds", "grid", "point")
_MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


class SweepError(UserError):
    """A grid file or a sweep folder that cannot be used; the message names the file and key."""


# ---- the grid -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    model: ModelConfig  # canonical, seed as the base's
    settings: dict[str, Any]  # the settings the grid gave it (those that change something)


@dataclasses.dataclass(frozen=True)
class Grid:
    points: tuple[Point, ...]
    seeds: tuple[int, ...]

    def runs(self) -> list[tuple[Point, int]]:
        return [(p, s) for p in self.points for s in self.seeds]


def _setting(path: str, key: str, value: Any) -> Any:
    if key not in _MODEL_KEYS or key == "seed":
        hint = "model seeds go in the top-level 'seeds' list" if key == "seed" else f"expected [model] keys {sorted(k for k in _MODEL_KEYS if k != 'seed')}"
        raise SweepError(f"grid file {path!r}: {key!r} is not a sweepable setting; {hint}")
    return value


def read_grid(path: str | Path, base: ModelConfig) -> Grid:
    """The points and seeds of a grid file over ``base``; every refusal names the file and key:
    an unknown key, a value ``ModelConfig`` refuses, an empty grid, more than ``MAX_RUNS`` runs."""
    p = str(path)
    try:
        data = read_toml(path, "grid file")
    except ConfigError as e:
        raise SweepError(str(e)) from None
    unknown = sorted(set(data) - set(_GRID_KEYS))
    if unknown:
        raise SweepError(f"grid file {p!r}: unknown key(s) {unknown}; expected {list(_GRID_KEYS)}")
    seeds = data.get("seeds", [base.seed])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) != len(seeds):
        raise SweepError(f"grid file {p!r}: 'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise SweepError(f"grid file {p!r}: [grid] must be a table of [model] settings, each a list of values")
    points_in = data.get("point", [])
    if not isinstance(points_in, list) or not all(isinstance(x, dict) for x in points_in):
        raise SweepError(f"grid file {p!r}: 'point' must be an array of tables ([[point]]), each a few [model] settings")
    combos: list[dict[str, Any]] = [dict(x) for x in points_in]
    if grid:
        axes = []
        for key, values in grid.items():
            _setting(p, key, values)
            if not isinstance(values, list) or not values:
                raise SweepError(f"grid file {p!r}: [grid] {key!r} must be a non-empty list of values, got {values!r}")
            axes.append([(key, v) for v in values])
        n = math.prod(len(a) for a in axes)
        if n * len(seeds) > MAX_RUNS:
            raise SweepError(f"grid file {p!r}: the [grid] makes {n} points x {len(seeds)} seeds, over the limit of {MAX_RUNS} runs")
        combos += [dict(c) for c in itertools.product(*axes)]
    if not combos:
        raise SweepError(f"grid file {p!r} has no points: give a [grid] table or [[point]] tables")
    base = base.canonical()
    points: dict[str, Point] = {}
    seen: set[ModelConfig] = set()
    for i, combo in enumerate(combos):
        for key in combo:
            _setting(p, key, combo[key])
        values = dict(combo)
        try:
            given = dataclasses.replace(base, **values)
        except (ConfigError, TypeError) as e:
            raise SweepError(f"grid file {p!r}, point {i + 1} {combo!r}: {e}") from None
        model = given.canonical()
        settings = {k: getattr(model, k) for k in values if k not in given.ineffective()}
        if model not in seen:  # the first combination of a model names it
            seen.add(model)
            name = point_name(settings)
            if name in points:
                raise SweepError(f"grid file {p!r}: two points are both named {name!r}; give their settings differently")
            points[name] = Point(name, model, settings)
    if len(points) * len(seeds) > MAX_RUNS:
        raise SweepError(f"grid file {p!r}: {len(points)} points x {len(seeds)} seeds, over the limit of {MAX_RUNS} runs")
    return Grid(tuple(points.values()), tuple(seeds))


def point_name(settings: Mapping[str, Any]) -> str:
    """``{"loss": "hybrid", "hybrid_weight": 0.1}`` -> ``hybrid_weight=0.1,loss=hybrid``; a folder
    name (characters outside ``[A-Za-z0-9_.=,-]`` become ``-``); ``base`` for no settings."""
    def text(v: Any) -> str:
        return "-".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    name = ",".join(f"{k}={text(v)}" for k, v in sorted(settings.items())) or "base"
    return re.sub(r"[^A-Za-z0-9_.=,-]", "-", name)


def training_key(model: ModelConfig) -> str:
    """Equal for two configs that train the same towers (``training_dict``, the seed included)."""
    return hashlib.sha256(json.dumps(model.training_dict(), sort_keys=True).encode()).hexdigest()[:16]


# ---- running --------------------------------------------------------------------------------
def run_sweep(
    features_dir: str | Path,
    grid: Grid,
    out: str | Path,
    *,
    base: ExperimentConfig,
    name: str | None = None,
    ground_truth: str | Path | None = None,
    tracking_uri: str | None = None,
    mlflow_experiment: str = DEFAULT_MLFLOW_EXPERIMENT,
    track: bool = True,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Every (point, seed) of ``grid`` trained (once per distinct training) and evaluated on
    ``features_dir``; returns the summary also written to ``OUT/sweep.json`` (with the pages)."""
    features_dir, out = Path(features_dir).resolve(), Path(out)
    if not (features_dir / L.FEATURE_SPEC).is_file():
        raise SweepError(f"{str(features_dir)!r} has no {L.FEATURE_SPEC}: it is not the output of `twotower features`")
    from twotower_model.evaluate import evaluate
    from twotower_model.train import set_retrieval_prior, train
    name = name or out.resolve().name
    out.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or default_tracking_uri(out)
    runs = grid.runs()
    records: list[dict[str, Any]] = []
    with ExclusiveLock(out / LOCK_FILE, run_id=f"sweep {name}"):
        for i, (point, seed) in enumerate(runs, 1):
            model_cfg = dataclasses.replace(point.model, seed=seed)
            run_name = f"{point.name}-seed{seed}"
            run_dir = out / RUNS_DIR / run_name
            done = _finished(run_dir, model_cfg)
            if done is not None:
                log(f"[{i}/{len(runs)}] {run_name}: done before, kept")
                records.append(done)
                continue
            started = _dt.datetime.now(_dt.timezone.utc)
            key = training_key(model_cfg)
            trained = out / TRAINED_DIR / key
            t0 = time.monotonic()
            reused = trained.is_dir()
            if not reused:
                log(f"[{i}/{len(runs)}] {run_name}: train (key {key})")
                tmp = _fresh(out / TRAINED_DIR / f".{key}.tmp")
                train(str(features_dir), str(tmp), model_cfg, progress=lambda s: log(f"    {s}"))
                tmp.rename(trained)
            t_train = time.monotonic() - t0
            tmp = _fresh(out / RUNS_DIR / f".{run_name}.tmp")
            shutil.copytree(trained, tmp / "model", copy_function=link_or_copy)  # the prior rewrites, never writes through
            set_retrieval_prior(tmp / "model", features_dir, model_cfg)
            t0 = time.monotonic()
            metrics = evaluate(str(features_dir), str(tmp / "model"), str(tmp / "eval"), ground_truth=str(ground_truth) if ground_truth else None)
            t_eval = time.monotonic() - t0
            metrics = json.loads((tmp / "eval" / ML.METRICS_FILE).read_text())  # NaN as null, as saved
            cfg = dataclasses.replace(base, model=model_cfg)
            record = {
                "experiment": name,
                "run_name": run_name,
                "description": f"sweep {name}: {point.name}",
                "model_seed": seed,
                "started_at": started.isoformat(timespec="seconds"),
                "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "config": cfg.to_dict(),
                "config_hash": cfg.config_hash(),
                "data_hash": cfg.data_hash(),
                "features_dir": str(features_dir),
                "model_dir": str((run_dir / "model").resolve()),
                "eval_dir": str((run_dir / "eval").resolve()),
                "metrics": metrics,
                "timings": {"train": round(t_train, 2) if not reused else 0.0, "evaluate": round(t_eval, 2)},
                "code_version": code_version(),
                "sweep": {"name": name, "point": point.name, "settings": point.settings, "trained": key, "training_reused": reused},
            }
            write_json_atomic(tmp / RUN_FILE, record)
            if run_dir.exists():
                shutil.rmtree(run_dir)
            tmp.rename(run_dir)
            if track:
                record["mlflow"] = {"tracking_uri": uri, "experiment": mlflow_experiment}
                record["mlflow"]["run_id"] = log_to_mlflow(
                    record, run_dir, features_dir, tracking_uri=uri, experiment=mlflow_experiment, artifact_root=out / "mlartifacts"
                )
                write_json_atomic(run_dir / RUN_FILE, record)
            row, diag = _figures(record)
            log(f"[{i}/{len(runs)}] {run_name}: AUC {row['auc']:.4f}, recall@10 {_num(diag.get('recall@10'))}"
                f"{' (towers reused)' if reused else ''}, {t_train + t_eval:.0f} s")
            records.append(record)
        summary = summarise(name, grid, records)
        write_json_atomic(out / SWEEP_FILE, summary)
        (out / MARKDOWN_FILE).write_text(markdown(summary) + "\n")
        (out / HTML_FILE).write_text(render_html(summary))
    return summary


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _finished(run_dir: Path, model_cfg: ModelConfig) -> dict[str, Any] | None:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        same = ModelConfig(**record["config"]["model"]) == model_cfg
    except (ValueError, KeyError, TypeError, ConfigError):
        return None
    return record if same else None


# ---- summarising ----------------------------------------------------------------------------
def _figures(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    m = record.get("metrics") or {}
    return (m.get("rows") or {}).get("model", {}), (m.get("diagnostics") or {}).get("model") or {}


def _stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.array([x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)], float)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None, "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def references(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The random, popularity and oracle rows (one validation day: equal in every run), each
    with its full-catalog recalls where the evaluator has them."""
    if not records:
        return {}
    m = records[0].get("metrics") or {}
    rows, diag = m.get("rows") or {}, m.get("diagnostics") or {}
    out = {}
    for kind in ("random", "popularity", "oracle"):
        if kind in rows:
            out[kind] = {k: rows[kind].get(k) for k in TABLE_METRICS} | {k: (diag.get(kind) or {}).get(k) for k in RECALLS}
    return out


def summarise(name: str, grid: Grid, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per point: every run's figures, their mean and spread, the AUC lift over 0.5 as a share of
    the oracle's, whether the mean beats popularity on every figure, and the Pareto front of
    (AUC, recall@10)."""
    refs = references(records)
    oracle_auc = (refs.get("oracle") or {}).get("auc")
    pop = refs.get("popularity") or {}
    by_point: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_point.setdefault(r["sweep"]["point"], []).append(r)
    points = []
    for p in grid.points:
        runs = by_point.get(p.name, [])
        figures = [dict(row) | {k: diag.get(k) for k in RECALLS} for row, diag in map(_figures, runs)]
        stats = {k: _stats([f.get(k) for f in figures]) for k in FIGURES}
        auc = stats["auc"]["mean"]
        entry = {
            "point": p.name, "settings": p.settings, "model": dataclasses.asdict(p.model) | {"seed": None},
            "runs": [{"seed": r["model_seed"], "run": r["run_name"], **{k: f.get(k) for k in FIGURES}} for r, f in zip(runs, figures)],
            "stats": stats,
            "auc_lift_share": (auc - 0.5) / (oracle_auc - 0.5) if auc is not None and oracle_auc and oracle_auc != 0.5 else None,
            "beats_popularity": bool(pop) and all(
                stats[k]["mean"] is not None and pop.get(k) is not None and stats[k]["mean"] > pop[k] for k in FIGURES
            ),
        }
        points.append(entry)
    for e in points:
        a, r = e["stats"]["auc"]["mean"], e["stats"]["recall@10"]["mean"]
        e["pareto"] = a is not None and r is not None and not any(
            o is not e and o["stats"]["auc"]["mean"] is not None and o["stats"]["recall@10"]["mean"] is not None
            and o["stats"]["auc"]["mean"] >= a and o["stats"]["recall@10"]["mean"] >= r
            and (o["stats"]["auc"]["mean"], o["stats"]["recall@10"]["mean"]) != (a, r)
            for o in points
        )
    return {"sweep": name, "seeds": list(grid.seeds), "references": refs, "points": points,
            "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ---- the pages ------------------------------------------------------------------------------
def _num(v: Any, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _cell(s: Mapping[str, Any]) -> str:
    if s["mean"] is None:
        return "-"
    return _num(s["mean"]) + (f" ± {s['sd']:.4f}" if s.get("sd") is not None else "")


def table(summary: Mapping[str, Any]) -> dict[str, Any]:
    header = ["#", "point", "n", *(HEADERS.get(k, k) for k in FIGURES), "AUC lift / oracle's", "beats popularity"]
    rows = []
    for i, e in enumerate(summary["points"], 1):
        rows.append([str(i), e["point"] + (" *" if e["pareto"] else ""), str(e["stats"]["auc"]["n"]), *(_cell(e["stats"][k]) for k in FIGURES),
                     _num(e["auc_lift_share"], 2), "yes" if e["beats_popularity"] else "no"])
    oracle_auc = (summary["references"].get("oracle") or {}).get("auc")
    for kind, ref in summary["references"].items():
        share = (ref["auc"] - 0.5) / (oracle_auc - 0.5) if oracle_auc and ref.get("auc") is not None and oracle_auc != 0.5 else None
        rows.append(["", kind, "", *(_num(ref.get(k)) for k in FIGURES), _num(share, 2), ""])
    return {"header": header, "rows": rows}


def markdown(summary: Mapping[str, Any]) -> str:
    t = table(summary)
    lines = [f"# Sweep {summary['sweep']}", "",
             f"{len(summary['points'])} points x seeds {summary['seeds']}; mean ± sample sd over seeds. "
             "`*`: on the Pareto front of (AUC, recall@10). Recalls are full-catalog.", "",
             "| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
    lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
    return "\n".join(lines)


def format_summary(summary: Mapping[str, Any]) -> str:
    """The table as aligned text, for the terminal."""
    t = table(summary)
    rows = [t["header"], *t["rows"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(t["header"]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def varying(summary: Mapping[str, Any]) -> list[str]:
    """The settings whose value differs between the sweep's points (what the plot labels show)."""
    keys = sorted({k for e in summary["points"] for k in e["model"] if k != "seed"})
    return [k for k in keys if len({json.dumps(e["model"].get(k)) for e in summary["points"]}) > 1]


def point_label(entry: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The point's values of ``keys``, those without effect for it left out."""
    model = ModelConfig(**{k: v for k, v in entry["model"].items() if k != "seed"})
    shown = [k for k in keys if k not in model.ineffective()]
    return ", ".join(f"{k}={entry['model'][k]}" for k in shown) or entry["point"]


def plot(summary: Mapping[str, Any]) -> str | None:
    """AUC against full-catalog recall@10, the whole range with the references (left) and
    zoomed on the points (right): each run a dot, each point's mean with one standard deviation
    each way and its table number (a diamond on the Pareto front); popularity and random as
    points, the oracle's AUC as a line (it ranks impressions only)."""
    pts = [(i, e) for i, e in enumerate(summary["points"], 1)
           if e["stats"]["auc"]["mean"] is not None and e["stats"]["recall@10"]["mean"] is not None]
    if not pts:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), gridspec_kw={"width_ratios": [1, 1.6]})
    cmap = plt.get_cmap("tab20")
    refs = summary["references"]
    keys = varying(summary)
    for ax in axes:
        for i, e in pts:
            color = cmap((i - 1) % 20)
            runs = [r for r in e["runs"] if r.get("auc") is not None and r.get("recall@10") is not None]
            ax.scatter([r["recall@10"] for r in runs], [r["auc"] for r in runs], s=10, color=color, alpha=0.4)
            s = e["stats"]
            label = f"{i}: {point_label(e, keys)}"
            ax.errorbar(s["recall@10"]["mean"], s["auc"]["mean"], xerr=s["recall@10"]["sd"] or 0, yerr=s["auc"]["sd"] or 0,
                        fmt="D" if e["pareto"] else "o", ms=6, color=color, capsize=2, label=label if ax is axes[1] else None)
            if ax is axes[1]:
                ax.annotate(str(i), (s["recall@10"]["mean"], s["auc"]["mean"]), textcoords="offset points", xytext=(5, 3), fontsize=8)
        for kind, marker in (("popularity", "*"), ("random", "X")):
            ref = refs.get(kind) or {}
            if ref.get("auc") is not None and ref.get("recall@10") is not None:
                ax.scatter([ref["recall@10"]], [ref["auc"]], marker=marker, s=150, color="black", label=kind if ax is axes[0] else None, zorder=5)
        if (refs.get("oracle") or {}).get("auc") is not None:
            ax.axhline(refs["oracle"]["auc"], color="black", ls="--", lw=1, label="oracle AUC" if ax is axes[0] else None)
        ax.set_xlabel("full-catalog recall@10")
        ax.grid(alpha=0.3)
    xs = [e["stats"]["recall@10"]["mean"] for _, e in pts]
    ys = [e["stats"]["auc"]["mean"] for _, e in pts]
    pad_x, pad_y = max(0.01, 0.08 * (max(xs) - min(xs))), max(0.003, 0.08 * (max(ys) - min(ys)))
    axes[1].set_xlim(min(xs) - pad_x, max(xs) + pad_x)
    axes[1].set_ylim(min(ys) - pad_y, max(ys) + pad_y)
    axes[0].set_ylabel("AUC (validation impressions)")
    axes[0].set_title("all runs, with the reference rows")
    axes[1].set_title("the points, zoomed (mean ± sd over seeds)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"sweep {summary['sweep']}: ranking (AUC) against retrieval (recall@10), model seeds {summary['seeds']}")
    fig.tight_layout()
    # the points' settings below the panels (saved with bbox_inches="tight", so nothing is cut)
    fig.legend(*axes[1].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=1 if len(pts) <= 12 else 2,
               fontsize=8, title="points (" + (", ".join(keys) or "settings") + "); a diamond is on the Pareto front", title_fontsize=8)
    return figure_png(fig)


def render_html(summary: Mapping[str, Any]) -> str:
    t = table(summary)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t["header"])
    def cell(i: int, c: str) -> str:
        return f'<td class="text">{html.escape(c)}</td>' if i == 1 else f'<td class="num">{html.escape(c)}</td>'

    body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(r)) + "</tr>" for r in t["rows"])
    png = plot(summary)
    img = (f'<img id="plot-sweep" alt="AUC against recall@10" src="data:image/png;base64,{png}">' if png
           else '<p class="note" id="plot-sweep-missing">Not available: no run has both AUC and recall@10.</p>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>twotower sweep {html.escape(summary['sweep'])}</title>",
        f"<style>{CSS} td.num{{white-space:nowrap}}</style></head><body>", f"<h1>Sweep {html.escape(summary['sweep'])}</h1>",
        f"<p>{len(summary['points'])} points, model seeds {html.escape(str(summary['seeds']))}; mean ± sample sd; "
        "* marks the Pareto front of (AUC, recall@10); recalls are full-catalog.</p>",
        f'<table id="sweep"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>',
        "<h2>AUC against full-catalog recall@10</h2>", img, "</body></html>",
    ])
