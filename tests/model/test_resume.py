"""Resumable training (``train.fit_model(checkpoint_dir=...)``): a real ``twotower train`` killed
with SIGKILL after its second epoch and rerun with the same command continues after its last
checkpointed epoch, and ends with the metrics of an uninterrupted run within the model-seed
spread; a checkpoint of other settings is discarded."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from sklearn.metrics import roc_auc_score  # noqa: E402

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_model import predict as tpredict  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402

from .tiny_features import write_features  # noqa: E402

EPOCHS = 6
MODEL = dict(head="cosine", temperature=0.2, embedding_dim=8, hidden_units=(16,), output_dim=8, batch_size=64, learning_rate=0.02, epochs=EPOCHS)


def _toml(seed: int) -> str:
    lines = [f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in MODEL.items()]
    return 'name = "resume"\n[model]\n' + "\n".join(lines) + f"\nseed = {seed}\n"


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Large enough that an epoch takes a good part of a second: the kill lands mid-training."""
    root = tmp_path_factory.mktemp("feat_resume")
    write_features(root, n_train=24_000, n_val=2_000)
    return root


def _auc(model_dir: Path, root: Path) -> float:
    scored = tpredict.predict(model_dir, root, "validation")
    return float(roc_auc_score(scored["label"], scored["score"]))


def _train_cmd(root: Path, model_dir: Path, config: Path) -> list[str]:
    return [sys.executable, "-u", "-m", "twotower.cli", "train", "--features", str(root), "--model", str(model_dir), "--config", str(config)]


def test_sigkilled_training_resumes_from_its_last_epoch(features, tmp_path):
    root = features
    config = tmp_path / "resume.toml"
    config.write_text(_toml(seed=1))
    model_dir = tmp_path / "model"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    proc = subprocess.Popen(_train_cmd(root, model_dir, config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen, deadline = [], time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 5)
            line = proc.stdout.readline() if ready else ""
            seen.append(line)
            if line.startswith(f"epoch 2/{EPOCHS}"):
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None and not line:
                break
        else:
            pytest.fail("no 'epoch 2' line within 300 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]
    meta = json.loads((model_dir / "checkpoint" / "training_metadata.json").read_text())
    killed_after = int(meta["epoch"])
    assert 2 <= killed_after < EPOCHS, f"the kill came after epoch {killed_after}: epochs are too fast for this test"
    assert not (model_dir / "train_report.json").exists()

    rerun = subprocess.run(_train_cmd(root, model_dir, config), capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming after epoch {killed_after}/{EPOCHS}" in rerun.stdout
    report = json.loads((model_dir / "train_report.json").read_text())
    assert report["resumed_from_epoch"] == killed_after and len(report["loss_per_epoch"]) == EPOCHS - killed_after
    assert report["examples"] == 24_000 * (EPOCHS - killed_after)
    assert not (model_dir / "checkpoint").exists()  # removed once training ended

    # uninterrupted runs: seed 1 (the same) and seeds 2, 3 for the spread
    refs = {}
    for seed in (1, 2, 3):
        ref_dir = tmp_path / f"ref{seed}"
        ref_report = ttrain.train(root, ref_dir, ModelConfig(**MODEL, seed=seed), progress=lambda s: None)
        refs[seed] = (_auc(ref_dir, root), ref_report["loss_per_epoch"])
    aucs = np.array([a for a, _ in refs.values()])
    resumed_auc = _auc(model_dir, root)
    assert abs(resumed_auc - refs[1][0]) <= max(3 * aucs.std(ddof=1), 0.005), (resumed_auc, refs)
    # the weights and optimizer state came back: the first resumed epoch's loss is the
    # uninterrupted run's loss at that epoch, not a first epoch's from scratch
    ref_losses = refs[1][1]
    assert abs(report["loss_per_epoch"][0] - ref_losses[killed_after]) < abs(ref_losses[0] - ref_losses[killed_after]) / 2


def test_a_checkpoint_of_other_settings_is_discarded(features, tmp_path):
    from twotower_model.layout import CHECKPOINT_DIR, CHECKPOINT_IDENTITY

    folder = tmp_path / CHECKPOINT_DIR
    folder.mkdir()
    (folder / CHECKPOINT_IDENTITY).write_text(json.dumps({"training": {"epochs": 99}, "features": {}}))
    (folder / "training_metadata.json").write_text(json.dumps({"epoch": 2, "batch": 0}))
    lines: list[str] = []
    cfg = ModelConfig(**{**MODEL, "epochs": 1}, seed=1)
    _, report = ttrain.fit_model(features, cfg, progress=lines.append, checkpoint_dir=folder)
    assert any(line.startswith("discarding the checkpoint") for line in lines)
    assert report["resumed_from_epoch"] == 0 and len(report["loss_per_epoch"]) == 1
    assert not folder.exists()
