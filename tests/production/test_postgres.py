"""Statistics from the "recsys database": a real PostgreSQL server on loopback (see conftest.py),
read over Spark JDBC; credentials from the environment or an owner-only file, never written."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from twotower.nightly import published_path
from twotower_features.config import ConfigError, ExperimentConfig, StatsConfig
from twotower_features.stats_source import (
    CredentialError,
    StatsSourceError,
    read_stats,
    resolve_password,
    stats_dates,
)

from .conftest import SMALL, D, copy_root
from .test_nightly import REPO, _toml, digest

TABLES = ("user_stats", "item_stats", "creator_stats")


def pg_stats(db, **kw) -> StatsConfig:
    return StatsConfig(source="postgres", jdbc_url=db.url, user=db.user, **kw)


def test_statistics_read_from_postgres_equal_the_files(spark, recsys_db, small_inputs, monkeypatch):
    monkeypatch.setenv("TWOTOWER_STATS_PASSWORD", recsys_db.password)
    dates = stats_dates(D, 2)  # 07-02 .. 07-04
    for name in TABLES:
        from_db = read_stats(spark, str(small_inputs), name, pg_stats(recsys_db), dates=dates)
        from_files = read_stats(spark, str(small_inputs), name, StatsConfig(), dates=dates)
        n = from_files.count()
        assert n > 0 and from_files.agg(F.min("dt")).first()[0] == dates[0] and from_files.agg(F.max("dt")).first()[0] == dates[1]
        assertDataFrameEqual(from_db.select(*from_files.columns), from_files)
        # the date range is a WHERE clause of the database query, not a filter after the transfer
        plan = from_db._jdf.queryExecution().executedPlan().toString()
        assert "PushedFilters" in plan and "GreaterThanOrEqual(dt" in plan and "LessThanOrEqual(dt" in plan, plan


def test_a_wrong_password_fails_naming_the_user_and_never_the_password(spark, recsys_db, small_inputs, monkeypatch):
    wrong = "not-the-password-7f3a"
    monkeypatch.setenv("TWOTOWER_STATS_PASSWORD", wrong)
    with pytest.raises(StatsSourceError, match=r"cannot read user_stats from table public.user_stats at jdbc:postgresql://127.0.0.1:\d+/recsys as user 'twotower'") as err:
        read_stats(spark, str(small_inputs), "user_stats", pg_stats(recsys_db))
    assert "password authentication failed" in str(err.value) and wrong not in str(err.value)
    monkeypatch.delenv("TWOTOWER_STATS_PASSWORD")
    with pytest.raises(CredentialError, match="environment variable TWOTOWER_STATS_PASSWORD"):
        read_stats(spark, str(small_inputs), "user_stats", pg_stats(recsys_db))


def test_the_password_file_must_be_readable_by_its_owner_only(spark, recsys_db, small_inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("TWOTOWER_STATS_PASSWORD", raising=False)
    f = tmp_path / "pg.pw"
    f.write_text(recsys_db.password + "\n")
    os.chmod(f, 0o640)
    stats = pg_stats(recsys_db, password_file=str(f))
    with pytest.raises(CredentialError, match=r"readable only by its owner \(chmod 600\), it has mode 0640"):
        resolve_password(stats)
    os.chmod(f, 0o600)
    assert resolve_password(stats) == recsys_db.password
    assert read_stats(spark, str(small_inputs), "creator_stats", stats).count() > 0
    with pytest.raises(CredentialError, match="does not exist"):
        resolve_password(pg_stats(recsys_db, password_file=str(tmp_path / "missing")))


def test_a_config_never_holds_a_password():
    with pytest.raises(ConfigError, match="must not hold a password"):
        ExperimentConfig.from_dict({"stats": {"source": "postgres", "password": "s3cret"}})
    with pytest.raises(ConfigError, match="'stats.jdbc_url' must not carry a password") as err:
        StatsConfig(source="postgres", jdbc_url="jdbc:postgresql://h/db?user=u&password=s3cret", user="u")
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigError, match="'stats.user' must be a database user name"):
        StatsConfig(source="postgres", jdbc_url="jdbc:postgresql://h/db")


LOG4J_INFO = """\
rootLogger.level = info
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d %p %c: %m%n
logger.spark.name = org.apache.spark
logger.spark.level = info
"""


def _files_holding(root: Path, secret: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]


@pytest.mark.slow
def test_nightly_with_postgres_statistics_equals_files_and_never_writes_the_password(spark, nightly_root, small_inputs, recsys_db, tmp_path):
    """`twotower nightly` in its own process, statistics from PostgreSQL, Spark logging at INFO:
    prepare and embeddings are reused (only the [stats] section changed), examples and tfrecords
    come out identical to the run on the statistics files, and the password is in no file of the
    output root, the working folder or the config, nor in anything the process printed."""
    root = copy_root(nightly_root, tmp_path / "root")
    from_files = published_path(root, D).resolve()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cfg = ExperimentConfig.from_dict({**SMALL, "stats": {"source": "postgres", "jdbc_url": recsys_db.url, "user": recsys_db.user}})
    cfg_file = tmp_path / "cfg.toml"
    cfg_file.write_text(_toml(cfg.to_dict()))
    # Spark's own loggers at INFO (a logger with its own level passes the shell's WARN filter)
    log_cfg = tmp_path / "log4j2.properties"
    log_cfg.write_text(LOG4J_INFO)
    env = {**os.environ, "TWOTOWER_STATS_PASSWORD": recsys_db.password, "TWOTOWER_SPARK_LOG_LEVEL": "INFO"}
    java_opts = f"spark.driver.extraJavaOptions=-Duser.timezone=UTC -Dlog4j2.configurationFile={log_cfg.as_uri()}"
    cmd = [str(REPO / ".venv" / "bin" / "twotower"), "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false", "--conf", java_opts,
           "nightly", "--config", str(cfg_file), "--input", str(small_inputs), "--output", str(root), "--date", str(D)]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, timeout=900)
    printed = res.stdout + res.stderr
    assert res.returncode == 0, printed.decode(errors="replace")[-4000:]
    record = json.loads((root / "_nightly" / f"{D}.json").read_text())
    assert record["status"] == "published"
    assert {s: v["action"] for s, v in record["stages"].items()} == {"prepare": "reused", "embeddings": "reused", "examples": "ran", "tfrecords": "ran"}
    assert record["inputs"]["user_stats"]["source"] == "postgres" and record["inputs"]["user_stats"]["rows"] > 0
    from_db = published_path(root, D).resolve()
    assert from_db != from_files
    a, b = digest(spark, from_files), digest(spark, from_db)
    for key in ("tables/examples", "tfrecords/train", "tfrecords/validation", "tfrecords/catalog", "feature_spec.json"):
        assert a[key] == b[key], key
    # the normalisation statistics are the same bit for bit, although this process ran local[1]
    # and the fixture local[2]: the fit's sums are exact, so the order of their terms does not matter
    assert (from_db / "artifacts" / "normalisation.json").read_bytes() == (from_files / "artifacts" / "normalisation.json").read_bytes()
    norm = json.loads((from_db / "artifacts" / "normalisation.json").read_text())
    # the statistics did reach the examples: their train mean is fitted from joined rows (0.0 when none joined)
    assert norm["user_ctr"][0] > 0 and norm["item_ctr"][0] > 0 and norm["creator_ctr"][0] > 0
    # the password: nowhere (Spark logged at INFO, so the process printed a lot)
    secret = recsys_db.password.encode()
    assert printed.count(b" INFO org.apache.spark.") > 100 and b"JDBC" in printed.upper()
    assert secret not in printed
    assert _files_holding(root, secret) == [] and _files_holding(cwd, secret) == []
    assert secret not in cfg_file.read_bytes()
