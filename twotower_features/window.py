"""Stage 1: the train window and the validation day."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from . import columns as C
from .config import WindowConfig


def window_filter(window: WindowConfig) -> F.Column:
    """Predicate on `dt` selecting the train window and the validation day (prunes partitions)."""
    return (F.col(C.DT) >= F.lit(window.train_start)) & (F.col(C.DT) <= F.lit(window.validation_date))


def assign_split(df: DataFrame, window: WindowConfig) -> DataFrame:
    """Keep rows of the train window and the validation day, with `split` = train | validation."""
    return df.filter(window_filter(window)).withColumn(
        C.SPLIT, F.when(F.col(C.DT) == F.lit(window.validation_date), F.lit(C.VALIDATION)).otherwise(F.lit(C.TRAIN))
    )
