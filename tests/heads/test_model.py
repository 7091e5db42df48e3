"""The head on in-memory features: configuration checks, class weights, the built model, fitting with early
stopping and restored best weights, probabilities. Real Keras models on small synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from bottleneck.errors import InputError
from bottleneck.heads import fit_head
from bottleneck.heads.model import (
    HeadConfig,
    build_head,
    class_weights,
    make_optimizer,
    parse_hidden,
    predict_proba,
)


def blobs(n_per_class=40, dim=8, classes=3, seed=0):
    """Well separated class-dependent features, shuffled: (x float32, y int). The class centres are the same
    for every seed; the seed draws the samples."""
    centers = np.random.default_rng(0).normal(0, 3, (classes, dim))
    rng = np.random.default_rng(seed + 1)
    y = np.repeat(np.arange(classes), n_per_class)
    x = (centers[y] + rng.normal(0, 0.5, (len(y), dim))).astype(np.float32)
    order = rng.permutation(len(y))
    return x[order], y[order]


@pytest.mark.parametrize("text, hidden", [("512,512", (512, 512)), (" 64 ", (64,)), ("", ()), ("0", ()),
                                          ("none", ())])
def test_parse_hidden(text, hidden):
    assert parse_hidden(text) == hidden


def test_parse_hidden_names_a_bad_value():
    with pytest.raises(InputError, match="--hidden should be comma-separated layer sizes like 512,512; "
                                         "received '512,x'"):
        parse_hidden("512,x")


@pytest.mark.parametrize("change, message", [
    (dict(optimizer="lbfgs"), "--optimizer should be one of rmsprop, adam, sgd; received 'lbfgs'"),
    (dict(class_weight="inverse"), "--class-weight should be balanced or none; received 'inverse'"),
    (dict(dropout=1.0), r"--dropout should be in \[0, 1\); received 1.0"),
    (dict(hidden=(64, 0)), r"--hidden sizes should be positive integers; received \(64, 0\)"),
    (dict(lr=0.0), "--lr should be positive; received 0.0"),
    (dict(decay_rate=-1.0), "--decay-rate should be positive; received -1.0"),
    (dict(batch_size=0), "--batch-size should be a positive integer; received 0"),
    (dict(epochs=0), "--epochs should be a positive integer; received 0"),
])
def test_head_config_names_the_bad_option(change, message):
    assert HeadConfig().validate() == HeadConfig()
    with pytest.raises(InputError, match=message):
        HeadConfig(**change).validate()


def test_to_dict_is_json_ready():
    d = HeadConfig(hidden=(32, 16)).to_dict()
    assert d["hidden"] == [32, 16] and d["optimizer"] == "rmsprop" and d["seed"] == 0


def test_balanced_class_weights_are_scikit_learns_and_absent_classes_get_one():
    y = np.array([0, 0, 0, 0, 0, 0, 2, 2, 3])
    w = class_weights(y, 5, "balanced")
    expected = compute_class_weight("balanced", classes=np.array([0, 2, 3]), y=y)
    assert set(w) == {0, 1, 2, 3, 4} and all(isinstance(v, float) for v in w.values())
    np.testing.assert_allclose([w[0], w[2], w[3]], expected)
    assert w[1] == w[4] == 1.0
    assert class_weights(y, 5, "none") is None


def test_make_optimizer_by_name():
    import keras

    assert isinstance(make_optimizer("rmsprop", 1e-3), keras.optimizers.RMSprop)
    assert isinstance(make_optimizer("adam", 1e-3), keras.optimizers.Adam)
    sgd = make_optimizer("sgd", 1e-2)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == pytest.approx(0.9)
    with pytest.raises(InputError, match="received 'adagrad'"):
        make_optimizer("adagrad", 1e-3)


def test_build_head_standardizes_with_training_statistics_and_outputs_probabilities():
    x, _ = blobs()
    x = x * 10 + 5  # far from zero mean and unit variance
    model = build_head(8, 3, HeadConfig(hidden=(16, 4)), x)
    norm = model.get_layer("standardize")
    np.testing.assert_allclose(np.ravel(norm.mean), x.mean(axis=0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.ravel(norm.variance), x.var(axis=0), rtol=1e-3)
    assert [layer.units for layer in model.layers if layer.name.startswith("dense_")] == [16, 4]
    assert model.output_shape == (None, 3)
    p = model.predict(x[:5], verbose=0)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)
    linear = build_head(8, 3, HeadConfig(hidden=(), standardize=False))
    assert [layer.name for layer in linear.layers] == ["probabilities"]


@pytest.mark.slow
def test_fit_head_learns_stops_early_and_restores_the_best_epoch():
    x, y = blobs(n_per_class=15)
    rng = np.random.default_rng(5)
    noisy = y.copy()  # 30% of training labels redrawn: it overfits them, and validation loss turns up
    flip = rng.random(len(y)) < 0.3
    noisy[flip] = rng.integers(0, 3, flip.sum())
    xv, yv = blobs(n_per_class=10, seed=1)
    cfg = HeadConfig(hidden=(64,), dropout=0.0, epochs=40, patience=3, batch_size=8, lr=3e-2, decay_steps=1000)
    t = fit_head(x, noisy, xv, yv, 3, cfg)
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(t.history)
    assert len(t.history["loss"]) < 40  # early stopping ended it
    assert t.best_epoch == int(np.argmin(t.history["val_loss"])) + 1 and t.seconds > 0
    p = predict_proba(t.model, xv)
    assert (p.argmax(axis=1) == yv).mean() >= 0.9  # separable blobs: it learned them despite the noise
    # the weights kept are those of the best epoch, not of the last one
    loss = -np.log(p[np.arange(len(yv)), yv]).mean()
    assert loss == pytest.approx(min(t.history["val_loss"]), rel=0.02)


@pytest.mark.slow
def test_fit_without_validation_runs_every_epoch_and_the_same_seed_gives_the_same_head():
    x, y = blobs(n_per_class=20)
    cfg = HeadConfig(hidden=(8,), epochs=3, batch_size=16)
    a = fit_head(x, y, None, None, 3, cfg)
    b = fit_head(x, y, None, None, 3, cfg)
    assert len(a.history["loss"]) == 3 and a.best_epoch == 3 and "val_loss" not in a.history
    for wa, wb in zip(a.model.get_weights(), b.model.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    with pytest.raises(InputError, match="--dropout"):
        fit_head(x, y, None, None, 3, HeadConfig(dropout=2.0))


def test_predict_proba_rows_sum_to_one_in_float64_and_empty_input_is_empty():
    x, _ = blobs(n_per_class=3)
    model = build_head(8, 3, HeadConfig(hidden=(4,)), x)
    p = predict_proba(model, x)
    assert p.dtype == np.float64 and p.shape == (9, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-12)
    empty = predict_proba(model, np.zeros((0, 8), np.float32))
    assert empty.shape == (0, 3)
