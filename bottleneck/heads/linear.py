"""The linear head: multinomial logistic regression on the standardised features, fitted to convergence by
scikit-learn's LogisticRegression (L-BFGS, L2 penalty C = 1, class weights as the head's), then held as the head
`build_head` makes with no hidden layer (Normalization -> Dense "probabilities", softmax).

It is the first thing a careful user compares an MLP head against, so it is the model they would fit themselves,
not a few epochs of a gradient method stopped early: a linear head trained like the MLP (RMSProp, 60 one-step
epochs on 70 images) stopped far from the optimum and scored like a different model. The MLP's training options
(lr, optimizer, decay, batch size, epochs, patience, dropout) do not apply to it and are ignored; `class_weight`,
`standardize` and `seed` are honoured.
"""

from __future__ import annotations

import time

import numpy as np

from ..stats import log_softmax
from .dense import DenseLayer
from .model import HeadConfig, class_weights

LINEAR_C = 1.0  # scikit-learn's default inverse regularisation strength
MAX_ITER = 1000
EPSILON = 1e-7  # Keras' Normalization floor


def fit_linear_head(x: np.ndarray, y: np.ndarray, fit: np.ndarray, stop: np.ndarray | None, num_classes: int,
                    cfg: HeadConfig) -> tuple[list[DenseLayer], dict, int, float]:
    """(layers, history, iterations, seconds) of the linear head fitted on rows `fit`; `stop` rows (if any) are only
    scored, for the history (nothing stops early: the fit is convex and runs to convergence)."""
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    xf = np.asarray(x[np.sort(fit)], dtype=np.float32)
    yf = np.asarray(y)[np.sort(fit)]
    layers = []
    mean, scale = np.zeros(xf.shape[1], np.float32), np.ones(xf.shape[1], np.float32)
    if cfg.standardize:
        rows = xf.astype(np.float64)
        mean, variance = rows.mean(axis=0).astype(np.float32), rows.var(axis=0).astype(np.float32)
        scale = np.maximum(np.sqrt(variance), np.float32(EPSILON))
        layers.append(DenseLayer("normalization", "standardize", [mean, variance], epsilon=EPSILON))
    weights = class_weights(yf, num_classes, cfg.class_weight)
    model = LogisticRegression(C=LINEAR_C, max_iter=MAX_ITER, random_state=cfg.seed,
                               class_weight=None if weights is None else weights)
    model.fit((xf - mean) / scale, yf)
    kernel, bias = _softmax_weights(model, xf.shape[1], num_classes)
    layers.append(DenseLayer("dense", "probabilities", [kernel, bias], "softmax"))
    history = {"loss": [_loss(xf, yf, layers, weights)], "accuracy": [_accuracy(xf, yf, layers)]}
    if stop is not None and len(stop):
        xs, ys = np.asarray(x[np.sort(stop)], dtype=np.float32), np.asarray(y)[np.sort(stop)]
        history |= {"val_loss": [_loss(xs, ys, layers, None)], "val_accuracy": [_accuracy(xs, ys, layers)]}
    return layers, history, int(np.max(model.n_iter_)), time.perf_counter() - start


def _softmax_weights(model, dim: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(D, C) kernel and (C,) bias of a softmax giving the model's probabilities; classes it never saw get a logit
    of -1e4 (probability ~0). Two classes: scikit-learn's one logit becomes [0, logit] (the same sigmoid)."""
    kernel = np.zeros((dim, num_classes), np.float32)
    bias = np.full(num_classes, -1e4, np.float32)
    seen = model.classes_.astype(int)
    if len(seen) == 2:
        bias[seen] = [0.0, float(model.intercept_[0])]
        kernel[:, seen[1]] = model.coef_[0]
    else:
        kernel[:, seen] = model.coef_.T
        bias[seen] = model.intercept_
    return kernel, bias


def _forward(x: np.ndarray, layers: list[DenseLayer]) -> np.ndarray:
    h = x
    for layer in layers[:-1]:
        h = layer(h)
    w, b = layers[-1].weights
    return log_softmax(h.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64))


def _loss(x, y, layers, weights) -> float:
    """Mean cross-entropy, class-weighted as the fit was (`weights`) or plain (validation, as Keras reports it)."""
    logp = _forward(x, layers)[np.arange(len(y)), y]
    w = np.ones(len(y)) if weights is None else np.array([weights[int(c)] for c in y])
    return float(-(w * logp).sum() / len(y))


def _accuracy(x, y, layers) -> float:
    return float((_forward(x, layers).argmax(axis=1) == y).mean())
