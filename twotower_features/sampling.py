"""Stage 5: deterministic user sampling and optional class rebalancing.

Both decisions come from a hash of ids and the seed, never from `rand()`: the same inputs and
seed give the same sample whatever the partitioning, on any cluster.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import columns as C
from .config import SamplingConfig

_SCALE = 1 << 40


def hash_unit(*cols: F.Column | str, seed: int) -> F.Column:
    """A uniform number in [0, 1) from a hash of `cols` and `seed`."""
    return F.pmod(F.xxhash64(F.lit(seed), *cols), F.lit(_SCALE)).cast("double") / float(_SCALE)


def in_user_sample(cfg: SamplingConfig) -> F.Column:
    """True for the rows of the users whose hash falls below `user_fraction`."""
    if cfg.user_fraction >= 1.0:
        return F.lit(True)
    return hash_unit(C.USER_ID, seed=cfg.seed) < cfg.user_fraction


def of_example_users(cfg: SamplingConfig, validation_day: F.Column) -> F.Column:
    """True for the rows, per user and day, whose (user, day) can hold an example row: the
    sampled users', and on the validation day (``validation_day`` true) every user's unless
    `validation` samples it too; ``is_example`` without the split and the rebalancing."""
    return in_user_sample(cfg) | (F.lit(False) if cfg.validation else validation_day)


def sample_users(df: DataFrame, cfg: SamplingConfig) -> DataFrame:
    """Keep the users whose hash falls below `user_fraction`."""
    return df if cfg.user_fraction >= 1.0 else df.filter(in_user_sample(cfg))


def split_and_class_counts(df: DataFrame, cfg: SamplingConfig) -> tuple[dict[str, int], int, int]:
    """In one pass over ``df``: its rows per split; and the positives and negatives among the
    train rows of the sampled users (the rows ``sample_users`` keeps: what rebalancing counts)."""
    users = in_user_sample(cfg)
    rows = df.groupBy(C.SPLIT).agg(
        F.count(F.lit(1)).alias("n"), F.count(F.when(users, 1)).alias("s"), F.sum(F.when(users, F.col(C.LABEL))).alias("p"),
    ).collect()
    train = next((r for r in rows if r[C.SPLIT] == C.TRAIN), None)
    pos = int(train["p"] or 0) if train else 0
    return {r[C.SPLIT]: int(r["n"]) for r in rows}, pos, (int(train["s"]) - pos if train else 0)


def rebalance_rates(positives: int, negatives: int, target_pos_neg_ratio: float) -> tuple[float, float]:
    """(keep rate for positives, keep rate for negatives) so that pos/neg becomes the target.

    Only the majority class (relative to the target) is downsampled; a zero target keeps all.
    """
    if target_pos_neg_ratio <= 0 or positives == 0 or negatives == 0:
        return 1.0, 1.0
    observed = positives / negatives
    if observed > target_pos_neg_ratio:
        return target_pos_neg_ratio * negatives / positives, 1.0
    return 1.0, positives / (target_pos_neg_ratio * negatives)


def kept_by_rebalancing(pos_rate: float, neg_rate: float, seed: int) -> F.Column:
    """True for the rows that rebalancing keeps: each row of a class with its class's rate,
    decided by a hash of the event."""
    if pos_rate >= 1.0 and neg_rate >= 1.0:
        return F.lit(True)
    u = hash_unit(C.USER_ID, C.ITEM_ID, F.col(C.EVENT_TS).cast("long"), seed=seed + 1)
    rate = F.when(F.col(C.LABEL) == 1, F.lit(pos_rate)).otherwise(F.lit(neg_rate))
    return u < rate


def downsample(df: DataFrame, pos_rate: float, neg_rate: float, seed: int) -> DataFrame:
    """Keep each row of a class with its class's rate, decided by a hash of the event."""
    return df if pos_rate >= 1.0 and neg_rate >= 1.0 else df.filter(kept_by_rebalancing(pos_rate, neg_rate, seed))


def is_example(cfg: SamplingConfig, pos_rate: float, neg_rate: float) -> F.Column:
    """True for the filtered rows that become examples: the train rows of sampled users that
    rebalancing keeps, and the validation rows (of sampled users when `validation` is on);
    the row-wise form of ``sample_users`` then ``downsample`` on the train split."""
    train, validation = F.col(C.SPLIT) == C.TRAIN, F.col(C.SPLIT) == C.VALIDATION
    users = in_user_sample(cfg)
    return (train & users & kept_by_rebalancing(pos_rate, neg_rate, cfg.seed)) | (validation & (users if cfg.validation else F.lit(True)))


def ratio_string(positives: int, negatives: int) -> str:
    """The seed's 'P : N' notation on a scale of ten (7 : 3)."""
    total = positives + negatives
    if total == 0:
        return "n/a"
    p = 10 * positives / total
    return f"{p:.1f} : {10 - p:.1f}"
