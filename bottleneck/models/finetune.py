"""`fine-tune`: a run's trained head reattached to its backbone and trained end to end from the images.

    run (head.keras, cache provenance, split.csv) -> backbone rebuilt exactly as extracted (classifier.py)
    raw RGB (B, S, S, 3) float 0..255 -> preprocess layer -> backbone(training=False) -> head -> (B, C)
    top N layer groups unfrozen -> images (image_data.py, augmented) -> early stopping on val -> run dir

The run directory is staged like train-head's (hidden `.NAME.tmp`, renamed into place at the end), except
that an interrupted fine-tune keeps its staging folder so that `--resume` can continue it (the checkpoints and the
state naming them: checkpoints.py). The options are FineTuneOptions, each declared once in FINETUNE_OPTIONS.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backbones import check_precision, compute_policy, resolve_precision
from ..cache import CacheConfig, CacheData, library_versions, load_cache
from ..errors import BottleneckError, CacheMismatchError, InputError
from ..heads import (
    OPTIMIZERS,
    SPLITS,
    ClassMap,
    class_weights,
    load_split,
    make_optimizer,
    map_classes,
    recorded_map,
    run_class_names,
    step_bar,
)
from ..images import training_batches
from ..runs import (
    check_free,
    load_head,
    load_keras,
    paired_with_head,
    plot_curves,
    publish,
    read_config,
    restore_interrupted,
    staging_dir,
    write_finetune_report,
    write_history,
    write_predictions,
)
from ..stats import limitations
from ..util import (
    Option,
    Options,
    finite_or_null,
    one_of,
    positive,
    positive_int,
    sha256_file,
    tensorflow,
    write_json_atomic,
)
from .checkpoints import (
    Progress,
    clear,
    discard_unless_resumable,
    fresh_staging,
    resumable,
    resume_model,
    saved_states,
    tracker,
)
from .classifier import assemble_model, rebuild_backbone, unfreeze
from .finetune_eval import TunedScores, copied_test_files, score_images, write_figures

PRECISION_HELP = ("Backbone compute precision: auto (the fastest native here: bfloat16 on CPUs with AVX512-BF16/AMX, "
                  "float16 on GPUs, else float32), float32, bfloat16 or float16.")
UNFREEZE_PROBLEM = "should be a number of layer groups (0, 1, 2, ...) or 'all'"
# What a resume keeps of the options recorded at the start: the model already carries them. Only the stopping
# limits (--epochs, --patience) may change.
RESUME_KEEPS = ("data", "unfreeze", "lr", "optimizer", "batch_size", "augment", "seed", "precision")
# The order config.json's rerun command has always spelled the options in (then --class-map, --data, --out).
RERUN_ORDER = ("unfreeze", "lr", "epochs", "patience", "optimizer", "batch_size", "seed", "precision", "augment")


@dataclass(frozen=True)
class FineTuneOptions:
    """A fine-tune's options; the defaults are here, everything else about each option is in FINETUNE_OPTIONS."""

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
        return FINETUNE_OPTIONS.validate(self)


def parse_unfreeze(value) -> int | str:
    text = str(value).strip().lower()
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    raise InputError(f"--unfreeze {UNFREEZE_PROBLEM}; received {value!r}")


def _unfreeze_problem(value) -> str | None:
    try:
        parse_unfreeze(value)
    except InputError:
        return UNFREEZE_PROBLEM
    return None


def _precision_problem(value) -> None:
    check_precision(value)  # refuses in its own words


# The options of the fine-tune command, in its order, each declared once (util/options.py).
FINETUNE_OPTIONS = Options(FineTuneOptions, [
    Option("data", "Image root replacing the one recorded in the cache.", type=Path),
    Option("unfreeze", "Top layer groups of the backbone to train, or 'all'.", type=str, parse=parse_unfreeze,
           check=_unfreeze_problem),
    Option("lr", "Learning rate (low: the backbone is pretrained).", check=positive),
    Option("epochs", "Maximum epochs (early stopping on validation loss).", check=positive_int),
    Option("patience", "Epochs without validation-loss improvement before stopping.", check=positive_int),
    Option("optimizer", "rmsprop, adam or sgd.", check=one_of(OPTIMIZERS)),
    Option("batch_size", "Images per training batch.", check=positive_int),
    Option("augment", "Random flips, 90-degree rotations, brightness/contrast jitter."),
    Option("seed", "Seed of shuffling and augmentation."),
    Option("out", "Run directory (default: RUN-finetune next to RUN).", type=Path),
    Option("resume", "Continue an interrupted fine-tune into the same --out."),
    Option("precision", PRECISION_HELP, check=_precision_problem),
    Option("overwrite", "Replace an existing run directory."),
])


def rerun_command(run: Path, opts: FineTuneOptions) -> list[str]:
    """The fine-tune command with its options spelled out, for config.json and the report."""
    command = ["bottleneck", "fine-tune", str(run), *FINETUNE_OPTIONS.argv(opts, RERUN_ORDER)]
    command += ["--class-map", opts.class_map.argument] if opts.class_map else []
    return command + FINETUNE_OPTIONS.argv(opts, ("data", "out"))


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
        result = job.evaluate_and_write(load_keras(job.tmp / job.state.best_model))
        publish(job.tmp, job.out)
    except OSError as exc:  # a full disk: the epochs saved so far stay resumable
        discard_unless_resumable(job.tmp)
        kept = (f"finished epochs are kept in {job.tmp}: free space and rerun with --resume" if resumable(job.tmp)
                else "nothing was kept")
        raise BottleneckError(f"writing fine-tune run {job.out} failed: {exc.strerror or exc}"
                              f"{f' ({exc.filename})' if exc.filename else ''}; nothing older was lost, "
                              f"{kept}") from None
    except BaseException:
        discard_unless_resumable(job.tmp)
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
    saved: list[Progress]  # the saved states a resume tries, newest first; [] for a new job
    images: JobImages
    state: Progress | None = None  # set by build_model: the resumed state, or a new one at epoch 0

    @classmethod
    def open(cls, run: Path, opts: FineTuneOptions) -> FineTuneJob:
        """Check the run, the output and the images before any model is built; load the states to resume from."""
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
        saved = saved_states(run, tmp) if opts.resume else []
        if saved:
            recorded = {k: saved[0].options[k] for k in RESUME_KEEPS if k in saved[0].options}
            opts = replace(opts, **{**recorded, "data": Path(recorded["data"]) if recorded.get("data") else None})
        return cls(run, source, opts, command, out, tmp, saved, JobImages.load(run, source, opts))

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
            resumed = resume_model(self.tmp, self.saved) if self.saved else None
            if resumed is not None:
                model, self.state = resumed
                return model
            backbone = rebuild_backbone(self.provenance, self.opts.precision)
            # The head as trained: a calibration fitted to the cached features' head does not hold for a
            # fine-tuned one, so it is taken out (the fine-tuned model reports uncalibrated probabilities).
            head = load_head(self.run, read_config(self.run), calibrate=False, keras=True)
            model = assemble_model(self.provenance, head, backbone)
            unfrozen = unfreeze(backbone, self.provenance.backbone, parse_unfreeze(self.opts.unfreeze))  # may refuse
            model.compile(optimizer=make_optimizer(self.opts.optimizer, self.opts.lr),
                          loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"])
        fresh_staging(self.tmp)
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.opts).items()}
        self.state = Progress(str(self.run.resolve()), record, unfrozen)
        return model

    def fit(self, model, callbacks=()) -> None:
        """Train on the train split, early-stop on val, saving every epoch; the test split is never read."""
        opts, state, images = self.opts, self.state, self.images
        y, size = images.data.labels, self.provenance.input_size
        cw = class_weights(y[images.rows["train"]], len(self.class_names),
                           self.source["head"].get("class_weight", "balanced")) or {}
        weight = np.array([cw.get(int(c), 1.0) for c in y], np.float32)
        skipped: dict = dict(state.skipped_in_training)

        def batches(s, train):
            r = images.rows[s]
            return training_batches(list(images.paths[r]), y[r], weight[r] if train else np.ones(len(r)), size,
                                    opts.batch_size, skipped, augment=train and opts.augment, shuffle=train,
                                    seed=opts.seed)

        start = time.perf_counter()
        if not state.stopped and state.epoch < opts.epochs:
            with warnings.catch_warnings():
                # Filtering unreadable images leaves the datasets' length unknown, so Keras finds each epoch's end
                # by running out of data and warns about it every time: expected here, not a problem.
                warnings.filterwarnings("ignore", message="Your input ran out of data")
                model.fit(batches("train", True), validation_data=batches("val", False), epochs=opts.epochs,
                          initial_epoch=state.epoch, verbose=0, shuffle=False,  # the dataset shuffles itself
                          callbacks=[tracker(self.tmp, state, opts.patience), *callbacks,
                                     step_bar(opts.epochs, len(images.rows["train"]), opts.batch_size,
                                              state.epoch, opts.progress, "fine-tune")])
        state.seconds += time.perf_counter() - start
        state.skipped_in_training = skipped

    def evaluate_and_write(self, model) -> FineTuneResult:
        """The best checkpoint on every split from the images, calibrated on val and scored as a head run is
        (finetune_eval.py), against the head alone; the run's artifacts."""
        tmp, state, images, names = self.tmp, self.state, self.images, self.class_names
        scored = score_images(model, images, names, self.provenance.input_size, self.opts.batch_size, self.run,
                              self.source, self.opts.progress)  # calibration folded into `model`
        metrics = scored.metrics
        failed = scored.failed + [{"path": p, "split": "train/val", "reason": r, "stage": "training"}
                                  for p, r in state.skipped_in_training.items()]
        shutil.copy(self.run / "split.csv", tmp / "split.csv")
        write_history(tmp / "history.csv", state.history)
        write_predictions(tmp / "predictions.csv", images.data, images.split, scored.proba, scored.rows, names,
                          scored.rule.decision_weights, scored.log_proba, scored.rule.rule)
        config = _run_config(self, failed, scored)
        write_json_atomic(tmp / "config.json", config)
        metrics["paired_with_head"] = paired_with_head(self.run, tmp, self.out.name,
                                                       int(self.source["head"].get("seed", 0)))
        write_json_atomic(tmp / "metrics.json", finite_or_null(metrics))  # undefined figures: null
        plot_curves(state.history, tmp / "curves.png")
        write_figures(tmp, images, names, scored)
        write_finetune_report(tmp / "report.md", config, metrics, self.out.name,
                              limitations(config, metrics, copied_test_files(images)))
        model.save(tmp / "model.keras")
        clear(tmp)  # model.keras is the best checkpoint
        return FineTuneResult(self.out, metrics, state.best_epoch, state.epoch, state.seconds, failed,
                              self.opts.precision)


# --- pieces of the job ---------------------------------------------------------------------------------------

@dataclass
class JobImages:
    """The images of a fine-tune: the source cache's rows (no features), the run's split, the labeled rows of each
    split and each row's image file."""

    data: CacheData  # rows only: the image list, labels and groups
    split: np.ndarray
    rows: dict  # split name -> labeled rows
    paths: np.ndarray  # absolute image path per cache row

    @classmethod
    def load(cls, run: Path, source: dict, opts: FineTuneOptions) -> JobImages:
        cache_rec = source["cache"]
        root = Path(opts.data) if opts.data else Path(cache_rec["root"])
        if not root.is_dir():
            raise InputError(f"image root {root} does not exist; pass --data DIR with the images the cache was "
                             "extracted from")
        data = _load_source_cache(cache_rec, run)
        given = opts.class_map
        data = map_classes(data, given or recorded_map(source), run_class_names(source), strict=given is not None)
        split, _ = load_split(run, data.image_ids)
        rows = {s: np.flatnonzero((split == s) & (data.labels >= 0)) for s in SPLITS}
        for s in ("train", "val"):
            if not len(rows[s]):
                raise InputError(f"the split of {run} has no {s} images; fine-tune needs train and val")
        return cls(data, split, rows, np.array([str(root / p) for p in data.paths], dtype=object))


def _run_config(job: FineTuneJob, failed: list, scored: TunedScores) -> dict:
    """config.json of the fine-tune run: its source, options and outcome, and (as a head run's) its calibration,
    decision rule and operating point, which predict and export apply (`stats.DecisionRule.of`)."""
    source, state, opts = job.source, job.state, job.opts
    options = {k: v for k, v in state.options.items() if k != "progress"}
    return {"command": list(job.command), "kind": "finetune",
            "source_run": {"path": state.source_run, "head_sha256": sha256_file(job.run / "head.keras"),
                           "command": source.get("command")},
            "cache": {**source["cache"], "root": str(opts.data or source["cache"]["root"])},
            "class_names": job.class_names, "class_map": job.images.data.class_map,
            "head": source["head"], "split": {**(source.get("split") or {}), "sizes": scored.sizes},
            "options": {**options, "epochs": opts.epochs, "patience": opts.patience},
            "unfrozen": state.unfrozen, "best_epoch": state.best_epoch, "epochs_run": state.epoch,
            "train_seconds": round(state.seconds, 3),
            "images": {s: int(len(r)) for s, r in job.images.rows.items()},
            "calibration": {k: v for k, v in scored.metrics["calibration"].items() if k != "test"},
            "decision_rule": scored.rule.rule,
            "operating_point": {k: scored.metrics["operating_point"].get(k) for k in
                                ("positive", "threshold", "threshold_uncalibrated", "target_sensitivity", "chosen_on")},
            "failed": failed, "library_versions": library_versions(), "python": sys.version.split()[0],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _load_source_cache(cache_rec: dict, run: Path) -> CacheData:
    path = Path(cache_rec["path"])
    if not path.is_file():
        raise InputError(f"cache {path} of run {run} is missing; fine-tune needs it for the image list and labels")
    data = load_cache(path, features=False)
    diff = CacheConfig(**cache_rec["config"]).mismatch(data.config)
    if diff:
        raise CacheMismatchError(f"cache {path} no longer matches run {run}: {diff}; use the run's own cache")
    return data
