"""Many heads trained at once, in one traced graph: the folds of a sweep's configurations and train-head's folds
(a linear head among them is fitted by linear.py instead: a logistic regression run to convergence).

A Keras `fit` costs a build, a compile and a trace per head, then about 0.15 s of fixed cost per epoch (a new tf.data
iterator for training and one for validation): on 70 images that is all of it. Here the heads of one shape (hidden
sizes, batch size, optimizer) are stacked along a leading axis, (H, D, 512) for the first layer, and one traced
function runs an epoch of all of them: H heads cost about one head's fixed cost. The traced functions are kept per
shape, so the next stack of that shape (the next configuration, the next sweep in the process) traces nothing.

Each head keeps its own everything: its rows (fit and early-stopping rows), its standardisation statistics, learning
rate schedule, dropout rate, class weights and seed; its initial weights, shuffling and dropout masks are drawn from its
own seed and step count only. So a head trained in a stack of twenty gets the weights it would get alone (tested): the
stack is a way of running heads, not a change to any of them.

The training is the head's (heads/model.py), step for step: inputs standardised with its training rows' mean and
variance, Dense + ReLU + inverted dropout per hidden layer, softmax; class-weighted cross-entropy averaged over the
batch; rmsprop / adam / sgd (momentum 0.9) as Keras defines them, on an exponentially decaying learning rate; early
stopping on the unweighted loss of the early-stopping rows with `patience`, the best epoch's weights restored. Its
random streams (initialisation, shuffling, dropout) are not Keras', so a head trained here and one trained by Keras
`fit` with the same seed differ as two seeds do.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..cache import is_streamed
from ..util import tensorflow
from .dense import DenseHead, DenseLayer
from .linear import fit_linear_head
from .model import HeadConfig, TrainedHead, class_weights, fit_keras_head

EPSILON = 1e-7  # Keras' epsilon: the optimizers' and the Normalization layer's floor


@dataclass(frozen=True)
class Part:
    """One head to train: its configuration, the rows it is fitted on and the rows its early stopping watches
    (None: no early stopping, exactly cfg.epochs)."""

    cfg: HeadConfig
    fit: np.ndarray
    stop: np.ndarray | None = None


class StackedHead(DenseHead):
    """A head trained in a stack: a numpy head (dense.py: `predict_log_proba` and `predict_proba` run it without
    TensorFlow) with its training record, and `to_keras` for head.keras."""

    def __init__(self, cfg: HeadConfig, layers: list[DenseLayer], history: dict, best_epoch: int, seconds: float):
        super().__init__(None, "head", layers)
        self.cfg, self.history, self.best_epoch, self.seconds = cfg, history, best_epoch, seconds

    def log_proba(self, x) -> np.ndarray:
        return self.predict_log_proba(x)

    @property
    def model(self):
        """Itself: what a TrainedHead's `model` is used for (`predict_log_proba`), a StackedHead does."""
        return self

    def to_keras(self):
        """The same head as a Keras model: the layers `build_head` makes, given these weights."""
        from .model import build_head

        dims = [layer.weights[0].shape for layer in self.layers if layer.kind == "dense"]
        model = build_head(dims[0][0], dims[-1][1], self.cfg)
        for layer in self.layers:
            if layer.kind == "dense":
                model.get_layer(layer.name).set_weights(layer.get_weights())
            elif layer.kind == "normalization":
                norm = model.get_layer(layer.name)
                norm.set_weights([*layer.get_weights(), np.int64(0)][:len(norm.get_weights())])
                norm.finalize_state()
        return model


def _layers(cfg: HeadConfig, mean, variance, arrays: list[np.ndarray]) -> list[DenseLayer]:
    """The layers `build_head` names, with a stacked head's weights."""
    layers = [] if mean is None else [DenseLayer("normalization", "standardize", [mean, variance], epsilon=EPSILON)]
    for i in range(len(cfg.hidden)):
        layers += [DenseLayer("dense", f"dense_{i}", arrays[2 * i:2 * i + 2], "relu"),
                   DenseLayer("dropout", f"dropout_{i}", [])]
    return layers + [DenseLayer("dense", "probabilities", arrays[-2:], "softmax")]


def stack_key(cfg: HeadConfig) -> tuple:
    """Heads with the same key train in one stack: the same shapes and the same update rule."""
    return cfg.hidden, cfg.batch_size, cfg.optimizer


def fit_stack(x: np.ndarray, y: np.ndarray, parts: list[Part], num_classes: int, callbacks=()) -> list[StackedHead]:
    """Train every part's head (in stacks of one `stack_key`), in the order of `parts`. x: (N, D) in memory.
    `callbacks`: Keras-style callbacks without a model (the progress bar) told of each epoch of the first head."""
    tf = tensorflow()
    xt = tf.constant(np.asarray(x, dtype=np.float32))
    yt = tf.constant(np.asarray(y, dtype=np.int32))
    out: list[StackedHead | None] = [None] * len(parts)
    keys: dict[tuple, list[int]] = {}
    for i, part in enumerate(parts):
        part.cfg.validate()
        if not part.cfg.hidden:  # a linear head is a logistic regression, fitted to convergence (linear.py)
            layers, history, iterations, seconds = fit_linear_head(x, y, part.fit, part.stop, num_classes, part.cfg)
            out[i] = StackedHead(part.cfg, layers, history | {"lbfgs_iterations": [iterations]}, 1, seconds)
            continue
        keys.setdefault(stack_key(part.cfg), []).append(i)
    for members in keys.values():
        for i, head in zip(members, _train([parts[i] for i in members], x, y, xt, yt, num_classes, callbacks)):
            out[i] = head
    return out


@dataclass
class _State:
    """The stack's tensors: params and optimizer slots per layer (kernel, bias), steps taken per head."""

    params: list
    slots: list
    steps: object


def _train(parts: list[Part], x, y, xt, yt, num_classes: int, callbacks=()) -> list[StackedHead]:
    tf = tensorflow()
    for cb in callbacks:
        cb.on_train_begin()
    start = time.perf_counter()
    cfg0 = parts[0].cfg
    n_heads, dim = len(parts), x.shape[1]
    stats = [_standardization(x, p) for p in parts]
    hyper = _hyper(parts, stats, y, num_classes, dim, tf)
    sizes = [dim, *cfg0.hidden, num_classes]
    init = [_glorot(p.cfg.seed, sizes) for p in parts]
    params = [tf.constant(np.stack([h[k] for h in init])) for k in range(2 * (len(sizes) - 1))]
    state = _State(params, [tf.zeros_like(p) for p in params] * _slot_count(cfg0.optimizer),
                   tf.zeros(n_heads, tf.int32))
    best = list(params)
    epoch_fn, eval_fn = _functions(cfg0.optimizer, len(cfg0.hidden), n_heads)
    batches = _batcher(parts, cfg0.batch_size)
    val_idx, val_mask = _padded([p.stop if p.stop is not None else p.fit[:1] for p in parts])
    val_idx, val_mask = tf.constant(val_idx), tf.constant(val_mask)
    history = {k: [[] for _ in parts] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    running = np.ones(n_heads, bool)
    best_loss, wait, best_epoch = np.full(n_heads, np.inf), np.zeros(n_heads, int), np.zeros(n_heads, int)
    epochs = np.array([p.cfg.epochs for p in parts])
    watched = np.array([p.stop is not None and len(p.stop) > 0 for p in parts])
    for epoch in range(int(epochs.max())):
        idx, weight, count, active = batches(epoch, running)
        new_params, new_slots, steps, loss, acc = epoch_fn(xt, yt, idx, weight, count, active, hyper,
                                                           state.params, state.slots, state.steps)
        state = _State(list(new_params), list(new_slots), steps)
        loss, acc = loss.numpy(), acc.numpy()
        val_loss, val_acc = (t.numpy() for t in eval_fn(xt, yt, val_idx, val_mask, hyper, state.params))
        improved = np.zeros(n_heads, bool)
        for h in np.flatnonzero(running):
            history["loss"][h].append(float(loss[h]))
            history["accuracy"][h].append(float(acc[h]))
            if watched[h]:
                history["val_loss"][h].append(float(val_loss[h]))
                history["val_accuracy"][h].append(float(val_acc[h]))
                wait[h] += 1
                if val_loss[h] < best_loss[h]:  # Keras' EarlyStopping: strictly lower, no min_delta
                    best_loss[h], best_epoch[h], wait[h], improved[h] = val_loss[h], epoch + 1, 0, True
                elif wait[h] >= parts[h].cfg.patience and epoch > 0:
                    running[h] = False
            else:
                best_epoch[h], improved[h] = epoch + 1, True
            if epoch + 1 >= epochs[h]:
                running[h] = False
        if improved.any():
            keep = tf.constant(improved)
            best = [tf.where(tf.reshape(keep, [-1] + [1] * (len(p.shape) - 1)), p, b)
                    for p, b in zip(state.params, best)]
        for cb in callbacks:
            cb.on_epoch_end(epoch, {k: v[0][-1] for k, v in history.items() if v[0]})
        if not running.any():
            break
    for cb in callbacks:
        cb.on_train_end()
    seconds = (time.perf_counter() - start) / n_heads
    arrays = [b.numpy() for b in best]
    return [StackedHead(p.cfg, _layers(p.cfg, *stats[h], [a[h] for a in arrays]),
                        {k: v[h] for k, v in history.items() if v[h]}, int(best_epoch[h]), seconds)
            for h, p in enumerate(parts)]


def _standardization(x: np.ndarray, part: Part) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(mean, variance) of the part's fit rows, float32, as Keras' Normalization adapts them; (None, None) without."""
    if not part.cfg.standardize:
        return None, None
    rows = np.asarray(x[np.sort(part.fit)], dtype=np.float64)
    return rows.mean(axis=0).astype(np.float32), rows.var(axis=0).astype(np.float32)


def _hyper(parts: list[Part], stats, y: np.ndarray, num_classes: int, dim: int, tf) -> dict:
    """Per-head constants of the traced functions, as (H, ...) tensors; a head without standardisation gets mean 0
    and scale 1 (the identity), whichever head of the stack comes first."""
    mean = [s[0] if s[0] is not None else np.zeros(dim, np.float32) for s in stats]
    scale = [np.maximum(np.sqrt(s[1]), np.float32(EPSILON)) if s[1] is not None else np.ones_like(m)
             for s, m in zip(stats, mean)]
    weights = []
    for p in parts:
        cw = class_weights(y[p.fit], num_classes, p.cfg.class_weight)
        weights.append([cw[c] if cw else 1.0 for c in range(num_classes)])
    f32 = np.float32
    return {"mean": tf.constant(np.stack(mean)), "scale": tf.constant(np.stack(scale)),
            "class_weight": tf.constant(np.array(weights, f32)),
            "lr": tf.constant(np.array([p.cfg.lr for p in parts], f32)),
            "decay_rate": tf.constant(np.array([p.cfg.decay_rate for p in parts], f32)),
            "decay_steps": tf.constant(np.array([p.cfg.decay_steps for p in parts], f32)),
            "dropout": tf.constant(np.array([p.cfg.dropout for p in parts], f32)),
            "seed": tf.constant(np.array([p.cfg.seed for p in parts], np.int32))}


def _glorot(seed: int, sizes: list[int]) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases (Keras' Dense defaults), drawn from the head's own seed."""
    rng = np.random.default_rng([seed, 0x5EED])
    out = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        out += [rng.uniform(-limit, limit, (fan_in, fan_out)).astype(np.float32), np.zeros(fan_out, np.float32)]
    return out


def _padded(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(H, M) row indices padded with row 0, and the (H, M) mask of real ones."""
    width = max(1, max(len(r) for r in rows))
    idx, mask = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.float32)
    for h, r in enumerate(rows):
        idx[h, :len(r)], mask[h, :len(r)] = r, 1
    return idx, mask


def _batcher(parts: list[Part], batch: int):
    """A function of (epoch, running) -> one epoch's batches of every head: (H, S, B) row indices, (H, S, B) 1/0
    masks, (H, S) row counts and (H, S) active steps. Each head shuffles its own rows with its own generator, so its
    batches do not depend on the other heads; a head that stopped (or has fewer steps) has inactive steps."""
    rngs = [np.random.default_rng([p.cfg.seed, 0x5407]) for p in parts]
    steps = max(-(-len(p.fit) // batch) for p in parts)
    if steps == 1:  # every head's rows fit in one batch: no padding to the batch size
        batch = max(len(p.fit) for p in parts)

    def epoch_batches(epoch: int, running: np.ndarray):
        idx = np.zeros((len(parts), steps, batch), np.int32)
        mask = np.zeros((len(parts), steps, batch), np.float32)
        for h, (p, rng) in enumerate(zip(parts, rngs)):
            order = p.fit[rng.permutation(len(p.fit))]
            if not running[h]:
                continue
            flat = np.zeros(steps * batch, np.int32)
            flat[:len(order)] = order
            idx[h] = flat.reshape(steps, batch)
            mask[h].reshape(-1)[:len(order)] = 1
        count = mask.sum(axis=2)
        return idx, mask, count, count > 0

    return epoch_batches


def _slot_count(optimizer: str) -> int:
    return 2 if optimizer == "adam" else 1


_FUNCTIONS: dict[tuple, tuple] = {}  # (optimizer, hidden layers, heads) -> traced (epoch, eval) functions


def _functions(optimizer: str, n_hidden: int, n_heads: int):
    key = (optimizer, n_hidden, n_heads)
    if key not in _FUNCTIONS:
        from .stack_graph import make_functions

        _FUNCTIONS[key] = make_functions(optimizer, n_hidden, n_heads)
    return _FUNCTIONS[key]


def stacked_parts(cfg: HeadConfig, parts: list[tuple[np.ndarray, np.ndarray | None]]) -> list[Part]:
    """Parts of one configuration over several (fit, stop) row sets (folds)."""
    return [Part(replace(cfg), fit, stop) for fit, stop in parts]

def fit_head(x_train, y_train, x_val, y_val, num_classes: int, cfg: HeadConfig, verbose: int = 0,
             callbacks=(), batches=None) -> TrainedHead:
    """Fit a head (model.py `fit_keras_head` for the arguments): a linear head on features in memory is a logistic
    regression fitted to convergence (linear.py); any other head, or one trained off a stream or stored views, by
    Keras with early stopping on validation loss."""
    cfg.validate()
    if not cfg.hidden and batches is None and not is_streamed(x_train) and (x_val is None or not is_streamed(x_val)):
        return _fit_linear(x_train, y_train, x_val, y_val, num_classes, cfg)
    return fit_keras_head(x_train, y_train, x_val, y_val, num_classes, cfg, verbose, callbacks, batches)


def _fit_linear(x_train, y_train, x_val, y_val, num_classes: int, cfg: HeadConfig) -> TrainedHead:
    """A linear head: a logistic regression on the standardised training rows, fitted to convergence (linear.py);
    the validation rows are scored for the history (and, in a run, calibrate it), never stopped on."""
    x_val = np.zeros((0, x_train.shape[1]), np.float32) if x_val is None else x_val
    x = np.concatenate([np.asarray(x_train, np.float32), np.asarray(x_val, np.float32)])
    y = np.concatenate([np.asarray(y_train), np.asarray([] if y_val is None else y_val, np.asarray(y_train).dtype)])
    n = len(x_train)
    head = fit_stack(x, y, [Part(cfg, np.arange(n), np.arange(n, len(x)) if len(x) > n else None)], num_classes)[0]
    return TrainedHead(head.to_keras(), head.history, head.best_epoch, head.seconds)
