"""`fine-tune`: a run's trained head reattached to its backbone and trained end to end from the images.

    run (head.keras, cache provenance, split.csv) -> backbone rebuilt exactly as extracted (classifier.py)
    raw RGB (B, S, S, 3) float 0..255 -> preprocess layer -> backbone(training=False) -> head -> (B, C)
    top N layer groups unfrozen -> images (image_data.py, augmented) -> early stopping on val -> run dir

The run directory is staged like train-head's (hidden `.NAME.tmp`, renamed into place at the end), except
that an interrupted fine-tune keeps its staging folder so that `--resume` can continue it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backbones import check_precision, compute_policy, resolve_precision
from ..cache import CacheConfig, CacheData, library_versions, load_cache
from ..errors import BottleneckError, BottleneckWarning, CacheMismatchError, InputError
from ..heads import (
    OPTIMIZERS,
    SPLITS,
    ClassMap,
    class_weights,
    epoch_bar,
    load_split,
    make_optimizer,
    map_classes,
    recorded_map,
    run_class_names,
)
from ..images import training_batches
from ..runs import (
    check_free,
    load_head,
    load_keras,
    plot_confusion,
    plot_curves,
    predictions_frame,
    publish,
    read_config,
    restore_interrupted,
    staging_dir,
    write_finetune_report,
    write_history,
)
from ..stats import evaluate_splits
from ..util import keras_layers, read_json_object, sha256_file, tensorflow, write_json_atomic
from .classifier import assemble_model, predict_images, rebuild_backbone, unfreeze

PROGRESS = "progress.json"  # in the staging folder: the state --resume continues, naming its model files
PREVIOUS = "progress.prev.json"  # the state one epoch older, kept (with its files) until the newer one is whole
CHECKPOINTS = ("last-*.keras", "best-*.keras", ".*.part.keras", "last.keras", "checkpoint.keras")


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
    precision: str = "auto"  # compute precision of the backbone (precision.py); recorded resolved
    augment: bool = True
    seed: int = 0
    progress: bool = True
    class_map: ClassMap | None = None  # None: the head run's own (must give the head's classes when given)

    def validate(self) -> FineTuneOptions:
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"--optimizer should be one of {', '.join(OPTIMIZERS)}; received {self.optimizer!r}")
        if not self.lr > 0:
            raise InputError(f"--lr should be positive; received {self.lr}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} should be a positive integer; "
                                 f"received {getattr(self, name)}")
        parse_unfreeze(self.unfreeze)
        check_precision(self.precision)
        return self


def parse_unfreeze(value) -> int | str:
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise InputError(f"--unfreeze should be a number of layer groups (0, 1, 2, ...) or 'all'; received {value!r}")


def rerun_command(run: Path, opts: FineTuneOptions) -> list[str]:
    """The fine-tune command with its options spelled out, for config.json and the report."""
    command = ["bottleneck", "fine-tune", str(run), "--unfreeze", str(opts.unfreeze), "--lr", str(opts.lr),
               "--epochs", str(opts.epochs), "--patience", str(opts.patience), "--optimizer", opts.optimizer,
               "--batch-size", str(opts.batch_size), "--seed", str(opts.seed), "--precision", opts.precision,
               "--augment" if opts.augment else "--no-augment"]
    command += ["--class-map", opts.class_map.spec] if opts.class_map else []
    return command + ["--data", str(opts.data)] * bool(opts.data) + ["--out", str(opts.out)] * bool(opts.out)


@dataclass
class FineTuneResult:
    run_dir: Path
    metrics: dict
    best_epoch: int
    epochs_run: int
    seconds: float
    failed: list = field(default_factory=list)  # {"path", "split", "reason", "stage"}
    precision: str = "float32"  # what the backbone computed in


# --- the recipe --------------------------------------------------------------------------------------------------

def fine_tune(run: str | Path, opts: FineTuneOptions = FineTuneOptions(), callbacks=()) -> FineTuneResult:
    """Fine-tune the head run `run` end to end from its images; write a run directory and return a summary.

    `callbacks` are Keras callbacks added to the fit, after the one that saves each epoch (so a callback that
    stops or interrupts training leaves a state that `--resume` continues)."""
    job = FineTuneJob.open(Path(run), opts.validate())
    model = job.build_model()  # the head on its rebuilt backbone, top groups unfrozen; or the resumed model
    try:
        job.fit(model, callbacks)
        result = job.evaluate_and_write(load_keras(job.tmp / job.best_file()))
        publish(job.tmp, job.out)
    except OSError as exc:  # a full disk: the epochs saved so far stay resumable
        job.discard_unless_resumable()
        kept = (f"finished epochs are kept in {job.tmp}: free space and rerun with --resume" if job.resumable()
                else "nothing was kept")
        raise BottleneckError(f"writing fine-tune run {job.out} failed: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}; nothing older was lost, "
                              f"{kept}") from None
    except BaseException:
        job.discard_unless_resumable()
        raise
    return result


@dataclass
class FineTuneJob:
    """One fine-tune of one head run: where it reads and writes, its split, and its resumable state."""

    run: Path
    source: dict  # the head run's config.json
    opts: FineTuneOptions  # the recorded options when resuming
    command: list[str]
    out: Path
    tmp: Path  # the staging folder, kept while the job can be resumed
    state: dict | list | None  # progress.json: None until the first epoch starts (a new job); when resuming,
    # the saved states to try (progress.json, progress.prev.json) until build_model picks the first readable one
    data: CacheData  # rows only: the image list, labels and groups
    split: np.ndarray
    rows: dict  # split name -> labeled rows
    paths: np.ndarray  # absolute image path per cache row

    @classmethod
    def open(cls, run: Path, opts: FineTuneOptions) -> FineTuneJob:
        """Check the run, the output and the images before any model is built; load a resumable state."""
        restore_interrupted(run)  # a run left aside by a kill mid-publish
        if not run.is_dir():
            raise InputError(f"run {run} does not exist; pass a directory made by `bottleneck train-head`")
        command = rerun_command(run, opts)  # as asked, before a resume restores the recorded options
        out = Path(opts.out) if opts.out else run.with_name(f"{run.name}-finetune")
        source = read_config(run, check=True)
        if not (run / "head.keras").is_file():
            raise InputError(f"{run} has no head.keras; fine-tune starts from a `bottleneck train-head` run")
        check_free(out, opts.overwrite)
        tmp = staging_dir(out)
        state = None
        if opts.resume:
            state, opts = _resume_state(run, tmp, opts)  # a list of states to try, newest first
        cache_rec = source["cache"]
        root = Path(opts.data) if opts.data else Path(cache_rec["root"])
        if not root.is_dir():
            raise InputError(f"image root {root} does not exist; pass --data DIR with the images the cache was "
                             "extracted from")
        data = _load_source_cache(cache_rec, run)
        names = run_class_names(source)
        given = opts.class_map
        data = map_classes(data, given or recorded_map(source), names, strict=given is not None)
        split, _ = load_split(run, data.image_ids)
        rows = {s: np.flatnonzero((split == s) & (data.labels >= 0)) for s in SPLITS}
        for s in ("train", "val"):
            if not len(rows[s]):
                raise InputError(f"the split of {run} has no {s} images; fine-tune needs train and val")
        paths = np.array([str(root / p) for p in data.paths], dtype=object)
        return cls(run, source, opts, command, out, tmp, state, data, split, rows, paths)

    @property
    def provenance(self) -> CacheConfig:
        return CacheConfig(**self.source["cache"]["config"])

    @property
    def class_names(self) -> list[str]:
        return run_class_names(self.source)

    def build_model(self):
        """The compiled model: new (head + rebuilt backbone, unfrozen) or the last epoch's, when resuming."""
        tf = tensorflow()
        import keras  # after tensorflow(): its import is the slow, noisy part of start-up

        gpus = tf.config.list_physical_devices("GPU")
        self.opts = replace(self.opts, precision=resolve_precision(self.opts.precision, gpu=bool(gpus)))
        # Several GPUs: one replica per GPU; otherwise the default (no-op) strategy.
        strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
        keras.utils.set_random_seed(self.opts.seed)
        with compute_policy(self.opts.precision), strategy.scope():
            if self.state is not None:
                model = self._resumed_model()
                if model is not None:
                    return model
            backbone = rebuild_backbone(self.provenance, self.opts.precision)
            # The head as trained: a calibration fitted to the cached features' head does not hold for a
            # fine-tuned one, so it is taken out (the fine-tuned model reports uncalibrated probabilities).
            model = assemble_model(self.provenance, load_head(self.run, read_config(self.run), calibrate=False),
                                   backbone)
            unfrozen = unfreeze(backbone, self.provenance.backbone, parse_unfreeze(self.opts.unfreeze))  # may refuse
            model.compile(optimizer=make_optimizer(self.opts.optimizer, self.opts.lr),
                          loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
        self._start(unfrozen)
        return model

    def _resumed_model(self):
        """The last saved model of the newest saved state whose files can be read (an older one when a kill or a
        disk error damaged the newest), with one warning line per state passed over; None when none can be read:
        the job starts over."""
        for state in self.state:
            try:
                model = load_keras(self.tmp / state.get("last_file", "last.keras"))
            except InputError as exc:
                warnings.warn(f"cannot resume from epoch {state['epoch']}: {exc}; trying the previous checkpoint",
                              BottleneckWarning, stacklevel=2)
                continue
            best = state.get("best_file", "checkpoint.keras")
            if state["best_epoch"] and not (best and _readable(self.tmp / best)):
                warnings.warn(f"the best checkpoint {best} (epoch {state['best_epoch']}) cannot be read; the best "
                              f"of the epochs from {state['epoch'] + 1} on is kept instead", BottleneckWarning,
                              stacklevel=2)
                state.update(best=float("inf"), best_epoch=0, best_file=None)
            self.state = state
            return model
        warnings.warn(f"no readable checkpoint in {self.tmp}: starting this fine-tune over from epoch 0",
                      BottleneckWarning, stacklevel=2)
        self.state = None
        return None

    def best_file(self) -> str:
        """The best epoch's model file (the last one when no epoch since a resume had a best-known loss)."""
        return self.state.get("best_file") or self.state.get("last_file", "checkpoint.keras")

    def _start(self, unfrozen: dict) -> None:
        """A fresh staging folder and the state of a job at epoch 0."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        opts_record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.opts).items()}
        self.state = {"source_run": str(self.run.resolve()), "options": opts_record, "unfrozen": unfrozen,
                      "epoch": 0, "history": {}, "best": float("inf"), "best_epoch": 0, "wait": 0, "stopped": False,
                      "skipped_in_training": {}, "seconds": 0.0}

    def fit(self, model, callbacks=()) -> None:
        """Train on the train split, early-stop on val, saving every epoch; the test split is never read."""
        opts, state, y = self.opts, self.state, self.data.labels
        size = self.provenance.input_size
        cw = class_weights(y[self.rows["train"]], len(self.class_names),
                           self.source["head"].get("class_weight", "balanced")) or {}
        weight = np.array([cw.get(int(c), 1.0) for c in y], np.float32)
        skipped: dict = dict(state["skipped_in_training"])

        def batches(s, train):
            r = self.rows[s]
            return training_batches(list(self.paths[r]), y[r], weight[r] if train else np.ones(len(r)), size,
                                    opts.batch_size, skipped, augment=train and opts.augment, shuffle=train,
                                    seed=opts.seed)

        start = time.perf_counter()
        if not state["stopped"] and state["epoch"] < opts.epochs:
            with warnings.catch_warnings():
                # Filtering unreadable images leaves the datasets' length unknown, so Keras finds each epoch's end
                # by running out of data and warns about it every time: expected here, not a problem.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(batches("train", True), validation_data=batches("val", False), epochs=opts.epochs,
                          initial_epoch=state["epoch"], verbose=0, shuffle=False,  # the dataset shuffles itself
                          callbacks=[_tracker(self.tmp, state, opts.patience), *callbacks,
                                     epoch_bar(opts.epochs, opts.progress, "fine-tune")])
        state["seconds"] += time.perf_counter() - start
        state["skipped_in_training"] = skipped

    def evaluate_and_write(self, model) -> FineTuneResult:
        """The best checkpoint on every split from the images, against the head alone; the run's artifacts."""
        opts, state, tmp, run = self.opts, self.state, self.tmp, self.run
        data, split, rows, names = self.data, self.split, self.rows, self.class_names
        y = data.labels
        all_rows = np.concatenate([rows[s] for s in SPLITS])
        proba, errors = predict_images(model, list(self.paths[all_rows]), self.provenance.input_size,
                                       opts.batch_size)
        ok = np.array([not e for e in errors], bool)
        failed = [{"path": str(data.paths[r]), "split": str(split[r]), "reason": e, "stage": "evaluation"}
                  for r, e in zip(all_rows, errors) if e]
        failed += [{"path": p, "split": "train/val", "reason": r, "stage": "training"}
                   for p, r in state["skipped_in_training"].items()]
        good = all_rows[ok]
        metrics = evaluate_splits(y[good], proba[ok], split[good], names, y[rows["train"]])
        if "test" not in metrics:
            raise InputError(f"no test image of {run} could be read for evaluation; check the image root (--data)")
        train_ok = np.isin(good, rows["train"])
        metrics["train"] = {"n": int(train_ok.sum()),
                            "accuracy": float((proba[ok][train_ok].argmax(1) == y[good][train_ok]).mean())}
        head_metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        metrics["head_only"] = {k: head_metrics[k] for k in ("val", "test") if k in head_metrics}

        shutil.copy(run / "split.csv", tmp / "split.csv")
        write_history(tmp / "history.csv", state["history"])
        predictions_frame(data, split, proba[ok], good, names).to_csv(tmp / "predictions.csv", index=False)
        write_json_atomic(tmp / "metrics.json", metrics)
        config = self._config(failed)
        write_json_atomic(tmp / "config.json", config)
        plot_curves(state["history"], tmp / "curves.png")
        plot_confusion(metrics["test"]["confusion_matrix"], names, tmp / "confusion.png",
                       title=f"test split, {metrics['test']['n']} images (fine-tuned)")
        write_finetune_report(tmp / "report.md", config, metrics, self.out.name)
        model.save(tmp / "model.keras")
        for pattern in (*CHECKPOINTS, PROGRESS, PREVIOUS):  # model.keras is the best checkpoint
            for path in tmp.glob(pattern):
                path.unlink(missing_ok=True)
        return FineTuneResult(self.out, metrics, state["best_epoch"], state["epoch"], state["seconds"], failed,
                              opts.precision)

    def _config(self, failed: list) -> dict:
        """config.json of the fine-tune run: its source, options and outcome."""
        source, state, opts = self.source, self.state, self.opts
        options = {k: v for k, v in state["options"].items() if k != "progress"}
        return {"command": list(self.command), "kind": "finetune",
                "source_run": {"path": state["source_run"], "head_sha256": sha256_file(self.run / "head.keras"),
                               "command": source.get("command")},
                "cache": {**source["cache"], "root": str(opts.data or source["cache"]["root"])},
                "class_names": self.class_names, "class_map": self.data.class_map,
                "head": source["head"], "split": source.get("split"),
                "options": {**options, "epochs": opts.epochs, "patience": opts.patience},
                "unfrozen": state["unfrozen"], "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
                "train_seconds": round(state["seconds"], 3), "images": {s: int(len(r)) for s, r in self.rows.items()},
                "failed": failed, "library_versions": library_versions(), "python": sys.version.split()[0],
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    def resumable(self) -> bool:
        return (self.tmp / PROGRESS).is_file() or (self.tmp / PREVIOUS).is_file()

    def discard_unless_resumable(self) -> None:
        if not self.resumable():  # nothing a resume could use
            shutil.rmtree(self.tmp, ignore_errors=True)


# --- pieces of the job ---------------------------------------------------------------------------------------

def _resume_state(run: Path, tmp: Path, opts: FineTuneOptions) -> tuple[list[dict], FineTuneOptions]:
    """The saved states of an interrupted fine-tune, newest first (build_model resumes from the first whose model
    file reads), and the recorded options (only the stopping limits may change on a resume: the model already
    carries the rest)."""
    states = []
    for name in (PROGRESS, PREVIOUS):
        if (tmp / name).is_file():
            try:
                state = read_json_object(tmp / name, "it is passed over")
            except InputError:
                state = {}
            if {"source_run", "options", "epoch", "best_epoch"} <= set(state):
                states.append(state)
                continue
            warnings.warn(f"{tmp / name} is damaged; it is passed over", BottleneckWarning, stacklevel=2)
    if not states:
        raise InputError(f"nothing to resume: no interrupted fine-tune in {tmp}; run without --resume")
    state = states[0]
    if state["source_run"] != str(run.resolve()):
        raise InputError(f"{tmp} continues a fine-tune of {state['source_run']}, not of {run}; "
                         "pass that run or another --out")
    keep = ("data", "unfreeze", "lr", "optimizer", "batch_size", "augment", "seed", "precision")
    recorded = {k: state["options"][k] for k in keep if k in state["options"]}
    data = recorded.get("data")
    return states, replace(opts, **{**recorded, "data": Path(data) if data else None})


def _readable(path: Path) -> bool:
    """A .keras file whose archive opens (checked without building the model)."""
    try:
        keras_layers(path)
    except InputError:
        return False
    return True


def _save_model(model, path: Path) -> None:
    """Save under a temporary name in the same folder, then rename: a kill mid-save leaves the older files whole."""
    part = path.with_name(f".{path.stem}.part.keras")
    model.save(part)
    os.replace(part, path)


def _load_source_cache(cache_rec: dict, run: Path) -> CacheData:
    path = Path(cache_rec["path"])
    if not path.is_file():
        raise InputError(f"cache {path} of run {run} is missing; fine-tune needs it for the image list and labels")
    data = load_cache(path, features=False)
    diff = CacheConfig(**cache_rec["config"]).mismatch(data.config)
    if diff:
        raise CacheMismatchError(f"cache {path} no longer matches run {run}: {diff}; use the run's own cache")
    return data


def _tracker(tmp: Path, state: dict, patience: int):
    """Early stopping on val loss, best model -> best-NNNN.keras, last model -> last-NNNN.keras, and the state naming
    both -> progress.json, written last: the commit of an epoch. The previous state and its files are kept until the
    next epoch commits (progress.prev.json), so a kill or a damaged file at any moment leaves a state to resume.
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
                state.update(best=float(logs["val_loss"]), best_epoch=epoch + 1, wait=0,
                             best_file=f"best-{epoch + 1:04d}.keras")
                _save_model(self.model, tmp / state["best_file"])
            else:
                state["wait"] += 1
            state["epoch"] = epoch + 1
            state["stopped"] = state["wait"] >= patience
            self.model.stop_training = state["stopped"]
            state["last_file"] = f"last-{epoch + 1:04d}.keras"
            _save_model(self.model, tmp / state["last_file"])
            if (tmp / PROGRESS).is_file():
                os.replace(tmp / PROGRESS, tmp / PREVIOUS)
            write_json_atomic(tmp / PROGRESS, state, indent=1)  # never a half-written state
            _prune(tmp)

    return Tracker()


def _prune(tmp: Path) -> None:
    """Remove model files that neither progress.json nor progress.prev.json names."""
    named = set()
    for name in (PROGRESS, PREVIOUS):
        try:
            state = json.loads((tmp / name).read_text())
            named |= {state.get("last_file"), state.get("best_file")}
        except (OSError, ValueError, AttributeError):
            continue
    for pattern in CHECKPOINTS[:2]:
        for path in tmp.glob(pattern):
            if path.name not in named:
                path.unlink(missing_ok=True)
