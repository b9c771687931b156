"""Every stage as `spark-submit jobs/<stage>.py` against a Spark standalone cluster (a Master and two
Workers on 127.0.0.1), Delta's jars shipped with `--jars`; the outputs equal a local-mode run's."""
from __future__ import annotations

import json
import time

import pytest

from twotower.stages import NAMES as STAGES

from .conftest import assert_same_outputs, jars, run_submit, stage_args, submit_command

pytestmark = pytest.mark.slow


def test_every_stage_submitted_to_a_standalone_cluster_equals_local_mode(spark, reference, standalone, cluster_env, spark_home, tmp_path):
    out = tmp_path / "out"
    conf = {"spark.cores.max": "2", "spark.executor.cores": "1", "spark.sql.shuffle.partitions": "3"}
    for stage in STAGES:
        run_submit(submit_command(spark_home, standalone.url, stage, stage_args(reference, out), conf), cluster_env, tmp_path / f"{stage}.log")

    # each stage was one application of this cluster, and its executors ran on both Workers
    deadline = time.monotonic() + 60  # the Master learns that an application ended asynchronously
    while len(standalone.status()["completedapps"]) < len(STAGES) and time.monotonic() < deadline:
        time.sleep(1)
    assert sorted(a["name"] for a in standalone.status()["completedapps"]) == sorted(f"twotower-{s}" for s in STAGES)
    for worker in ("work1", "work2"):
        ran = {p.parent.parent.name for p in (standalone.logs / worker).glob("app-*/*/stderr")}
        assert len(ran) == len(STAGES), (worker, ran)
    assert_same_outputs(spark, out, reference.out)


SHOW_SESSION = """
import json, sys
from twotower_features.session import build_session
spark = build_session("show")
conf = spark.sparkContext.getConf()
keys = ["spark.master", "spark.jars", "spark.sql.shuffle.partitions", "spark.executor.memory", "spark.sql.session.timeZone"]
print("SESSION " + json.dumps({k: conf.get(k, None) for k in keys} | {"delta": spark.conf.get("spark.sql.extensions")}))
spark.stop()
"""


def _show_session(spark_home, env, tmp_path, args):
    script = tmp_path / "show_session.py"
    script.write_text(SHOW_SESSION)
    import subprocess

    return subprocess.run([str(spark_home / "bin" / "spark-submit"), *args, str(script)], env=env, capture_output=True, text=True, timeout=300)


def test_session_under_spark_submit_keeps_master_conf_and_jars_it_was_given(spark_home, cluster_env, tmp_path):
    given_jars = jars()
    proc = _show_session(spark_home, cluster_env, tmp_path, [
        "--master", "local[1]", "--jars", given_jars, "--conf", "spark.sql.shuffle.partitions=3", "--conf", "spark.executor.memory=600m",
    ])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("SESSION ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    seen = json.loads(lines[0][len("SESSION "):])
    assert seen["spark.master"] == "local[1]"
    assert seen["spark.sql.shuffle.partitions"] == "3"  # the factory sets none: spark-submit's wins
    assert seen["spark.executor.memory"] == "600m"
    assert sorted(j.rsplit("/", 1)[1] for j in seen["spark.jars"].split(",")) == sorted(j.rsplit("/", 1)[1] for j in given_jars.split(","))
    assert seen["spark.sql.session.timeZone"] == "UTC"  # what spark-submit left unset is filled in
    assert seen["delta"] == "io.delta.sql.DeltaSparkSessionExtension"


def test_spark_submit_without_delta_jars_fails_with_the_fix(spark_home, cluster_env, tmp_path):
    proc = _show_session(spark_home, cluster_env, tmp_path, ["--master", "local[1]"])
    assert proc.returncode != 0
    # spark-submit passes the Python driver's stderr on through its stdout
    assert "MissingJarsError: spark-submit was started without Delta's jars: pass them with --jars" in proc.stdout + proc.stderr
