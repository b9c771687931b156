"""``evaluate`` on a tiny trained model: the full-catalog diagnostics in metrics.json against a
brute-force recomputation from the saved towers, with plain Python loops over users.

The fixture is ``tiny_features.write_features`` (40 users, 30 items, two latent groups) plus an
``artifacts/items.parquet`` written here with a content vector, a cluster and a creator per item.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.spec import FeatureSpec  # noqa: E402
from twotower_model import evaluate as tevaluate  # noqa: E402
from twotower_model import items as titems  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402

from .tiny_features import ITEMS, SMALL, write_features  # noqa: E402

KS = (3, 10)
CURVE_KS = (1, 5, 10, 50)  # 50 > 30 items: left out of the curve


def _add_items_artifact(root, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    content = rng.normal(size=(len(ITEMS), 4)).astype(np.float32)
    clusters = (np.arange(len(ITEMS)) % 3).astype(np.int32)
    creators = np.array([f"c{i % 4}" for i in range(len(ITEMS))], dtype=object)
    (root / "artifacts").mkdir(exist_ok=True)
    # rows in reverse order: the evaluator must align them by item_id, not by position
    rev = slice(None, None, -1)
    table = pa.table({
        "item_id": pa.array(ITEMS[rev], pa.string()),
        "creator_id": pa.array(creators[rev].tolist(), pa.string()),
        "dedup_pca": pa.array(content[rev].tolist(), pa.list_(pa.float32())),
        "item_cluster": pa.array(clusters[rev]),
    })
    pq.write_table(table, root / "artifacts" / "items.parquet")
    spec = FeatureSpec.load(root)
    dataclasses.replace(spec, extras={**spec.extras, "items_file": "artifacts/items.parquet"}).save(root)
    return {"content": content, "clusters": clusters, "creators": creators}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat_eval")
    written = write_features(root)
    artifact = _add_items_artifact(root)
    model_dir = tmp_path_factory.mktemp("model_eval")
    ttrain.train(root, model_dir, ModelConfig(head="dot", epochs=3, **SMALL), progress=lambda s: None)
    out = tmp_path_factory.mktemp("eval")
    result = tevaluate.evaluate(str(root), str(model_dir), str(out), ks=KS, coverage_ks=CURVE_KS)
    return root, written, artifact, model_dir, out, result


def _tower(model_dir, side):
    return tf.saved_model.load(str(model_dir / f"{side}_tower")).signatures["serving_default"]


def _brute_force(written, artifact, model_dir):
    """Everything recomputed from the written frames and the exported towers, one user at a time."""
    val = written["validation"]
    user_sig, item_sig = _tower(model_dir, "user"), _tower(model_dir, "item")
    user_inputs = sorted(user_sig.structured_input_signature[1])
    item_inputs = sorted(item_sig.structured_input_signature[1])
    cat = written["catalog"]
    item_emb = item_sig(**{n: tf.constant(cat[n]) for n in item_inputs})["embedding"].numpy().astype(np.float64)

    first: dict[str, int] = {}
    for i in range(len(val["user_id"])):
        u = val["user_id"][i]
        key = (val["event_ts"][i], val["item_id"][i], i)
        if u not in first or key < (val["event_ts"][first[u]], val["item_id"][first[u]], first[u]):
            first[u] = i
    users = sorted(first)
    positives = {u: set() for u in users}
    for i in range(len(val["user_id"])):
        if val["label"][i] > 0:
            positives[val["user_id"][i]].add(ITEMS.index(val["item_id"][i]))

    tops, first_scores = {}, {}
    for u in users:
        i = first[u]
        vec = user_sig(**{n: tf.constant(val[n][i:i + 1]) for n in user_inputs})["embedding"].numpy()[0].astype(np.float64)
        scores = [float(vec @ item_emb[j]) for j in range(len(ITEMS))]
        ranked = sorted(range(len(ITEMS)), key=lambda j: (-scores[j], j))
        tops[u] = ranked
        first_scores[u] = (scores, ITEMS.index(val["item_id"][i]))

    train_counts = Counter(written["train"]["item_id"])
    popular = sorted(range(len(ITEMS)), key=lambda j: (-train_counts[ITEMS[j]], j))
    return users, positives, tops, popular, first_scores, item_emb


def _list_metrics(lists: dict[str, list[int]], positives, k, content):
    recalls, ndcgs = [], []
    for u, ranked in lists.items():
        pos = positives[u]
        if not pos:
            continue
        hits = [1 if j in pos else 0 for j in ranked[:k]]
        recalls.append(sum(hits) / len(pos))
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(pos))))
        ndcgs.append(dcg / ideal)
    recommended = Counter(j for ranked in lists.values() for j in ranked[:k])
    counts = [recommended.get(j, 0) for j in range(len(ITEMS))]
    n = len(counts)
    gini = sum(abs(a - b) for a in counts for b in counts) / (2 * n * n * (sum(counts) / n))
    pairs = list(itertools.combinations(list(lists.values()), 2))
    overlap = sum(len(set(a[:k]) & set(b[:k])) / k for a, b in pairs) / len(pairs)
    unit = content / np.linalg.norm(content, axis=1, keepdims=True)
    sims = []
    for ranked in lists.values():
        s = [float(unit[a] @ unit[b]) for a, b in itertools.combinations(ranked[:k], 2)]
        sims.append(sum(s) / len(s))
    return {
        f"recall@{k}": sum(recalls) / len(recalls),
        f"ndcg@{k}": sum(ndcgs) / len(ndcgs),
        f"coverage@{k}": len(recommended) / len(ITEMS),
        f"gini@{k}": gini,
        f"overlap@{k}": overlap,
        f"intra_list_similarity@{k}": sum(sims) / len(sims),
    }


def test_diagnostics_match_brute_force(evaluated):
    root, written, artifact, model_dir, out, result = evaluated
    users, positives, tops, popular, first_scores, item_emb = _brute_force(written, artifact, model_dir)
    diag = result["diagnostics"]
    assert diag["k"] == [3, 10] and diag["catalog_size"] == len(ITEMS)
    assert diag["users"] == len(users) == diag["users_in_validation"]
    assert diag["users_scored"] == sum(1 for u in users if positives[u])
    assert diag["content_embedding"] == "dedup_pca" and diag["positives_outside_catalog"] == 0
    # the K-th and (K+1)-th scores are apart, so the brute-force top-K sets are unambiguous
    for u in users:
        s = sorted(first_scores[u][0], reverse=True)
        assert min(s[2] - s[3], s[9] - s[10]) > 1e-5, u

    model_lists = {u: tops[u] for u in users}
    pop_lists = {u: popular for u in users}
    for k in KS:
        for name, lists in (("model", model_lists), ("popularity", pop_lists)):
            expected = _list_metrics(lists, positives, k, artifact["content"])
            for key, value in expected.items():
                assert diag[name][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (name, key)
    # the popularity lists are one list: overlap 1, coverage K / n, Gini 1 - K / n
    assert diag["popularity"]["coverage@3"] == pytest.approx(3 / 30)
    assert diag["popularity"]["gini@3"] == pytest.approx(1 - 3 / 30)


def test_user_embedding_is_that_of_the_first_validation_example(evaluated):
    """The user tower's embedding dotted with the item's reproduces the score that predict
    gave the user's first validation row."""
    root, written, artifact, model_dir, out, result = evaluated
    preds = pd.read_parquet(out / "predictions.parquet")
    chosen = tevaluate.choose_user_rows(preds)
    spec = FeatureSpec.load(root)
    emb = tevaluate.user_embeddings_at_rows(model_dir, root, spec, chosen["row"].to_numpy(), len(preds))
    ids, item_emb = titems.read_item_embeddings(model_dir)
    item_pos = pd.Index(ids).get_indexer(preds["item_id"].to_numpy()[chosen["row"]])
    expected = preds["score"].to_numpy()[chosen["row"]]
    np.testing.assert_allclose((emb * item_emb[item_pos]).sum(axis=1), expected, rtol=1e-4, atol=1e-5)
    _, _, _, _, first_scores, _ = _brute_force(written, artifact, model_dir)
    for u, row in zip(chosen["user_id"], chosen["row"]):
        scores, item = first_scores[u]
        assert preds["score"][row] == pytest.approx(scores[item], rel=1e-4, abs=1e-5)


def test_neighbourhood_agreement_matches_brute_force(evaluated):
    root, written, artifact, model_dir, out, result = evaluated
    ids, item_emb = titems.read_item_embeddings(model_dir)
    assert list(ids) == ITEMS
    unit = item_emb / np.linalg.norm(item_emb, axis=1, keepdims=True)
    diag = result["diagnostics"]
    for name, labels in (("cluster", artifact["clusters"]), ("creator", artifact["creators"])):
        for k in KS:
            agree = 0
            for q in range(len(ITEMS)):
                others = sorted((j for j in range(len(ITEMS)) if j != q), key=lambda j: (-float(unit[q] @ unit[j]), j))
                agree += sum(labels[j] == labels[q] for j in others[:k])
            assert diag["model"][f"{name}_agreement@{k}"] == pytest.approx(agree / (k * len(ITEMS))), (name, k)
        shares = Counter(labels.tolist())
        chance = sum((c / len(ITEMS)) ** 2 for c in shares.values())
        assert diag[f"{name}_agreement_chance"] == pytest.approx(chance)
        assert diag["random"][f"{name}_agreement@3"] == pytest.approx(chance)
        assert diag["popularity"][f"{name}_agreement@3"] is None
    # 10 items of each of 3 clusters -> chance 1/3; creators: 8, 8, 7, 7 of 30
    assert diag["cluster_agreement_chance"] == pytest.approx(1 / 3)
    assert diag["cluster_source"] == "artifacts/items.parquet:item_cluster"


def test_random_reference_and_coverage_curve(evaluated):
    _, _, _, _, out, result = evaluated
    diag, curve = result["diagnostics"], result["coverage_curve"]
    assert curve["k"] == [1, 5, 10]
    for name in ("model", "popularity", "random"):
        assert curve[name] == sorted(curve[name]), name  # coverage grows with K
        assert curve[name][2] == pytest.approx(diag[name]["coverage@10"]), name
    assert curve["popularity"] == pytest.approx([1 / 30, 5 / 30, 10 / 30])
    # 40 users x 10 random items of 30: P(item never drawn) = (2/3)^40 ~ 1e-7 -> all covered
    assert diag["random"]["coverage@10"] == 1.0
    # random lists overlap K / n on average: 10 / 30
    assert diag["random"]["overlap@10"] == pytest.approx(1 / 3, abs=0.05)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["coverage_curve"]["k"] == curve["k"]
    assert on_disk["coverage_curve"]["model"] == pytest.approx(curve["model"])
    assert on_disk["diagnostics"]["model"]["recall@10"] == pytest.approx(diag["model"]["recall@10"])
    assert set(on_disk) == {"experiment", "rows", "diagnostics", "coverage_curve"}


def test_format_diagnostics_prints_every_row(evaluated):
    text = tevaluate.format_diagnostics(evaluated[-1]["diagnostics"])
    lines = text.splitlines()
    for k in KS:
        assert any(line.startswith(f"@{k} ") and "recall" in line for line in lines)
    assert sum(line.startswith("model ") for line in lines) == 2
    assert sum(line.startswith("popularity ") for line in lines) == 2
    assert "cluster agreement by chance 0.3333" in text


def test_choose_user_rows_by_hand():
    preds = pd.DataFrame({
        "user_id": ["b", "a", "a", "b", "a", "c"],
        "event_ts": [5, 7, 3, 5, 3, 1],
        "item_id": ["i2", "i1", "i9", "i1", "i4", "i1"],
    })
    # a: ts 3 at rows 2 (i9) and 4 (i4) -> i4 wins, row 4; b: ts 5 at rows 0 (i2), 3 (i1) -> row 3
    got = tevaluate.choose_user_rows(preds)
    assert got["user_id"].tolist() == ["a", "b", "c"] and got["row"].tolist() == [4, 3, 5]
    sampled = tevaluate.choose_user_rows(preds, max_users=2, seed=0)
    assert len(sampled) == 2 and set(sampled["user_id"]) < {"a", "b", "c"}
    assert sampled["user_id"].is_monotonic_increasing
    assert dict(zip(sampled["user_id"], sampled["row"])).items() <= dict(zip(got["user_id"], got["row"])).items()


def test_positives_outside_catalog_are_misses():
    preds = pd.DataFrame({
        "user_id": ["a", "a", "a", "b", "b", "c"],
        "item_id": ["x", "new", "y", "y", "y", "x"],
        "label": [1.0, 1.0, 0.0, 1.0, 1.0, 0.0],
    })
    positives, outside = tevaluate._positives(preds, np.array(["a", "b", "c"], dtype=object), pd.Index(["x", "y", "z"]))
    # a: x (0) and an item outside the catalog (index 3 = n_items); b: y once; c: none
    assert [sorted(p.tolist()) for p in positives] == [[0, 3], [1], []]
    assert outside == 1


def test_past_the_exact_limit_the_model_lists_come_from_the_index(evaluated):
    """With the exact limit below the catalog the model's lists come from the IVF index
    ``twotower export`` builds; on 30 items it has one cell and finds the exact lists, so the
    figures are equal."""
    root, written, artifact, model_dir, out, result = evaluated
    preds = pd.read_parquet(out / "predictions.parquet")
    assert result["diagnostics"]["retrieval_index"] == {"kind": "exact", "exact_limit": tevaluate.I.EXACT_LIMIT}
    diag, curve = tevaluate.catalog_diagnostics(root, model_dir, preds, ks=KS, coverage_ks=CURVE_KS, exact_limit=29)
    assert diag["retrieval_index"]["kind"] == "ivf" and diag["retrieval_index"]["items"] == 30
    for k in KS:
        for name in ("recall", "ndcg", "coverage"):
            assert diag["model"][f"{name}@{k}"] == pytest.approx(result["diagnostics"]["model"][f"{name}@{k}"], abs=1e-12), (name, k)
    assert curve["model"] == result["coverage_curve"]["model"]
