"""Evaluate a trained model on the validation day, next to reference rows from the same run.

Two parts, both written to ``metrics.json`` (``docs/evaluation.md`` defines every number):

- ``rows``: the seed's metrics over the validation day's examples (``metrics.py``) for the
  model, ``random`` (seeded uniform scores), ``popularity`` (train-window interaction count of
  the item) and, when the generator's ground truth is given, ``oracle`` (each row's true
  engagement probability). All are scored with the same metrics over the same rows.
- ``diagnostics`` and ``coverage_curve``: full-catalog retrieval (``diagnostics.py``). Each
  validation user (at most ``max_diagnostic_users``, a seeded sample beyond) is embedded with
  the exported user tower from the features of the user's *first* validation example (earliest
  ``event_ts``, then smallest ``item_id``, then record order): its point-in-time features
  describe the user as of the start of the validation day, before any validation event, so
  no validation positive leaks into the query. The whole catalog (``item_embeddings.parquet``)
  is scored exactly by matrix product, in batches of bounded memory, and the top-K lists are
  judged against each user's positive validation items. Nothing is excluded from the lists
  (a validation positive may be an item the user saw in train). The same list diagnostics are
  computed for ``popularity`` (everyone gets the K most interacted-with train items) and
  ``random`` (K distinct uniform items per user). Content similarity, clusters and creators
  come from the features folder's ``artifacts/items.parquet`` (``items.items_artifact``).

Before anything is scored, the model must have been trained on this features folder
(``provenance.check_model``) and the validation split's files must be those of the manifest
(``provenance.check_split_files``); either refusal is a ``UserError`` naming the fix.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads

from twotower_features import columns as C
from twotower_features.errors import MissingFileError
from twotower_features.spec import FeatureSpec

from . import diagnostics as D
from . import index as I
from .items import ItemsArtifact, items_artifact, read_item_counts, read_item_embeddings
from .layout import METRICS_FILE, PREDICTIONS_FILE
from .metrics import (
    SCORE,
    TABLE_METRICS,
    compute_metrics,
    reference_scores,
    write_metrics_json,
)
from .prior import model_prior, without_item_prior
from .provenance import check_model, check_split_files

DIAGNOSTIC_KS = (10, 100)
COVERAGE_KS = (1, 5, 10, 20, 50, 100)
MAX_DIAGNOSTIC_USERS = 50_000
NEIGHBOUR_SAMPLE = 20_000
DIAGNOSTIC_ROWS = ("model", "popularity", "random")
DIAGNOSTIC_COLUMNS = (
    "recall", "ndcg", "coverage", "gini", "overlap", "intra_list_similarity", "cluster_agreement", "creator_agreement",
)
USER_CHOICE = "first validation example of the user by event_ts, then item_id, then record order"


def read_ground_truth(path: str) -> pd.DataFrame:
    """user_id, item_id, event_ts (int64 microseconds), true_engagement_prob."""
    t = pads.dataset(path, format="parquet", partitioning="hive").to_table(columns=[C.USER_ID, C.ITEM_ID, C.EVENT_TS, C.TRUE_PROB])
    ts = t.column(C.EVENT_TS).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return pd.DataFrame({C.USER_ID: t.column(C.USER_ID).to_pandas(), C.ITEM_ID: t.column(C.ITEM_ID).to_pandas(), C.EVENT_TS: ts.to_numpy(), C.TRUE_PROB: t.column(C.TRUE_PROB).to_numpy()})


def _train_counts(features_dir: str | Path, spec: FeatureSpec) -> pd.Series:
    """``items.read_item_counts``, which the popularity references cannot do without."""
    counts = read_item_counts(features_dir, spec)
    if counts is None:
        raise MissingFileError(f"no item frequency file in {str(features_dir)!r}: the popularity row needs it")
    return counts


def evaluate(
    features_dir: str,
    model_dir: str,
    out_dir: str,
    *,
    ground_truth: str | None = None,
    seed: int = 0,
    diagnostics: bool = True,
    ks: Sequence[int] = DIAGNOSTIC_KS,
    coverage_ks: Sequence[int] = COVERAGE_KS,
    max_diagnostic_users: int = MAX_DIAGNOSTIC_USERS,
    exact_limit: int = I.EXACT_LIMIT,
    index_kind: str = "auto",
) -> dict[str, Any]:
    """Predict the validation split, score model and reference rows, write predictions and metrics.

    Returns (and writes as ``out_dir/metrics.json``, NaN as null) ``experiment``, ``rows`` and,
    with ``diagnostics``, ``diagnostics`` and ``coverage_curve`` (see ``catalog_diagnostics``).
    The model's full-catalog lists come from exact search up to ``exact_limit`` catalog items,
    from the index ``twotower export`` would build above it (``index.choose_kind``;
    ``index_kind`` forces one). Refuses (``provenance.ProvenanceError``) a model trained on
    another features folder, and
    (``provenance.IncompleteFeaturesError``) a validation split whose files differ from the manifest.
    """
    from .predict import predict

    spec = FeatureSpec.load(features_dir)
    check_model(model_dir, features_dir)
    check_split_files(features_dir, ["validation"], spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = predict(model_dir, features_dir, split="validation")
    preds.to_parquet(out / PREDICTIONS_FILE, index=False)
    counts = _train_counts(features_dir, spec)
    scores: dict[str, np.ndarray] = {"model": preds[SCORE].to_numpy()}
    scores["random"] = reference_scores(preds, "random", seed=seed)
    scores["popularity"] = reference_scores(preds, "popularity", train_item_counts=counts)
    if ground_truth:
        gt = read_ground_truth(ground_truth)
        merged = preds[[C.USER_ID, C.ITEM_ID, C.EVENT_TS]].merge(gt, on=[C.USER_ID, C.ITEM_ID, C.EVENT_TS], how="left", validate="one_to_one")
        missing = int(merged[C.TRUE_PROB].isna().sum())
        if missing:
            raise ValueError(f"{missing} validation rows have no ground-truth row in {ground_truth!r}")
        scores["oracle"] = reference_scores(merged, "oracle", ground_truth=C.TRUE_PROB)
    rows = {name: compute_metrics(preds[C.USER_ID], preds[C.LABEL].astype(int), s) for name, s in scores.items()}
    result: dict[str, Any] = {"experiment": spec.extras.get("experiment"), "rows": rows}
    if diagnostics:
        diag, curve = catalog_diagnostics(
            features_dir, model_dir, preds, spec=spec, train_counts=counts, ks=ks, coverage_ks=coverage_ks,
            max_users=max_diagnostic_users, seed=seed, exact_limit=exact_limit, index_kind=index_kind,
        )
        result["diagnostics"], result["coverage_curve"] = diag, curve
    write_metrics_json(result, out / METRICS_FILE)
    return result


# ---- full-catalog diagnostics -----------------------------------------------------------
def choose_user_rows(preds: pd.DataFrame, *, max_users: int | None = None, seed: int = 0, last: bool = False) -> pd.DataFrame:
    """One row per validation user: ``user_id`` and ``row``, the position in ``preds`` (record
    order of the validation split) of the user's first example by ``event_ts``, then
    ``item_id``, then position (``last``: the last one in that order). Users sorted by id;
    beyond ``max_users`` a sorted sample drawn with ``numpy.random.default_rng(seed)``."""
    frame = pd.DataFrame({
        C.USER_ID: preds[C.USER_ID].to_numpy(),
        C.EVENT_TS: preds[C.EVENT_TS].to_numpy(),
        C.ITEM_ID: preds[C.ITEM_ID].to_numpy(),
        "row": np.arange(len(preds), dtype=np.int64),
    })
    first = frame.sort_values([C.USER_ID, C.EVENT_TS, C.ITEM_ID, "row"], kind="stable").drop_duplicates(C.USER_ID, keep="last" if last else "first")
    first = first[[C.USER_ID, "row"]].reset_index(drop=True)
    if max_users is not None and len(first) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(first), size=max_users, replace=False))
        first = first.iloc[keep].reset_index(drop=True)
    return first


def user_embeddings_at_rows(
    model_dir: str | Path, features_dir: str | Path, spec: FeatureSpec, rows: np.ndarray, n_records: int, *, side: str = "user"
) -> np.ndarray:
    """User-tower embeddings of the validation records at positions ``rows`` (record order),
    in the order of ``rows``; one pass over the split, only the chosen records embedded.
    ``side="query"``: the retrieval queries instead (``export.ExportedTowers.embed``), with the
    prior's 1.0 appended when the model has a retrieval prior."""
    import tensorflow as tf

    from .data import make_dataset
    from .export import load_towers
    from .predict import PREDICT_BATCH

    towers = load_towers(model_dir)
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    out: np.ndarray | None = None
    offset = 0
    ds = make_dataset(
        features_dir, "validation", spec, batch_size=PREDICT_BATCH, shuffle=False, seed=0, columns=towers.feature_names["user"]
    )
    for batch in ds:
        size = int(next(iter(batch.values())).shape[0])
        a, b = np.searchsorted(sorted_rows, [offset, offset + size])
        if b > a:
            local = tf.constant(sorted_rows[a:b] - offset)
            vec = towers.embed(side, {n: tf.gather(t, local) for n, t in batch.items()}).numpy()
            if out is None:
                out = np.empty((rows.size, vec.shape[1]), dtype=np.float32)
            out[order[a:b]] = vec
        offset += size
    if offset != n_records:
        raise ValueError(f"the validation split holds {offset} records, the predictions {n_records}: they must be read alike")
    if out is None:
        raise ValueError("no validation user to embed")
    return out


def _positives(preds: pd.DataFrame, users: np.ndarray, item_index: pd.Index) -> tuple[list[np.ndarray], int]:
    """Per user of ``users``, catalog indices of their positive validation items; a positive
    outside the catalog gets an index >= n_items (never retrieved, so it counts as a miss)."""
    pos = preds.loc[preds[C.LABEL].to_numpy() > 0, [C.USER_ID, C.ITEM_ID]].drop_duplicates()
    user_pos = pd.Index(users).get_indexer(pos[C.USER_ID])
    pos = pos[user_pos >= 0]
    user_pos = user_pos[user_pos >= 0]
    idx = item_index.get_indexer(pos[C.ITEM_ID])
    outside = idx < 0
    if outside.any():
        codes, _ = pd.factorize(pos[C.ITEM_ID].to_numpy()[outside])
        idx[outside] = len(item_index) + codes
    order = np.argsort(user_pos, kind="stable")
    bounds = np.searchsorted(user_pos[order], np.arange(1, len(users)))
    return np.split(idx[order].astype(np.int64), bounds), int(outside.sum())


def _cluster_source(art: ItemsArtifact) -> str | None:
    """Where the clusters came from, as ``metrics.json`` says it."""
    if art.clusters is None:
        return None
    if art.kmeans_k is None:
        return f"{art.items_file}:{C.ITEM_CLUSTER}"
    return f"KMeans(k={art.kmeans_k}) fitted at evaluation on {art.content_column}"


def catalog_diagnostics(
    features_dir: str | Path,
    model_dir: str | Path,
    preds: pd.DataFrame,
    *,
    spec: FeatureSpec | None = None,
    train_counts: pd.Series | None = None,
    ks: Sequence[int] = DIAGNOSTIC_KS,
    coverage_ks: Sequence[int] = COVERAGE_KS,
    max_users: int | None = MAX_DIAGNOSTIC_USERS,
    neighbour_sample: int | None = NEIGHBOUR_SAMPLE,
    seed: int = 0,
    exact_limit: int = I.EXACT_LIMIT,
    index_kind: str = "auto",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full-catalog diagnostics of the model and the popularity and random references.

    ``preds`` is ``predict(model_dir, features_dir, "validation")`` (record order);
    ``train_counts`` the train-window count per item id (default: ``items.read_item_counts``). Returns
    ``(diagnostics, coverage_curve)``:

    - ``diagnostics``: one flat dict per row of ``model``, ``popularity``, ``random`` with, for
      each K of ``ks`` (capped at the catalog size), ``recall@K``, ``ndcg@K``, ``coverage@K``,
      ``gini@K``, ``overlap@K``, ``intra_list_similarity@K``, ``cluster_agreement@K``,
      ``creator_agreement@K`` (the model's item-embedding neighbourhoods; the random row holds
      the chance level; None for popularity), ``users`` and ``users_scored``; and the context
      ``k``, ``catalog_size``, ``users``, ``users_in_validation``, ``users_scored``,
      ``user_features_from``, ``retrieval_index`` (the index the model's lists came from: exact
      search up to ``exact_limit`` items, else ``index.build_index``'s, as ``export`` builds
      it), ``positives_outside_catalog``, ``content_embedding``,
      ``cluster_source``, ``cluster_agreement_chance``, ``creator_agreement_chance``,
      ``neighbour_queries``, ``seconds``.
    - ``coverage_curve``: ``k`` (the ``coverage_ks`` within the catalog size) and, per row,
      coverage@K at each of them.
    """
    started = time.perf_counter()
    spec = spec or FeatureSpec.load(features_dir)
    item_ids, item_emb = read_item_embeddings(model_dir)  # with the retrieval prior's column, if any
    n_items = len(item_ids)
    item_index = pd.Index(item_ids)
    chosen = choose_user_rows(preds, max_users=max_users, seed=seed)
    users = chosen[C.USER_ID].to_numpy()
    user_emb = user_embeddings_at_rows(model_dir, features_dir, spec, chosen["row"].to_numpy(), len(preds), side="query")
    prior = model_prior(model_dir)
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"user embeddings have {user_emb.shape[1]} dimensions, {str(model_dir)!r}'s item embeddings {item_emb.shape[1]} "
            f"(retrieval prior {prior.kind!r}): give the folder its prior again with `twotower_model.train.set_retrieval_prior`, or retrain"
        )
    positives, outside = _positives(preds, users, item_index)
    art = items_artifact(features_dir, item_ids, spec=spec, seed=seed)

    ks_used = sorted({min(int(k), n_items) for k in ks})
    curve_ks = sorted({int(k) for k in coverage_ks if int(k) <= n_items}) or [n_items]
    kmax = max(ks_used + curve_ks)
    if train_counts is None:
        train_counts = _train_counts(features_dir, spec)
    counts = train_counts.reindex(item_ids).fillna(0.0).to_numpy()
    popular = np.lexsort((np.arange(n_items), -counts))[:kmax]
    kind = I.choose_kind(n_items, exact_limit, index_kind)
    if kind == "exact":  # exact scan, deterministic tie-break by item index (diagnostics.py)
        model_top, index_used = D.topk_from_embeddings(user_emb, item_emb, kmax), {"kind": "exact", "exact_limit": exact_limit}
    else:
        built = I.build_index(item_emb, kind, seed=seed)
        model_top, index_used = I.search(built, user_emb, kmax), {**I.index_params(built), "exact_limit": exact_limit}
    tops = {
        "model": model_top,
        "popularity": np.broadcast_to(popular, (len(users), kmax)),
        "random": D.random_topk(len(users), n_items, kmax, seed=seed),
    }
    diag: dict[str, Any] = {}
    for name, top in tops.items():
        diag[name] = D.topk_lists_report(
            top, n_items, ks_used, positives_per_user=positives, content_emb=art.content, seed=seed
        )

    labels = {n: v for n, v in (("cluster", art.clusters), ("creator", art.creators)) if v is not None}
    neighbour_ks = [k for k in ks_used if k <= n_items - 1]
    agreement: dict[str, Any] = {}
    if labels and neighbour_ks:
        agreement = D.neighbourhood_agreements(without_item_prior(item_emb, prior), labels, neighbour_ks, sample=neighbour_sample, seed=seed)
    for name in ("cluster", "creator"):
        chance = agreement.get(f"{name}_agreement_chance")
        for k in ks_used:
            diag["model"][f"{name}_agreement@{k}"] = agreement.get(f"{name}_agreement@{k}")
            diag["popularity"][f"{name}_agreement@{k}"] = None
            diag["random"][f"{name}_agreement@{k}"] = chance
        diag[f"{name}_agreement_chance"] = chance
    curve: dict[str, Any] = {"k": curve_ks}
    for name, top in tops.items():
        curve[name] = [D.coverage_at_k(top[:, :k], n_items) for k in curve_ks]
    diag.update({
        "k": ks_used,
        "retrieval_prior": prior.as_dict(),
        "catalog_size": n_items,
        "users": len(users),
        "users_in_validation": int(preds[C.USER_ID].nunique()),
        "users_scored": diag["model"]["users_scored"],
        "user_features_from": USER_CHOICE,
        "retrieval_index": index_used,
        "positives_outside_catalog": outside,
        "content_embedding": art.content_column,
        "cluster_source": _cluster_source(art),
        "items_missing_content": art.items_missing_content,
        "neighbour_queries": agreement.get("neighbour_queries"),
        "seconds": time.perf_counter() - started,
    })
    return diag, curve


# ---- printing ----------------------------------------------------------------------------
def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """The seed's table: one line per model/reference, AUC first."""
    head = f"{'':12s}" + "".join(f"{m:>12s}" for m in TABLE_METRICS) + f"{'rows':>10s}{'users':>8s}"
    lines = [head, "-" * len(head)]
    for name, m in rows.items():
        vals = "".join(f"{_num(m.get(k)):>12s}" for k in TABLE_METRICS)
        lines.append(f"{name:12s}{vals}{m.get('rows_scored', m.get('rows', 0)):>10}{m.get('users_scored', 0):>8}")
    return "\n".join(lines)


def _num(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"


def format_diagnostics(diag: dict[str, Any]) -> str:
    """Full-catalog diagnostics: one block per K, one line per row (model, popularity, random)."""
    short = {"intra_list_similarity": "intra_sim", "cluster_agreement": "cluster_agr", "creator_agreement": "creator_agr"}
    lines = [
        f"full-catalog diagnostics: {diag['catalog_size']} items, {diag['users']} users "
        f"({diag['users_scored']} with a positive); user features from the {diag['user_features_from']}"
    ]
    for k in diag["k"]:
        head = f"{'@' + str(k):12s}" + "".join(f"{short.get(c, c):>12s}" for c in DIAGNOSTIC_COLUMNS)
        lines += ["", head, "-" * len(head)]
        for name in DIAGNOSTIC_ROWS:
            row = diag.get(name, {})
            lines.append(f"{name:12s}" + "".join(f"{_num(row.get(f'{c}@{k}')):>12s}" for c in DIAGNOSTIC_COLUMNS))
    notes = []
    for name in ("cluster", "creator"):
        if diag.get(f"{name}_agreement_chance") is not None:
            notes.append(f"{name} agreement by chance {diag[f'{name}_agreement_chance']:.4f}")
    if diag.get("cluster_source"):
        notes.append(f"clusters: {diag['cluster_source']}")
    if notes:
        lines += ["", "; ".join(notes)]
    return "\n".join(lines)
