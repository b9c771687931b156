"""Stages 3 and 4: the label rule and the sample-weight schemes."""
from __future__ import annotations

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C
from .config import LabelConfig, WeightConfig
from .errors import UserError


class LabelRuleError(UserError, ValueError):
    pass


def label_column(rule: str, df: DataFrame) -> F.Column:
    """Parse `rule` (Spark SQL) and check it is boolean over the interaction contract's columns only."""
    probe = df.select(*[c for c in C.INTERACTION_COLUMNS if c in df.columns])
    try:
        dtype = probe.select(F.expr(rule).alias("_l")).schema["_l"].dataType
    except (AnalysisException, ParseException) as e:
        first = str(e).strip().splitlines()[0]
        raise LabelRuleError(f"label.rule {rule!r} is not a SQL expression over {list(C.INTERACTION_COLUMNS)}: {first}") from None
    if not isinstance(dtype, T.BooleanType):
        raise LabelRuleError(f"label.rule {rule!r} must be boolean, it is {dtype.simpleString()}")
    return F.coalesce(F.expr(rule), F.lit(False)).cast("int")


def add_label(df: DataFrame, cfg: LabelConfig) -> DataFrame:
    return df.withColumn(C.LABEL, label_column(cfg.rule, df))


def weight_column(cfg: WeightConfig) -> F.Column:
    """The seed's schemes; negatives always weigh 1.0."""
    pos = F.col(C.LABEL) == 1
    if cfg.scheme == "none":
        return F.lit(1.0)
    if cfg.scheme == "sqrt_time_spent":
        return F.when(pos, F.least(F.sqrt(F.col(C.TIME_SPENT)), F.lit(float(cfg.sqrt_cap)))).otherwise(F.lit(1.0))
    # engagement_tiers: fw > 0.8 -> 1.2, liked -> 1.5, shared -> 2.0, any two -> 2.5, all three -> 3.0
    fw = (F.col(C.FRACTION_WATCHED) > 0.8).cast("int")
    lk = F.col(C.LIKED).cast("int")
    sh = F.col(C.SHARED).cast("int")
    n = fw + lk + sh
    tier = (
        F.when(n == 3, 3.0)
        .when(n == 2, 2.5)
        .when(sh == 1, 2.0)
        .when(lk == 1, 1.5)
        .when(fw == 1, 1.2)
        .otherwise(1.0)
    )
    return F.when(pos, tier).otherwise(F.lit(1.0))


def add_weight(df: DataFrame, cfg: WeightConfig) -> DataFrame:
    return df.withColumn(C.WEIGHT, weight_column(cfg).cast("double"))
