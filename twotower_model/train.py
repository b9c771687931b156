"""Train a two-tower model from a features folder and save it to a model folder.

``fit_model(feat_dir, cfg)`` builds the model from the feature spec (``model.build_model``) and
trains it on the ``train`` split; ``train(feat_dir, model_dir, cfg)`` also saves it
(``export.save_model``), writes the catalog's item embeddings (``predict.write_item_embeddings``),
the resolved ``ModelConfig``, the training report and the provenance of the features
(``provenance.py``): ``layout.py`` lists the folder's files. Both refuse a features folder whose
TFRecord files differ from its manifest (``provenance.check_split_files``) before training.
``set_retrieval_prior`` gives a trained model folder another retrieval prior without retraining.
``train`` checkpoints every epoch under ``layout.CHECKPOINT_DIR``: the same command, rerun after
the trainer was killed, continues after the last finished epoch.

With ``TF_CONFIG`` naming more than one worker (``distribute.py``), every worker runs the same
``train``: ``fit_model`` trains under a ``MultiWorkerMirroredStrategy``, each worker reading its
share of the train split's files (``data.shard_files``) in ``batch_size / workers`` batches, the
same number of steps per epoch on every worker; only the chief (rank 0) writes the model
folder, and no worker checkpoints.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import keras
import tensorflow as tf

from twotower_features.config import RETRIEVAL_ONLY, ModelConfig
from twotower_features.io import write_json_atomic
from twotower_features.spec import FeatureSpec

from . import export
from .data import (
    CATALOG,
    SPLITS_KEY,
    cache_fits,
    item_id_column,
    make_dataset,
    memory_cache_default,
    read_split,
    shard_files,
    split_files,
    with_sampled_negatives,
)
from .distribute import (
    cluster_from_env,
    make_strategy,
    replica_trainer,
    split_batch,
)
from .export import save_model
from .items import read_item_counts
from .layout import (
    CHECKPOINT_DIR,
    CHECKPOINT_IDENTITY,
    CONFIG_FILE,
    ITEM_EMBEDDINGS_FILE,
    REPORT_FILE,
)
from .model import TwoTowerModel, build_model
from .optimizer import make_optimizer
from .predict import write_item_embeddings
from .prior import RetrievalPrior, model_prior
from .provenance import check_split_files, features_provenance, write_model_provenance
from .tasks import HybridTask, InBatchSoftmaxTask

# train steps per call of Keras' compiled train function: amortises the per-step Python and
# callback overhead (on 2 CPU cores: 73k examples/s at 1, 114k at 8, 128k at 32; bench_train.py)
STEPS_PER_EXECUTION = 32
# the losses with an in-batch softmax term: they read the item ids and the train-window counts
IN_BATCH_LOSSES = ("softmax", "hybrid")
IN_BATCH_TASKS = (InBatchSoftmaxTask, HybridTask)


def fit_model(
    feat_dir: str | Path,
    model_cfg: ModelConfig,
    *,
    progress: Callable[[str], Any] = print,
    optimizer: str = "lazy_adam",
    checkpoint_dir: str | Path | None = None,
    memory_cache_bytes: int | None = None,
) -> tuple[TwoTowerModel, dict[str, Any]]:
    """Build the model from the feature spec and train it on the ``train`` split for
    ``model_cfg.epochs`` epochs; returns the model and the training report (nothing is saved).
    First checks the files of the splits it reads (train, and validation when the spec has one)
    against the manifest (``provenance.check_split_files``), whose record counts it then uses.

    With ``checkpoint_dir`` the weights and optimizer state are saved there after every epoch
    (Keras ``BackupAndRestore``, the previous epoch kept beside it against a kill mid-write),
    a run finding a checkpoint of the same training (``ModelConfig.training_dict`` and the
    features' provenance) continues after its last epoch, and the folder is removed once
    training ends. A checkpoint of other settings is discarded, with a message.

    Deterministic given ``model_cfg.seed`` on CPU: the seed fixes the initial weights, the
    file and record shuffles, and the interleave order. ``optimizer``: see ``make_optimizer``.
    A train split whose files take at most ``memory_cache_bytes`` (default
    ``data.memory_cache_default()``, a quarter of the machine's memory) is parsed once before
    the first epoch and served from memory, in the same batches as streamed
    (``make_dataset(in_memory=True)``); the report's ``train_load_seconds`` is that parse,
    outside ``examples_per_second`` (0 when the split streams).

    With ``TF_CONFIG`` naming more than one worker (``distribute.cluster_from_env``): before
    TensorFlow runs anything, every worker checks that ``batch_size`` splits evenly between the
    workers and that the train split has a file for each, then creates the
    ``MultiWorkerMirroredStrategy`` (which waits for all workers) and builds and compiles the
    model in its scope; Keras fits a ``distribute.ReplicaTrainer`` of it, one step per call.
    Worker ``r`` of ``n`` reads train files ``r, r+n, ...`` (shuffled as above, seeded alike),
    repeated, in batches of ``batch_size / n`` (split again between a worker's devices); an
    epoch is ``ceil(train records / batch_size)`` steps on every worker, so ``batch_size`` times
    that many examples in all (the report's ``examples``). Sampled negatives are drawn per
    worker batch (seed ``seed + r``). Every worker computes the validation loss on the whole
    validation split in batches of ``batch_size``, as a single process does. ``checkpoint_dir``
    is ignored, with a message: no worker checkpoints.
    """
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    started = time.perf_counter()
    cluster = cluster_from_env()
    feat_dir = Path(feat_dir)
    spec = FeatureSpec.load(feat_dir)
    has_validation = "validation" in spec.extras.get(SPLITS_KEY, {})
    records = check_split_files(feat_dir, ["train", "validation"] if has_validation else ["train"], spec)
    strategy = None
    if cluster.distributed:  # checks every worker makes alike, before they wait for each other
        split_batch(model_cfg.batch_size, cluster.workers)
        shard_files(split_files(feat_dir, "train", spec), (cluster.rank, cluster.workers), "train")
        progress(f"{cluster.describe()}: waiting for the other workers")
        strategy = make_strategy()
        split_batch(model_cfg.batch_size, strategy.num_replicas_in_sync, f"replicas ({cluster.workers} workers' devices)")
    keras.utils.set_random_seed(model_cfg.seed)

    in_batch = model_cfg.loss in IN_BATCH_LOSSES
    counts = read_item_counts(feat_dir, spec) if in_batch else None
    item_counts = None if counts is None else counts.to_dict()
    if in_batch and item_counts is None:
        progress(f"{model_cfg.loss} loss without extras['item_frequency_file']: no logQ correction")
    catalog = None
    if in_batch and model_cfg.sampled_negatives:
        check_split_files(feat_dir, [CATALOG], spec)
        catalog = read_split(feat_dir, CATALOG, spec, dict.fromkeys([item_id_column(spec), *(c.name for c in spec.tower_columns("item"))]))
    catalog_size = 0 if catalog is None else int(next(iter(catalog.values())).shape[0])
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(spec, feat_dir, model_cfg, item_counts=item_counts, catalog_size=catalog_size)
        model.compile(optimizer=make_optimizer(model_cfg.learning_rate, optimizer), steps_per_execution=STEPS_PER_EXECUTION)
    trainer = model if strategy is None else replica_trainer(model, strategy)

    n_train = records["train"]
    if n_train == 0:
        raise ValueError(f"split 'train' in {str(feat_dir)!r} has no records")
    columns = _training_columns(spec, model)
    steps = -(-n_train // model_cfg.batch_size)
    memory_cache_bytes = memory_cache_default() if memory_cache_bytes is None else memory_cache_bytes
    in_memory = cache_fits(feat_dir, "train", spec, memory_cache_bytes)
    loading = time.perf_counter()
    if strategy is None:
        epoch_examples = n_train
        train_ds = make_dataset(
            feat_dir, "train", spec, batch_size=model_cfg.batch_size, shuffle=True, seed=model_cfg.seed,
            columns=columns, deterministic=True, in_memory=in_memory,
        )
        if catalog is not None:  # mixed negative sampling: uniform catalog items join each batch
            train_ds = with_sampled_negatives(train_ds, catalog, model_cfg.sampled_negatives, model_cfg.seed)
        train_ds = train_ds.apply(tf.data.experimental.assert_cardinality(steps))
    else:
        epoch_examples = steps * model_cfg.batch_size
        train_ds = strategy.distribute_datasets_from_function(
            partial(_worker_train_dataset, feat_dir, spec, model_cfg, columns, catalog, in_memory)
        )
    load_seconds = time.perf_counter() - loading
    if in_memory:
        progress(f"parsed the train split into memory in {load_seconds:.1f} s: epochs read no file (files over {memory_cache_bytes >> 20} MiB stream)")
    timer = _Throughput()
    callbacks: list[keras.callbacks.Callback] = [timer, _EpochProgress(progress, model_cfg.epochs)]
    resumed = 0
    if checkpoint_dir is not None and strategy is not None:
        progress(f"multi-worker training keeps no checkpoint: a run stopped before its end starts again from epoch 1 (not {str(checkpoint_dir)!r})")
    elif checkpoint_dir is not None:
        resumed = _prepare_checkpoint(Path(checkpoint_dir), model_cfg, feat_dir, progress)
        callbacks.insert(0, keras.callbacks.BackupAndRestore(str(checkpoint_dir), save_freq="epoch", double_checkpoint=True))
    # multi-worker: each worker's batches repeat without end and Keras keeps one iterator over
    # them for every epoch of `steps` steps (`steps_per_epoch`), so each reshuffle's seed is drawn
    # in the stream's order and the epochs are the same in every run
    per_epoch = {} if strategy is None else {"steps_per_epoch": steps}
    history = trainer.fit(train_ds, epochs=model_cfg.epochs, verbose=0, shuffle=False, callbacks=callbacks, **per_epoch)
    losses = [float(x) for x in history.history.get("loss", [])]
    epochs_run = model_cfg.epochs - resumed
    timed_examples = epoch_examples * epochs_run - min(timer.warm_batches * model_cfg.batch_size, epoch_examples)
    includes_warmup = timed_examples <= 0 or timer.seconds <= 0  # the whole run was one call
    if includes_warmup:
        examples_per_s = epoch_examples * epochs_run / max(timer.total_seconds, 1e-9)
    else:
        examples_per_s = timed_examples / timer.seconds
    progress(f"trained {epoch_examples * epochs_run} examples in {timer.total_seconds:.1f} s: {examples_per_s:,.0f} examples/s")

    validation_loss = None
    if has_validation:
        validation = partial(_validation_dataset, feat_dir, spec, model_cfg.batch_size, columns, -(-records["validation"] // model_cfg.batch_size))
        val_ds = validation() if strategy is None else strategy.distribute_datasets_from_function(lambda context: validation())
        validation_loss = float(trainer.evaluate(val_ds, verbose=0, return_dict=True)["loss"])

    report = {
        "workers": cluster.workers,
        "examples": epoch_examples * epochs_run,
        "train_records": n_train,
        "epochs": model_cfg.epochs,
        "resumed_from_epoch": resumed,
        "batch_size": model_cfg.batch_size,
        "examples_per_second": examples_per_s,
        "examples_per_second_includes_warmup": includes_warmup,
        "train_loop_seconds": timer.total_seconds,
        "train_in_memory": in_memory,
        "train_load_seconds": load_seconds if in_memory else 0.0,  # streamed: no parse before the first epoch
        "loss_per_epoch": losses,
        "final_loss": losses[-1] if losses else None,
        "validation_loss": validation_loss,
        "head": model_cfg.head,
        "loss": model_cfg.loss,
        "hybrid_weight": model_cfg.hybrid_weight if model_cfg.loss == "hybrid" else None,
        "softmax_head": model_cfg.softmax_head if model_cfg.loss == "hybrid" else None,
        "sampled_negatives": model_cfg.sampled_negatives if catalog is not None else 0,
        "logq_correction": isinstance(model.task, IN_BATCH_TASKS) and model.task.logq_correction,
        "optimizer": optimizer,
        "fit_seconds": time.perf_counter() - started,
    }
    return model, report


def train(
    feat_dir: str | Path,
    model_dir: str | Path,
    model_cfg: ModelConfig,
    *,
    progress: Callable[[str], Any] = print,
    memory_cache_bytes: int | None = None,
) -> dict[str, Any]:
    """``fit_model``, then save everything to ``model_dir`` (the files: ``layout.py``), the towers
    and ``provenance.json`` stamped with the features' provenance, and return the training report
    (also written as ``train_report.json``). The catalog's files are checked before training too.

    Under ``TF_CONFIG`` with several workers only the chief (rank 0) saves; every other worker
    trains with it and returns the report, writing nothing (``distribute.py``)."""
    started = time.perf_counter()
    cluster = cluster_from_env()
    provenance = features_provenance(feat_dir)
    check_split_files(feat_dir, [CATALOG])
    model_dir = Path(model_dir)
    model, report = fit_model(feat_dir, model_cfg, progress=progress, checkpoint_dir=model_dir / CHECKPOINT_DIR, memory_cache_bytes=memory_cache_bytes)
    if not cluster.is_chief:
        report["wall_time_seconds"] = time.perf_counter() - started
        progress(f"{cluster.describe()}: trained; the chief writes the model folder")
        return report
    model_dir.mkdir(parents=True, exist_ok=True)
    prior = RetrievalPrior.of(model_cfg)
    save_model(model, model_dir, provenance=provenance, prior=prior)
    write_model_provenance(model_dir, provenance)
    report["catalog_items"] = write_item_embeddings(model, feat_dir, model_dir / ITEM_EMBEDDINGS_FILE, prior=prior)
    write_json_atomic(model_dir / CONFIG_FILE, _config_dict(model_cfg))
    report["wall_time_seconds"] = time.perf_counter() - started
    write_json_atomic(model_dir / REPORT_FILE, report)
    progress(f"saved model to {str(model_dir)!r}")
    return report


def _worker_train_dataset(
    feat_dir: Path, spec: FeatureSpec, cfg: ModelConfig, columns: list[str], catalog: dict[str, tf.Tensor] | None,
    in_memory: bool, context: tf.distribute.InputContext,
) -> tf.data.Dataset:
    """One worker's train batches under a strategy: its files of the split
    (``context.input_pipeline_id`` of ``num_input_pipelines``), repeated without end, in full
    batches of a replica's share of ``cfg.batch_size``, one per step for each of its replicas;
    ``fit`` takes ``steps`` steps of them per epoch from one iterator. (Cut into epochs with
    ``take``, each epoch started a new iterator, and the prefetching at the end of the previous
    one might already have drawn the next reshuffle's seed: epochs after the first differed
    from run to run.)"""
    worker, workers = context.input_pipeline_id, context.num_input_pipelines
    ds = make_dataset(
        feat_dir, "train", spec, batch_size=context.get_per_replica_batch_size(cfg.batch_size), shuffle=True, seed=cfg.seed,
        columns=columns, deterministic=True, repeat=True, shard=(worker, workers), in_memory=in_memory,
    )
    if catalog is not None:
        ds = with_sampled_negatives(ds, catalog, cfg.sampled_negatives, cfg.seed + worker)
    return ds


def _validation_dataset(feat_dir: Path, spec: FeatureSpec, batch_size: int, columns: list[str], batches: int) -> tf.data.Dataset:
    """The whole validation split in file order, ``batches`` batches of ``batch_size``."""
    ds = make_dataset(feat_dir, "validation", spec, batch_size=batch_size, shuffle=False, seed=0, columns=columns)
    return ds.apply(tf.data.experimental.assert_cardinality(batches))


def _prepare_checkpoint(folder: Path, cfg: ModelConfig, feat_dir: Path, progress: Callable[[str], Any]) -> int:
    """The epoch a checkpoint in ``folder`` lets training resume after (0: none, or one of other
    settings, then removed); stamps ``folder`` with this training's identity."""
    identity = {"training": cfg.training_dict(), "features": features_provenance(feat_dir)}
    stamp, meta = folder / CHECKPOINT_IDENTITY, folder / "training_metadata.json"
    if folder.is_dir():
        try:
            same = json.loads(stamp.read_text()) == json.loads(json.dumps(identity))
            epoch = int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0
        except (OSError, ValueError, KeyError, TypeError):
            same, epoch = False, 0
        if not same:
            progress(f"discarding the checkpoint in {str(folder)!r}: it belongs to other [model] settings or features")
            shutil.rmtree(folder)
        elif epoch:
            progress(f"resuming after epoch {epoch}/{cfg.epochs} from the checkpoint in {str(folder)!r}")
            return min(epoch, cfg.epochs)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stamp, identity)
    return 0


def set_retrieval_prior(model_dir: str | Path, feat_dir: str | Path, model_cfg: ModelConfig) -> dict[str, Any]:
    """Give the trained model in ``model_dir`` the retrieval prior of ``model_cfg``, in place: the
    user tower's retrieval signature, the item embeddings' prior column and the resolved config.
    ``model_cfg`` must train the same towers as the folder's own config (``training_dict``), so
    the folder stays what ``train`` with ``model_cfg`` would have written. Every file it changes
    is replaced, not written through (safe on a folder hard-linked from another). Returns the
    new prior (``RetrievalPrior.as_dict``)."""
    model_dir = Path(model_dir)
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {str(model_dir)!r}: run train first")
    saved = ModelConfig(**json.loads(path.read_text()))
    if saved.training_dict() != model_cfg.training_dict():
        diff = sorted(k for k, v in model_cfg.training_dict().items() if saved.training_dict().get(k) != v)
        raise ValueError(f"{str(model_dir)!r} was trained with other [model] settings {diff}: only {RETRIEVAL_ONLY} may differ")
    prior = RetrievalPrior.of(model_cfg)
    if model_prior(model_dir) != prior:
        export.set_retrieval_prior(model_dir, prior)
        write_item_embeddings(model_dir, feat_dir, model_dir / ITEM_EMBEDDINGS_FILE, prior=prior)
    write_json_atomic(path, _config_dict(model_cfg))
    return prior.as_dict()


def _training_columns(spec: FeatureSpec, model: TwoTowerModel) -> list[str]:
    names = [*model.user_tower.feature_names, *model.item_tower.feature_names, spec.label, spec.weight]
    if isinstance(model.task, IN_BATCH_TASKS):
        names.append(model.task.item_key)
    return list(dict.fromkeys(names))


class _Throughput(keras.callbacks.Callback):
    """Seconds from the end of the first call of the train function (tracing and warm-up;
    ``warm_batches`` batches with ``steps_per_execution``) to the end of training."""

    def __init__(self) -> None:
        super().__init__()
        self.warm_batches = 0
        self._start = self._warm = self._end = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not self._warm:
            self._warm = time.perf_counter()
            self.warm_batches = batch + 1

    def on_train_end(self, logs=None):
        self._end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self._end - self._warm

    @property
    def total_seconds(self) -> float:
        return self._end - self._start


class _EpochProgress(keras.callbacks.Callback):
    def __init__(self, progress: Callable[[str], Any], epochs: int) -> None:
        super().__init__()
        self.progress, self.epochs = progress, epochs

    def on_epoch_end(self, epoch, logs=None):
        self.progress(f"epoch {epoch + 1}/{self.epochs}: loss {float((logs or {}).get('loss', float('nan'))):.5f}")


def _config_dict(cfg: ModelConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["hidden_units"] = list(cfg.hidden_units)
    return d
