"""Stage keys: equal keys, equal outputs. Experiment stage reuse and nightly stage skipping both
decide with ``stage_keys``; the code version recorded with every run is ``code_version``.

A stage's key hashes the key of the stage before it, the config sections the stage reads, what
it derives from other sections, the package version, and the fingerprints of the input tables
it reads (``twotower_features.fingerprint``: the data files behind the dates the run reads, not
where they live). So a stage is rebuilt when its config, its inputs, the package or any stage
before it changes, and only then.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any, Mapping

from twotower_features.config import ExperimentConfig

from .stages import STAGES


def digest(obj: Any, n: int = 16) -> str:
    """A short SHA-256 of ``obj`` as sorted JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def package_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("twotower")
    except metadata.PackageNotFoundError:  # running from a source tree
        return None


def code_version() -> dict[str, Any]:
    """Package version and, when the package is a git checkout, the commit and whether the
    working tree differs from it."""
    out: dict[str, Any] = {"package_version": package_version(), "git_commit": None, "git_dirty": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
            out["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _content(fingerprint: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the data is, not where it lives: a moved input folder is not a change."""
    return None if fingerprint is None else {k: v for k, v in fingerprint.items() if k != "path"}


def stage_keys(cfg: ExperimentConfig, inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The key of each stage of the stage table, chained in table order. ``inputs``: table name
    -> fingerprint (``twotower_features.fingerprint.input_fingerprints``)."""
    d = cfg.to_dict()
    code = package_version()
    keys: dict[str, str] = {}
    upstream = ""
    for stage in STAGES:
        upstream = keys[stage.name] = digest({
            "stage": stage.name,
            "upstream": upstream,
            "sections": {s: d[s] for s in stage.sections},
            "derived": stage.derived(cfg),
            "code": code,
            "inputs": {t: _content(inputs.get(t)) for t in stage.inputs_read(cfg)},
        })
    return keys
