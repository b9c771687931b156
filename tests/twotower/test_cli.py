"""The `twotower` CLI's own checks of the user's input: every command's error exit (2 for a usage
error, 1 for a ClickException, 75 for a date whose nightly lock is held), with a message that
names the bad option, path or value, and no traceback.

Every test runs behind guards (the autouse ``guards`` fixture): starting Spark, the trainer or
the experiment runner raises ``AssertionError``, so an error that the CLI reports only after it
has started Spark fails its test: no test here needs a Spark session.
"""
from __future__ import annotations

import sys
import tomllib
import traceback
import types
from pathlib import Path

import click
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from twotower import cli
from twotower.lock import ExclusiveLock

CATALOG = Path(__file__).resolve().parents[2] / "twotower" / "experiments"
CATALOG_NAMES = sorted(p.stem for p in CATALOG.glob("*.toml"))

# every command of `twotower --help`, written down: a new command fails test_commands_are_all_covered
COMMANDS = (
    "generate", "features", "prepare", "embeddings", "examples", "tfrecords", "train", "evaluate",
    "metrics", "demo", "experiment list", "experiment run", "report", "nightly", "backfill", "sweep", "export",
)
FEATURE_COMMANDS = ("features", "prepare", "embeddings", "examples", "tfrecords")
DATE = "2026-07-05"

_REAL_SPARK = cli._spark


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} started")

    return refuse


@pytest.fixture(autouse=True)
def guards(monkeypatch):
    """Spark, the trainer and the experiment runner must not start in an error case.

    The trainer and the runner are replaced in ``sys.modules`` (restored after the test): the real
    modules import TensorFlow, which costs seconds and which no check of the CLI needs.
    """
    monkeypatch.setattr(cli, "_spark", _refuse("spark"))
    train = types.ModuleType("twotower_model.train")
    train.train = _refuse("training")
    monkeypatch.setitem(sys.modules, "twotower_model.train", train)
    experiment = types.ModuleType("twotower.experiment")
    experiment.run_experiment = _refuse("experiment")
    monkeypatch.setitem(sys.modules, "twotower.experiment", experiment)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def assert_fails(result: Result, code: int, *fragments: str) -> None:
    """A clean exit with ``code`` (no traceback), the error on stderr naming every fragment."""
    if not isinstance(result.exception, SystemExit):
        shown = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else repr(result.exception)
        pytest.fail(f"expected exit {code}, got an exception:\n{shown}\nstderr: {result.stderr}")
    assert result.exit_code == code, (result.exit_code, result.stderr)
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def inp(tmp_path) -> Path:
    """An existing, empty input folder."""
    d = tmp_path / "input"
    d.mkdir()
    return d


# ------------------------------------------------------------------------------ the guards themselves
def test_commands_are_all_covered():
    def walk(group: click.Group, prefix: str = ""):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from walk(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    assert sorted(walk(cli.main)) == sorted(COMMANDS)


def test_the_spark_guard_fires_on_valid_input(tmp_path):
    # the control for every "before Spark" test below: valid input does reach the guard
    result = invoke("generate", "--out", tmp_path / "data")
    assert isinstance(result.exception, AssertionError) and str(result.exception) == "spark started"


def test_the_trainer_guard_fires_on_valid_input(tmp_path):
    features = tmp_path / "features"
    features.mkdir()
    result = invoke("train", "--features", features, "--model", tmp_path / "model", "--config", "demo")
    assert isinstance(result.exception, AssertionError) and str(result.exception) == "training started"


# ------------------------------------------------------------------------------ happy paths (no Spark, no TensorFlow)
def test_experiment_list_prints_every_catalog_config():
    assert "demo" in CATALOG_NAMES and len(CATALOG_NAMES) >= 2
    result = invoke("experiment", "list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == CATALOG_NAMES
    for line, name in zip(lines, CATALOG_NAMES):
        description = tomllib.loads((CATALOG / f"{name}.toml").read_text()).get("description", "")
        assert line.rstrip().endswith(description.rstrip()), (line, description)


def test_main_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for top in {c.split()[0] for c in COMMANDS}:
        assert f"  {top} " in result.stdout or f"  {top}\n" in result.stdout, top


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command):
    result = invoke(*command.split(), "--help")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"Usage: main {command} ")


# ------------------------------------------------------------------------------ bad config files, for every command that reads one
BAD_CONFIGS = {
    "unknown_key": ("[window]\ntrian_days = 3\n", ("--config", "trian_days", "'window'")),
    "bool_for_int": ("[window]\ntrain_days = true\n", ("--config", "window.train_days", "True")),
    "section_typo": ("[windw]\ntrain_days = 3\n", ("--config", "windw")),
    "not_toml": ("[window\ntrain_days = 3\n", ("--config", "is not valid TOML", "bad.toml")),
}


def _config_argv(command: str, config: Path | str, tmp_path: Path, inp: Path) -> list:
    out = tmp_path / "out"
    if command in FEATURE_COMMANDS:
        return [command, "--config", config, "--input", inp, "--output", out]
    features = tmp_path / "features"
    features.mkdir(exist_ok=True)
    return {
        "train": ["train", "--features", features, "--model", out, "--config", config],
        "demo": ["demo", "--config", config, "--out", out],
        "experiment run": ["experiment", "run", config, "--input", inp, "--root", out],
        "nightly": ["nightly", "--config", config, "--input", inp, "--output", out, "--date", DATE],
        "backfill": ["backfill", "--config", config, "--input", inp, "--output", out, "--start", DATE, "--end", DATE],
    }[command]


CONFIG_COMMANDS = (*FEATURE_COMMANDS, "train", "demo", "experiment run", "nightly", "backfill")


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_bad_config_file_is_refused_before_spark(command, case, tmp_path, inp):
    text, fragments = BAD_CONFIGS[case]
    if command == "experiment run":  # its configs are positional NAMES, not --config
        fragments = tuple("NAMES" if f == "--config" else f for f in fragments)
    config = write(tmp_path / "bad.toml", text)
    assert_fails(invoke(*_config_argv(command, config, tmp_path, inp)), 2, *fragments)


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_unknown_config_name_lists_the_catalog(command, tmp_path, inp):
    result = invoke(*_config_argv(command, "exp99_nope", tmp_path, inp))
    assert_fails(result, 2, "'exp99_nope' is neither a file nor a known experiment", *CATALOG_NAMES)


def test_config_file_not_utf8(tmp_path, inp):
    config = tmp_path / "latin1.toml"
    config.write_bytes(b"description = 'caf\xe9'\n")
    assert_fails(invoke(*_config_argv("features", config, tmp_path, inp)), 2, "--config", "latin1.toml")


# ------------------------------------------------------------------------------ global options
def test_conf_without_equals_is_refused_before_the_session(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_spark", _REAL_SPARK)
    monkeypatch.setattr("twotower_features.session.build_session", _refuse("spark"))
    result = invoke("--conf", "spark.sql.shuffle.partitions", "generate", "--out", tmp_path / "data")
    assert_fails(result, 2, "--conf", "key=value", "'spark.sql.shuffle.partitions'")


def test_conf_with_equals_reaches_the_session(tmp_path, monkeypatch):
    # the control for the test above
    monkeypatch.setattr(cli, "_spark", _REAL_SPARK)
    monkeypatch.setattr("twotower_features.session.build_session", _refuse("spark"))
    result = invoke("--conf", "spark.sql.shuffle.partitions=4", "generate", "--out", tmp_path / "data")
    assert isinstance(result.exception, AssertionError) and str(result.exception) == "spark started"


def test_unknown_command():
    assert_fails(invoke("feature"), 2, "No such command 'feature'")


# ------------------------------------------------------------------------------ generate
@pytest.mark.parametrize("args, fragments", [
    (["--start", "2026/06/18"], ["--start", "expected YYYY-MM-DD", "'2026/06/18'"]),
    (["--start", "2026-02-30"], ["--start", "'2026-02-30'"]),
    (["--users", "5"], ["--users", "5 is not in the range x>=20"]),
    (["--days", "0"], ["--days", "0 is not in the range x>=1"]),
    (["--embedding-dim", "1"], ["--embedding-dim"]),
    (["--bad-row-share", "0.9"], ["--bad-row-share", "0.9"]),
    (["--seed", "one"], ["--seed", "'one' is not a valid integer"]),
])
def test_generate_bad_option(args, fragments, tmp_path):
    assert_fails(invoke("generate", "--out", tmp_path / "data", *args), 2, *fragments)


def test_generate_needs_out():
    assert_fails(invoke("generate"), 2, "Missing option '--out'")


def test_generate_out_is_a_file(tmp_path):
    f = write(tmp_path / "data", "x")
    assert_fails(invoke("generate", "--out", f), 2, "--out", str(f), "is a file")


def test_generate_too_few_items_for_the_topics(tmp_path):
    assert_fails(invoke("generate", "--out", tmp_path / "data", "--items", "20"), 2, "--items")


def test_generate_negative_seed(tmp_path):
    assert_fails(invoke("generate", "--out", tmp_path / "data", "--seed", "-1"), 2, "--seed", "-1")


# ------------------------------------------------------------------------------ features and the four stage commands
@pytest.mark.parametrize("command", FEATURE_COMMANDS)
def test_stage_command_missing_input_folder(command, tmp_path):
    missing = tmp_path / "no-such-input"
    result = invoke(command, "--config", "demo", "--input", missing, "--output", tmp_path / "out")
    assert_fails(result, 2, "--input", str(missing), "does not exist")


@pytest.mark.parametrize("command", FEATURE_COMMANDS)
def test_stage_command_input_is_a_file(command, tmp_path):
    f = write(tmp_path / "input", "x")
    assert_fails(invoke(command, "--config", "demo", "--input", f, "--output", tmp_path / "out"), 2, "--input", "is a file")


@pytest.mark.parametrize("command", FEATURE_COMMANDS)
def test_stage_command_output_is_a_file(command, tmp_path, inp):
    f = write(tmp_path / "out", "x")
    assert_fails(invoke(command, "--config", "demo", "--input", inp, "--output", f), 2, "--output", str(f), "is a file")


@pytest.mark.parametrize("command", FEATURE_COMMANDS)
def test_stage_command_needs_config(command, tmp_path, inp):
    assert_fails(invoke(command, "--input", inp, "--output", tmp_path / "out"), 2, "Missing option '--config'")


# ------------------------------------------------------------------------------ train, evaluate, metrics
def test_train_missing_features_folder(tmp_path):
    missing = tmp_path / "no-features"
    assert_fails(invoke("train", "--features", missing, "--model", tmp_path / "model"), 2, "--features", str(missing), "does not exist")


def test_train_zero_epochs(tmp_path):
    (tmp_path / "features").mkdir()
    result = invoke("train", "--features", tmp_path / "features", "--model", tmp_path / "model", "--epochs", "0")
    assert_fails(result, 2, "--epochs", "0 is not in the range x>=1")


def test_train_model_is_a_file(tmp_path):
    (tmp_path / "features").mkdir()
    f = write(tmp_path / "model", "x")
    assert_fails(invoke("train", "--features", tmp_path / "features", "--model", f), 2, "--model", "is a file")


def test_train_features_folder_without_saved_config(tmp_path):
    (tmp_path / "features").mkdir()
    result = invoke("train", "--features", tmp_path / "features", "--model", tmp_path / "model")
    assert_fails(result, 1, "resolved_config.json", str(tmp_path / "features"))


@pytest.mark.parametrize("option", ["--features", "--model"])
def test_evaluate_missing_folder(option, tmp_path):
    paths = {"--features": tmp_path / "features", "--model": tmp_path / "model"}
    paths[{"--features": "--model", "--model": "--features"}[option]].mkdir()
    result = invoke("evaluate", "--features", paths["--features"], "--model", paths["--model"], "--out", tmp_path / "eval")
    assert_fails(result, 2, option, str(paths[option]), "does not exist")


def test_evaluate_missing_ground_truth(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "model").mkdir()
    missing = tmp_path / "no-ground-truth"
    result = invoke("evaluate", "--features", tmp_path / "features", "--model", tmp_path / "model", "--out", tmp_path / "eval",
                    "--ground-truth", missing)
    assert_fails(result, 2, "--ground-truth", str(missing), "does not exist")


def test_evaluate_features_folder_without_spec(tmp_path):
    (tmp_path / "features").mkdir()
    (tmp_path / "model").mkdir()
    result = invoke("evaluate", "--features", tmp_path / "features", "--model", tmp_path / "model", "--out", tmp_path / "eval")
    assert_fails(result, 1, "feature_spec.json")


def _sweep(tmp_path, grid_text: str | None = "[grid]\nloss = ['bce']\n", *extra):
    grid = write(tmp_path / "grid.toml", grid_text) if grid_text is not None else tmp_path / "grid.toml"
    return invoke("sweep", "--features", tmp_path / "features", "--grid", grid, "--out", tmp_path / "sweep", *extra)


def test_sweep_features_folder_without_saved_config(tmp_path):
    (tmp_path / "features").mkdir()
    assert_fails(_sweep(tmp_path), 1, "resolved_config.json", str(tmp_path / "features"))


def test_sweep_missing_grid_file(tmp_path):
    (tmp_path / "features").mkdir()
    assert_fails(_sweep(tmp_path, None, "--config", "demo"), 1, "grid file", str(tmp_path / "grid.toml"), "does not exist")


@pytest.mark.parametrize("text, fragment", [
    ("[grid]\nloss = ['bce', 'focal']\n", "model.loss"),
    ("[grid]\nseed = [1]\n", "top-level 'seeds'"),
    ("[[point]]\nbatch_size = 0\n", "model.batch_size"),
])
def test_sweep_bad_grid_names_the_key(tmp_path, text, fragment):
    (tmp_path / "features").mkdir()
    assert_fails(_sweep(tmp_path, text, "--config", "demo"), 1, str(tmp_path / "grid.toml"), fragment)


def test_sweep_features_folder_without_spec(tmp_path):
    (tmp_path / "features").mkdir()
    assert_fails(_sweep(tmp_path, "[grid]\nloss = ['bce']\n", "--config", "demo"), 1, "feature_spec.json")


def _export(tmp_path, out, *extra):
    for d in ("features", "model"):
        (tmp_path / d).mkdir(exist_ok=True)
    return invoke("export", "--features", tmp_path / "features", "--model", tmp_path / "model", "--out", out, *extra)


def test_export_out_inside_the_model_folder(tmp_path):
    assert_fails(_export(tmp_path, tmp_path / "model" / "export"), 1, "would overwrite --model")


def test_export_out_is_someone_elses_folder(tmp_path):
    write(tmp_path / "mine" / "notes.txt", "keep")
    assert_fails(_export(tmp_path, tmp_path / "mine"), 1, "not an export folder")


def test_export_model_folder_without_provenance(tmp_path):
    # an empty model folder: refused before Spark with the file it lacks and the fix
    assert_fails(_export(tmp_path, tmp_path / "export"), 1, "provenance.json", "train")
    assert not (tmp_path / "export").exists()


def test_export_bad_index_kind(tmp_path):
    assert_fails(_export(tmp_path, tmp_path / "export", "--index", "annoy"), 2, "--index")


def test_metrics_missing_predictions(tmp_path):
    missing = tmp_path / "predictions.parquet"
    assert_fails(invoke("metrics", "--predictions", missing, "--out", tmp_path / "m.json"), 2, "--predictions", str(missing), "does not exist")


def test_metrics_out_is_a_folder(tmp_path):
    predictions = tmp_path / "p.parquet"
    pd.DataFrame({"user_id": [1], "item_id": [2], "label": [1], "score": [0.5]}).to_parquet(predictions)
    assert_fails(invoke("metrics", "--predictions", predictions, "--out", tmp_path), 2, "--out", "is a directory")


def test_metrics_predictions_without_score(tmp_path):
    predictions = tmp_path / "p.parquet"
    pd.DataFrame({"user_id": [1], "item_id": [2], "label": [1]}).to_parquet(predictions)
    assert_fails(invoke("metrics", "--predictions", predictions, "--out", tmp_path / "m.json"), 1, "score")


def test_metrics_predictions_not_parquet(tmp_path):
    predictions = write(tmp_path / "predictions.csv", "user_id,item_id,label,score\n1,2,1,0.5\n")
    assert_fails(invoke("metrics", "--predictions", predictions, "--out", tmp_path / "m.json"), 1, "predictions.csv")


# ------------------------------------------------------------------------------ demo
@pytest.mark.parametrize("args, fragments", [
    (["--users", "5"], ["--users", "5 is not in the range x>=20"]),
    (["--items", "19"], ["--items", "19 is not in the range x>=20"]),
])
def test_demo_bad_option(args, fragments, tmp_path):
    assert_fails(invoke("demo", "--out", tmp_path / "demo", *args), 2, *fragments)


def test_demo_out_is_a_file(tmp_path):
    f = write(tmp_path / "demo", "x")
    assert_fails(invoke("demo", "--out", f), 2, "--out", "is a file")


# ------------------------------------------------------------------------------ experiment run, report
def test_experiment_run_unknown_name_lists_the_catalog(tmp_path, inp):
    result = invoke("experiment", "run", "demo", "exp99_nope", "--input", inp, "--root", tmp_path / "root")
    assert_fails(result, 2, "'exp99_nope'", "known experiment", *CATALOG_NAMES)


def test_experiment_run_unknown_name_does_not_blame_config(tmp_path, inp):
    result = invoke("experiment", "run", "exp99_nope", "--input", inp, "--root", tmp_path / "root")
    assert_fails(result, 2, "'exp99_nope'")
    assert "--config" not in result.stderr


def test_experiment_run_needs_a_name():
    assert_fails(invoke("experiment", "run"), 2, "Missing argument 'NAMES...'")


def test_experiment_run_missing_input_folder(tmp_path):
    missing = tmp_path / "no-such-input"
    result = invoke("experiment", "run", "demo", "--input", missing, "--root", tmp_path / "root")
    assert_fails(result, 2, "--input", str(missing), "is not a folder")


def test_experiment_run_input_is_a_file(tmp_path):
    f = write(tmp_path / "input", "x")
    assert_fails(invoke("experiment", "run", "demo", "--input", f, "--root", tmp_path / "root"), 2, "--input", "is a file")


def test_experiment_run_zero_epochs(tmp_path, inp):
    result = invoke("experiment", "run", "demo", "--input", inp, "--root", tmp_path / "root", "--epochs", "0")
    assert_fails(result, 2, "--epochs", "0 is not in the range x>=1")


def test_experiment_run_unknown_experiment_command():
    assert_fails(invoke("experiment", "start", "demo"), 2, "No such command 'start'")


def test_report_missing_root(tmp_path):
    missing = tmp_path / "no-root"
    assert_fails(invoke("report", "--root", missing), 2, "--root", str(missing), "does not exist")


def test_report_root_without_runs(tmp_path):
    result = invoke("report", "--root", tmp_path)
    assert_fails(result, 1, f"no run records under {str(tmp_path / 'runs')!r}", "twotower experiment run")
    assert not (tmp_path / "report.md").exists()


def test_report_run_record_not_json(tmp_path):
    record = write(tmp_path / "runs" / "exp01" / "run.json", "{not json")
    assert_fails(invoke("report", "--root", tmp_path), 1, f"run record {str(record)!r} is not valid JSON")


def test_report_run_record_without_metrics(tmp_path):
    record = write(tmp_path / "runs" / "exp01" / "run.json", '{"experiment": "exp01", "run_name": "exp01"}')
    assert_fails(invoke("report", "--root", tmp_path), 1, f"run record {str(record)!r} lacks 'metrics'")


# ------------------------------------------------------------------------------ nightly, backfill
def _production(command: str, tmp_path: Path, inp: Path, *args: str) -> Result:
    return invoke(command, "--config", "demo", "--input", inp, "--output", tmp_path / "out", *args)


@pytest.mark.parametrize("args, fragments", [
    (["--date", "2026-13-01"], ["--date", "expected YYYY-MM-DD", "'2026-13-01'"]),
    (["--date", "yesterday"], ["--date", "'yesterday'"]),
    (["--date", DATE, "--stage", "bogus"], ["--stage", "'bogus' is not one of", "'prepare'", "'tfrecords'"]),
    (["--date", DATE, "--lock-wait", "-1"], ["--lock-wait", "-1"]),
    ([], ["Missing option '--date'"]),
])
def test_nightly_bad_option(args, fragments, tmp_path, inp):
    assert_fails(_production("nightly", tmp_path, inp, *args), 2, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--start", DATE, "--end", "2026-07-01"], ["--end", f"--end (2026-07-01) is before --start ({DATE})"]),
    (["--start", "2026-07-32", "--end", DATE], ["--start", "'2026-07-32'"]),
    (["--start", DATE, "--end", "07/06/2026"], ["--end", "'07/06/2026'"]),
    (["--start", DATE], ["Missing option '--end'"]),
])
def test_backfill_bad_option(args, fragments, tmp_path, inp):
    assert_fails(_production("backfill", tmp_path, inp, *args), 2, *fragments)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["nightly", "backfill"])
def test_production_missing_input_folder(command, tmp_path):
    missing = tmp_path / "no-such-input"
    dates = ["--date", DATE] if command == "nightly" else ["--start", DATE, "--end", DATE]
    assert_fails(_production(command, tmp_path, missing, *dates), 2, "--input", str(missing), "does not exist")


def test_nightly_busy_date_exits_75(tmp_path, inp):
    # no Spark: the session starts once the date's lock is held
    lock = tmp_path / "out" / ".locks" / f"{DATE}.lock"
    with ExclusiveLock(lock, run_id="holder-run"):
        result = _production("nightly", tmp_path, inp, "--date", DATE)
    assert_fails(result, 75, str(lock), "run holder-run", "this run did nothing")
    assert not (tmp_path / "out" / DATE).exists()
    assert not (tmp_path / "out" / "_nightly").exists()


def test_backfill_busy_date_exits_75(tmp_path, inp):
    # no Spark: the session starts once the date's lock is held
    lock = tmp_path / "out" / ".locks" / f"{DATE}.lock"
    with ExclusiveLock(lock, run_id="holder-run"):
        result = _production("backfill", tmp_path, inp, "--start", DATE, "--end", DATE)
    assert_fails(result, 75, str(lock), "run holder-run")


def test_stage_command_input_folder_without_tables(tmp_path, inp):
    # no Spark: the input tables are looked for before the session starts
    result = invoke("prepare", "--config", "demo", "--input", inp, "--output", tmp_path / "out")
    assert_fails(result, 1, str(inp / "interactions"), "does not exist")
