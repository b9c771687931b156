"""Fixtures for the cluster and fault tests: `spark-submit` runs of `jobs/<stage>.py`, a Spark
standalone cluster (one Master, two Workers) on loopback, and a reference run to compare with.

Everything is tiny (60 users, 50 items, 9 days, 16-dim embeddings) and on 127.0.0.1. Every
process started here is stopped by its pid in teardown. Spark's launch scripts come with pip's
pyspark (`pyspark/bin/spark-class`); `SPARK_HOME` is a temporary folder of links to pyspark's
`bin` and `jars`, so the Workers' `work/` folders (executor logs, fetched jars) land there and
not inside the virtual environment.
"""
from __future__ import annotations

import collections
import datetime as dt
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = REPO / "jobs"

# The experiment every test here runs: every stage, both history aggregations that need the
# item matrix and the clusters, statistics features, two TFRecord shards.
CONFIG_TOML = """\
name = "cluster-test"
description = "tiny config for the cluster and fault tests"

[window]
validation_date = 2026-06-26
train_days = 7

[sampling]
user_fraction = 1.0
seed = 7

[history]
n = 5
aggregations = ["mean", "clusters"]
source = "simclr"
keep_lists = true

[embeddings]
item_source = "dedup"
pca_components = 8
kmeans_k = 4

[features]
user = ["user_id", "pos_hist_mean", "neg_hist_mean", "pos_hist_clusters", "user_ctr"]
item = ["item_id", "item_emb", "item_ctr"]

[output]
tfrecord_shards = 2
"""
GENERATE = dict(users=60, items=50, days=9, start=dt.date(2026, 6, 18), seed=5, embedding_dim=16)
# the same settings as the in-process `spark` fixture, so outputs are comparable
SPARK_CONF = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.driver.memory": "1g",
    "spark.executor.memory": "512m",
    "spark.ui.enabled": "false",
}
SUBMIT_TIMEOUT_S = 600
CLUSTER_START_TIMEOUT_S = 180


def pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def jars() -> str:
    from twotower_features.session import find_jars

    return ",".join(find_jars())


@dataclass
class Reference:
    """Inputs and a clean in-process (`local[2]`) run of every stage on them."""

    root: Path
    data: Path
    config: Path
    out: Path


@pytest.fixture(scope="session")
def reference(spark, tmp_path_factory) -> Reference:
    from twotower.stages import run as run_features
    from twotower_features.config import ExperimentConfig
    from twotower_features.generate import generate

    root = tmp_path_factory.mktemp("cluster-reference")
    config = root / "cluster-test.toml"
    config.write_text(CONFIG_TOML)
    generate(spark, str(root / "data"), progress=None, **GENERATE)
    run_features(spark, ExperimentConfig.from_file(config), str(root / "data"), str(root / "out"), log=lambda _: None)
    return Reference(root, root / "data", config, root / "out")


@pytest.fixture(scope="session")
def spark_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("spark-home")
    for name in ("bin", "jars"):
        (home / name).symlink_to(pyspark_home() / name, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def cluster_env(spark_home) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(spark_home),
        SPARK_LOCAL_IP="127.0.0.1",
        SPARK_DAEMON_MEMORY="256m",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        TWOTOWER_SPARK_LOG_LEVEL="WARN",
    )
    for k in ("TWOTOWER_FAULT", "TWOTOWER_FAULT_DIR", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(k, None)
    return env


def submit_command(spark_home: Path, master: str, job: str, args: list[str], conf: dict[str, str] | None = None) -> list[str]:
    """`spark-submit --master M --jars build/jars/... --conf ... jobs/<job>.py ARGS`."""
    cmd = [str(spark_home / "bin" / "spark-submit"), "--master", master, "--jars", jars()]
    for k, v in {**SPARK_CONF, **(conf or {})}.items():
        cmd += ["--conf", f"{k}={v}"]
    return cmd + [str(JOBS / f"{job}.py"), *args]


def stage_args(ref: Reference, out: Path) -> list[str]:
    return ["--config", str(ref.config), "--input", str(ref.data), "--output", str(out)]


def run_submit(cmd: list[str], env: dict[str, str], log: Path, *, expect_rc: int | None = 0) -> subprocess.CompletedProcess:
    """Run one spark-submit (bounded); its output goes to `log`; a wrong exit code shows the log's tail."""
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=SUBMIT_TIMEOUT_S, cwd=log.parent)
    if expect_rc is not None and proc.returncode != expect_rc:
        tail = log.read_text(errors="replace")[-6000:]
        pytest.fail(f"{' '.join(cmd[:4])} ... {' '.join(cmd[-7:])}: exit code {proc.returncode}, expected {expect_rc}\n{tail}")
    return proc


def copy_outputs(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ------------------------------------------------------------------------------ comparisons
def tfrecord_records(folder: Path) -> collections.Counter:
    """Every record of every shard in `folder`, as bytes (a multiset), read by the TFRecord framing
    alone: uint64 length, 4 bytes crc, data, 4 bytes crc."""
    out: collections.Counter = collections.Counter()
    for shard in sorted(folder.glob("*.tfrecord")):
        body = shard.read_bytes()
        pos = 0
        while pos < len(body):
            (n,) = struct.unpack_from("<Q", body, pos)
            out[body[pos + 12 : pos + 12 + n]] += 1
            pos += 12 + n + 4
    return out


def assert_same_delta_table(spark, actual: Path, expected: Path) -> None:
    """The two Delta tables hold the same rows (any order; floats to 1e-5 relative)."""
    from pyspark.testing import assertDataFrameEqual

    a = spark.read.format("delta").load(str(actual))
    e = spark.read.format("delta").load(str(expected))
    assert sorted(a.columns) == sorted(e.columns)
    assertDataFrameEqual(a.select(*sorted(e.columns)), e.select(*sorted(e.columns)), checkRowOrder=False, rtol=1e-5, atol=1e-6)


def assert_same_outputs(spark, actual: Path, expected: Path, *, tfrecords: bool = True) -> None:
    """Same filtered and examples tables, same TFRecord records per split, same row counts."""
    for table in ("filtered", "examples"):
        assert_same_delta_table(spark, actual / "tables" / table, expected / "tables" / table)
    if tfrecords:
        for split in ("train", "validation", "catalog"):
            a, e = actual / "tfrecords" / split, expected / "tfrecords" / split
            assert json.loads((a / "_SUCCESS").read_text())["rows"] == json.loads((e / "_SUCCESS").read_text())["rows"]
            assert tfrecord_records(a) == tfrecord_records(e), split
        assert json.loads((actual / "manifest.json").read_text())["rows"] == json.loads((expected / "manifest.json").read_text())["rows"]


# ------------------------------------------------------------------------------ standalone
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this module started (its own process group: the JVM and its children)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=20)


@dataclass
class Standalone:
    url: str
    ui_port: int
    logs: Path

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ui_port}/json/", timeout=5) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def standalone(tmp_path_factory, cluster_env, spark_home):
    """A standalone Master and two Workers (1 core, 1 GiB each) on 127.0.0.1, started with
    `spark-class`; yields when the Master sees both Workers alive."""
    root = tmp_path_factory.mktemp("standalone")
    spark_class = str(spark_home / "bin" / "spark-class")
    port, ui = free_port(), free_port()
    cluster = Standalone(f"spark://127.0.0.1:{port}", ui, root)
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = open(root / f"{name}.log", "wb")
        procs.append(subprocess.Popen([spark_class, *args], env=cluster_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)])
        for i in (1, 2):
            start(f"worker{i}", [
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1", "--memory", "1g",
                "--work-dir", str(root / f"work{i}"), "--webui-port", str(free_port()), cluster.url,
            ])
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        alive = -1
        while time.monotonic() < deadline:
            dead = [p.args[1] for p in procs if p.poll() is not None]
            if dead:
                pytest.fail(f"standalone daemon(s) exited at start: {dead}; logs in {root}")
            try:
                alive = int(cluster.status().get("aliveworkers", 0))
            except OSError:
                alive = -1
            if alive == 2:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the standalone Master saw {alive} alive workers after {CLUSTER_START_TIMEOUT_S}s; logs in {root}")
        yield cluster
    finally:
        for p in reversed(procs):
            _stop(p)
