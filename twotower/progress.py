"""Progress of long Spark work: one line per Spark job a stage starts, and when it ends.

``spark_jobs(spark, log, prefix)`` polls Spark's status tracker (no listener, nothing on the
JVM side) every ``interval_s`` from a daemon thread while the block runs, and logs each job it
sees start, the tasks done of a job still running every ``report_s``, and the end of a job that
took ``long_s`` or more::

    [prepare] job 12 started: count at pipeline.py:95 (200 tasks)
    [prepare] job 12 running: 120/200 tasks, 15 s
    [prepare] job 12 done: 24.0 s

Jobs shorter than one interval may be missed (they were quick); the stage's own lines give the
row counts. The thread stops when the block ends, however it ends.
"""
from __future__ import annotations

import contextlib
import re
import threading
import time
from typing import Any, Callable, Iterator

_CALL_SITE = re.compile(r"(?P<what>\S+) at (?P<path>\S+?)(?P<line>:\d+)?$")


def _short(name: str) -> str:
    """``collect at /a/b/pipeline.py:95`` -> ``collect at pipeline.py:95``."""
    if "withThreadLocalCaptured" in name:  # Spark's own jobs: broadcasts of small tables, subqueries
        return "broadcast or subquery"
    m = _CALL_SITE.match(name.strip())
    if not m:
        return name.strip()
    return f"{m['what']} at {m['path'].rsplit('/', 1)[-1]}{m['line'] or ''}"


def _stages(tracker: Any, job_id: int) -> list[Any]:
    info = tracker.getJobInfo(job_id)
    stages = [tracker.getStageInfo(s) for s in info.stageIds] if info is not None else []
    return [s for s in stages if s is not None]


def _describe(tracker: Any, job_id: int) -> str:
    stages = _stages(tracker, job_id)
    if not stages:
        return "(no stages)"
    last = max(stages, key=lambda s: s.stageId)
    tasks = sum(s.numTasks for s in stages)
    return f"{_short(last.name)} ({tasks} task{'s' if tasks != 1 else ''})"


def _tasks_done(tracker: Any, job_id: int) -> str:
    stages = _stages(tracker, job_id)
    return f"{sum(s.numCompletedTasks for s in stages)}/{sum(s.numTasks for s in stages)} tasks"


@contextlib.contextmanager
def spark_jobs(spark: Any, log: Callable[[str], None], prefix: str, *, interval_s: float = 1.0,
               report_s: float = 15.0, long_s: float = 5.0) -> Iterator[None]:
    """Log the Spark jobs that run while the block runs (see the module docstring)."""
    tracker = spark.sparkContext.statusTracker()
    stop = threading.Event()
    started: dict[int, float] = {}
    reported: dict[int, float] = {}

    def check(final: bool = False) -> None:
        now = time.monotonic()
        active = set(tracker.getActiveJobsIds())
        for job in sorted(active - set(started)):
            started[job] = reported[job] = now
            log(f"[{prefix}] job {job} started: {_describe(tracker, job)}")
        for job in sorted(active):
            if now - reported[job] >= report_s and not final:
                reported[job] = now
                log(f"[{prefix}] job {job} running: {_tasks_done(tracker, job)}, {now - started[job]:.0f} s")
        for job in sorted(j for j in list(started) if (final or j not in active) and started[j] > 0):
            if now - started[job] >= long_s:
                log(f"[{prefix}] job {job} done: {now - started[job]:.1f} s")
            started[job] = -1.0

    def poll() -> None:
        while not stop.is_set():
            try:
                check()
            except Exception:  # the session is stopping: progress is best effort
                return
            stop.wait(interval_s)

    thread = threading.Thread(target=poll, name=f"progress-{prefix}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5 * interval_s)
        with contextlib.suppress(Exception):
            check(final=True)  # the jobs the block waited for have ended
