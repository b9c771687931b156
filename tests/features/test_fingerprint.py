"""Input fingerprints: the data files behind the dates a run reads, read from the Delta log
without Spark, checked against Spark's own list of files (`DataFrame.inputFiles`)."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from twotower_features.fingerprint import table_fingerprint

D1, D2, D3 = dt.date(2026, 7, 1), dt.date(2026, 7, 2), dt.date(2026, 7, 3)


def test_parquet_fingerprint_counts_only_the_dates_read(tmp_path):
    t = tmp_path / "interactions"
    assert table_fingerprint(t) == {"path": str(t), "present": False}
    (t / "dt=2026-07-01").mkdir(parents=True)
    (t / "dt=2026-07-01" / "part-0.parquet").write_bytes(b"x" * 10)
    (t / "_SUCCESS").write_bytes(b"")  # markers and hidden files are not data
    first_day = table_fingerprint(t, dates=(D1, D1))
    whole = table_fingerprint(t)
    assert first_day["files"] == whole["files"] == 1 and first_day["format"] == "parquet"
    (t / "dt=2026-07-02").mkdir()
    (t / "dt=2026-07-02" / "part-0.parquet").write_bytes(b"y" * 5)
    assert table_fingerprint(t, dates=(D1, D1)) == first_day  # a new day does not touch an older date
    assert table_fingerprint(t)["fingerprint"] != whole["fingerprint"]
    f = t / "dt=2026-07-01" / "part-0.parquet"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))  # rewritten within the same second
    assert table_fingerprint(t, dates=(D1, D1))["fingerprint"] != first_day["fingerprint"]


def _spark_files_fingerprint(spark, path: Path, dates) -> dict:
    """The expected fingerprint, from the files Spark itself reads for those dates."""
    from pyspark.sql import functions as F

    df = spark.read.format("delta").load(str(path))
    if dates is not None:
        df = df.filter((F.col("dt") >= F.lit(dates[0])) & (F.col("dt") <= F.lit(dates[1])))
    entries = []
    for uri in df.inputFiles():
        local = Path(unquote(urlparse(uri).path))
        entries.append(f"{os.path.relpath(local, path.resolve())}:{local.stat().st_size}:")
    entries.sort()
    return {"files": len(entries), "fingerprint": hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]}


def _ours(path: Path, dates) -> dict:
    fp = table_fingerprint(path, dates=dates)
    return {k: fp[k] for k in ("files", "fingerprint")}


@pytest.mark.slow
def test_delta_fingerprint_replays_the_log_as_spark_reads_it(spark, tmp_path):
    from pyspark.sql import functions as F

    path = tmp_path / "interactions"

    def write(day: dt.date, n: int, mode: str = "append") -> None:
        df = spark.range(n).withColumn("dt", F.lit(day)).repartition(2)
        w = df.write.format("delta").mode(mode).partitionBy("dt")
        if mode == "overwrite":
            w = w.option("replaceWhere", f"dt = '{day}'")
        w.save(str(path))

    write(D1, 10)
    write(D2, 10)
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.checkpointInterval' = '3')")
    first = _ours(path, (D1, D1))
    for dates in ((D1, D1), (D1, D2), None):
        assert _ours(path, dates) == _spark_files_fingerprint(spark, path, dates)
    write(D3, 5)  # a new day: the older dates keep their fingerprint
    assert _ours(path, (D1, D1)) == first
    write(D2, 7, mode="overwrite")  # a rewritten day: its files are removed and added in the log
    assert (path / "_delta_log" / "_last_checkpoint").is_file()  # replay starts from a checkpoint
    for dates in ((D1, D1), (D2, D2), (D1, D3), None):
        assert _ours(path, dates) == _spark_files_fingerprint(spark, path, dates)
    assert _ours(path, (D1, D1)) == first
    # the JSON commits before the checkpoint cleaned up (log retention): the checkpoint suffices
    checkpointed = int((path / "_delta_log" / "_last_checkpoint").read_text().split('"version":')[1].split(",")[0])
    for v in range(checkpointed + 1):
        (path / "_delta_log" / f"{v:020d}.json").unlink(missing_ok=True)
    assert _ours(path, None) == _spark_files_fingerprint(spark, path, None)
    # a log this reader cannot follow (no checkpoint, commits missing): the table's version instead
    (path / "_delta_log" / "_last_checkpoint").unlink()
    fallback = table_fingerprint(path)
    assert fallback["format"] == "delta" and "fingerprint" not in fallback and fallback["version"] >= 4
