"""Fault injection for the fault tests (``tests/cluster/test_faults.py``); off unless asked for.

Nothing happens unless the environment of the driver sets ``TWOTOWER_FAULT``; when it is unset
the hooks below cost one dictionary look-up and return their input unchanged::

    TWOTOWER_FAULT=<fault>[@<target>]   only the write whose target matches, when given: a
                                        Delta table's folder name (``examples``, ``filtered``)
                                        or a TFRecord folder's name (``train``, ``catalog``)
    TWOTOWER_FAULT_DIR=<folder>         where faults leave their evidence (a marker file per
                                        fault fired); once-only faults need it

Faults, by where they fire:

- ``task_fails_first_attempt`` (Delta writes): every task of the write raises on its first
  attempt (``TaskContext.attemptNumber() == 0``); Spark retries it when
  ``spark.task.maxFailures >= 2`` (``local[N,2]``, or any cluster).
- ``kill_executor_once`` (Delta writes): the first task of the write to read its first shuffled
  batch SIGKILLs its own executor JVM (``CoarseGrainedExecutorBackend``), and with it the shuffle
  files that executor holds; its pid goes into the marker file ``executor-killed``. Once per
  ``TWOTOWER_FAULT_DIR`` (required). Needs executors in their own JVM on this host
  (``local-cluster[...]``, a standalone worker here).
- ``kill_driver_before_delta_commit`` (Delta writes): the write's task of partition 0 waits until
  another task of the write has created a new data file in the table, then SIGKILLs the driver
  (its JVM and its Python process). Delta commits only after the last task, so the commit never
  happens. Needs two tasks of the write running at once (``local[2]`` or more) and one host
  (the task kills by pid).
- ``kill_driver_before_tfrecord_commit`` (``write_tfrecords``): the driver SIGKILLs itself when
  every shard and ``_SUCCESS`` are in the tmp folder, before the folder swap.

Linux only (``/proc``). Never set these in production.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

ENV = "TWOTOWER_FAULT"
DIR_ENV = "TWOTOWER_FAULT_DIR"
TASK_FAULTS = ("task_fails_first_attempt", "kill_executor_once", "kill_driver_before_delta_commit")
DRIVER_FAULTS = ("kill_driver_before_tfrecord_commit",)
_WAIT_FOR_DATA_FILE_S = 60.0


class InjectedFault(RuntimeError):
    """The failure ``task_fails_first_attempt`` raises."""


def armed(target: str) -> str | None:
    """The fault asked for at a write to ``target``, or None (the usual case)."""
    value = os.environ.get(ENV)
    if not value:
        return None
    fault, _, only = value.partition("@")
    if fault not in TASK_FAULTS + DRIVER_FAULTS:
        raise ValueError(f"{ENV}={value!r}: unknown fault {fault!r}; expected one of {list(TASK_FAULTS + DRIVER_FAULTS)}")
    if only and only != target:
        return None
    return fault


def _mark(folder: str | None, name: str) -> bool:
    """Create marker ``name`` in ``folder`` (TWOTOWER_FAULT_DIR); False if it exists (fired before)."""
    if not folder:
        return True
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _driver_pids() -> list[int]:
    """This driver's JVM and Python process, JVM first."""
    from pyspark import SparkContext

    pids = []
    if SparkContext._jvm is not None:
        pids.append(int(SparkContext._jvm.java.lang.ProcessHandle.current().pid()))
    return pids + [os.getpid()]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _executor_jvm_pid() -> int:
    """The CoarseGrainedExecutorBackend JVM above this Python worker (walks /proc parents)."""
    pid = os.getpid()
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if b"CoarseGrainedExecutorBackend" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise InjectedFault("kill_executor_once needs executors in their own JVM (local-cluster or a cluster), found none above this task")


def _data_files(table: str) -> set[str]:
    return {str(p) for p in Path(table).rglob("*.parquet")} if Path(table).is_dir() else set()


def wrap_delta_write(df, table_path: str):
    """``df`` unchanged, or with the armed task fault spliced in as a pass-through ``mapInArrow``."""
    fault = armed(Path(table_path).name)
    if fault is None or fault not in TASK_FAULTS:
        return df
    target = Path(table_path).name
    folder = os.environ.get(DIR_ENV)
    if fault == "kill_executor_once" and not folder:
        raise ValueError(f"{ENV}=kill_executor_once needs {DIR_ENV} (a folder to remember that it fired)")
    driver = _driver_pids() if fault == "kill_driver_before_delta_commit" else []
    before = _data_files(table_path) if driver else set()

    def hook(batches):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if fault == "task_fails_first_attempt" and ctx.attemptNumber() == 0:
            _mark(folder, f"failed-{target}-stage{ctx.stageId()}-part{ctx.partitionId()}")
            raise InjectedFault(f"{ENV}=task_fails_first_attempt: first attempt of partition {ctx.partitionId()} fails")
        rows = 0
        for batch in batches:
            if fault == "kill_executor_once" and rows == 0 and not Path(folder, "executor-killed").exists():
                pid = _executor_jvm_pid()  # the shuffle input is being read: kill mid-shuffle
                if _mark(folder, "executor-killed"):
                    Path(folder, "executor-killed").write_text(str(pid))
                    _kill([pid])
            rows += batch.num_rows
            yield batch
        if driver and ctx.partitionId() == 0:
            # this task's own rows wait in the writer's sort until it ends, so it waits for a data
            # file of another task of the write instead; while it waits the job cannot finish
            deadline = time.monotonic() + _WAIT_FOR_DATA_FILE_S
            while not (_data_files(table_path) - before) and time.monotonic() < deadline:
                time.sleep(0.05)
            _mark(folder, f"driver-killed-before-delta-commit-{target}")
            _kill(driver)

    return df.mapInArrow(hook, df.schema)


def driver_checkpoint(fault: str, target: str) -> None:
    """SIGKILL this driver here when ``fault`` is armed for ``target``."""
    if armed(target) == fault:
        _mark(os.environ.get(DIR_ENV), f"driver-killed-{fault}-{target}")
        _kill(_driver_pids())
