"""Train a two-tower model from a features folder, export it, and score splits with it.

``train(feat_dir, model_dir, cfg)`` writes to ``model_dir``:

- ``user_tower/``, ``item_tower/``: SavedModels, each with a ``serving_default`` signature that
  takes the tower's raw feature tensors (``[batch, *shape]``; strings for ids) by column name
  and returns ``{"embedding": [batch, output_dim]}``. The model's logit is exactly
  ``dot(user embedding, item embedding)`` (the head is folded into the towers, see
  ``model.py``);
- ``model.keras``: the whole Keras model (towers, head, task), for ``load_model``;
- ``item_embeddings.parquet``: ``item_id`` (string), ``embedding`` (list<float>), one row per
  catalog item;
- ``resolved_model_config.json``: the ``ModelConfig`` with every default filled in;
- ``train_report.json``: examples, examples/s, epochs, losses, wall time, optimiser.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import keras
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from twotower_features.config import ModelConfig
from twotower_features.spec import FeatureSpec

from .data import CATALOG, count_records, item_id_column, make_dataset, split_columns
from .model import SCORE, InBatchSoftmaxTask, TwoTowerModel, build_model, make_optimizer

USER_TOWER_DIR = "user_tower"
ITEM_TOWER_DIR = "item_tower"
MODEL_FILE = "model.keras"
ITEM_EMBEDDINGS_FILE = "item_embeddings.parquet"
CONFIG_FILE = "resolved_model_config.json"
REPORT_FILE = "train_report.json"
PREDICTIONS_FILE = "predictions.parquet"
EMBEDDING = "embedding"
SCORE_COLUMN = "score"
PREDICT_BATCH = 4096
# train steps per call of Keras' compiled train function: amortises the per-step Python and
# callback overhead (on 2 CPU cores: 73k examples/s at 1, 114k at 8, 128k at 32; bench_train.py)
STEPS_PER_EXECUTION = 32


# ---- training ---------------------------------------------------------------------------
def fit_model(
    feat_dir: str | Path,
    model_cfg: ModelConfig,
    *,
    progress: Callable[[str], Any] = print,
    optimizer: str = "lazy_adam",
) -> tuple[TwoTowerModel, dict[str, Any]]:
    """Build the model from the feature spec and train it on the ``train`` split for
    ``model_cfg.epochs`` epochs; returns the model and the training report (nothing is saved).

    Deterministic given ``model_cfg.seed`` on CPU: the seed fixes the initial weights, the
    file and record shuffles, and the interleave order. ``optimizer``: see ``make_optimizer``.
    """
    if not isinstance(model_cfg, ModelConfig):
        raise TypeError(f"model_cfg must be a ModelConfig, got {type(model_cfg).__name__}")
    started = time.perf_counter()
    feat_dir = Path(feat_dir)
    spec = FeatureSpec.load(feat_dir)
    keras.utils.set_random_seed(model_cfg.seed)

    item_counts = read_item_frequencies(feat_dir, spec) if model_cfg.loss == "softmax" else None
    if model_cfg.loss == "softmax" and item_counts is None:
        progress("softmax loss without extras['item_frequency_file']: no logQ correction")
    model = build_model(spec, feat_dir, model_cfg, item_counts=item_counts)
    model.compile(optimizer=make_optimizer(model_cfg.learning_rate, optimizer), steps_per_execution=STEPS_PER_EXECUTION)

    n_train = count_records(feat_dir, "train", spec)
    if n_train == 0:
        raise ValueError(f"split 'train' in {str(feat_dir)!r} has no records")
    columns = _training_columns(spec, model)
    train_ds = make_dataset(
        feat_dir, "train", spec, batch_size=model_cfg.batch_size, shuffle=True, seed=model_cfg.seed,
        columns=columns, deterministic=True,
    ).apply(tf.data.experimental.assert_cardinality(-(-n_train // model_cfg.batch_size)))
    timer = _Throughput()
    history = model.fit(
        train_ds, epochs=model_cfg.epochs, verbose=0, shuffle=False, callbacks=[timer, _EpochProgress(progress, model_cfg.epochs)]
    )
    losses = [float(x) for x in history.history["loss"]]
    timed_examples = n_train * model_cfg.epochs - min(timer.warm_batches * model_cfg.batch_size, n_train)
    includes_warmup = timed_examples <= 0 or timer.seconds <= 0  # the whole run was one call
    if includes_warmup:
        examples_per_s = n_train * model_cfg.epochs / max(timer.total_seconds, 1e-9)
    else:
        examples_per_s = timed_examples / timer.seconds
    progress(f"trained {n_train * model_cfg.epochs} examples in {timer.total_seconds:.1f} s: {examples_per_s:,.0f} examples/s")

    validation_loss = None
    if "validation" in spec.extras.get("splits", {}):
        n_val = count_records(feat_dir, "validation", spec)
        val_ds = make_dataset(
            feat_dir, "validation", spec, batch_size=model_cfg.batch_size, shuffle=False, seed=0, columns=columns
        ).apply(tf.data.experimental.assert_cardinality(-(-n_val // model_cfg.batch_size)))
        validation_loss = float(model.evaluate(val_ds, verbose=0, return_dict=True)["loss"])

    report = {
        "examples": n_train * model_cfg.epochs,
        "train_records": n_train,
        "epochs": model_cfg.epochs,
        "batch_size": model_cfg.batch_size,
        "examples_per_second": examples_per_s,
        "examples_per_second_includes_warmup": includes_warmup,
        "train_loop_seconds": timer.total_seconds,
        "loss_per_epoch": losses,
        "final_loss": losses[-1],
        "validation_loss": validation_loss,
        "head": model_cfg.head,
        "loss": model_cfg.loss,
        "logq_correction": isinstance(model.task, InBatchSoftmaxTask) and model.task.logq_correction,
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
) -> dict[str, Any]:
    """``fit_model``, then save everything to ``model_dir`` (see the module docstring) and
    return the training report (also written as ``train_report.json``)."""
    started = time.perf_counter()
    model, report = fit_model(feat_dir, model_cfg, progress=progress)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, model_dir)
    report["catalog_items"] = write_item_embeddings(model, feat_dir, model_dir / ITEM_EMBEDDINGS_FILE)
    _write_json(model_dir / CONFIG_FILE, _config_dict(model_cfg))
    report["wall_time_seconds"] = time.perf_counter() - started
    _write_json(model_dir / REPORT_FILE, report)
    progress(f"saved model to {str(model_dir)!r}")
    return report


def _training_columns(spec: FeatureSpec, model: TwoTowerModel) -> list[str]:
    names = [*model.user_tower.feature_names, *model.item_tower.feature_names, spec.label, spec.weight]
    if isinstance(model.task, InBatchSoftmaxTask):
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


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def read_item_frequencies(feat_dir: str | Path, spec: FeatureSpec) -> dict[str, float] | None:
    """``item_id -> train-window interaction count`` from ``extras['item_frequency_file']``
    (a CSV with header ``item_id,count``), or None when the spec names no such file."""
    rel = spec.extras.get("item_frequency_file")
    if rel is None:
        return None
    path = Path(feat_dir) / rel
    if not path.is_file():
        raise FileNotFoundError(f"feature spec extras['item_frequency_file'] = {rel!r} does not exist at {str(path)!r}")
    df = pd.read_csv(path, dtype={"item_id": str})
    if list(df.columns) != ["item_id", "count"]:
        raise ValueError(f"item frequency file {str(path)!r} must have header 'item_id,count', got {list(df.columns)}")
    counts = pd.to_numeric(df["count"], errors="coerce")
    bad = df["item_id"][counts.isna() | (counts < 0) | df["item_id"].isna()]
    if len(bad):
        raise ValueError(f"item frequency file {str(path)!r}: 'count' must be a number >= 0 and 'item_id' non-empty; bad rows for items {bad.head(5).tolist()}")
    return dict(zip(df["item_id"], counts.astype(float)))


# ---- saving and loading -----------------------------------------------------------------
def save_model(model: TwoTowerModel, model_dir: str | Path) -> None:
    """``model.keras`` plus the two exported towers under ``model_dir``."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save(model_dir / MODEL_FILE)
    export_tower(model, "user", model_dir / USER_TOWER_DIR)
    export_tower(model, "item", model_dir / ITEM_TOWER_DIR)


class _TowerExport(tf.Module):
    def __init__(self, model: TwoTowerModel, side: str) -> None:
        super().__init__(name=f"{side}_tower_export")
        self.tower = model.user_tower if side == "user" else model.item_tower
        self.head = model.head
        self.side = side
        self.embed = tf.function(self._embed)

    def _embed(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = self.tower(features, training=False)
        vec = self.head.query(out, training=False) if self.side == "user" else self.head.candidate(out, training=False)
        return {EMBEDDING: vec}


def export_tower(model: TwoTowerModel, side: str, path: str | Path) -> None:
    """Save one tower (with its half of the head) as a SavedModel with a ``serving_default``
    signature: raw feature tensors by column name -> ``{"embedding": [batch, output_dim]}``."""
    if side not in ("user", "item"):
        raise ValueError(f"side must be 'user' or 'item', got {side!r}")
    module = _TowerExport(model, side)
    signature = module.embed.get_concrete_function(module.tower.input_signature())
    tf.saved_model.save(module, str(path), signatures={"serving_default": signature})


def load_model(model_dir: str | Path) -> TwoTowerModel:
    """The Keras model saved by ``train`` (towers, head and task)."""
    path = Path(model_dir) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in {str(model_dir)!r}: run train first")
    return keras.saving.load_model(path)


class ExportedTowers:
    """The two exported towers of a model folder; ``score`` = dot of their embeddings."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self._sigs = {}
        self.feature_names: dict[str, list[str]] = {}
        for side, sub in (("user", USER_TOWER_DIR), ("item", ITEM_TOWER_DIR)):
            path = model_dir / sub
            if not path.is_dir():
                raise FileNotFoundError(f"no exported {side} tower at {str(path)!r}: run train first")
            sig = tf.saved_model.load(str(path)).signatures["serving_default"]
            self._sigs[side] = sig
            self.feature_names[side] = sorted(sig.structured_input_signature[1])

    def embed(self, side: str, features: Mapping[str, Any]) -> tf.Tensor:
        if side not in self._sigs:
            raise ValueError(f"side must be 'user' or 'item', got {side!r}")
        missing = [n for n in self.feature_names[side] if n not in features]
        if missing:
            raise KeyError(f"the {side} tower needs feature(s) {missing}")
        return self._sigs[side](**{n: tf.convert_to_tensor(features[n]) for n in self.feature_names[side]})[EMBEDDING]

    def score(self, features: Mapping[str, Any]) -> tf.Tensor:
        return tf.reduce_sum(self.embed("user", features) * self.embed("item", features), axis=-1)


def load_towers(model_dir: str | Path) -> ExportedTowers:
    return ExportedTowers(model_dir)


# ---- scoring ----------------------------------------------------------------------------
def _scorer(model_or_dir: TwoTowerModel | str | Path) -> tuple[Callable[[Mapping[str, Any]], tf.Tensor], list[str], list[str]]:
    """(score function, user features, item features) of an in-memory model or a model folder."""
    if isinstance(model_or_dir, TwoTowerModel):
        model = model_or_dir
        fn = tf.function(lambda f: model(f, training=False)[SCORE], reduce_retracing=True)
        return fn, model.user_tower.feature_names, model.item_tower.feature_names
    if isinstance(model_or_dir, (str, Path)):
        towers = load_towers(model_or_dir)
        return towers.score, towers.feature_names["user"], towers.feature_names["item"]
    raise TypeError(f"model_dir_or_model must be a TwoTowerModel or a model folder path, got {type(model_or_dir).__name__}")


def _item_embedder(model_or_dir: TwoTowerModel | str | Path) -> tuple[Callable[[Mapping[str, Any]], tf.Tensor], list[str]]:
    if isinstance(model_or_dir, TwoTowerModel):
        model = model_or_dir
        fn = tf.function(
            lambda f: model.head.candidate(model.item_tower(f, training=False), training=False), reduce_retracing=True
        )
        return fn, model.item_tower.feature_names
    if isinstance(model_or_dir, (str, Path)):
        towers = load_towers(model_or_dir)
        return (lambda f: towers.embed("item", f)), towers.feature_names["item"]
    raise TypeError(f"model_dir_or_model must be a TwoTowerModel or a model folder path, got {type(model_or_dir).__name__}")


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") for v in values], dtype=object)


def predict(
    model_dir_or_model: TwoTowerModel | str | Path,
    feat_dir: str | Path,
    split: str = "validation",
    *,
    batch_size: int = PREDICT_BATCH,
) -> pd.DataFrame:
    """Score every record of ``split``: columns user_id, item_id, event_ts, label, weight, score
    (the logit), in record order. A path scores with the exported towers, a model in memory."""
    spec = FeatureSpec.load(feat_dir)
    score_fn, user_feats, item_feats = _scorer(model_dir_or_model)
    names = {c.name for c in spec.columns}
    keep = [n for n in ("user_id", "item_id", "event_ts") if n in names] + [spec.label, spec.weight]
    keep = list(dict.fromkeys(keep))
    columns = list(dict.fromkeys([*keep, *user_feats, *item_feats]))
    ds = make_dataset(feat_dir, split, spec, batch_size=batch_size, shuffle=False, seed=0, columns=columns)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in [*keep, SCORE_COLUMN]}
    for batch in ds:
        parts[SCORE_COLUMN].append(np.asarray(score_fn(batch), dtype=np.float32))
        for n in keep:
            v = batch[n].numpy()
            parts[n].append(_decode(v) if v.dtype == object else v)
    out = {n: (np.concatenate(p) if p else np.array([])) for n, p in parts.items()}
    return pd.DataFrame(out)


def predict_file(
    model_dir_or_model: TwoTowerModel | str | Path,
    feat_dir: str | Path,
    out_path: str | Path | None = None,
    split: str = "validation",
) -> Path:
    """``predict`` written to ``out_path`` (default: ``<model_dir>/predictions.parquet``)."""
    if out_path is None:
        if not isinstance(model_dir_or_model, (str, Path)):
            raise ValueError("out_path is required when scoring an in-memory model")
        out_path = Path(model_dir_or_model) / PREDICTIONS_FILE
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    df = predict(model_dir_or_model, feat_dir, split)
    tmp = out_path.with_name(out_path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(out_path)
    return out_path


def iter_item_embeddings(
    model_dir_or_model: TwoTowerModel | str | Path, feat_dir: str | Path, *, spec: FeatureSpec | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Batches of (item ids, candidate embeddings) over the catalog split."""
    spec = spec or FeatureSpec.load(feat_dir)
    embed, item_feats = _item_embedder(model_dir_or_model)
    key = item_id_column(spec)
    columns = list(dict.fromkeys([key, *item_feats]))
    available = set(split_columns(spec, CATALOG))
    missing = [c for c in columns if c not in available]
    if missing:
        raise ValueError(f"catalog records lack item tower column(s) {missing}")
    for batch in make_dataset(feat_dir, CATALOG, spec, batch_size=PREDICT_BATCH, shuffle=False, seed=0, columns=columns):
        yield _decode(batch[key].numpy()), np.asarray(embed(batch), dtype=np.float32)


def write_item_embeddings(
    model_dir_or_model: TwoTowerModel | str | Path, feat_dir: str | Path, out_path: str | Path, *, spec: FeatureSpec | None = None
) -> int:
    """``item_id`` + ``embedding`` (list<float>) for every catalog item; returns the row count."""
    ids, vecs = [], []
    for i, v in iter_item_embeddings(model_dir_or_model, feat_dir, spec=spec):
        ids.append(i)
        vecs.append(v)
    ids_arr = np.concatenate(ids) if ids else np.array([], dtype=object)
    mat = np.concatenate(vecs) if vecs else np.zeros((0, 0), np.float32)
    dim = mat.shape[1] if mat.ndim == 2 else 0
    emb = pa.ListArray.from_arrays(pa.array(np.arange(len(ids_arr) + 1, dtype=np.int32) * dim), pa.array(mat.reshape(-1), pa.float32()))
    table = pa.table({"item_id": pa.array(ids_arr.tolist(), pa.string()), EMBEDDING: emb})
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out_path)
    return len(ids_arr)
