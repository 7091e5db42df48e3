"""Features through a memory budget: the reader gives the rows of the in-memory array, a streamed epoch visits every
row once chunk by chunk, a streamed fit weighs classes and standardises as in memory, and train-head, sweep and
evaluate stream under a tiny --memory-gb with the metrics of the in-memory run. Real caches, real Keras heads."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from conftest import feature_cache, run_cli

from bottleneck.cache.features import (
    FeatureReader,
    check_memory_gb,
    chunk_batches,
    default_memory_gb,
    features_fit,
    load_cache_within,
    total_memory_bytes,
)
from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.heads import HeadConfig, fit_head, predict_proba
from bottleneck.images.views import view_sampler
from bottleneck.runs import RunOptions, train_head_run
from bottleneck.runs.evaluate import evaluate_run

pytestmark = pytest.mark.filterwarnings("ignore:features of .* streaming them")  # the notice the CLI prints

TINY_GB = 1e-6  # ~1 KiB: every cache here exceeds it, so it is streamed a chunk at a time
WIDE = 4096  # float16 rows of 8 KiB: the writer's ~1 MiB chunks hold 128 rows, so these caches span several chunks


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A 400-row cache of 4096 features (4 chunks of 128 rows), imbalanced 50/50/300, and its in-memory load."""
    path = feature_cache(tmp_path_factory.mktemp("wide") / "wide.h5", counts={"bcc": 50, "mel": 50, "nv": 300},
                         dim=WIDE, separation=0.2)
    return path, load_cache(path)


def test_the_reader_gives_the_rows_of_the_in_memory_array_in_any_order(tmp_path, wide):
    path, mem = wide
    data = load_cache_within(path, TINY_GB)
    reader = data.features
    assert isinstance(reader, FeatureReader) and reader.chunk_rows == 128
    assert reader.shape == mem.features.shape == (400, WIDE) and len(reader) == 400 and reader.dtype == np.float32
    np.testing.assert_array_equal(data.labels, mem.labels)  # the rows' metadata is loaded as always
    rows = np.random.default_rng(0).permutation(400)[:250]
    rows[:5] = rows[0]  # repeats too
    np.testing.assert_array_equal(reader[rows], mem.features[rows])
    np.testing.assert_array_equal(reader[[399, -1, 0]], mem.features[[399, -1, 0]])
    np.testing.assert_array_equal(reader[10:300:7], mem.features[10:300:7])
    np.testing.assert_array_equal(reader[mem.labels == 1], mem.features[mem.labels == 1])
    np.testing.assert_array_equal(reader[17], mem.features[17])
    sub = reader.take(rows).take(np.arange(100, 0, -1))  # lazy subsets of subsets
    np.testing.assert_array_equal(sub[:], mem.features[rows][np.arange(100, 0, -1)])
    np.testing.assert_array_equal(np.concatenate([b for _, b in sub.blocks()]), sub[:])
    with pytest.raises(TypeError, match="streamed"):  # never loaded whole by accident
        np.asarray(reader)
    with pytest.raises(IndexError):
        reader[[400]]
    assert isinstance(load_cache_within(path, 1.0).features, np.ndarray)  # fits: in memory, as always

    # Another process extends the cache between reads (the dataset grows past n_rows first, then n_rows):
    # the reader still reads exactly the rows that were committed when it was loaded.
    with h5py.File(path, "r+") as f:
        ds = f["features"]
        ds.resize(500, axis=0)
        ds[400:] = 9.0
        f.attrs["n_rows"] = 450
    try:
        np.testing.assert_array_equal(reader[rows], mem.features[rows])
        assert len(reader) == 400 and len(FeatureReader.open(path, memory_gb=TINY_GB)) == 450
    finally:
        with h5py.File(path, "r+") as f:
            f["features"].resize(400, axis=0)
            f.attrs["n_rows"] = 400


def test_a_streamed_epoch_visits_every_row_once_chunk_by_chunk(wide):
    path, mem = wide
    rows = np.flatnonzero(np.arange(400) % 3 != 0)  # a training split: 266 rows of all 4 chunks
    reader = FeatureReader.open(path, memory_gb=300 * WIDE * 4 / 2**30)  # buffers of half that: one chunk each
    x_mem, y = mem.features[rows], mem.labels[rows]
    ds = chunk_batches(reader.take(rows), y, batch_size=32, seed=3)
    assert len(ds) == math.ceil(266 / 32)  # as many steps as in memory
    orders = []
    for _epoch in range(2):
        batches = [ds[i] for i in range(len(ds))]
        plan = ds.plan()
        assert [len(b[0]) for b in batches] == [32] * 8 + [10]
        assert sorted(plan.order) == list(range(266))  # every training row exactly once
        np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x_mem[plan.order])
        np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[plan.order])
        # each buffer is whole chunks, within half the budget (150 rows: one chunk of ~85 training rows, or two
        # with the last chunk's 10), read at once and shuffled within
        sizes = np.diff(plan.starts)
        chunks = [set(rows[plan.order[a:b]] // 128) for a, b in zip(plan.starts[:-1], plan.starts[1:])]
        assert sum(map(len, chunks)) == len(set.union(*chunks)) == 4 and len(chunks) >= 3
        assert sizes.max() <= 150 and sizes.sum() == 266
        orders.append(plan.order.copy())
        ds.on_epoch_end()
    assert not np.array_equal(orders[0], orders[1])  # reshuffled every epoch ...
    again = chunk_batches(reader.take(rows), y, batch_size=32, seed=3)
    np.testing.assert_array_equal(again.plan().order, orders[0])  # ... reproducibly from the seed
    np.testing.assert_array_equal(again.plan(1).order, orders[1])
    ordered = chunk_batches(reader.take(rows), y, batch_size=100, shuffle=False)  # validation: rows in order
    np.testing.assert_array_equal(np.concatenate([ordered[i][0] for i in range(len(ordered))]), x_mem)


@pytest.mark.slow
def test_a_streamed_fit_weighs_classes_and_standardises_as_in_memory(wide):
    """With a learning rate too small to move the weights, epoch 1's training loss is the class-weighted mean loss of
    the initial head over the training rows whatever their order: streamed and in-memory must agree on it."""
    path, mem = wide
    reader = load_cache_within(path, TINY_GB).features
    train, val = np.arange(0, 400, 2), np.arange(1, 400, 2)
    y = mem.labels
    cfg = HeadConfig(hidden=(16,), dropout=0.0, epochs=1, lr=1e-12, batch_size=32, class_weight="balanced")
    streamed = fit_head(reader.take(train), y[train], reader.take(val), y[val], 3, cfg)
    in_memory = fit_head(mem.features[train], y[train], mem.features[val], y[val], 3, cfg)
    unweighted = fit_head(mem.features[train], y[train], mem.features[val], y[val], 3,
                          HeadConfig(**{**cfg.to_dict(), "hidden": (16,), "class_weight": "none"}))
    norm_s, norm_m = (t.model.get_layer("standardize") for t in (streamed, in_memory))
    np.testing.assert_allclose(np.ravel(norm_s.mean), np.ravel(norm_m.mean), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.ravel(norm_s.variance), np.ravel(norm_m.variance), rtol=1e-4)
    assert [w.shape for w in streamed.model.get_weights()] == [w.shape for w in in_memory.model.get_weights()]
    loss_s, loss_m, loss_u = (t.history["loss"][0] for t in (streamed, in_memory, unweighted))
    assert loss_s == pytest.approx(loss_m, rel=1e-3)
    assert abs(loss_u - loss_m) > 50 * abs(loss_s - loss_m)  # the check can tell weighted from unweighted
    assert streamed.history["val_loss"][0] == pytest.approx(in_memory.history["val_loss"][0], rel=1e-4)
    np.testing.assert_allclose(predict_proba(streamed.model, reader.take(val)),
                               predict_proba(streamed.model, mem.features[val]), atol=1e-6)


@pytest.mark.slow
def test_train_head_streams_under_a_small_budget_with_the_metrics_of_memory(tmp_path, wide):
    path, _ = wide
    args = ["train-head", path, "--hidden", "32", "--epochs", "8", "--patience", "3", "--batch-size", "32", "--quiet"]
    r = run_cli(*args, "--out", tmp_path / "mem")
    assert r.exit_code == 0, r.output
    r = run_cli(*args, "--out", tmp_path / "streamed", "--memory-gb", TINY_GB)
    assert r.exit_code == 0, r.output
    assert (f"features of {path} (400 rows, 0.0061 GiB as float32) exceed --memory-gb 1e-06; streaming them "
            "from the cache in chunk order") in r.output
    configs = {k: json.loads((tmp_path / k / "config.json").read_text()) for k in ("mem", "streamed")}
    assert configs["streamed"]["features"] == {"memory_gb": TINY_GB, "streamed": True}
    assert configs["mem"]["features"] == {"memory_gb": default_memory_gb(), "streamed": False}
    assert configs["streamed"]["command"][-2:] == ["--memory-gb", "1e-06"]  # the rerun streams as well
    test = {k: json.loads((tmp_path / k / "metrics.json").read_text())["test"] for k in configs}
    assert test["mem"]["n"] == test["streamed"]["n"] == 60  # the same split
    assert test["streamed"]["balanced_accuracy"] > 0.8  # well separated: it learned
    assert test["streamed"]["balanced_accuracy"] == pytest.approx(test["mem"]["balanced_accuracy"], abs=0.1)


@pytest.mark.slow
def test_sweep_and_evaluate_stream_under_a_tiny_budget(tmp_path, wide):
    path, _ = wide
    out = tmp_path / "sweep"
    r = run_cli("sweep", path, "--hidden", "16", "--lr", "3e-3", "--epochs", "4", "--patience", "2",
                "--batch-size", "64", "--folds", "2", "--out", out, "--memory-gb", TINY_GB, "--quiet")
    assert r.exit_code == 0, r.output
    assert "streaming them from the cache in chunk order" in r.output
    every = [json.loads(p.read_text()) for p in (out / "configs").glob("*/result.json")]
    results = [r for r in every if not r["baseline"]]
    assert len(every) == 2 and all(r["streamed"] for r in every)  # the linear baseline streamed too
    assert len(results) == 1 and results[0]["streamed"] and len(results[0]["folds"]) == 2
    assert results[0]["summary"]["balanced_accuracy"]["mean"] > 0.8  # CV folds trained and scored off the stream
    best = json.loads((out / "best" / "config.json").read_text())
    assert best["features"] == {"memory_gb": TINY_GB, "streamed": True} and best["trained_on"] == "train"
    # evaluate streams the run's test split and reproduces the metrics the run reported
    r = run_cli("evaluate", out / "best", "--memory-gb", TINY_GB)
    assert r.exit_code == 0, r.output
    ev = json.loads((out / "best" / "eval-test" / "metrics.json").read_text())
    own = json.loads((out / "best" / "metrics.json").read_text())["test"]
    assert ev["features"]["streamed"] and ev["metrics"]["confusion_matrix"] == own["confusion_matrix"]
    assert ev["metrics"]["balanced_accuracy"] == pytest.approx(own["balanced_accuracy"])


@pytest.mark.slow
def test_augment_and_tta_with_streamed_features_and_views(tmp_path):
    """Stored views added the way the format documents them (cache-format.md); features, views and TTA all
    streamed under one tiny budget."""
    path = feature_cache(tmp_path / "v.h5", dim=640)  # views of 5 KiB a row: TTA reads them in 1 MiB blocks
    rng = np.random.default_rng(1)
    with h5py.File(path, "r+") as f:
        n, d = f["features"].shape
        plain = f["features"][:].astype(np.float32)
        f.create_dataset("views", data=(plain[:, None] + rng.normal(0, 0.1, (n, 2, d))).astype(np.float16),
                         chunks=(1, 2, d))
        f.create_dataset("views_ok", data=np.ones(n, bool))
        f.attrs["views"] = 2
    data = load_cache_within(path, TINY_GB)
    # the --augment sampler draws plain rows from the reader: the plain view of a row is that row
    sampler = view_sampler(data.features, np.zeros((n, 2, d), np.float32), np.arange(n), data.labels, 16, 0)
    x, yb = sampler[0]
    pos = sampler.order[:16]
    plain_pick = sampler.choice[pos] == 0
    np.testing.assert_array_equal(x[plain_pick], plain[pos][plain_pick])
    np.testing.assert_array_equal(yb, data.labels[pos])

    head = HeadConfig(hidden=(16,), epochs=3, patience=2, batch_size=32)
    r = train_head_run(path, head, RunOptions(out=tmp_path / "run", augment=True, tta=True, memory_gb=TINY_GB,
                                              progress=False))
    config = json.loads((r.run_dir / "config.json").read_text())
    assert config["features"]["streamed"] and config["views"] == {"stored": 2, "augment": True, "tta": True}
    assert set(r.metrics["views_comparison"]) == {"plain head (no views)", "this head (augment), plain view only",
                                                  "this head (augment), TTA over 3 views"}
    ev = evaluate_run(r.run_dir, tta=True, memory_gb=TINY_GB)  # TTA reads the views 204 rows at a time
    assert ev.metrics["balanced_accuracy"] == pytest.approx(r.metrics["test"]["balanced_accuracy"])
    in_memory = evaluate_run(r.run_dir, tta=True, memory_gb=1.0, overwrite=True)
    assert in_memory.metrics["confusion_matrix"] == ev.metrics["confusion_matrix"]


def test_the_default_budget_is_a_quarter_of_memory_and_bad_budgets_name_the_value(tmp_path, wide):
    total = total_memory_bytes()
    assert total and default_memory_gb() == pytest.approx(0.25 * total / 2**30, abs=0.01)
    assert features_fit(1000, 256, 1000 * 256 * 4 / 2**30) and not features_fit(1001, 256, 1000 * 256 * 4 / 2**30)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match=f"--memory-gb should be a positive number of GiB; received {bad}"):
            check_memory_gb(bad)
    path, _ = wide
    for command in (["train-head", path, "--out", tmp_path / "run"], ["sweep", path, "--out", tmp_path / "run"],
                    ["evaluate", tmp_path / "run"]):
        for bad in ("0", "-1"):
            r = run_cli(*command, "--memory-gb", bad)
            assert r.exit_code == 1
            assert r.output == f"error: --memory-gb should be a positive number of GiB; received {float(bad)}\n"
            assert not (tmp_path / "run").exists()


def test_an_infinite_or_huge_budget_is_refused_in_one_line_naming_the_valid_values(tmp_path, wide):
    """`--memory-gb inf` once ran and wrote a bare `Infinity` into config.json; it is refused, like a budget so large
    that block sizes computed from it overflow."""
    path, _ = wide
    for bad in (float("inf"), 1e300):
        with pytest.raises(InputError, match="at most 1048576"):
            check_memory_gb(bad)
    for command in (["train-head", path, "--out", tmp_path / "run"], ["sweep", path, "--out", tmp_path / "run"],
                    ["evaluate", tmp_path / "run"]):
        for bad in ("inf", "1e300"):
            r = run_cli(*command, "--memory-gb", bad)
            assert r.exit_code == 1
            assert r.output == (f"error: --memory-gb should be a finite number of GiB, at most 1048576; received "
                                f"{float(bad)} (to read every feature into memory, give at least their size as "
                                "float32: rows x features x 4 bytes)\n")
            assert not (tmp_path / "run").exists()

