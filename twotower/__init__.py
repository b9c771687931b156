"""twotower: the orchestration of the feature jobs and the trainer (CLI, stage table, experiment
runner, MLflow tracking, nightly and backfill runs, the experiment report).

Imports run one way: ``twotower`` -> ``twotower_model`` -> ``twotower_features``; nothing below
imports this package (docs/architecture.md).
"""
