"""Stages 3 and 4: the label rule and the sample-weight schemes."""
from __future__ import annotations

import operator
from decimal import Decimal

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from . import columns as C
from . import label_rule as R
from .config import LabelConfig, WeightConfig
from .label_rule import LabelRuleError

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1
_FUNCTIONS = {
    "abs": F.abs,
    "coalesce": F.coalesce,
    "least": F.least,
    "greatest": F.greatest,
    "floor": F.floor,
    "ceil": F.ceil,
    "sqrt": F.sqrt,
    "ln": F.ln,
    "log10": F.log10,
    "exp": F.exp,
    "pow": F.pow,
}
# `/` is Divide (fractional) and `%` Remainder, as SQL's / and %
_BINARY = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
    "AND": operator.and_,
    "OR": operator.or_,
}


def _literal(node: R.Literal) -> F.Column:
    """The literal SQL would read: an int that fits is an int or a bigint (py4j passes it as
    Integer or Long), a longer one decimal(n,0); 0.9 is decimal(1,1) (a BigDecimal); 1e-3 a double."""
    if node.kind == "int" and not _LONG_MIN <= node.value <= _LONG_MAX:
        return F.lit(Decimal(node.value))
    return F.lit(node.value)


def rule_column(node: R.Node) -> F.Column:
    """The Spark column of a parsed rule, built with pyspark.sql.functions only: the rule's text
    never reaches Spark's SQL parser, and each node is the expression SQL builds for it."""
    if isinstance(node, R.Literal):
        return _literal(node)
    if isinstance(node, R.Col):
        return F.col(node.name)
    if isinstance(node, R.Unary):
        operand = rule_column(node.operand)
        return ~operand if node.op == "NOT" else -operand
    if isinstance(node, R.Binary):
        return _BINARY[node.op](rule_column(node.left), rule_column(node.right))
    if isinstance(node, R.IsNull):
        operand = rule_column(node.operand)
        return operand.isNotNull() if node.negated else operand.isNull()
    if isinstance(node, R.Between):
        # inclusive at both ends, as SQL's BETWEEN (x >= low AND x <= high)
        operand = rule_column(node.operand)
        inside = (operand >= rule_column(node.low)) & (operand <= rule_column(node.high))
        return ~inside if node.negated else inside
    if isinstance(node, R.In):
        found = rule_column(node.operand).isin(*[_literal(v) for v in node.values])
        return ~found if node.negated else found
    args = [rule_column(a) for a in node.args]
    if node.name == "if":
        return F.when(args[0], args[1]).otherwise(args[2])
    if node.name == "round":
        return F.round(args[0], node.args[1].value) if len(args) == 2 else F.round(args[0])
    return _FUNCTIONS[node.name](*args)


def _kind(dtype: T.DataType) -> str | None:
    """What label_rule's checks call a column of this type."""
    kinds = ((T.NumericType, "number"), (T.StringType, "string"), (T.BooleanType, "boolean"), (T.DateType, "date"), ((T.TimestampType, T.TimestampNTZType), "timestamp"))
    return next((kind for types, kind in kinds if isinstance(dtype, types)), None)


def label_column(rule: str, df: DataFrame) -> F.Column:
    """The label of `rule` (label_rule's language) over `df`'s interaction columns: 1 where the
    rule holds, 0 where it does not or is NULL. The rule must be boolean."""
    present = [c for c in C.INTERACTION_COLUMNS if c in df.columns]
    probe = df.select(*present)
    tree = R.parse(rule, {f.name: _kind(f.dataType) for f in probe.schema.fields})
    missing = sorted(R.columns(tree) - set(present))
    if missing:
        raise LabelRuleError(f"label.rule {rule!r} reads {missing}, which the interactions table lacks (it has: {', '.join(present)})")
    column = rule_column(tree)
    try:
        dtype = probe.select(column.alias("_l")).schema["_l"].dataType
    except AnalysisException as e:
        first = str(e).strip().splitlines()[0]
        raise LabelRuleError(f"label.rule {rule!r} does not type-check over {present}: {first}") from None
    if not isinstance(dtype, T.BooleanType):
        raise LabelRuleError(f"label.rule {rule!r} must be boolean, it is {dtype.simpleString()}")
    return F.coalesce(column, F.lit(False)).cast("int")


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
