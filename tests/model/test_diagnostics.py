"""Embedding diagnostics on tiny hand-made embeddings with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest

from twotower_model.diagnostics import (
    catalog_recall_ndcg,
    coverage_at_k,
    gini_of_topk,
    intra_list_similarity,
    mean_pairwise_overlap,
    neighbourhood_agreement,
    neighbourhood_agreements,
    random_topk,
    topk_from_embeddings,
    topk_lists_report,
)

# item scores for user (1, 0): 1, 0, 0.5, 2, -1 ; for user (0, 1): 0, 1, 0.5, 0, 3
ITEMS = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 0.0], [-1.0, 3.0]])
USERS = np.array([[1.0, 0.0], [0.0, 1.0]])


def test_topk_by_hand():
    top = topk_from_embeddings(USERS, ITEMS, 3)
    assert top.tolist() == [[3, 0, 2], [4, 1, 2]]
    assert topk_from_embeddings(USERS, ITEMS, 3, batch_size=1).tolist() == top.tolist()
    excluded = topk_from_embeddings(USERS, ITEMS, 2, exclude=[[3], None])
    assert excluded.tolist() == [[0, 2], [4, 1]]


def test_topk_empty_slots_when_exclusions_leave_too_few():
    top = topk_from_embeddings(USERS, ITEMS, 4, exclude=[[0, 1, 2], []])
    # user 0 keeps items 3 (score 2) and 4 (score -1) only
    assert top.tolist() == [[3, 4, -1, -1], [4, 1, 2, 0]]


def test_topk_matches_full_sort_on_random_data():
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(37, 8)), rng.normal(size=(211, 8))
    exclude = [rng.choice(211, size=5, replace=False) for _ in range(37)]
    scores = users @ items.T
    for u, ex in enumerate(exclude):
        scores[u, ex] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    got = topk_from_embeddings(users, items, 10, exclude=exclude, batch_size=4)
    assert np.array_equal(got, expected)
    assert np.array_equal(topk_from_embeddings(users, items, 211)[:, :10], np.argsort(-(users @ items.T), axis=1)[:, :10])


def test_topk_argument_errors():
    with pytest.raises(ValueError, match=r"'k' must be an integer in \[1, n_items=5\]"):
        topk_from_embeddings(USERS, ITEMS, 6)
    with pytest.raises(ValueError, match="one dimension, got 3 and 2"):
        topk_from_embeddings(np.ones((2, 3)), ITEMS, 2)
    with pytest.raises(ValueError, match=r"'exclude' must have one entry per user \(2\)"):
        topk_from_embeddings(USERS, ITEMS, 2, exclude=[[1]])
    with pytest.raises(ValueError, match=r"'exclude' must hold item indices in \[0, 5\)"):
        topk_from_embeddings(USERS, ITEMS, 2, exclude=[[9], []])
    with pytest.raises(ValueError, match="'item_emb' must be finite"):
        topk_from_embeddings(USERS, np.full((3, 2), np.nan), 2)


def test_catalog_recall_ndcg_by_hand():
    top = np.array([[3, 0, 2], [4, 1, 2], [1, 2, 3]])
    positives = [[0, 5], [], [1, 2, 3, 1]]
    got = catalog_recall_ndcg(top, positives, 3)
    # user 0: hit at rank 2 of 2 positives -> recall 1/2, NDCG = (1/log2(3)) / (1 + 1/log2(3))
    # user 1: no positive -> skipped; user 2: hits at ranks 1..3 of 3 positives -> recall 1, NDCG 1
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["recall@3"] == pytest.approx((0.5 + 1.0) / 2)
    assert got["ndcg@3"] == pytest.approx((ndcg0 + 1.0) / 2)
    assert got["users_scored"] == 2 and got["users_skipped_no_positive"] == 1
    at1 = catalog_recall_ndcg(top, positives, 1)
    # k=1: user 0 misses (0, 0); user 2 hits item 1: recall 1/3, NDCG 1/1
    assert at1["recall@1"] == pytest.approx((0 + 1 / 3) / 2)
    assert at1["ndcg@1"] == pytest.approx((0 + 1) / 2)
    with pytest.raises(ValueError, match=r"'k' must be an integer in \[1, 3\]"):
        catalog_recall_ndcg(top, positives, 4)


def test_same_list_for_everyone_vs_disjoint_lists():
    same = np.tile([0, 1, 2], (4, 1))
    disjoint = np.arange(12).reshape(4, 3)
    # same: 3 of 12 items covered; counts sorted = nine 0s and three 4s
    #   Gini = 2 * 4 * (10 + 11 + 12) / (12 * 12) - 13/12 = 264/144 - 156/144 = 0.75 = 1 - 3/12
    assert coverage_at_k(same, 12) == pytest.approx(3 / 12)
    assert gini_of_topk(same, 12) == pytest.approx(0.75)
    assert mean_pairwise_overlap(same) == pytest.approx(1.0)
    assert coverage_at_k(disjoint, 12) == 1.0
    assert gini_of_topk(disjoint, 12) == pytest.approx(0.0)
    assert mean_pairwise_overlap(disjoint) == 0.0
    with pytest.raises(ValueError, match="outside the catalog of n_items=10"):
        coverage_at_k(disjoint, 10)


def test_gini_matches_mean_absolute_difference():
    rng = np.random.default_rng(1)
    top = rng.zipf(1.5, size=(300, 10)) % 50
    counts = np.bincount(top.ravel(), minlength=50).astype(float)
    # G = sum_i sum_j |x_i - x_j| / (2 n^2 mean)
    expected = np.abs(counts[:, None] - counts[None, :]).sum() / (2 * 50**2 * counts.mean())
    assert gini_of_topk(top, 50) == pytest.approx(expected)


def test_overlap_by_hand_and_sampled():
    # lists [0 1 2 3] and [2 3 4 5] share 2 of 4 -> 0.5
    assert mean_pairwise_overlap(np.array([[0, 1, 2, 3], [2, 3, 4, 5]])) == pytest.approx(0.5)
    # three users, pairs: (A,B) 2/4, (A,C) 0/4, (B,C) 1/4 -> mean 0.25
    three = np.array([[0, 1, 2, 3], [3, 2, 5, 6], [9, 8, 7, 6]])
    assert mean_pairwise_overlap(three) == pytest.approx((0.5 + 0 + 0.25) / 3)
    # 2 sampled pairs of distinct users: the mean of two of 0.5, 0, 0.25 (a user with itself: 1)
    assert mean_pairwise_overlap(three, sample_pairs=2, seed=0) in {0.0, 0.125, 0.25, 0.375, 0.5}
    sampled = mean_pairwise_overlap(np.tile(three, (50, 1)), sample_pairs=2000, seed=3)
    # 150 users, copies of three lists: a pair is the same list with prob 49/149 (overlap 1)
    expected = 49 / 149 * 1 + 100 / 149 * 0.25
    assert sampled == pytest.approx(expected, abs=0.03)
    # empty slots never match
    assert mean_pairwise_overlap(np.array([[0, -1], [1, -1]])) == 0.0


def test_intra_list_similarity_by_hand():
    content = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    # identical directions -> 1
    assert intra_list_similarity(np.array([[0, 1]]), content) == pytest.approx(1.0)
    # [e1, e1, e2]: pairs 1, 0, 0 -> 1/3
    assert intra_list_similarity(np.array([[0, 1, 2]]), content) == pytest.approx(1 / 3)
    # two lists: [0, 2] -> 0 ; [0, 3] -> cos 45 deg = 1/sqrt(2); mean of lists
    got = intra_list_similarity(np.array([[0, 2], [0, 3]]), content, batch_size=1)
    assert got == pytest.approx((0 + 1 / math.sqrt(2)) / 2)
    # a zero content vector has cosine 0 with everything: [e1, e1, 0] -> pairs 1, 0, 0 -> 1/3
    with_zero = np.vstack([content, np.zeros(2)])
    assert intra_list_similarity(np.array([[0, 1, 4]]), with_zero) == pytest.approx(1 / 3)
    # a list with one valid item has no pair and is left out
    assert intra_list_similarity(np.array([[0, -1], [0, 1]]), content) == pytest.approx(1.0)


def test_neighbourhood_agreement_clusters_and_unrelated_labels():
    # unit vectors at these angles (radians): two groups {0, 1, 2} and {3, 4, 5}, 1.1 apart
    angles = np.array([0.0, 0.05, 0.20, 1.50, 1.45, 1.30])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1) * np.array([[1], [2], [3], [1], [2], [3]])
    clusters = ["a", "a", "a", "b", "b", "b"]
    got = neighbourhood_agreement(emb, clusters, 2)
    # each item's 2 nearest (cosine) are the other two of its group -> 1; chance = 0.5^2 + 0.5^2
    assert got["agreement"] == 1.0 and got["chance"] == pytest.approx(0.5)
    assert got["lift"] == pytest.approx(2.0) and got["queries"] == 6
    creators = np.array([1, 2, 3, 1, 2, 3])
    # neighbours are the two other items of the group, with the two other creators -> 0
    assert neighbourhood_agreement(emb, creators, 2)["agreement"] == 0.0
    # k=1, nearest by angle: 0->1, 1->0, 2->1, 3->4, 4->3, 5->4
    labels = ["x", "x", "y", "y", "z", "z"]
    # agree: 0->1 (x x) yes, 1->0 yes, 2->1 (y x) no, 3->4 (y z) no, 4->3 (z y) no, 5->4 (z z) yes
    one = neighbourhood_agreement(emb, labels, 1)
    assert one["agreement"] == pytest.approx(3 / 6)
    assert one["chance"] == pytest.approx(3 * (1 / 3) ** 2)
    # by raw dot product the longest vector of a group wins: 0->2? dots of item 0 (len 1):
    # with 1: 2cos(.05)=1.9975, with 2: 3cos(.2)=2.940 -> 2 ; so 0->2 (x y) no, 1->2 no,
    # 2->1 (3*2*cos .15 = 5.93 vs 3*1*cos .2) no, 3->5 no, 4->5 (z z) yes, 5->4 yes
    assert neighbourhood_agreement(emb, labels, 1, metric="dot")["agreement"] == pytest.approx(2 / 6)
    sampled = neighbourhood_agreement(emb, clusters, 2, sample=3, seed=0)
    assert sampled["queries"] == 3 and sampled["agreement"] == 1.0
    with pytest.raises(ValueError, match=r"'labels' must have one value per item \(6\)"):
        neighbourhood_agreement(emb, clusters[:5], 2)
    with pytest.raises(ValueError, match="'labels' must not be null"):
        neighbourhood_agreement(emb, [None, "a", "a", "b", "b", "b"], 2)
    with pytest.raises(ValueError, match=r"'k' must be an integer in \[1, n_items - 1 = 5\]"):
        neighbourhood_agreement(emb, clusters, 6)


def test_list_report_and_agreements_of_one_model_by_hand():
    content = np.eye(5)
    top = topk_from_embeddings(USERS, ITEMS, 2)
    report = topk_lists_report(top, 5, [2], positives_per_user=[[0], [1, 4]], content_emb=content)
    agreement = neighbourhood_agreements(ITEMS, {"cluster": [0, 1, 0, 0, 1], "creator": ["c1", "c2", "c3", "c1", "c2"]}, [2])
    # top-2: user 0 -> [3, 0], user 1 -> [4, 1]
    assert top.tolist() == [[3, 0], [4, 1]] and report["users"] == 2
    assert report["recall@2"] == pytest.approx(1.0)  # user 0: 1/1 ; user 1: 2/2
    assert report["ndcg@2"] == pytest.approx(((1 / math.log2(3)) / 1 + 1.0) / 2)
    assert report["coverage@2"] == pytest.approx(4 / 5)
    # counts sorted: 0 1 1 1 1 -> 2 * (2+3+4+5) / (5 * 4) - 6/5 = 1.4 - 1.2 = 0.2
    assert report["gini@2"] == pytest.approx(0.2)
    assert report["overlap@2"] == 0.0
    assert report["intra_list_similarity@2"] == pytest.approx(0.0)  # one-hot content
    assert agreement["cluster_agreement_chance"] == pytest.approx(0.6**2 + 0.4**2)
    assert agreement["creator_agreement_chance"] == pytest.approx(0.4**2 + 0.4**2 + 0.2**2)
    assert 0.0 <= agreement["cluster_agreement@2"] <= 1.0
    bare = topk_lists_report(top, 5, [2])
    assert bare["recall@2"] is None and bare["intra_list_similarity@2"] is None
    assert bare["coverage@2"] == report["coverage@2"]


def test_neighbourhood_agreements_read_smaller_k_from_one_search():
    angles = np.array([0.0, 0.05, 0.20, 1.50, 1.45, 1.30])
    emb = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = {"cluster": ["a", "a", "a", "b", "b", "b"], "creator": ["x", "x", "y", "y", "z", "z"]}
    got = neighbourhood_agreements(emb, labels, [2, 1])
    # k=1 nearest: 0->1, 1->0, 2->1, 3->4, 4->3, 5->4 ; k=2 adds the third of the group
    assert got["cluster_agreement@1"] == 1.0 and got["cluster_agreement@2"] == 1.0
    # creators at k=1: as in the single-label test, 3 of 6
    assert got["creator_agreement@1"] == pytest.approx(3 / 6)
    # k=2 neighbour lists {1,2} {0,2} {1,0} {4,5} {3,5} {4,3}: same creator for
    # 0: 1 (x) ; 1: 0 (x) ; 2: none ; 3: none (z z vs y) ; 4: 5 (z) ; 5: 4 (z) -> 4 of 12
    assert got["creator_agreement@2"] == pytest.approx(4 / 12)
    assert got["cluster_agreement_chance"] == pytest.approx(0.5)
    assert got["creator_agreement_chance"] == pytest.approx(3 * (1 / 3) ** 2)
    assert got["neighbour_queries"] == 6
    for k in (1, 2):
        assert got[f"creator_agreement@{k}"] == neighbourhood_agreement(emb, labels["creator"], k)["agreement"]
    with pytest.raises(ValueError, match=r"'labels\['creator'\]' must have one value per item \(6\)"):
        neighbourhood_agreements(emb, {"creator": ["x"] * 5}, [1])


def test_random_topk_draws_distinct_items_uniformly():
    top = random_topk(2000, 10, 3, seed=1, batch_size=7)
    assert top.shape == (2000, 3)
    assert all(len(set(row)) == 3 for row in top.tolist())
    # each item appears in a list with probability 3/10: 600 of 2000 lists, sd ~ 20
    counts = np.bincount(top.ravel(), minlength=10)
    assert np.all(np.abs(counts - 600) < 100)
    assert np.array_equal(top, random_topk(2000, 10, 3, seed=1, batch_size=7))
    whole = random_topk(5, 4, 4, seed=0)
    assert np.array_equal(np.sort(whole, axis=1), np.tile(np.arange(4), (5, 1)))
    with pytest.raises(ValueError, match=r"'k' must be an integer in \[1, n_items=4\]"):
        random_topk(5, 4, 5)


def test_topk_lists_report_by_hand():
    top = np.array([[0, 1, 2], [0, 3, 4]])
    content = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    got = topk_lists_report(top, 6, [1, 3], positives_per_user=[[1], [5, 4]], content_emb=content)
    # k=1: both lists are [0]; no hit; coverage 1/6; counts (2,0,0,0,0,0): Gini 1 - 1/6;
    #      overlap 1; a one-item list has no pair -> no similarity (NaN)
    assert got["recall@1"] == 0.0 and got["ndcg@1"] == 0.0
    assert got["coverage@1"] == pytest.approx(1 / 6) and got["gini@1"] == pytest.approx(5 / 6)
    assert got["overlap@1"] == 1.0 and math.isnan(got["intra_list_similarity@1"])
    # k=3: user 0 hits item 1 at rank 2 of 1 positive: recall 1, NDCG 1/log2(3);
    #      user 1 hits item 4 at rank 3 of 2 positives: recall 1/2, NDCG (1/2) / (1 + 1/log2(3))
    assert got["recall@3"] == pytest.approx((1 + 0.5) / 2)
    assert got["ndcg@3"] == pytest.approx((1 / math.log2(3) + 0.5 / (1 + 1 / math.log2(3))) / 2)
    # items 0..4 covered of 6; counts sorted (0,1,1,1,1,2): 2*(2+3+4+5+12)/(6*6) - 7/6 = 52/36 - 42/36
    assert got["coverage@3"] == pytest.approx(5 / 6) and got["gini@3"] == pytest.approx(10 / 36)
    assert got["overlap@3"] == pytest.approx(1 / 3)
    # list 0: cos(0,1)=1, cos(0,2)=0, cos(1,2)=0 -> 1/3 ; list 1: 0, -1, 0 -> -1/3 ; mean 0
    assert got["intra_list_similarity@3"] == pytest.approx(0.0)
    assert got["users"] == 2 and got["users_scored"] == 2
    bare = topk_lists_report(top, 6, [3])
    assert bare["recall@3"] is None and bare["intra_list_similarity@3"] is None
    with pytest.raises(ValueError, match=r"'ks' must be integers in \[1, 3\]"):
        topk_lists_report(top, 6, [4])


def test_topk_breaks_ties_by_item_index_across_the_kth_place():
    # 1000 items on one dimension: scores 0 everywhere except item 700 (2.0) and item 900 (1.0)
    items = np.zeros((1000, 1))
    items[700, 0], items[900, 0] = 2.0, 1.0
    users = np.array([[1.0], [-1.0], [0.0]])
    top = topk_from_embeddings(users, items, 5, batch_size=2)
    # user 0: 700, 900, then the tied zeros by index 0, 1, 2
    # user 1 (scores negated): the 998 zeros tie first -> 0..4
    # user 2: everything scores 0 -> 0..4 (a collapsed model gets a deterministic list)
    assert top.tolist() == [[700, 900, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    excluded = topk_from_embeddings(users, items, 3, exclude=[[0, 700], [1, 3], []])
    assert excluded.tolist() == [[900, 1, 2], [0, 2, 4], [0, 1, 2]]
