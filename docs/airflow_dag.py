"""Example Airflow DAG: the twotower chain every night: one SparkSubmitOperator per feature stage,
then training, evaluation and the serving export of the date's model.

Each task runs `jobs/nightly.py --date {{ ds }} --stage <stage>`: it brings the chain of that date
up to date through its stage (skipping what is complete and unchanged, resuming an unfinished
build), and the last task publishes OUTPUT/<ds> atomically. Tasks are idempotent, so retries and
`airflow dags backfill` are safe; the date lock makes a manual `twotower nightly` of the same date
wait (`--lock-wait`) instead of interleaving. Adapt the constants to your cluster.

After the features: `twotower train` on a trainer host (or, with several workers, the TFJob of
docs/cluster.md), `twotower evaluate` (metrics.json beside the model), and `jobs/export.py`
(`twotower export`: the faiss index of the catalog and the user_embeddings Delta table, stamped
with the model's identity; its driver runs the user tower, so it needs the `train-cpu` extra).
Each writes its own folder per date and replaces it whole on a rerun.

Requires apache-airflow-providers-apache-spark and a `spark_default` connection to the cluster.
"""
from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

REPO = "/opt/twotower"  # the checkout the image was built from (jobs/, build/jars)
WHEEL = f"{REPO}/dist/twotower-0.1.0-py3-none-any.whl"  # python -m pip wheel --no-deps -w dist .
JARS = ",".join(f"{REPO}/build/jars/{j}" for j in (
    "delta-spark_4.1_2.13-4.3.1.jar", "delta-storage-4.3.1.jar", "postgresql-42.7.10.jar",
))
CONFIG = f"{REPO}/configs/production.toml"  # [stats] source = "postgres", password_file = "/etc/twotower/pg.pw"
INPUT = "/data/twotower/input"
OUTPUT = "/data/twotower/nightly"  # must be a POSIX file system (the date lock, the atomic link swap)
STAGES = ("prepare", "embeddings", "examples", "tfrecords")
MODELS = "/data/twotower/models"  # MODELS/<ds>: the model, MODELS/<ds>-eval, MODELS/<ds>-export
SPARK_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.sql.session.timeZone": "UTC",
}

with DAG(
    dag_id="twotower_nightly",
    description="two-tower features for the day that just ended (validation day = ds)",
    schedule="30 2 * * *",  # 02:30 UTC, once the day's partitions and statistics have landed
    start_date=dt.datetime(2026, 7, 1),
    catchup=True,  # missed days run in order; or use `twotower backfill --start --end`
    max_active_runs=1,  # one date at a time on the cluster (the lock also serialises one date)
    default_args={"retries": 2, "retry_delay": dt.timedelta(minutes=20)},
    tags=["twotower", "features"],
) as dag:
    previous = None
    for stage in STAGES:
        task = SparkSubmitOperator(
            task_id=f"features_{stage}",
            conn_id="spark_default",
            application=f"{REPO}/jobs/nightly.py",
            application_args=[
                "--config", CONFIG, "--input", INPUT, "--output", OUTPUT,
                "--date", "{{ ds }}", "--stage", stage, "--lock-wait", "1800",
            ],
            py_files=WHEEL,
            jars=JARS,
            deploy_mode="client",  # the driver writes the date lock and the published link
            conf=SPARK_CONF,
            name=f"twotower-{stage}-{{{{ ds }}}}",
        )
        if previous is not None:
            previous >> task
        previous = task

    features, model = f"{OUTPUT}/{{{{ ds }}}}", f"{MODELS}/{{{{ ds }}}}"
    train = BashOperator(  # resumes from its last epoch's checkpoint when a retry reruns it
        task_id="train",
        bash_command=f"twotower train --features {features} --model {model}",
    )
    evaluate = BashOperator(
        task_id="evaluate",
        bash_command=f"twotower evaluate --features {features} --model {model} --out {model}-eval",
    )
    export = SparkSubmitOperator(
        task_id="export",
        conn_id="spark_default",
        application=f"{REPO}/jobs/export.py",
        application_args=["--features", features, "--model", model, "--out", f"{model}-export", "--lock-wait", "1800"],
        py_files=WHEEL,
        jars=JARS,
        deploy_mode="client",  # the driver runs the user tower and builds the index
        conf=SPARK_CONF,
        name="twotower-export-{{ ds }}",
    )
    previous >> train >> evaluate >> export
