"""Is the features folder whole, and was this model trained on it? (No TensorFlow here.)

- ``check_split_files``: the TFRecord files of a split on disk against the list that
  ``manifest.json`` keeps of them (``twotower_features.layout.MANIFEST_SHARDS``: path, records,
  bytes per shard): none missing, none extra, the same byte sizes, the same record counts (read
  from the files' framing, ``framing.count_records``: a walk over the record headers, no
  parsing). ``train`` checks every split it reads before it starts, ``evaluate`` the validation
  split; each refuses a folder that differs with ``IncompleteFeaturesError``.
- ``features_provenance``: what identifies a features folder: the manifest's ``config_hash``,
  ``data_hash`` and ``created_at``, the feature spec's ``version`` and the sha256 of
  ``feature_spec.json``. ``train`` writes it into the model folder (``layout.PROVENANCE_FILE``)
  and into each exported tower (``export.py``); ``evaluate`` and ``export.load_towers(...,
  features_dir=...)`` refuse a model whose provenance differs (``ProvenanceError``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from twotower_features import layout as FL
from twotower_features.errors import UserError
from twotower_features.io import write_json_atomic
from twotower_features.spec import FeatureSpec
from twotower_features.tfrecord.framing import FramingError, count_records

from .layout import PROVENANCE_FILE

# the facts that must be equal for a model to be evaluated on a features folder, in message order
COMPARED = ("config_hash", "data_hash", "feature_spec_version", "feature_spec_sha256", "features_created_at")
FEATURES_DIR = "features_dir"  # where the model was trained: named in messages, not compared


class IncompleteFeaturesError(UserError):
    """A features folder's TFRecord files differ from its manifest (missing, extra, cut or changed)."""


class ProvenanceError(UserError):
    """A model was trained on another features folder than the one it is given with."""


def _rerun(feat_dir: str | Path) -> str:
    return (
        "the features folder is incomplete: rerun `twotower tfrecords --config CONFIG --input INPUT --output "
        f"{feat_dir}` with the config and inputs that built it"
    )


def read_manifest(feat_dir: str | Path) -> dict[str, Any]:
    """``manifest.json`` of the features folder, with its shard lists; IncompleteFeaturesError if absent."""
    path = Path(feat_dir) / FL.MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise IncompleteFeaturesError(f"features folder {str(feat_dir)!r} has no {FL.MANIFEST}; {_rerun(feat_dir)}") from None
    except ValueError as e:
        raise IncompleteFeaturesError(f"{str(path)!r} is not valid JSON ({e}); {_rerun(feat_dir)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get(FL.MANIFEST_SHARDS), dict):
        raise IncompleteFeaturesError(
            f"{str(path)!r} lists no TFRecord shards ('{FL.MANIFEST_SHARDS}': it was written before they were recorded); {_rerun(feat_dir)}"
        )
    return manifest


def check_split_files(feat_dir: str | Path, splits: Iterable[str], spec: FeatureSpec | None = None) -> dict[str, int]:
    """Records per split, after checking that each split's files on disk (the feature spec's glob
    ``extras['splits'][split]``) are exactly those ``manifest.json`` lists, with its byte sizes
    and record counts. Raises IncompleteFeaturesError naming the split, the first file that
    differs (and how many more do) and the fix. Sizes are compared first; the record counts are
    read (``framing.count_records``) only when every size matches."""
    root = Path(feat_dir)
    spec = spec or FeatureSpec.load(root)
    manifest = read_manifest(root)
    globs = spec.extras.get("splits") or {}
    totals: dict[str, int] = {}
    for split in splits:
        where = f"split {split!r} of features folder {str(feat_dir)!r}"
        listed = manifest[FL.MANIFEST_SHARDS].get(split)
        if split not in globs or not isinstance(listed, list):
            raise IncompleteFeaturesError(f"{where}: {FL.MANIFEST} or {FL.FEATURE_SPEC} does not list it; {_rerun(feat_dir)}")
        on_disk = {p.relative_to(root).as_posix(): p for p in root.glob(globs[split]) if p.is_file()}
        problems: list[str] = []
        for shard in listed:
            rel, size = shard["path"], int(shard["bytes"])
            path = on_disk.get(rel)
            if path is None:
                problems.append(f"{rel} is missing ({FL.MANIFEST} lists it: {int(shard['records']):,} records, {size:,} bytes)")
                continue
            actual = path.stat().st_size
            if actual < size:
                problems.append(f"{rel} is truncated: it has {actual:,} bytes, {FL.MANIFEST} lists {size:,}")
            elif actual > size:
                problems.append(f"{rel} has {actual:,} bytes, {FL.MANIFEST} lists {size:,}: it was changed after the features were written")
        names = {s["path"] for s in listed}
        problems += [f"{rel} is not in {FL.MANIFEST} (it lists {len(listed)} file(s) for this split)" for rel in sorted(set(on_disk) - names)]
        if not problems:
            for shard in listed:
                try:
                    n = count_records(on_disk[shard["path"]])
                except FramingError as e:
                    problems.append(f"{shard['path']} is damaged ({e})")
                    continue
                if n != int(shard["records"]):
                    problems.append(f"{shard['path']} holds {n:,} records, {FL.MANIFEST} lists {int(shard['records']):,}")
        if problems:
            more = f" (and {len(problems) - 1} more file problem(s) in this split)" if len(problems) > 1 else ""
            raise IncompleteFeaturesError(f"{where}: {problems[0]}{more}; {_rerun(feat_dir)}")
        totals[split] = sum(int(s["records"]) for s in listed)
    return totals


def features_provenance(feat_dir: str | Path) -> dict[str, Any]:
    """What identifies the features folder: ``COMPARED`` facts, and its absolute path."""
    root = Path(feat_dir)
    manifest = read_manifest(root)
    missing = [k for k in ("config_hash", "data_hash", "created_at") if k not in manifest]
    if missing:
        raise IncompleteFeaturesError(f"{str(root / FL.MANIFEST)!r} lacks {missing}; {_rerun(feat_dir)}")
    raw = (root / FL.FEATURE_SPEC).read_bytes()
    return {
        "config_hash": manifest["config_hash"],
        "data_hash": manifest["data_hash"],
        "feature_spec_version": json.loads(raw).get("version"),
        "feature_spec_sha256": hashlib.sha256(raw).hexdigest(),
        "features_created_at": manifest["created_at"],
        FEATURES_DIR: str(root.resolve()),
    }


def write_model_provenance(model_dir: str | Path, provenance: Mapping[str, Any]) -> Path:
    """``provenance`` as the model folder's ``layout.PROVENANCE_FILE``."""
    return write_json_atomic(Path(model_dir) / PROVENANCE_FILE, dict(provenance))


def read_model_provenance(model_dir: str | Path) -> dict[str, Any]:
    """The model folder's provenance; ProvenanceError when it has none."""
    path = Path(model_dir) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ProvenanceError(
            f"model {str(model_dir)!r} has no {PROVENANCE_FILE}: it does not say which features it was trained on; "
            "retrain it (`twotower train --features DIR --model DIR`)"
        ) from None


def check_provenance(model: Mapping[str, Any] | None, features: Mapping[str, Any], *, model_dir: str | Path, feat_dir: str | Path, what: str = "model") -> None:
    """Raise ProvenanceError unless ``model``'s ``COMPARED`` facts equal ``features``'."""
    if not model:
        raise ProvenanceError(
            f"{what} {str(model_dir)!r} carries no provenance: it does not say which features it was trained on; "
            "retrain it (`twotower train --features DIR --model DIR`)"
        )
    differ = [k for k in COMPARED if model.get(k) != features.get(k)]
    if not differ:
        return
    others = [k for k in differ if k not in ("config_hash", "data_hash")]
    also = f"; also differ: {', '.join(others)}" if others else ""
    trained_on = model.get(FEATURES_DIR) or "the features it was trained on"
    raise ProvenanceError(
        f"{what} {str(model_dir)!r} was trained on other features than {str(feat_dir)!r}: config_hash {model.get('config_hash')} "
        f"(model) vs {features.get('config_hash')} (features), data_hash {model.get('data_hash')} vs {features.get('data_hash')}{also}. "
        f"Train on this folder (`twotower train --features {feat_dir} --model DIR`), or evaluate with the features the model was "
        f"trained on ({trained_on})"
    )


def check_model(model_dir: str | Path, feat_dir: str | Path) -> None:
    """The model folder's provenance against the features folder's (``check_provenance``)."""
    check_provenance(read_model_provenance(model_dir), features_provenance(feat_dir), model_dir=model_dir, feat_dir=feat_dir)
