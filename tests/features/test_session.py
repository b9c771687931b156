"""What is refused before a Spark session starts, with the option and the value in the message:
the master URL and settings (`session`), and the generator's options (`generate.check_params`)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyspark import SparkContext
from pyspark.sql import SparkSession

from twotower_features import session as S
from twotower_features.errors import UserError
from twotower_features.generate import GenerateError, check_params

REPO = Path(__file__).resolve().parents[2]
FORMS = (
    "local, local[N], local[*], local[N,F], local-cluster[N,C,M], spark://HOST:PORT[,HOST:PORT...], "
    "yarn or k8s://HOST:PORT (N, C, M positive integers, F retries)"
)


@pytest.fixture
def no_jvm_start(monkeypatch):
    """Starting Spark's JVM or a session raises AssertionError: an error must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("spark started")

    monkeypatch.setattr(SparkContext, "_ensure_initialized", classmethod(refuse))
    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", refuse)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)


# ------------------------------------------------------------------------------ master URLs
@pytest.mark.parametrize("master", [
    "local", "local[1]", "local[16]", "local[*]", "local[4,2]", "local[*, 3]", "local-cluster[2,1,1024]",
    "spark://host:7077", "spark://h1.example.com:7077,h2:7078", "spark://10.0.0.5:7077", "spark://[::1]:7077",
    "yarn", "k8s://https://kubernetes.default.svc:443",
])
def test_masters_spark_accepts(master):
    S.check_master(master)


@pytest.mark.parametrize("master", [
    "local[abc]", "local[0]", "local[]", "local[-1]", "local[2", "Local[2]", "local[2,x]", "local-cluster[2,1]",
    "spark://host", "spark://host:0", "spark://host:99999", "spark://:7077", "spark://host:7077/path", "YARN",
    "k8s://", "mesos://host:5050", "", "local[2] ",
])
def test_masters_spark_refuses(master):
    with pytest.raises(S.SessionError) as e:
        S.check_master(master)
    assert str(e.value) == f"--master {master!r} is not a Spark master URL; expected {FORMS}"
    assert isinstance(e.value, UserError)


def test_a_bad_master_is_refused_before_the_jvm_starts(no_jvm_start):
    with pytest.raises(S.SessionError, match=r"^--master 'local\[abc\]' is not a Spark master URL; expected local, "):
        S.build_session("t", master="local[abc]")


def test_a_bad_master_from_conf_or_the_environment_names_its_source(no_jvm_start, monkeypatch):
    with pytest.raises(S.SessionError, match=r"^--conf spark\.master 'local\[x\]' is not a Spark master URL"):
        S.build_session("t", conf={"spark.master": "local[x]"})
    monkeypatch.setenv("TWOTOWER_MASTER", "local[y]")
    with pytest.raises(S.SessionError, match=r"^TWOTOWER_MASTER 'local\[y\]' is not a Spark master URL"):
        S.build_session("t")


# ------------------------------------------------------------------------------ settings
SIZE_EXPECTED = "a positive whole number with an optional unit b, k, m, g, t or p (e.g. 4g)"


@pytest.mark.parametrize("conf, message", [
    ({"spark.driver.memory": "abc"}, f"--conf spark.driver.memory='abc' is not a size; expected {SIZE_EXPECTED}"),
    ({"spark.executor.memory": "1.5g"}, f"--conf spark.executor.memory='1.5g' is not a size; expected {SIZE_EXPECTED}"),
    ({"spark.driver.memory": "0"}, f"--conf spark.driver.memory='0' is not a size; expected {SIZE_EXPECTED}"),
    ({"spark.driver.cores": "two"}, "--conf spark.driver.cores='two' must be a positive integer"),
    ({"spark.executor.instances": "0"}, "--conf spark.executor.instances='0' must be a positive integer"),
])
def test_settings_spark_submit_refuses_are_refused_before_the_jvm_starts(no_jvm_start, conf, message):
    with pytest.raises(S.SessionError) as e:
        S.check_options(None, conf)
    assert str(e.value) == message
    with pytest.raises(S.SessionError) as e:
        S.build_session("t", master="local[1]", conf=conf)
    assert str(e.value) == message


@pytest.mark.parametrize("conf", [{"spark.driver.memory": "4g"}, {"spark.executor.memory": "512M"}, {"spark.driver.memory": "2048"},
                                  {"spark.executor.cores": "4"}, {"spark.master": "local[2]"}, {}])
def test_settings_spark_submit_accepts(conf):
    S.check_options("local[*]", conf)


def test_a_sql_setting_spark_refuses_names_it_and_leaves_the_session_alone(spark, monkeypatch):
    # needs the JVM (SQLConf's own parser); the running session must not see the bad value
    def refuse(*args, **kwargs):
        raise AssertionError("session built")

    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", refuse)
    with pytest.raises(S.SessionError) as e:
        S.build_session("t", master="local[2]", conf={"spark.sql.shuffle.partitions": "abc"})
    assert str(e.value) == (
        "--conf spark.sql.shuffle.partitions='abc' is refused by Spark: [INVALID_CONF_VALUE.TYPE_MISMATCH] The value 'abc' "
        "in the config \"spark.sql.shuffle.partitions\" is invalid. It should be a/an 'int' value. SQLSTATE: 22022"
    )
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"


class _FakeJavaException:
    def __init__(self, message):
        self.message = message

    def getMessage(self):
        return self.message


class _FakePy4JError(Exception):
    def __init__(self, message):
        super().__init__("An error occurred while calling None.org.apache.spark.api.java.JavaSparkContext.\n: " + message)
        self.java_exception = _FakeJavaException(message)


def test_a_start_failure_names_the_setting_else_the_first_java_line():
    e = _FakePy4JError('[INVALID_CONF_VALUE.TYPE_MISMATCH] The value \'x\' in the config "spark.task.cpus" is invalid.\n\tat ...')
    assert str(S._start_failure(e, "local[2]", {"spark.task.cpus": "x", "spark.other": "1"})) == (
        "--conf spark.task.cpus='x' is refused by Spark: [INVALID_CONF_VALUE.TYPE_MISMATCH] The value 'x' in the config "
        '"spark.task.cpus" is invalid.'
    )
    e = _FakePy4JError("Could not parse Master URL: 'foo'\nmore")
    assert str(S._start_failure(e, "foo", {})) == (
        "Spark did not start with --master 'foo': Could not parse Master URL: 'foo' (Spark's log above has the details)"
    )


_START_SCRIPT = """
import json, sys
from twotower_features.session import build_session
from twotower_features.errors import UserError
out = []
for conf in ({"spark.submit.deployMode": "cluster"}, {"spark.task.cpus": "abc"}):
    try:
        build_session("t", master="local[1]", conf=conf).stop()
        out.append("started")
    except UserError as e:
        out.append(str(e))
print(json.dumps(out))
"""


def _in_a_fresh_process(script: str) -> tuple[object, str]:
    """``script`` run by a new Python (its own JVM, the factory's own defaults): the JSON of its
    last line of output, and its standard error."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONPATH": str(REPO)}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=REPO, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stderr


@pytest.mark.slow
def test_a_jvm_or_context_that_fails_to_start_is_a_session_error():
    # a JVM that exits at launch, then a SparkContext that refuses a setting
    messages, stderr = _in_a_fresh_process(_START_SCRIPT)
    assert messages == [
        ("Spark's JVM exited while starting (its error is printed above); check --master 'local[1]' and the --conf "
         "settings given (spark.submit.deployMode)"),
        ("--conf spark.task.cpus='abc' is refused by Spark: [INVALID_CONF_VALUE.TYPE_MISMATCH] The value 'abc' in the "
         "config \"spark.task.cpus\" is invalid. It should be a/an 'int' value. SQLSTATE: 22022"),
    ]
    assert "Cluster deploy mode is not compatible" in stderr  # the JVM's own error, printed above ours


_PARTITIONS_SCRIPT = """
import json
from twotower_features.session import build_session
spark = build_session("t", master="local[2]")
tiny = spark.range(2000).selectExpr("id % 97 AS k").repartition("k").rdd.glom().map(len).collect()
cached = spark.range(2000).selectExpr("id % 97 AS k").groupBy("k").count().cache()
cached.count()
print(json.dumps({"partitions": spark.conf.get("spark.sql.shuffle.partitions"), "aqe": spark.conf.get("spark.sql.adaptive.enabled"),
                  "tiny": tiny, "cached": cached.rdd.getNumPartitions()}))
spark.stop()
"""


@pytest.mark.slow
def test_the_factory_leaves_the_partition_count_to_spark_and_aqe_coalesces_a_tiny_shuffle():
    seen, _ = _in_a_fresh_process(_PARTITIONS_SCRIPT)  # the factory's own defaults, not the test session's
    assert seen["partitions"] == "200" and seen["aqe"] == "true"  # Spark's default count, coalesced by AQE
    assert sum(seen["tiny"]) == 2000 and len(seen["tiny"]) <= 2  # 200 hash partitions of 2000 rows read as at most 2 tasks
    assert seen["cached"] <= 2  # a cached aggregation is coalesced too (Spark's default keeps a cached plan at 200)


# ------------------------------------------------------------------------------ generate's options
@pytest.mark.parametrize("kwargs, message", [
    ({"items": 20}, "--items must be at least 24 (twice the generator's 12 topics), got 20"),
    ({"items": 23}, "--items must be at least 24 (twice the generator's 12 topics), got 23"),
    ({"items": 5}, "--items must be at least 24 (twice the generator's 12 topics), got 5"),
    ({"seed": -1}, "--seed must be an integer >= 0, got -1"),
    ({"users": 19}, "--users must be an integer >= 20, got 19"),
    ({"days": 0}, "--days must be an integer >= 1, got 0"),
    ({"embedding_dim": 1}, "--embedding-dim must be an integer >= 2, got 1"),
    ({"bad_row_share": 0.6}, "--bad-row-share must be a number in [0, 0.5], got 0.6"),
])
def test_generate_options_are_checked_without_spark(kwargs, message):
    with pytest.raises(GenerateError) as e:
        check_params(**kwargs)
    assert str(e.value) == message
    assert isinstance(e.value, UserError)


def test_generate_options_at_their_limits_pass():
    check_params()
    check_params(users=20, items=24, days=1, seed=0, embedding_dim=2, bad_row_share=0.5)
