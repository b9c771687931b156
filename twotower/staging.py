"""One writer per features folder, and every file of it published together.

``staged(out, drop=...)`` holds the folder's lock (``.<name>.lock`` beside it; a second run of
the same folder fails at once with ``LockBusy``, or waits ``lock_wait_s``), builds into a staging
folder beside it (``.<name>.staging-<id>``) seeded with the current output minus ``drop`` (the
outputs of the stages about to run and of every stage after them, which would be stale), and
on success swaps it in: the old folder is renamed aside, the staging folder renamed to ``out``,
the old one deleted. A failed or killed run leaves ``out`` exactly as it was (byte for byte);
its staging folder is removed by the next run of the same folder. A run killed between the two
renames leaves the old folder beside ``out``, and the next run puts it back before anything else.

Seeding links large immutable files (Parquet, TFRecord, NumPy: no stage writes into a file it
did not create) and copies the rest (JSON, text, Delta's commit log), so nothing the build writes
can reach the published folder.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

from twotower_features import layout as L
from twotower_features.errors import UserError

from .lock import ExclusiveLock

LINKED_SUFFIXES = (".parquet", ".tfrecord", ".npy", ".npz")


class OutputError(UserError):
    """The output folder cannot be written: it is an input, or a folder we did not write."""


def _siblings(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.{kind}-*"))


def _recover(out: Path, log: Callable[[str], None]) -> None:
    """Undo what a killed run left: the old folder back in place, staging folders removed."""
    olds = _siblings(out, "old")
    if olds and not out.exists():
        os.rename(olds[-1], out)
        log(f"restored {out} from an interrupted publish")
        olds = olds[:-1]
    for leftover in [*olds, *_siblings(out, "staging")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _under(rel: str, prefixes: Sequence[str]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in prefixes)


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link a large immutable file (``LINKED_SUFFIXES``), copy anything else or where a
    link is impossible: a later write to ``dst`` can never reach ``src``."""
    if str(src).endswith(LINKED_SUFFIXES):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _seed(src: Path, dst: Path, drop: Sequence[str]) -> None:
    dst.mkdir()
    for dirpath, dirnames, files in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir
        dirnames[:] = [d for d in dirnames if not _under(os.path.join(rel_dir, d).replace(os.sep, "/"), drop)]
        for d in dirnames:
            (dst / rel_dir / d).mkdir()
        for f in files:
            rel = os.path.join(rel_dir, f).replace(os.sep, "/")
            if _under(rel, drop):
                continue
            link_or_copy(os.path.join(dirpath, f), dst / rel)


def looks_like_features(folder: Path) -> bool:
    return any((folder / p).exists() for p in (L.RESOLVED_CONFIG, L.REPORTS, L.FILTERED, L.MANIFEST))


def check_output(out: str | Path, input_dir: str | Path, tables: Sequence[str]) -> Path:
    """``out`` as an absolute path, after refusing an output that would overwrite an input (the
    input folder, a table in it, a folder holding it) or a folder this tool did not write."""
    out_p, inp = Path(os.path.abspath(out)), Path(os.path.abspath(input_dir))
    paths = [inp, *(inp / t for t in tables)]
    for p in paths:
        rp, ro = p.resolve(), out_p.resolve()
        if ro == rp or rp.is_relative_to(ro) or (p != inp and ro.is_relative_to(rp)):
            raise OutputError(f"--output {out} would overwrite the input {p}: write the features to a folder outside the input tables")
    if out_p.exists() and not out_p.is_dir():
        raise OutputError(f"--output {out} is a file: give a folder")
    if out_p.is_dir() and any(out_p.iterdir()) and not looks_like_features(out_p):
        raise OutputError(f"--output {out} is a non-empty folder that `twotower features` did not write (no {L.RESOLVED_CONFIG}): "
                          "choose a new or empty folder, it would be replaced")
    return out_p


@contextlib.contextmanager
def staged(out: str | Path, *, drop: Sequence[str] = (), lock_wait_s: float = 0.0, run_id: str = "",
           log: Callable[[str], None] = print) -> Iterator[Path]:
    """Yield a staging folder holding ``out`` minus ``drop``; publish it as ``out`` on success."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    with ExclusiveLock(out.parent / f".{out.name}.lock", run_id=run_id, wait_s=lock_wait_s):
        _recover(out, log)
        staging = out.parent / f".{out.name}.staging-{uuid.uuid4().hex[:12]}"
        if out.is_dir():
            _seed(out, staging, drop)
        else:
            staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:12]}"
        if out.exists():
            os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
