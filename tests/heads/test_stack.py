"""Heads trained in a stack (heads/stack.py): each gets what it gets alone, and is the head `build_head` makes."""

from __future__ import annotations

import numpy as np
import pytest

from bottleneck.heads import HeadConfig, Part, fit_stack, predict_log_proba

DIM, CLASSES = 24, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(CLASSES), 30)
    x = (rng.normal(0, 1, (CLASSES, DIM))[y] + rng.normal(0, 1.5, (len(y), DIM))).astype(np.float16)
    order = rng.permutation(len(y))
    return x, y, order


def parts(order, cfgs):
    """Folds of different sizes (so the stack pads and masks), each with its own early-stopping rows."""
    out = []
    for k, cfg in enumerate(cfgs):
        held = order[k * 6:(k + 1) * 6]
        rest = np.setdiff1d(order, held)
        out.append(Part(cfg, np.sort(rest[:-12 - k]), np.sort(rest[-12:])))
    return out


@pytest.mark.parametrize("optimizer,hidden", [("rmsprop", (16, 8)), ("adam", (16,)), ("sgd", (8,))])
@pytest.mark.slow
def test_a_head_in_a_stack_is_the_head_trained_alone(data, optimizer, hidden):
    x, y, order = data
    cfgs = [HeadConfig(hidden=hidden, optimizer=optimizer, epochs=12, patience=3, batch_size=16, seed=s,
                       dropout=d, lr=lr, standardize=std)
            for s, d, lr, std in [(0, 0.5, 1e-3, False), (1, 0.2, 3e-3, True), (2, 0.0, 1e-2, True)]]
    ps = parts(order, cfgs)
    stacked = fit_stack(x, y, ps, CLASSES)
    for part, head in zip(ps, stacked):
        alone = fit_stack(x, y, [part], CLASSES)[0]
        assert head.best_epoch == alone.best_epoch
        assert head.history["val_loss"] == pytest.approx(alone.history["val_loss"], abs=1e-6)
        for a, b in zip(head.layers, alone.layers):
            for u, v in zip(a.weights, b.weights):
                np.testing.assert_allclose(u, v, atol=1e-6)
    # different seeds, rates and rows gave different heads: the stack did not share anything between them
    assert not np.allclose(stacked[0].layers[-1].weights[0], stacked[1].layers[-1].weights[0])


def test_early_stopping_keeps_the_best_epoch_and_stops_after_patience(data):
    x, y, order = data
    cfg = HeadConfig(hidden=(16,), epochs=60, patience=4, batch_size=32, lr=3e-2)
    head = fit_stack(x, y, parts(order, [cfg]), CLASSES)[0]
    losses = head.history["val_loss"]
    assert head.best_epoch == int(np.argmin(losses)) + 1
    assert len(losses) == 60 or len(losses) == head.best_epoch + 4


def test_without_stop_rows_it_trains_exactly_its_epochs(data):
    x, y, order = data
    head = fit_stack(x, y, [Part(HeadConfig(hidden=(8,), epochs=5), order, None)], CLASSES)[0]
    assert head.best_epoch == 5 and len(head.history["loss"]) == 5 and "val_loss" not in head.history


@pytest.mark.parametrize("hidden,standardize", [((), True), ((16,), False), ((16, 8), True)])
def test_numpy_and_keras_give_the_same_probabilities(data, hidden, standardize):
    x, y, order = data
    head = fit_stack(x, y, parts(order, [HeadConfig(hidden=hidden, standardize=standardize, epochs=3)]), CLASSES)[0]
    model = head.to_keras()
    assert [layer.name for layer in model.layers][-1] == "probabilities"
    np.testing.assert_allclose(np.exp(predict_log_proba(head, x)),
                               np.exp(predict_log_proba(model, x.astype(np.float32))), atol=1e-5)


def test_a_linear_head_is_scikit_learns_logistic_regression(data):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y, order = data
    part = parts(order, [HeadConfig(hidden=())])[0]
    head = fit_stack(x, y, [part], CLASSES)[0]
    xf = x[part.fit].astype(np.float32)
    scaler = StandardScaler().fit(xf)
    lr = LogisticRegression(class_weight="balanced", max_iter=1000).fit(scaler.transform(xf), y[part.fit])
    expected = lr.predict_log_proba(scaler.transform(x.astype(np.float32)))
    np.testing.assert_allclose(predict_log_proba(head, x), expected, atol=1e-4)
    assert head.history["lbfgs_iterations"][0] > 1 and "val_loss" in head.history
