"""``twotower_model.index``: the faiss index against a numpy brute force, the exact-limit rule,
the approximate kinds' recall, save/load, and the recall measure by hand."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("faiss")

from twotower_model import index as I  # noqa: E402


def _clustered(n: int, dim: int, seed: int, clusters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _numpy_topk(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def test_exact_index_equals_numpy_brute_force():
    items, queries = _clustered(3000, 16, 0), _clustered(200, 16, 1) * 5.0
    got = I.search(I.build_index(items, "exact"), queries, 10)
    expected = _numpy_topk(items, queries, 10)
    # continuous random data: no two scores tie, so the lists are unambiguous
    np.testing.assert_array_equal(got, expected)


def test_exact_limit_rule():
    assert I.choose_kind(100, 100) == "exact"
    assert I.choose_kind(101, 100) == "ivf"
    assert I.choose_kind(10**9, 100, "hnsw") == "hnsw"
    assert I.choose_kind(5, 100, "hnsw") == "hnsw"
    assert I.choose_kind(0, 0) == "exact"
    with pytest.raises(ValueError, match="index kind"):
        I.choose_kind(5, 100, "annoy")
    with pytest.raises(ValueError, match="exact_limit"):
        I.choose_kind(5, -1)
    small = I.build_index(_clustered(50, 4, 2), exact_limit=49)
    assert I.index_params(small)["kind"] == "ivf"
    assert I.index_params(I.build_index(_clustered(50, 4, 2), exact_limit=50))["kind"] == "exact"


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.97), ("ivf", 0.85)])
def test_approximate_kinds_find_most_of_the_exact_lists(kind, floor):
    # a catalog of 20k clustered items: neighbours crowd inside a cluster, the hard case
    items, queries = _clustered(20_000, 16, 3), _clustered(300, 16, 4) * 10.0
    exact = _numpy_topk(items, queries, 50)
    index = I.build_index(items, kind, seed=0)
    got = I.search(index, queries, 50)
    assert (got >= 0).all()
    assert I.recall_against_exact(got, exact) >= floor
    params = I.index_params(index)
    assert params["kind"] == kind and params["items"] == 20_000 and params["dim"] == 16
    if kind == "ivf":  # a rebuild gives the same lists: seeded k-means, nearest-centroid inserts
        assert (params["nlist"], params["nprobe"]) == (I.ivf_lists(20_000), I.IVF_NPROBE) == (512, 64)
        np.testing.assert_array_equal(I.search(I.build_index(items, kind, seed=0), queries, 50), got)


def test_index_file_round_trip(tmp_path):
    items, queries = _clustered(2000, 8, 5), _clustered(50, 8, 6)
    for kind in I.KINDS:
        index = I.build_index(items, kind)
        I.write_index(index, tmp_path / f"{kind}.faiss")
        back = I.read_index(tmp_path / f"{kind}.faiss")
        assert I.index_params(back) == I.index_params(index)
        np.testing.assert_array_equal(I.search(back, queries, 20), I.search(index, queries, 20))
    with pytest.raises(FileNotFoundError, match="twotower export"):
        I.read_index(tmp_path / "missing.faiss")


def test_search_pads_past_the_catalog_and_checks_its_input():
    items = np.eye(3, dtype=np.float32)
    got = I.search(I.build_index(items, "exact"), np.array([[0.0, 2.0, 1.0]], np.float32), 5)
    np.testing.assert_array_equal(got, [[1, 2, 0, -1, -1]])
    with pytest.raises(ValueError, match="dimensions"):
        I.search(I.build_index(items, "exact"), np.ones((1, 4), np.float32), 2)
    with pytest.raises(ValueError, match="NaN"):
        I.build_index(np.array([[np.nan, 1.0]], np.float32))


def test_recall_against_exact_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[3, 1, 9], [7, 8, -1]])
    assert I.recall_against_exact(approx, exact) == pytest.approx(2 / 6)  # {1, 3} found, none of {4, 5, 6}


def test_ivf_lists_rule():
    assert I.ivf_lists(10) == 1
    assert I.ivf_lists(39 * 100) == 100  # capped by 39 points per cell
    assert I.ivf_lists(1_000_000) == 4000  # 4 sqrt(n)
