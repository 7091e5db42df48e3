"""Degenerate inputs: constant features, a one-class head and tied probabilities are said, not passed off as results."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import feature_cache, run_cli

from bottleneck.cache.features import load_cache_within
from bottleneck.errors import BottleneckWarning
from bottleneck.runs.sanity import feature_spread, feature_warnings, prediction_warnings
from bottleneck.stats.metrics import compute_metrics

NAMES = ["bcc", "mel", "nv"]


def constant_cache(path, value=0.25, dim=16, counts=(40, 40, 80)):
    """A real cache (written by the library's writer) whose every image has the same feature vector, as a wrong
    weights file gives."""
    from bottleneck.cache.store import CacheConfig
    from bottleneck.cache.writer import CacheWriter

    config = CacheConfig(backbone="vgg16", weights="none", weights_sha256="", seed=0, input_size=32, pooling="avg",
                         preprocessing="test", dtype="float16", num_features=dim)
    rows, k = [], 0
    for name, n in zip(NAMES, counts):
        for i in range(n):
            rows.append(dict(image_id=f"img{k:05d}", path=f"{name}/img{k:05d}.jpg", label=name,
                             group=f"{name}-{i // 2}", sha256=f"{k:064x}", width=40, height=30))
            k += 1
    with CacheWriter(path, config, {"dataset": "synthetic"}, tuple(NAMES)) as w:
        w.write_batch(rows, np.full((k, dim), value, dtype=np.float32))
    return path


def test_constant_and_identical_features_are_named():
    rng = np.random.default_rng(0)
    assert feature_warnings(rng.normal(0, 1, (50, 8)).astype(np.float32)) == []
    (line,) = feature_warnings(np.full((50, 2048), 0.3, np.float32))
    assert line.startswith("the features are nearly constant across images (std < 1e-06 in 100% of 2048 dimensions)")
    assert "a wrong weights file or a dtype that underflows; these metrics are not meaningful" in line
    mostly = np.full((50, 1000), 0.3, np.float32)
    mostly[:, :5] = rng.normal(0, 1, (50, 5))  # 99.5% constant
    assert "99.5% of 1000 dimensions" in feature_warnings(mostly)[0]
    mostly[:, :20] = rng.normal(0, 1, (50, 20))  # 98%: some signal left
    assert feature_warnings(mostly) == []
    big = 100 + rng.normal(0, 1e-4, (50, 8))  # each row a copy of one vector, up to 1e-6 of its size
    assert feature_warnings(big)[0].startswith("the features are nearly identical across images")


def test_feature_spread_reads_a_streamed_cache_as_memory(tmp_path):
    path = feature_cache(tmp_path / "f.h5", dim=8)
    with pytest.warns(BottleneckWarning, match="streaming"):
        streamed = load_cache_within(path, 3e-6).features  # a FeatureReader, read in 5 blocks
    loaded = load_cache_within(path, 1.0).features
    assert not isinstance(streamed, np.ndarray)
    for got, want in zip(feature_spread(streamed), (loaded.mean(0, dtype=np.float64), loaded.std(0, dtype=np.float64))):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_one_class_head_is_named():
    proba = np.tile([0.2, 0.1, 0.7], (200, 1))
    assert prediction_warnings(proba, NAMES) == [
        "the head predicts nv for 100% of 200 test images: it ignores its input (nearly constant features, a "
        "diverged or too short training); its metrics say little"]
    proba[:2] = [0.8, 0.1, 0.1]  # 99%: not more than 99%
    assert prediction_warnings(proba, NAMES) == []
    assert prediction_warnings(proba[2:21], NAMES) == []  # all of 19 images: too few to tell
    assert "for 100% of 20 test images" in prediction_warnings(proba[2:22], NAMES)[0]


def test_auc_of_tied_probabilities_is_null_with_a_note():
    y = np.array([0, 1, 2, 2, 1, 0])
    proba = np.tile([0.2, 0.1, 0.7], (6, 1))
    proba[:, 1] += [0, 1e-9, 0, 0, 0, 0]  # float noise between batch positions is still a tie
    m = compute_metrics(y, proba / proba.sum(1, keepdims=True), NAMES)
    assert m["roc_auc_per_class"] == {"bcc": None, "mel": None, "nv": None} and m["roc_auc_macro"] is None
    assert m["roc_auc_note"].startswith("AUC left out (null) for bcc, mel, nv")
    proba[:, 0] = [0.5, 0.1, 0.1, 0.1, 0.1, 0.4]  # bcc and nv ranked: their AUCs are defined again
    proba[:, 2] = 0.9 - proba[:, 0]
    m = compute_metrics(y, proba, NAMES)
    assert m["roc_auc_per_class"]["bcc"] == 1.0 and m["roc_auc_per_class"]["mel"] is None
    assert "for mel:" in m["roc_auc_note"]
    assert "roc_auc_note" not in compute_metrics(y, np.eye(3)[y] * 0.8 + 0.2 / 3, NAMES)


@pytest.mark.slow
def test_train_head_on_constant_features_says_so(tmp_path):
    cache = constant_cache(tmp_path / "const.h5")
    out = tmp_path / "run"
    r = run_cli("train-head", cache, "--out", out, "--hidden", "8", "--epochs", 2, "--patience", 1, "--quiet")
    assert r.exit_code == 0, r.output
    metrics = json.loads((out / "metrics.json").read_text())
    constant, one_class = [w for w in metrics["warnings"] if w not in metrics["small_numbers"]]
    assert constant.startswith("the features are nearly constant across images (std < 1e-06 in 100% of 16 "
                               "dimensions): a wrong weights file")
    assert one_class.startswith("the head predicts ") and "for 100% of" in one_class
    for line in metrics["warnings"]:
        assert f"warning: {line}" in r.output  # one line each
    for split in ("val", "test"):
        assert set(metrics[split]["roc_auc_per_class"].values()) == {None}
        assert metrics[split]["roc_auc_macro"] is None and "AUC left out" in metrics[split]["roc_auc_note"]


@pytest.mark.slow
def test_a_healthy_run_has_no_warnings(tmp_path):
    cache = feature_cache(tmp_path / "f.h5", dim=16, separation=3.0)
    r = run_cli("train-head", cache, "--out", tmp_path / "run", "--hidden", "8", "--epochs", 3, "--quiet")
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # small classes and few test lesions are warned about (clinical.py); nothing else is
    assert metrics.get("warnings", []) == metrics["small_numbers"]
    assert r.output.count("warning:") == len(metrics["small_numbers"])
    assert all(v is not None for v in metrics["test"]["roc_auc_per_class"].values())
