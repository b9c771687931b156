"""Validation of the experiment config (`twotower_features/config.py`), section by section.

Pure: no Spark, no TensorFlow. Every expected default and message fragment below is written
out from SPEC.md, the README's config format and config.py, never taken from the code under
test. A refused value must raise ConfigError naming `section.key` and what was expected.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from pathlib import Path

import pytest

from twotower_features.config import ConfigError, ExperimentConfig

REPO = Path(__file__).resolve().parents[2]


def load(**sections) -> ExperimentConfig:
    return ExperimentConfig.from_dict(sections)


def refused(data: dict, key: str, expected: str) -> ConfigError:
    """`data` is refused with "config 'KEY' must be EXPECTED..."; returns the error."""
    with pytest.raises(ConfigError, match="^" + re.escape(f"config '{key}' must be {expected}")) as err:
        ExperimentConfig.from_dict(data)
    return err.value


# ------------------------------------------------------------------------------ defaults
# The resolved defaults of every section, as to_dict() writes them (dates ISO, tuples as lists).
DEFAULTS = {
    # SPEC: "7 days in the others, validation = the next day"
    "window": {"validation_date": "2026-07-05", "train_days": 7},
    # SPEC stage 2: item >= 3; client >= 4, <= 2000 per 7 days, >= 1 positive, >= 1 negative
    "filters": {
        "item_min_interactions": 3,
        "client_min_interactions": 4,
        "client_max_interactions_per_7d": 2000,
        "client_min_positives": 1,
        "client_min_negatives": 1,
    },
    # SPEC stage 3: the first seed rule
    "label": {"rule": "liked OR shared OR fraction_watched > 0.8"},
    # SPEC stage 4: sqrt_time_spent caps at 8.0
    "weight": {"scheme": "none", "sqrt_cap": 8.0},
    "sampling": {"user_fraction": 1.0, "seed": 42, "target_pos_neg_ratio": 0.0, "validation": False},
    # SPEC stage 6: N = 100, lists kept by default for local runs and tests
    "history": {"n": 100, "aggregations": [], "concat_k": 5, "source": "simclr", "keep_lists": True},
    # SPEC stage 7: PCA to 128, KMeans with 18 clusters
    "embeddings": {"item_source": "dedup", "pca_components": 128, "kmeans_k": 18, "seed": 7},
    "features": {"user": ["user_id"], "item": ["item_id", "item_emb"]},
    "output": {"tfrecord_shards": 4, "vocabulary_min_count": 1, "vocabulary_max_size": 0},
    "quality": {
        "max_quarantine_share": 0.05,
        "max_fraction_watched": 0.0,
        "min_day_volume_ratio": 0.0,
        "max_day_volume_ratio": 0.0,
        "volume_lookback_days": 7,
        "allow_empty_day": False,
    },
    "stats": {
        "source": "files",
        "jdbc_url": "",
        "user": "",
        "password_env": "TWOTOWER_STATS_PASSWORD",
        "password_file": "",
        "db_schema": "public",
        "user_table": "user_stats",
        "item_table": "item_stats",
        "creator_table": "creator_stats",
        "fetch_size": 10000,
    },
    "model": {
        "head": "dot",
        "loss": "bce",
        "embedding_dim": 32,
        "hidden_units": [64],
        "output_dim": 32,
        "temperature": 0.1,
        "epochs": 3,
        "batch_size": 512,
        "learning_rate": 0.01,
        "seed": 1,
        "oov_buckets": 1,
        "hybrid_weight": 0.3,
        "softmax_head": "shared",
        "softmax_temperature": 0.05,
        "sampled_negatives": 0,
        "retrieval_prior": "none",
        "prior_weight": 1.0,
    },
}
SECTIONS = sorted(DEFAULTS)


def test_an_empty_config_resolves_to_every_default():
    cfg = ExperimentConfig.from_dict({})
    assert cfg.to_dict() == {"name": "default", "description": "", **DEFAULTS}
    assert cfg == ExperimentConfig()


@pytest.mark.parametrize("section", SECTIONS)
def test_an_empty_section_takes_its_defaults(section):
    assert load(**{section: {}}).to_dict()[section] == DEFAULTS[section]


def test_loaded_defaults_have_their_python_types():
    cfg = ExperimentConfig.from_dict({})
    assert cfg.window.validation_date == dt.date(2026, 7, 5)
    assert cfg.history.aggregations == () and cfg.features.user == ("user_id",) and cfg.model.hidden_units == (64,)
    assert cfg.filters.client_max_interactions(7) == 2000 and cfg.filters.client_max_interactions(14) == 4000


def test_a_minimal_toml_file_loads(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\n\n[window]\nvalidation_date = 2026-07-05\ntrain_days = 15\n\n[history]\naggregations = ["mean"]\n')
    cfg = ExperimentConfig.from_file(p)
    assert cfg.name == "x" and cfg.description == ""
    # SPEC: the first seed experiment trains on 2026-06-20..2026-07-04 and validates on 2026-07-05
    assert (cfg.window.train_start, cfg.window.train_end) == (dt.date(2026, 6, 20), dt.date(2026, 7, 4))
    assert cfg.history.aggregations == ("mean",)
    assert cfg.to_dict()["filters"] == DEFAULTS["filters"]


def test_from_file_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ExperimentConfig.from_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[window\ntrain_days = 7\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        ExperimentConfig.from_file(bad)


@pytest.mark.parametrize(
    "line, key, expected",
    [
        ("train_days = true", "window.train_days", "an integer >= 1, got True"),
        ("train_days = 7.0", "window.train_days", "an integer >= 1, got 7.0"),
        ('train_days = "7"', "window.train_days", "an integer >= 1, got '7'"),
        ("validation_date = 20260705", "window.validation_date", "a date YYYY-MM-DD, got 20260705"),
        ("validation_date = 2026-07-05T10:00:00", "window.validation_date", "a date YYYY-MM-DD"),
    ],
)
def test_toml_typed_values_are_refused_from_a_file(tmp_path, line, key, expected):
    p = tmp_path / "x.toml"
    p.write_text(f"[window]\n{line}\n")
    with pytest.raises(ConfigError, match="^" + re.escape(f"config '{key}' must be {expected}")):
        ExperimentConfig.from_file(p)


# ------------------------------------------------------------------------------ top level
@pytest.mark.parametrize("name", ["", "   ", 3, True, None, ["x"]])
def test_name_must_be_a_non_empty_string(name):
    refused({"name": name}, "name", "a non-empty string")


@pytest.mark.parametrize("description", [3, None, True, ["x"]])
def test_description_must_be_a_string(description):
    refused({"description": description}, "description", "a string")


def test_description_may_be_empty():
    assert load(name="n", description="").description == ""


@pytest.mark.parametrize("section", ["windows", "model_", "data", "Window"])
def test_an_unknown_section_is_refused_with_the_expected_list(section):
    with pytest.raises(ConfigError, match=re.escape(f"unknown config section(s) ['{section}']; expected ['embeddings', 'features', 'filters',")):
        ExperimentConfig.from_dict({section: {}})


@pytest.mark.parametrize("section", SECTIONS)
def test_a_section_must_be_a_table(section):
    with pytest.raises(ConfigError, match=re.escape(f"config section '{section}' must be a table, got 3")):
        ExperimentConfig.from_dict({section: 3})


# one plausible typo per section
TYPOS = {
    "window": "train_day",
    "filters": "item_min_interaction",
    "label": "rules",
    "weight": "schema",
    "sampling": "user_fracton",
    "history": "aggregation",
    "embeddings": "pca_component",
    "features": "users",
    "output": "tfrecord_shard",
    "quality": "max_quarantine",
    "stats": "fetchsize",
    "model": "lr",
}


@pytest.mark.parametrize("section", SECTIONS)
def test_an_unknown_key_is_refused_naming_it_and_its_section(section):
    typo = TYPOS[section]
    with pytest.raises(ConfigError, match=re.escape(f"unknown key(s) ['{typo}'] in config section '{section}'; expected [")):
        ExperimentConfig.from_dict({section: {typo: 1}})


@pytest.mark.parametrize("section, key", [("stats", "password"), ("stats", "db_password"), ("model", "password"), ("window", "PASSWORD")])
def test_no_section_holds_a_password_and_the_value_is_not_echoed(section, key):
    with pytest.raises(ConfigError, match=re.escape(f"config section '{section}' must not hold a password")) as err:
        ExperimentConfig.from_dict({section: {key: "s3cret"}})
    assert "s3cret" not in str(err.value)


# ------------------------------------------------------------------------------ window
@pytest.mark.parametrize("value", [True, False, 0, -1, 1.5, 7.0, "7", None])
def test_window_train_days_must_be_an_integer_at_least_one(value):
    refused({"window": {"train_days": value}}, "window.train_days", f"an integer >= 1, got {value!r}")


def test_window_train_days_one_is_the_smallest_window():
    w = load(window={"train_days": 1, "validation_date": "2026-03-01"}).window
    assert (w.train_start, w.train_end, w.validation_date) == (dt.date(2026, 2, 28), dt.date(2026, 2, 28), dt.date(2026, 3, 1))


@pytest.mark.parametrize(
    "value",
    ["2026-13-01", "2026-02-30", "", "yesterday", "2026/07/05", 20260705, True, 1.5, None, dt.datetime(2026, 7, 5, 10, 0)],
)
def test_window_validation_date_must_be_a_calendar_date(value):
    refused({"window": {"validation_date": value}}, "window.validation_date", "a date YYYY-MM-DD")


def test_window_validation_date_is_a_date_or_an_iso_string():
    assert load(window={"validation_date": "2024-02-29"}).window.validation_date == dt.date(2024, 2, 29)
    assert load(window={"validation_date": dt.date(2026, 1, 1)}).window.validation_date == dt.date(2026, 1, 1)
    # the train window crosses a year boundary: 7 days before 2026-01-01
    assert load(window={"validation_date": "2026-01-01"}).window.train_start == dt.date(2025, 12, 25)


# ------------------------------------------------------------------------------ filters
FILTER_KEYS = ["item_min_interactions", "client_min_interactions", "client_max_interactions_per_7d", "client_min_positives", "client_min_negatives"]


@pytest.mark.parametrize("key", FILTER_KEYS)
@pytest.mark.parametrize("value", [True, -1, 1.5, 3.0, "3"])
def test_filters_must_be_integers_at_least_zero(key, value):
    refused({"filters": {key: value}}, f"filters.{key}", f"an integer >= 0, got {value!r}")


@pytest.mark.parametrize("key", FILTER_KEYS)
def test_filters_zero_is_allowed(key):
    assert getattr(load(filters={key: 0}).filters, key) == 0


def test_filters_client_cap_scales_with_the_window():
    f = load(filters={"client_max_interactions_per_7d": 700}).filters
    # 700 per 7 days: 100 a day
    assert [f.client_max_interactions(d) for d in (1, 7, 14, 15)] == [100, 700, 1400, 1500]


# ------------------------------------------------------------------------------ label
@pytest.mark.parametrize("value", ["", "   ", 1, None, True, ["liked"]])
def test_label_rule_must_be_a_non_empty_string(value):
    refused({"label": {"rule": value}}, "label.rule", "a non-empty boolean expression")


def test_label_rule_takes_a_seed_rule():
    assert load(label={"rule": "fraction_watched > 0.99 OR liked OR shared"}).label.rule == "fraction_watched > 0.99 OR liked OR shared"


# ------------------------------------------------------------------------------ weight
@pytest.mark.parametrize("value", ["None", "sqrt", "", "engagement-tiers", ["none"], 0])
def test_weight_scheme_must_be_a_known_scheme(value):
    refused({"weight": {"scheme": value}}, "weight.scheme", "one of ('none', 'engagement_tiers', 'sqrt_time_spent')")


@pytest.mark.parametrize("value", ["none", "engagement_tiers", "sqrt_time_spent"])
def test_weight_every_seed_scheme_is_allowed(value):
    assert load(weight={"scheme": value}).weight.scheme == value


@pytest.mark.parametrize("value", [True, 0, 0.0, -1.0, "8", math.inf, math.nan, None])
def test_weight_sqrt_cap_must_be_a_finite_positive_number(value):
    refused({"weight": {"sqrt_cap": value}}, "weight.sqrt_cap", "a finite number > 0")


@pytest.mark.parametrize("value", [1e-9, 8, 8.0])
def test_weight_sqrt_cap_just_above_zero_is_allowed(value):
    assert load(weight={"sqrt_cap": value}).weight.sqrt_cap == value


# ------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("value", [True, 0, 0.0, -0.1, 1.0000001, 2, "0.3", math.nan, math.inf, None])
def test_sampling_user_fraction_must_be_in_zero_one(value):
    refused({"sampling": {"user_fraction": value}}, "sampling.user_fraction", "a number in (0, 1]")


@pytest.mark.parametrize("value", [1e-9, 0.3, 0.4, 1, 1.0])
def test_sampling_user_fraction_boundaries_allowed(value):
    assert load(sampling={"user_fraction": value}).sampling.user_fraction == value


@pytest.mark.parametrize("value", [True, 1.5, 42.0, "42", None])
def test_sampling_seed_must_be_an_integer(value):
    refused({"sampling": {"seed": value}}, "sampling.seed", f"an integer, got {value!r}")


@pytest.mark.parametrize("value", [True, -0.001, "1", math.inf, math.nan, None])
def test_sampling_target_ratio_must_be_a_finite_number_at_least_zero(value):
    refused({"sampling": {"target_pos_neg_ratio": value}}, "sampling.target_pos_neg_ratio", "a finite number >= 0")


@pytest.mark.parametrize("value", [0, 0.0, 1.0, 7 / 3])
def test_sampling_target_ratio_zero_and_up_allowed(value):
    assert load(sampling={"target_pos_neg_ratio": value}).sampling.target_pos_neg_ratio == value


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_sampling_validation_must_be_a_bool(value):
    refused({"sampling": {"validation": value}}, "sampling.validation", f"true or false, got {value!r}")


# ------------------------------------------------------------------------------ history
@pytest.mark.parametrize("value", [True, 0, 1001, 100.0, "100", None])
def test_history_n_must_be_an_integer_in_1_1000(value):
    refused({"history": {"n": value, "concat_k": 1}}, "history.n", f"an integer in [1, 1000], got {value!r}")


@pytest.mark.parametrize("value", [1, 1000])
def test_history_n_boundaries_allowed(value):
    assert load(history={"n": value, "concat_k": 1}).history.n == value


@pytest.mark.parametrize("value", [["foo"], ["Mean"], ["mean", "bogus"], [""], [1]])
def test_history_aggregations_must_be_known(value):
    refused({"history": {"aggregations": value}}, "history.aggregations", "a list of ('mean', 'concat', 'clusters')")


@pytest.mark.parametrize("value", ["mean", 3, None, {"mean": 1}])
def test_history_aggregations_must_be_a_list(value):
    refused({"history": {"aggregations": value}}, "history.aggregations", f"a list, got {value!r}")


def test_history_aggregations_every_one_allowed_and_none_too():
    assert load(history={"aggregations": ["mean", "concat", "clusters"]}).history.aggregations == ("mean", "concat", "clusters")
    assert load(history={"aggregations": []}).history.aggregations == ()


@pytest.mark.parametrize("value", [True, 0, -1, 2.0, "5", None])
def test_history_concat_k_must_be_an_integer_at_least_one(value):
    refused({"history": {"concat_k": value}}, "history.concat_k", f"an integer in [1, history.n], got {value!r}")


def test_history_concat_k_at_most_n():
    # SPEC #7: the last 5 of the history; concat_k = n is the boundary, n + 1 is refused
    assert load(history={"n": 5, "concat_k": 5, "aggregations": ["concat"]}).history.concat_k == 5
    assert load(history={"n": 5, "concat_k": 1}).history.concat_k == 1
    refused({"history": {"n": 5, "concat_k": 6, "aggregations": ["concat"]}}, "history.concat_k", "an integer in [1, history.n], got 6")
    refused({"history": {"n": 100, "concat_k": 101}}, "history.concat_k", "an integer in [1, history.n], got 101")


@pytest.mark.parametrize("value", ["SimCLR", "pca", "", None, ["simclr"]])
def test_history_source_must_be_an_embedding(value):
    refused({"history": {"source": value}}, "history.source", "one of ('dedup', 'simclr')")


@pytest.mark.parametrize("value", [1, 0, "yes", None])
def test_history_keep_lists_must_be_a_bool(value):
    refused({"history": {"keep_lists": value}}, "history.keep_lists", f"true or false, got {value!r}")


def test_history_keep_lists_off_allowed():
    assert load(history={"keep_lists": False}).history.keep_lists is False


# ------------------------------------------------------------------------------ embeddings
@pytest.mark.parametrize("value", ["x", "", "Dedup", None])
def test_embeddings_item_source_must_be_known(value):
    refused({"embeddings": {"item_source": value}}, "embeddings.item_source", "one of ('dedup', 'simclr')")


@pytest.mark.parametrize("value", [True, 0, -64, 1.5, 64.0, "128", None])
def test_embeddings_pca_components_must_be_an_integer_at_least_one(value):
    refused({"embeddings": {"pca_components": value}}, "embeddings.pca_components", f"an integer >= 1, got {value!r}")


@pytest.mark.parametrize("value", [True, False, 1, 0, 18.0, "18", None])
def test_embeddings_kmeans_k_must_be_an_integer_at_least_two(value):
    refused({"embeddings": {"kmeans_k": value}}, "embeddings.kmeans_k", f"an integer >= 2, got {value!r}")


@pytest.mark.parametrize("value", [True, 1.5, "7", None])
def test_embeddings_seed_must_be_an_integer(value):
    refused({"embeddings": {"seed": value}}, "embeddings.seed", f"an integer, got {value!r}")


def test_embeddings_boundaries_allowed():
    e = load(embeddings={"item_source": "simclr", "pca_components": 1, "kmeans_k": 2, "seed": 0}).embeddings
    assert (e.item_source, e.pca_components, e.kmeans_k, e.seed) == ("simclr", 1, 2, 0)
    # no rule ties the two together: 18 clusters over 1 PCA component is a valid (if poor) config
    assert load(embeddings={"pca_components": 1, "kmeans_k": 18}).embeddings.kmeans_k == 18


# ------------------------------------------------------------------------------ features
ALL_USER_FEATURES = [
    "user_id", "handset_maker", "activity_profile", "pos_hist_mean", "neg_hist_mean", "pos_hist_concat",
    "neg_hist_concat", "pos_hist_clusters", "neg_hist_clusters", "user_ctr", "user_timespent",
]
ALL_ITEM_FEATURES = ["item_id", "creator_id", "item_emb", "item_performance", "creator_performance", "item_ctr", "creator_ctr"]


def test_features_every_known_feature_allowed():
    cfg = load(history={"aggregations": ["mean", "concat", "clusters"]}, features={"user": ALL_USER_FEATURES, "item": ALL_ITEM_FEATURES})
    assert cfg.features.user == tuple(ALL_USER_FEATURES) and cfg.features.item == tuple(ALL_ITEM_FEATURES)


@pytest.mark.parametrize("tower", ["user", "item"])
def test_features_a_tower_must_not_be_empty(tower):
    refused({"features": {tower: []}}, f"features.{tower}", "a non-empty list, got []")


@pytest.mark.parametrize("value", [["foo"], ["item_id"], ["user_id", "User_ctr"], ["user_id", ""]])
def test_features_user_must_be_user_features(value):
    refused({"features": {"user": value}}, "features.user", "a list of ('user_id', 'handset_maker', 'activity_profile', ")


@pytest.mark.parametrize("value", [["user_id"], ["item_id", "emb"], ["item_ctr", "pos_hist_mean"]])
def test_features_item_must_be_item_features(value):
    refused({"features": {"item": value}}, "features.item", "a list of ('item_id', 'creator_id', 'item_emb', ")


@pytest.mark.parametrize("tower, value", [("user", "user_id"), ("item", "item_id"), ("user", 3), ("item", None)])
def test_features_a_tower_must_be_a_list(tower, value):
    refused({"features": {tower: value}}, f"features.{tower}", f"a list, got {value!r}")


HIST_FEATURE_AGG = {
    "pos_hist_mean": "mean", "neg_hist_mean": "mean",
    "pos_hist_concat": "concat", "neg_hist_concat": "concat",
    "pos_hist_clusters": "clusters", "neg_hist_clusters": "clusters",
}


@pytest.mark.parametrize("feature", sorted(HIST_FEATURE_AGG))
def test_a_history_feature_needs_its_aggregation(feature):
    agg = HIST_FEATURE_AGG[feature]
    # allowed with exactly its aggregation
    assert feature in load(history={"aggregations": [agg]}, features={"user": ["user_id", feature]}).features.user
    # refused with every other aggregation but not its own
    others = [a for a in ("mean", "concat", "clusters") if a != agg]
    with pytest.raises(ConfigError, match=re.escape(f"config 'features.user' uses ['{feature}'] but 'history.aggregations' lacks '{agg}'")):
        load(history={"aggregations": others}, features={"user": ["user_id", feature]})


def test_an_aggregation_without_its_feature_is_allowed():
    # the history stage may compute an aggregation no tower uses (e.g. clusters for diagnostics)
    assert load(history={"aggregations": ["clusters"]}).features.user == ("user_id",)


# ------------------------------------------------------------------------------ output
@pytest.mark.parametrize("key", ["tfrecord_shards", "vocabulary_min_count"])
@pytest.mark.parametrize("value", [True, 0, -1, 1.5, 4.0, "4", None])
def test_output_must_be_integers_at_least_one(key, value):
    refused({"output": {key: value}}, f"output.{key}", f"an integer >= 1, got {value!r}")


def test_output_one_allowed():
    o = load(output={"tfrecord_shards": 1, "vocabulary_min_count": 1}).output
    assert (o.tfrecord_shards, o.vocabulary_min_count) == (1, 1)


@pytest.mark.parametrize("value", [True, -1, 1.5, 4.0, "4", None])
def test_vocabulary_cap_must_be_an_integer_at_least_zero(value):
    refused({"output": {"vocabulary_max_size": value}}, "output.vocabulary_max_size", f"an integer >= 0 (0: no cap), got {value!r}")


def test_vocabulary_cap_zero_and_positive_allowed():
    assert load(output={"vocabulary_max_size": 0}).output.vocabulary_max_size == 0
    assert load(output={"vocabulary_max_size": 1}).output.vocabulary_max_size == 1


# ------------------------------------------------------------------------------ quality
@pytest.mark.parametrize("value", [True, -0.01, 1.01, math.nan, "0.05", None])
def test_quality_quarantine_share_must_be_in_zero_one(value):
    refused({"quality": {"max_quarantine_share": value}}, "quality.max_quarantine_share", "a number in [0, 1]")


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0])
def test_quality_quarantine_share_boundaries_allowed(value):
    assert load(quality={"max_quarantine_share": value}).quality.max_quarantine_share == value


@pytest.mark.parametrize("key", ["max_fraction_watched", "min_day_volume_ratio", "max_day_volume_ratio"])
@pytest.mark.parametrize("value", [True, -0.1, math.inf, math.nan, "1", None])
def test_quality_bounds_must_be_finite_numbers_at_least_zero(key, value):
    refused({"quality": {key: value}}, f"quality.{key}", "a finite number >= 0 (0 = off)")


def test_quality_volume_band_min_at_most_max():
    assert load(quality={"min_day_volume_ratio": 1.0, "max_day_volume_ratio": 1.0}).quality.min_day_volume_ratio == 1.0
    refused({"quality": {"min_day_volume_ratio": 1.5, "max_day_volume_ratio": 1.0}}, "quality.min_day_volume_ratio", "<= quality.max_day_volume_ratio (1.0), got 1.5")
    # 0 is off: either bound alone is allowed whatever its value
    assert load(quality={"min_day_volume_ratio": 5.0}).quality.max_day_volume_ratio == 0.0
    assert load(quality={"max_day_volume_ratio": 0.5}).quality.min_day_volume_ratio == 0.0


@pytest.mark.parametrize("value", [True, 0, 1.5, "7", None])
def test_quality_lookback_must_be_an_integer_at_least_one(value):
    refused({"quality": {"volume_lookback_days": value}}, "quality.volume_lookback_days", f"an integer >= 1, got {value!r}")


def test_quality_lookback_one_allowed():
    assert load(quality={"volume_lookback_days": 1}).quality.volume_lookback_days == 1


@pytest.mark.parametrize("value", [0, 1, "false", None])
def test_quality_allow_empty_day_must_be_a_bool(value):
    refused({"quality": {"allow_empty_day": value}}, "quality.allow_empty_day", f"true or false, got {value!r}")


# ------------------------------------------------------------------------------ stats
PG = {"source": "postgres", "jdbc_url": "jdbc:postgresql://db:5432/recsys", "user": "twotower"}


@pytest.mark.parametrize("value", ["file", "postgresql", "", None])
def test_stats_source_must_be_known(value):
    refused({"stats": {"source": value}}, "stats.source", "one of ('files', 'postgres')")


@pytest.mark.parametrize("key", ["jdbc_url", "user", "password_env", "password_file", "db_schema", "user_table", "item_table", "creator_table"])
@pytest.mark.parametrize("value", [5, True, None])
def test_stats_text_keys_must_be_strings(key, value):
    refused({"stats": {key: value}}, f"stats.{key}", f"a string, got {value!r}")


@pytest.mark.parametrize("value", [True, 0, 1.5, "10000", None])
def test_stats_fetch_size_must_be_an_integer_at_least_one(value):
    refused({"stats": {"fetch_size": value}}, "stats.fetch_size", f"an integer >= 1, got {value!r}")


@pytest.mark.parametrize("value", ["", "1abc", "pub-lic", "a b", "a.b", "schéma"])
def test_stats_db_schema_must_be_an_identifier(value):
    refused({"stats": {"db_schema": value}}, "stats.db_schema", "an SQL identifier (letters, digits, _)")


@pytest.mark.parametrize("key", ["user_table", "item_table", "creator_table"])
@pytest.mark.parametrize("value", ["user-stats", "1x", "a.b", "x;drop"])
def test_stats_tables_must_be_identifiers(key, value):
    refused({"stats": {key: value}}, f"stats.{key}", 'an SQL identifier (letters, digits, _), or "" for none')


@pytest.mark.parametrize("key", ["user_table", "item_table", "creator_table"])
def test_stats_a_table_may_be_none(key):
    s = load(stats={key: "", "fetch_size": 1, "db_schema": "_s1"}).stats
    assert getattr(s, key) == "" and s.fetch_size == 1 and s.db_schema == "_s1"


def test_stats_postgres_allowed_with_url_user_and_a_password_source():
    s = load(stats=PG).stats
    assert (s.source, s.password_env) == ("postgres", "TWOTOWER_STATS_PASSWORD")
    # a password file instead of the environment variable
    assert load(stats={**PG, "password_env": "", "password_file": "/run/secrets/pg"}).stats.password_file == "/run/secrets/pg"


@pytest.mark.parametrize("url", ["", "postgresql://db/recsys", "jdbc:mysql://db/recsys", "jdbc:postgres://db/recsys"])
def test_stats_postgres_needs_a_postgres_jdbc_url(url):
    refused({"stats": {**PG, "jdbc_url": url}}, "stats.jdbc_url", "a URL jdbc:postgresql://HOST:PORT/DB when stats.source = 'postgres'")


def test_stats_postgres_needs_a_user():
    refused({"stats": {**PG, "user": ""}}, "stats.user", "a database user name when stats.source = 'postgres'")


def test_stats_postgres_needs_a_password_source():
    refused({"stats": {**PG, "password_env": "", "password_file": ""}}, "stats.password_env", "an environment variable name (or stats.password_file a path)")


def test_stats_files_needs_no_url_nor_user():
    assert load(stats={"source": "files", "password_env": ""}).stats.jdbc_url == ""


@pytest.mark.parametrize("url", ["jdbc:postgresql://db/recsys?password=s3cret", "jdbc:postgresql://db/recsys?PASSWORD=s3cret"])
@pytest.mark.parametrize("source", ["postgres", "files"])
def test_stats_a_jdbc_url_never_carries_a_password(url, source):
    with pytest.raises(ConfigError, match=re.escape("config 'stats.jdbc_url' must not carry a password")) as err:
        load(stats={**PG, "source": source, "jdbc_url": url})
    assert "s3cret" not in str(err.value)


# ------------------------------------------------------------------------------ model
@pytest.mark.parametrize("value", ["Dot", "l2", "", None])
def test_model_head_must_be_known(value):
    refused({"model": {"head": value}}, "model.head", "one of ('dot', 'cosine', 'batchnorm')")


@pytest.mark.parametrize("value", ["mse", "BCE", "", None])
def test_model_loss_must_be_known(value):
    refused({"model": {"loss": value}}, "model.loss", "one of ('bce', 'softmax', 'hybrid')")


@pytest.mark.parametrize("head", ["dot", "cosine", "batchnorm"])
@pytest.mark.parametrize("loss", ["bce", "softmax", "hybrid"])
def test_model_every_head_with_every_loss_allowed(head, loss):
    m = load(model={"head": head, "loss": loss}).model
    assert (m.head, m.loss) == (head, loss)


@pytest.mark.parametrize("key", ["embedding_dim", "output_dim", "epochs", "batch_size"])
@pytest.mark.parametrize("value", [True, 0, -1, 1.5, 32.0, "32", None])
def test_model_sizes_must_be_integers_at_least_one(key, value):
    refused({"model": {key: value}}, f"model.{key}", f"an integer >= 1, got {value!r}")


@pytest.mark.parametrize("key", ["embedding_dim", "output_dim", "epochs", "batch_size"])
def test_model_sizes_one_allowed(key):
    assert getattr(load(model={key: 1}).model, key) == 1


@pytest.mark.parametrize("value", [[0], [64, -1], [True], [1.5], ["64"]])
def test_model_hidden_units_must_be_integers_at_least_one(value):
    refused({"model": {"hidden_units": value}}, "model.hidden_units", "a list of integers >= 1")


@pytest.mark.parametrize("value", [64, "64", None])
def test_model_hidden_units_must_be_a_list(value):
    refused({"model": {"hidden_units": value}}, "model.hidden_units", f"a list, got {value!r}")


def test_model_hidden_units_allowed():
    assert load(model={"hidden_units": [1]}).model.hidden_units == (1,)
    assert load(model={"hidden_units": [128, 64]}).model.hidden_units == (128, 64)
    # no hidden layer: the tower is the linear Dense(output_dim) alone (towers.py)
    assert load(model={"hidden_units": []}).model.hidden_units == ()


@pytest.mark.parametrize("key", ["temperature", "learning_rate"])
@pytest.mark.parametrize("value", [True, 0, 0.0, -0.1, "0.1", math.inf, math.nan, None])
def test_model_rates_must_be_finite_positive_numbers(key, value):
    refused({"model": {key: value}}, f"model.{key}", "a finite number > 0")


@pytest.mark.parametrize("key", ["temperature", "learning_rate"])
@pytest.mark.parametrize("value", [1e-9, 1, 0.05])
def test_model_rates_just_above_zero_allowed(key, value):
    assert getattr(load(model={key: value}).model, key) == value


@pytest.mark.parametrize("value", [True, 1.5, "1", None])
def test_model_seed_must_be_an_integer(value):
    refused({"model": {"seed": value}}, "model.seed", f"an integer, got {value!r}")


@pytest.mark.parametrize("key", ["hybrid_weight", "prior_weight"])
@pytest.mark.parametrize("value", [True, False, -0.1, -1, "0.3", math.inf, -math.inf, math.nan, None])
def test_model_loss_and_prior_weights_must_be_finite_numbers_at_least_zero(key, value):
    refused({"model": {key: value}}, f"model.{key}", f"a finite number >= 0, got {value!r}")


@pytest.mark.parametrize("key", ["hybrid_weight", "prior_weight"])
@pytest.mark.parametrize("value", [0, 0.0, 0.3, 1, 2.5])
def test_model_loss_and_prior_weights_zero_and_up_allowed(key, value):
    assert getattr(load(model={key: value}).model, key) == value


@pytest.mark.parametrize("value", ["log", "Log_Count", "", None, True])
def test_model_retrieval_prior_must_be_known(value):
    refused({"model": {"retrieval_prior": value}}, "model.retrieval_prior", "one of ('none', 'log_count')")


def test_model_hybrid_with_log_count_prior_allowed():
    m = load(model={"loss": "hybrid", "hybrid_weight": 1.0, "retrieval_prior": "log_count", "prior_weight": 0.5}).model
    assert (m.loss, m.hybrid_weight, m.retrieval_prior, m.prior_weight) == ("hybrid", 1.0, "log_count", 0.5)


@pytest.mark.parametrize("value", ["own", "Separate", "", None, True])
def test_model_softmax_head_must_be_known(value):
    refused({"model": {"softmax_head": value}}, "model.softmax_head", "one of ('shared', 'separate')")


@pytest.mark.parametrize("value", [0, -0.05, True, "0.05", math.inf, math.nan, None])
def test_model_softmax_temperature_must_be_a_finite_number_above_zero(value):
    refused({"model": {"softmax_temperature": value}}, "model.softmax_temperature", f"a finite number > 0, got {value!r}")


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "8", None])
def test_model_oov_buckets_must_be_an_integer_at_least_one(value):
    refused({"model": {"oov_buckets": value}}, "model.oov_buckets", f"an integer >= 1, got {value!r}")


@pytest.mark.parametrize("value", [-1, 1.5, True, "8", None])
def test_model_sampled_negatives_must_be_an_integer_at_least_zero(value):
    refused({"model": {"sampled_negatives": value}}, "model.sampled_negatives", f"an integer >= 0, got {value!r}")


def test_settings_without_effect_are_ineffective_and_canonical_resets_them():
    from twotower_features.config import ModelConfig

    bce = ModelConfig(loss="bce", hybrid_weight=0.9, softmax_head="separate", softmax_temperature=0.2, prior_weight=3.0, sampled_negatives=8)
    assert bce.ineffective() == {"temperature", "hybrid_weight", "softmax_head", "softmax_temperature", "prior_weight", "sampled_negatives"}
    assert bce.canonical() == ModelConfig(loss="bce")
    assert ModelConfig(head="dot", temperature=0.3).canonical() == ModelConfig(head="dot")  # a dot head has no temperature
    assert ModelConfig(head="cosine", temperature=0.3).canonical() != ModelConfig(head="cosine")
    shared = ModelConfig(head="cosine", loss="hybrid", hybrid_weight=0.9, softmax_temperature=0.2, retrieval_prior="log_count", prior_weight=3.0)
    assert shared.ineffective() == {"softmax_temperature"}
    assert shared.canonical() == ModelConfig(head="cosine", loss="hybrid", hybrid_weight=0.9, retrieval_prior="log_count", prior_weight=3.0)
    separate = ModelConfig(head="cosine", loss="hybrid", softmax_head="separate", softmax_temperature=0.2)
    assert separate.ineffective() == {"prior_weight"} and separate.canonical() == separate
    # the trained towers do not depend on the prior: one training dict for every prior
    assert shared.training_dict() == ModelConfig(head="cosine", loss="hybrid", hybrid_weight=0.9).training_dict()
    assert "retrieval_prior" not in shared.training_dict() and shared.training_dict()["hidden_units"] == [64]


# ------------------------------------------------------------------------------ shipped configs
SHIPPED = {
    "demo", "exp01_base_dedup", "exp02_base_dedup_weighted", "exp03_simclr_history_mean", "exp04_dedup_history_mean",
    "exp05_simclr_history_ids", "exp06_dedup_history_ids", "exp07_simclr_concat5_creator",
    "exp08_simclr_cluster18_creator", "exp09_cluster18_cosine", "exp10_cluster18_batchnorm", "exp11_simclr_history_cosine",
    "exp12_cluster18_creator_rank_retrieve", "exp13_history_cosine_rank_retrieve",
}


def _shipped_files() -> dict[str, Path]:
    # the catalog folder is moving from twotower_features/ to twotower/: take either
    found: dict[str, Path] = {}
    for folder in ("twotower", "twotower_features"):
        for p in sorted((REPO / folder / "experiments").glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


def test_every_seed_experiment_is_shipped():
    assert set(_shipped_files()) == SHIPPED


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_config_round_trips(name):
    cfg = ExperimentConfig.from_file(_shipped_files()[name])
    assert cfg.name == name
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    # as the CLI reloads it: the resolved_config.json written next to the outputs
    again = ExperimentConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and again.config_hash() == cfg.config_hash() and again.data_hash() == cfg.data_hash()


def test_shipped_configs_match_the_spec_catalog():
    f = _shipped_files()
    e1, e7, e8, e9 = (ExperimentConfig.from_file(f[n]) for n in ("exp01_base_dedup", "exp07_simclr_concat5_creator", "exp08_simclr_cluster18_creator", "exp09_cluster18_cosine"))
    assert (e1.window.train_start, e1.window.train_end, e1.window.validation_date) == (dt.date(2026, 6, 20), dt.date(2026, 7, 4), dt.date(2026, 7, 5))
    assert (e1.sampling.user_fraction, e1.embeddings.item_source, e1.embeddings.pca_components) == (0.3, "dedup", 128)
    assert (e7.label.rule, e7.history.aggregations, e7.history.concat_k, e7.embeddings.pca_components) == ("fraction_watched > 0.99 OR liked OR shared", ("concat",), 5, 64)
    assert (e8.history.aggregations, e8.embeddings.kmeans_k, e8.model.head) == (("clusters",), 18, "dot")
    assert e9.model.head == "cosine"


def test_the_rank_and_retrieve_entries_are_seed_features_with_the_demos_model():
    """exp12 and exp13 reuse #8's and #11's feature outputs (same data hash) and train the demo's model."""
    f = _shipped_files()
    demo = ExperimentConfig.from_file(f["demo"]).model
    for seed_exp, new in (("exp08_simclr_cluster18_creator", "exp12_cluster18_creator_rank_retrieve"),
                          ("exp11_simclr_history_cosine", "exp13_history_cosine_rank_retrieve")):
        a, b = ExperimentConfig.from_file(f[seed_exp]), ExperimentConfig.from_file(f[new])
        assert a.data_hash() == b.data_hash()
        assert b.model == demo
        assert (b.model.loss, b.model.softmax_head) == ("hybrid", "separate")


def test_a_non_default_config_round_trips():
    cfg = load(
        name="x", description="d",
        window={"validation_date": "2025-12-31", "train_days": 3},
        history={"n": 7, "aggregations": ["concat", "mean"], "concat_k": 7, "keep_lists": False},
        features={"user": ["user_id", "pos_hist_concat", "neg_hist_mean"], "item": ["creator_id"]},
        model={"hidden_units": [], "loss": "softmax", "head": "batchnorm"},
        stats={**PG, "password_env": "", "password_file": "/p", "item_table": ""},
        quality={"min_day_volume_ratio": 0.5, "max_day_volume_ratio": 2},
    )
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg
    assert ExperimentConfig.from_dict(json.loads(cfg.to_json())) == cfg


# ------------------------------------------------------------------------------ hashes
# one valid change per section
CHANGES = {
    "window": {"train_days": 8},
    "filters": {"item_min_interactions": 4},
    "label": {"rule": "liked"},
    "weight": {"scheme": "engagement_tiers"},
    "sampling": {"user_fraction": 0.5},
    "history": {"n": 50},
    "embeddings": {"pca_components": 64},
    "features": {"item": ["item_id"]},
    "output": {"tfrecord_shards": 8},
    "quality": {"max_quarantine_share": 0.1},
    "stats": {"fetch_size": 500},
    "model": {"epochs": 4},
}


def test_every_section_has_a_change():
    assert sorted(CHANGES) == SECTIONS == sorted(ExperimentConfig.from_dict({}).to_dict().keys() - {"name", "description"})


def test_hashes_are_stable_and_independent_of_key_order():
    a = ExperimentConfig.from_dict({"name": "n", "window": {"train_days": 8, "validation_date": "2026-07-05"}, "model": {"epochs": 4}})
    b = ExperimentConfig.from_dict({"model": {"epochs": 4}, "window": {"validation_date": dt.date(2026, 7, 5), "train_days": 8}, "name": "n"})
    assert a.config_hash() == b.config_hash() and a.data_hash() == b.data_hash()
    assert re.fullmatch(r"[0-9a-f]{16}", a.config_hash()) and re.fullmatch(r"[0-9a-f]{16}", a.data_hash())


@pytest.mark.parametrize("section", SECTIONS)
def test_config_hash_changes_with_every_section(section):
    base = ExperimentConfig.from_dict({})
    changed = load(**{section: CHANGES[section]})
    assert changed != base
    assert changed.config_hash() != base.config_hash()


@pytest.mark.parametrize("section", [s for s in SECTIONS if s != "model"])
def test_data_hash_changes_with_every_section_but_model(section):
    base = ExperimentConfig.from_dict({})
    assert load(**{section: CHANGES[section]}).data_hash() != base.data_hash()


def test_data_hash_ignores_name_description_and_model():
    # data_hash: "everything that decides the feature outputs (not the model section)"
    base = ExperimentConfig.from_dict({})
    for other in (load(description="other words"), load(name="renamed"), load(model=CHANGES["model"])):
        assert other.data_hash() == base.data_hash()


def test_config_hash_is_the_hash_of_the_whole_resolved_config():
    # config_hash hashes to_json(), the resolved config saved next to every output, which holds
    # name and description too: a description edit changes config_hash (and not data_hash)
    base = ExperimentConfig.from_dict({})
    described = load(description="other words")
    assert described.config_hash() != base.config_hash()
    assert described.data_hash() == base.data_hash()
    assert load(name="renamed").config_hash() != base.config_hash()
