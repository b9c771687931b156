"""The layout of a model folder (``train``) and of an evaluation folder (``evaluate``): one name
per file or folder. No TensorFlow here, so the orchestration and the report can name the files
without loading it.

A model folder holds:

- ``user_tower/``, ``item_tower/``: SavedModels, each with a ``serving_default`` signature that
  takes the tower's raw feature tensors (``[batch, *shape]``; strings for ids) by column name
  and returns ``{"embedding": [batch, output_dim]}``. The model's logit is exactly
  ``dot(user embedding, item embedding)`` (the head is folded into the towers, see
  ``model.py``); written by ``export.save_model``, read by ``export.load_towers``. With a
  retrieval prior or a separate retrieval head the user tower also has the ``retrieval_query``
  signature (the query of an inner-product index over ``item_embeddings.parquet``, with the
  prior's 1.0 appended), and with the head the item tower ``retrieval_candidate``;
- ``model.keras``: the whole Keras model (towers, head, task), for ``export.load_model``; the
  vocabularies and the softmax task's item counts are files of its archive, not of its config;
- ``item_embeddings.parquet``: ``item_id`` (string), ``embedding`` (list<float>), one row per
  catalog item, its retrieval candidate vector (plus the prior's column, ``prior.py``); written by ``predict.write_item_embeddings``, read by ``items.read_item_embeddings``;
- ``resolved_model_config.json``: the ``ModelConfig`` with every default filled in;
- ``provenance.json``: the features folder the model was trained on (``provenance.py``: its
  manifest's ``config_hash``, ``data_hash``, ``created_at``, the feature spec's version and
  sha256, its path); each exported tower carries the same JSON as its string variable
  ``provenance``, so a loader of the towers alone can check it;
- ``train_report.json``: examples, examples/s, epochs, losses, wall time, optimiser;
- ``checkpoint/``, only while ``train`` runs or after it was killed: the last finished epoch's
  weights and optimizer state (Keras ``BackupAndRestore``) and ``training.json``, the settings
  and features they belong to; rerunning the same command resumes from it.

An export folder (``twotower export``, ``serving.py``), what a retrieval service loads:

- ``items.faiss``: the inner-product index over the model's ``item_embeddings.parquet``
  (``index.py``: exact up to its limit, HNSW above), position ``i`` = row ``i`` of
- ``index_items.parquet``: ``item_id`` in index order;
- ``user_embeddings/``: a Delta table, one row per user active on the validation day: its
  retrieval query as of the user's last validation example, with the export's identity;
- ``export.json``: the identity (the features' provenance, the sha256 of the model's resolved
  config and of its item embeddings, the retrieval prior), the index's settings and the counts;
  ``serving.load_export`` refuses an export whose identity differs from the model folder's.

An evaluation folder holds ``predictions.parquet`` (``predict`` of the validation split) and
``metrics.json`` (see ``evaluate.py``).
"""
from __future__ import annotations

# model folder
USER_TOWER_DIR = "user_tower"
ITEM_TOWER_DIR = "item_tower"
MODEL_FILE = "model.keras"
ITEM_EMBEDDINGS_FILE = "item_embeddings.parquet"
CONFIG_FILE = "resolved_model_config.json"
REPORT_FILE = "train_report.json"
PROVENANCE_FILE = "provenance.json"
# while train runs: the last epoch's weights and optimizer state (removed when training ends)
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_IDENTITY = "training.json"  # in CHECKPOINT_DIR: the settings and features it belongs to
# the exported towers' attribute (a string tf.Variable) holding the provenance as JSON
TOWER_PROVENANCE = "provenance"
# the exported towers' output key, and the vector column of item_embeddings.parquet
EMBEDDING = "embedding"
# the towers' retrieval signatures (export.py): the user's query (with the prior's 1.0 appended),
# present with a retrieval prior or a separate retrieval head; the item's candidate, with the head
RETRIEVAL_SIGNATURE = "retrieval_query"
CANDIDATE_SIGNATURE = "retrieval_candidate"

# export folder (serving.py)
INDEX_FILE = "items.faiss"
INDEX_ITEMS_FILE = "index_items.parquet"
USER_EMBEDDINGS_TABLE = "user_embeddings"
EXPORT_MANIFEST = "export.json"

# evaluation folder
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
