"""Training on several workers (``distribute.py``, ``train.fit_model`` under ``TF_CONFIG``): the
parsing of ``TF_CONFIG`` and its errors, the split of the train files and of the batch, the
refusals made before any worker waits for another, one step of ``ReplicaTrainer`` against the
update computed by hand, and two real ``twotower train`` workers on 127.0.0.1 whose chief's
model is within the single-process seed spread."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from click.testing import CliRunner  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.errors import UserError  # noqa: E402
from twotower_features.spec import FeatureSpec  # noqa: E402
from twotower_model import distribute as tdist  # noqa: E402
from twotower_model import export as texport  # noqa: E402
from twotower_model import predict as tpredict  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402
from twotower_model.data import make_dataset, shard_files  # noqa: E402
from twotower_model.model import TwoTowerModel  # noqa: E402

from .tiny_features import SMALL  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 4
MODEL = dict(head="cosine", temperature=0.2, embedding_dim=8, hidden_units=(16,), output_dim=8, batch_size=64, learning_rate=0.02, epochs=EPOCHS)
# what a chief writes into the model folder (twotower_model/layout.py), and nothing else
MODEL_FILES = {"model.keras", "user_tower", "item_tower", "item_embeddings.parquet", "resolved_model_config.json", "provenance.json", "train_report.json"}


def _tf_config(cluster: dict, task: dict | None) -> str:
    return json.dumps({"cluster": cluster, **({"task": task} if task is not None else {})})


def _toml(seed: int) -> str:
    lines = [f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in MODEL.items()]
    return 'name = "multiworker"\n[model]\n' + "\n".join(lines) + f"\nseed = {seed}\n"


# ---- TF_CONFIG -----------------------------------------------------------------------------------
TWO = {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}


@pytest.mark.parametrize(
    "cluster, task, expected",
    [
        (TWO, {"type": "worker", "index": 1}, tdist.Cluster(workers=2, rank=1, task_type="worker", task_index=1)),
        (TWO, {"type": "worker", "index": 0}, tdist.Cluster(workers=2, rank=0, task_type="worker", task_index=0)),
        # a chief comes first (Vertex AI's first pool): worker i is rank i + 1
        ({"chief": ["c:1"], **TWO}, {"type": "worker", "index": 0}, tdist.Cluster(workers=3, rank=1, task_type="worker", task_index=0)),
        ({"chief": ["c:1"], **TWO}, {"type": "chief", "index": 0}, tdist.Cluster(workers=3, rank=0, task_type="chief", task_index=0)),
        ({"worker": ["h:1"]}, {"type": "worker", "index": 0}, tdist.Cluster(workers=1, rank=0, task_type="worker", task_index=0)),
    ],
)
def test_tf_config_gives_the_worker_count_and_rank(cluster, task, expected):
    got = tdist.parse_tf_config(_tf_config(cluster, task))
    assert got == expected
    assert got.distributed == (expected.workers > 1) and got.is_chief == (expected.rank == 0)


def test_without_tf_config_training_is_single_process():
    assert tdist.cluster_from_env({}) == tdist.SINGLE
    assert tdist.cluster_from_env({"TF_CONFIG": "  "}) == tdist.SINGLE
    assert not tdist.SINGLE.distributed and tdist.SINGLE.is_chief


@pytest.mark.parametrize(
    "text, problem",
    [
        ("{oops", "is not valid JSON"),
        ("[1, 2]", "must be a JSON object, got list"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "has no 'cluster' object"),
        (_tf_config({"ps": ["p:1"], **TWO}, {"type": "worker", "index": 0}), "job(s) ['ps']"),
        (_tf_config(TWO, None), "has no 'task' object"),
        (_tf_config(TWO, {"type": "worker", "index": 2}), "'task'.'index' is 2; the cluster's 'worker' job has 2 task(s): 0 to 1"),
        (_tf_config(TWO, {"type": "worker"}), "'task'.'index' is None"),
        (_tf_config(TWO, {"type": "chief", "index": 0}), "'task'.'type' is 'chief'"),
        (_tf_config({"worker": ["localhost", "h:2"]}, {"type": "worker", "index": 0}), "non-empty list of 'host:port' strings"),
        (_tf_config({"worker": ["h:1", "h:1"]}, {"type": "worker", "index": 0}), "['h:1'] more than once"),
        (_tf_config({"chief": ["a:1", "b:1"]}, {"type": "chief", "index": 0}), "2 'chief' tasks; at most one"),
    ],
)
def test_a_malformed_tf_config_is_named(text, problem):
    with pytest.raises(UserError) as err:
        tdist.cluster_from_env({"TF_CONFIG": text})
    assert str(err.value).startswith("the environment variable TF_CONFIG ")
    assert problem in str(err.value)


def test_the_global_batch_splits_evenly_or_is_refused():
    assert tdist.split_batch(64, 2) == 32
    assert tdist.split_batch(64, 4, "replicas") == 16
    with pytest.raises(UserError, match=r"batch_size = 65 is the global batch .* 2 workers of TF_CONFIG: set it to a multiple of 2 \(e.g. 64 or 66\)"):
        tdist.split_batch(65, 2)


# ---- the file split ------------------------------------------------------------------------------
def test_each_worker_reads_every_nth_file():
    files = [f"part-{i}" for i in range(5)]
    assert shard_files(files, (0, 2), "train") == ["part-0", "part-2", "part-4"]
    assert shard_files(files, (1, 2), "train") == ["part-1", "part-3"]
    assert shard_files(files, (2, 3), "train") == ["part-2"]
    assert shard_files(files, (0, 1), "train") == files


def test_fewer_files_than_workers_is_refused():
    with pytest.raises(UserError) as err:
        shard_files(["part-0"], (0, 2), "train")
    msg = str(err.value)
    assert "split 'train' has 1 TFRecord file(s) for 2 workers" in msg and "[output] tfrecord_shards >= 2" in msg


def test_a_sharded_dataset_reads_only_its_files(feat):
    root, written = feat
    spec = FeatureSpec.load(root)
    ts = written["train"]["event_ts"]  # part-00000 holds the first half of the train rows, part-00001 the rest
    half = len(ts) // 2
    for worker, expected in ((0, ts[:half]), (1, ts[half:])):
        ds = make_dataset(root, "train", spec, batch_size=1000, shuffle=False, seed=0, columns=["event_ts"], shard=(worker, 2))
        got = np.concatenate([b["event_ts"].numpy() for b in ds])
        np.testing.assert_array_equal(got, expected)


def test_a_workers_epochs_are_the_same_in_every_run(feat):
    """A worker's train batches read as ``fit`` reads them under a strategy (one iterator,
    ``steps`` batches per epoch) are the same batches when built again, epoch after epoch, and
    each epoch is reshuffled. (Cut into epochs by ``take`` with an iterator per epoch, epochs
    after the first depended on how far prefetching had run.)"""
    root, written = feat
    spec = FeatureSpec.load(root)
    cfg = ModelConfig(**MODEL, seed=5)
    steps = -(-len(written["train"]["label"]) // cfg.batch_size)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)

    def epochs(pause):
        batches, out = iter(ttrain._worker_train_dataset(root, spec, cfg, ["event_ts"], None, False, context)), []
        for _ in range(3):
            out.append(np.stack([next(batches)["event_ts"].numpy() for _ in range(steps)]))
            time.sleep(pause)  # prefetching runs ahead (with an iterator per epoch, this moved the third epoch)
        return out

    first, again = epochs(0.0), epochs(0.3)
    assert first[0].shape == (steps, cfg.batch_size // 2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])


# ---- refusals before any worker waits for another --------------------------------------------------
def test_fit_model_refuses_before_starting_the_strategy(feat, monkeypatch):
    root, _ = feat
    three = _tf_config({"worker": ["h:1", "h:2", "h:3"]}, {"type": "worker", "index": 0})
    monkeypatch.setenv("TF_CONFIG", three)

    def no_strategy():  # reaching it would wait for two workers that do not exist
        raise AssertionError("make_strategy was called before the checks refused")

    monkeypatch.setattr(ttrain, "make_strategy", no_strategy)
    with pytest.raises(UserError, match="batch_size = 64 .* 3 workers"):
        ttrain.fit_model(root, ModelConfig(epochs=1, **SMALL), progress=lambda s: None)
    with pytest.raises(UserError, match="split 'train' has 2 TFRecord file\\(s\\) for 3 workers"):
        ttrain.fit_model(root, ModelConfig(epochs=1, **{**SMALL, "batch_size": 63}), progress=lambda s: None)


def test_a_malformed_tf_config_is_a_short_cli_error(feat, tmp_path):
    from twotower.cli import main

    root, _ = feat
    config = tmp_path / "mw.toml"
    config.write_text(_toml(seed=1))
    args = ["train", "--features", str(root), "--model", str(tmp_path / "model"), "--config", str(config)]
    result = CliRunner().invoke(main, args, env={"TF_CONFIG": '{"cluster": {"worker": ["h:1", "h:2"]}}'})
    assert result.exit_code == 1, result.output
    assert "TF_CONFIG has no 'task' object" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2
    assert not (tmp_path / "model").exists()


# ---- one step of ReplicaTrainer, by hand -----------------------------------------------------------
LR = 0.5


def _mirrored_step(root: str, out: str) -> None:
    """Run in a fresh process (two logical CPUs must be set up before TensorFlow starts): one SGD
    step of a ``ReplicaTrainer`` under a ``MirroredStrategy`` of two replicas, each given half of
    a batch, against ``w - LR * mean(gradient on half 0, gradient on half 1)`` computed with a
    tape on a model of the same seed outside any strategy. Writes both, and the losses, to ``out``."""
    import keras

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from twotower_model.model import build_model

    spec = FeatureSpec.load(root)
    cfg = ModelConfig(head="dot", loss="hybrid", epochs=1, **SMALL)  # BCE and the in-batch softmax of each replica's batch
    batch = next(iter(make_dataset(root, "train", spec, batch_size=64, shuffle=False, seed=0)))
    halves = [{k: v[:32] for k, v in batch.items()}, {k: v[32:] for k, v in batch.items()}]

    keras.utils.set_random_seed(1)
    ref = build_model(spec, root, cfg)
    start = [v.numpy() for v in ref.trainable_variables]
    grads, losses = [], []
    for half in halves:
        with tf.GradientTape() as tape:
            loss = ref.compute_loss(x=half, y_pred=ref(half, training=True))
        grads.append([np.zeros_like(w) if g is None else tf.convert_to_tensor(g).numpy() for w, g in zip(start, tape.gradient(loss, ref.trainable_variables))])
        losses.append(float(loss))
    expected = [w - LR * (g0 + g1) / 2 for w, g0, g1 in zip(start, *grads)]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = build_model(spec, root, cfg)
        model.compile(optimizer=keras.optimizers.SGD(LR))
    same_start = all(np.array_equal(a, v.numpy()) for a, v in zip(start, model.trainable_variables))
    trainer = tdist.replica_trainer(model, strategy)
    pair = tf.data.Dataset.from_tensor_slices({k: tf.stack([h[k] for h in halves]) for k in batch})  # element i: half i
    history = trainer.fit(strategy.distribute_datasets_from_function(lambda context: pair), epochs=1, steps_per_epoch=1, verbose=0)
    after = [v.numpy() for v in model.trainable_variables]
    Path(out).write_text(json.dumps({
        "same_start": same_start,
        "moved": max(float(np.abs(e - s).max()) for e, s in zip(expected, start)),
        "error": max(float(np.abs(a - e).max()) for a, e in zip(after, expected)),
        "loss": float(history.history["loss"][0]),
        "replica_losses": losses,
    }))


def test_replica_trainer_applies_the_mean_of_the_replicas_gradients(feat, tmp_path):
    root, _ = feat
    out = tmp_path / "step.json"
    code = f"from tests.model.test_multiworker import _mirrored_step; _mirrored_step({str(root)!r}, {str(out)!r})"
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["same_start"]
    # a sum of the replicas' gradients would be off by the whole step
    assert got["moved"] > 1e-3 and got["error"] < 1e-4 * got["moved"] + 1e-6, got
    assert got["loss"] == pytest.approx(sum(got["replica_losses"]) / 2, rel=1e-5)


# ---- two real workers ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auc(model_dir: Path, root: Path) -> float:
    scored = tpredict.predict(model_dir, root, "validation")
    return float(roc_auc_score(scored["label"], scored["score"]))


def test_two_workers_train_one_model_within_the_seed_spread(feat, tmp_path):
    root, written = feat
    config = tmp_path / "mw.toml"
    config.write_text(_toml(seed=1))
    model_dir = tmp_path / "model"  # one folder for both: only the chief may write it
    cluster = {"worker": [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]}
    cmd = [sys.executable, "-u", "-m", "twotower.cli", "train", "--features", str(root), "--model", str(model_dir), "--config", str(config)]
    procs, logs = [], []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": _tf_config(cluster, {"type": "worker", "index": i})}
        logs.append(tmp_path / f"worker{i}.log")
        with open(logs[-1], "w") as log:
            procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True, env=env))
    try:
        # the single-process references, while the workers run: seeds 1, 2, 3
        refs = []
        for seed in (1, 2, 3):
            ref_report = ttrain.train(root, tmp_path / f"ref{seed}", ModelConfig(**MODEL, seed=seed), progress=lambda s: None)
            assert ref_report["workers"] == 1
            refs.append(_auc(tmp_path / f"ref{seed}", root))
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    out = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(o[-3000:] for o in out)

    assert "saved model to" in out[0] and "the chief writes the model folder" in out[1] and "saved model to" not in out[1]
    final = [re.findall(rf"^epoch {EPOCHS}/{EPOCHS}: loss (\S+)$", o, re.M) for o in out]
    assert final[0] and final[0] == final[1]  # one training: the loss is all-reduced across the workers
    assert {p.name for p in model_dir.iterdir()} == MODEL_FILES
    report = json.loads((model_dir / "train_report.json").read_text())
    steps = -(-len(written["train"]["label"]) // MODEL["batch_size"])
    assert report["workers"] == 2 and report["examples"] == steps * MODEL["batch_size"] * EPOCHS
    assert len(report["loss_per_epoch"]) == EPOCHS and report["resumed_from_epoch"] == 0
    assert isinstance(texport.load_model(model_dir), TwoTowerModel)

    auc, aucs = _auc(model_dir, root), np.array(refs)
    assert auc > 0.75, (auc, refs)
    assert abs(auc - aucs.mean()) <= 3 * aucs.std(ddof=1) + 0.01, (auc, refs)
