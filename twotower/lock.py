"""An exclusive lock per output date, so two runs of the same date never interleave.

The lock is a kernel lock (`fcntl.flock`) on a file that is never deleted: the kernel releases it
when the holding process exits, however it exits, so a crashed run cannot leave a stale lock
behind. The file also records who holds it (pid, host, run id, start time) for the error message
of a run that finds it taken, and a `generation` counter incremented by each holder: two runs of
the same date hold generations g and g + 1, never the same. A holder that died without releasing
is reported as such by the next holder (`previous_holder_died`).

`flock` is reliable on a local file system, which is where the lock folder must live (the output
root, or `lock_dir`): runs of one date on several hosts need a shared lock service or the
scheduler's own serialisation (one Airflow DAG run at a time per date), see docs/production.md.
"""
from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from twotower_features.errors import UserError


class LockBusy(UserError):
    """The lock is held by another process; the message names the holder."""


def _read_info(fd: int) -> dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        info = json.loads(raw.decode() or "{}")
        return info if isinstance(info, dict) else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def _write_info(fd: int, info: dict[str, Any]) -> None:
    data = json.dumps(info, sort_keys=True).encode()
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, data)
    os.fsync(fd)


def describe_holder(info: dict[str, Any]) -> str:
    if not info.get("pid"):
        return "another process"
    return f"pid {info['pid']} on host {info.get('host', '?')} (run {info.get('run_id', '?')}, since {info.get('acquired_at', '?')})"


class ExclusiveLock:
    """`with ExclusiveLock(path, run_id=..., wait_s=0): ...` — fails with LockBusy after `wait_s` seconds."""

    def __init__(self, path: str | Path, *, run_id: str = "", wait_s: float = 0.0, poll_s: float = 0.2) -> None:
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s!r}")
        self.path = Path(path)
        self.run_id = run_id
        self.wait_s = float(wait_s)
        self.poll_s = float(poll_s)
        self._fd: int | None = None
        self.generation = 0
        self.previous_holder_died: dict[str, Any] | None = None

    def acquire(self) -> "ExclusiveLock":
        if self._fd is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = describe_holder(_read_info(fd))
                    os.close(fd)
                    waited = f" after waiting {self.wait_s:g} s" if self.wait_s else ""
                    raise LockBusy(f"{self.path} is held by {holder}{waited}; this run did nothing") from None
                time.sleep(self.poll_s)
        previous = _read_info(fd)
        if previous.get("pid") and not previous.get("released_at"):
            # the kernel freed the lock but its holder never marked it released: it died
            self.previous_holder_died = {k: previous.get(k) for k in ("pid", "host", "run_id", "acquired_at")}
        self.generation = int(previous.get("generation", 0)) + 1
        _write_info(fd, {
            "generation": self.generation,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "run_id": self.run_id,
            "acquired_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        })
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            info = _read_info(fd)
            info["released_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")
            _write_info(fd, info)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "ExclusiveLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
