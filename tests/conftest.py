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
    below 9.2; tests/test_xdist_groups.py fails when the grouping is lost.

    The longest groups are collected first (``LONGEST_GROUPS``) and `make test` passes
    ``--no-loadscope-reorder``, so xdist hands them out first, longest first, and the short
    files fill in after; by default it orders groups by their number of tests, and the
    spark-submit file (3 tests, 4 minutes) started last."""
    def group(item) -> str:
        rel = os.path.relpath(str(item.path), os.path.dirname(__file__))
        return "production" if rel.split(os.sep)[0] == "production" else rel

    for item in items:
        item.add_marker(pytest.mark.xdist_group(group(item)))
    rank = {g: i for i, g in enumerate(LONGEST_GROUPS)}
    items.sort(key=lambda item: rank.get(group(item), len(rank)))  # stable: the rest keep their order


# xdist groups by their time in a `make test` run (2026-12-01: about 8 down to 2.5 minutes), longest first
LONGEST_GROUPS = (
    os.path.join("cluster", "test_faults.py"),
    "production",
    os.path.join("cluster", "test_submit.py"),
    "test_end_to_end.py",
    os.path.join("twotower", "test_experiment.py"),
)
