"""`fine-tune`: a run's trained head reattached to its backbone and trained end to end from the images.

    run (head.keras, cache provenance, split.csv) -> backbone rebuilt exactly as extracted
    raw RGB (B, S, S, 3) float 0..255 -> preprocess layer -> backbone(training=False) -> head -> (B, C)
    top N layer groups unfrozen -> tf.data from images (augmented) -> early stopping on val -> run dir

The run directory is written like train-head's (hidden `.NAME.tmp`, renamed into place at the end), except
that an interrupted fine-tune keeps its temporary folder so that `--resume` can continue it.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .backbones import file_sha256
from .cache import CacheConfig, library_versions, load_cache
from .errors import CacheMismatchError, ImageDecodeError, InputError
from .images import load_image
from .serve import assemble_model, predict_images, read_run, rebuild_backbone, unfreeze
from .tfimport import tensorflow

OPTIMIZERS = ("rmsprop", "adam")
PROGRESS = "progress.json"  # in the temporary run folder: what --resume needs besides last.keras


@dataclass(frozen=True)
class FineTuneOptions:
    data: Path | None = None  # image root replacing the cache's recorded one
    unfreeze: int | str = 2  # top layer groups to train, or "all"
    lr: float = 1e-5
    epochs: int = 10
    patience: int = 3  # epochs without a better validation loss before stopping
    optimizer: str = "rmsprop"
    batch_size: int = 32
    out: Path | None = None  # default: RUN-finetune next to RUN
    resume: bool = False
    overwrite: bool = False
    mixed_precision: bool = False
    augment: bool = True
    seed: int = 0
    progress: bool = True

    def validate(self) -> FineTuneOptions:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer should be rmsprop or adam; received {self.optimizer!r}")
        if not self.lr > 0:
            raise InputError(f"--lr should be positive; received {self.lr}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} should be a positive integer; "
                                 f"received {getattr(self, name)}")
        parse_unfreeze(self.unfreeze)
        return self


def parse_unfreeze(value) -> int | str:
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise InputError(f"--unfreeze should be a number of layer groups (0, 1, 2, ...) or 'all'; received {value!r}")


# --- images ------------------------------------------------------------------------------------------------

def augment_image(x):
    """(S, S, 3) float 0..255 -> a random dihedral view (dermoscopy has no up) with small photometric jitter."""
    tf = tensorflow()
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, tf.random.uniform((), 0, 4, tf.int32))
    x = tf.image.random_brightness(x, 0.05 * 255)
    x = tf.image.random_contrast(x, 0.9, 1.1)
    return tf.clip_by_value(x, 0.0, 255.0)


def image_dataset(paths: list[str], labels: np.ndarray, weights: np.ndarray, size: int, batch_size: int,
                  failures: dict, *, augment: bool, shuffle: bool, seed: int = 0):
    """tf.data of (x (B,S,S,3) float32 0..255, y, sample weight). Unreadable images are dropped and recorded in
    `failures` (path -> reason). Pixels come from `load_image`, the decoder extraction used."""
    tf = tensorflow()

    def load(i):
        i = int(i)
        try:
            return load_image(paths[i], size)[0], True
        except ImageDecodeError as exc:
            failures[paths[i]] = str(exc)
            return np.zeros((size, size, 3), np.uint8), False

    def tf_load(i, y, w):
        pixels, ok = tf.numpy_function(load, [i], [tf.uint8, tf.bool], stateful=False)
        pixels.set_shape((size, size, 3))
        return tf.cast(pixels, tf.float32), y, w, ok

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), labels.astype(np.int32),
                                             weights.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(tf_load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle)
    def readable(x, y, w, ok):
        return ok

    def drop_flag(x, y, w, ok):
        return x, y, w

    def augmented(x, y, w):
        return augment_image(x), y, w

    ds = ds.filter(readable).map(drop_flag)
    if augment:
        ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- the run -------------------------------------------------------------------------------------------------

@dataclass
class FineTuneResult:
    run_dir: Path
    metrics: dict
    best_epoch: int
    epochs_run: int
    seconds: float
    failed: list = field(default_factory=list)  # {"path", "split", "reason", "stage"}


def _tracker(tmp: Path, state: dict, patience: int):
    """Early stopping on val loss, best model -> checkpoint.keras, last model + state -> last.keras/progress.json.
    One callback because the three are saved together: a resume must see a consistent state."""
    tensorflow()
    import keras

    class Tracker(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            if "val_loss" not in logs:
                raise InputError("no validation image could be read, so there is nothing to early-stop on; "
                                 "check the image root (--data)")
            for k, v in logs.items():
                state["history"].setdefault(k, []).append(float(v))
            if logs["val_loss"] < state["best"]:
                state.update(best=float(logs["val_loss"]), best_epoch=epoch + 1, wait=0)
                self.model.save(tmp / "checkpoint.keras")
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            state["stopped"] = state["wait"] >= patience
            self.model.stop_training = state["stopped"]
            self.model.save(tmp / "last.keras")
            (tmp / f"{PROGRESS}.new").write_text(json.dumps(state, indent=1))
            (tmp / f"{PROGRESS}.new").replace(tmp / PROGRESS)  # atomic: never a half-written state

    return Tracker()


def fine_tune(run: str | Path, opts: FineTuneOptions = FineTuneOptions(), command: list[str] | None = None):
    """Fine-tune the head run `run` end to end from its images; write a run directory and return a summary."""
    from .heads import class_weights
    from .splits import load_split

    opts.validate()
    run = Path(run)
    if not run.is_dir():
        raise InputError(f"run {run} does not exist; pass a directory made by `bottleneck train-head`")
    source = read_run(run)
    if not (run / "head.keras").is_file():
        raise InputError(f"{run} has no head.keras; fine-tune starts from a `bottleneck train-head` run")
    out = Path(opts.out) if opts.out else run.with_name(f"{run.name}-finetune")
    tmp = out.with_name(f".{out.name}.tmp")
    if out.exists() and not opts.overwrite:
        raise InputError(f"run directory {out} already exists; pass --overwrite to replace it or another --out")
    state = None
    if opts.resume:
        if not (tmp / PROGRESS).is_file() or not (tmp / "last.keras").is_file():
            raise InputError(f"nothing to resume: no interrupted fine-tune in {tmp}; run without --resume")
        state = json.loads((tmp / PROGRESS).read_text())
        if state["source_run"] != str(run.resolve()):
            raise InputError(f"{tmp} continues a fine-tune of {state['source_run']}, not of {run}; "
                             "pass that run or another --out")
        # The recorded options hold (the model already carries them); only the stopping limits may change.
        keep = ("data", "unfreeze", "lr", "optimizer", "batch_size", "augment", "seed", "mixed_precision")
        recorded = {k: state["options"][k] for k in keep}
        opts = replace(opts, **{**recorded, "data": Path(recorded["data"]) if recorded["data"] else None})
    cache_rec = source["cache"]
    cc, names = cache_rec["config"], cache_rec["class_names"]
    root = Path(opts.data) if opts.data else Path(cache_rec["root"])
    if not root.is_dir():
        raise InputError(f"image root {root} does not exist; pass --data DIR with the images the cache was "
                         "extracted from")
    data = _load_source_cache(cache_rec, run)
    split, _ = load_split(run, data.image_ids)
    y = data.labels
    rows = {s: np.flatnonzero((split == s) & (y >= 0)) for s in ("train", "val", "test")}
    for s in ("train", "val"):
        if not len(rows[s]):
            raise InputError(f"the split of {run} has no {s} images; fine-tune needs train and val")
    paths = np.array([str(root / p) for p in data.paths], dtype=object)

    tf = tensorflow()
    import keras

    gpus = tf.config.list_physical_devices("GPU")
    if opts.mixed_precision and not gpus:
        raise InputError("--mixed-precision needs a GPU and none is visible; drop the option (CPU trains float32)")
    # Several GPUs: one replica per GPU; otherwise the default (no-op) strategy.
    strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    policy = keras.mixed_precision.global_policy()
    keras.utils.set_random_seed(opts.seed)
    try:
        if opts.mixed_precision:  # layers take the policy at construction: set it only while building
            keras.mixed_precision.set_global_policy("mixed_float16")
        with strategy.scope():
            if state is None:
                head = keras.saving.load_model(run / "head.keras")
                backbone = rebuild_backbone(cc)
                model = assemble_model(cc, head, backbone)
                unfrozen = unfreeze(backbone, cc["backbone"], parse_unfreeze(opts.unfreeze))  # may refuse
                optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}[opts.optimizer]
                model.compile(optimizer=optimizer(learning_rate=opts.lr), loss="sparse_categorical_crossentropy",
                              weighted_metrics=["accuracy"])
            else:
                model = keras.saving.load_model(tmp / "last.keras")
                unfrozen = state["unfrozen"]
    finally:
        keras.mixed_precision.set_global_policy(policy)

    if state is None:
        tmp_parent = out.parent
        tmp_parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        opts_record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()}
        state = {"source_run": str(run.resolve()), "options": opts_record, "unfrozen": unfrozen, "epoch": 0,
                 "history": {}, "best": float("inf"), "best_epoch": 0, "wait": 0, "stopped": False,
                 "skipped_in_training": {}, "seconds": 0.0}
    try:
        size = int(cc["input_size"])
        cw = class_weights(y[rows["train"]], len(names), source["head"].get("class_weight", "balanced")) or {}
        weight = np.array([cw.get(int(c), 1.0) for c in y], np.float32)
        skipped: dict = dict(state["skipped_in_training"])

        def ds(s, train):
            r = rows[s]  # never the test rows: only train (fit) and val (early stopping) are read here
            return image_dataset(list(paths[r]), y[r], weight[r] if train else np.ones(len(r)), size,
                                 opts.batch_size, skipped, augment=train and opts.augment, shuffle=train,
                                 seed=opts.seed)

        start = time.perf_counter()
        if not state["stopped"] and state["epoch"] < opts.epochs:
            from .runs import _epoch_bar

            with warnings.catch_warnings():
                # Filtering unreadable images leaves the datasets' length unknown, so Keras finds each epoch's end
                # by running out of data and warns about it every time: expected here, not a problem.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(ds("train", True), validation_data=ds("val", False), epochs=opts.epochs,
                          initial_epoch=state["epoch"], verbose=0, shuffle=False,  # the dataset shuffles itself
                          callbacks=[_tracker(tmp, state, opts.patience), _epoch_bar(opts.epochs, opts.progress, "fine-tune")])
        state["seconds"] += time.perf_counter() - start
        state["skipped_in_training"] = skipped
        best = keras.saving.load_model(tmp / "checkpoint.keras")
        result = _evaluate_and_write(best, data, split, rows, paths, tmp, run, source, state, opts,
                                     command or ["bottleneck", "fine-tune", str(run)], out)
    except BaseException:
        if not (tmp / PROGRESS).is_file():  # nothing a resume could use
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    from .runs import _finish_dir

    _finish_dir(tmp, out)
    result.run_dir = out
    return result


def _load_source_cache(cache_rec: dict, run: Path):
    path = Path(cache_rec["path"])
    if not path.is_file():
        raise InputError(f"cache {path} of run {run} is missing; fine-tune needs it for the image list and labels")
    data = load_cache(path, features=False)
    diff = CacheConfig(**cache_rec["config"]).mismatch(data.config)
    if diff:
        raise CacheMismatchError(f"cache {path} no longer matches run {run}: {diff}; use the run's own cache")
    return data


def _evaluate_and_write(model, data, split, rows, paths, tmp: Path, run: Path, source: dict, state: dict,
                        opts: FineTuneOptions, command: list[str], out: Path) -> FineTuneResult:
    from .plots import plot_confusion, plot_curves
    from .runs import _evaluate_splits, _predictions_frame, _write_history

    names = source["cache"]["class_names"]
    size = int(source["cache"]["config"]["input_size"])
    y = data.labels
    all_rows = np.concatenate([rows[s] for s in ("train", "val", "test")])
    proba, errors = predict_images(model, list(paths[all_rows]), size, opts.batch_size)
    ok = np.array([not e for e in errors], bool)
    failed = [{"path": str(data.paths[r]), "split": str(split[r]), "reason": e, "stage": "evaluation"}
              for r, e in zip(all_rows, errors) if e]
    failed += [{"path": p, "split": "train/val", "reason": r, "stage": "training"}
               for p, r in state["skipped_in_training"].items()]
    good = all_rows[ok]
    metrics = _evaluate_splits(y[good], proba[ok], split[good], names, y[rows["train"]])
    if "test" not in metrics:
        raise InputError(f"no test image of {run} could be read for evaluation; check the image root (--data)")
    train_ok = np.isin(good, rows["train"])
    metrics["train"] = {"n": int(train_ok.sum()),
                        "accuracy": float((proba[ok][train_ok].argmax(1) == y[good][train_ok]).mean())}
    head_metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    metrics["head_only"] = {k: head_metrics[k] for k in ("val", "test") if k in head_metrics}

    shutil.copy(run / "split.csv", tmp / "split.csv")
    _write_history(tmp / "history.csv", state["history"])
    _predictions_frame(data, split, proba[ok], good, names).to_csv(tmp / "predictions.csv", index=False)
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    options = {k: v for k, v in state["options"].items() if k != "progress"}
    config = {"command": list(command), "kind": "finetune", "source_run": {"path": state["source_run"],
              "head_sha256": file_sha256(run / "head.keras"), "command": source.get("command")},
              "cache": {**source["cache"], "root": str(opts.data or source["cache"]["root"])},
              "head": source["head"], "split": source.get("split"), "options": {**options, "epochs": opts.epochs,
              "patience": opts.patience}, "unfrozen": state["unfrozen"], "best_epoch": state["best_epoch"],
              "epochs_run": state["epoch"], "train_seconds": round(state["seconds"], 3),
              "images": {s: int(len(rows[s])) for s in rows}, "failed": failed,
              "library_versions": library_versions(), "python": sys.version.split()[0],
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    plot_curves(state["history"], tmp / "curves.png")
    plot_confusion(metrics["test"]["confusion_matrix"], names, tmp / "confusion.png",
                   title=f"test split, {metrics['test']['n']} images (fine-tuned)")
    write_report(tmp / "report.md", config, metrics, out.name)
    model.save(tmp / "model.keras")
    for name in ("checkpoint.keras", "last.keras", PROGRESS):  # model.keras is the best checkpoint
        (tmp / name).unlink(missing_ok=True)
    return FineTuneResult(out, metrics, state["best_epoch"], state["epoch"], state["seconds"], failed)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_report(path: Path, config: dict, metrics: dict, name: str) -> None:
    """report.md: head only (the source run) against fine-tuned, on the same test split."""
    o, u = config["options"], config["unfrozen"]

    def row(label, m):
        mel = m.get("melanoma") or {}
        return (f"| {label} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['balanced_accuracy'])} | "
                f"{_fmt(m['roc_auc_macro'])} | {_fmt(mel.get('sensitivity'))} | {_fmt(mel.get('specificity'))} |")

    lines = [f"# Fine-tune run `{name}`", "",
             f"- source run: `{config['source_run']['path']}` (its head, its split)",
             f"- backbone: {config['cache']['config']['backbone']} at {config['cache']['config']['input_size']} px, "
             f"top {u['groups']} of {u['of']} layer groups trained, {u['frozen_batchnorm_layers']} BatchNorm layers "
             "kept frozen (inference mode)",
             f"- {o['optimizer']} lr {o['lr']}, batch {o['batch_size']}, augment {o['augment']}, early stopping on "
             f"val loss (patience {o['patience']}): best epoch {config['best_epoch']} of {config['epochs_run']}",
             "", "## Test split: head only against fine-tuned", "",
             "| model | n | accuracy | balanced acc | macro AUC | melanoma sens | melanoma spec |",
             "|---|---|---|---|---|---|---|"]
    if "test" in metrics.get("head_only", {}):
        lines.append(row("head only (cached features)", metrics["head_only"]["test"]))
    lines += [row("fine-tuned (from images)", metrics["test"]), ""]
    bad = [f for f in config["failed"] if f["split"] == "test"]
    if bad:
        lines += [f"{len(bad)} test images could not be read and are left out of the fine-tuned row.", ""]
    lines += ["![training curves](curves.png)", "", "![confusion matrix, test split](confusion.png)", "",
              f"Rerun: `{' '.join(config['command'])}`", ""]
    path.write_text("\n".join(lines))
