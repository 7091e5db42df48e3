"""A head applied with numpy (heads/dense.py) against Keras on the same head.keras: the same probabilities and
log-probabilities within 1e-5 on every head configuration build_head makes, with the calibration folded in and
taken out again; heads numpy cannot reproduce are left to Keras; streamed features give the same numbers."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from conftest import feature_cache

from bottleneck.cache.features import load_cache_within
from bottleneck.errors import InputError
from bottleneck.heads.dense import DenseHead, keras_head, read_dense_head
from bottleneck.heads.model import HeadConfig, build_head, fold_calibration, predict_log_proba, predict_proba
from bottleneck.runs.directory import load_head, load_keras
from bottleneck.stats.calibration import Calibration

DIM, CLASSES = 24, 3
CALIBRATION = Calibration(temperature=0.6, shift=(-0.4, 0.9, 0.1), decision_weights=(1.0, 1.0, 1.0))


def features(n=64, seed=0) -> np.ndarray:
    """Features on scales that differ by feature (as a backbone's do), one of them constant, stored as the cache
    stores them: float16."""
    offset = np.random.default_rng(0).normal(0, 3, DIM)  # the same for every seed: one distribution
    x = np.random.default_rng(seed).normal(0, 1, (n, DIM)) * np.geomspace(0.1, 5, DIM) + offset
    x[:, 3] = 2.0  # variance 0: Normalization divides by epsilon
    return x.astype(np.float16)


def saved_head(tmp_path, hidden, standardize, calibrated):
    """A head of `build_head`, its last layer scaled up (probabilities near 0 and 1 as a trained head gives them),
    saved as head.keras (with the calibration folded in when `calibrated`, as train-head saves it)."""
    model = build_head(DIM, CLASSES, HeadConfig(hidden=hidden, standardize=standardize, seed=3),
                       features(200, seed=1).astype(np.float32))
    last = model.get_layer("probabilities")
    w, b = last.get_weights()
    last.set_weights([w * 10, b + np.float32([0.5, -1.0, 0.25])])
    if calibrated:
        fold_calibration(model, CALIBRATION)
    path = tmp_path / "head.keras"
    model.save(path)
    return path


def assert_same(dense, keras, x):
    # Both round the hidden layers to float32 (their sums in another order): a log-probability of -80 agrees to
    # about 2e-7 of itself, 1.6e-5; what is near 0 (every probability near 1) to within 1e-5.
    np.testing.assert_allclose(predict_log_proba(dense, x), predict_log_proba(keras, x), atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(predict_proba(dense, x), predict_proba(keras, x), atol=1e-5, rtol=0)
    np.testing.assert_allclose(dense.predict(x), keras.predict(x, verbose=0), atol=1e-5, rtol=0)


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)], ids=["linear", "one-layer", "two-layers"])
@pytest.mark.parametrize("standardize", [True, False], ids=["standardized", "raw"])
def test_numpy_and_keras_agree_on_every_head_configuration(tmp_path, hidden, standardize):
    path = saved_head(tmp_path, hidden, standardize, calibrated=True)
    dense, keras = read_dense_head(path), load_keras(path)
    assert isinstance(dense, DenseHead)
    assert [layer.name for layer in dense.layers] == [layer.name for layer in keras.layers]
    x = features(seed=2)
    lp = predict_log_proba(dense, x)
    assert lp.dtype == np.float64 and lp.shape == (len(x), CLASSES) and lp.max() > -1e-4 and lp.min() < -10
    assert_same(dense, keras, x)
    # --no-calibrate: the calibration taken out of both, then put back
    for undo in (True, False):
        fold_calibration(dense, CALIBRATION, undo=undo)
        fold_calibration(keras, CALIBRATION, undo=undo)
        assert_same(dense, keras, x)
    assert predict_log_proba(dense, x[:0]).shape == (0, CLASSES)


def test_load_head_takes_the_calibration_out_as_keras_does(tmp_path):
    saved_head(tmp_path, (16,), True, calibrated=True)
    config = {"calibration": {"applied": True, "temperature": CALIBRATION.temperature,
                              "prior_shift": list(CALIBRATION.shift),
                              "decision_weights": list(CALIBRATION.decision_weights)}}
    x = features(seed=4)
    for calibrate in (True, False):
        dense = load_head(tmp_path, config, calibrate)
        keras = load_head(tmp_path, config, calibrate, keras=True)
        assert isinstance(dense, DenseHead) and not isinstance(keras, DenseHead)
        assert_same(dense, keras, x)
        # the Keras model of a numpy head (fine-tune and predict need one) keeps its weights as they are now
        np.testing.assert_allclose(keras_head(dense).predict(x, verbose=0), keras.predict(x, verbose=0), atol=1e-6)
    raw = predict_log_proba(load_head(tmp_path, config, calibrate=False), x)
    assert not np.allclose(raw, predict_log_proba(load_head(tmp_path, config), x), atol=1e-3)


def test_streamed_features_give_the_same_log_probabilities(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts={"a": 40, "b": 40}, dim=DIM)
    in_memory, streamed = load_cache_within(cache, 1.0).features, load_cache_within(cache, 1e-6).features
    assert isinstance(in_memory, np.ndarray) and not isinstance(streamed, np.ndarray)  # read in blocks of 5 rows
    build_head(DIM, 2, HeadConfig(hidden=(16,), seed=3), in_memory).save(tmp_path / "head.keras")
    dense = read_dense_head(tmp_path / "head.keras")
    # the same rows, in blocks and batches of other sizes (which BLAS may sum in another order)
    np.testing.assert_allclose(predict_log_proba(dense, streamed, batch_size=7), predict_log_proba(dense, in_memory),
                               atol=1e-6, rtol=1e-6)
    assert predict_log_proba(dense, streamed).shape == (80, 2)


def rewrite_config(path, change):
    """head.keras with its config.json changed by `change(config)` (the weights kept)."""
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    config = json.loads(files["config.json"])
    change(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)


def test_a_head_numpy_cannot_reproduce_is_loaded_with_keras(tmp_path):
    import keras

    other = keras.Sequential([keras.Input((DIM,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.BatchNormalization(),
                              keras.layers.Dense(CLASSES, activation="softmax", name="probabilities")])
    other.save(tmp_path / "head.keras")
    assert read_dense_head(tmp_path / "head.keras") is None  # not a head build_head makes
    head = load_head(tmp_path, {})
    assert not isinstance(head, DenseHead)
    x = features(seed=5)
    np.testing.assert_allclose(predict_proba(head, x), other.predict(x.astype(np.float32), verbose=0), atol=1e-5)

    path = saved_head(tmp_path, (16,), True, calibrated=False)
    assert isinstance(read_dense_head(path), DenseHead)
    rewrite_config(path, lambda c: c["config"]["layers"][2]["config"].update(activation="gelu"))
    assert read_dense_head(path) is None and not isinstance(load_head(tmp_path, {}), DenseHead)
    path.write_bytes(b"not a zip")
    assert read_dense_head(path) is None
    with pytest.raises(InputError, match="is not a readable Keras model"):
        load_head(tmp_path, {})
