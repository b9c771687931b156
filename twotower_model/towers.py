"""One tower of the two-tower model, built from the feature spec's columns of that tower.

- ``id`` / ``categorical`` (string scalar): ``StringLookup`` over the column's vocabulary file
  (indices 0 .. oov_buckets - 1 are the hashed out-of-vocabulary buckets) and an
  ``IdEmbedding(vocabulary_size + oov_buckets, embedding_dim)``;
- ``dense`` (float32 scalar or vector): used as is (the feature jobs normalise statistics with
  train-window statistics; embeddings come PCA-compressed);
- ``count`` (int64 scalar): ``log1p`` of the count (negative counts are clipped to 0);

all concatenated, then an MLP (``hidden_units``, relu) and a linear ``Dense(output_dim)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf
from keras import ops

from twotower_features.spec import Column, FeatureSpec, read_vocabulary

from .data import TF_DTYPES

TOWER_KINDS = ("id", "categorical", "dense", "count")


def _column_dict(col: Column) -> dict[str, Any]:
    return {"name": col.name, "dtype": col.dtype, "shape": list(col.shape), "kind": col.kind}


def vocabulary_files(spec: FeatureSpec, feat_dir: str | Path, columns: Sequence[Column]) -> dict[str, tuple[str, int]]:
    """Per id/categorical column of ``columns``: its vocabulary file's absolute path and line
    count, each file checked as ``load_vocabularies`` checks it (the towers read the file itself)."""
    paths = {col.name: str((Path(feat_dir) / str(col.vocabulary_file)).resolve()) for col in columns}
    return {name: (paths[name], len(vocab)) for name, vocab in load_vocabularies(spec, feat_dir, columns).items()}


def load_vocabularies(spec: FeatureSpec, feat_dir: str | Path, columns: Sequence[Column]) -> dict[str, list[str]]:
    """Vocabularies of the id/categorical ``columns``, read from the files the spec names."""
    vocabularies: dict[str, list[str]] = {}
    for col in columns:
        if col.kind not in ("id", "categorical"):
            continue
        path = Path(feat_dir) / str(col.vocabulary_file)
        if not path.is_file():
            raise FileNotFoundError(
                f"column {col.name!r}: vocabulary_file {col.vocabulary_file!r} declared in the feature spec does not exist at {str(path)!r}"
            )
        vocab = read_vocabulary(feat_dir, col)
        if not vocab:
            raise ValueError(f"column {col.name!r}: vocabulary_file {str(path)!r} is empty; expected one value per line")
        if col.vocabulary_size is not None and col.vocabulary_size != len(vocab):
            raise ValueError(
                f"column {col.name!r}: feature spec says vocabulary_size={col.vocabulary_size} but {str(path)!r} has {len(vocab)} lines"
            )
        if len(set(vocab)) != len(vocab):
            raise ValueError(f"column {col.name!r}: vocabulary_file {str(path)!r} lists a value more than once")
        vocabularies[col.name] = vocab
    return vocabularies


@keras.saving.register_keras_serializable(package="twotower")
class IdEmbedding(keras.layers.Layer):
    """An embedding table read with a sparse gather (``tf.nn.embedding_lookup`` on the variable).

    ``keras.layers.Embedding`` reads the whole table as a dense tensor and gathers from that.
    Once a sparse update (a scatter, as ``LazyAdam`` does) has touched the variable, TensorFlow
    keeps it in copy-on-read mode, so every such dense read copies the whole table: with a
    1M x 32 table that is ~190 ms a step against ~3 ms with the sparse gather used here. Same
    initialiser as Keras' Embedding (uniform in [-0.05, 0.05]).
    """

    def __init__(self, input_dim: int, output_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"IdEmbedding input_dim must be an integer >= 1, got {input_dim!r}")
        if not isinstance(output_dim, int) or output_dim < 1:
            raise ValueError(f"IdEmbedding output_dim must be an integer >= 1, got {output_dim!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim

    def build(self, input_shape: Any = None) -> None:
        if self.built:
            return
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05),
            name="embeddings",
        )
        self.built = True

    def call(self, ids: Any) -> Any:
        return tf.nn.embedding_lookup(self.embeddings.value, ids)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        return (*input_shape, self.output_dim)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim}


@keras.saving.register_keras_serializable(package="twotower")
class Tower(keras.Model):
    """Maps a dict of raw feature tensors (the tower's columns; other keys are ignored) to a
    ``[batch, output_dim]`` embedding.

    ``vocabularies``: per id/categorical column, its values (a list) or its vocabulary file
    (a path; ``vocabulary_sizes`` then gives its line count). The config holds only the sizes:
    whatever the catalog, a saved ``model.keras`` keeps each vocabulary as a file of its
    archive (Keras ``StringLookup`` assets) and the exported towers as a SavedModel asset.
    ``oov_buckets``: values outside the vocabulary hash into this many rows of the embedding
    table (1: one shared out-of-vocabulary row)."""

    def __init__(
        self,
        columns: Sequence[Mapping[str, Any]],
        vocabularies: Mapping[str, Sequence[str] | str] | None = None,
        embedding_dim: int = 32,
        hidden_units: Sequence[int] = (),
        output_dim: int = 32,
        vocabulary_sizes: Mapping[str, int] | None = None,
        oov_buckets: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not columns:
            raise ValueError(f"tower {self.name!r} has no columns; the feature spec must assign at least one column to it")
        self.tower_columns = [dict(c, shape=list(c["shape"])) for c in columns]
        self.embedding_dim = int(embedding_dim)
        self.hidden_units = [int(u) for u in hidden_units]
        self.output_dim = int(output_dim)
        if not isinstance(oov_buckets, int) or isinstance(oov_buckets, bool) or oov_buckets < 1:
            raise ValueError(f"tower {self.name!r}: oov_buckets must be an integer >= 1, got {oov_buckets!r}")
        self.oov_buckets = oov_buckets
        vocabularies, sizes = dict(vocabularies or {}), dict(vocabulary_sizes or {})
        self.lookups: dict[str, keras.layers.StringLookup] = {}
        self.embeddings: dict[str, IdEmbedding] = {}
        self.vocabulary_sizes: dict[str, int] = {}
        for c in self.tower_columns:
            _check_column(self.name, c)
            if c["kind"] in ("id", "categorical"):
                name = c["name"]
                vocab = vocabularies.get(name)  # None when rebuilt from a config: the lookup's asset fills it
                size = len(vocab) if vocab is not None and not isinstance(vocab, str) else sizes.get(name)
                if not size or size < 1:
                    raise ValueError(f"tower {self.name!r}: column {name!r} of kind {c['kind']!r} needs a non-empty vocabulary")
                self.vocabulary_sizes[name] = int(size)
                self.lookups[name] = keras.layers.StringLookup(
                    vocabulary=list(vocab) if vocab is not None and not isinstance(vocab, str) else vocab,
                    num_oov_indices=oov_buckets, mask_token=None, name=f"{name}_lookup",
                )
                self.embeddings[name] = IdEmbedding(int(size) + oov_buckets, self.embedding_dim, name=f"{name}_embedding")
        self.hidden = [keras.layers.Dense(u, activation="relu", name=f"hidden_{i}") for i, u in enumerate(self.hidden_units)]
        self.projection = keras.layers.Dense(self.output_dim, name="output")

    @classmethod
    def from_spec(
        cls,
        spec: FeatureSpec,
        feat_dir: str | Path,
        tower: str,
        *,
        embedding_dim: int,
        hidden_units: Sequence[int],
        output_dim: int,
        oov_buckets: int = 1,
    ) -> "Tower":
        """The tower of the spec's ``tower`` columns, its lookups reading the features' vocabulary files."""
        if tower not in ("user", "item"):
            raise ValueError(f"tower must be 'user' or 'item', got {tower!r}")
        cols = spec.tower_columns(tower)
        if not cols:
            raise ValueError(f"feature spec assigns no column to the {tower} tower; expected at least one column with tower {tower!r}")
        files = vocabulary_files(spec, feat_dir, cols)
        return cls(
            columns=[_column_dict(c) for c in cols],
            vocabularies={name: path for name, (path, _) in files.items()},
            vocabulary_sizes={name: n for name, (_, n) in files.items()},
            embedding_dim=embedding_dim,
            hidden_units=hidden_units,
            output_dim=output_dim,
            oov_buckets=oov_buckets,
            name=f"{tower}_tower",
        )

    @property
    def feature_names(self) -> list[str]:
        return [c["name"] for c in self.tower_columns]

    def input_signature(self) -> dict[str, tf.TensorSpec]:
        """Raw inputs of the tower: ``[batch, *shape]`` tensors of the spec's dtype."""
        return {
            c["name"]: tf.TensorSpec([None, *c["shape"]], TF_DTYPES[c["dtype"]], name=c["name"])
            for c in self.tower_columns
        }

    def build(self, input_shape: Any = None) -> None:
        """Create every weight from the column shapes (the input shapes are implied by the spec)."""
        if self.built:
            return
        width = 0
        for c in self.tower_columns:
            if c["kind"] in ("id", "categorical"):
                self.embeddings[c["name"]].build((None,))
                width += self.embedding_dim
            elif c["kind"] == "dense":
                width += c["shape"][0] if c["shape"] else 1
            else:
                width += 1
        for layer in self.hidden:
            layer.build((None, width))
            width = layer.units
        self.projection.build((None, width))
        self.built = True

    def call(self, features: Mapping[str, Any], training: bool | None = None) -> Any:
        parts = []
        for c in self.tower_columns:
            name = c["name"]
            if name not in features:
                raise KeyError(f"tower {self.name!r} needs feature {name!r}; got {sorted(features)}")
            x = features[name]
            if c["kind"] in ("id", "categorical"):
                parts.append(self.embeddings[name](self.lookups[name](x)))
            elif c["kind"] == "dense":
                parts.append(ops.reshape(ops.cast(x, "float32"), (-1, c["shape"][0] if c["shape"] else 1)))
            else:  # count
                parts.append(ops.reshape(ops.log1p(ops.maximum(ops.cast(x, "float32"), 0.0)), (-1, 1)))
        h = parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=-1)
        for layer in self.hidden:
            h = layer(h)
        return self.projection(h)

    def get_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": self.tower_columns,
            "vocabulary_sizes": self.vocabulary_sizes,  # the vocabularies themselves are the lookups' assets
            "oov_buckets": self.oov_buckets,
            "embedding_dim": self.embedding_dim,
            "hidden_units": self.hidden_units,
            "output_dim": self.output_dim,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Tower":
        return cls(**config)


def _check_column(tower: str, c: Mapping[str, Any]) -> None:
    name, kind, dtype, shape = c["name"], c["kind"], c["dtype"], list(c["shape"])
    if kind not in TOWER_KINDS:
        raise ValueError(f"tower {tower!r}: column {name!r} has kind {kind!r}; a tower column must be one of {TOWER_KINDS}")
    if kind in ("id", "categorical") and (dtype != "string" or shape):
        raise ValueError(f"tower {tower!r}: {kind} column {name!r} must be a string scalar (shape []), got {dtype} {shape}")
    if kind == "dense" and dtype != "float32":
        raise ValueError(f"tower {tower!r}: dense column {name!r} must have dtype float32, got {dtype!r}")
    if kind == "count" and (dtype != "int64" or shape):
        raise ValueError(f"tower {tower!r}: count column {name!r} must be an int64 scalar (shape []), got {dtype} {shape}")
