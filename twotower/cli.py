"""`twotower`: one click group; every Spark stage also runs as `spark-submit jobs/<stage>.py`.

Only this module (and the job files that call it) reads config files; the libraries receive
`ExperimentConfig` objects. The stage commands come from the stage table (``stages.py``).
TensorFlow is imported by the commands that train or evaluate, when they run, so the Spark
commands (and `spark-submit jobs/<stage>.py`) never load it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import time
from pathlib import Path

import click

from twotower_features import layout as L
from twotower_features.config import ConfigError, ExperimentConfig
from twotower_features.errors import UserError
from twotower_model import index as I

from . import stages as S
from .lock import LockBusy

EXPERIMENTS_DIR = Path(__file__).parent / "experiments"


def load_config(value: str, param_hint: str = "--config") -> ExperimentConfig:
    """A config file path, or the name of a config in the package's experiments folder."""
    p = Path(value)
    if not p.is_file():
        candidate = EXPERIMENTS_DIR / f"{value}.toml"
        if candidate.is_file():
            p = candidate
        else:
            names = sorted(x.stem for x in EXPERIMENTS_DIR.glob("*.toml"))
            raise click.BadParameter(f"{value!r} is neither a file nor a known experiment {names}", param_hint=param_hint)
    try:
        return ExperimentConfig.from_file(p)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None


def _spark(ctx: click.Context, app: str):
    from twotower_features.session import (
        SessionError,
        build_session,
        check_options,
        parse_conf,
    )

    opts = ctx.find_root().params
    try:
        conf = parse_conf(opts.get("conf") or ())
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--conf") from None
    try:
        check_options(master=opts.get("master"), conf=conf)
    except SessionError as e:
        raise click.UsageError(str(e)) from None
    return build_session(app, master=opts.get("master"), conf=conf)


def _check_generate(**params) -> None:
    """The generator's options, checked before a session starts (messages name the option)."""
    from twotower_features.generate import GenerateError, check_params

    try:
        check_params(**params)
    except GenerateError as e:
        raise click.BadParameter(str(e)) from None


@contextlib.contextmanager
def _lazy_spark(ctx: click.Context, app: str):
    """A factory that starts the session on first call (after the checks and locks that need
    none), stopped on exit."""
    started = []

    def factory():
        if not started:
            started.append(_spark(ctx, app))
        return started[0]

    try:
        yield factory
    finally:
        if started:
            started[0].stop()


def _saved_config(features_dir: str) -> ExperimentConfig:
    path = Path(features_dir, L.RESOLVED_CONFIG)
    if not path.is_file():
        raise UserError(f"{features_dir} has no {L.RESOLVED_CONFIG}: it is not the output of `twotower features`, or give --config")
    try:
        return ExperimentConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, ConfigError) as e:
        raise UserError(f"{path} is not a valid saved config ({e}): rerun `twotower features`, or give --config") from None


class _Busy(click.ClickException):
    exit_code = 75  # EX_TEMPFAIL: another run holds the lock; retry later


class _Main(click.Group):
    """Turns a user's mistake (``UserError``: the message names the table, column, key or path
    and the fix) into that message and exit status 1 (75 for a busy lock); anything else is a
    bug and keeps its traceback. ``--debug`` keeps the traceback of every error."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if ctx.params.get("debug"):
                raise
            if isinstance(e, LockBusy):
                raise _Busy(str(e)) from None
            raise click.ClickException(str(e)) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--master", default=None, help="Spark master (default: local[*], or what spark-submit gives).")
@click.option("--conf", multiple=True, metavar="KEY=VALUE", help="Extra Spark setting; repeatable.")
@click.option("--debug", is_flag=True, help="Show the Python traceback of every error, the user's mistakes too.")
def main(master: str | None, conf: tuple[str, ...], debug: bool) -> None:
    """Feature jobs, trainer and evaluator for two-tower recommenders."""


# ------------------------------------------------------------------------------ generate
@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the input tables.")
@click.option("--users", default=2000, show_default=True, type=click.IntRange(20))
@click.option("--items", default=1000, show_default=True, type=click.IntRange(20))
@click.option("--days", default=18, show_default=True, type=click.IntRange(1))
@click.option("--start", default="2026-06-18", show_default=True, help="First day (YYYY-MM-DD).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--embedding-dim", default=256, show_default=True, type=click.IntRange(2))
@click.option("--bad-row-share", default=0.0, show_default=True, type=click.FloatRange(0, 0.5), help="Share of contract-breaking rows to inject.")
@click.pass_context
def generate(ctx, out, users, items, days, start, seed, embedding_dim, bad_row_share):
    """Synthetic input tables with a known latent preference structure."""
    from twotower_features.generate import generate as run

    try:
        start_date = _dt.date.fromisoformat(start)
    except ValueError:
        raise click.BadParameter(f"expected YYYY-MM-DD, got {start!r}", param_hint="--start") from None
    _check_generate(users=users, items=items, days=days, seed=seed, embedding_dim=embedding_dim, bad_row_share=bad_row_share)
    spark = _spark(ctx, "twotower-generate")
    report = run(spark, out, users=users, items=items, days=days, start=start_date, seed=seed, embedding_dim=embedding_dim, bad_row_share=bad_row_share)
    click.echo(json.dumps(report.get("rows", report), indent=2, default=str))


# ------------------------------------------------------------------------------ features
def _feature_command(name: str, stages: tuple[str, ...], doc: str):
    @main.command(name=name, help=doc)
    @click.option("--config", "config", required=True, help="Experiment config file (TOML) or catalog name.")
    @click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Folder with the input tables.")
    @click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False), help="Folder for this experiment's feature outputs.")
    @click.option("--lock-wait", default=0.0, show_default=True, type=click.FloatRange(0), help="Seconds to wait for another run writing the same --output.")
    @click.pass_context
    def cmd(ctx, config, input_dir, output_dir, lock_wait):
        cfg = load_config(config)
        S.check_run(input_dir, output_dir, stages)  # before the session starts
        spark = _spark(ctx, f"twotower-{name}")
        try:  # a failed run publishes nothing: --output stays as it was
            S.run(spark, cfg, input_dir, output_dir, stages=stages, lock_wait_s=lock_wait, log=click.echo)
        finally:
            spark.stop()

    return cmd


_feature_command("features", S.NAMES, f"All Spark stages: {', '.join(S.NAMES)}.")
for _stage in S.STAGES:
    _feature_command(_stage.name, (_stage.name,), _stage.help)


# ------------------------------------------------------------------------------ model
@main.command()
@click.option("--features", "features_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Output folder of `twotower features`.")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False), help="Folder for the trained towers.")
@click.option("--config", "config", default=None, help="Config whose [model] section to use (default: the one saved with the features).")
@click.option("--epochs", default=None, type=click.IntRange(1), help="Override model.epochs.")
@click.option("--memory-cache-mb", default=None, type=click.IntRange(0),
              help="A train split whose TFRecords take at most this many MiB (default: a quarter of the machine's memory) is parsed once and trained on from memory; 0: always stream.")
def train(features_dir, model_dir, config, epochs, memory_cache_mb):
    """Train the two towers on CPU (or GPU) from feature_spec.json and the TFRecords."""
    from twotower_model.train import train as run

    cfg = load_config(config) if config else _saved_config(features_dir)
    model_cfg = cfg.model if epochs is None else dataclasses.replace(cfg.model, epochs=epochs)
    report = run(features_dir, model_dir, model_cfg, progress=click.echo, memory_cache_bytes=None if memory_cache_mb is None else memory_cache_mb << 20)
    click.echo(json.dumps({k: v for k, v in report.items() if not isinstance(v, (list, dict))}, indent=2, default=str))


def _index_options(f):
    # the one rule export and evaluate share (twotower_model/index.py: numpy only, faiss loaded lazily)
    f = click.option("--exact-limit", default=I.EXACT_LIMIT, show_default=True, type=click.IntRange(0),
                     help="Catalogs up to this many items are searched exactly; larger ones through an IVF index (faiss).")(f)
    return click.option("--index", "index_kind", default="auto", show_default=True, type=click.Choice(["auto", *I.KINDS]),
                        help="Force an index kind instead of the --exact-limit rule.")(f)


@main.command()
@click.option("--features", "features_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for predictions and metrics.")
@click.option("--ground-truth", default=None, type=click.Path(exists=True), help="Generator ground truth, for the oracle row.")
@_index_options
def evaluate(features_dir, model_dir, out_dir, ground_truth, index_kind, exact_limit):
    """Score the validation day; metrics next to random, popularity and oracle rows."""
    from twotower_model.evaluate import evaluate as run
    from twotower_model.evaluate import format_diagnostics, format_table

    result = run(features_dir, model_dir, out_dir, ground_truth=ground_truth, index_kind=index_kind, exact_limit=exact_limit)
    click.echo(format_table(result["rows"]))
    if "diagnostics" in result:
        click.echo("")
        click.echo(format_diagnostics(result["diagnostics"]))


@main.command(name="export")
@click.option("--features", "features_dir", required=True, type=click.Path(exists=True, file_okay=False), help="The features folder the model was trained on.")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Output folder of `twotower train`.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the index, its item ids, export.json and the user_embeddings Delta table.")
@_index_options
@click.option("--lock-wait", default=0.0, show_default=True, type=click.FloatRange(0), help="Seconds to wait for another run writing the same --out.")
@click.pass_context
def export_cmd(ctx, features_dir, model_dir, out_dir, index_kind, exact_limit, lock_wait):
    """Serving files: the item index (faiss), and every validation-day user's embedding as a Delta table."""
    from .export import run_export

    with _lazy_spark(ctx, "twotower-export") as spark:
        manifest = run_export(spark, features_dir, model_dir, out_dir, kind=index_kind, exact_limit=exact_limit, lock_wait_s=lock_wait, log=click.echo)
    click.echo(json.dumps({k: manifest[k] for k in ("items", "users", "validation_date")} | {"index": manifest["index"]["kind"]}, default=str))


@main.command()
@click.option("--predictions", required=True, type=click.Path(exists=True), help="Parquet with user_id, item_id, label, score.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="JSON file to write.")
def metrics(predictions, out):
    """The evaluator over any predictions table."""
    from twotower_model.metrics import evaluate_predictions_file

    result = evaluate_predictions_file(predictions, out)
    click.echo(json.dumps(result, indent=2, default=str))


@main.command()
@click.option("--features", "features_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Output folder of `twotower features`.")
@click.option("--grid", "grid_file", required=True, help="Grid file (TOML): [grid] lists of [model] settings, [[point]] tables, seeds.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the runs, sweep.json, sweep.md and sweep.html.")
@click.option("--config", "config", default=None, help="Config whose [model] section the grid starts from (default: the one saved with the features).")
@click.option("--ground-truth", default=None, type=click.Path(exists=True), help="Generator ground truth, for the oracle row.")
@click.option("--name", default=None, help="Sweep name in the page and MLflow (default: --out's folder name).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db).")
@click.option("--mlflow-experiment", default="twotower-sweep", show_default=True, help="MLflow experiment the runs are logged under.")
@click.option("--no-track", is_flag=True, help="Do not log the runs to MLflow.")
def sweep(features_dir, grid_file, out_dir, config, ground_truth, name, tracking_uri, mlflow_experiment, no_track):
    """Train and score a grid of [model] settings over built features, with model seeds; plots
    AUC against full-catalog recall@10 beside random, popularity and oracle (OUT/sweep.html)."""
    from .sweep import format_summary, read_grid, run_sweep

    cfg = load_config(config) if config else _saved_config(features_dir)
    grid = read_grid(grid_file, cfg.model)
    click.echo(f"== sweep: {len(grid.points)} points x {len(grid.seeds)} seeds = {len(grid.runs())} runs")
    summary = run_sweep(features_dir, grid, out_dir, base=cfg, name=name, ground_truth=ground_truth, tracking_uri=tracking_uri,
                        mlflow_experiment=mlflow_experiment, track=not no_track, log=click.echo)
    click.echo(format_summary(summary))
    click.echo(f"sweep: {Path(out_dir) / 'sweep.md'} and {Path(out_dir) / 'sweep.html'}")


# ------------------------------------------------------------------------------ demo
@main.command()
@click.option("--out", default="demo-output", show_default=True, type=click.Path(file_okay=False))
@click.option("--users", default=1500, show_default=True, type=click.IntRange(20))
@click.option("--items", default=800, show_default=True, type=click.IntRange(20))
@click.option("--config", "config", default="demo", show_default=True, help="Experiment config or catalog name.")
@click.pass_context
def demo(ctx, out, users, items, config):
    """Generate data, run every stage of the default experiment, train, evaluate, print metrics."""
    from twotower_features.generate import generate as gen

    cfg = load_config(config)
    _check_generate(users=users, items=items)
    out = Path(out)
    t0 = time.monotonic()
    spark = _spark(ctx, "twotower-demo")
    click.echo(f"== generate: {users} users, {items} items -> {out / 'data'}")
    gen_report = gen(spark, str(out / "data"), users=users, items=items, days=18, start=_dt.date(2026, 6, 18), seed=0)
    click.echo(json.dumps(gen_report.get("rows", {}), default=str))
    S.run(spark, cfg, str(out / "data"), str(out / "features"), log=click.echo)
    spark.stop()
    t_features = time.monotonic() - t0
    from twotower_model.evaluate import evaluate as run_eval
    from twotower_model.evaluate import format_diagnostics, format_table
    from twotower_model.train import train as run_train

    click.echo("== train")
    run_train(str(out / "features"), str(out / "model"), cfg.model, progress=click.echo)
    click.echo("== evaluate")
    result = run_eval(str(out / "features"), str(out / "model"), str(out / "eval"), ground_truth=str(out / "data" / "ground_truth"))
    click.echo(format_table(result["rows"]))
    if "diagnostics" in result:
        click.echo("")
        click.echo(format_diagnostics(result["diagnostics"]))
    click.echo(f"demo: {time.monotonic() - t0:.0f}s (data and features {t_features:.0f}s); outputs in {out}/")


# ------------------------------------------------------------------------------ experiments
@main.group()
def experiment():
    """The experiment catalog: list, run."""


@experiment.command(name="list")
def experiment_list():
    """List the experiment configs shipped with the package."""
    for p in sorted(EXPERIMENTS_DIR.glob("*.toml")):
        cfg = ExperimentConfig.from_file(p)
        click.echo(f"{p.stem:32s} {cfg.description}")


@experiment.command(name="run")
@click.argument("names", nargs=-1, required=True)
@click.option("--input", "input_dir", default=None, type=click.Path(file_okay=False), help="Input tables (default: ROOT/data, generated with `generate`'s defaults when missing).")
@click.option("--root", default="experiments-output", show_default=True, type=click.Path(file_okay=False), help="Folder for features, runs, the tracking store and the report.")
@click.option("--seed", "seeds", multiple=True, type=int, help="Override model.seed (runs are named NAME-seedS); repeat to run several seeds.")
@click.option("--epochs", default=None, type=click.IntRange(1), help="Override model.epochs.")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///ROOT/mlflow.db).")
@click.option("--mlflow-experiment", default="twotower", show_default=True, help="MLflow experiment the runs are logged under.")
@click.pass_context
def experiment_run(ctx, names, input_dir, root, seeds, epochs, tracking_uri, mlflow_experiment):
    """Run experiments end to end: features (reusing stage outputs already built under ROOT for
    the same config sections and inputs), train, evaluate, track in MLflow. NAMES are catalog
    names or config files."""
    from .experiment import run_experiment

    cfgs = [load_config(n, param_hint="NAMES") for n in names]
    spark = []

    def spark_factory():
        if not spark:
            spark.append(_spark(ctx, "twotower-experiment"))
        return spark[0]

    if input_dir is None:
        input_dir = str(Path(root, "data"))
        if not Path(input_dir, "interactions").exists():
            from twotower_features.generate import generate as gen

            click.echo(f"== generate (generator defaults) -> {input_dir}")
            gen(spark_factory(), input_dir)
    elif not Path(input_dir).is_dir():
        raise click.BadParameter(f"{input_dir!r} is not a folder", param_hint="--input")
    for cfg in cfgs:
        for seed in seeds or (None,):
            run_experiment(cfg, input_dir, root, spark_factory=spark_factory, seed=seed, epochs=epochs,
                           tracking_uri=tracking_uri, mlflow_experiment=mlflow_experiment, log=click.echo)
@main.command(name="report")
@click.option("--root", default="experiments-output", show_default=True, type=click.Path(exists=True, file_okay=False), help="Folder `experiment run` wrote to.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Where to write report.md and report.html (default: ROOT).")
def report(root, out_dir):
    """Side-by-side experiment report (Markdown and a self-contained HTML page with plots)."""
    from .report import write_report

    paths = write_report(root, out_dir or root)
    click.echo(Path(paths["markdown"]).read_text())
    click.echo(f"report: {paths['markdown']} and {paths['html']}")
# ------------------------------------------------------------------------------ nightly, backfill
def _iso_date(value: str, hint: str) -> _dt.date:
    try:
        return _dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"expected YYYY-MM-DD, got {value!r}", param_hint=hint) from None


def _production_options(f):
    for opt in reversed([
        click.option("--config", "config", required=True, help="Experiment config file (TOML) or catalog name; its window.validation_date is replaced by each date."),
        click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Folder with the input tables."),
        click.option("--output", "output_root", required=True, type=click.Path(file_okay=False), help="Output root: ROOT/<date> is the published snapshot of that date."),
        click.option("--force", is_flag=True, help="Rebuild every stage even when its output is complete and unchanged."),
        click.option("--dry-run", is_flag=True, help="Only report which stages would run."),
        click.option("--lock-wait", default=0.0, show_default=True, type=click.FloatRange(0), help="Seconds to wait for another run of the same date to finish."),
    ]):
        f = opt(f)
    return f


def _record_summary(r: dict) -> dict:
    return {k: r.get(k) for k in ("date", "status", "published", "run_id", "quarantine")} | {"stages": {s: v.get("action") for s, v in r.get("stages", {}).items()}}


@main.command(name="nightly")
@_production_options
@click.option("--date", "date_", required=True, help="The date D (YYYY-MM-DD): validation day D, train window the train_days days before it.")
@click.option("--stage", "until", default=S.NAMES[-1], show_default=True, type=click.Choice(S.NAMES), help="Bring the chain up to date through this stage (one spark-submit per stage); the last stage publishes.")
@click.pass_context
def nightly_cmd(ctx, config, input_dir, output_root, force, dry_run, lock_wait, date_, until):
    """The stage chain for one date, skipping stages whose output is complete and unchanged; publishes ROOT/DATE atomically."""
    from .nightly import run_date

    cfg = load_config(config)
    day = _iso_date(date_, "--date")
    with _lazy_spark(ctx, f"twotower-nightly-{day}") as spark:  # started once the date's lock is held
        record = run_date(spark, cfg, input_dir, output_root, day, until=until, force=force, dry_run=dry_run, lock_wait_s=lock_wait, log=click.echo)
    click.echo(json.dumps(_record_summary(record), indent=2, default=str))


@main.command(name="backfill")
@_production_options
@click.option("--start", "start", required=True, help="First date (YYYY-MM-DD).")
@click.option("--end", "end", required=True, help="Last date (YYYY-MM-DD), inclusive.")
@click.option("--keep-going", is_flag=True, help="Run every date even when one fails (exit status 1 if any failed).")
@click.pass_context
def backfill_cmd(ctx, config, input_dir, output_root, force, dry_run, lock_wait, start, end, keep_going):
    """`nightly` for every date from --start to --end, oldest first; each date is its own snapshot."""
    from .nightly import backfill

    cfg = load_config(config)
    first, last = _iso_date(start, "--start"), _iso_date(end, "--end")
    if last < first:
        raise click.BadParameter(f"--end ({last}) is before --start ({first})", param_hint="--end")
    with _lazy_spark(ctx, f"twotower-backfill-{first}-{last}") as spark:
        records = backfill(spark, cfg, input_dir, output_root, first, last, keep_going=keep_going, force=force, dry_run=dry_run, lock_wait_s=lock_wait, log=click.echo)
    click.echo(json.dumps([_record_summary(r) for r in records], indent=2, default=str))
    failed = [r["date"] for r in records if r.get("status") == "failed"]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(records)} dates failed: {failed}")


if __name__ == "__main__":
    main()
