"""Progress lines: the Spark jobs a stage starts, named by their call site."""
from __future__ import annotations

from twotower.progress import _short, spark_jobs


def test_call_sites_are_shortened():
    assert _short("collect at /work/main/twotower_features/pipeline.py:95") == "collect at pipeline.py:95"
    assert _short("save at NativeMethodAccessorImpl.java:0") == "save at NativeMethodAccessorImpl.java:0"
    assert _short("$anonfun$withThreadLocalCaptured$2 at CompletableFuture.java:1768") == "broadcast or subquery"


def test_a_job_that_runs_for_a_while_is_logged_with_its_tasks(spark):
    from pyspark.sql import functions as F

    lines: list[str] = []
    with spark_jobs(spark, lines.append, "stage-x", interval_s=0.05, report_s=0.2, long_s=0.0):
        # a job that lasts over a second: 4 tasks sleeping 0.6 s each on 2 cores
        spark.range(4).repartition(4).select(F.reflect(F.lit("java.lang.Thread"), F.lit("sleep"), F.lit(600).cast("long"))).collect()
    started = [s for s in lines if "started:" in s]
    assert started and all(s.startswith("[stage-x] job ") for s in lines)
    assert any("collect at test_progress.py" in s and "task" in s for s in started), lines
    assert any(" done: " in s for s in lines), lines
