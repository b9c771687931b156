"""The user/item/creator statistics ("recsys database"): Delta/Parquet folders or PostgreSQL.

`read_stats` returns one statistics table as a DataFrame with the contract's columns (id, `dt`,
numeric `ctr`, `timespent`), checked like every input; with `stats.source = "postgres"` it reads
the table over Spark JDBC (the PostgreSQL driver jar is in `build/jars`, fetched at install).

Credentials: the database password is never in the config, a log line, a report or a manifest.
It is read when a table is read, from the environment variable named by `stats.password_env` or
from `stats.password_file`, which must belong to the user running the job and be readable by
nobody else (mode 600 or stricter). Error messages name the URL, user and table, never the secret.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Mapping

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import columns as C
from . import io
from .config import StatsConfig
from .errors import UserError
from .validate import check_schema, check_unique, stats_schema

JDBC_DRIVER = "org.postgresql.Driver"


class CredentialError(UserError):
    """The database password is missing or its file is not private; the message never holds it."""


class StatsSourceError(UserError):
    """A statistics table could not be read from the database."""


def resolve_password(stats: StatsConfig, environ: Mapping[str, str] | None = None) -> str:
    """The password from `stats.password_file` (owner-only) when set, else from `stats.password_env`."""
    environ = os.environ if environ is None else environ
    if stats.password_file:
        path = Path(stats.password_file).expanduser()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise CredentialError(f"stats.password_file {str(path)!r} does not exist") from None
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(f"stats.password_file {str(path)!r} must be a regular file")
        if st.st_uid != os.geteuid():
            raise CredentialError(f"stats.password_file {str(path)!r} must belong to the user running the job (uid {os.geteuid()}), it belongs to uid {st.st_uid}")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CredentialError(
                f"stats.password_file {str(path)!r} must be readable only by its owner (chmod 600), it has mode {stat.S_IMODE(st.st_mode):04o}"
            )
        password = path.read_text().rstrip("\r\n")
        if not password:
            raise CredentialError(f"stats.password_file {str(path)!r} is empty")
        return password
    if stats.password_env:
        password = environ.get(stats.password_env, "")
        if not password:
            raise CredentialError(f"environment variable {stats.password_env} (stats.password_env) is not set: it must hold the database password")
        return password
    raise CredentialError("neither stats.password_env nor stats.password_file is set")


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def _jdbc_reader(spark: SparkSession, stats: StatsConfig, password: str):
    return (
        spark.read.format("jdbc")
        .option("url", stats.jdbc_url)
        .option("driver", JDBC_DRIVER)
        .option("user", stats.user)
        .option("password", password)
        .option("fetchsize", str(stats.fetch_size))
    )


def _read_postgres(spark: SparkSession, name: str, stats: StatsConfig) -> DataFrame | None:
    table = stats.table(name)
    if not table:
        return None
    password = resolve_password(stats)
    qualified = f'"{stats.db_schema}"."{table}"'
    try:
        # the schema is resolved here, so a wrong URL, user, password or table fails now
        return _jdbc_reader(spark, stats, password).option("dbtable", qualified).load()
    except Exception as e:  # py4j wraps the driver's SQLException
        why = _redact(_root_cause(e), password)
        raise StatsSourceError(f"cannot read {name} from table {stats.db_schema}.{table} at {stats.jdbc_url} as user {stats.user!r}: {why[:500]}") from None


def _root_cause(e: BaseException) -> str:
    """The innermost Java exception of a py4j error (the driver's own message), else the first line."""
    t = getattr(e, "java_exception", None)
    last = None
    for _ in range(20):
        if t is None:
            break
        last = t
        t = t.getCause()
    if last is not None:
        return str(last.toString())
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _date_range(df: DataFrame, dates: tuple[_dt.date, _dt.date] | None) -> DataFrame:
    if dates is None:
        return df
    lo, hi = dates
    return df.filter((F.col(C.DT) >= F.lit(lo)) & (F.col(C.DT) <= F.lit(hi)))


def read_stats(
    spark: SparkSession, input_dir: str, name: str, stats: StatsConfig, *, dates: tuple[_dt.date, _dt.date] | None = None,
    one_row_per_key: bool = False,
) -> DataFrame | None:
    """One statistics table (`user_stats`, `item_stats`, `creator_stats`), or None when it is absent.

    `dates` (first, last; inclusive) keeps those days only; the filter reaches the database
    (JDBC predicate push-down) or prunes partitions. Columns and types are checked at read:
    the key and `dt` are required, `ctr` / `timespent` must be numeric when present.
    `one_row_per_key` refuses a table that repeats a (key, dt) in those days (``check_unique``):
    the stages left-join the statistics on them, so a repeat would copy example rows.
    """
    if name not in C.STATS_TABLES:
        raise ValueError(f"unknown statistics table {name!r}; expected one of {sorted(C.STATS_TABLES)}")
    key = C.STATS_TABLES[name]
    if stats.source == "postgres":
        df = _read_postgres(spark, name, stats)
        where = f"table {stats.db_schema}.{stats.table(name)} at {stats.jdbc_url}"
    else:
        df = io.read_table(spark, io.table_path(input_dir, name), required=False)
        where = io.table_path(input_dir, name)
    if df is None:
        return None
    df = _date_range(check_schema(df, stats_schema(key, df.columns), f"{name} ({where})"), dates)
    if one_row_per_key:
        check_unique(df, [key, C.DT], f"{name} ({where})", rerun_from="examples")
    return df


def stats_dates(validation_date: _dt.date, train_days: int) -> tuple[_dt.date, _dt.date]:
    """Days of statistics a window reads: each example of day d joins the row of d - 1."""
    return validation_date - _dt.timedelta(days=train_days + 1), validation_date - _dt.timedelta(days=1)


def postgres_fingerprint(spark: SparkSession, name: str, stats: StatsConfig, dates: tuple[_dt.date, _dt.date]) -> dict[str, Any]:
    """Fingerprint of one statistics table kept in PostgreSQL for `dates`: a content hash computed
    in one aggregation (row count, sum and xor of row hashes) over those days (files: see
    fingerprint.table_fingerprint)."""
    df = read_stats(spark, "", name, stats, dates=dates)
    where = {"source": "postgres", "url": stats.jdbc_url, "table": f"{stats.db_schema}.{stats.table(name)}"}
    if df is None:
        return {**where, "present": False}
    cols = sorted(df.columns)
    row = df.agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(F.hash(*cols).cast("long")).alias("s"),
        F.bit_xor(F.xxhash64(*cols)).alias("x"),
    ).collect()[0]
    content = f"{row['n']}:{row['s']}:{row['x']}:{','.join(cols)}"
    return {**where, "rows": int(row["n"]), "fingerprint": hashlib.sha256(content.encode()).hexdigest()[:16]}
