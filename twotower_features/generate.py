"""Synthetic input tables with a known latent preference structure (``twotower generate``).

The generator writes the SPEC's input contract as Parquet under ``out/``: ``interactions``
(partitioned by ``dt``), ``items``, ``users``, ``user_stats``, ``item_stats``,
``creator_stats``, plus ``ground_truth`` (the engagement probability each valid event was drawn
from) and ``generate_report.json``.

Latent model (so an oracle exists):

- topics; creators with a main topic; items with a topic mixture (mostly their creator's
  topic), a quality and a power-law popularity; users with a concentrated Dirichlet topic
  preference, an engagement bias, an activity rate and a time-of-day profile;
- exposure: a topic drawn from ``0.7 * preference + 0.3 * global topic share``, then an item of
  that topic drawn by popularity, so users see mostly what they like and what is popular;
- ``true_engagement_prob = sigmoid(A * preference . item_topics + B * quality + user_bias + C)``;
  an engaged view watches most of the video (replays > 1 sometimes) and may like/share, a
  non-engaged view watches a small fraction.

Content embeddings reflect the topics: ``simclr = topic centroid mix + creator offset + item
style + small noise``; ``dedup = 0.6 * topic centroid mix + a larger random per-item
component + more noise``. Both spread variance over all dimensions (a decaying spectrum), so
PCA to 128 or 64 components keeps a different share of it.

Special cases the stages' filters exist for (counted in the report): heavy users above the
``2000 per 7 days`` cap in every window, users without a positive and users without a
negative (under all three seed label rules), cold items with at most 2 views, users and items
that appear only on the last two days, same-instant event pairs of one user (different items),
and, when ``bad_row_share > 0``, contract-breaking rows (null ``user_id``, negative
``time_spent``, NaN ``fraction_watched``, unknown ``item_id``, exact duplicate event). Bad rows
are never drawn from the heavy, no-positive and no-negative users nor from the forced
cold/late-item views, so those cases hold on the valid rows; bad rows get no ground-truth row.
No-positive and no-negative users behave by construction: their ground-truth probability is
0 and 1 (heavy users follow the model).

Determinism: all randomness comes from ``numpy`` generators seeded by ``(seed, table tag,
block index)``; users are generated in fixed blocks of ``USER_BLOCK`` user indices and items in
blocks of ``ITEM_BLOCK``, so the output is the same however Spark partitions the blocks.

Statistics tables hold one row per id and day on which the id had at least one valid
interaction: ``ctr`` = share of that day's views with ``liked OR shared OR fraction_watched >
0.8``, ``timespent`` = sum of that day's ``time_spent`` in seconds.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from twotower_features import columns as C

from .errors import UserError

# ---- model constants ---------------------------------------------------------------------
USER_BLOCK = 256
ITEM_BLOCK = 2048
# events per generated partition (each task generates and persists its partition whole)
EVENTS_PER_PARTITION = 250_000
ACTIVITY_BINS = 8  # activity_profile: share of a user's views per 3-hour bin of the day
HANDSET_MAKERS = ("apple", "samsung", "xiaomi", "oppo", "vivo", "google", "motorola")
HANDSET_SHARES = (0.30, 0.26, 0.14, 0.10, 0.08, 0.05, 0.07)

CAP_PER_7_DAYS = 2000
# A heavy user views this many items every day: above 2000 / 7 = 285.7, so over the client cap
# of any window length, and only just (keeps the demo small).
HEAVY_EVENTS_PER_DAY = 300
LATE_DAYS = 2  # late users/items appear only on the last LATE_DAYS days

PREF_CONCENTRATION = 0.2  # Dirichlet alpha of user topic preferences (small = concentrated)
EXPOSURE_PREF_WEIGHT = 0.7
ITEM_MAIN_TOPIC_WEIGHT = 0.7
CREATOR_TOPIC_SHARE = 0.8  # share of a creator's items in its main topic
POPULARITY_EXPONENT = 0.9
AFFINITY_COEF = 5.0  # A
QUALITY_COEF = 0.6  # B
USER_BIAS_SD = 0.5
INTERCEPT = -1.2  # C: puts the rule-1 positive rate near one half
SAME_INSTANT_RATE = 0.01
LIKE_IF_ENGAGED, LIKE_IF_NOT = 0.45, 0.01
SHARE_IF_ENGAGED, SHARE_IF_NOT = 0.08, 0.002
REPLAY_IF_ENGAGED = 0.12

# ---- roles and row kinds -----------------------------------------------------------------
ROLE_NORMAL, ROLE_HEAVY, ROLE_NO_POSITIVE, ROLE_NO_NEGATIVE, ROLE_LATE = 0, 1, 2, 3, 4
ROLE_NAMES = {ROLE_NORMAL: "normal", ROLE_HEAVY: "heavy", ROLE_NO_POSITIVE: "no_positive", ROLE_NO_NEGATIVE: "no_negative", ROLE_LATE: "late"}
KIND_VALID = 0
BAD_KINDS = {1: "null_user_id", 2: "negative_time_spent", 3: "nan_fraction_watched", 4: "unknown_item_id", 5: "duplicate_event"}
KIND_NULL_USER, KIND_NEGATIVE_TIME, KIND_NAN_FRACTION, KIND_UNKNOWN_ITEM, KIND_DUPLICATE = 1, 2, 3, 4, 5

# seed-sequence tags, one per random stream
_TAG_ROLES, _TAG_ITEMS, _TAG_EMBEDDINGS, _TAG_USERS, _TAG_EVENTS, _TAG_FORCED = 1, 2, 3, 4, 5, 6

# label rule 1 of the seed, used for the statistics tables' ctr and the report's rates
RULE_1 = "liked OR shared OR fraction_watched > 0.8"
RULE_2 = "fraction_watched > 0.9"
RULE_3 = "fraction_watched > 0.99 OR liked OR shared"


class GenerateError(UserError, ValueError):
    """A generator argument is out of range; the message names it."""


MIN_USERS = 20
MIN_ITEMS = 20


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


# The one home of the generator's argument rules, checked in this order (a rule may rely on the
# ones before it: ``topics`` on ``items`` being an integer): (argument, check, what is expected).
_RULES: tuple[tuple[str, Callable[[Mapping[str, Any]], bool], str], ...] = (
    ("users", lambda a: _is_int(a["users"]) and a["users"] >= MIN_USERS, f"an integer >= {MIN_USERS}"),
    ("items", lambda a: _is_int(a["items"]) and a["items"] >= MIN_ITEMS, f"an integer >= {MIN_ITEMS}"),
    ("days", lambda a: _is_int(a["days"]) and a["days"] >= 1, "an integer >= 1"),
    ("start", lambda a: isinstance(a["start"], _dt.date) and not isinstance(a["start"], _dt.datetime), "a datetime.date"),
    ("seed", lambda a: _is_int(a["seed"]) and a["seed"] >= 0, "an integer >= 0"),
    ("embedding_dim", lambda a: _is_int(a["embedding_dim"]) and a["embedding_dim"] >= 2, "an integer >= 2"),
    ("topics", lambda a: _is_int(a["topics"]) and 2 <= a["topics"] <= a["items"] // 2, "an integer in [2, items / 2]"),
    ("creators", lambda a: a["creators"] is None or (_is_int(a["creators"]) and 1 <= a["creators"] <= a["items"]), "an integer in [1, items] or None"),
    ("events_per_user_day", lambda a: isinstance(a["events_per_user_day"], (int, float)) and 0 < a["events_per_user_day"] <= 1000, "a number in (0, 1000]"),
    ("bad_row_share", lambda a: isinstance(a["bad_row_share"], (int, float)) and 0 <= a["bad_row_share"] <= 0.5, "a number in [0, 0.5]"),
)


def _first_broken(arguments: Mapping[str, Any]) -> tuple[str, str] | None:
    """(argument, expected) of the first rule ``arguments`` break, or None."""
    for name, ok, expected in _RULES:
        if not ok(arguments):
            return name, expected
    return None


@dataclass(frozen=True)
class GenerateParams:
    """The generator's arguments, validated."""

    users: int = 2000
    items: int = 1000
    days: int = 18
    start: _dt.date = _dt.date(2026, 6, 18)
    seed: int = 0
    embedding_dim: int = 256
    topics: int = 12
    creators: int | None = None
    events_per_user_day: float = 6.0
    bad_row_share: float = 0.0

    def __post_init__(self) -> None:
        arguments = {f.name: getattr(self, f.name) for f in fields(self)}
        broken = _first_broken(arguments)
        if broken:
            name, expected = broken
            raise GenerateError(f"generate: '{name}' must be {expected}, got {arguments[name]!r}")
        if self.creators is None:
            object.__setattr__(self, "creators", max(2, self.items // 25))

    @property
    def late_day(self) -> int:
        """First day index of late users and items."""
        return max(0, self.days - LATE_DAYS)

    @property
    def user_width(self) -> int:
        return max(6, len(str(self.users - 1)))

    @property
    def item_width(self) -> int:
        # unknown item ids (bad rows) use indices in [items, 2 * items): same width as real ones
        return max(6, len(str(2 * self.items - 1)))

    @property
    def creator_width(self) -> int:
        return max(4, len(str(self.creators - 1)))

    @property
    def n_user_blocks(self) -> int:
        return -(-self.users // USER_BLOCK)

    @property
    def n_item_blocks(self) -> int:
        return -(-self.items // ITEM_BLOCK)

    def role_counts(self) -> dict[int, int]:
        """How many users get each special role (the rest are normal)."""
        u = self.users
        return {
            ROLE_HEAVY: max(2, math.ceil(u * 0.0005)),
            ROLE_NO_POSITIVE: max(2, math.ceil(u * 0.005)),
            ROLE_NO_NEGATIVE: max(2, math.ceil(u * 0.005)),
            ROLE_LATE: max(2, math.ceil(u * 0.02)),
        }

    def n_cold_items(self) -> int:
        return max(2, math.ceil(self.items * 0.02))

    def n_late_items(self) -> int:
        return max(2, math.ceil(self.items * 0.02))


# the options of `twotower generate` and the generator arguments they set
CLI_OPTIONS = {
    "users": "--users",
    "items": "--items",
    "days": "--days",
    "seed": "--seed",
    "embedding_dim": "--embedding-dim",
    "bad_row_share": "--bad-row-share",
}


def check_params(
    *,
    users: int | None = None,
    items: int | None = None,
    days: int | None = None,
    seed: int | None = None,
    embedding_dim: int | None = None,
    bad_row_share: float | None = None,
) -> None:
    """The generator's checks of the options of ``twotower generate`` (None: the generator's
    default), without Spark, for the CLI to call before it starts a session. Raises
    ``GenerateError`` naming the option, e.g. ``--seed must be an integer >= 0, got -1``; the
    other arguments (``topics``, ``creators``, ...) keep their defaults, so a ``topics`` rule
    broken by too few items is reported as the ``--items`` minimum."""
    defaults = {f.name: f.default for f in fields(GenerateParams)}
    options = {"users": users, "items": items, "days": days, "seed": seed, "embedding_dim": embedding_dim, "bad_row_share": bad_row_share}
    arguments = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    broken = _first_broken(arguments)
    if broken is None:
        return
    name, expected = broken
    if name in ("items", "topics") and _is_int(arguments["items"]):
        topics = arguments["topics"]
        # the topics rule (topics <= items / 2) with the default topics, and the items rule
        raise GenerateError(f"--items must be at least {max(MIN_ITEMS, 2 * topics)} (twice the generator's {topics} topics), got {arguments['items']}")
    raise GenerateError(f"{CLI_OPTIONS.get(name, name)} must be {expected}, got {arguments[name]!r}")


def user_id(index: int, params: GenerateParams) -> str:
    """The string id of user ``index`` (``u000123``)."""
    return f"u{index:0{params.user_width}d}"


def item_id(index: int, params: GenerateParams) -> str:
    """The string id of item ``index`` (``i000045``)."""
    return f"i{index:0{params.item_width}d}"


def creator_id(index: int, params: GenerateParams) -> str:
    """The string id of creator ``index`` (``c0007``)."""
    return f"c{index:0{params.creator_width}d}"


def _rng(seed: int, tag: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), tag, *(int(k) for k in keys)])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _normalise_rows(m: np.ndarray) -> np.ndarray:
    return m / m.sum(axis=1, keepdims=True)


def _categorical_rows(rng: np.random.Generator, cum: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One draw per event from the row ``rows[e]`` of the cumulative distribution ``cum``."""
    u = rng.random(len(rows))
    return np.minimum((cum[rows] < u[:, None]).sum(axis=1), cum.shape[1] - 1)


# ---- driver-side latent world ------------------------------------------------------------
def build_world(params: GenerateParams) -> dict[str, dict[str, np.ndarray]]:
    """The latent structure, on the driver with numpy: ``events`` (what the interaction
    generator needs), ``items`` (what the items-table generator needs) and ``facts``
    (special-case ids and counts for the report)."""
    p = params
    T, I, Cr, D = p.topics, p.items, p.creators, p.embedding_dim

    # users: roles
    rr = _rng(p.seed, _TAG_ROLES)
    perm = rr.permutation(p.users)
    roles = np.zeros(p.users, dtype=np.int8)
    pos = 0
    for role, n in p.role_counts().items():
        roles[perm[pos:pos + n]] = role
        pos += n

    # creators and items
    r = _rng(p.seed, _TAG_ITEMS)
    creator_topic = r.integers(0, T, Cr)
    creator_weight = (r.permutation(Cr) + 1.0) ** -0.8
    item_creator = r.choice(Cr, size=I, p=creator_weight / creator_weight.sum()).astype(np.int32)
    main_topic = np.where(r.random(I) < CREATOR_TOPIC_SHARE, creator_topic[item_creator], r.integers(0, T, I))
    mix = _normalise_rows(r.gamma(0.5, size=(I, T)) + 1e-9)
    item_topic = (1 - ITEM_MAIN_TOPIC_WEIGHT) * mix
    item_topic[np.arange(I), main_topic] += ITEM_MAIN_TOPIC_WEIGHT
    quality = r.standard_normal(I)
    pop = (r.permutation(I) + 1.0) ** -POPULARITY_EXPONENT * np.exp(0.6 * quality)
    duration = np.round(np.clip(r.lognormal(math.log(25.0), 0.7, I), 3.0, 600.0), 1)
    special = r.choice(I, size=p.n_cold_items() + p.n_late_items(), replace=False)
    cold_items = np.sort(special[: p.n_cold_items()])
    late_items = np.sort(special[p.n_cold_items():])
    is_cold = np.zeros(I, bool)
    is_cold[cold_items] = True
    is_late = np.zeros(I, bool)
    is_late[late_items] = True
    pop[late_items] = np.quantile(pop, 0.9)  # new hits: seen by many in their two days

    # exposure tables per phase (0: before late_day, 1: from late_day on)
    cand_items, cand_cdf, nonempty, topic_share = [], [], [], []
    for phase in (0, 1):
        ok = ~is_cold & (~is_late if phase == 0 else True)
        idx = np.flatnonzero(ok)
        idx = idx[np.argsort(main_topic[idx], kind="stable")]
        t = main_topic[idx]
        w = pop[idx]
        mass = np.bincount(t, weights=w, minlength=T)
        cum = np.cumsum(w)
        start_of_topic = np.concatenate([[0.0], np.cumsum(mass)[:-1]])
        within = (cum - start_of_topic[t]) / mass[t]
        last = np.r_[t[1:] != t[:-1], True]
        within[last] = 1.0
        cand_items.append(idx.astype(np.int32))
        cand_cdf.append(t + within)
        nonempty.append(mass > 0)
        topic_share.append(mass / mass.sum())

    # forced views: cold items get 1 or 2 views, late items one view on the last day
    rf = _rng(p.seed, _TAG_FORCED)
    hosts = np.flatnonzero(roles == ROLE_NORMAL)
    cold_views = 1 + (rf.random(len(cold_items)) < 0.5)
    f_item = np.concatenate([np.repeat(cold_items, cold_views), late_items])
    f_day = np.concatenate([rf.integers(0, p.days, int(cold_views.sum())), np.full(len(late_items), p.days - 1)])
    f_user = rf.choice(hosts, size=len(f_item))
    order = np.argsort(f_user, kind="stable")

    expected_events = p.users * p.days * p.events_per_user_day
    views = np.round(pop / pop.sum() * expected_events * r.lognormal(0.0, 0.3, I))
    like_rate = np.clip(LIKE_IF_ENGAGED * _sigmoid(INTERCEPT + 1.5 + QUALITY_COEF * quality) + r.normal(0, 0.01, I), 0.0, 1.0)
    followers = np.round(creator_weight / creator_weight.max() * 1e6 * r.lognormal(0.0, 0.5, Cr))
    n_per_creator = np.bincount(item_creator, minlength=Cr)
    mean_q = np.bincount(item_creator, weights=quality, minlength=Cr) / np.maximum(n_per_creator, 1)
    avg_fw = np.clip(0.45 + 0.08 * mean_q + r.normal(0, 0.02, Cr), 0.0, 1.5)

    re = _rng(p.seed, _TAG_EMBEDDINGS)
    spectrum = (np.arange(D) + 1.0) ** -0.6
    spectrum *= math.sqrt(D * 0.5 / float((spectrum ** 2).sum()))  # mean per-dim variance 0.5
    items_world = {
        "centroids": re.standard_normal((T, D)),
        "creator_offset": 0.35 * re.standard_normal((Cr, D)),
        "basis_simclr": np.linalg.qr(re.standard_normal((D, D)))[0].T * spectrum[:, None],
        "basis_dedup": np.linalg.qr(re.standard_normal((D, D)))[0].T * spectrum[:, None],
        "item_topic": item_topic,
        "item_creator": item_creator,
        "duration": duration,
        "views": views,
        "like_rate": like_rate,
        "followers": followers[item_creator],
        "avg_fw": avg_fw[item_creator],
    }
    events_world = {
        "roles": roles,
        "item_topic": item_topic.astype(np.float32),
        "quality": quality,
        "duration": duration,
        "item_creator": item_creator,
        "cand_items_0": cand_items[0],
        "cand_cdf_0": cand_cdf[0],
        "cand_items_1": cand_items[1],
        "cand_cdf_1": cand_cdf[1],
        "nonempty": np.stack(nonempty),
        "topic_share": np.stack(topic_share),
        "forced_user": f_user[order],
        "forced_item": f_item[order],
        "forced_day": f_day[order],
    }
    facts = {
        "roles": roles,
        "cold_items": cold_items,
        "cold_item_views": int(cold_views.sum()),
        "late_items": late_items,
    }
    return {"events": events_world, "items": items_world, "facts": facts}


# ---- per-block generators (run on executors; pure numpy) ---------------------------------
def user_latents(params: GenerateParams, roles: np.ndarray, block: int) -> dict[str, np.ndarray]:
    """Latent traits of the users of one block (fixed index range), deterministic per block."""
    lo, hi = block * USER_BLOCK, min(params.users, (block + 1) * USER_BLOCK)
    n = hi - lo
    r = _rng(params.seed, _TAG_USERS, block)
    s = 0.7
    profile = _normalise_rows(r.gamma(1.5, size=(n, ACTIVITY_BINS)) + 1e-9)
    return {
        "index": np.arange(lo, hi, dtype=np.int64),
        "role": roles[lo:hi],
        "pref": _normalise_rows(r.gamma(PREF_CONCENTRATION, size=(n, params.topics)) + 1e-9),
        "bias": r.normal(0.0, USER_BIAS_SD, n),
        "rate": r.lognormal(-0.5 * s * s, s, n),
        "p_active": r.beta(6.0, 2.0, n),
        "profile": profile.astype(np.float32),
        "handset": r.choice(len(HANDSET_MAKERS), size=n, p=HANDSET_SHARES).astype(np.int32),
    }


def block_events(params: GenerateParams, world: dict[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
    """All interaction rows of one user block, as numpy columns (ids as indices).

    Columns: ``user`` and ``item`` indices, ``creator``, ``ts_us`` (UTC microseconds), ``day``
    (index from ``start``), ``time_spent``, ``fraction_watched``, ``liked``, ``shared``,
    ``prob`` (true engagement probability), ``kind`` (0 valid, else a ``BAD_KINDS`` key),
    ``role`` and ``same_instant`` (this row was moved to its predecessor's instant).
    """
    p = params
    lat = user_latents(p, world["roles"], block)
    r = _rng(p.seed, _TAG_EVENTS, block)
    n, days = len(lat["index"]), p.days
    role = lat["role"]
    first = np.where(role == ROLE_LATE, p.late_day, 0)
    exists = np.arange(days)[None, :] >= first[:, None]
    rate = p.events_per_user_day * lat["rate"] / lat["p_active"]
    drawn = r.poisson(np.broadcast_to(rate[:, None], (n, days)))
    active = r.random((n, days)) < lat["p_active"][:, None]
    counts = np.where(active, drawn, 0)
    steady = (role == ROLE_NO_POSITIVE) | (role == ROLE_NO_NEGATIVE)
    counts[steady] = np.maximum(drawn[steady], 2)
    counts[role == ROLE_LATE] = np.maximum(counts[role == ROLE_LATE], 1)
    counts[role == ROLE_HEAVY] = HEAVY_EVENTS_PER_DAY
    counts = np.where(exists, counts, 0).ravel()
    local = np.repeat(np.repeat(np.arange(n), days), counts)
    day = np.repeat(np.tile(np.arange(days), n), counts)

    # items by exposure: topic from preference and global share, then item by popularity
    item = np.empty(len(local), dtype=np.int64)
    phase = (day >= p.late_day).astype(np.int8) if p.late_day > 0 else np.ones(len(local), np.int8)
    for ph in (0, 1):
        sel = np.flatnonzero(phase == ph)
        if len(sel) == 0:
            continue
        w = (EXPOSURE_PREF_WEIGHT * lat["pref"] + (1 - EXPOSURE_PREF_WEIGHT) * world["topic_share"][ph]) * world["nonempty"][ph]
        cum = np.cumsum(_normalise_rows(w), axis=1)
        topic = _categorical_rows(r, cum, local[sel])
        cdf, cand = world[f"cand_cdf_{ph}"], world[f"cand_items_{ph}"]
        pos = np.searchsorted(cdf, topic + r.random(len(sel)), side="right")
        item[sel] = cand[np.minimum(pos, len(cand) - 1)]

    # forced views (cold and late items) of this block's users
    lo, hi = lat["index"][0], lat["index"][-1] + 1
    a, b = np.searchsorted(world["forced_user"], [lo, hi])
    forced = np.r_[np.zeros(len(local), bool), np.ones(b - a, bool)]
    local = np.r_[local, world["forced_user"][a:b] - lo]
    day = np.r_[day, world["forced_day"][a:b]]
    item = np.r_[item, world["forced_item"][a:b]]
    e = len(local)

    # engagement and observables
    aff = np.einsum("ij,ij->i", lat["pref"][local], world["item_topic"][item])
    prob = _sigmoid(AFFINITY_COEF * aff + QUALITY_COEF * world["quality"][item] + lat["bias"][local] + INTERCEPT)
    ev_role = role[local]
    prob[ev_role == ROLE_NO_POSITIVE] = 0.0
    prob[ev_role == ROLE_NO_NEGATIVE] = 1.0
    engaged = r.random(e) < prob
    replay = r.random(e) < REPLAY_IF_ENGAGED
    fw = np.where(
        engaged,
        np.where(replay, 1.0 + 0.5 * r.beta(1.0, 3.0, e), 0.7 + 0.3 * r.beta(4.0, 1.5, e)),
        r.beta(1.2, 3.5, e),
    )
    u_like, u_share = r.random(e), r.random(e)
    liked = np.where(engaged, u_like < LIKE_IF_ENGAGED, u_like < LIKE_IF_NOT)
    shared = np.where(engaged, u_share < SHARE_IF_ENGAGED, u_share < SHARE_IF_NOT)
    nopos, noneg = ev_role == ROLE_NO_POSITIVE, ev_role == ROLE_NO_NEGATIVE
    fw[nopos] = 0.02 + 0.15 * r.beta(1.0, 3.0, int(nopos.sum()))
    fw[noneg] = 1.0 + 0.01 + 0.39 * r.beta(2.0, 2.0, int(noneg.sum()))
    liked[nopos], shared[nopos] = False, False
    liked[noneg] = True
    duration = world["duration"][item]
    time_spent = fw * duration

    # timestamps: a 3-hour bin from the user's activity profile, then a millisecond in it
    bins = _categorical_rows(r, np.cumsum(lat["profile"].astype(np.float64), axis=1), local)
    bin_ms = 86_400_000 // ACTIVITY_BINS
    ms = bins * bin_ms + r.integers(0, bin_ms, e)
    start_us = int(_dt.datetime(p.start.year, p.start.month, p.start.day, tzinfo=_dt.timezone.utc).timestamp()) * 1_000_000
    ts = start_us + day.astype(np.int64) * 86_400_000_000 + ms * 1000

    order = np.lexsort((ts, local))
    local, day, item, ts, fw, time_spent, liked, shared, prob, forced, ev_role = (
        x[order] for x in (local, day, item, ts, fw, time_spent, liked, shared, prob, forced, ev_role)
    )

    # same-instant pairs: a row takes its predecessor's timestamp (same user, day; other item)
    cand = np.zeros(e, bool)
    cand[1:] = (local[1:] == local[:-1]) & (day[1:] == day[:-1]) & (item[1:] != item[:-1]) & (r.random(e - 1) < SAME_INSTANT_RATE)
    same = cand.copy()
    same[1:] &= ~cand[:-1]
    ts[same] = ts[np.flatnonzero(same) - 1]

    # contract-breaking rows: never from special users nor forced views
    kind = np.zeros(e, np.int8)
    share = float(p.bad_row_share)
    if share > 0:
        # `share` of the block's output rows (duplicates add rows), drawn from the eligible rows only
        eligible = ~forced & ((ev_role == ROLE_NORMAL) | (ev_role == ROLE_LATE))
        wanted = share * e / (1.0 - share / len(BAD_KINDS))
        q = min(1.0, wanted / max(int(eligible.sum()), 1))
        bad = eligible & (r.random(e) < q)
        kind[bad] = r.integers(1, len(BAD_KINDS) + 1, int(bad.sum()))
    neg = kind == KIND_NEGATIVE_TIME
    time_spent[neg] = -(time_spent[neg] + 1.0)
    fw[kind == KIND_NAN_FRACTION] = np.nan
    unknown = kind == KIND_UNKNOWN_ITEM
    item[unknown] = p.items + r.integers(0, p.items, int(unknown.sum()))
    creator = np.where(unknown, -1, world["item_creator"][np.minimum(item, p.items - 1)]).astype(np.int32)
    out = {
        "user": lo + local.astype(np.int64),
        "item": item.astype(np.int64),
        "creator": creator,
        "ts_us": ts.astype(np.int64),
        "day": day.astype(np.int32),
        "time_spent": time_spent,
        "fraction_watched": fw,
        "liked": liked,
        "shared": shared,
        "prob": prob,
        "kind": kind,
        "role": ev_role.astype(np.int8),
        "same_instant": same,
    }
    dup = np.flatnonzero(kind == KIND_DUPLICATE)
    if len(dup):
        kind[dup] = KIND_VALID  # the original stays valid; its exact copy is the bad row
        out = {k: np.r_[v, v[dup]] for k, v in out.items()}
        out["kind"][e:] = KIND_DUPLICATE
        out["same_instant"][e:] = False
    return out


def block_items(params: GenerateParams, world: dict[str, np.ndarray], block: int) -> dict[str, np.ndarray]:
    """Item rows of one item block: scalars and the two (n, embedding_dim) float32 embeddings."""
    lo, hi = block * ITEM_BLOCK, min(params.items, (block + 1) * ITEM_BLOCK)
    n, D = hi - lo, params.embedding_dim
    r = _rng(params.seed, _TAG_EMBEDDINGS, block)
    topic_part = world["item_topic"][lo:hi] @ world["centroids"]
    creator = world["item_creator"][lo:hi]
    simclr = topic_part + world["creator_offset"][creator] + 0.5 * (r.standard_normal((n, D)) @ world["basis_simclr"]) + 0.05 * r.standard_normal((n, D))
    dedup = 0.6 * topic_part + 0.8 * (r.standard_normal((n, D)) @ world["basis_dedup"]) + 0.3 * r.standard_normal((n, D))
    return {
        "item": np.arange(lo, hi, dtype=np.int64),
        "creator": creator.astype(np.int32),
        "duration_s": world["duration"][lo:hi],
        "dedup": dedup.astype(np.float32),
        "simclr": simclr.astype(np.float32),
        "views": world["views"][lo:hi],
        "like_rate": world["like_rate"][lo:hi],
        "followers": world["followers"][lo:hi],
        "avg_fw": world["avg_fw"][lo:hi],
    }


# ---- Arrow plumbing ----------------------------------------------------------------------
_EVENT_FIELDS = [
    ("user", pa.int64()), ("item", pa.int64()), ("creator", pa.int32()), ("ts_us", pa.int64()), ("day", pa.int32()),
    ("time_spent", pa.float64()), ("fraction_watched", pa.float64()), ("liked", pa.bool_()), ("shared", pa.bool_()),
    ("prob", pa.float64()), ("kind", pa.int8()), ("role", pa.int8()), ("same_instant", pa.bool_()),
]
_EVENT_DDL = (
    "user bigint, item bigint, creator int, ts_us bigint, day int, time_spent double, fraction_watched double, "
    "liked boolean, shared boolean, prob double, kind tinyint, role tinyint, same_instant boolean"
)
_ITEM_DDL = (
    "item bigint, creator int, duration_s double, dedup array<float>, simclr array<float>, "
    "views double, like_rate double, followers double, avg_fw double"
)
_USER_DDL = "user bigint, handset int, activity_profile array<float>"


def _list_array(m: np.ndarray) -> pa.Array:
    n, d = m.shape
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * d), pa.array(np.ascontiguousarray(m, dtype=np.float32).ravel()))


def _event_batches(params: GenerateParams, world_bc: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    world = world_bc.value
    for batch in batches:
        for block in batch.column(0).to_numpy():
            cols = block_events(params, world, int(block))
            yield pa.RecordBatch.from_arrays([pa.array(cols[name], type=t) for name, t in _EVENT_FIELDS], names=[n for n, _ in _EVENT_FIELDS])


def _item_batches(params: GenerateParams, world_bc: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    world = world_bc.value
    for batch in batches:
        for block in batch.column(0).to_numpy():
            c = block_items(params, world, int(block))
            arrays = [pa.array(c["item"]), pa.array(c["creator"]), pa.array(c["duration_s"]), _list_array(c["dedup"]), _list_array(c["simclr"]),
                      pa.array(c["views"]), pa.array(c["like_rate"]), pa.array(c["followers"]), pa.array(c["avg_fw"])]
            yield pa.RecordBatch.from_arrays(arrays, names=["item", "creator", "duration_s", "dedup", "simclr", "views", "like_rate", "followers", "avg_fw"])


def _user_batches(params: GenerateParams, roles_bc: Any, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    roles = roles_bc.value
    for batch in batches:
        for block in batch.column(0).to_numpy():
            lat = user_latents(params, roles, int(block))
            yield pa.RecordBatch.from_arrays([pa.array(lat["index"]), pa.array(lat["handset"]), _list_array(lat["profile"])], names=["user", "handset", "activity_profile"])


# ---- Spark side --------------------------------------------------------------------------
def _id_col(F: Any, col: str, prefix: str, width: int) -> Any:
    return F.concat(F.lit(prefix), F.lpad(F.col(col).cast("string"), width, "0"))


def _join(out: str, name: str) -> str:
    return out.rstrip("/") + "/" + name


def _write_text(spark: Any, path: str, text: str) -> None:
    """Write a small text file locally or on any Hadoop file system Spark can reach."""
    scheme = urlparse(path).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # a one-letter scheme is a Windows drive
        local = Path(urlparse(path).path if scheme == "file" else path)
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_text(text)
        return
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    stream = fs.create(hpath, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()


def generate(
    spark: Any,
    out: str,
    *,
    users: int = 2000,
    items: int = 1000,
    days: int = 18,
    start: _dt.date = _dt.date(2026, 6, 18),
    seed: int = 0,
    embedding_dim: int = 256,
    topics: int = 12,
    creators: int | None = None,
    events_per_user_day: float = 6.0,
    bad_row_share: float = 0.0,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Generate the synthetic input tables as Parquet under ``out`` (overwriting) and return the
    report that is also written to ``out/generate_report.json``."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    t0 = time.time()
    params = GenerateParams(users, items, days, start, seed, embedding_dim, topics, creators, events_per_user_day, bad_row_share)
    say = progress or (lambda _msg: None)
    sc = spark.sparkContext
    p = params
    world = build_world(p)
    facts = world["facts"]
    say(f"generate: latent world built ({p.users} users, {p.items} items, {p.creators} creators, {p.topics} topics)")

    def write(df: Any, name: str, rows: int | None = None, partition_by: str | None = None) -> int:
        """Write one table (static overwrite: a rerun replaces every partition); count it
        from the written files unless the count is already known."""
        path = _join(out, name)
        sc.setJobDescription(f"generate: write {name}")
        w = df.write.mode("overwrite").option("partitionOverwriteMode", "static")
        (w.partitionBy(partition_by) if partition_by else w).parquet(path)
        if rows is None:
            sc.setJobDescription(f"generate: count {name}")
            rows = spark.read.parquet(path).count()
        say(f"generate: {name}: {rows} rows -> {path}")
        return rows

    parallelism = max(1, sc.defaultParallelism)

    # items
    items_bc = sc.broadcast(world["items"])
    n_parts = min(p.n_item_blocks, max(parallelism, math.ceil(p.items * p.embedding_dim / 20_000_000)))
    raw_items = spark.range(0, p.n_item_blocks, 1, n_parts).mapInArrow(partial(_item_batches, p, items_bc), _ITEM_DDL)
    items_df = raw_items.select(
        _id_col(F, "item", "i", p.item_width).alias(C.ITEM_ID),
        _id_col(F, "creator", "c", p.creator_width).alias(C.CREATOR_ID),
        F.col("duration_s").alias(C.DURATION_S),
        F.col("dedup").alias(C.DEDUP_EMBEDDING),
        F.col("simclr").alias(C.SIMCLR_EMBEDDING),
        F.col("views").alias(C.ITEM_PERFORMANCE_PREFIX + "views"),
        F.col("like_rate").alias(C.ITEM_PERFORMANCE_PREFIX + "like_rate"),
        F.col("followers").alias(C.CREATOR_PERFORMANCE_PREFIX + "followers"),
        F.col("avg_fw").alias(C.CREATOR_PERFORMANCE_PREFIX + "avg_fw"),
    )
    rows = {"items": write(items_df, "items", p.items)}
    items_bc.unpersist()

    # users
    roles_bc = sc.broadcast(world["events"]["roles"])
    n_parts = min(p.n_user_blocks, max(parallelism, math.ceil(p.users / 500_000)))
    raw_users = spark.range(0, p.n_user_blocks, 1, n_parts).mapInArrow(partial(_user_batches, p, roles_bc), _USER_DDL)
    makers = F.array(*[F.lit(m) for m in HANDSET_MAKERS])
    users_df = raw_users.select(
        _id_col(F, "user", "u", p.user_width).alias(C.USER_ID),
        F.element_at(makers, F.col("handset") + 1).alias(C.HANDSET_MAKER),
        F.col("activity_profile").alias(C.ACTIVITY_PROFILE),
    )
    rows["users"] = write(users_df, "users", p.users)
    roles_bc.unpersist()

    # interactions: generated once, persisted on disk (cached in the heap, 50M events overran a
    # 4g driver's heap in local mode), then written as several tables
    events_bc = sc.broadcast(world["events"])
    expected = p.users * p.days * p.events_per_user_day + p.role_counts()[ROLE_HEAVY] * p.days * HEAVY_EVENTS_PER_DAY
    n_parts = min(p.n_user_blocks, max(parallelism, math.ceil(expected / EVENTS_PER_PARTITION)))
    raw = spark.range(0, p.n_user_blocks, 1, n_parts).mapInArrow(partial(_event_batches, p, events_bc), _EVENT_DDL)
    label1 = F.expr(RULE_1)
    raw = raw.select(
        F.when(F.col("kind") == KIND_NULL_USER, F.lit(None).cast("string")).otherwise(_id_col(F, "user", "u", p.user_width)).alias(C.USER_ID),
        _id_col(F, "item", "i", p.item_width).alias(C.ITEM_ID),
        F.timestamp_micros(F.col("ts_us")).alias(C.EVENT_TS),
        F.col("time_spent").alias(C.TIME_SPENT),
        F.col("fraction_watched").alias(C.FRACTION_WATCHED),
        F.col("liked").alias(C.LIKED),
        F.col("shared").alias(C.SHARED),
        F.date_add(F.lit(p.start), F.col("day")).alias(C.DT),
        F.when(F.col("creator") >= 0, _id_col(F, "creator", "c", p.creator_width)).alias(C.CREATOR_ID),
        F.col("prob").alias(C.TRUE_PROB),
        "kind",
        "role",
        "same_instant",
    ).persist(StorageLevel.DISK_ONLY)
    try:
        sc.setJobDescription("generate: interactions")
        summary = raw.groupBy("kind", "role").agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.col("same_instant").cast("long")).alias("same_instant"),
            F.sum(label1.cast("long")).alias("rule_1"),
            F.sum(F.expr(RULE_2).cast("long")).alias("rule_2"),
            F.sum(F.expr(RULE_3).cast("long")).alias("rule_3"),
            F.sum(C.TRUE_PROB).alias("prob"),
        ).collect()
        n_all = sum(s["rows"] for s in summary)
        n_valid = sum(s["rows"] for s in summary if s["kind"] == KIND_VALID)
        say(f"generate: interactions generated: {n_all} rows ({n_all - n_valid} contract-breaking)")
        rows["interactions"] = write(raw.select(*C.INTERACTION_COLUMNS), "interactions", n_all, partition_by=C.DT)
        valid = raw.filter(F.col("kind") == KIND_VALID)
        rows["ground_truth"] = write(valid.select(C.USER_ID, C.ITEM_ID, C.EVENT_TS, C.TRUE_PROB), "ground_truth", n_valid)
        for key, name in ((C.USER_ID, "user_stats"), (C.ITEM_ID, "item_stats"), (C.CREATOR_ID, "creator_stats")):
            stats = valid.groupBy(key, C.DT).agg(
                F.avg(label1.cast("double")).alias(C.STAT_CTR),
                F.sum(C.TIME_SPENT).alias(C.STAT_TIMESPENT),
            )
            rows[name] = write(stats, name)
    finally:
        raw.unpersist()
        events_bc.unpersist()
        sc.setJobDescription(None)

    by_kind: dict[int, int] = {}
    by_role: dict[int, int] = {}
    valid_rows = same_instant = 0
    rule = [0, 0, 0]
    prob_sum = 0.0
    for s in summary:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0) + s["rows"]
        same_instant += s["same_instant"] or 0
        if s["kind"] == KIND_VALID:
            by_role[s["role"]] = by_role.get(s["role"], 0) + s["rows"]
            valid_rows += s["rows"]
            rule = [rule[0] + (s["rule_1"] or 0), rule[1] + (s["rule_2"] or 0), rule[2] + (s["rule_3"] or 0)]
            prob_sum += s["prob"] or 0.0
    bad = {name: by_kind.get(k, 0) for k, name in BAD_KINDS.items()}
    total = sum(by_kind.values())
    roles = facts["roles"]

    def ids(role: int) -> list[str]:
        return [user_id(int(i), p) for i in np.flatnonzero(roles == role)[:1000]]

    late_first = p.start + _dt.timedelta(days=p.late_day)
    params_json = {k: (v.isoformat() if isinstance(v, _dt.date) else v) for k, v in asdict(p).items()}
    report = {
        "parameters": params_json,
        "window": {"first_day": p.start.isoformat(), "last_day": (p.start + _dt.timedelta(days=p.days - 1)).isoformat()},
        "rows": {**rows, "valid_interactions": valid_rows},
        "valid_rows_by_user_role": {ROLE_NAMES[k]: v for k, v in sorted(by_role.items())},
        "positive_rate": {RULE_1: rule[0] / max(valid_rows, 1), RULE_2: rule[1] / max(valid_rows, 1), RULE_3: rule[2] / max(valid_rows, 1)},
        "mean_true_engagement_prob": prob_sum / max(valid_rows, 1),
        "special_cases": {
            "heavy_users": int((roles == ROLE_HEAVY).sum()),
            "heavy_user_events_per_day": HEAVY_EVENTS_PER_DAY,
            "client_cap_per_7_days": CAP_PER_7_DAYS,
            "heavy_user_ids": ids(ROLE_HEAVY),
            "no_positive_users": int((roles == ROLE_NO_POSITIVE).sum()),
            "no_positive_user_ids": ids(ROLE_NO_POSITIVE),
            "no_negative_users": int((roles == ROLE_NO_NEGATIVE).sum()),
            "no_negative_user_ids": ids(ROLE_NO_NEGATIVE),
            "late_users": int((roles == ROLE_LATE).sum()),
            "late_user_ids": ids(ROLE_LATE),
            "late_first_day": late_first.isoformat(),
            "late_items": len(facts["late_items"]),
            "late_item_ids": [item_id(int(i), p) for i in facts["late_items"][:1000]],
            "cold_items": len(facts["cold_items"]),
            "cold_item_ids": [item_id(int(i), p) for i in facts["cold_items"][:1000]],
            "cold_item_views": facts["cold_item_views"],
            "same_instant_pairs": int(same_instant),
        },
        "bad_rows": {**bad, "total": sum(bad.values()), "share": sum(bad.values()) / max(total, 1)},
        "stats_tables": "one row per id and day with >= 1 valid interaction; ctr = share of views with "
        f"({RULE_1}); timespent = sum of time_spent (seconds)",
        "elapsed_s": round(time.time() - t0, 2),
    }
    _write_text(spark, _join(out, "generate_report.json"), json.dumps(report, indent=2, sort_keys=True))
    say(f"generate: done in {report['elapsed_s']} s: {rows['interactions']} interactions ({report['bad_rows']['total']} bad) -> {out}")
    return report
