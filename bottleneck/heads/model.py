"""The classifier head trained on cached bottlenecks: D -> 512 -> 512 -> classes, as the method describes.

Everything here works on feature arrays, in memory or streamed from the cache by a `FeatureReader` (see
feature_store.py); no image is ever opened.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import asdict, dataclass

import numpy as np

from ..cache import chunk_batches, is_streamed
from ..errors import InputError
from ..stats import log_of, log_softmax
from ..util import Option, Options, fraction_below_one, one_of, positive, positive_int, read_bool, tensorflow
from .dense import DenseHead

OPTIMIZERS = ("rmsprop", "adam", "sgd")  # of heads and of fine-tuning: see make_optimizer
CLASS_WEIGHTS = ("balanced", "none")


@dataclass(frozen=True)
class HeadConfig:
    """A head's hyperparameters; the defaults are here, everything else about each field is in HEAD_OPTIONS."""

    hidden: tuple[int, ...] = (512, 512)
    dropout: float = 0.5
    optimizer: str = "rmsprop"
    lr: float = 1e-3
    decay_rate: float = 0.94
    decay_steps: int = 100
    batch_size: int = 128
    epochs: int = 60
    patience: int = 10  # early stopping on validation loss; the best epoch's weights are restored
    class_weight: str = "balanced"
    standardize: bool = True  # scale inputs by the training split's mean/std (kept inside the head)
    seed: int = 0

    def validate(self) -> HeadConfig:
        return HEAD_OPTIONS.validate(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def parse_hidden(text: str) -> tuple[int, ...]:
    """"512,512" -> (512, 512); "linear", "none", "0" or "" -> () (a linear head)."""
    text = text.strip()
    if text.lower() in ("", "0", "none", "linear"):
        return ()
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise InputError(f"--hidden should be comma-separated layer sizes like 512,512; received {text!r}") from None


def read_hidden(value) -> tuple[int, ...]:
    """One architecture from the command line ("512,512") or a grid file ("512,512", 1024 or [512, 512])."""
    if isinstance(value, str):
        return parse_hidden(value)
    if isinstance(value, int):
        return (value,)
    return tuple(int(x) for x in value)


# The options of train-head (in this order) and sweep: HeadConfig's fields, each declared once (util/options.py).
HEAD_OPTIONS = Options(HeadConfig, [
    Option("hidden", "Hidden layer sizes, comma-separated.", type=str, parse=read_hidden,
           show=lambda h: ",".join(map(str, h)) or "0",
           check=lambda h: "sizes should be positive integers" if any(x < 1 for x in h) else None,
           sweep="repeat", sweep_help="Hidden sizes of one architecture; repeat for more."),
    Option("dropout", "Dropout after each hidden layer.", check=fraction_below_one,
           sweep="list", sweep_help="Comma-separated values, e.g. 0.3,0.5."),
    Option("optimizer", "rmsprop, adam or sgd.", check=one_of(OPTIMIZERS),
           sweep="list", sweep_help="Comma-separated: rmsprop,adam,sgd."),
    Option("lr", "Initial learning rate.", check=positive,
           sweep="list", sweep_help="Comma-separated initial learning rates."),
    Option("decay_rate", "Exponential learning-rate decay factor ...", check=positive,
           sweep="list", sweep_help="Comma-separated decay rates."),
    Option("decay_steps", "... applied every this many steps.", check=positive_int,
           sweep="list", sweep_help="Comma-separated decay steps."),
    Option("batch_size", "Batch size.", check=positive_int,
           sweep="list", sweep_help="Comma-separated batch sizes."),
    Option("epochs", "Maximum epochs (early stopping on validation loss).", check=positive_int,
           sweep="one", sweep_help="Maximum epochs of every configuration."),
    Option("patience", "Epochs without validation-loss improvement before stopping.",
           sweep="one", sweep_help="Early-stopping patience of every configuration."),
    Option("class_weight", "balanced or none.", check=one_of(CLASS_WEIGHTS, "balanced or none"),
           sweep="list", sweep_help="Comma-separated: balanced,none."),
    Option("standardize", "Standardise inputs with training-split mean/std (in the head).", parse=read_bool,
           sweep="file"),
    Option("seed", "Seed of the split, the initialisation, dropout and shuffling.",
           sweep="list", sweep_help="Comma-separated head seeds (init, dropout, shuffling)."),
])


def build_head(num_features: int, num_classes: int, cfg: HeadConfig, x_train=None):
    tensorflow()
    import keras

    keras.utils.set_random_seed(cfg.seed)
    layers = [keras.Input((num_features,), name="bottleneck")]
    if cfg.standardize:
        # Bottleneck scales differ by backbone and weights (ImageNet InceptionV3 ~0-5, a random ResNet ~0-30);
        # standardising with training-split statistics only (no leak from val/test) makes one learning rate
        # fit all. The statistics are weights of the head, so head.keras carries them.
        norm = keras.layers.Normalization(name="standardize")
        if x_train is not None:
            # A streamed reader is adapted block by block (Keras merges the blocks' mean and variance), so the
            # layer and head.keras are the same either way.
            norm.adapt(x_train.tf_dataset() if is_streamed(x_train) else x_train)
        layers.append(norm)
    for i, units in enumerate(cfg.hidden):
        layers += [keras.layers.Dense(units, activation="relu", name=f"dense_{i}"),
                   keras.layers.Dropout(cfg.dropout, seed=cfg.seed + i, name=f"dropout_{i}")]
    layers.append(keras.layers.Dense(num_classes, activation="softmax", name="probabilities"))
    model = keras.Sequential(layers, name="head")
    schedule = keras.optimizers.schedules.ExponentialDecay(cfg.lr, cfg.decay_steps, cfg.decay_rate)
    # Several steps per tf.function call: the head is so small that per-step Python overhead is a
    # large share of an epoch (measured ~15% faster on 2 cores, see docs/benchmarks.md).
    model.compile(optimizer=make_optimizer(cfg.optimizer, schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=8)
    return model


def make_optimizer(name: str, learning_rate):
    """A Keras optimizer by its `--optimizer` name; `learning_rate` is a float or a schedule."""
    tensorflow()
    import keras

    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=learning_rate)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    raise InputError(f"--optimizer should be one of {', '.join(OPTIMIZERS)}; received {name!r}")


def class_weights(y: np.ndarray, num_classes: int, mode: str) -> dict[int, float] | None:
    """"balanced": n / (k * count) per class, as scikit-learn defines it; classes absent from y get 1."""
    if mode == "none":
        return None
    counts = np.bincount(y, minlength=num_classes)
    present = counts > 0
    w = np.ones(num_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return {i: float(v) for i, v in enumerate(w)}


@dataclass
class TrainedHead:
    model: object  # keras.Model
    history: dict  # Keras history: loss, accuracy, val_loss, val_accuracy per epoch
    best_epoch: int  # 1-based epoch whose weights were restored
    seconds: float


def fit_keras_head(x_train, y_train, x_val, y_val, num_classes: int, cfg: HeadConfig, verbose: int = 0,
             callbacks=(), batches=None) -> TrainedHead:
    """Fit a head with early stopping on validation loss; same seed and machine give the same weights.

    x_train, x_val: in-memory arrays or streamed FeatureReaders (then read in chunk order, see `chunk_batches`).
    `batches`: a Keras PyDataset to train from instead of (x_train, y_train), e.g. one that draws stored
    augmented views; x_train still provides the standardisation statistics (plain training features)."""
    tensorflow()
    import keras

    cfg.validate()
    model = build_head(x_train.shape[1], num_classes, cfg, x_train)
    # Without validation data (a final fit on train+val) there is nothing to stop on: exactly cfg.epochs.
    if x_val is None:
        validation = None
    elif is_streamed(x_val):
        validation = chunk_batches(x_val, y_val, cfg.batch_size, shuffle=False)
    else:
        validation = (x_val, y_val)
    stop = [] if validation is None else [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)]
    start = time.perf_counter()
    if batches is not None:
        inputs = dict(x=batches)
    elif is_streamed(x_train):
        # The stream's order is its own (chunks shuffled, then rows within a buffer): Keras must not reorder
        # its batches, or every batch would read another buffer. Keras turns class_weight into per-row weights
        # of a PyDataset's labels with the same function as for arrays: the same weighting as in memory.
        inputs = dict(x=chunk_batches(x_train, y_train, cfg.batch_size, seed=cfg.seed), shuffle=False)
    else:
        inputs = dict(x=x_train, y=y_train, batch_size=cfg.batch_size, shuffle=True)
    hist = model.fit(**inputs, epochs=cfg.epochs, validation_data=validation, verbose=verbose,
                     class_weight=class_weights(y_train, num_classes, cfg.class_weight),
                     callbacks=[*stop, *callbacks])
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    best = int(np.argmin(history["val_loss"])) + 1 if "val_loss" in history else len(history["loss"])
    return TrainedHead(model, history, best, seconds)


def probabilities_layer(model):
    """The head's last Dense layer ("probabilities"), in a head or in a model that nests one (backbone + head)."""
    for layer in model.layers:
        if layer.name == "probabilities":
            return layer
        if hasattr(layer, "layers"):
            try:
                return probabilities_layer(layer)
            except InputError:
                continue
    raise InputError(f"model {model.name!r} has no layer named 'probabilities'; it was not made by bottleneck")


def fold_calibration(model, calibration, undo: bool = False) -> None:
    """Fold a clinical.Calibration into the head's last layer, in place: logits (W x + b) become
    (W x + b + shift) / T, so the model outputs calibrated probabilities. undo=True takes it out again."""
    layer = probabilities_layer(model)
    w, b = layer.get_weights()
    t, shift = calibration.temperature, np.asarray(calibration.shift, dtype=w.dtype)
    layer.set_weights([w * t, b * t - shift] if undo else [w / t, (b + shift) / t])


def predict_proba(model, x, batch_size: int = 1024) -> np.ndarray:
    """(N, D) features -> (N, C) probabilities, float64: exp of `predict_log_proba` (rows sum to 1 within 1e-15).

    x: an array, or a streamed FeatureReader, predicted block by block (a budget's worth each) in row order."""
    return np.exp(predict_log_proba(model, x, batch_size))


_LOGITS = weakref.WeakKeyDictionary()  # model -> the model up to its last layer's input (built and traced once)


def predict_log_proba(model, x, batch_size: int = 1024) -> np.ndarray:
    """(N, D) features -> (N, C) float64 log-probabilities, from logits computed in float64.

    Keras computes the head's softmax in float32, which rounds a probability above 1 - 6e-8 to exactly 1.0 and one
    below ~1e-45 to 0.0: ties that move every AUC. Here Keras gives the last layer's input (N, H) and its weights
    make the logits in float64; `log_softmax` keeps every one of them apart. A model whose last layer is not a
    softmax Dense named "probabilities" at its top level: the log of its own probabilities. A DenseHead (head.keras
    read with numpy, dense.py) computes the same without TensorFlow."""
    if isinstance(model, DenseHead):
        return model.predict_log_proba(x, batch_size)
    if len(x) == 0:
        return np.zeros((0, model.output_shape[-1]))
    sub = _logits_model(model)
    run = model if sub is None else sub
    if is_streamed(x):
        out = np.concatenate([run.predict(block, batch_size=batch_size, verbose=0) for _, block in x.blocks()])
    else:
        out = run.predict(x, batch_size=batch_size, verbose=0)
    if sub is None:
        p = np.asarray(out, dtype=np.float64)
        return log_of(p / p.sum(axis=1, keepdims=True))
    w, b = probabilities_layer(model).get_weights()  # read now: fold_calibration changes them in place
    return log_softmax(np.asarray(out, np.float64) @ w.astype(np.float64) + b.astype(np.float64))


def _logits_model(model):
    """The model from its input to the input of its "probabilities" layer, or None where that cannot be cut."""
    if model in _LOGITS:
        return _LOGITS[model]
    tensorflow()
    import keras

    sub = None
    layer = next((x for x in model.layers if x.name == "probabilities"), None)
    if layer is not None and layer.get_config().get("activation") == "softmax":
        try:
            sub = keras.Model(model.inputs, layer.input)
        except (ValueError, AttributeError, TypeError):  # a subclassed or never-called model: no graph to cut
            sub = None
    _LOGITS[model] = sub
    return sub
