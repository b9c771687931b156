"""The trainer on a tiny features folder written here with tf.train.Example.

The synthetic data has a learnable structure: users and items each belong to one of two groups;
a user engages with an item of its own group with probability 0.9, else 0.1. The group is
visible through the ids (consistent per user/item) and, noisily, through ``user_vec`` and
``item_emb``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")

from sklearn.metrics import roc_auc_score  # noqa: E402

from twotower_features.config import ModelConfig  # noqa: E402
from twotower_features.spec import Column, FeatureSpec  # noqa: E402
from twotower_model import data as tdata  # noqa: E402
from twotower_model import model as tmodel  # noqa: E402
from twotower_model import train as ttrain  # noqa: E402

N_USERS, N_ITEMS = 40, 30
USERS = [f"u{i:02d}" for i in range(N_USERS)]
ITEMS = [f"i{i:02d}" for i in range(N_ITEMS)]
# u38/u39 never appear in train: not in the vocabulary, they are OOV in validation
USER_VOCAB = USERS[:-2]
HANDSETS = ["apple", "samsung", "xiaomi"]

COLUMNS = [
    Column("user_id", "string", (), "user", "id", "vocab/user_id.txt", len(USER_VOCAB)),
    Column("handset_maker", "string", (), "user", "categorical", "vocab/handset_maker.txt", len(HANDSETS)),
    Column("user_vec", "float32", (4,), "user", "dense"),
    Column("hist_len", "int64", (), "user", "count"),
    Column("item_id", "string", (), "item", "id", "vocab/item_id.txt", N_ITEMS),
    Column("item_emb", "float32", (8,), "item", "dense"),
    Column("label", "float32", (), None, "label"),
    Column("weight", "float32", (), None, "weight"),
    Column("event_ts", "int64", (), None, "key"),
]
SPLITS = {
    "train": "tfrecords/train/*.tfrecord",
    "validation": "tfrecords/validation/*.tfrecord",
    "catalog": "tfrecords/catalog/*.tfrecord",
}
CATALOG_COLUMNS = ["item_id", "item_emb"]

SMALL = dict(embedding_dim=8, hidden_units=(16,), output_dim=8, batch_size=64, learning_rate=0.02, seed=3)


def _feature(col: Column, value) -> tf.train.Feature:
    v = np.atleast_1d(value)
    if col.dtype == "string":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(x).encode() for x in v]))
    if col.dtype == "float32":
        return tf.train.Feature(float_list=tf.train.FloatList(value=v.astype(np.float32).tolist()))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=v.astype(np.int64).tolist()))


def _write_records(path: Path, frame: dict[str, np.ndarray], names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {c.name: c for c in COLUMNS}
    n = len(frame[names[0]])
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(n):
            feats = {name: _feature(cols[name], frame[name][i]) for name in names}
            w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())


def _make_rows(rng: np.random.Generator, n: int, users: list[str], user_group, item_group, item_vecs, user_hand) -> dict[str, np.ndarray]:
    u = rng.choice(len(users), n)
    it = rng.choice(N_ITEMS, n)
    ug = np.array([user_group[users[k]] for k in u])
    ig = item_group[it]
    p = np.where(ug == ig, 0.9, 0.1)
    label = (rng.random(n) < p).astype(np.float32)
    user_vec = np.stack([ug, 1 - ug, np.zeros(n), np.zeros(n)], axis=1) + rng.normal(0, 0.5, (n, 4))
    return {
        "user_id": np.array([users[k] for k in u], dtype=object),
        "handset_maker": np.array([user_hand[users[k]] for k in u], dtype=object),
        "user_vec": user_vec.astype(np.float32),
        "hist_len": rng.integers(0, 200, n).astype(np.int64),
        "item_id": np.array([ITEMS[k] for k in it], dtype=object),
        "item_emb": item_vecs[it],
        "label": label,
        "weight": np.where(label > 0, 2.0, 1.0).astype(np.float32),
        "event_ts": (1_780_000_000_000_000 + np.arange(n) * 1_000_000).astype(np.int64),
    }


def _slice(frame: dict[str, np.ndarray], a: int, b: int) -> dict[str, np.ndarray]:
    return {k: v[a:b] for k, v in frame.items()}


def write_features(root: Path, *, seed: int = 0, n_train: int = 600, n_val: int = 200) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    user_group = {u: int(rng.integers(0, 2)) for u in USERS}
    user_hand = {u: HANDSETS[int(rng.integers(0, 3))] for u in USERS}
    item_group = rng.integers(0, 2, N_ITEMS)
    item_vecs = (np.concatenate([np.eye(2)[item_group], np.zeros((N_ITEMS, 6))], axis=1) + rng.normal(0, 0.3, (N_ITEMS, 8))).astype(np.float32)

    train = _make_rows(rng, n_train, USER_VOCAB, user_group, item_group, item_vecs, user_hand)
    val = _make_rows(rng, n_val, USERS, user_group, item_group, item_vecs, user_hand)
    catalog = {"item_id": np.array(ITEMS, dtype=object), "item_emb": item_vecs}
    names = [c.name for c in COLUMNS]
    half = n_train // 2
    _write_records(root / "tfrecords/train/part-00000.tfrecord", _slice(train, 0, half), names)
    _write_records(root / "tfrecords/train/part-00001.tfrecord", _slice(train, half, n_train), names)
    _write_records(root / "tfrecords/validation/part-00000.tfrecord", val, names)
    _write_records(root / "tfrecords/catalog/part-00000.tfrecord", catalog, CATALOG_COLUMNS)

    (root / "vocab").mkdir(parents=True, exist_ok=True)
    (root / "vocab/user_id.txt").write_text("\n".join(USER_VOCAB) + "\n")
    (root / "vocab/handset_maker.txt").write_text("\n".join(HANDSETS) + "\n")
    (root / "vocab/item_id.txt").write_text("\n".join(ITEMS) + "\n")
    counts = pd.Series(train["item_id"]).value_counts()
    pd.DataFrame({"item_id": counts.index, "count": counts.values}).to_csv(root / "item_frequency.csv", index=False)
    FeatureSpec(
        columns=tuple(COLUMNS),
        keys=("user_id", "item_id", "event_ts"),
        extras={"splits": SPLITS, "item_frequency_file": "item_frequency.csv"},
    ).save(root)
    return {"train": train, "validation": val, "catalog": catalog}


@pytest.fixture(scope="module")
def feat(tmp_path_factory):
    root = tmp_path_factory.mktemp("feat")
    written = write_features(root)
    return root, written


@pytest.fixture(scope="module")
def trained_dot(feat, tmp_path_factory):
    """A dot-head model trained and saved once, with the in-memory model kept for parity checks."""
    root, _ = feat
    cfg = ModelConfig(head="dot", epochs=4, **SMALL)
    model, report = ttrain.fit_model(root, cfg, progress=lambda s: None)
    model_dir = tmp_path_factory.mktemp("model_dot")
    ttrain.save_model(model, model_dir)
    return model, report, model_dir


# ---- data ---------------------------------------------------------------------------------
def test_feature_description_follows_spec(feat):
    root, _ = feat
    desc = tdata.feature_description(FeatureSpec.load(root), ["user_id", "user_vec", "hist_len"])
    assert desc == {
        "user_id": tf.io.FixedLenFeature([], tf.string),
        "user_vec": tf.io.FixedLenFeature([4], tf.float32),
        "hist_len": tf.io.FixedLenFeature([], tf.int64),
    }


def test_dataset_yields_written_values_exactly(feat):
    root, written = feat
    spec = FeatureSpec.load(root)
    batches = list(tdata.make_dataset(root, "train", spec, batch_size=7, shuffle=False, seed=0))
    assert len(batches) == math.ceil(600 / 7)
    for name, expected in written["train"].items():
        got = np.concatenate([b[name].numpy() for b in batches])
        if expected.dtype == object:
            got = np.array([x.decode() for x in got], dtype=object)
            assert got.tolist() == expected.tolist(), name
        else:
            assert got.dtype == expected.dtype, name
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_catalog_split_holds_item_columns_only(feat):
    root, written = feat
    spec = FeatureSpec.load(root)
    assert tdata.split_columns(spec, "catalog") == ["item_id", "item_emb"]
    (batch,) = list(tdata.make_dataset(root, "catalog", spec, batch_size=100, shuffle=False, seed=0))
    assert sorted(batch) == ["item_emb", "item_id"]
    np.testing.assert_array_equal(batch["item_emb"].numpy(), written["catalog"]["item_emb"])


def test_shuffled_dataset_is_a_permutation_and_reproducible(feat):
    root, written = feat
    spec = FeatureSpec.load(root)

    def order():
        ds = tdata.make_dataset(root, "train", spec, batch_size=50, shuffle=True, seed=5, columns=["event_ts"], deterministic=True)
        return np.concatenate([b["event_ts"].numpy() for b in ds])

    first, second = order(), order()
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, written["train"]["event_ts"])
    np.testing.assert_array_equal(np.sort(first), np.sort(written["train"]["event_ts"]))


def test_unknown_split_is_named(feat):
    root, _ = feat
    with pytest.raises(ValueError, match="'test'.*expected one of"):
        tdata.make_dataset(root, "test", FeatureSpec.load(root), batch_size=8, shuffle=False, seed=0)


# ---- losses against numpy -----------------------------------------------------------------
def test_binary_task_is_weighted_mean_bce():
    logits = np.array([2.0, -1.0, 0.5, 0.0], np.float32)
    labels = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    weights = np.array([1.0, 2.0, 3.0, 0.5], np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    expected = (bce * weights).sum() / weights.sum()
    got = tmodel.BinaryTask()({"label": labels, "weight": weights}, {tmodel.SCORE: tf.constant(logits)})
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_in_batch_softmax_with_logq_matches_numpy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(4, 3)).astype(np.float32)
    c = rng.normal(size=(4, 3)).astype(np.float32)
    items = np.array(["a", "b", "a", "c"], dtype=object)
    labels = np.array([1.0, 1.0, 0.0, 1.0], np.float32)
    weights = np.array([1.0, 2.0, 1.0, 1.5], np.float32)
    counts = {"a": 6.0, "b": 3.0}  # "c" is uncounted -> count 1; total = 6 + 3 = 9 (+1 for unseen)
    log_q = {"a": math.log(6 / 9), "b": math.log(3 / 9), "c": math.log(1 / 9)}
    expected_num, expected_den = 0.0, 0.0
    for i in range(4):
        if labels[i] == 0:
            continue
        row = []
        for j in range(4):
            if j != i and items[j] == items[i]:
                continue  # accidental hit removed
            row.append((j, float(q[i] @ c[j]) - log_q[items[j]]))
        logits = np.array([v for _, v in row])
        pos = [k for k, (j, _) in enumerate(row) if j == i][0]
        ce = -(logits[pos] - np.log(np.exp(logits).sum()))
        expected_num += weights[i] * ce
        expected_den += weights[i]
    task = tmodel.InBatchSoftmaxTask(item_counts=counts)
    got = task(
        {"label": labels, "weight": weights, "item_id": tf.constant(items.astype(str))},
        {tmodel.QUERY: tf.constant(q), tmodel.CANDIDATE: tf.constant(c)},
    )
    assert float(got) == pytest.approx(expected_num / expected_den, rel=1e-5)


def test_in_batch_softmax_without_positives_is_zero():
    task = tmodel.InBatchSoftmaxTask()
    got = task(
        {"label": np.zeros(3, np.float32), "weight": np.ones(3, np.float32), "item_id": tf.constant(["a", "b", "c"])},
        {tmodel.QUERY: tf.ones((3, 2)), tmodel.CANDIDATE: tf.ones((3, 2))},
    )
    assert float(got) == 0.0


# ---- training -----------------------------------------------------------------------------
@pytest.mark.parametrize("head", ["dot", "cosine", "batchnorm"])
def test_each_head_learns_and_exports(feat, tmp_path, head):
    root, written = feat
    cfg = ModelConfig(head=head, epochs=4, temperature=0.2, **SMALL)
    lines: list[str] = []
    report = ttrain.train(root, tmp_path, cfg, progress=lines.append)

    assert report["loss_per_epoch"][-1] < report["loss_per_epoch"][0]
    assert report["examples"] == 4 * 600 and report["examples_per_second"] > 0
    assert any(line.startswith("epoch 4/4") for line in lines)
    on_disk = json.loads((tmp_path / "train_report.json").read_text())
    assert on_disk["final_loss"] == pytest.approx(report["final_loss"])
    assert json.loads((tmp_path / "resolved_model_config.json").read_text())["head"] == head

    scored = ttrain.predict(tmp_path, root, "train")
    assert list(scored.columns) == ["user_id", "item_id", "event_ts", "label", "weight", "score"]
    assert roc_auc_score(scored["label"], scored["score"]) > 0.75
    # the Keras reload scores like the exported towers
    reloaded = ttrain.predict(ttrain.load_model(tmp_path), root, "train")
    np.testing.assert_allclose(reloaded["score"], scored["score"], atol=1e-5, rtol=1e-5)

    emb = pq.read_table(tmp_path / "item_embeddings.parquet").to_pandas()
    assert sorted(emb["item_id"]) == ITEMS
    assert {len(v) for v in emb["embedding"]} == {8}
    if head == "cosine":
        np.testing.assert_allclose(np.linalg.norm(np.stack(emb["embedding"]), axis=1), 1.0, rtol=1e-5)


def test_saved_towers_score_like_the_in_memory_model(feat, trained_dot):
    root, _ = feat
    model, _, model_dir = trained_dot
    in_memory = ttrain.predict(model, root, "validation")
    exported = ttrain.predict(model_dir, root, "validation")
    pd.testing.assert_frame_equal(in_memory.drop(columns="score"), exported.drop(columns="score"))
    np.testing.assert_allclose(exported["score"], in_memory["score"], atol=1e-5, rtol=1e-5)
    assert in_memory["score"].std() > 0


def test_item_embeddings_file_matches_item_tower(feat, trained_dot, tmp_path):
    root, written = feat
    model, _, model_dir = trained_dot
    n = ttrain.write_item_embeddings(model_dir, root, tmp_path / "emb.parquet")
    assert n == N_ITEMS
    emb = pq.read_table(tmp_path / "emb.parquet").to_pandas().set_index("item_id")
    towers = ttrain.load_towers(model_dir)
    direct = towers.embed("item", {"item_id": tf.constant(["i05"]), "item_emb": written["catalog"]["item_emb"][5:6]}).numpy()[0]
    np.testing.assert_allclose(emb.loc["i05", "embedding"], direct, atol=1e-6)
    # score = dot(user embedding, item embedding) for a validation row
    val = written["validation"]
    row = {k: v[:1] for k, v in val.items()}
    u = towers.embed("user", row).numpy()[0]
    expected = float(u @ emb.loc[row["item_id"][0], "embedding"])
    assert float(towers.score(row).numpy()[0]) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_out_of_vocabulary_ids_score(feat, trained_dot):
    root, written = feat
    _, _, model_dir = trained_dot
    scored = ttrain.predict(model_dir, root, "validation")
    oov = scored["user_id"].isin(["u38", "u39"])
    assert oov.any() and np.isfinite(scored.loc[oov, "score"]).all()
    towers = ttrain.load_towers(model_dir)
    row = {
        "user_id": tf.constant(["never-seen", "also-new", USER_VOCAB[0]]),
        "handset_maker": tf.constant(["apple", "apple", "apple"]),
        "user_vec": np.tile(np.float32([[1, 0, 0, 0]]), (3, 1)),
        "hist_len": np.array([3, 3, 3], np.int64),
    }
    u = towers.embed("user", row).numpy()
    # both unseen ids fall into the one OOV bucket: same embedding; a known id differs
    np.testing.assert_allclose(u[0], u[1], atol=1e-6)
    assert not np.allclose(u[0], u[2])
    unseen_handset = dict(row, handset_maker=tf.constant(["nokia", "nokia", "nokia"]))
    assert np.isfinite(towers.embed("user", unseen_handset).numpy()).all()


def test_softmax_with_logq_trains(feat, tmp_path):
    root, _ = feat
    cfg = ModelConfig(head="cosine", loss="softmax", epochs=3, temperature=0.2, **SMALL)
    report = ttrain.train(root, tmp_path, cfg, progress=lambda s: None)
    assert report["logq_correction"] is True
    assert all(math.isfinite(x) for x in report["loss_per_epoch"])
    assert report["loss_per_epoch"][-1] < report["loss_per_epoch"][0]
    scored = ttrain.predict(tmp_path, root, "train")
    assert roc_auc_score(scored["label"], scored["score"]) > 0.6


def test_training_is_deterministic_given_seed(feat):
    root, _ = feat
    cfg = ModelConfig(head="dot", epochs=1, **SMALL)
    runs = []
    for _ in range(2):
        model, report = ttrain.fit_model(root, cfg, progress=lambda s: None)
        runs.append((ttrain.predict(model, root, "validation")["score"].to_numpy(), report["final_loss"]))
    np.testing.assert_allclose(runs[0][0], runs[1][0], atol=1e-6)
    assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-6)


def test_missing_vocabulary_file_is_named(tmp_path):
    write_features(tmp_path, n_train=20, n_val=5)
    (tmp_path / "vocab/handset_maker.txt").unlink()
    with pytest.raises(FileNotFoundError, match="handset_maker.txt"):
        ttrain.train(tmp_path, tmp_path / "model", ModelConfig(epochs=1, **SMALL), progress=lambda s: None)


def test_vocabulary_size_mismatch_is_named(tmp_path):
    write_features(tmp_path, n_train=20, n_val=5)
    (tmp_path / "vocab/item_id.txt").write_text("i00\ni01\n")
    with pytest.raises(ValueError, match="'item_id'.*vocabulary_size=30.*2 lines"):
        ttrain.fit_model(tmp_path, ModelConfig(epochs=1, **SMALL), progress=lambda s: None)


def test_bad_item_frequency_header_is_named(tmp_path):
    write_features(tmp_path, n_train=20, n_val=5)
    (tmp_path / "item_frequency.csv").write_text("item,n\ni00,3\n")
    with pytest.raises(ValueError, match="item_id,count"):
        ttrain.fit_model(tmp_path, ModelConfig(loss="softmax", epochs=1, **SMALL), progress=lambda s: None)


# ---- optimiser and embedding ---------------------------------------------------------------
def test_id_embedding_gradient_is_sparse():
    from twotower_model.towers import IdEmbedding

    layer = IdEmbedding(1000, 4)
    layer.build()
    with tf.GradientTape() as tape:
        out = layer(tf.constant([3, 7, 3]))
        loss = tf.reduce_sum(out)
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    assert sorted(grad.indices.numpy().tolist()) == [3, 3, 7]
    np.testing.assert_allclose(out.numpy()[0], layer.embeddings.numpy()[3])


def test_lazy_adam_moves_only_touched_rows_by_hand_computed_steps():
    lr = 0.1
    table = tf.Variable(np.zeros((3, 2), np.float32))
    opt = tmodel.LazyAdam(learning_rate=lr)
    opt.build([table])
    # step 1: row 0 twice (gradients sum to [2, -4]); step 2: row 1 only
    opt.apply_gradients([(tf.IndexedSlices(tf.constant([[1.0, -2.0], [1.0, -2.0]]), tf.constant([0, 0]), tf.constant([3, 2])), table)])
    opt.apply_gradients([(tf.IndexedSlices(tf.constant([[0.5, 0.5]]), tf.constant([1]), tf.constant([3, 2])), table)])
    # Adam's first step on a row is lr * sign(g) (bias-corrected m/sqrt(v) = g/|g|); row 0 is
    # not touched at step 2, so a lazy optimiser leaves it where step 1 put it. Row 1 sees its
    # first gradient at step 2: m = 0.1 * 0.5, v = 0.001 * 0.25, alpha = lr * sqrt(1 - 0.999^2) / (1 - 0.9^2)
    alpha = lr * math.sqrt(1 - 0.999**2) / (1 - 0.9**2)
    row1 = alpha * (0.1 * 0.5) / (math.sqrt(0.001 * 0.25) + 1e-7)
    expected = np.array([[-lr, lr], [-row1, -row1], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(table.numpy(), expected, rtol=1e-4)
    # the same steps with Keras' dense Adam move row 0 again at step 2 (its momentum)
    dense = tf.Variable(np.zeros((3, 2), np.float32))
    adam = tf.keras.optimizers.Adam(learning_rate=lr)
    adam.build([dense])
    adam.apply_gradients([(tf.constant([[2.0, -4.0], [0, 0], [0, 0]]), dense)])
    adam.apply_gradients([(tf.constant([[0.0, 0.0], [0.5, 0.5], [0, 0]]), dense)])
    assert abs(dense.numpy()[0, 0]) > lr * 1.5


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="optimizer must be one of.*'sgd'"):
        tmodel.make_optimizer(0.01, "sgd")


def test_asking_catalog_for_a_label_is_named(feat):
    root, _ = feat
    with pytest.raises(ValueError, match=r"'catalog' records do not hold column\(s\) \['label'\]"):
        tdata.make_dataset(root, "catalog", FeatureSpec.load(root), batch_size=8, shuffle=False, seed=0, columns=["item_id", "label"])
