"""The stage table: one record per feature stage, the one place that says what it runs, reads
and writes. The CLI's stage commands, experiment stage reuse (``experiment.py``) and nightly
stage skipping (``nightly.py``) all read it, and stage keys are computed from it
(``fingerprints.py``).

A stage's record names:

- ``runner``: ``run_<stage>(spark, cfg, input_dir, output_dir, log) -> StageReport``;
- ``sections``: the config sections it reads itself;
- ``derived``: what it reads from other sections, as the pipeline reads it (a function of the
  config), so that two configs whose differences the stage never reads share its output;
- ``inputs``: the input tables it can read (all are checked before a run);
- ``unread``: those of ``inputs`` a config leaves unread (a function of the config; by default
  none): only the fingerprints of the others enter its key;
- ``outputs``: what it writes under the features folder (``twotower_features.layout``).

Stages run in table order and each reads what the ones before it wrote, so a stage's key chains
the key of the stage before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from twotower_features import columns as C
from twotower_features import io, pipeline
from twotower_features import layout as L
from twotower_features.config import ExperimentConfig
from twotower_features.errors import UserError

from .progress import spark_jobs
from .staging import check_output, staged

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from twotower_features.report import StageReport


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    runner: Callable[..., Any]
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    derived: Callable[[ExperimentConfig], dict[str, Any]] = lambda cfg: {}
    unread: Callable[[ExperimentConfig], tuple[str, ...]] = lambda cfg: ()

    def inputs_read(self, cfg: ExperimentConfig) -> tuple[str, ...]:
        skipped = self.unread(cfg)
        return tuple(t for t in self.inputs if t not in skipped)


def _prepare_derived(cfg: ExperimentConfig) -> dict[str, Any]:
    # items whose embeddings hold NaN are quarantined, for the sources the experiment needs
    return {"needed_sources": pipeline.needed_sources(cfg)}


def _embeddings_derived(cfg: ExperimentConfig) -> dict[str, Any]:
    aggs = set(cfg.history.aggregations)
    return {
        "needed_sources": pipeline.needed_sources(cfg),
        "clusters": "clusters" in aggs,
        "history_matrix_source": cfg.history.source if aggs & {"mean", "concat"} else None,
    }


def _examples_derived(cfg: ExperimentConfig) -> dict[str, Any]:
    # the users' columns the towers use are joined to the examples (features.user)
    return {"user_columns": pipeline.user_columns(cfg)}


def _examples_unread(cfg: ExperimentConfig) -> tuple[str, ...]:
    # the users table is read only for the users' columns the towers use
    return () if pipeline.user_columns(cfg) else (C.USERS,)


STAGES: tuple[Stage, ...] = (
    Stage(
        "prepare", "Stages 1-4: validate and quarantine, window and split, item and client filters, label, weight.",
        pipeline.run_prepare, ("window", "filters", "label", "weight", "quality"), (C.INTERACTIONS, C.ITEMS),
        (L.FILTERED, L.QUARANTINE, L.ITEM_AVG_TIME_SPENT, L.ITEM_FILTER, L.CLIENT_FILTER, L.report("prepare")),
        _prepare_derived,
    ),
    Stage(
        "embeddings", "Stage 7: PCA-compressed content embeddings and KMeans clusters, fitted on train items.",
        pipeline.run_embeddings, ("embeddings",), (C.ITEMS,),
        (L.EMBEDDINGS, L.ITEMS, L.HISTORY_MATRIX, L.report("embeddings")),
        _embeddings_derived,
    ),
    Stage(
        "examples", "Stages 5, 6, 8: user sampling, point-in-time histories, rebalancing, statistics, tower features.",
        pipeline.run_examples, ("sampling", "history", "stats"), (C.USERS, *C.STATS_TABLES),
        (L.EXAMPLES, L.NORMALISATION, L.report("examples")),
        _examples_derived, _examples_unread,
    ),
    Stage(
        "tfrecords", "Stage 9: vocabularies, feature_spec.json, sharded TFRecords and the manifest.",
        pipeline.run_tfrecords, ("features", "output", "stats"), ("item_stats", "creator_stats"),
        (L.VOCAB, L.TFRECORDS, L.ITEM_FREQUENCY, L.FEATURE_SPEC, L.MANIFEST, L.report("tfrecords")),
    ),
)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


def select(names: tuple[str, ...] | list[str]) -> tuple[Stage, ...]:
    """The named stages, in table order; unknown names raise ValueError naming them."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; expected some of {list(NAMES)}")
    return tuple(s for s in STAGES if s.name in names)


REQUIRED_INPUTS = (C.INTERACTIONS, C.ITEMS)  # the other input tables are optional


def check_inputs(input_dir: str, stages: tuple[str, ...] | list[str] = NAMES) -> None:
    """Refuse missing or empty input tables of the named stages before a session starts."""
    for table in sorted({t for stage in select(stages) for t in stage.inputs}):
        io.check_input_table(io.table_path(input_dir, table), required=table in REQUIRED_INPUTS)


def check_run(input_dir: str, out: str, stages: tuple[str, ...] | list[str] = NAMES) -> Path:
    """Everything checkable before a session starts and before the first write of a stage run:
    the output folder (``staging.check_output``), the input tables, and that the stages before
    the first one asked for have finished in ``out``. Returns ``out`` as an absolute path."""
    chosen = select(stages)
    out_p = check_output(out, input_dir, C.INPUT_TABLES)
    check_inputs(input_dir, stages)
    for earlier in STAGES[: NAMES.index(chosen[0].name)]:
        if not (out_p / L.report(earlier.name)).is_file():
            raise UserError(
                f"stage {chosen[0].name} reads the outputs of stage {earlier.name}, which {out} does not hold "
                f"(no {L.report(earlier.name)}): run `twotower {earlier.name}` first, or `twotower features`"
            )
    return out_p


def run_stage(stage: Stage, spark: SparkSession, cfg: ExperimentConfig, input_dir: str, out: str, log: Callable[[str], None] = print) -> StageReport:
    """One stage's runner, with a line per Spark job it starts (``progress.spark_jobs``)."""
    with spark_jobs(spark, log, stage.name):
        return stage.runner(spark, cfg, input_dir, out, log)


def run(
    spark: SparkSession, cfg: ExperimentConfig, input_dir: str, out: str, *,
    stages: tuple[str, ...] | list[str] = NAMES, lock_wait_s: float = 0.0, log: Callable[[str], None] = print,
) -> dict[str, StageReport]:
    """Run the named stages in table order in one session, into a staging copy of ``out``
    published only when every stage succeeded (``staging.staged``: one writer per folder, a
    failed run leaves ``out`` as it was). The outputs of the stages run and of every stage after
    them are replaced; the stages before them must have finished in ``out`` already."""
    out_p = check_run(input_dir, out, stages)
    chosen = select(stages)
    drop = [o for stage in STAGES[NAMES.index(chosen[0].name):] for o in stage.outputs]
    reports = {}
    with staged(out_p, drop=drop, lock_wait_s=lock_wait_s, log=log) as build:
        for stage in chosen:
            log(f"== stage {stage.name}")
            reports[stage.name] = run_stage(stage, spark, cfg, input_dir, str(build), log)
        log(f"== publishing {out_p}")
    return reports
