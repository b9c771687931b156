"""One session-scoped SparkSession for the whole test run (local[2], UTC, Delta, UI off)."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def spark():
    from twotower_features.session import build_session

    session = build_session(
        "twotower-tests",
        master="local[2]",
        conf={
            "spark.sql.shuffle.partitions": "2",
            "spark.default.parallelism": "2",
            "spark.driver.memory": "2g",
            "spark.sql.adaptive.enabled": "false",
            "spark.databricks.delta.snapshotPartitions": "1",
        },
    )
    yield session
    session.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`): the tests of a file, and of
    the production folder, whose files share session fixtures (generated inputs, nightly outputs,
    a PostgreSQL server), stay on one worker, so those fixtures are built once. The two cluster
    files may run on different workers (each then builds the small reference run): they are the
    longest groups.

    ``tryfirst``: xdist reads the marks in its own ``pytest_collection_modifyitems`` (it appends
    ``@group`` to each test id), which otherwise runs before this one and sees none. And
    pytest 9.2 ignores that id change (pytest-dev/pytest-xdist#1386): setup.py keeps pytest
    below 9.2; tests/test_xdist_groups.py fails when the grouping is lost."""
    for item in items:
        rel = os.path.relpath(str(item.path), os.path.dirname(__file__))
        group = "production" if rel.split(os.sep)[0] == "production" else rel
        item.add_marker(pytest.mark.xdist_group(group))
