"""Experiment configuration: typed, frozen dataclasses validated on construction.

A config file is TOML (read with the standard library's ``tomllib``); each table of the file is
one dataclass below. Only the CLI and the job files load files; the library receives a
``ExperimentConfig``. The resolved config (every default filled in) is saved as JSON next to
every output, and its hash names the data it produced.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import UserError

WEIGHT_SCHEMES = ("none", "engagement_tiers", "sqrt_time_spent")
EMBEDDING_SOURCES = ("dedup", "simclr")
HISTORY_AGGREGATIONS = ("mean", "concat", "clusters")
HEADS = ("dot", "cosine", "batchnorm")
LOSSES = ("bce", "softmax", "hybrid")
# what retrieval adds to the model's score (twotower_model/prior.py)
RETRIEVAL_PRIORS = ("none", "log_count")
# which vectors the hybrid loss's softmax term scores: the ranking head's, or a retrieval head's own
SOFTMAX_HEADS = ("shared", "separate")
# [model] keys that change only full-catalog retrieval (the item vectors' prior column), not training
RETRIEVAL_ONLY = ("retrieval_prior", "prior_weight")
TOWERS = ("user", "item")

# Features a tower may use. The feature job writes the ones the experiment selects; the
# trainer builds each tower from feature_spec.json.
USER_FEATURES = (
    "user_id",
    "handset_maker",
    "activity_profile",
    "pos_hist_mean",
    "neg_hist_mean",
    "pos_hist_concat",
    "neg_hist_concat",
    "pos_hist_clusters",
    "neg_hist_clusters",
    "user_ctr",
    "user_timespent",
)
ITEM_FEATURES = (
    "item_id",
    "creator_id",
    "item_emb",
    "item_performance",
    "creator_performance",
    "item_ctr",
    "creator_ctr",
)


class ConfigError(UserError, ValueError):
    """A config value is missing, of the wrong type or out of range; the message names it."""


def _check(cond: bool, name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config '{name}' must be {expected}, got {value!r}")


def _int(v: Any) -> bool:
    """An integer; TOML's true/false are bools, and a bool is an int to Python."""
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _list(name: str, value: Any) -> tuple:
    """A TOML array (a tuple once resolved); a string is not a list of its characters."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config '{name}' must be a list, got {value!r}")
    return tuple(value)


def _date(name: str, value: Any) -> _dt.date:
    # a TOML date-time is a datetime, a subclass of date: refused, the window is whole days
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        return value
    try:
        if not isinstance(value, str):
            raise ValueError
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"config '{name}' must be a date YYYY-MM-DD, got {value!r}") from None


@dataclass(frozen=True)
class WindowConfig:
    """Train window = the `train_days` days before `validation_date`; validation = that day."""

    validation_date: _dt.date = _dt.date(2026, 7, 5)
    train_days: int = 7

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_date", _date("window.validation_date", self.validation_date))
        _check(_int(self.train_days) and self.train_days >= 1, "window.train_days", "an integer >= 1", self.train_days)

    @property
    def train_start(self) -> _dt.date:
        return self.validation_date - _dt.timedelta(days=self.train_days)

    @property
    def train_end(self) -> _dt.date:
        """Last train day, inclusive."""
        return self.validation_date - _dt.timedelta(days=1)


@dataclass(frozen=True)
class FilterConfig:
    item_min_interactions: int = 3
    client_min_interactions: int = 4
    client_max_interactions_per_7d: int = 2000
    client_min_positives: int = 1
    client_min_negatives: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            _check(_int(v) and v >= 0, f"filters.{f.name}", "an integer >= 0", v)

    def client_max_interactions(self, train_days: int) -> int:
        """The cap scales with the window: 2000 per 7 days is 4000 for 14 days."""
        return int(self.client_max_interactions_per_7d * train_days / 7)


@dataclass(frozen=True)
class LabelConfig:
    """`rule` is a boolean expression over the interaction contract's columns, in a small
    SQL-like language parsed by ``label_rule.py`` (columns, literals, comparison, boolean and
    arithmetic operators, a few pure functions); it is data, never handed to Spark's parser."""

    rule: str = "liked OR shared OR fraction_watched > 0.8"

    def __post_init__(self) -> None:
        _check(isinstance(self.rule, str) and self.rule.strip() != "", "label.rule", "a non-empty boolean expression", self.rule)
        # imported here: label_rule's LabelRuleError is a ConfigError of this module
        from .label_rule import parse

        parse(self.rule)  # a refused rule raises LabelRuleError, a ConfigError naming label.rule


@dataclass(frozen=True)
class WeightConfig:
    scheme: str = "none"
    sqrt_cap: float = 8.0

    def __post_init__(self) -> None:
        _check(self.scheme in WEIGHT_SCHEMES, "weight.scheme", f"one of {WEIGHT_SCHEMES}", self.scheme)
        _check(_num(self.sqrt_cap) and self.sqrt_cap > 0, "weight.sqrt_cap", "a finite number > 0", self.sqrt_cap)


@dataclass(frozen=True)
class SamplingConfig:
    """Deterministic user sampling by hash of (user_id, seed); optional class rebalancing."""

    user_fraction: float = 1.0
    seed: int = 42
    # positives per negative wanted after downsampling the majority class; 0 = keep as observed
    target_pos_neg_ratio: float = 0.0
    # sample the validation day's users too (the seed sampled its training data only)
    validation: bool = False

    def __post_init__(self) -> None:
        _check(isinstance(self.validation, bool), "sampling.validation", "true or false", self.validation)
        _check(_num(self.user_fraction) and 0 < self.user_fraction <= 1, "sampling.user_fraction", "a number in (0, 1]", self.user_fraction)
        _check(_int(self.seed), "sampling.seed", "an integer", self.seed)
        _check(_num(self.target_pos_neg_ratio) and self.target_pos_neg_ratio >= 0, "sampling.target_pos_neg_ratio", "a finite number >= 0", self.target_pos_neg_ratio)


@dataclass(frozen=True)
class HistoryConfig:
    n: int = 100
    aggregations: tuple[str, ...] = ()
    concat_k: int = 5
    source: str = "simclr"
    keep_lists: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "aggregations", _list("history.aggregations", self.aggregations))
        _check(_int(self.n) and 1 <= self.n <= 1000, "history.n", "an integer in [1, 1000]", self.n)
        for a in self.aggregations:
            _check(a in HISTORY_AGGREGATIONS, "history.aggregations", f"a list of {HISTORY_AGGREGATIONS}", self.aggregations)
        _check(_int(self.concat_k) and 1 <= self.concat_k <= self.n, "history.concat_k", "an integer in [1, history.n]", self.concat_k)
        _check(self.source in EMBEDDING_SOURCES, "history.source", f"one of {EMBEDDING_SOURCES}", self.source)
        _check(isinstance(self.keep_lists, bool), "history.keep_lists", "true or false", self.keep_lists)


@dataclass(frozen=True)
class EmbeddingConfig:
    item_source: str = "dedup"
    pca_components: int = 128
    kmeans_k: int = 18
    seed: int = 7

    def __post_init__(self) -> None:
        _check(self.item_source in EMBEDDING_SOURCES, "embeddings.item_source", f"one of {EMBEDDING_SOURCES}", self.item_source)
        _check(_int(self.pca_components) and self.pca_components >= 1, "embeddings.pca_components", "an integer >= 1", self.pca_components)
        _check(_int(self.kmeans_k) and self.kmeans_k >= 2, "embeddings.kmeans_k", "an integer >= 2", self.kmeans_k)
        _check(_int(self.seed), "embeddings.seed", "an integer", self.seed)


@dataclass(frozen=True)
class FeaturesConfig:
    user: tuple[str, ...] = ("user_id",)
    item: tuple[str, ...] = ("item_id", "item_emb")

    def __post_init__(self) -> None:
        object.__setattr__(self, "user", _list("features.user", self.user))
        object.__setattr__(self, "item", _list("features.item", self.item))
        for f in self.user:
            _check(f in USER_FEATURES, "features.user", f"a list of {USER_FEATURES}", list(self.user))
        for f in self.item:
            _check(f in ITEM_FEATURES, "features.item", f"a list of {ITEM_FEATURES}", list(self.item))
        _check(len(self.user) > 0, "features.user", "a non-empty list", list(self.user))
        _check(len(self.item) > 0, "features.item", "a non-empty list", list(self.item))


@dataclass(frozen=True)
class OutputConfig:
    tfrecord_shards: int = 4
    vocabulary_min_count: int = 1
    # at most this many values per vocabulary (the most frequent in the train window, ties by
    # value); the rest are out of vocabulary, hashed into model.oov_buckets rows. 0: no cap
    vocabulary_max_size: int = 0

    def __post_init__(self) -> None:
        _check(_int(self.tfrecord_shards) and self.tfrecord_shards >= 1, "output.tfrecord_shards", "an integer >= 1", self.tfrecord_shards)
        _check(_int(self.vocabulary_min_count) and self.vocabulary_min_count >= 1, "output.vocabulary_min_count", "an integer >= 1", self.vocabulary_min_count)
        _check(_int(self.vocabulary_max_size) and self.vocabulary_max_size >= 0, "output.vocabulary_max_size", "an integer >= 0 (0: no cap)", self.vocabulary_max_size)


@dataclass(frozen=True)
class QualityConfig:
    """Bounds on bad input: the run fails before writing when they are exceeded.

    The day's volume band compares the rows of the validation day with the median of the
    `volume_lookback_days` days before it (within the train window); a bound of 0 is off.
    """

    max_quarantine_share: float = 0.05
    # fraction_watched above this is quarantined as out of range (> 1 is a replay); 0 = no upper bound
    max_fraction_watched: float = 0.0
    min_day_volume_ratio: float = 0.0
    max_day_volume_ratio: float = 0.0
    volume_lookback_days: int = 7
    # a validation day without any interaction fails the run unless this is true
    allow_empty_day: bool = False

    def __post_init__(self) -> None:
        _check(_num(self.max_quarantine_share) and 0 <= self.max_quarantine_share <= 1, "quality.max_quarantine_share", "a number in [0, 1]", self.max_quarantine_share)
        for name in ("max_fraction_watched", "min_day_volume_ratio", "max_day_volume_ratio"):
            v = getattr(self, name)
            _check(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"), f"quality.{name}", "a finite number >= 0 (0 = off)", v)
        _check(
            not (self.min_day_volume_ratio and self.max_day_volume_ratio) or self.min_day_volume_ratio <= self.max_day_volume_ratio,
            "quality.min_day_volume_ratio", f"<= quality.max_day_volume_ratio ({self.max_day_volume_ratio})", self.min_day_volume_ratio,
        )
        _check(isinstance(self.volume_lookback_days, int) and not isinstance(self.volume_lookback_days, bool) and self.volume_lookback_days >= 1, "quality.volume_lookback_days", "an integer >= 1", self.volume_lookback_days)
        _check(isinstance(self.allow_empty_day, bool), "quality.allow_empty_day", "true or false", self.allow_empty_day)


STATS_SOURCES = ("files", "postgres")


def _identifier(v: str) -> bool:
    return v != "" and v.replace("_", "").isalnum() and v.isascii() and not v[:1].isdigit()


@dataclass(frozen=True)
class StatsConfig:
    """Where the user/item/creator statistics ("recsys database") come from.

    `files`: Delta/Parquet folders `user_stats`, `item_stats`, `creator_stats` under `--input`.
    `postgres`: tables of a PostgreSQL database read over Spark JDBC. The password is never part
    of the config: it is read at run time from the environment variable named `password_env`,
    or from `password_file`, a file readable only by its owner.
    """

    source: str = "files"
    jdbc_url: str = ""
    user: str = ""
    password_env: str = "TWOTOWER_STATS_PASSWORD"
    password_file: str = ""
    db_schema: str = "public"
    user_table: str = "user_stats"
    item_table: str = "item_stats"
    creator_table: str = "creator_stats"
    fetch_size: int = 10000

    def __post_init__(self) -> None:
        _check(self.source in STATS_SOURCES, "stats.source", f"one of {STATS_SOURCES}", self.source)
        for name in ("jdbc_url", "user", "password_env", "password_file", "db_schema", "user_table", "item_table", "creator_table"):
            _check(isinstance(getattr(self, name), str), f"stats.{name}", "a string", getattr(self, name))
        _check(isinstance(self.fetch_size, int) and not isinstance(self.fetch_size, bool) and self.fetch_size >= 1, "stats.fetch_size", "an integer >= 1", self.fetch_size)
        if "password" in self.jdbc_url.lower():
            # the value is not echoed: it may hold the secret
            raise ConfigError(
                "config 'stats.jdbc_url' must not carry a password: set it in the environment variable named by "
                "'stats.password_env' or in an owner-only file named by 'stats.password_file'"
            )
        if self.source == "postgres":
            _check(self.jdbc_url.startswith("jdbc:postgresql://"), "stats.jdbc_url", "a URL jdbc:postgresql://HOST:PORT/DB when stats.source = 'postgres'", self.jdbc_url)
            _check(self.user != "", "stats.user", "a database user name when stats.source = 'postgres'", self.user)
            _check(self.password_env != "" or self.password_file != "", "stats.password_env", "an environment variable name (or stats.password_file a path)", self.password_env)
        _check(_identifier(self.db_schema), "stats.db_schema", "an SQL identifier (letters, digits, _)", self.db_schema)
        for name in ("user_table", "item_table", "creator_table"):
            v = getattr(self, name)
            _check(v == "" or _identifier(v), f"stats.{name}", "an SQL identifier (letters, digits, _), or \"\" for none", v)

    def table(self, name: str) -> str:
        """The database table of the statistics table `name` (user_stats, item_stats, creator_stats); "" = none."""
        return {"user_stats": self.user_table, "item_stats": self.item_table, "creator_stats": self.creator_table}[name]


@dataclass(frozen=True)
class ModelConfig:
    head: str = "dot"
    loss: str = "bce"
    embedding_dim: int = 32
    hidden_units: tuple[int, ...] = (64,)
    output_dim: int = 32
    temperature: float = 0.1
    epochs: int = 3
    batch_size: int = 512
    learning_rate: float = 0.01
    seed: int = 1
    # ids outside a tower's vocabulary (new users and items) hash into this many embedding rows
    oov_buckets: int = 1
    # loss = "hybrid": BCE + hybrid_weight * in-batch softmax (twotower_model/tasks.py)
    hybrid_weight: float = 0.3
    # loss = "hybrid": "separate" gives the softmax term a retrieval head of its own (a linear
    # projection of each tower's output, L2-normalised, / softmax_temperature); retrieval from
    # the catalog then uses it, the impressions keep the ranking head (no effect on other losses)
    softmax_head: str = "shared"
    softmax_temperature: float = 0.05
    # loss = "softmax" | "hybrid": items drawn uniformly from the catalog each step join the
    # in-batch candidates of the softmax term (mixed negative sampling, Yang et al., WWW 2020)
    sampled_negatives: int = 0
    # full-catalog retrieval adds prior_weight * log(1 + train count) of the item to the score
    retrieval_prior: str = "none"
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_units", _list("model.hidden_units", self.hidden_units))
        _check(self.head in HEADS, "model.head", f"one of {HEADS}", self.head)
        _check(self.loss in LOSSES, "model.loss", f"one of {LOSSES}", self.loss)
        for name in ("embedding_dim", "output_dim", "epochs", "batch_size"):
            v = getattr(self, name)
            _check(_int(v) and v >= 1, f"model.{name}", "an integer >= 1", v)
        _check(all(_int(u) and u >= 1 for u in self.hidden_units), "model.hidden_units", "a list of integers >= 1", self.hidden_units)
        _check(_num(self.temperature) and self.temperature > 0, "model.temperature", "a finite number > 0", self.temperature)
        _check(_num(self.learning_rate) and self.learning_rate > 0, "model.learning_rate", "a finite number > 0", self.learning_rate)
        _check(_int(self.seed), "model.seed", "an integer", self.seed)
        _check(_int(self.oov_buckets) and self.oov_buckets >= 1, "model.oov_buckets", "an integer >= 1", self.oov_buckets)
        _check(_num(self.hybrid_weight) and self.hybrid_weight >= 0, "model.hybrid_weight", "a finite number >= 0", self.hybrid_weight)
        _check(self.softmax_head in SOFTMAX_HEADS, "model.softmax_head", f"one of {SOFTMAX_HEADS}", self.softmax_head)
        _check(_num(self.softmax_temperature) and self.softmax_temperature > 0, "model.softmax_temperature", "a finite number > 0", self.softmax_temperature)
        _check(_int(self.sampled_negatives) and self.sampled_negatives >= 0, "model.sampled_negatives", "an integer >= 0", self.sampled_negatives)
        _check(self.retrieval_prior in RETRIEVAL_PRIORS, "model.retrieval_prior", f"one of {RETRIEVAL_PRIORS}", self.retrieval_prior)
        _check(_num(self.prior_weight) and self.prior_weight >= 0, "model.prior_weight", "a finite number >= 0", self.prior_weight)

    def ineffective(self) -> set[str]:
        """The settings that change nothing here: ``temperature`` unless the head is cosine,
        ``hybrid_weight`` and ``softmax_head`` unless the loss is hybrid, ``sampled_negatives`` with the BCE loss, ``softmax_temperature``
        without a separate softmax head, ``prior_weight`` without a retrieval prior."""
        out = set() if self.head == "cosine" else {"temperature"}
        if self.loss != "hybrid":
            out |= {"hybrid_weight", "softmax_head"}
        if self.loss == "bce":
            out.add("sampled_negatives")
        if self.loss != "hybrid" or self.softmax_head != "separate":
            out.add("softmax_temperature")
        if self.retrieval_prior == "none":
            out.add("prior_weight")
        return out

    def canonical(self) -> "ModelConfig":
        """The same model with its ``ineffective`` settings reset to their defaults, so that two
        configs of one model compare equal."""
        d = ModelConfig()
        return dataclasses.replace(self, **{k: getattr(d, k) for k in self.ineffective()})

    def training_dict(self) -> dict[str, Any]:
        """What decides the trained towers: every canonical setting but ``RETRIEVAL_ONLY``."""
        d = dataclasses.asdict(self.canonical())
        for k in RETRIEVAL_ONLY:
            d.pop(k)
        d["hidden_units"] = list(self.hidden_units)
        return d


_SECTIONS = {
    "window": WindowConfig,
    "filters": FilterConfig,
    "label": LabelConfig,
    "weight": WeightConfig,
    "sampling": SamplingConfig,
    "history": HistoryConfig,
    "embeddings": EmbeddingConfig,
    "features": FeaturesConfig,
    "output": OutputConfig,
    "quality": QualityConfig,
    "stats": StatsConfig,
    "model": ModelConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "default"
    description: str = ""
    window: WindowConfig = field(default_factory=WindowConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    label: LabelConfig = field(default_factory=LabelConfig)
    weight: WeightConfig = field(default_factory=WeightConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        _check(isinstance(self.name, str) and self.name.strip() != "", "name", "a non-empty string", self.name)
        _check(isinstance(self.description, str), "description", "a string", self.description)
        hist_feats = {f for f in self.features.user if "_hist_" in f}
        needed = {"mean": {"pos_hist_mean", "neg_hist_mean"}, "concat": {"pos_hist_concat", "neg_hist_concat"}, "clusters": {"pos_hist_clusters", "neg_hist_clusters"}}
        for agg, names in needed.items():
            if hist_feats & names and agg not in self.history.aggregations:
                raise ConfigError(f"config 'features.user' uses {sorted(hist_feats & names)} but 'history.aggregations' lacks {agg!r}")

    # ---- (de)serialisation -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        unknown = set(data) - set(_SECTIONS) - {"name", "description"}
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(_SECTIONS)}")
        kwargs: dict[str, Any] = {k: data[k] for k in ("name", "description") if k in data}
        for section, klass in _SECTIONS.items():
            values = data.get(section, {})
            if not isinstance(values, Mapping):
                raise ConfigError(f"config section '{section}' must be a table, got {values!r}")
            known = {f.name for f in fields(klass)}
            bad = set(values) - known
            if any("password" in k.lower() and k not in known for k in values):
                raise ConfigError(
                    f"config section '{section}' must not hold a password: set it in the environment variable named by "
                    "'stats.password_env' or in an owner-only file named by 'stats.password_file'"
                )
            if bad:
                raise ConfigError(f"unknown key(s) {sorted(bad)} in config section '{section}'; expected {sorted(known)}")
            kwargs[section] = klass(**values)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentConfig":
        """The config of a TOML file (``read_toml``); a bad value is a ``ConfigError`` naming the key."""
        return cls.from_dict(read_toml(path))

    def to_dict(self) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if isinstance(v, _dt.date):
                return v.isoformat()
            if isinstance(v, tuple):
                return [conv(x) for x in v]
            if isinstance(v, dict):
                return {k: conv(x) for k, x in v.items()}
            return v

        return conv(dataclasses.asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def data_hash(self) -> str:
        """Hash of everything that decides the feature outputs (not the model section)."""
        d = self.to_dict()
        for k in ("name", "description", "model"):
            d.pop(k, None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def config_hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The table of a TOML file (UTF-8, as TOML requires); every refusal is a ``ConfigError``
    naming the file (``what`` and path): missing, a folder, unreadable, not UTF-8 (with the
    byte's offset and line), or not TOML. Nothing in the file is run or followed."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; expected a TOML file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {str(path)!r} cannot be read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{what} {str(path)!r} is not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start} (line {line}); "
            "TOML files must be UTF-8, save it with that encoding"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{what} {str(path)!r} is not valid TOML: {e}") from None
