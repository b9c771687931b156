"""Stage 7: PCA-compressed content embeddings and KMeans clusters.

Fitted with scikit-learn on the driver over the embeddings of the items kept in the train
window (a deterministic sample above `max_fit_items`), saved as one ``.npz`` artifact, and
applied to the catalog in a distributed way (``mapInArrow``: one matrix product per batch).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C
from .errors import UserError


class EmbeddingFitError(UserError, ValueError):
    """PCA/KMeans cannot be fitted with the config's sizes on these items; names the key."""


@dataclass(frozen=True)
class FittedEmbeddings:
    """PCA per embedding source (mean, components) and KMeans centres in the simclr PCA space."""

    pca: dict[str, tuple[np.ndarray, np.ndarray]]
    centers: np.ndarray | None
    explained_variance: dict[str, float]

    def transform(self, source: str, x: np.ndarray) -> np.ndarray:
        mean, comps = self.pca[source]
        return ((np.asarray(x, dtype=np.float64) - mean) @ comps.T).astype(np.float32)

    def cluster(self, z: np.ndarray) -> np.ndarray:
        if self.centers is None:
            raise ValueError("no KMeans was fitted (no history cluster feature is configured)")
        d = (z.astype(np.float64) ** 2).sum(1)[:, None] - 2 * z @ self.centers.T + (self.centers**2).sum(1)[None, :]
        return np.argmin(d, axis=1).astype(np.int32)

    def save(self, path: str | Path) -> None:
        arrays = {}
        for s, (mean, comps) in self.pca.items():
            arrays[f"{s}_mean"] = mean
            arrays[f"{s}_components"] = comps
            arrays[f"{s}_explained"] = np.array(self.explained_variance[s])
        if self.centers is not None:
            arrays["kmeans_centers"] = self.centers
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "FittedEmbeddings":
        z = np.load(path)
        sources = sorted({k.rsplit("_", 1)[0] for k in z.files if k.endswith("_components")})
        return cls(
            pca={s: (z[f"{s}_mean"], z[f"{s}_components"]) for s in sources},
            centers=z["kmeans_centers"] if "kmeans_centers" in z.files else None,
            explained_variance={s: float(z[f"{s}_explained"]) for s in sources},
        )


def fit_embeddings(
    vectors: dict[str, np.ndarray], n_components: int, *, kmeans_k: int | None, seed: int
) -> FittedEmbeddings:
    """Fit a PCA per source (rows = train items) and, if asked, KMeans on the simclr PCA space."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    pca: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    explained: dict[str, float] = {}
    for source, x in vectors.items():
        n, d = x.shape
        if n_components > min(n, d):
            raise EmbeddingFitError(
                f"embeddings.pca_components={n_components} needs at least that many train items and "
                f"embedding dimensions; the '{source}' embeddings have {n} items x {d} dims: lower embeddings.pca_components"
            )
        model = PCA(n_components=n_components, svd_solver="randomized" if n_components < 0.8 * min(n, d) else "full", random_state=seed)
        model.fit(x.astype(np.float64))
        pca[source] = (model.mean_.astype(np.float64), model.components_.astype(np.float64))
        explained[source] = float(model.explained_variance_ratio_.sum())
    centers = None
    if kmeans_k:
        if "simclr" not in pca:
            raise EmbeddingFitError("KMeans clusters are fitted on the simclr PCA space: 'simclr' embeddings are needed")
        mean, comps = pca["simclr"]
        z = (vectors["simclr"].astype(np.float64) - mean) @ comps.T
        if len(z) < kmeans_k:
            raise EmbeddingFitError(f"embeddings.kmeans_k={kmeans_k} exceeds the {len(z)} train items: lower embeddings.kmeans_k")
        km = KMeans(n_clusters=kmeans_k, n_init=4, random_state=seed).fit(z)
        centers = km.cluster_centers_.astype(np.float64)
    return FittedEmbeddings(pca=pca, centers=centers, explained_variance=explained)


def collect_vectors(items: DataFrame, sources: list[str], *, max_items: int, seed: int) -> dict[str, np.ndarray]:
    """The train items' raw embeddings on the driver, a deterministic hash sample above `max_items`."""
    n = items.count()
    if n > max_items:
        from .sampling import hash_unit

        items = items.filter(hash_unit(C.ITEM_ID, seed=seed) < max_items / n)
    cols = [C.EMBEDDING_COLUMNS[s] for s in sources]
    table = items.select(C.ITEM_ID, *cols).orderBy(C.ITEM_ID).toArrow()
    out = {}
    for s, c in zip(sources, cols):
        arr = table.column(c).combine_chunks()
        lens = np.diff(arr.offsets.to_numpy())
        if len(lens) and (lens.min() != lens.max()):
            raise ValueError(f"items column '{c}' must have a fixed length; found lengths {lens.min()}..{lens.max()}")
        out[s] = arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), -1).astype(np.float32)
    return out


def apply_embeddings(items: DataFrame, fitted: FittedEmbeddings, *, with_cluster: bool) -> DataFrame:
    """Add `<source>_pca` (array<float>) for every fitted source and `item_cluster` if asked."""
    sources = sorted(fitted.pca)
    dims = {s: fitted.pca[s][1].shape[0] for s in sources}
    fields = [T.StructField(C.ITEM_ID, T.StringType())] + [T.StructField(f"{s}_pca", T.ArrayType(T.FloatType())) for s in sources]
    if with_cluster:
        fields.append(T.StructField(C.ITEM_CLUSTER, T.IntegerType()))
    schema = T.StructType(fields)
    cols = [C.ITEM_ID] + [C.EMBEDDING_COLUMNS[s] for s in sources]

    def apply(batches):
        for b in batches:
            out = {C.ITEM_ID: b.column(C.ITEM_ID)}
            for s in sources:
                arr = b.column(C.EMBEDDING_COLUMNS[s])
                x = arr.values.to_numpy(zero_copy_only=False).reshape(len(arr), -1) if len(arr) else np.zeros((0, fitted.pca[s][0].shape[0]))
                z = fitted.transform(s, x)
                out[f"{s}_pca"] = pa.ListArray.from_arrays(
                    pa.array(np.arange(0, (len(z) + 1) * dims[s], dims[s], dtype=np.int32)), pa.array(z.reshape(-1), pa.float32())
                )
                if with_cluster and s == "simclr":
                    out[C.ITEM_CLUSTER] = pa.array(fitted.cluster(z) if len(z) else np.zeros(0, np.int32), pa.int32())
            yield pa.RecordBatch.from_pydict({f.name: out[f.name] for f in fields})

    return items.select(*cols).mapInArrow(apply, schema)


def embedding_lengths(items: DataFrame, sources: list[str]) -> dict[str, int | None]:
    """Per source, the length most of its non-null embeddings have (a tie goes to the longer;
    None when every one is null): the contract's fixed length, which ``nan_free`` enforces."""
    out: dict[str, int | None] = {}
    for s in sources:
        c = C.EMBEDDING_COLUMNS[s]
        top = (
            items.filter(F.col(c).isNotNull()).groupBy(F.size(c).alias("n")).agg(F.count(F.lit(1)).alias("items"))
            .orderBy(F.col("items").desc(), F.col("n").desc()).limit(1).collect()
        )
        out[s] = int(top[0]["n"]) if top else None
    return out


def nan_free(items: DataFrame, sources: list[str], lengths: dict[str, int | None] | None = None) -> F.Column:
    """True where every named embedding is usable: not null, every value finite (no NaN, Inf or
    null element) and of the length most items have (``lengths``, default
    ``embedding_lengths(items, sources)``, one small aggregation per source). The caller
    quarantines the rows of the other items (``validate.quarantine_interactions``)."""
    if lengths is None:
        lengths = embedding_lengths(items, sources)
    cond = F.lit(True)
    for s in sources:
        c = C.EMBEDDING_COLUMNS[s]
        finite = F.coalesce(F.forall(F.col(c), lambda v: v.isNotNull() & ~F.isnan(v) & (F.abs(v) != float("inf"))), F.lit(False))
        cond = cond & F.col(c).isNotNull() & finite
        if lengths.get(s) is not None:
            cond = cond & (F.size(c) == F.lit(int(lengths[s])))
    return cond
