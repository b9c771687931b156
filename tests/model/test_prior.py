"""The retrieval prior (``prior.py``): inner products gain exactly ``w * log1p(count)``, and a
model trained with it scores the impressions as one trained without it."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from twotower_model import prior as tprior


def test_prior_adds_log1p_count_times_weight_to_every_inner_product():
    users = np.array([[1.0, -2.0], [0.5, 0.25], [0.0, 3.0]], np.float32)
    items = np.array([[2.0, 1.0], [-1.0, 0.5], [0.0, 0.0], [4.0, -1.0]], np.float32)
    ids = np.array(["a", "b", "c", "zz"], dtype=object)
    counts = pd.Series([9.0, 0.0, 3.0], index=pd.Index(["b", "a", "c"]))  # "zz" has no count: 0
    prior = tprior.RetrievalPrior("log_count", 0.5)
    # written out: 0.5 * log(1 + count) for a, b, c, zz
    expected_prior = np.array([0.5 * math.log(1), 0.5 * math.log(10), 0.5 * math.log(4), 0.0])
    values = tprior.item_prior(ids, counts, prior)
    np.testing.assert_allclose(values, expected_prior, rtol=1e-6)
    queries = np.hstack([users, np.ones((len(users), 1), np.float32)])  # the user tower's retrieval query
    got = queries @ tprior.with_item_prior(items, values).T
    expected = users.astype(np.float64) @ items.T.astype(np.float64) + expected_prior[None, :]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(tprior.without_item_prior(tprior.with_item_prior(items, values), prior), items)


def test_item_prior_needs_counts_and_an_active_kind():
    with pytest.raises(FileNotFoundError, match="item frequency file"):
        tprior.item_prior(["a"], None, tprior.RetrievalPrior("log_count"))
    with pytest.raises(ValueError, match="no item prior"):
        tprior.item_prior(["a"], pd.Series([1.0], index=["a"]), tprior.RetrievalPrior())


def test_model_prior_of_a_folder(tmp_path):
    assert tprior.model_prior(tmp_path) == tprior.RetrievalPrior()  # no config: none
    (tmp_path / "resolved_model_config.json").write_text(json.dumps({"loss": "bce"}))
    assert tprior.model_prior(tmp_path) == tprior.RetrievalPrior()  # trained before the prior
    (tmp_path / "resolved_model_config.json").write_text(json.dumps({"retrieval_prior": "log_count", "prior_weight": 2}))
    assert tprior.model_prior(tmp_path) == tprior.RetrievalPrior("log_count", 2.0)


@pytest.fixture(scope="module")
def with_and_without_prior(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from twotower_features.config import ModelConfig
    from twotower_model import evaluate as tevaluate
    from twotower_model import train as ttrain

    from .tiny_features import SMALL, write_features

    root = tmp_path_factory.mktemp("feat_prior")
    written = write_features(root)
    out = {}
    for name, prior in (("none", "none"), ("log_count", "log_count")):
        model_dir = tmp_path_factory.mktemp(f"model_{name}")
        cfg = ModelConfig(head="dot", epochs=2, retrieval_prior=prior, prior_weight=0.7, **SMALL)
        ttrain.train(root, model_dir, cfg, progress=lambda s: None)
        eval_dir = tmp_path_factory.mktemp(f"eval_{name}")
        result = tevaluate.evaluate(str(root), str(model_dir), str(eval_dir), ks=(3, 10), coverage_ks=(1, 5))
        out[name] = (model_dir, eval_dir, result)
    return root, written, out


def test_prior_leaves_impression_metrics_alone_and_shifts_catalog_scores(with_and_without_prior):
    from collections import Counter

    from twotower_model.items import read_item_embeddings

    from .tiny_features import ITEMS

    root, written, out = with_and_without_prior
    (dir0, eval0, res0), (dir1, eval1, res1) = out["none"], out["log_count"]
    # the impression rows (AUC and the other seed metrics) are the same numbers
    assert res1["rows"]["model"] == res0["rows"]["model"]
    p0 = pd.read_parquet(eval0 / "predictions.parquet")
    p1 = pd.read_parquet(eval1 / "predictions.parquet")
    pd.testing.assert_frame_equal(p0, p1)
    # the item file has one more column: 0.7 * log(1 + train count), counted here from the frames
    ids0, emb0 = read_item_embeddings(dir0)
    ids1, emb1 = read_item_embeddings(dir1)
    assert list(ids0) == list(ids1) == ITEMS
    assert emb1.shape == (emb0.shape[0], emb0.shape[1] + 1)
    np.testing.assert_array_equal(emb1[:, :-1], emb0)
    train_counts = Counter(written["train"]["item_id"])
    np.testing.assert_allclose(emb1[:, -1], [0.7 * math.log1p(train_counts[i]) for i in ITEMS], rtol=1e-6)
    assert res1["diagnostics"]["retrieval_prior"] == {"kind": "log_count", "weight": 0.7}
    assert res0["diagnostics"]["retrieval_prior"] == {"kind": "none", "weight": 0.7}
    # the neighbourhoods are those of the towers' own vectors, prior or not
    for k in (3, 10):
        assert res1["diagnostics"]["model"][f"cluster_agreement@{k}"] == res0["diagnostics"]["model"][f"cluster_agreement@{k}"]


def test_catalog_recall_ranks_by_score_plus_prior(with_and_without_prior):
    """recall@3 of the prior model's lists, recomputed with numpy: the user's tower vector dotted
    with the item's tower vector, plus 0.7 * log1p(train count) counted from the frames."""
    from collections import Counter

    from twotower_features.spec import FeatureSpec
    from twotower_model import evaluate as tevaluate
    from twotower_model.items import read_item_embeddings

    from .tiny_features import ITEMS

    root, written, out = with_and_without_prior
    model_dir, eval_dir, result = out["log_count"]
    preds = pd.read_parquet(eval_dir / "predictions.parquet")
    chosen = tevaluate.choose_user_rows(preds)
    users = tevaluate.user_embeddings_at_rows(model_dir, root, FeatureSpec.load(root), chosen["row"].to_numpy(), len(preds))
    _, item_emb = read_item_embeddings(out["none"][0])  # the towers' own vectors
    train_counts = Counter(written["train"]["item_id"])
    bonus = np.array([0.7 * math.log1p(train_counts[i]) for i in ITEMS])
    scores = users.astype(np.float64) @ item_emb.T.astype(np.float64) + bonus[None, :]
    recalls = []
    for u, row in zip(chosen["user_id"], scores):
        pos = set(preds.loc[(preds["user_id"] == u) & (preds["label"] > 0), "item_id"])
        if not pos:
            continue
        top = sorted(range(len(ITEMS)), key=lambda j: (-row[j], j))[:3]
        recalls.append(len(pos & {ITEMS[j] for j in top}) / len(pos))
    assert result["diagnostics"]["model"]["recall@3"] == pytest.approx(np.mean(recalls), abs=1e-9)
    # the prior does reorder: some user's top 3 differs from the towers' alone
    plain = users.astype(np.float64) @ item_emb.T.astype(np.float64)
    assert any(
        sorted(range(len(ITEMS)), key=lambda j: (-a[j], j))[:3] != sorted(range(len(ITEMS)), key=lambda j: (-b[j], j))[:3]
        for a, b in zip(scores, plain)
    )


def test_exported_user_tower_serves_the_prior_column(with_and_without_prior):
    """The prior model's user tower answers the retrieval signature with its own vector and 1.0
    appended; the model without a prior has no such signature (its query is the user vector)."""
    from twotower_features.spec import FeatureSpec
    from twotower_model import evaluate as tevaluate
    root, _, out = with_and_without_prior
    (dir0, eval0, _), (dir1, _, _) = out["none"], out["log_count"]
    from twotower_model.layout import RETRIEVAL_SIGNATURE

    assert RETRIEVAL_SIGNATURE in tf_signatures(dir1 / "user_tower") and RETRIEVAL_SIGNATURE not in tf_signatures(dir0 / "user_tower")
    preds = pd.read_parquet(eval0 / "predictions.parquet")
    rows = tevaluate.choose_user_rows(preds)["row"].to_numpy()
    spec = FeatureSpec.load(root)
    users = tevaluate.user_embeddings_at_rows(dir1, root, spec, rows, len(preds))
    queries = tevaluate.user_embeddings_at_rows(dir1, root, spec, rows, len(preds), side="query")
    assert queries.shape == (len(rows), users.shape[1] + 1)
    np.testing.assert_array_equal(queries[:, :-1], users)
    np.testing.assert_array_equal(queries[:, -1], np.ones(len(rows), np.float32))
    np.testing.assert_array_equal(tevaluate.user_embeddings_at_rows(dir0, root, spec, rows, len(preds), side="query"), users)


def test_set_retrieval_prior_on_a_linked_copy_equals_training_with_it(with_and_without_prior, tmp_path):
    """The no-prior model, hard-linked file by file into a new folder and given the prior there,
    is the prior model trained directly: same item file, same catalog diagnostics; the source
    folder's bytes are unchanged (nothing written through a link)."""
    import dataclasses
    import hashlib
    import os

    from twotower_features.config import ModelConfig
    from twotower_model import evaluate as tevaluate
    from twotower_model import train as ttrain
    from twotower_model.items import read_item_embeddings

    from .tiny_features import SMALL

    root, _, out = with_and_without_prior
    src, (dir1, _, res1) = out["none"][0], out["log_count"]

    def digests(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digests(src)
    dst = tmp_path / "model"
    for p in sorted(src.rglob("*")):
        target = dst / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(p, target)
    cfg = ModelConfig(head="dot", epochs=2, retrieval_prior="log_count", prior_weight=0.7, **SMALL)
    assert ttrain.set_retrieval_prior(dst, root, cfg) == {"kind": "log_count", "weight": 0.7}
    assert digests(src) == before
    ids, emb = read_item_embeddings(dst)
    ids1, emb1 = read_item_embeddings(dir1)
    assert list(ids) == list(ids1)
    np.testing.assert_array_equal(emb, emb1)
    res = tevaluate.evaluate(str(root), str(dst), str(tmp_path / "eval"), ks=(3, 10), coverage_ks=(1, 5))
    for k in ("recall@3", "recall@10", "ndcg@3"):
        assert res["diagnostics"]["model"][k] == res1["diagnostics"]["model"][k]
    # and back to no prior: the query is the user vector again, the item file the towers' own
    ttrain.set_retrieval_prior(dst, root, dataclasses.replace(cfg, retrieval_prior="none"))
    np.testing.assert_array_equal(read_item_embeddings(dst)[1], read_item_embeddings(src)[1])
    # a config that trains other towers is refused, naming the setting
    with pytest.raises(ValueError, match="epochs"):
        ttrain.set_retrieval_prior(dst, root, dataclasses.replace(cfg, epochs=3))


def tf_signatures(path) -> set[str]:
    import tensorflow as tf

    return set(tf.saved_model.load(str(path)).signatures)
