"""An inner-product nearest-neighbour index over item vectors (faiss): the retrieval service's
side of a two-tower model, and how ``evaluate`` scores catalogs past its exact limit.

- ``choose_kind``: ``exact`` (``IndexFlatIP``, every item scored) up to ``exact_limit`` items,
  else ``ivf`` (``IndexIVFFlat``: the items in ``ivf_lists(n)`` k-means cells, a query scans
  the ``IVF_NPROBE`` nearest cells): the one rule ``export`` and ``evaluate`` share; ``hnsw``
  (``IndexHNSWFlat`` over inner product) on request;
- ``build_index``: the index of a ``(n_items, dim)`` float32 matrix; position ``i`` of the index
  is row ``i`` of the matrix (the caller keeps the item ids in that order);
- ``search``: top-``k`` positions per query, best first, ``-1`` where fewer than ``k`` were found;
- ``write_index`` / ``read_index``: the index as one file (faiss' own format).

Why IVF above the limit (``benchmarks/bench_index.py``, docs/serving.md): on 1M generated
vectors on 2 cores, IVF with 64 probes kept recall@100 against exact search at 0.97 (clustered,
64 dimensions) and 0.98 (shaped like the demo model's, 32), answering about 45x as many
queries per second as exact search, built in under two minutes, and stored the vectors plus
4,000 centroids; HNSW (M 32, efConstruction 200) took five to six minutes and two to three
times the memory, and while it beat IVF on the model-shaped vectors it reached only 0.86 on
the clustered ones, even at efSearch 512.

Determinism: exact search is deterministic (equal scores: faiss keeps the lower position
first); IVF's k-means is seeded (``seed``) and the insert assigns each item its nearest
centroid, so a rebuild gives the same index; HNSW inserts on several threads, so two builds
may link a few items differently.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from twotower_features.errors import MissingFileError

KINDS = ("exact", "hnsw", "ivf")
EXACT_LIMIT = 100_000  # catalogs up to this many items are scored exactly
IVF_NPROBE = 64  # cells a query scans (at most all of them)
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 256
SEARCH_BATCH = 4096  # queries per faiss call: bounds the (batch, k) result buffers


def choose_kind(n_items: int, exact_limit: int = EXACT_LIMIT, kind: str = "auto") -> str:
    """``kind`` when given, else ``exact`` up to ``exact_limit`` items and ``ivf`` above."""
    if kind not in ("auto", *KINDS):
        raise ValueError(f"index kind must be 'auto' or one of {list(KINDS)}, got {kind!r}")
    if not isinstance(exact_limit, int) or exact_limit < 0:
        raise ValueError(f"exact_limit must be an integer >= 0, got {exact_limit!r}")
    if kind != "auto":
        return kind
    return "exact" if n_items <= exact_limit else "ivf"


def _faiss():
    import faiss

    return faiss


def _matrix(vectors: Any, name: str) -> np.ndarray:
    m = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if m.ndim != 2 or m.shape[1] < 1:
        raise ValueError(f"{name} must be a (rows, dim) matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return m


def ivf_lists(n_items: int) -> int:
    """Coarse cells of an IVF index: about 4 sqrt(n), at least 1, at most n / 39 (faiss wants
    39 training points per cell)."""
    return max(1, min(int(4 * math.sqrt(n_items)), n_items // 39))


def build_index(items: Any, kind: str = "auto", *, exact_limit: int = EXACT_LIMIT, seed: int = 0) -> Any:
    """A faiss inner-product index over the rows of ``items`` (``choose_kind``)."""
    faiss = _faiss()
    x = _matrix(items, "items")
    n, dim = x.shape
    kind = choose_kind(n, exact_limit, kind)
    if kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        nlist = ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(nlist, IVF_NPROBE)
    index.add(x)
    return index


def index_kind(index: Any) -> str:
    faiss = _faiss()
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexFlat):
        return "exact"
    raise ValueError(f"not an index this package builds: {type(index).__name__}")


def index_params(index: Any) -> dict[str, Any]:
    """What a reader needs to know of ``index``: kind, size, dimension and search settings."""
    faiss = _faiss()
    kind = index_kind(index)
    out: dict[str, Any] = {"kind": kind, "items": int(index.ntotal), "dim": int(index.d), "metric": "inner_product"}
    if kind == "hnsw":
        out.update(M=int(index.hnsw.nb_neighbors(1)), ef_construction=int(index.hnsw.efConstruction), ef_search=int(index.hnsw.efSearch))
    elif kind == "ivf":
        ivf = faiss.extract_index_ivf(index)
        out.update(nlist=int(ivf.nlist), nprobe=int(ivf.nprobe))
    return out


def search(index: Any, queries: Any, k: int) -> np.ndarray:
    """``(n_queries, k)`` index positions, best first (``-1`` where the index found fewer)."""
    q = _matrix(queries, "queries")
    if q.shape[1] != index.d:
        raise ValueError(f"queries have {q.shape[1]} dimensions, the index {index.d}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    k_used = min(k, int(index.ntotal))
    out = np.full((q.shape[0], k), -1, dtype=np.int64)
    for a in range(0, q.shape[0], SEARCH_BATCH):
        _, ids = index.search(q[a:a + SEARCH_BATCH], k_used)
        out[a:a + SEARCH_BATCH, :k_used] = ids
    return out


def write_index(index: Any, path: str | Path) -> None:
    _faiss().write_index(index, str(path))


def read_index(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"no index file {str(path)!r}: run `twotower export` first")
    return _faiss().read_index(str(path))


def recall_against_exact(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each exact top-k list found in the approximate list of the same query."""
    if approx.shape != exact.shape:
        raise ValueError(f"top-k lists of different shapes: {approx.shape} and {exact.shape}")
    hits = sum(np.intersect1d(a[a >= 0], e[e >= 0]).size for a, e in zip(approx, exact))
    total = int((exact >= 0).sum())
    return hits / total if total else float("nan")
