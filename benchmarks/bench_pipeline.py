"""``make bench``: the feature pipeline and its hot stages at 1M / 10M / 50M events, with baselines.

    .venv/bin/python benchmarks/bench_pipeline.py [--sizes 1m,10m,50m] [--runs 3] [--single-run-from 50m]

Per size (data generated once and cached under ``build/bench/<size>/data``):

1. the four feature stages of experiment 8 (``keep_lists`` off, as at scale), each timed:
   wall time, input rows/s per core, peak memory (PSS) of the whole process tree (driver, JVM,
   Python workers), task skew (max / median task duration of each Spark stage) and input and
   shuffle bytes, both read from the driver UI's REST API;
2. at the ``--compare-sizes`` (default 1m,10m): the history stage (``compute_histories``)
   against a straightforward Spark window and the same rule in DuckDB SQL, and the filter stage
   against DuckDB, on the same inputs, after an equality check on a sample of users (the bench
   fails when they disagree); the TFRecord writer against a per-row ``tf.train.Example`` loop on
   rows of the examples table.

Once per run: the evaluator against a MIND-style loop (``bench_metrics.py``) and tf.data against
training for experiment 8 (``bench_train.py`` on the first size's TFRecords).

Every timing is the median of ``--runs`` runs (1 run for sizes >= ``--single-run-from``); runs
of the compared implementations are interleaved, and the naive window is cancelled after
``NAIVE_CAP`` times our stage's time and not repeated (its ratio is then a lower bound). Headline ratios come
from the largest compared size; ``scaling_50m_over_10m`` needs both sizes. Results:
``benchmarks/results/latest.json`` (rewritten after every size, ``complete`` false until the
end) and ``build/bench/<size>/result.json`` per size, reused with ``--resume``.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BUILD = ROOT / "build" / "bench"
RESULTS = ROOT / "benchmarks" / "results"
EVENTS_PER_USER = 48.4  # generator: ~6.05 events per user-day over the 8 generated days
DAYS = 8  # the 7-day train window and the validation day of the shipped configs
START = _dt.date(2026, 6, 28)
HISTORY_N, N_CLUSTERS = 100, 18
SAMPLE_USERS = 300
NAIVE_CAP = 5.0  # the naive window is cancelled after this many times our history stage's time
TFRECORD_ROWS = 200_000
# seconds per million events (rough, 2-core machine): only for the estimates printed before a
# size starts; replaced by the measured rates after each size
EST_S_PER_M = {"generate": 26.0, "pipeline_run": 60.0, "compare_run": 40.0, "fixed": 60.0}

GOALS = {  # issue 15's (the comparisons at their largest size, the chain at 10M)
    "chain_events_per_s_per_core_10m": (">=", 40_000),
    "examples_over_history_kernel": ("<=", 3.0),
    "history_vs_naive_spark": (">=", 5.0),
    "history_vs_duckdb": ("<=", 0.5),
    "filter_vs_duckdb": ("<=", 3.0),
    "tfrecord_vs_rowloop": (">=", 5.0),
    "input_vs_train_rate": (">=", 0.9),
    "metrics_vs_loop": (">=", 20.0),
    "scaling_50m_over_10m": ("<=", 5.5),
    "task_skew_max_over_median": ("<=", 3.0),
    "train_examples_per_s": (">=", 50_000),
}


def estimate(events: int, runs: int, cached: bool, comparisons: bool) -> float:
    m = events / 1e6
    per_run = EST_S_PER_M["pipeline_run"] + (EST_S_PER_M["compare_run"] if comparisons else 0.0)
    return m * ((0 if cached else EST_S_PER_M["generate"]) + runs * per_run) + EST_S_PER_M["fixed"]


def parse_size(s: str) -> int:
    s = s.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(s[-1:], 1)
    return int(float(s[:-1] if mult > 1 else s) * mult)


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------ memory of the process tree
class PeakMemory:
    """Samples the memory (PSS) of this process and all its descendants (JVM, Python workers)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree_rss(self) -> int:
        children: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, IndexError, ValueError):
                    pass
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            todo += children.get(pid, [])
            total += self._pss(pid)
        return total

    def _pss(self, pid: int) -> int:
        """Proportional set size (shared pages of forked Python workers counted once), else RSS."""
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * self._page
        except OSError:
            return 0

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._tree_rss())

    def reset(self) -> None:
        self.peak = self._tree_rss()

    def close(self) -> None:
        self._stop.set()


# ------------------------------------------------------------------ task durations (driver UI)
class TaskSkew:
    """Max / median task duration per Spark stage of a job group, from the UI's REST API."""

    def __init__(self, spark) -> None:
        self.sc = spark.sparkContext
        self.base = f"{self.sc.uiWebUrl}/api/v1/applications/{self.sc.applicationId}" if self.sc.uiWebUrl else None

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return json.loads(r.read())

    def of_group(self, group: str, min_tasks: int = 2) -> dict[str, Any]:
        if not self.base:
            return {"error": "spark.ui.enabled is off"}
        stages = []
        io_bytes = dict.fromkeys(("inputBytes", "shuffleWriteBytes", "shuffleReadBytes", "outputBytes", "memoryBytesSpilled", "diskBytesSpilled"), 0)
        try:
            jobs = [j for j in self._get("/jobs") if j.get("jobGroup") == group]
            for sid in sorted({s for j in jobs for s in j["stageIds"]}):
                for att in self._get(f"/stages/{sid}"):
                    if att.get("status") != "COMPLETE":
                        continue
                    for k in io_bytes:
                        io_bytes[k] += int(att.get(k, 0) or 0)
                    tasks = self._get(f"/stages/{sid}/{att['attemptId']}/taskList?length=1000000")
                    d = sorted(t["duration"] for t in tasks if t.get("status") == "SUCCESS" and "duration" in t)
                    if len(d) < min_tasks:
                        continue
                    med = statistics.median(d)
                    stages.append({"stage": sid, "name": att.get("name", "")[:60], "tasks": len(d), "median_ms": med, "max_ms": d[-1],
                                   "max_over_median": round(d[-1] / max(med, 1), 2)})
        except Exception as e:  # the REST API is a diagnostic: never fail the bench on it
            return {"error": f"{type(e).__name__}: {e}"}
        # stages whose tasks all finish within 1 s are dominated by scheduling noise
        real = [s for s in stages if s["max_ms"] >= 1000]
        worst = max(real, key=lambda s: s["max_over_median"]) if real else None
        return {"stages": stages, "worst_max_over_median": worst["max_over_median"] if worst else None, "worst_stage": worst, "bytes": io_bytes}


# ------------------------------------------------------------------ timing helpers
class Bench:
    def __init__(self, spark, cores: int, mem: PeakMemory) -> None:
        self.spark, self.sc, self.cores, self.mem = spark, spark.sparkContext, cores, mem
        self.skew = TaskSkew(spark)

    def timed(self, group: str, fn: Callable[[], Any], timeout: float | None = None) -> dict[str, Any]:
        """Run ``fn`` under a Spark job group; wall seconds, peak memory; cancelled after ``timeout``."""
        self.sc.setJobGroup(group, group, interruptOnCancel=True)
        timer = threading.Timer(timeout, lambda: self.sc.cancelJobGroup(group)) if timeout else None
        if timer:  # a cancelled job logs every killed task's stack trace at ERROR
            self.sc.setLogLevel("FATAL")
        self.mem.reset()
        t0 = time.perf_counter()
        if timer:
            timer.start()
        timed_out, value = False, None
        try:
            value = fn()
        except Exception:
            if timer and time.perf_counter() - t0 >= timeout * 0.99:
                timed_out = True
            else:
                raise
        finally:
            if timer:
                timer.cancel()
                if timed_out:
                    time.sleep(2)  # let the killed tasks finish logging
                self.sc.setLogLevel(os.environ.get("TWOTOWER_SPARK_LOG_LEVEL", "WARN"))
            self.sc.setJobGroup("bench-idle", "idle")
        return {"seconds": time.perf_counter() - t0, "peak_mem_gb": round(self.mem.peak / 2**30, 2), "timed_out": timed_out, "value": value, "group": group}


def median_of(runs: list[dict[str, Any]]) -> float:
    return statistics.median(r["seconds"] for r in runs)


def noop(df) -> None:
    df.write.format("noop").mode("overwrite").save()


# ------------------------------------------------------------------ data
def gen_params(events: int) -> dict[str, Any]:
    users = max(200, round(events / EVENTS_PER_USER))
    return {"users": users, "items": max(2000, events // 400), "days": DAYS, "start": START, "seed": 0}


def ensure_data(spark, size: str, events: int) -> tuple[Path, dict[str, Any]]:
    from twotower_features.generate import generate

    d = BUILD / size / "data"
    params = gen_params(events)
    marker = d / "_BENCH_COMPLETE"
    key = json.dumps({k: str(v) for k, v in params.items()}, sort_keys=True)
    if marker.is_file() and marker.read_text() == key:
        rep = json.loads((d / "generate_report.json").read_text())
        say(f"{size}: cached data {d} ({rep['rows']['interactions']:,} events)")
        return d, {"seconds": None, "cached": True, "interactions": rep["rows"]["interactions"], **{k: str(v) for k, v in params.items()}}
    if d.exists():
        shutil.rmtree(d)
    say(f"{size}: generating {params['users']:,} users x {DAYS} days, {params['items']:,} items -> {d}")
    t0 = time.perf_counter()
    rep = generate(spark, str(d), progress=lambda m: say("  " + m), **params)
    secs = time.perf_counter() - t0
    marker.write_text(key)
    return d, {"seconds": round(secs, 1), "cached": False, "interactions": rep["rows"]["interactions"], **{k: str(v) for k, v in params.items()}}


VECTORED_IO = "spark.hadoop.parquet.hadoop.vectored.io.enabled"


def load_exp08():
    from twotower.cli import load_config

    cfg = load_config("exp08_simclr_cluster18_creator")
    return replace(cfg, history=replace(cfg.history, keep_lists=False))


# ------------------------------------------------------------------ 1. the pipeline
STAGE_INPUT = {  # which report count is the stage's input rows
    "prepare": lambda r: r.rows_in.get("interactions_in_window", 0),
    "embeddings": lambda r: r.rows_in.get("kept_train_items", 0),
    "examples": lambda r: sum(r.rows_in.values()),
    "tfrecords": lambda r: sum(r.rows_in.values()),
}


def run_pipeline(b: Bench, cfg, data: Path, out: Path, size: str, run: int) -> dict[str, Any]:
    from twotower.stages import STAGES

    if out.exists():
        shutil.rmtree(out)
    stages = {}
    for stage in STAGES:
        st = stage.name
        # the size in the job group: the sizes run in one application, and a group's stages are
        # looked up by its name in the UI (the same name at two sizes summed both)
        r = b.timed(f"pipe-{size}-{st}-{run}", lambda stage=stage: stage.runner(b.spark, cfg, str(data), str(out), lambda m: None))
        rep = r["value"]
        rows = STAGE_INPUT[st](rep)
        stages[st] = {
            "seconds": round(r["seconds"], 2), "rows_in": rows, "rows_out": dict(rep.rows_out),
            "rows_per_s_per_core": round(rows / r["seconds"] / b.cores), "peak_mem_gb": r["peak_mem_gb"], "group": r["group"],
        }
        say(f"    {st:10s} {r['seconds']:7.1f} s  {rows:>11,} rows in  {rows / r['seconds'] / b.cores:>9,.0f} rows/s/core  peak {r['peak_mem_gb']:.1f} GB")
    return stages


# ------------------------------------------------------------------ 2. inputs of the comparisons
def make_inputs(b: Bench, cfg, data: Path, out: Path, inputs: Path) -> dict[str, str]:
    from pyspark.sql import functions as F

    from twotower_features import io
    from twotower_features.labels import add_label
    from twotower_features.pipeline import item_features, tfrecord_rows
    from twotower_features.window import assign_split, window_filter

    spark = b.spark
    if inputs.exists():
        shutil.rmtree(inputs)
    paths = {k: str(inputs / k) for k in ("filter", "history", "history_sample", "tfrecord_rows")}
    b.sc.setJobGroup("bench-inputs", "bench-inputs")
    raw = io.read_table(spark, io.table_path(str(data), "interactions")).filter(window_filter(cfg.window))
    add_label(assign_split(raw, cfg.window), cfg.label).select("user_id", "item_id", "event_ts", "time_spent", "split", "label") \
        .write.parquet(paths["filter"])
    items = spark.read.parquet(str(out / "artifacts" / "items.parquet")).select("item_id", "item_idx", "item_cluster")
    filtered = spark.read.format("delta").load(str(out / "tables" / "filtered")).filter(window_filter(cfg.window))
    hist = filtered.join(F.broadcast(items), "item_id").select(
        "user_id", "item_id", "event_ts", "label", "time_spent", "item_avg_time_spent", "item_idx", "item_cluster")
    hist.write.parquet(paths["history"])
    hist = spark.read.parquet(paths["history"])
    # the sample: the users with the most events (N truncation) and a hash-ordered slice of the rest
    per_user = hist.groupBy("user_id").count()
    top = [r[0] for r in per_user.orderBy(F.col("count").desc(), "user_id").limit(10).collect()]
    rest = [r[0] for r in per_user.orderBy(F.xxhash64("user_id"), "user_id").limit(SAMPLE_USERS).collect()]
    hist.filter(F.col("user_id").isin(sorted(set(top + rest)))).coalesce(1).write.parquet(paths["history_sample"])
    # rows of the examples table as the TFRecord stage sees them
    spec = json.loads((out / "feature_spec.json").read_text())
    names = [c["name"] for c in spec["columns"]]
    ex = spark.read.format("delta").load(str(out / "tables" / "examples")).filter(F.col("split") == "train").limit(TFRECORD_ROWS)
    ex = tfrecord_rows(ex, item_features(spark, cfg, str(out)), names)
    ex = ex.withColumn("label", F.col("label").cast("float")).withColumn("event_ts", F.unix_micros("event_ts"))
    ex.coalesce(1).write.parquet(paths["tfrecord_rows"])
    b.sc.setJobGroup("bench-idle", "idle")
    return paths


def history_params(keep_lists: bool):
    from twotower_features.history import HistoryParams

    return HistoryParams(n=HISTORY_N, aggregations=("clusters",), concat_k=5, keep_lists=keep_lists, emb_dim=64, n_clusters=N_CLUSTERS, matrix_file=None)


def duck_connect(cores: int):
    import duckdb

    tmp = BUILD / "duckdb_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(config={"threads": cores, "temp_directory": str(tmp), "preserve_insertion_order": False})


def parquet_source(path: str) -> str:
    return f"read_parquet('{path}/*.parquet')"


def check_history_equal(b: Bench, sample: str) -> dict[str, Any]:
    """Ours (with id lists), the naive window (with id lists) and DuckDB on the sample users:
    the same lists, lengths and cluster distributions, or the bench fails."""
    import numpy as np
    from baselines import duckdb_history_sql, naive_spark_histories
    from pyspark.sql import functions as F

    from twotower_features.history import compute_histories

    ev = b.spark.read.parquet(sample)

    def frame(df):
        pdf = df.withColumn("ts", F.unix_micros("event_ts")).drop("event_ts").toPandas()
        return pdf.sort_values(["user_id", "item_id", "ts"]).reset_index(drop=True)

    ours = frame(compute_histories(ev, history_params(keep_lists=True)))
    naive = frame(naive_spark_histories(ev, HISTORY_N, N_CLUSTERS, keep_lists=True))
    con = duck_connect(b.cores)
    duck = con.execute(duckdb_history_sql(parquet_source(sample), HISTORY_N, N_CLUSTERS)).df()
    duck = duck.sort_values(["user_id", "item_id", "ts"]).reset_index(drop=True)
    con.close()
    problems = []
    if not (len(ours) == len(naive) == len(duck) == ev.count()):
        problems.append(f"row counts ours {len(ours)} naive {len(naive)} duckdb {len(duck)}")
    else:
        for key in ("user_id", "item_id", "ts"):
            if not ((ours[key].to_numpy() == naive[key].to_numpy()).all() and (ours[key].to_numpy() == duck[key].to_numpy()).all()):
                problems.append(f"keys differ in {key}")
        for side in ("pos", "neg"):
            lists_o = [list(x) for x in ours[f"{side}_history"]]
            lists_n = [list(x) for x in naive[f"{side}_history"]]
            if lists_o != lists_n:
                bad = next(i for i, (x, y) in enumerate(zip(lists_o, lists_n)) if x != y)
                problems.append(f"{side}_history differs from the naive window at row {bad}: {lists_o[bad][:5]} vs {lists_n[bad][:5]}")
            for other, name in ((naive, "naive"), (duck, "duckdb")):
                if not (ours[f"{side}_hist_len"].to_numpy() == other[f"{side}_hist_len"].to_numpy()).all():
                    problems.append(f"{side}_hist_len differs from {name}")
                a = np.stack(ours[f"{side}_hist_clusters"].to_numpy())
                o = np.stack(other[f"{side}_hist_clusters"].to_numpy())
                if a.shape != o.shape or not np.allclose(a, o, atol=1e-6):
                    problems.append(f"{side}_hist_clusters differ from {name} (max abs diff {np.abs(a - o).max() if a.shape == o.shape else 'shape'})")
    if problems:
        raise SystemExit("history implementations disagree on the sample: " + "; ".join(problems))
    full = int((ours["pos_hist_len"] == HISTORY_N).sum())
    say(f"    history equality check: {len(ours):,} events of {ours['user_id'].nunique()} users agree "
        f"(lists, lengths, 18-cluster distributions; {full} events with a full N={HISTORY_N} positive history)")
    return {"events": len(ours), "users": int(ours["user_id"].nunique()), "events_with_full_history": full}


def compare(b: Bench, cfg, paths: dict[str, str], size: str, runs: int, expected_filtered_rows: int) -> dict[str, Any]:
    from baselines import (
        duckdb_filter_sql,
        duckdb_history_checksum_sql,
        naive_spark_histories,
    )

    from twotower_features import filters as flt
    from twotower_features.history import compute_histories

    spark = b.spark
    con = duck_connect(b.cores)
    fc = cfg.filters
    cap = fc.client_max_interactions(cfg.window.train_days)
    filter_sql = duckdb_filter_sql(parquet_source(paths["filter"]), item_min=fc.item_min_interactions, client_min=fc.client_min_interactions,
                                   client_max=cap, min_pos=fc.client_min_positives, min_neg=fc.client_min_negatives)
    filter_sql = f"SELECT count(*), sum(hash(user_id, item_id, event_ts)) FROM ({filter_sql})"
    hist_sql = duckdb_history_checksum_sql(parquet_source(paths["history"]), HISTORY_N, N_CLUSTERS)

    def ours_history():
        noop(compute_histories(spark.read.parquet(paths["history"]), history_params(keep_lists=False)))

    def naive_history():
        noop(naive_spark_histories(spark.read.parquet(paths["history"]), HISTORY_N, N_CLUSTERS))

    fitted = Path(paths["filter"]).parent / "fitted"

    def ours_filter():  # the prepare stage's own code: the fitted tables written and read back
        df = spark.read.parquet(paths["filter"])
        noop(flt.fit_and_apply(df, fc, cfg.window.train_days, str(fitted / "item_filter"), str(fitted / "client_filter"))[0])

    res: dict[str, list] = {k: [] for k in ("history_ours", "history_naive_spark", "history_duckdb", "filter_ours", "filter_duckdb")}
    for i in range(runs):
        r = b.timed(f"cmp-{size}-history-ours-{i}", ours_history)
        res["history_ours"].append(r)
        limit = max(60.0, NAIVE_CAP * r["seconds"])  # past this the >= 3x goal is shown: stop
        if res["history_naive_spark"] and res["history_naive_spark"][0]["timed_out"]:
            res["history_naive_spark"].append(res["history_naive_spark"][0])  # a capped run is not repeated
        else:
            res["history_naive_spark"].append(b.timed(f"cmp-{size}-history-naive-{i}", naive_history, timeout=limit))
        res["history_duckdb"].append(b.timed(f"cmp-{size}-history-duckdb-{i}", lambda: con.execute(hist_sql).fetchall()))
        res["filter_ours"].append(b.timed(f"cmp-{size}-filter-ours-{i}", ours_filter))
        res["filter_duckdb"].append(b.timed(f"cmp-{size}-filter-duckdb-{i}", lambda: con.execute(filter_sql).fetchall()))
        n = res["history_naive_spark"][-1]
        say(f"    run {i + 1}/{runs}: history ours {r['seconds']:.1f} s, naive window {'>' if n['timed_out'] else ''}{n['seconds']:.1f} s, "
            f"duckdb {res['history_duckdb'][-1]['seconds']:.1f} s; filter ours {res['filter_ours'][-1]['seconds']:.1f} s, "
            f"duckdb {res['filter_duckdb'][-1]['seconds']:.1f} s")
    con.close()
    kept = int(res["filter_duckdb"][0]["value"][0][0])
    if kept != expected_filtered_rows:
        raise SystemExit(f"DuckDB's filter keeps {kept:,} rows, the prepare stage kept {expected_filtered_rows:,}")
    hist_rows = int(res["history_duckdb"][0]["value"][0][0])
    out: dict[str, Any] = {"history_rows": hist_rows, "filter_rows_kept": kept}
    for k, v in res.items():
        out[k] = {"median_s": round(median_of(v), 3), "runs_s": [round(x["seconds"], 3) for x in v],
                  "timed_out_runs": len({id(x) for x in v if x["timed_out"]}), "peak_mem_gb": max(x["peak_mem_gb"] for x in v)}
    out["history_ours"]["skew"] = b.skew.of_group(res["history_ours"][0]["group"])
    out["history_naive_spark"]["skew"] = b.skew.of_group(res["history_naive_spark"][0]["group"])
    out["filter_ours"]["skew"] = b.skew.of_group(res["filter_ours"][0]["group"])
    out["history_ours"]["rows_per_s_per_core"] = round(hist_rows / out["history_ours"]["median_s"] / b.cores)
    return out


# ------------------------------------------------------------------ 3. subprocess benches
def sub_bench(script: str, args: list[str], json_out: Path, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(json_out)]
    say("    $ " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.strip().splitlines():
        print("      " + line, flush=True)
    if p.returncode != 0:
        raise SystemExit(f"{script} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    out = json.loads(json_out.read_text())
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


# ------------------------------------------------------------------ one size
def bench_size(b: Bench, cfg, size: str, events: int, runs: int, train_bench: bool, comparisons: bool) -> dict[str, Any]:
    t_size = time.perf_counter()
    data, gen = ensure_data(b.spark, size, events)
    n_events = gen["interactions"]
    out = BUILD / size / "out"
    say(f"{size}: feature pipeline (experiment 8, keep_lists off), {runs} run(s)")
    pipe_runs = []
    for i in range(runs):
        say(f"  run {i + 1}/{runs}")
        pipe_runs.append(run_pipeline(b, cfg, data, out, size, i))
    stages = {}
    for st in pipe_runs[0]:
        secs = [r[st]["seconds"] for r in pipe_runs]
        med = statistics.median(secs)
        rows = pipe_runs[0][st]["rows_in"]
        stages[st] = {"median_s": round(med, 2), "runs_s": secs, "rows_in": rows, "rows_per_s_per_core": round(rows / med / b.cores),
                      "peak_mem_gb": max(r[st]["peak_mem_gb"] for r in pipe_runs), "rows_out": pipe_runs[0][st]["rows_out"],
                      "skew": b.skew.of_group(pipe_runs[0][st]["group"])}
    total = statistics.median(sum(r[st]["seconds"] for st in r) for r in pipe_runs)
    prepare_out = stages["prepare"]["rows_out"]
    say(f"{size}: pipeline median {total:.1f} s ({n_events / total / b.cores:,.0f} events/s/core)")

    result = {"size": size, "events": n_events, "runs": runs, "generate": gen, "pipeline": {"stages": stages, "total_median_s": round(total, 2),
              "events_per_s_per_core": round(n_events / total / b.cores)}}
    if comparisons:
        t_cmp = time.perf_counter()
        say(f"{size}: comparison inputs and equality check")
        paths = make_inputs(b, cfg, data, out, BUILD / size / "inputs")
        check = check_history_equal(b, paths["history_sample"])
        say(f"{size}: history and filter against the baselines, {runs} run(s)")
        result["compare"] = compare(b, cfg, paths, size, runs, sum(prepare_out.values()))
        result["compare"]["equality_check"] = check
        say(f"{size}: TFRecord writer against the per-row loop")
        n_tf = b.spark.read.parquet(paths["tfrecord_rows"]).count()
        result["tfrecord"] = sub_bench("bench_tfrecord.py", ["--input", paths["tfrecord_rows"], "--spec", str(out / "feature_spec.json"),
                                                             "--rows", str(n_tf), "--loop-rows", str(min(20_000, n_tf)), "--repeats", str(runs)],
                                       BUILD / size / "tfrecord.json", timeout=1800)
        result["compare_wall_s"] = round(time.perf_counter() - t_cmp, 1)
    else:
        say(f"{size}: no baseline comparisons at this size (--compare-sizes)")
    if train_bench:
        say(f"{size}: tf.data against training, experiment 8 TFRecords of this size")
        result["train"] = sub_bench("bench_train.py", ["--data-dir", str(out), "--optimizers", "lazy_adam"], BUILD / size / "train.json", timeout=3600)
    result["wall_s"] = round(time.perf_counter() - t_size, 1)
    (BUILD / size / "result.json").write_text(json.dumps(result, indent=2))
    return result


# ------------------------------------------------------------------ summary
def ratios(by_size: dict[str, dict], metrics: dict | None) -> tuple[dict[str, Any], dict[str, str]]:
    r: dict[str, Any] = {}
    where: dict[str, str] = {}
    compared = [s for s in by_size if "compare" in by_size[s]]
    if compared:
        big = max(compared, key=lambda s: by_size[s]["events"])
        c = by_size[big]["compare"]
        naive = c["history_naive_spark"]
        r["history_vs_naive_spark"] = round(naive["median_s"] / c["history_ours"]["median_s"], 2)
        where["history_vs_naive_spark"] = big + (" (naive timed out: a lower bound)" if naive["timed_out_runs"] else "")
        r["history_vs_duckdb"] = round(c["history_ours"]["median_s"] / c["history_duckdb"]["median_s"], 2)
        r["filter_vs_duckdb"] = round(c["filter_ours"]["median_s"] / c["filter_duckdb"]["median_s"], 2)
        where["history_vs_duckdb"] = where["filter_vs_duckdb"] = big
        # the examples stage's wall over its core computation, the history kernel, timed alone
        r["examples_over_history_kernel"] = round(by_size[big]["pipeline"]["stages"]["examples"]["median_s"] / c["history_ours"]["median_s"], 2)
        where["examples_over_history_kernel"] = big
        tf = by_size[big]["tfrecord"]
        r["tfrecord_vs_rowloop"] = round(tf["ours_rows_per_s"] / tf["loop_rows_per_s"], 2)
        where["tfrecord_vs_rowloop"] = big
    if by_size:
        trained = [s for s in by_size if "train" in by_size[s]]
        if trained:
            t = by_size[trained[0]]["train"]
            # training examples/s reading the TFRecords over the same training from batches held
            # in memory: >= 0.9 means the input pipeline is not what training waits for
            r["input_vs_train_rate"] = round(t["train_tfrecords_over_memory[lazy_adam]"], 2)
            where["input_vs_train_rate"] = f"{trained[0]}: training from TFRecords / from memory, experiment 8"
            r["tf_data_over_train_rate"] = round(t["tf_data_records_per_s"] / t["train_examples_per_s[lazy_adam]"], 2)
    if by_size:
        big_all = max(by_size, key=lambda s: by_size[s]["events"])
        worst = [v["skew"].get("worst_max_over_median") for v in by_size[big_all]["pipeline"]["stages"].values()]
        worst = [w for w in worst if w is not None]
        if worst:
            r["task_skew_max_over_median"] = max(worst)
            where["task_skew_max_over_median"] = f"{big_all}, worst Spark stage of the pipeline (stages with a task >= 1 s)"
        r["peak_memory_gb"] = max(v["peak_mem_gb"] for v in by_size[big_all]["pipeline"]["stages"].values())
        where["peak_memory_gb"] = f"{big_all}, driver + JVM + Python workers (PSS), default memory settings, no out-of-memory"
        trained = [s for s in by_size if "train" in by_size[s]]
        if trained:
            r["train_examples_per_s"] = round(by_size[trained[0]]["train"]["train_examples_per_s[lazy_adam]"])
            where["train_examples_per_s"] = f"{trained[0]}, experiment 8, CPU"
    if metrics:
        # judged on the per-user metrics: the AUC and MAP over all rows are sklearn's on both sides
        r["metrics_vs_loop"] = round(metrics["speedup_per_user"], 2)
        r["metrics_all_six_vs_loop"] = round(metrics["speedup_whole"], 2)
        where["metrics_vs_loop"] = f"{metrics['rows']:,} rows, per-user metrics (NDCG@5/10, MRR, CUST-MAP@10)"
    sizes = {v["events"]: s for s, v in by_size.items()}
    s10 = next((by_size[s] for s in by_size if s == "10m"), None)
    if s10:
        r["chain_events_per_s_per_core_10m"] = s10["pipeline"]["events_per_s_per_core"]
        where["chain_events_per_s_per_core_10m"] = f"10m: {s10['events']:,} events through the four stages"
    s50 = next((by_size[s] for s in by_size if s == "50m"), None)
    if s10 and s50:
        r["scaling_50m_over_10m"] = round(s50["pipeline"]["total_median_s"] / s10["pipeline"]["total_median_s"], 2)
        where["scaling_50m_over_10m"] = f"{s50['events']:,} / {s10['events']:,} events"
    elif len(by_size) >= 2:
        # without both 10M and 50M, the two largest sizes measured (the goal scales with the
        # events ratio: 5.5 for 5x the events is 1.1x linear)
        small, big = sorted(by_size, key=lambda s: by_size[s]["events"])[-2:]
        a, b = by_size[small], by_size[big]
        key = f"scaling_{big}_over_{small}"
        r[key] = round(b["pipeline"]["total_median_s"] / a["pipeline"]["total_median_s"], 2)
        where[key] = f"{b['events']:,} / {a['events']:,} events ({b['events'] / a['events']:.1f}x the events; linear = that ratio)"
    del sizes
    return r, where


def extrapolate(by_size: dict[str, dict], events: float = 3e9, cores: int = 100) -> dict[str, Any]:
    """Each stage's measured per-core rate at the largest size, applied to 3B events on 100 cores
    (linear: no shuffle or straggler costs beyond those measured; a floor, not a promise)."""
    if not by_size:
        return {}
    big = max(by_size, key=lambda s: by_size[s]["events"])
    res = by_size[big]
    scale = events / res["events"]
    out: dict[str, Any] = {"from_size": big, "events": events, "cores": cores, "stages": {}}
    total = 0.0
    for st, v in res["pipeline"]["stages"].items():
        rows = v["rows_in"] * (scale if st != "embeddings" else 1.0)  # the catalog does not grow with events
        secs = rows / max(v["rows_per_s_per_core"], 1) / cores
        b = v["skew"].get("bytes") or {}
        out["stages"][st] = {"rows_in": round(rows), "rows_per_s_per_core": v["rows_per_s_per_core"], "minutes": round(secs / 60, 1),
                             "shuffle_write_gb": round(b.get("shuffleWriteBytes", 0) * (scale if st != "embeddings" else 1.0) / 1e9, 1),
                             "input_gb": round(b.get("inputBytes", 0) * (scale if st != "embeddings" else 1.0) / 1e9, 1)}
        total += secs
    out["total_minutes"] = round(total / 60, 1)
    return out


def goal_table(r: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, (op, g) in GOALS.items():
        v = r.get(k)
        out[k] = {"goal": f"{op} {g}", "value": v, "met": None if v is None else (v >= g if op == ">=" else v <= g)}
    return out


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = 0
    try:
        mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
    except (OSError, StopIteration):
        pass
    import duckdb
    import pyspark

    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gb": round(mem, 1), "python": platform.python_version(), "pyspark": pyspark.__version__,
            "duckdb": duckdb.__version__, "load_avg_at_start": os.getloadavg()}


def print_summary(doc: dict[str, Any]) -> None:
    print("\n== per stage (median wall, input rows/s per core, peak memory (PSS) of driver+JVM+Python workers, worst task max/median)")
    for size, res in doc["sizes"].items():
        print(f"-- {size}: {res['events']:,} events, {res['runs']} run(s), pipeline {res['pipeline']['total_median_s']:.1f} s")
        for st, v in res["pipeline"]["stages"].items():
            sk = v["skew"].get("worst_max_over_median")
            print(f"   {st:22s} {v['median_s']:8.1f} s {v['rows_per_s_per_core']:>11,} rows/s/core {v['peak_mem_gb']:5.1f} GB  skew {sk if sk is not None else '-'}")
        if "compare" not in res:
            continue
        c = res["compare"]
        for k in ("history_ours", "history_naive_spark", "history_duckdb", "filter_ours", "filter_duckdb"):
            extra = f" ({c[k]['timed_out_runs']} timed out)" if c[k]["timed_out_runs"] else ""
            sk = c[k].get("skew", {}).get("worst_max_over_median") if "skew" in c[k] else None
            print(f"   {k:22s} {c[k]['median_s']:8.1f} s {'':>23s} {c[k]['peak_mem_gb']:5.1f} GB  skew {sk if sk is not None else '-'}{extra}")
    for size, res in doc["sizes"].items():
        if "tfrecord" in res:
            tf = res["tfrecord"]
            print(f"   {size}: TFRecord writer {tf['ours_rows_per_s']:,.0f} rows/s on 1 core (per-row loop {tf['loop_rows_per_s']:,.0f}, "
                  f"raw writer of pre-serialised records {tf['ceiling_rows_per_s']:,.0f}), {tf['rows']:,} rows of the examples table")
        if "train" in res:
            t = res["train"]
            print(f"   {size}: tf.data {t['tf_data_records_per_s']:,.0f} records/s, training {t['train_examples_per_s[lazy_adam]']:,.0f} "
                  f"examples/s (experiment 8 TFRecords, lazy_adam, {doc['machine']['cpus']} cores)")
    ex = doc.get("extrapolation_3b_events_100_cores") or {}
    if ex.get("stages"):
        print(f"\n== measured per-core rates at {ex['from_size']} applied to 3B events on 100 cores (linear; see docs/scale.md)")
        for st, v in ex["stages"].items():
            print(f"   {st:12s} {v['rows_in']:>15,} rows in  {v['minutes']:7.1f} min  shuffle write {v['shuffle_write_gb']:8.1f} GB")
        print(f"   total        {ex['total_minutes']:.1f} min")
    print("\n== ratios (goal, measured at)")
    for k, g in doc["goals"].items():
        mark = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        print(f"   {k:24s} {str(g['value']):>8s}  goal {g['goal']:6s} {mark:12s} {doc['ratios_measured_at'].get(k, '')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "1m,10m,50m"))
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    ap.add_argument("--single-run-from", default=os.environ.get("BENCH_SINGLE_RUN_FROM", "50m"),
                    help="sizes with at least this many events run once (time budget)")
    ap.add_argument("--compare-sizes", default=os.environ.get("BENCH_COMPARE_SIZES", "1m,10m"),
                    help="sizes at which the baselines run (the naive window and the per-row loop cost too long at 50M)")
    ap.add_argument("--resume", action="store_true", default=os.environ.get("BENCH_RESUME", "") not in ("", "0"),
                    help="reuse build/bench/<size>/result.json of sizes already done")
    ap.add_argument("--out", default=str(RESULTS / "latest.json"))
    args = ap.parse_args()

    sizes = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    single_from = parse_size(args.single_run_from)
    compare_events = {parse_size(x) for x in args.compare_sizes.split(",") if x.strip()}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from twotower_features.session import build_session

    t_all = time.perf_counter()
    plan = []
    for s in sizes:
        ev = parse_size(s)
        runs = 1 if ev >= single_from else args.runs
        plan.append((s, ev, runs, estimate(ev, runs, (BUILD / s / "data" / "_BENCH_COMPLETE").is_file(), ev in compare_events)))
    say("plan: " + "; ".join(f"{s} ({ev:,} events, {runs} run(s), ~{est / 60:.0f} min)" for s, ev, runs, est in plan)
        + f"; rough estimates (refined after each size), total ~{sum(p[3] for p in plan) / 60 + 3:.0f} min")

    # Parquet's vectored reads (Hadoop's readVectored, on by default) bypass the file system
    # statistics that Spark's input bytes come from: about 0 bytes for any scan. Off, the stages'
    # inputBytes are the files' sizes, and scans of the 10M tables take the same time (docs/scale.md)
    spark = build_session("twotower-bench", conf={"spark.ui.enabled": "true", VECTORED_IO: "false"})
    cores = spark.sparkContext.defaultParallelism
    say(f"spark {spark.version}, local[{cores}], driver memory {spark.conf.get('spark.driver.memory', '?')}, UI {spark.sparkContext.uiWebUrl}")
    mem = PeakMemory()
    b = Bench(spark, cores, mem)
    cfg = load_exp08()
    doc: dict[str, Any] = {"created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "complete": False,
                           "command": " ".join(sys.argv), "machine": machine(),
                           "settings": {"sizes": sizes, "compare_sizes": args.compare_sizes, "naive_window_cap": NAIVE_CAP, "runs": args.runs, "single_run_from": args.single_run_from, "config": cfg.name,
                                        "history": {"n": HISTORY_N, "aggregations": ["clusters"], "keep_lists": False},
                                        "spark_conf": {k: spark.conf.get(k, None) for k in ("spark.driver.memory", "spark.sql.shuffle.partitions", "spark.sql.adaptive.enabled", VECTORED_IO)}},
                           "sizes": {}}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        r, where = ratios(doc["sizes"], doc.get("metrics"))
        doc["ratios"], doc["ratios_measured_at"], doc["goals"] = r, where, goal_table(r)
        doc["extrapolation_3b_events_100_cores"] = extrapolate(doc["sizes"])
        out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")

    say("evaluator against the MIND-style loop (1M rows)")
    doc["metrics"] = sub_bench("bench_metrics.py", ["--repeats", str(args.runs), "--diag-users", "0"], BUILD / "metrics.json", timeout=1800)
    save()
    for i, (s, ev, runs, est) in enumerate(plan):
        cached = BUILD / s / "result.json"
        if args.resume and cached.is_file() and json.loads(cached.read_text()).get("runs") == runs:
            say(f"{s}: reusing {cached} (--resume)")
            doc["sizes"][s] = json.loads(cached.read_text())
            save()
            continue
        say(f"==== {s}: {ev:,} events, {runs} run(s), estimated {est / 60:.0f} min")
        doc["sizes"][s] = bench_size(b, cfg, s, ev, runs, train_bench=(i == 0), comparisons=ev in compare_events)
        say(f"{s}: done in {doc['sizes'][s]['wall_s'] / 60:.1f} min")
        save()
        # re-estimate the sizes still to come from this size's rates (fixed costs included: high side)
        res, m = doc["sizes"][s], doc["sizes"][s]["events"] / 1e6
        if res["generate"]["seconds"]:
            EST_S_PER_M["generate"] = res["generate"]["seconds"] / m
        EST_S_PER_M["pipeline_run"] = res["pipeline"]["total_median_s"] / m
        if "compare_wall_s" in res:
            EST_S_PER_M["compare_run"] = res["compare_wall_s"] / runs / m
        left = [(s2, ev2, r2) for s2, ev2, r2, _ in plan[i + 1:]]
        if left:
            say("estimates for the rest from this size's rates: " + "; ".join(
                f"{s2} ~{estimate(ev2, r2, (BUILD / s2 / 'data' / '_BENCH_COMPLETE').is_file(), ev2 in compare_events) / 60:.0f} min" for s2, ev2, r2 in left))
    doc["complete"] = True
    doc["machine"]["load_avg_at_end"] = os.getloadavg()
    doc["wall_s"] = round(time.perf_counter() - t_all, 1)
    save()
    mem.close()
    print_summary(doc)
    say(f"wrote {out_path} ({doc['wall_s'] / 60:.1f} min)")
    spark.stop()


if __name__ == "__main__":
    main()
