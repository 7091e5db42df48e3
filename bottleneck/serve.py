"""A run as one model that takes raw RGB images, and the commands serving it: `predict` and `export`.

    head run:      backbone rebuilt from the cache provenance + head.keras  \\
                                                                              -> (B, S, S, 3) float 0..255 -> (B, C)
    fine-tune run: model.keras                                             /

The model assembly (backbone rebuilt from provenance, preprocessing layer, unfreezing) lives here because
fine-tune, predict and export all build the same model. Images are decoded with `load_image`, the decoder
extraction used, so a cached image gets the same pixels here.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backbones import create_backbone, file_sha256, get_spec, layer_groups
from .errors import BottleneckError, ImageDecodeError, InputError, WeightsError
from .images import load_image
from .tfimport import tensorflow
from .views import DIHEDRAL

FORMATS = ("keras", "savedmodel", "tflite")
# Probabilities of the exported model against the reference. A head run's reference is the head on the cached
# features, stored as float16 (relative error ~5e-4 per feature), hence the loose bound; a fine-tune run's is
# its own model.keras on the same float32 pixels, where only conversion (SavedModel/TFLite) can differ.
HEAD_RUN_ATOL = 2e-2
FINETUNE_RUN_ATOL = 1e-3
DIHEDRAL_VIEWS = DIHEDRAL + 1  # identity plus the 7 stored-view transforms of views.py


def read_run(run: Path) -> dict:
    if not (run / "config.json").is_file():
        raise InputError(f"{run} is not a run directory (no config.json there); pass a directory made by "
                         "`bottleneck train-head` or `bottleneck fine-tune`")
    return json.loads((run / "config.json").read_text())


# --- the model: backbone rebuilt from provenance + the run's head ----------------------------------------------

def rebuild_backbone(cc: dict):
    """The backbone exactly as the cache recorded it; a weights file must still have the recorded SHA-256."""
    spec = get_spec(cc["backbone"])
    if cc["preprocessing"] != spec.preprocessing:
        raise WeightsError(f"the cache records preprocessing {cc['preprocessing']!r} for {spec.name} but this "
                           f"bottleneck applies {spec.preprocessing!r}; re-extract the cache with this version")
    weights = cc["weights"]
    if weights not in ("imagenet", "none"):
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"weights file {path} recorded in the cache provenance is missing; put the same "
                               "file back at that path")
        sha = file_sha256(path)
        if sha != cc["weights_sha256"]:
            raise WeightsError(f"weights file {path} has sha256 {sha} but the cache was extracted with sha256 "
                               f"{cc['weights_sha256']}; restore the original file or re-extract the cache")
    return create_backbone(spec.name, weights, int(cc["input_size"]), cc["pooling"], int(cc["seed"]))


def preprocess_layer(backbone: str):
    """`preprocess_input` of the backbone as a frozen built-in Dense(3) applied per pixel.

    Every registered preprocessing (caffe: RGB->BGR minus the ImageNet mean; tf: x/127.5 - 1; EfficientNet:
    identity) is affine per pixel, so a 3x3 kernel plus bias reproduces it exactly, and the saved model needs no
    custom code to load (Keras, SavedModel, TFLite). The affine map is measured from `preprocess_input` itself
    and checked on random pixels, so it cannot drift from what extraction used."""
    tensorflow()
    import keras

    fn = get_spec(backbone).preprocess_fn()
    probe = np.concatenate([np.zeros((1, 3)), 255 * np.eye(3)]).astype(np.float32).reshape(4, 1, 1, 3)
    out = np.asarray(fn(probe.copy()), np.float64).reshape(4, 3)  # copy: preprocess_input works in place
    bias, kernel = out[0], (out[1:] - out[0]) / 255  # kernel[i, j]: input channel i -> output channel j
    x = np.random.default_rng(0).uniform(0, 255, (64, 1, 1, 3)).astype(np.float32)
    if not np.allclose(x.reshape(-1, 3) @ kernel + bias, np.asarray(fn(x.copy())).reshape(-1, 3), atol=1e-3):
        raise WeightsError(f"preprocess_input of {backbone} is not affine per pixel; it needs its own layer "
                           "before fine-tune/export can embed it")
    layer = keras.layers.Dense(3, name="preprocess", trainable=False, dtype="float32")
    layer.build((None, 3))
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return layer


def assemble_model(cc: dict, head, backbone=None):
    """raw RGB (B, S, S, 3) float 0..255 -> probabilities (B, C): preprocessing, backbone and head in one model."""
    tensorflow()
    import keras

    backbone = backbone if backbone is not None else rebuild_backbone(cc)
    size = int(cc["input_size"])
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess_layer(cc["backbone"])(inputs)  # (B, S, S, 3) what the backbone expects
    # training=False documents the intent; on its own it does not protect BN statistics in Keras 3 (fit's
    # training=True overrides the recorded argument of nested models), so `unfreeze` also freezes every BN layer.
    feats = backbone(x, training=False)  # (B, D)
    return keras.Model(inputs, head(feats), name=f"{cc['backbone']}_classifier")


def unfreeze(backbone, name: str, n: int | str) -> dict:
    """Train the top `n` layer groups of the backbone; freeze the rest and every BatchNormalization layer.

    A BN layer with trainable=False runs in inference mode in Keras 3: its moving statistics (ImageNet's) are
    used and never updated by small, class-skewed fine-tuning batches (the known InceptionV3/ResNet failure)."""
    tensorflow()
    import keras

    groups = layer_groups(backbone, get_spec(name))
    k = len(groups) if n == "all" else int(n)
    if k > len(groups):
        raise InputError(f"--unfreeze {k} is more than the {len(groups)} layer groups of {name}; "
                         f"pass at most {len(groups)} or 'all'")
    backbone.trainable = True
    for group in groups[:len(groups) - k]:
        for layer in group:
            layer.trainable = False
    bn = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bn:
        layer.trainable = False
    top = groups[len(groups) - k:]
    return {"groups": k, "of": len(groups), "frozen_batchnorm_layers": len(bn),
            "first_unfrozen_layer": top[0][0].name if top else None,
            "trainable_weights": int(sum(np.prod(w.shape) for w in backbone.trainable_weights))}


@dataclass
class ServedModel:
    model: object  # keras.Model: raw RGB (B, S, S, 3) float 0..255 -> probabilities (B, C)
    class_names: list[str]
    input_size: int
    config: dict  # the run's config.json, or labels.json beside a bare .keras file
    kind: str  # "head" | "finetune" | "keras"


def load_served(model_or_run: str | Path) -> ServedModel:
    """A head run, a fine-tune run, or a .keras file with labels.json (an export) beside it."""
    tensorflow()
    import keras

    p = Path(model_or_run)
    if not p.exists():
        raise InputError(f"{p} does not exist; pass a run directory (train-head or fine-tune) or an exported "
                         ".keras model")
    if p.is_file():
        labels = p.parent / "labels.json"
        if p.suffix != ".keras" or not labels.is_file():
            raise InputError(f"{p}: expected a run directory or a .keras model with labels.json beside it "
                             "(as `bottleneck export --format keras` writes)")
        info = json.loads(labels.read_text())
        return ServedModel(keras.saving.load_model(p), info["class_names"], int(info["input_size"]), info, "keras")
    if (p / "labels.json").is_file() and (p / "model.keras").is_file() and not (p / "config.json").is_file():
        return load_served(p / "model.keras")
    config = read_run(p)
    cache = config["cache"]
    size, names = int(cache["config"]["input_size"]), cache["class_names"]
    if (p / "model.keras").is_file():
        return ServedModel(keras.saving.load_model(p / "model.keras"), names, size, config, "finetune")
    if (p / "head.keras").is_file():
        head = keras.saving.load_model(p / "head.keras")
        return ServedModel(assemble_model(cache["config"], head), names, size, config, "head")
    raise InputError(f"{p} holds neither model.keras (fine-tune run) nor head.keras (train-head run)")


def predict_images(model, paths: list[str], size: int, batch_size: int = 32, tta: bool = False):
    """Probabilities (N, C) float64 (NaN rows where an image failed) and the reasons ("" when decoded).

    tta: mean over the 8 dihedral views (identity, 3 rotations, their mirrors), as the cache's views 1-7."""
    tf = tensorflow()
    from .views import apply_view

    errors = [""] * len(paths)

    def load(i):
        i = int(i)
        try:
            return load_image(paths[i], size)[0]
        except ImageDecodeError as exc:
            errors[i] = str(exc)
            return np.zeros((size, size, 3), np.uint8)

    def tf_load(i):
        pixels = tf.numpy_function(load, [i], tf.uint8, stateful=False)
        pixels.set_shape((size, size, 3))
        return pixels

    @tf.function(reduce_retracing=True)
    def infer(x):  # (B, S, S, 3) uint8 -> (B, C)
        x = tf.cast(x, tf.float32)
        if not tta:
            return model(x, training=False)
        views = tf.concat([x] + [apply_view(x, k) for k in range(1, DIHEDRAL_VIEWS)], axis=0)
        p = model(views, training=False)
        return tf.reduce_mean(tf.reshape(p, (DIHEDRAL_VIEWS, -1, p.shape[-1])), axis=0)

    ds = (tf.data.Dataset.range(len(paths)).map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    out = []
    for x in ds:
        n = int(x.shape[0])
        if n < batch_size:  # one shape for every call: no retrace
            x = tf.concat([x, tf.zeros((batch_size - n, size, size, 3), tf.uint8)], axis=0)
        out.append(np.asarray(infer(x), np.float64)[:n])
    proba = np.concatenate(out) if out else np.zeros((0, int(model.output_shape[-1])))
    proba = proba / proba.sum(axis=1, keepdims=True)
    proba[[bool(e) for e in errors]] = np.nan
    return proba, errors


def collect_files(inputs: list[str | Path]) -> list[Path]:
    """Files given, plus every non-hidden file under folders given (recursively): non-images are listed as
    failures by the decoder rather than silently passed over."""
    from .dataset import _walk_files

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(_walk_files(item))
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item} does not exist; pass image files or folders of images")
    if not files:
        raise InputError(f"no files found in {', '.join(map(str, inputs))}; pass image files or folders of images")
    return list(dict.fromkeys(files))


@dataclass
class PredictResult:
    frame: object  # pandas DataFrame: path, predicted, p_<class>..., error
    class_names: list[str]
    failed: list = field(default_factory=list)  # (path, reason)


def predict(model_or_run: str | Path, inputs: list[str | Path], out: str | Path | None = None,
            batch_size: int = 32, tta: bool = False) -> PredictResult:
    """Class probabilities of raw image files; unreadable files get an error and no probabilities."""
    import pandas as pd

    if batch_size < 1:
        raise InputError(f"--batch-size should be a positive integer; received {batch_size}")
    files = collect_files(inputs)
    served = load_served(model_or_run)
    proba, errors = predict_images(served.model, [str(f) for f in files], served.input_size, batch_size, tta)
    names = served.class_names
    frame = pd.DataFrame({"path": [str(f) for f in files],
                          "predicted": [names[int(np.argmax(p))] if not e else "" for p, e in zip(proba, errors)]})
    for j, name in enumerate(names):
        frame[f"p_{name}"] = np.round(proba[:, j], 6)
    frame["error"] = errors
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
    return PredictResult(frame, names, [(str(f), e) for f, e in zip(files, errors) if e])


# --- export ---------------------------------------------------------------------------------------------------

@dataclass
class ExportResult:
    out: Path
    format: str
    worst_difference: float
    tolerance: float
    images_checked: int
    files: list = field(default_factory=list)


def export(run: str | Path, fmt: str = "keras", out: str | Path | None = None, data: str | Path | None = None,
           sample: int = 16, overwrite: bool = False) -> ExportResult:
    """Write one self-contained model (raw RGB in, probabilities out) plus labels.json, after a parity check."""
    from .runs import _finish_dir

    if fmt not in FORMATS:
        raise InputError(f"--format should be one of {', '.join(FORMATS)}; received {fmt!r}")
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"run {run} does not exist; pass a directory made by train-head or fine-tune")
    out = Path(out) if out else run.with_name(f"{run.name}-{fmt}")
    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists; pass --overwrite to replace it or another --out")
    served = load_served(run)
    if served.kind == "keras":
        raise InputError(f"{run} is an export, not a run; export from the run directory it came from")
    pixels, reference, atol = _parity_reference(served, run, data, sample)

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        exported = _write_artifact(served.model, fmt, tmp)
        got = np.asarray(exported(pixels), np.float64)  # (n, C)
        worst = float(np.abs(got - reference).max())
        if not worst <= atol:  # also catches NaN
            raise BottleneckError(f"export parity check failed: the {fmt} model's probabilities differ from the "
                                  f"reference by up to {worst:.3g} (tolerance {atol}) on {len(pixels)} images of "
                                  f"{run}; nothing was written")
        cache = served.config["cache"]
        labels = {"class_names": served.class_names, "input_size": served.input_size,
                  "input": f"raw RGB float32 0..255, shape (batch, {served.input_size}, {served.input_size}, 3)",
                  "output": "softmax probabilities in class_names order",
                  "preprocessing": cache["config"]["preprocessing"] + " (inside the model)",
                  "backbone": cache["config"]["backbone"], "source_run": str(run.resolve()), "format": fmt,
                  "parity": {"images": len(pixels), "worst_difference": worst, "tolerance": atol,
                             "reference": "head on cached features" if served.kind == "head" else "model.keras"}}
        (tmp / "labels.json").write_text(json.dumps(labels, indent=2))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _finish_dir(tmp, out)
    return ExportResult(out, fmt, worst, atol, len(pixels), sorted(p.name for p in out.iterdir()))


def _parity_reference(served: ServedModel, run: Path, data, sample: int):
    """(pixels (n, S, S, 3) float32, reference probabilities (n, C), tolerance) for up to `sample` cached images."""
    from .cache import load_cache
    from .heads import predict_proba

    cache = served.config["cache"]
    path = Path(cache["path"])
    if not path.is_file():
        raise InputError(f"cache {path} of run {run} is missing; export needs cached images for its parity check")
    cached = load_cache(path)
    root = Path(data) if data else Path(cache["root"])
    rows = np.unique(np.linspace(0, len(cached.paths) - 1, min(sample, len(cached.paths))).astype(int))
    keep, pixels = [], []
    for r in rows:
        try:
            pixels.append(load_image(root / cached.paths[r], served.input_size)[0])
            keep.append(r)
        except ImageDecodeError:
            continue  # a moved or damaged image: check on the others
    if not keep:
        raise InputError(f"none of the {len(rows)} sample images of cache {path} could be read under {root}; "
                         "pass --data DIR with the images the cache was extracted from")
    x = np.stack(pixels).astype(np.float32)
    if served.kind == "head":
        head = served.model.layers[-1]  # the nested head Sequential
        return x, predict_proba(head, cached.features[keep]), HEAD_RUN_ATOL
    return x, np.asarray(served.model.predict(x, verbose=0), np.float64), FINETUNE_RUN_ATOL


def _write_artifact(model, fmt: str, tmp: Path):
    """Save `model` into `tmp` in `fmt`; return a function running the saved artifact, reloaded from disk."""
    tf = tensorflow()
    import keras

    if fmt == "keras":
        model.save(tmp / "model.keras")
        reloaded = keras.saving.load_model(tmp / "model.keras")
        return lambda x: reloaded.predict(x, verbose=0)
    saved = tmp if fmt == "savedmodel" else tmp / "_savedmodel"
    model.export(str(saved), format="tf_saved_model", verbose=False)
    if fmt == "savedmodel":
        loaded = tf.saved_model.load(str(saved))
        return lambda x: loaded.serve(tf.constant(x)).numpy()
    try:
        flat = tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert()
    except Exception as exc:  # the converter raises ConverterError, ValueError, RuntimeError, ...
        raise BottleneckError(f"the TFLite converter failed on this model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); export --format savedmodel and "
                              "convert it with a newer TensorFlow") from None
    shutil.rmtree(saved)
    (tmp / "model.tflite").write_bytes(flat)
    return lambda x: _run_tflite(tmp / "model.tflite", x)


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    tf = tensorflow()
    with warnings.catch_warnings():  # tf.lite.Interpreter warns that it moves to ai_edge_litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(outp["index"])
