"""The one SparkSession factory.

Local mode by default, Delta's extensions on, UTC, few shuffle partitions for small data; every
setting can be overridden with ``conf``. Under ``spark-submit`` the master, memory, ``--conf``
settings and jars that spark-submit was given win: this factory only fills in what is missing,
and fails with the fix when the driver lacks Delta (spark-submit needs ``--jars``: the driver's
classpath is fixed before any Python runs).

Spark's JVM dependencies (Delta, the PostgreSQL driver) are never downloaded when a session
starts: ``make jars`` copies them into ``build/jars`` at install time, and this factory hands
them to Spark with ``spark.jars``. ``TWOTOWER_JARS_DIR`` points elsewhere (a docker image, a
cluster's shared folder).
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import Mapping

from .errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JARS_DIR = REPO_ROOT / "build" / "jars"

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DEFAULTS: dict[str, str] = {
    "spark.sql.extensions": DELTA_EXTENSION,
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.sources.partitionOverwriteMode": "dynamic",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
    "spark.databricks.delta.snapshotPartitions": "2",
}
# Only for a session this factory starts in local mode (never under spark-submit).
LOCAL_DEFAULTS: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.driver.memory": "4g",
    "spark.sql.adaptive.coalescePartitions.initialPartitionNum": "8",
}


class MissingJarsError(UserError):
    pass


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
    """Return the SparkSession: the existing one under spark-submit, a local one otherwise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    conf = dict(conf or {})
    builder = SparkSession.builder.appName(app_name)
    submitted = under_spark_submit()
    if not submitted:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = builder.master(master or conf.pop("spark.master", None) or os.environ.get("TWOTOWER_MASTER", "local[*]"))
        settings = {**LOCAL_DEFAULTS, **DEFAULTS}
        settings["spark.jars"] = ",".join(find_jars())
    else:
        # spark-submit already placed --jars/--conf; only fill in what it left unset.
        from pyspark import SparkConf, SparkContext

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
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("TWOTOWER_SPARK_LOG_LEVEL", "WARN"))
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
