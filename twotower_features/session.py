"""The one SparkSession factory.

Local mode by default, Delta's extensions on, UTC; every setting can be overridden with ``conf``.
The shuffle partition count is left to Spark (200, or the cluster's ``spark-defaults.conf``) and
adaptive execution coalesces each shuffle to ~64 MB partitions (``advisoryPartitionSizeInBytes``),
so a tiny fixture runs few tasks and 50M events run as many as they need. In local mode tables
up to 64 MB broadcast into joins (Spark's default is 10 MB; ``docs/scale.md`` has a cluster's). Under
``spark-submit`` the master, memory, ``--conf`` settings and jars that spark-submit was given
win: this factory only fills in what is missing, and fails with the fix when the driver lacks
Delta (spark-submit needs ``--jars``: the driver's classpath is fixed before any Python runs).

Spark's JVM dependencies (Delta, the PostgreSQL driver) are never downloaded when a session
starts: ``make jars`` copies them into ``build/jars`` at install time, and this factory hands
them to Spark with ``spark.jars``. ``TWOTOWER_JARS_DIR`` points elsewhere (a docker image, a
cluster's shared folder).

A master or setting Spark would refuse is a ``SessionError`` naming it: ``check_options``
checks the master URL and the settings spark-submit itself checks (memory sizes, core counts)
in Python, before any JVM starts; ``build_session`` calls it, then checks the ``spark.sql.*``
settings with the JVM's own parser before the session exists, and turns a JVM that fails to
start into a ``SessionError`` too.
"""
from __future__ import annotations

import glob
import os
import re
import sys
from pathlib import Path
from typing import Mapping

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JARS_DIR = REPO_ROOT / "build" / "jars"

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
# Spark's log level (ERROR by default in local mode: only the stages' own lines; WARN under
# spark-submit); setting it also keeps Spark's startup lines (log4j2.properties here silences them)
LOG_LEVEL_ENV = "TWOTOWER_SPARK_LOG_LEVEL"
QUIET_LOG4J = Path(__file__).resolve().parent / "log4j2.properties"
DEFAULTS: dict[str, str] = {
    "spark.sql.extensions": DELTA_EXTENSION,
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.databricks.delta.snapshotPartitions": "2",
    # adaptive execution coalesces the shuffles of cached DataFrames too (Spark leaves them at
    # spark.sql.shuffle.partitions: 200 tasks of a few rows each in prepare's quarantine split)
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}
# Only for a session this factory starts in local mode (never under spark-submit).
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.driver.memory": "4g",
    # the item side of the examples stage (the items without their vectors, the item statistics)
    # broadcasts up to ~1M items instead of shuffling every example twice (Spark's default: 10m)
    "spark.sql.autoBroadcastJoinThreshold": "64m",
}


class MissingJarsError(UserError):
    pass


class SessionError(UserError, ValueError):
    """A Spark master or setting that Spark refuses, or a JVM that did not start; the message
    names the option and the value."""


MASTER_FORMS = (
    "local, local[N], local[*], local[N,F], local-cluster[N,C,M], spark://HOST:PORT[,HOST:PORT...], "
    "yarn or k8s://HOST:PORT (N, C, M positive integers, F retries)"
)
_HOST_PORT = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):([0-9]{1,5})"
# Spark's own forms (SparkMasterRegex), with counts that must be positive
_MASTER = re.compile(
    r"local"
    r"|local\[([1-9][0-9]*|\*)\]"
    r"|local\[([1-9][0-9]*|\*)\s*,\s*([0-9]+)\]"
    r"|local-cluster\[\s*[1-9][0-9]*\s*,\s*[1-9][0-9]*\s*,\s*[1-9][0-9]*\s*\]"
    rf"|spark://{_HOST_PORT}(,{_HOST_PORT})*"
    r"|yarn"
    r"|k8s://\S+"
)
# settings spark-submit checks before the driver's JVM starts ("must be a positive number")
_SIZE_SETTINGS = ("spark.driver.memory", "spark.executor.memory")
_COUNT_SETTINGS = ("spark.driver.cores", "spark.executor.cores", "spark.cores.max", "spark.executor.instances")
_SIZE = re.compile(r"([0-9]+)(b|k|kb|m|mb|g|gb|t|tb|p|pb)?", re.IGNORECASE)  # Spark's byte strings


def check_master(master: str, option: str = "--master") -> None:
    """Refuse a master URL that Spark cannot parse, naming ``option`` and the accepted forms."""
    ok = isinstance(master, str) and _MASTER.fullmatch(master) is not None
    if ok and master.startswith("spark://"):
        ok = all(0 < int(port) < 65536 for _, port in re.findall(_HOST_PORT, master[len("spark://"):]))
    if not ok:
        raise SessionError(f"{option} {master!r} is not a Spark master URL; expected {MASTER_FORMS}")


def check_options(master: str | None = None, conf: Mapping[str, str] | None = None) -> None:
    """What can be checked without a JVM, for the CLI to call before it starts Spark: the master
    (``--master``, else ``--conf spark.master``) and the settings spark-submit refuses at start
    (``spark.driver.memory``, ``spark.executor.memory``: a size such as ``4g``;
    ``spark.driver.cores``, ``spark.executor.cores``, ``spark.cores.max``,
    ``spark.executor.instances``: a positive integer). Raises ``SessionError`` naming them."""
    conf = dict(conf or {})
    if master is not None:
        check_master(master, "--master")
    elif "spark.master" in conf:
        check_master(conf["spark.master"], "--conf spark.master")
    for key in _SIZE_SETTINGS:
        value = conf.get(key)
        size = _SIZE.fullmatch(str(value).strip()) if value is not None else None
        if value is not None and not (size and int(size.group(1)) > 0):
            raise SessionError(
                f"--conf {key}={value!r} is not a size; expected a positive whole number with an optional unit "
                "b, k, m, g, t or p (e.g. 4g)"
            )
    for key in _COUNT_SETTINGS:
        value = conf.get(key)
        if value is not None and not (re.fullmatch(r"[0-9]+", str(value).strip()) and int(value) > 0):
            raise SessionError(f"--conf {key}={value!r} must be a positive integer")


def _java_message(e: BaseException) -> str:
    """The first line of the Java exception behind ``e`` (a Py4J error or PySpark's wrapper)."""
    from py4j.protocol import Py4JError

    java = getattr(e, "java_exception", None)
    text = None
    if java is not None:
        try:
            text = java.getMessage()
        except Py4JError:
            text = None
    if not text:
        desc = getattr(e, "_desc", None)  # pyspark's CapturedException keeps the Java message here
        text = desc if isinstance(desc, str) and desc else str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    if first.startswith("An error occurred while calling") and len(lines) > 1:
        first = lines[1].lstrip(": ")
    return first


def _check_sql_settings(jvm, conf: Mapping[str, str]) -> None:
    """Set each ``spark.sql.*`` setting on a scratch SQLConf in the JVM, so its own checks run
    before the session exists: a session built with a value SQLConf refuses does not fail, it
    hangs (PySpark's error conversion reads the broken conf and recurses)."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    scratch = jvm.org.apache.spark.sql.internal.SQLConf()
    for key, value in conf.items():
        if key.startswith("spark.sql."):
            try:
                scratch.setConfString(key, value)
            except (Py4JError, PySparkException) as e:
                raise SessionError(f"--conf {key}={value!r} is refused by Spark: {_java_message(e)}") from None


def _start_failure(e: BaseException, master: str | None, conf: Mapping[str, str]) -> SessionError:
    """A ``SessionError`` for a session that failed to start, naming the setting if the Java
    message names one of ``conf``'s keys, else the master and the Java message's first line."""
    message = _java_message(e)
    for key, value in conf.items():
        if key in message:
            return SessionError(f"--conf {key}={value!r} is refused by Spark: {message}")
    where = f" with --master {master!r}" if master else ""
    return SessionError(f"Spark did not start{where}: {message} (Spark's log above has the details)")


def jars_dir() -> Path:
    return Path(os.environ.get("TWOTOWER_JARS_DIR", DEFAULT_JARS_DIR))


def find_jars(directory: Path | None = None) -> list[str]:
    """The jars Spark needs, from the install-time folder; fails with the fix if Delta's are missing."""
    directory = directory or jars_dir()
    jars = sorted(glob.glob(str(directory / "*.jar")))
    if not any(Path(j).name.startswith("delta-spark_") for j in jars):
        raise MissingJarsError(
            f"no Delta jar in {directory}: run `make jars` (fetches them from Maven Central once) "
            "or set TWOTOWER_JARS_DIR to the folder that holds them"
        )
    return jars


def under_spark_submit() -> bool:
    """True when this Python process was launched by spark-submit (the JVM gateway exists)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def build_session(app_name: str = "twotower", master: str | None = None, conf: Mapping[str, str] | None = None):
    """Return the SparkSession: the existing one under spark-submit, a local one otherwise.

    ``master`` and ``conf`` are the CLI's ``--master`` and ``--conf``: a value Spark refuses
    raises ``SessionError`` naming it (``check_options`` before any JVM starts; the
    ``spark.sql.*`` settings with the JVM's parser before the session is created; a JVM or
    SparkContext that fails to start, naming the setting when Spark's message does, else with
    the first line of the Java error; a JVM that exits at launch prints its own error above).
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    conf = dict(conf or {})
    check_options(master, conf)
    submitted = under_spark_submit()
    if not submitted:
        conf_master = conf.pop("spark.master", None)  # --master wins over --conf spark.master
        master = master or conf_master
        if not master and "TWOTOWER_MASTER" in os.environ:
            master = os.environ["TWOTOWER_MASTER"]
            check_master(master, "TWOTOWER_MASTER")
        master = master or "local[*]"
    from py4j.protocol import Py4JError
    from pyspark import SparkConf, SparkContext
    from pyspark.errors import PySparkException, PySparkRuntimeError
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not submitted:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.master(master)
        settings = {**LOCAL_DEFAULTS, **DEFAULTS}
        settings["spark.jars"] = ",".join(find_jars())
        if not os.environ.get(LOG_LEVEL_ENV):  # Spark's startup and WARN lines out of the user's terminal
            settings["spark.driver.extraJavaOptions"] += f" -Dlog4j2.configurationFile={QUIET_LOG4J}"
    else:
        # spark-submit already placed --jars/--conf; only fill in what it left unset.
        # attach to spark-submit's JVM first: before that, SparkConf() is an empty Python-side
        # dict that sees none of --conf/--jars, and the defaults below would override them
        SparkContext._ensure_initialized()
        given = SparkConf()
        settings = {k: v for k, v in DEFAULTS.items() if not given.contains(k)}
        # the driver's classpath was fixed when spark-submit started its JVM: spark.jars set now
        # would reach the executors but not the driver, so Delta must already be there
        if not SparkContext._jvm.org.apache.spark.util.Utils.classIsLoadable(DELTA_EXTENSION):
            raise MissingJarsError(
                "spark-submit was started without Delta's jars: pass them with "
                f"--jars $(ls {jars_dir()}/*.jar | paste -sd, -) (or set spark.jars / spark.jars.packages "
                "in spark-defaults.conf)"
            )
    settings.update(conf)
    for k, v in settings.items():
        builder = builder.config(k, v)
    if not submitted and SparkContext._gateway is None:
        # start the JVM with every setting (spark-submit reads the driver's memory from them), as
        # getOrCreate would, so that a JVM that exits at launch is reported here
        launch = SparkConf()
        for k, v in {**settings, "spark.master": master, "spark.app.name": app_name}.items():
            launch.set(k, v)
        try:
            SparkContext._ensure_initialized(conf=launch)
        except PySparkRuntimeError as e:
            if e.getCondition() != "JAVA_GATEWAY_EXITED":
                raise
            suspects = f"the --conf settings given ({', '.join(sorted(conf))})" if conf else "the Java installation (JAVA_HOME)"
            raise SessionError(
                f"Spark's JVM exited while starting (its error is printed above); check --master {master!r} and {suspects}"
            ) from None
    _check_sql_settings(SparkContext._jvm, conf)
    try:
        spark = builder.getOrCreate()
    except (Py4JError, PySparkException) as e:
        raise _start_failure(e, None if submitted else master, conf) from None
    spark.sparkContext.setLogLevel(os.environ.get(LOG_LEVEL_ENV) or ("WARN" if submitted else "ERROR"))
    return spark


def parse_conf(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Parse repeated ``--conf key=value`` options; the error names the bad one."""
    out: dict[str, str] = {}
    for p in pairs:
        if "=" not in p:
            raise ValueError(f"--conf expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out
