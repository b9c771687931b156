"""Stage keys: which experiments share which feature stages, and that a key follows exactly
the config sections, derived facts and inputs of its stage (the stage table)."""
from __future__ import annotations

import dataclasses

from twotower.cli import EXPERIMENTS_DIR
from twotower.fingerprints import stage_keys
from twotower.stages import NAMES, STAGES
from twotower_features.config import ExperimentConfig

INPUTS = {"interactions": {"path": "/data/interactions", "format": "parquet", "fingerprint": "abc"}}


def _catalog(name: str) -> ExperimentConfig:
    return ExperimentConfig.from_file(EXPERIMENTS_DIR / f"{name}.toml")


def _keys(name: str, inputs=INPUTS) -> dict[str, str]:
    return stage_keys(_catalog(name), inputs)


def _shared(a: dict, b: dict) -> list[str]:
    return [s for s in NAMES if a[s] == b[s]]


CATALOG = {
    1: "exp01_base_dedup", 2: "exp02_base_dedup_weighted", 3: "exp03_simclr_history_mean", 4: "exp04_dedup_history_mean",
    5: "exp05_simclr_history_ids", 6: "exp06_dedup_history_ids", 7: "exp07_simclr_concat5_creator",
    8: "exp08_simclr_cluster18_creator", 9: "exp09_cluster18_cosine", 10: "exp10_cluster18_batchnorm", 11: "exp11_simclr_history_cosine",
}


def test_catalog_stage_sharing():
    k = {i: _keys(n) for i, n in CATALOG.items()}
    every = list(NAMES)
    first3 = ["prepare", "embeddings", "examples"]
    # 8, 9, 10 differ only in the model head: one feature folder
    assert _shared(k[8], k[9]) == every and _shared(k[8], k[10]) == every
    # 3, 5, 11: same window, label, weight, sampling, history and simclr embeddings; tower features differ
    assert _shared(k[3], k[5]) == first3 and _shared(k[3], k[11]) == first3 and _shared(k[5], k[11]) == first3
    assert _shared(k[4], k[6]) == first3
    # 3 and 4 need different embedding sources, whose NaN rows prepare quarantines: nothing shared
    assert _shared(k[3], k[4]) == []
    # 7 and 8: same label and sources (prepare); concat needs the history matrix, clusters need KMeans
    assert _shared(k[7], k[8]) == ["prepare"]
    # 1 and 2 differ in the sample weight, applied in prepare
    assert _shared(k[1], k[2]) == []
    # stages built for the whole catalog: prepare {1} {2} {3,5,11} {4,6} {7,8,9,10};
    # embeddings and examples the same but 7 apart from 8-10; tfrecords all but 9 and 10
    assert [len({v[s] for v in k.values()}) for s in NAMES] == [5, 6, 6, 9]


def test_every_config_section_is_keyed_by_a_stage():
    sections = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"name", "description", "model"}
    keyed = {s for stage in STAGES for s in stage.sections}
    assert keyed == sections  # a new section must be given to the stages that read it


def test_keys_follow_the_sections_each_stage_reads():
    base = _catalog("exp03_simclr_history_mean")
    kb = stage_keys(base, INPUTS)

    def changed(**sections) -> list[str]:
        cfg = base
        for section, values in sections.items():
            cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)})
        kc = stage_keys(cfg, INPUTS)
        return [s for s in NAMES if kc[s] != kb[s]]

    assert changed(model={"head": "cosine", "epochs": 9}) == []
    assert stage_keys(dataclasses.replace(base, name="other", description="x"), INPUTS) == kb
    # the examples carry the users' columns the towers use (features.user), nothing per item
    assert changed(features={"user": ("user_id", "handset_maker", "activity_profile")}) == ["tfrecords"]
    assert changed(features={"user": ("user_id", "handset_maker")}) == ["examples", "tfrecords"]
    assert changed(features={"item": ("item_id",)}) == ["tfrecords"]
    assert changed(output={"tfrecord_shards": 7}) == ["tfrecords"]
    assert changed(history={"n": 5}) == ["examples", "tfrecords"]
    assert changed(sampling={"user_fraction": 0.5}) == ["examples", "tfrecords"]
    assert changed(stats={"user_table": "other_user_stats"}) == ["examples", "tfrecords"]
    assert changed(embeddings={"pca_components": 64}) == ["embeddings", "examples", "tfrecords"]
    assert changed(label={"rule": "liked"}) == list(NAMES)
    assert changed(window={"train_days": 8}) == list(NAMES)
    other_inputs = {"interactions": {**INPUTS["interactions"], "fingerprint": "abd"}}
    assert all(stage_keys(base, other_inputs)[s] != kb[s] for s in NAMES)


def test_keys_follow_the_inputs_each_stage_reads():
    base = _catalog("exp08_simclr_cluster18_creator")
    inputs = {t: {"path": f"/data/{t}", "format": "parquet", "files": 1, "fingerprint": "f0"}
              for t in ("interactions", "items", "users", "user_stats", "item_stats", "creator_stats")}
    kb = stage_keys(base, inputs)

    def changed(table: str, **fields) -> list[str]:
        other = {**inputs, table: {**inputs[table], **fields}}
        kc = stage_keys(base, other)
        return [s for s in NAMES if kc[s] != kb[s]]

    assert changed("interactions", fingerprint="f1") == list(NAMES)
    assert changed("items", fingerprint="f1") == list(NAMES)
    assert changed("users", fingerprint="f1") == ["examples", "tfrecords"]  # features.user names handset_maker
    # without the users' columns in features.user, the users table is not read: its fingerprint is not keyed
    no_users = dataclasses.replace(base, features=dataclasses.replace(
        base.features, user=tuple(c for c in base.features.user if c not in ("handset_maker", "activity_profile"))))
    other_users = {**inputs, "users": {**inputs["users"], "fingerprint": "f1"}}
    keys_no_users = stage_keys(no_users, inputs)
    assert stage_keys(no_users, other_users) == keys_no_users
    assert keys_no_users["examples"] != kb["examples"]
    assert changed("user_stats", fingerprint="f1") == ["examples", "tfrecords"]
    assert changed("creator_stats", fingerprint="f1") == ["examples", "tfrecords"]
    # what the data is, not where it lives: a moved input folder rebuilds nothing
    assert changed("interactions", path="/elsewhere/interactions") == []
