"""Fine-tune's resume protocol: the staging folder's model files and the `Progress` that names them.

    .OUT.tmp/best-NNNN.keras      the best epoch so far (validation loss)
    .OUT.tmp/last-NNNN.keras      the last epoch, optimizer state included
    .OUT.tmp/progress.json        the state naming both, written last: the commit of an epoch
    .OUT.tmp/progress.prev.json   the state one epoch older, kept (with its files) until the newer one is whole

So a kill or a damaged file at any moment leaves a state to resume from. `--resume` reloads the newest state whose
files can be read. The options recorded at the start are handed back as data (`Progress.options`, a dict): which
of them a resume keeps is fine-tune's business (finetune.py), not this module's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BottleneckWarning, InputError
from ..runs import load_keras
from ..util import keras_layers, read_json_object, tensorflow, write_json_atomic

PROGRESS = "progress.json"  # in the staging folder: the state --resume continues, naming its model files
PREVIOUS = "progress.prev.json"  # the state one epoch older, kept (with its files) until the newer one is whole
CHECKPOINTS = ("last-*.keras", "best-*.keras", ".*.part.keras", "last.keras", "checkpoint.keras")
REQUIRED = {"source_run", "options", "epoch", "best_epoch"}  # a progress.json without them is damaged
# Before the model files were numbered, progress.json named none: they were last.keras and checkpoint.keras.
LEGACY_LAST, LEGACY_BEST = "last.keras", "checkpoint.keras"


@dataclass
class Progress:
    """Where an interrupted fine-tune stands: progress.json, updated at the end of every epoch."""

    source_run: str  # the head run, resolved: a resume of another run's fine-tune is refused
    options: dict  # the fine-tune's options as recorded at the start (JSON)
    unfrozen: dict  # what `unfreeze` trained
    epoch: int = 0  # epochs finished
    history: dict = field(default_factory=dict)  # Keras logs per epoch: loss, accuracy, val_loss, ...
    best: float = math.inf  # the best validation loss so far
    best_epoch: int = 0  # 1-based; 0: none yet
    wait: int = 0  # epochs since the best one
    stopped: bool = False  # early stopping ended the training
    skipped_in_training: dict = field(default_factory=dict)  # unreadable image path -> reason
    seconds: float = 0.0  # training time over every session of the job
    best_file: str | None = None  # the best epoch's model file; None: no epoch had a best-known loss
    last_file: str | None = None  # the last epoch's model file

    def to_json(self) -> dict:
        """progress.json, keys in the order it has always had; `best_file` once there is one. Strict JSON: `best`
        before any finite loss, and the losses of a diverged epoch, are null (`from_json` reads them back)."""
        state = asdict(self)
        state["best"] = self.best if math.isfinite(self.best) else None
        state["history"] = {k: [v if math.isfinite(v) else None for v in vals] for k, vals in self.history.items()}
        if state["best_file"] is None:
            del state["best_file"]
        if state["last_file"] is None:
            del state["last_file"]
        return state

    @classmethod
    def from_json(cls, state: dict) -> Progress:
        known = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        if "best" in known:
            known["best"] = math.inf if known["best"] is None else known["best"]
        if "history" in known:
            known["history"] = {k: [math.nan if v is None else v for v in vals] for k, vals in known["history"].items()}
        if "last_file" not in state:  # written before the model files were named in it
            known["last_file"] = LEGACY_LAST
            known.setdefault("best_file", LEGACY_BEST if state["best_epoch"] else None)
        return cls(**{"unfrozen": {}, **known})

    @property
    def best_model(self) -> str:
        """The best epoch's model file (the last one when no epoch since a resume had a best-known loss)."""
        return self.best_file or self.last_file or LEGACY_BEST


def saved_states(run: Path, tmp: Path) -> list[Progress]:
    """The saved states of an interrupted fine-tune of `run` in `tmp`, newest first (`resume_model` takes the first
    whose model file reads); damaged ones are passed over with a warning."""
    states = []
    for name in (PROGRESS, PREVIOUS):
        if (tmp / name).is_file():
            try:
                state = read_json_object(tmp / name, "it is passed over")
            except InputError:
                state = {}
            if REQUIRED <= set(state):
                states.append(Progress.from_json(state))
                continue
            warnings.warn(f"{tmp / name} is damaged; it is passed over", BottleneckWarning, stacklevel=2)
    if not states:
        raise InputError(f"nothing to resume: no interrupted fine-tune in {tmp}; run without --resume")
    if states[0].source_run != str(run.resolve()):
        raise InputError(f"{tmp} continues a fine-tune of {states[0].source_run}, not of {run}; "
                         "pass that run or another --out")
    return states


def resume_model(tmp: Path, states: list[Progress]):
    """(model, state): the last saved model of the newest state whose files can be read (an older one when a kill or
    a disk error damaged the newest), with one warning line per state passed over; None when none can be read: the
    job starts over."""
    for state in states:
        try:
            model = load_keras(tmp / state.last_file)
        except InputError as exc:
            warnings.warn(f"cannot resume from epoch {state.epoch}: {exc}; trying the previous checkpoint",
                          BottleneckWarning, stacklevel=2)
            continue
        if state.best_epoch and not (state.best_file and _readable(tmp / state.best_file)):
            warnings.warn(f"the best checkpoint {state.best_file} (epoch {state.best_epoch}) cannot be read; the "
                          f"best of the epochs from {state.epoch + 1} on is kept instead", BottleneckWarning,
                          stacklevel=2)
            state.best, state.best_epoch, state.best_file = math.inf, 0, None
        return model, state
    warnings.warn(f"no readable checkpoint in {tmp}: starting this fine-tune over from epoch 0",
                  BottleneckWarning, stacklevel=2)
    return None


def fresh_staging(tmp: Path) -> None:
    """An empty staging folder for a job at epoch 0 (whatever an older attempt left there is removed)."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()


def resumable(tmp: Path) -> bool:
    return (tmp / PROGRESS).is_file() or (tmp / PREVIOUS).is_file()


def discard_unless_resumable(tmp: Path) -> None:
    if not resumable(tmp):  # nothing a resume could use
        shutil.rmtree(tmp, ignore_errors=True)


def clear(tmp: Path) -> None:
    """Remove the checkpoints and states of a finished job (its model is saved apart, as model.keras)."""
    for pattern in (*CHECKPOINTS, PROGRESS, PREVIOUS):
        for path in tmp.glob(pattern):
            path.unlink(missing_ok=True)


def tracker(tmp: Path, state: Progress, patience: int):
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
                state.history.setdefault(k, []).append(float(v))
            if logs["val_loss"] < state.best:
                state.best, state.best_epoch, state.wait = float(logs["val_loss"]), epoch + 1, 0
                state.best_file = f"best-{epoch + 1:04d}.keras"
                _save_model(self.model, tmp / state.best_file)
            else:
                state.wait += 1
            state.epoch = epoch + 1
            state.stopped = state.wait >= patience
            self.model.stop_training = state.stopped
            state.last_file = f"last-{epoch + 1:04d}.keras"
            _save_model(self.model, tmp / state.last_file)
            if (tmp / PROGRESS).is_file():
                os.replace(tmp / PROGRESS, tmp / PREVIOUS)
            write_json_atomic(tmp / PROGRESS, state.to_json(), indent=1)  # never a half-written state
            _prune(tmp)

    return Tracker()


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
