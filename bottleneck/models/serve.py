"""Serving a run: `predict` (class probabilities of image files) and `export` (one self-contained model).

    head run:      backbone rebuilt from the cache provenance + head.keras  \\
                                                                              -> (B, S, S, 3) float 0..255 -> (B, C)
    fine-tune run: model.keras                                             /

The model is assembled by `classifier.py`, the module fine-tune uses too; images are decoded by the pipeline
extraction used, so a cached image gets the same pixels here.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backbones import resolve_precision
from ..cache import CacheConfig, load_cache
from ..errors import BottleneckError, BottleneckWarning, ImageDecodeError, InputError
from ..heads import fold_calibration, predict_proba, run_class_names
from ..images import load_image
from ..runs import check_free, load_head, load_keras, read_config, restore_interrupted, staged
from ..stats import Calibration, DecisionRule, decide
from ..util import (
    input_size_of,
    native_stderr_quiet,
    read_json_object,
    tensorflow,
    walk_files,
    write_csv,
    write_json_atomic,
)
from .classifier import assemble_model, predict_images, set_precision

FORMATS = ("keras", "savedmodel", "tflite")
# Probabilities of the exported model against the reference. A head run's reference is the head on the cached
# features, stored as float16 (relative error ~5e-4 per feature), hence the loose bound; a fine-tune run's is
# its own model.keras on the same float32 pixels, where only conversion (SavedModel/TFLite) can differ.
HEAD_RUN_ATOL = 2e-2
FINETUNE_RUN_ATOL = 1e-3


@dataclass
class ServedModel:
    model: object  # keras.Model: raw RGB (B, S, S, 3) float 0..255 -> probabilities (B, C)
    class_names: list[str]
    input_size: int
    config: dict  # the run's config.json, or labels.json beside a bare .keras file
    kind: str  # "head" | "finetune" | "keras"


def load_served(model_or_run: str | Path, calibrate: bool = True) -> ServedModel:
    """A head run, a fine-tune run, or a .keras file with labels.json (an export) beside it. calibrate=False: the
    model's own probabilities, the calibration folded into a run's (head or fine-tune) or an export's last layer
    taken out."""
    p = Path(model_or_run)
    if not p.exists():
        raise InputError(f"{p} does not exist; pass a run directory (train-head or fine-tune) or an exported "
                         ".keras model")
    if p.is_file():
        if p.suffix != ".keras":
            raise InputError(f"{p}: expected a run directory or a .keras model (as `bottleneck export --format "
                             "keras` writes)")
        served = _load_keras_file(p)
        calibration = Calibration.from_record(served.config.get("calibration"))
        if calibration is not None and not calibrate:
            fold_calibration(served.model, calibration, undo=True)
        return served
    if (p / "labels.json").is_file() and (p / "model.keras").is_file() and not (p / "config.json").is_file():
        return load_served(p / "model.keras", calibrate)
    config = read_config(p, check=True)
    provenance = CacheConfig(**config["cache"]["config"])
    size, names = provenance.input_size, run_class_names(config)
    if (p / "model.keras").is_file():  # a fine-tune run: its calibration (config.json's, as a head run's) folded in
        model = load_keras(p / "model.keras")
        calibration = Calibration.from_record(config.get("calibration"))
        if calibration is not None and not calibrate:
            fold_calibration(model, calibration, undo=True)
        return ServedModel(model, names, size, config, "finetune")
    if (p / "head.keras").is_file():
        return ServedModel(assemble_model(provenance, load_head(p, config, calibrate, keras=True)), names, size,
                           config, "head")
    raise InputError(f"{p} holds neither model.keras (fine-tune run) nor head.keras (train-head run)")


def _load_keras_file(p: Path) -> ServedModel:
    """A bare .keras model: its class names and input size from labels.json beside it (an export), else class
    indices as names and the size of the model's input, with a note."""
    labels = p.parent / "labels.json"
    if labels.is_file():
        fix = f"restore {labels.name} from the export, or delete it to predict with class indices as names"
        info = read_json_object(labels, fix)
        names, size = info.get("class_names"), info.get("input_size")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise InputError(f"{labels}: key 'class_names' is missing, empty or not a list of class names; {fix}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InputError(f"{labels}: key 'input_size' is {size!r}, not a positive whole number; {fix}")
        model = load_keras(p)
        if model.output_shape[-1] != len(names):
            raise InputError(f"{labels} names {len(names)} classes but {p} outputs {model.output_shape[-1]}; {fix}")
        return ServedModel(model, names, size, info, "keras")
    model = load_keras(p)
    size = input_size_of(model)
    names = [str(i) for i in range(int(model.output_shape[-1]))]
    warnings.warn(f"no labels.json beside {p}: classes are named by index ({', '.join(names)}) and images are "
                  f"resized to the model's input, {size}x{size}", BottleneckWarning, stacklevel=2)
    return ServedModel(model, names, size, {"class_names": names, "input_size": size}, "keras")


def collect_files(inputs: list[str | Path]) -> list[Path]:
    """Files given, plus every non-hidden file under folders given (recursively; symlinks followed, each file
    once, loops cut): non-images are listed as failures by the decoder rather than silently passed over."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():  # links followed wherever they lead (the folder is the user's choice, not an index root)
            files.extend(walk_files(item, follow_symlinks=True))
        elif item.is_file():
            files.append(item)
        else:
            raise InputError(f"{item} does not exist; pass image files or folders of images")
    if not files:
        raise InputError(f"no files found in {', '.join(map(str, inputs))}; pass image files or folders of images")
    return list(dict.fromkeys(files))


@dataclass
class PredictResult:
    frame: object  # pandas DataFrame: path, predicted, decision_rule, most_probable, p_<class>..., error
    class_names: list[str]
    failed: list = field(default_factory=list)  # (path, reason)
    precision: str = "float32"  # what the backbone computed in, or "as saved" (a model from elsewhere)
    rule: dict | None = None  # clinical.DecisionRule.record(): calibration, decision weights, operating point


def predict(model_or_run: str | Path, inputs: list[str | Path], out: str | Path | None = None,
            batch_size: int = 32, tta: bool = False, precision: str = "auto", calibrate: bool = True,
            progress: bool = True) -> PredictResult:
    """Class probabilities of raw image files; unreadable files get an error and no probabilities. The backbone
    computes in `precision` (`auto`: the fastest native one here, see precision.py).

    The run's decision rule applies (clinical.DecisionRule): calibrated probabilities and their decision weights
    (calibrate=False: the head's own, argmax), named in column `decision_rule` beside `most_probable` (the argmax of
    the p_ columns), and its operating point: columns `<positive>_threshold` and
    `<positive>_at_threshold` (whether the image is flagged)."""
    import pandas as pd  # 0.5 s of import: kept off the start-up of every other command

    if batch_size < 1:
        raise InputError(f"--batch-size should be a positive integer; received {batch_size}")
    files = collect_files(inputs)
    requested, precision = precision, resolve_precision(precision)
    served = load_served(model_or_run, calibrate)
    rule = DecisionRule.of(served.config, calibrate)
    model, precision = set_precision(served.model, precision, required=requested != "auto")
    proba, errors = predict_images(model, [str(f) for f in files], served.input_size, batch_size, tta,
                                   progress)
    names = served.class_names
    chosen = decide(proba, rule.decision_weights)
    frame = pd.DataFrame({"path": [str(f) for f in files],
                          "predicted": [names[int(k)] if not e else "" for k, e in zip(chosen, errors)],
                          "decision_rule": rule.rule,  # as predictions.csv: the rule that chose `predicted`
                          "most_probable": [names[int(k)] if not e else "" for k, e in zip(decide(proba), errors)]})
    for j, name in enumerate(names):
        frame[f"p_{name}"] = np.asarray(proba[:, j], dtype=np.float64)  # unrounded, as predictions.csv
    if rule.threshold is not None and rule.positive in names:
        score = proba[:, names.index(rule.positive)]
        frame[f"{rule.positive}_threshold"] = rule.threshold
        frame[f"{rule.positive}_at_threshold"] = ["" if e else bool(v >= rule.threshold)
                                                  for v, e in zip(score, errors)]
    frame["error"] = errors
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_csv(out, frame)  # the returned frame keeps the values unescaped
    return PredictResult(frame, names, [(str(f), e) for f, e in zip(files, errors) if e], precision, rule.record())


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
           sample: int = 16, overwrite: bool = False, calibrate: bool = True) -> ExportResult:
    """Write one self-contained model (raw RGB in, probabilities out) plus labels.json, after a parity check.
    The run's calibration stays folded in (calibrate=False takes it out); labels.json says which, and carries
    the decision weights and the operating point that go with the exported probabilities."""
    if fmt not in FORMATS:
        raise InputError(f"--format should be one of {', '.join(FORMATS)}; received {fmt!r}")
    run = Path(run)
    restore_interrupted(run)  # a run left aside by a kill mid-publish
    if not run.is_dir():
        raise InputError(f"run {run} does not exist; pass a directory made by train-head or fine-tune")
    out = Path(out) if out else run.with_name(f"{run.name}-{fmt}")
    check_free(out, overwrite, what="")
    served = load_served(run, calibrate)
    rule = DecisionRule.of(served.config, calibrate)
    if served.kind == "keras":
        raise InputError(f"{run} is an export, not a run; export from the run directory it came from")
    pixels, reference, atol = _parity_reference(served, run, data, sample)

    with staged(out, overwrite, what="") as tmp:
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
                  "output": "softmax probabilities in class_names order"
                            + (", calibrated" if rule.calibrated else ""),
                  # the run's own record: applied, or skipped and why, with its check on validation
                  "calibration": (served.config["calibration"] if rule.calibrated else
                                  {"applied": False, "reason": "exported with --no-calibrate"} if rule.calibration
                                  else served.config.get("calibration") or {"applied": False,
                                                                            "reason": "the run has none"}),
                  "decision": "argmax of probabilities x decision_weights" if rule.decision_weights else "argmax",
                  "decision_rule": rule.rule, "decision_rule_text": rule.describe(),  # DecisionRule.of reads it back
                  "operating_point": {"positive": rule.positive, "threshold": rule.threshold},
                  "class_map": served.config.get("class_map"),  # how class_names were made of the cache's
                  "preprocessing": cache["config"]["preprocessing"] + " (inside the model)",
                  "backbone": cache["config"]["backbone"], "source_run": str(run.resolve()), "format": fmt,
                  "parity": {"images": len(pixels), "worst_difference": worst, "tolerance": atol,
                             "reference": "head on cached features" if served.kind == "head" else "model.keras"}}
        write_json_atomic(tmp / "labels.json", labels)
    return ExportResult(out, fmt, worst, atol, len(pixels), sorted(p.name for p in out.iterdir()))


def _parity_reference(served: ServedModel, run: Path, data, sample: int):
    """(pixels (n, S, S, 3) float32, reference probabilities (n, C), tolerance) for up to `sample` cached images."""
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
    except Exception as exc:  # noqa: BLE001 -- the converter raises ConverterError, ValueError, RuntimeError, ...
        raise BottleneckError(f"the TFLite converter failed on this model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); export --format savedmodel and "
                              "convert it with a newer TensorFlow") from None
    shutil.rmtree(saved)
    (tmp / "model.tflite").write_bytes(flat)
    return lambda x: _run_tflite(tmp / "model.tflite", x)


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    tf = tensorflow()
    # TensorFlow Lite's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to fd 2
    with warnings.catch_warnings(), native_stderr_quiet():  # and tf.lite.Interpreter warns of ai_edge_litert
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_path=str(path))
        inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        interpreter.resize_tensor_input(inp["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x.astype(np.float32))
        interpreter.invoke()
    return interpreter.get_tensor(outp["index"])
