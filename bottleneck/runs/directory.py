"""A run directory (`runs/<name>/`): written whole or not at all, read back, and the artifacts all runs share.

Every command that writes a directory of results (train-head, sweep's best, evaluate, fine-tune, export)
writes into a hidden staging folder beside the target (`.NAME.tmp`) and renames it into place at the end,
so a failed or interrupted command never leaves half a run and never damages an older one.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np

from ..cache import CacheConfig, CacheData
from ..errors import BottleneckError, InputError
from ..heads import fold_calibration, read_dense_head, recorded_map
from ..stats import Calibration, decide, log_of
from ..util import check_split_file, keras_layers, read_json_object, sha256_file, tensorflow, write_csv


def check_free(out: Path, overwrite: bool, what: str = "run directory") -> None:
    """Refuse to replace an existing directory unless asked: checked before any work, so nothing is touched."""
    if out.exists() and not overwrite:
        raise InputError(f"{what + ' ' if what else ''}{out} already exists; pass --overwrite to replace it or "
                         "another --out")


def staging_dir(out: Path) -> Path:
    """The hidden folder a run is written into before it is renamed to `out`."""
    return out.with_name(f".{out.name}.tmp")


def restore_interrupted(out: Path) -> None:
    """Put back an older `out` that a process killed between `publish`'s two renames left as `.NAME.old`."""
    old = out.with_name(f".{out.name}.old")
    if old.is_dir() and not out.exists():
        old.rename(out)


def stage(out: Path, overwrite: bool, what: str = "run directory") -> Path:
    """A fresh, empty staging folder for `out` (a leftover from a crashed run is discarded)."""
    restore_interrupted(out)
    check_free(out, overwrite, what)
    tmp = staging_dir(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished staging folder to `out`, replacing an older run only once the new one is whole."""
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)  # the older run back in place before the error leaves
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_failed(out: Path, exc: OSError, what: str = "run directory") -> BottleneckError:
    """One line for an OSError while a staged directory was written (a full disk, a read-only folder): what
    failed, and that nothing older was lost (the staging folder is removed; an older `out` was never touched)."""
    where = f" ({exc.filename})" if exc.filename else ""
    kept = f"{out} is as it was before" if out.exists() else f"nothing was written to {out}"
    return BottleneckError(f"writing {what + ' ' if what else ''}{out} failed: {exc.strerror or exc}{where}; "
                           f"{kept} and nothing older was lost; free space or choose another --out and rerun")


@contextmanager
def staged(out: Path, overwrite: bool, what: str = "run directory") -> Iterator[Path]:
    """`with staged(out, overwrite) as tmp:` write into tmp; published on success, removed on any error. An OSError
    (a full disk) becomes one BottleneckError line that says nothing older was lost."""
    try:
        tmp = stage(out, overwrite, what)
    except OSError as exc:
        shutil.rmtree(staging_dir(out), ignore_errors=True)
        raise write_failed(out, exc, what) from None
    try:
        yield tmp
        publish(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_failed(out, exc, what) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- reading a run ----------------------------------------------------------------------------------------------

RUN_FIX = "the run directory is damaged: train it again (`bottleneck train-head ... --out DIR`)"


def check_run_config(config: dict, path: Path, fix: str) -> None:
    """The keys of a run's config.json that predict, evaluate, export and fine-tune use: the cache it was trained
    on (path, provenance, classes), the run's classes and, for a head run, its head options."""
    def refuse(field: str, what: str):
        raise InputError(f"{path}: {field} {what}; {fix}")

    cache = config.get("cache")
    if not isinstance(cache, dict):
        refuse("key 'cache'", "is missing or not an object")
    for key in ("path", "root"):
        if not isinstance(cache.get(key), str):
            refuse(f"key 'cache.{key}'", "is missing or not text")
    provenance = cache.get("config")
    if not isinstance(provenance, dict):
        refuse("key 'cache.config'", "is missing or not an object")
    try:
        provenance = CacheConfig(**provenance)
    except TypeError as exc:
        refuse("key 'cache.config'", f"does not describe a cache configuration ({exc})")
    if not isinstance(provenance.input_size, int) or provenance.input_size < 1:
        refuse("key 'cache.config.input_size'", f"is {provenance.input_size!r}, not a positive whole number")
    names = config.get("class_names") or cache.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        refuse("key 'class_names'", "is missing, empty or not a list of class names")
    if not isinstance(config.get("head", {}), dict):
        refuse("key 'head'", "is not an object")
    recorded_map(config, f"{path}: key 'class_map'")  # rebuilt from its structure, or refused in one line


def read_config(run: Path, check: bool = False) -> dict:
    """config.json of a train-head or fine-tune run, refused in one line when it is not JSON or (`check`) lacks
    the keys that predict, evaluate, export and fine-tune use."""
    run = Path(run)
    restore_interrupted(run)
    if not (run / "config.json").is_file():
        raise InputError(f"{run} is not a run directory (no config.json there); pass a directory made by "
                         "`bottleneck train-head` or `bottleneck fine-tune`")
    config = read_json_object(run / "config.json", RUN_FIX)
    if check:
        check_run_config(config, run / "config.json", RUN_FIX)
    return config


def load_keras(path: Path):
    """A saved Keras model, in Keras' safe mode; a damaged file or one holding a Lambda layer (arbitrary Python
    code, which safe mode blocks) is refused in one line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist; restore it or rerun the command that wrote it")
    if "Lambda" in keras_layers(path):
        raise InputError(f"{path} holds a Lambda layer (arbitrary Python code) and will not be loaded; use a model "
                         "made by bottleneck (train-head, fine-tune or export), whose layers are all built-in")
    tensorflow()
    import keras  # after tensorflow(): its import is the slow, noisy part of start-up

    try:
        return keras.saving.load_model(path)
    except Exception as exc:  # noqa: BLE001 -- Keras raises ValueError, TypeError, KeyError, OSError... for a damaged archive
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise InputError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {first}); restore it or "
                         "rerun the command that wrote it") from None


def load_head(run_dir: Path, config: dict, calibrate: bool = True, keras: bool = False):
    """head.keras of a run; calibrate=False takes out the calibration folded into it (--no-calibrate).

    By default a DenseHead (heads/dense.py: the head applied with numpy, no TensorFlow imported), or the Keras model
    where numpy cannot reproduce the file; `predict_log_proba` and `fold_calibration` take either.
    keras=True: always the Keras model (fine-tune and predict put it on a backbone)."""
    path = Path(run_dir) / "head.keras"
    head = None if keras else read_dense_head(path)
    if head is None:
        head = load_keras(path)
    calibration = Calibration.from_record(config.get("calibration"))
    if calibration is not None and not calibrate:
        fold_calibration(head, calibration, undo=True)
    return head


def load_run(run_dir: str | Path, calibrate: bool = True, keras: bool = False) -> tuple[dict, object]:
    """(config.json, the head) of a train-head run, its config.json, split.csv and head.keras checked.
    calibrate=False: the head as trained, without the calibration folded into head.keras. The head is a DenseHead
    (numpy) unless `keras` or numpy cannot read it (`load_head`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "head.keras").is_file():
        raise InputError(f"{run_dir} is not a train-head run (no config.json / head.keras there)")
    config = read_config(run_dir, check=True)
    if (run_dir / "split.csv").is_file():
        check_split_file(run_dir / "split.csv", RUN_FIX)
    return config, load_head(run_dir, config, calibrate, keras)


# --- artifacts --------------------------------------------------------------------------------------------------

def write_history(path: Path, history: dict) -> None:
    """history.csv: one row per epoch, 1-based, with every logged quantity."""
    import pandas as pd  # 0.5 s of import: only commands that write runs pay it

    df = pd.DataFrame(history)
    df.insert(0, "epoch", np.arange(1, len(df) + 1))
    write_csv(path, df)


def predictions_frame(data: CacheData, split: np.ndarray, proba: np.ndarray, rows: np.ndarray, class_names,
                      decision_weights=None, log_proba: np.ndarray | None = None, rule: str | None = None):
    """predictions.csv's rows: image id, path, group, split, true class, the predicted class and the rule that chose
    it, the most probable class, then p_<class> and logp_<class> per class.

    predicted: `metrics.decide(proba, decision_weights)`, the rule the metrics use (`rule`: its name, balanced or
    most-probable; default: balanced with decision weights, else most-probable); most_probable: the argmax of the
    p_ columns. logp_<class>: the float64 log-probabilities (`log_proba`, else the log of `proba`) that every AUC
    and ROC curve ranks (`stats.ovr_scores`): a p_ near 1 is written as 1 where its logp_ still tells it apart.

    `write_predictions` writes it through `util.write_csv` (no float_format): pandas then writes each number at full
    precision (the shortest text that reads back to the same float64: read it with float_precision="round_trip"),
    and a text cell a spreadsheet would run as a formula (`=...`, `-...`) gets a leading `'` (docs/cli.md)."""
    import pandas as pd

    labels = data.labels[rows]
    proba = np.asarray(proba, dtype=np.float64)
    log_p = log_of(proba) if log_proba is None else np.asarray(log_proba, dtype=np.float64)
    rule = rule or ("balanced" if decision_weights is not None and len(decision_weights) else "most-probable")
    df = pd.DataFrame({"image_id": data.image_ids[rows], "path": data.paths[rows], "group": data.groups[rows],
                       "split": split[rows],
                       "true": [class_names[i] if i >= 0 else "" for i in labels],
                       "predicted": [class_names[i] for i in decide(proba, decision_weights)],
                       "decision_rule": rule,
                       "most_probable": [class_names[i] for i in decide(proba)]})
    for j, name in enumerate(class_names):
        # Unrounded (float64, written as the shortest text that reads back to the same number): the metrics of
        # metrics.json recompute exactly from this file; 6 decimals made ties that moved the AUCs.
        df[f"p_{name}"] = proba[:, j]
    for j, name in enumerate(class_names):
        df[f"logp_{name}"] = log_p[:, j]
    return df


def write_predictions(path: Path, data: CacheData, split: np.ndarray, proba: np.ndarray, rows: np.ndarray,
                      class_names, decision_weights=None, log_proba: np.ndarray | None = None,
                      rule: str | None = None) -> None:
    """predictions.csv of train-head, evaluate and fine-tune: `predictions_frame` through `write_csv`."""
    write_csv(path, predictions_frame(data, split, proba, rows, class_names, decision_weights, log_proba, rule))


def cache_record(data: CacheData) -> dict:
    """The cache a run was trained on, as config.json records it: enough to find, check and rebuild it."""
    return {"path": str(data.path.resolve()), "sha256": sha256_file(data.path), "config": asdict(data.config),
            "rows": int(len(data.labels)),
            # the cache's own classes; a run's (mapped) classes are config.json's top-level "class_names"
            "class_names": data.class_map["source_classes"] if data.class_map else data.class_names,
            "dataset": data.attrs.get("dataset", ""), "root": data.attrs.get("root", "")}
