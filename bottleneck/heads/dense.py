"""A saved head applied with numpy: head.keras read with zipfile, json and h5py, never Keras, so that the commands
that only apply a trained head to cached features (evaluate, TTA) start without TensorFlow's ~10 s import.

    head.keras = zip(config.json: the Sequential's layers, model.weights.h5: layers/<class>[_k]/vars/<i>)
    (N, D) -> [Normalization] -> (Dense relu -> Dropout) x hidden -> Dense "probabilities" (softmax) -> (N, C)

Each layer computes as Keras does on the CPU: the input cast to float32, Normalization's
(x - mean) / max(sqrt(variance), epsilon), every Dense in float32 until the last, Dropout the identity at
inference. The last layer's logits are made in float64 from its float32 input, as `predict_log_proba` does with a
Keras head. Only what `build_head` makes is read: any other layer, activation, dtype or option (a head.keras not
made by bottleneck) gives None, and the caller loads it with Keras instead; never a different answer.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np

from ..cache import is_streamed
from ..stats import log_softmax
from ..util import tensorflow

ACTIVATIONS = {"relu", "linear"}  # of hidden Dense layers; the last is "probabilities", a softmax


class DenseLayer:
    """One layer of a numpy head, with the part of a Keras layer's interface that `fold_calibration` and
    `probabilities_layer` use: `name`, `get_weights`, `set_weights`, `get_config`."""

    def __init__(self, kind: str, name: str, weights: list[np.ndarray], activation: str | None = None,
                 epsilon: float = 1e-7):
        self.kind, self.name, self.activation, self.epsilon = kind, name, activation, epsilon
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]

    def get_weights(self) -> list[np.ndarray]:
        return [w.copy() for w in self.weights]

    def set_weights(self, weights) -> None:
        if [np.shape(w) for w in weights] != [w.shape for w in self.weights]:
            raise ValueError(f"layer {self.name!r} holds weights of shapes {[w.shape for w in self.weights]}; "
                             f"received {[np.shape(w) for w in weights]}")
        self.weights = [np.asarray(w, dtype=np.float32) for w in weights]

    def get_config(self) -> dict:
        return {"name": self.name, "activation": self.activation}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(b, in) float32 -> (b, out) float32."""
        if self.kind == "normalization":
            mean, variance = self.weights
            return (x - mean) / np.maximum(np.sqrt(variance), np.float32(self.epsilon))
        if self.kind == "dropout":
            return x
        y = x @ self.weights[0]
        if len(self.weights) > 1:
            y += self.weights[1]
        return np.maximum(y, np.float32(0)) if self.activation == "relu" else y


class DenseHead:
    """A head read from head.keras (`read_dense_head`); `predict_log_proba`/`predict_proba` of heads/model.py run
    it, `fold_calibration` changes its last layer in place, `to_keras` gives the Keras model with the same weights
    (fine-tune and predict put it on a backbone)."""

    def __init__(self, path: Path | None, name: str, layers: list[DenseLayer]):
        """path: the head.keras it was read from (None: made in memory, e.g. trained by stack.py)."""
        self.path, self.name, self.layers = None if path is None else Path(path), name, layers

    @property
    def output_shape(self) -> tuple:
        return (None, self.layers[-1].weights[0].shape[1])

    def hidden(self, x) -> np.ndarray:
        """(b, D) features -> (b, H) float32, the input of the last layer."""
        h = np.asarray(x, dtype=np.float32)
        for layer in self.layers[:-1]:
            h = layer(h)
        return h

    def predict_log_proba(self, x, batch_size: int = 1024) -> np.ndarray:
        """(N, D) features or a streamed FeatureReader -> (N, C) float64 log-probabilities, logits in float64."""
        w, b = (v.astype(np.float64) for v in self.layers[-1].weights)  # read now: fold_calibration may change them
        blocks = (block for _, block in x.blocks()) if is_streamed(x) else [x]
        step = max(1, int(batch_size))
        out = [log_softmax(self.hidden(block[i:i + step]).astype(np.float64) @ w + b)
               for block in blocks for i in range(0, len(block), step)]
        return np.concatenate(out) if out else np.zeros((0, len(b)))

    def predict(self, x, batch_size: int | None = None, verbose=0) -> np.ndarray:
        """Keras' `model.predict`: (N, C) float32 probabilities."""
        return np.exp(self.predict_log_proba(x, batch_size or 1024)).astype(np.float32)

    def to_keras(self):
        """The same head as a Keras model (TensorFlow imported): head.keras loaded, its last layer given this head's
        weights (a calibration folded in or taken out here stays so)."""
        tensorflow()
        import keras  # after tensorflow(): its import is the slow, noisy part of start-up

        model = keras.saving.load_model(self.path)
        model.get_layer("probabilities").set_weights(self.layers[-1].get_weights())
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path and str(self.path)!r}, layers={[x.name for x in self.layers]})"


def keras_head(head):
    """A Keras model of a head: a DenseHead converted (`to_keras`), a Keras model as it is."""
    return head.to_keras() if isinstance(head, DenseHead) else head


def read_dense_head(path: str | Path) -> DenseHead | None:
    """The head saved at `path` as a DenseHead, or None where numpy cannot reproduce it exactly (a layer, activation,
    dtype or option `build_head` never makes; a file that is not a readable .keras archive): load that one with
    Keras, which also gives the one-line refusal of a damaged file."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            weights = z.read("model.weights.h5")
        with h5py.File(io.BytesIO(weights), "r") as h5:
            return _parse(Path(path), config, h5)
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError, zipfile.BadZipFile):
        return None  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors


def _parse(path: Path, config: dict, h5: h5py.File) -> DenseHead | None:
    """The layers of a saved Sequential, in order, each with its weights from `layers/<class>[_k]/vars/<i>` (Keras
    names a Sequential's layers by class, numbered per class in order; the InputLayer is not one of them)."""
    if config.get("class_name") != "Sequential" or not _plain(config):
        return None
    specs = config["config"]["layers"]
    if specs and specs[0].get("class_name") == "InputLayer":
        if specs[0]["config"].get("dtype", "float32") != "float32":
            return None
        specs = specs[1:]
    used: dict[str, int] = {}
    layers = []
    for spec in specs:
        cls = spec.get("class_name")
        if not _plain(spec):
            return None
        key = _snake(cls)
        used[key] = used.get(key, -1) + 1
        group = h5["layers"][f"{key}_{used[key]}" if used[key] else key]
        stored = [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
        layer = _layer(cls, spec["config"], stored)
        if layer is None:
            return None
        layers.append(layer)
    last = layers[-1] if layers else None
    if last is None or last.name != "probabilities" or last.kind != "dense" or last.activation != "softmax":
        return None
    if any(layer.activation == "softmax" for layer in layers[:-1]):
        return None
    return DenseHead(path, str(config["config"].get("name", "head")), layers)


def _layer(cls: str, cfg: dict, stored: list[np.ndarray]) -> DenseLayer | None:
    """A DenseLayer of one saved layer, or None where it is not one `build_head` makes."""
    name = str(cfg["name"])
    if cls == "Dropout":
        return DenseLayer("dropout", name, [])
    if cls == "Normalization":
        axis = cfg.get("axis")
        if axis not in ([-1], -1) or cfg.get("invert") or cfg.get("mean") is not None or len(stored) < 2:
            return None
        mean, variance = stored[0], stored[1]
        if mean.ndim != 1 or mean.shape != variance.shape:
            return None
        return DenseLayer("normalization", name, [mean, variance], epsilon=keras_epsilon())
    if cls == "Dense":
        activation = cfg.get("activation")
        if activation not in ACTIVATIONS | {"softmax"} or cfg.get("quantization_config") is not None:
            return None
        if cfg.get("lora_rank") or len(stored) != (2 if cfg.get("use_bias", True) else 1):
            return None
        kernel = stored[0]
        if kernel.ndim != 2 or kernel.shape[1] != cfg.get("units") or (len(stored) == 2 and
                                                                        stored[1].shape != (kernel.shape[1],)):
            return None
        return DenseLayer("dense", name, stored, activation)
    return None


def _plain(spec: dict) -> bool:
    """A built-in Keras object computing in float32 (not a registered custom class, not mixed precision)."""
    if spec.get("registered_name") not in (None, spec.get("class_name")):
        return False
    if not str(spec.get("module", "keras")).startswith("keras"):
        return False
    dtype = spec.get("config", {}).get("dtype", "float32")
    if isinstance(dtype, dict):
        dtype = dtype.get("config", {}).get("name")
    return dtype in ("float32", None)


def _snake(name: str) -> str:
    """Keras' `to_snake_case` of a class name, as it names saved layers: Dense -> dense, Normalization ->
    normalization."""
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", re.sub(r"\W+", "", name))
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", s).lower()


def keras_epsilon() -> float:
    """Keras' fuzz factor (`keras.config.epsilon()`): 1e-7 unless keras.json sets another, read as Keras reads it
    ($KERAS_HOME, else ~/.keras, else /tmp/.keras where the home folder cannot be written); Keras' own value where
    it is imported already."""
    if "keras" in sys.modules:
        return float(sys.modules["keras"].config.epsilon())
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    if "KERAS_HOME" not in os.environ and not os.access(os.path.expanduser("~"), os.W_OK):
        home = os.path.join("/tmp", ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            value = json.load(f).get("epsilon", 1e-7)
        return float(value)
    except (OSError, ValueError, TypeError, AttributeError):
        return 1e-7
