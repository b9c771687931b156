"""Training on several workers with TensorFlow's own engine (``tf.distribute``).

A cluster manager (Kubeflow's TFJob, Vertex AI, SageMaker, or a person) starts the same
``twotower train`` command on every worker with the environment variable ``TF_CONFIG``::

    {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 1}}

``cluster_from_env`` reads it into a ``Cluster``: the worker count and this process's rank, the
position TensorFlow gives it (an optional single ``chief`` task is rank 0 and the ``worker``
tasks follow it; without a chief, ``worker`` 0 is rank 0 and is the chief). Without
``TF_CONFIG``, or with a cluster of one task, training is the single-process training of
``train.py``, with no strategy at all. A malformed ``TF_CONFIG`` is a ``UserError`` naming it.

With more than one worker, ``train.fit_model`` trains under ``make_strategy()``, a
``tf.distribute.MultiWorkerMirroredStrategy`` (a replica per device of each worker: its CPU,
or each of its GPUs), which must be created before TensorFlow runs anything else in the
process; every step all-reduces the gradients. ``split_batch`` splits the global batch
(``[model] batch_size``) between the workers and their replicas. Keras 3 fits a
``ReplicaTrainer`` of the model there: it scales the loss for the all-reduce as Keras' own
losses are scaled, and steps around three Keras 3 failures under a strategy (with them, one
step per call of the train function: ``STEPS_PER_EXECUTION``).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, NoReturn

import keras
import tensorflow as tf

from twotower_features.errors import UserError

TF_CONFIG = "TF_CONFIG"
# the task types a MultiWorkerMirroredStrategy cluster holds, in rank order
JOBS = ("chief", "worker")
_EXAMPLE = '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'


# Keras 3's loop of several steps per call (a tf.while_loop with a tf.cond around each step)
# fails under a strategy when the optimizer's update merges the replicas ("You must feed a value
# for placeholder tensor", keras-team/keras#19246): one step per call of the train function
STEPS_PER_EXECUTION = 1


class ClusterConfigError(UserError):
    """``TF_CONFIG`` does not describe a cluster of workers this trainer can join."""


@dataclass(frozen=True)
class Cluster:
    """The training processes: ``workers`` in all, this one at ``rank`` (0: the chief, the one
    that writes the model folder); ``task_type`` and ``task_index`` as ``TF_CONFIG`` names it."""

    workers: int = 1
    rank: int = 0
    task_type: str = "worker"
    task_index: int = 0

    @property
    def distributed(self) -> bool:
        """More than one worker: train under ``make_strategy()``."""
        return self.workers > 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"worker {self.rank} of {self.workers} ({self.task_type} {self.task_index}{', the chief' if self.is_chief else ''})"


SINGLE = Cluster()


def cluster_from_env(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster ``TF_CONFIG`` describes in ``environ`` (default ``os.environ``); ``SINGLE``
    when it is unset or blank."""
    text = (os.environ if environ is None else environ).get(TF_CONFIG, "")
    return parse_tf_config(text) if text.strip() else SINGLE


def parse_tf_config(text: str) -> Cluster:
    """``TF_CONFIG``'s JSON as a ``Cluster``. Raises ``ClusterConfigError`` when it is not JSON,
    lacks ``cluster`` or ``task``, names a job other than ``chief``/``worker`` (or more than
    one chief), lists an address that is not ``host:port`` or twice, or gives this task a type
    or index the cluster does not have."""
    try:
        config = json.loads(text)
    except ValueError as e:
        _fail(f"is not valid JSON ({e})")
    if not isinstance(config, dict):
        _fail(f"must be a JSON object, got {type(config).__name__}")
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not cluster:
        _fail("has no 'cluster' object mapping job names to lists of 'host:port' addresses")
    other = sorted(set(cluster) - set(JOBS))
    if other:
        _fail(f"'cluster' has job(s) {other}: MultiWorkerMirroredStrategy training takes only {list(JOBS)} tasks")
    addresses: list[str] = []
    for job in (j for j in JOBS if j in cluster):
        hosts = cluster[job]
        if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and _is_address(h) for h in hosts):
            _fail(f"'cluster'.{job!r} must be a non-empty list of 'host:port' strings, got {hosts!r}")
        addresses += hosts
    if len(cluster.get("chief", [])) > 1:
        _fail(f"'cluster' has {len(cluster['chief'])} 'chief' tasks; at most one")
    twice = sorted({a for a in addresses if addresses.count(a) > 1})
    if twice:
        _fail(f"'cluster' lists address(es) {twice} more than once")
    if not isinstance(task, dict):
        _fail("has no 'task' object naming this process's 'type' and 'index'")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        _fail(f"'task'.'type' is {kind!r}; it must be one of the cluster's jobs {[j for j in JOBS if j in cluster]}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        _fail(f"'task'.'index' is {index!r}; the cluster's {kind!r} job has {len(cluster[kind])} task(s): 0 to {len(cluster[kind]) - 1}")
    chiefs = len(cluster.get("chief", []))
    rank = 0 if kind == "chief" else chiefs + index
    return Cluster(workers=len(addresses), rank=rank, task_type=kind, task_index=index)


def _is_address(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(host) and bool(sep) and port.isdigit()


def _fail(problem: str) -> NoReturn:
    raise ClusterConfigError(f"the environment variable {TF_CONFIG} {problem}; expected e.g. {_EXAMPLE}")


def split_batch(batch_size: int, parts: int, what: str = "workers") -> int:
    """Each part's share of the global ``batch_size`` when ``parts`` workers (or replicas) take
    one step together: ``batch_size / parts``. A ``ClusterConfigError`` unless it divides
    evenly: the global batch stays what the config says, or training refuses."""
    if batch_size % parts:
        lower = batch_size // parts * parts
        raise ClusterConfigError(
            f"[model] batch_size = {batch_size} is the global batch and must split evenly between the {parts} {what} "
            f"of {TF_CONFIG}: set it to a multiple of {parts} (e.g. {lower or parts} or {lower + parts})"
        )
    return batch_size // parts


def make_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """A ``tf.distribute.MultiWorkerMirroredStrategy`` for the cluster of ``TF_CONFIG`` (read
    by TensorFlow's ``TFConfigClusterResolver``, which also counts this worker's GPUs). It
    starts this worker's gRPC server and waits for the others; call it before TensorFlow runs
    anything else in the process."""
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=tf.distribute.cluster_resolver.TFConfigClusterResolver())
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise RuntimeError(
            f"multi-worker training ({TF_CONFIG} is set) must create its MultiWorkerMirroredStrategy before TensorFlow runs "
            "anything else in the process; run `twotower train` (or train.fit_model) in a fresh process"
        ) from e


class ReplicaTrainer(keras.Model):
    """What Keras 3's ``fit`` and ``evaluate`` run under a ``tf.distribute`` strategy
    (``MultiWorkerMirroredStrategy`` here): the two-tower ``model`` (its variables, ``call`` and
    ``compute_loss``) with three changes that Keras 3.15 needs there and a single process does
    not. The model itself, which is saved, stays as it is; the trainer is never saved (no
    ``get_config``). Build one with ``replica_trainer``.

    - The loss is divided by the number of replicas in sync, as Keras' own losses are under a
      strategy (``keras.losses.Loss``; ``TwoTowerModel.compute_loss`` returns the task's mean
      over the replica's batch). Keras sums the replicas' gradients and reports
      ``replicas x loss`` (``unscale_loss_for_distribution``): with the division the step
      applies the replicas' mean gradient and reports their mean loss.
    - Each step returns its metrics as vectors of one value: Keras reduces them across the
      workers with ``strategy.reduce("MEAN", value, axis=0)``, which fails on a scalar
      (tensorflow/tensorflow#72388). At the end of each epoch Keras reads the metrics
      themselves (all-reduced across the workers) for the history.
    - Keras' pre-build step (``_maybe_symbolic_build``) is skipped: it reduces the first batch
      across the replicas with MEAN, which fails on a dict of features holding string ids
      (keras-team/keras#20329), only to build what is unbuilt. Here that is the optimizer,
      which ``replica_trainer`` builds, and layers without variables (the vocabulary lookups,
      the tasks), which build when the step is traced, as they do without a strategy.
    """

    def __init__(self, model: keras.Model, **kwargs: Any) -> None:
        super().__init__(name=f"{model.name}_replicas", **kwargs)
        self.two_tower = model
        self.built = True

    def call(self, features: Any, training: bool | None = None) -> Any:
        return self.two_tower(features, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = self.two_tower.compute_loss(x, y, y_pred, sample_weight, training=training)
        return loss / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)

    def train_step(self, data: Any) -> dict[str, Any]:
        return {k: tf.reshape(v, [1]) for k, v in super().train_step(data).items()}

    def test_step(self, data: Any) -> dict[str, Any]:
        return {k: tf.reshape(v, [1]) for k, v in super().test_step(data).items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None) -> None:
        return None


def replica_trainer(model: keras.Model, strategy: tf.distribute.Strategy) -> ReplicaTrainer:
    """A ``ReplicaTrainer`` of ``model`` (built and compiled in ``strategy.scope()``), compiled
    with ``model``'s optimizer and ``STEPS_PER_EXECUTION``; the optimizer's variables are
    created here, in the scope."""
    with strategy.scope():
        trainer = ReplicaTrainer(model)
        trainer.compile(optimizer=model.optimizer, steps_per_execution=STEPS_PER_EXECUTION)
        model.optimizer.build(model.trainable_variables)
    return trainer
