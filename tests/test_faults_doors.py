"""Faults at the doors (issue 14): damaged caches, run directories and models are refused in one line before use,
no traceback ever reaches the user, TensorFlow's start-up lines stay hidden, a bare .keras model predicts without
labels.json, and a fine-tune whose checkpoint was damaged still resumes. Every case runs the real CLI on real files
and checks that the file refused is left exactly as it was."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import OPTS, copy_run, feature_cache, file_digest, run_cli


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(result) -> str:
    """The CLI failed with exit 1 and said so in exactly one `error: ...` line, without a traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


# --- damaged caches ----------------------------------------------------------------------------------------------

CACHE_DAMAGE = {
    "class_names not JSON": (lambda f: f.attrs.__setitem__("class_names", "not json["), "class_names"),
    "n_rows missing": (lambda f: f.attrs.__delitem__("n_rows"), "n_rows is missing"),
    "label dataset missing": (lambda f: f.__delitem__("label"), "dataset 'label' is missing"),
    "n_rows negative": (lambda f: f.attrs.__setitem__("n_rows", -5), "n_rows is -5"),
    "schema_version not a number": (lambda f: f.attrs.__setitem__("schema_version", "abc"), "schema_version is 'abc'"),
    "label past the class list": (lambda f: f["label"].__setitem__(0, 7), "class index 7, outside the 3 classes"),
    "empty class list": (lambda f: f.attrs.__setitem__("class_names", "[]"), "outside the 0 classes"),
    "n_rows past the rows": (lambda f: f.attrs.__setitem__("n_rows", 10_000), "says 10000 are committed"),
    "num_features wrong": (lambda f: f.attrs.__setitem__("num_features", 99), "num_features"),
}


@pytest.mark.parametrize("case", sorted(CACHE_DAMAGE))
def test_a_damaged_cache_is_refused_in_one_line_by_info_and_train_head(tmp_path, case):
    damage, expected = CACHE_DAMAGE[case]
    path = feature_cache(tmp_path / "c.h5", counts={"bcc": 8, "mel": 8, "nv": 8}, dim=8)
    with h5py.File(path, "a") as f:
        damage(f)
    before = file_digest(path)
    for args in (["info", path], ["train-head", path, "--out", tmp_path / "run", "-q"]):
        line = one_error_line(run_cli(*args))
        assert str(path) in line and expected in line and "extract its images again" in line, line
    assert file_digest(path) == before and not (tmp_path / "run").exists()
    assert not list(tmp_path.glob(".run*"))


def test_an_unlabeled_cache_with_no_classes_is_still_valid(tmp_path):
    path = feature_cache(tmp_path / "c.h5", counts={"a": 4}, dim=8)
    with h5py.File(path, "a") as f:  # what extracting a flat folder of images writes: no classes, labels -1
        f.attrs["class_names"] = "[]"
        f["label"][:] = -1
    r = run_cli("info", path)
    assert r.exit_code == 0, r.output


# --- damaged run directories and models ------------------------------------------------------------------------

@pytest.fixture
def run_copy(ham_run, tmp_path):
    """A copy of the session's head run, to damage."""
    return Path(shutil.copytree(ham_run["run"], tmp_path / "run"))


def an_image(ham_run) -> Path:
    return sorted(Path(ham_run["root"]).rglob("*.jpg"))[0]


RUN_DAMAGE = {
    "config.json not JSON": ("config.json", b"{oops", "config.json is not valid JSON"),
    "config.json empty object": ("config.json", b"{}", "key 'cache' is missing"),
    "config.json a list": ("config.json", b"[1, 2]", "holds a JSON list, not an object"),
    "head.keras not Keras": ("head.keras", b"garbage", "head.keras is not a readable Keras model"),
    "head.keras empty": ("head.keras", b"", "head.keras is not a readable Keras model"),
    "split.csv binary": ("split.csv", b"\x00\xff\xfe junk\n", "split.csv is not a text split manifest"),
    "split.csv empty": ("split.csv", b"", "split.csv is not a split manifest"),
}


@pytest.mark.parametrize("case", sorted(RUN_DAMAGE))
def test_a_damaged_run_directory_is_refused_in_one_line(ham_run, run_copy, tmp_path, case):
    name, content, expected = RUN_DAMAGE[case]
    (run_copy / name).write_bytes(content)
    before, cache_before = tree_digest(run_copy), file_digest(ham_run["cache"])
    commands = [["evaluate", run_copy]]
    if name != "split.csv":  # predict needs no split
        commands.append(["predict", run_copy, an_image(ham_run), "--out", tmp_path / "p.csv"])
    if name != "head.keras" and content != b"{}":  # --split-from reads the split and the config's class map only
        commands.append(["train-head", ham_run["cache"], "--split-from", run_copy, "--out", tmp_path / "new", "-q"])
    for args in commands:
        line = one_error_line(run_cli(*args))
        assert expected in line and "run" in line, (args[0], line)
    assert tree_digest(run_copy) == before and file_digest(ham_run["cache"]) == cache_before
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "new").exists()


def lambda_model(inputs: int, classes: int):
    import keras

    x = keras.Input((inputs,))
    return keras.Model(x, keras.layers.Dense(classes, activation="softmax")(keras.layers.Lambda(lambda t: t * 1.0)(x)))


def test_a_model_with_a_lambda_layer_is_not_loaded(ham_run, run_copy, tmp_path):
    config = json.loads((run_copy / "config.json").read_text())
    lambda_model(config["cache"]["config"]["num_features"], 3).save(run_copy / "head.keras")
    export = tmp_path / "export"
    export.mkdir()
    import keras

    x = keras.Input((32, 32, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda t: t / 255.0)(x))
    keras.Model(x, keras.layers.Dense(3, activation="softmax")(pooled)).save(export / "model.keras")
    (export / "labels.json").write_text(json.dumps({"class_names": ["bkl", "mel", "nv"], "input_size": 32}))
    before = tree_digest(tmp_path)
    for args in (["evaluate", run_copy], ["predict", run_copy, an_image(ham_run), "--out", tmp_path / "p.csv"],
                 ["predict", export / "model.keras", an_image(ham_run), "--out", tmp_path / "p.csv"]):
        line = one_error_line(run_cli(*args))
        assert "holds a Lambda layer (arbitrary Python code) and will not be loaded" in line, line
    assert tree_digest(tmp_path) == before


def test_predict_with_a_bare_keras_model_names_classes_by_index(ham_run, tmp_path):
    import keras

    x = keras.Input((24, 24, 3))
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    model.save(tmp_path / "model.keras")
    r = run_cli("predict", tmp_path / "model.keras", an_image(ham_run), "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    assert "warning: no labels.json beside" in r.output and "24x24" in r.output
    frame = pd.read_csv(tmp_path / "p.csv", dtype={"predicted": str})
    assert [c for c in frame.columns if c.startswith("p_")] == ["p_0", "p_1", "p_2"]
    assert frame["predicted"].iloc[0] in {"0", "1", "2"}
    (tmp_path / "labels.json").write_text('{"class_names": ["a"], "input_size": 24}')  # damaged: 1 name, 3 outputs
    line = one_error_line(run_cli("predict", tmp_path / "model.keras", an_image(ham_run), "--out", tmp_path / "q.csv"))
    assert "names 1 classes but" in line and not (tmp_path / "q.csv").exists()


# --- no traceback reaches the user -----------------------------------------------------------------------------

def test_an_unexpected_exception_is_one_line_and_a_log_file(tmp_path, monkeypatch):
    import bottleneck.cli.cache as cli_cache

    def broken(path):
        raise ZeroDivisionError("boom\nsecond line")

    monkeypatch.setattr(cli_cache, "describe_cache", broken)
    monkeypatch.setenv("BOTTLENECK_LOG_DIR", str(tmp_path / "logs"))
    line = one_error_line(run_cli("info", tmp_path / "c.h5"))
    assert line.startswith("error: ZeroDivisionError: boom (full traceback in ")
    log = Path(line.split("full traceback in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError: boom" in text and "def broken" not in text and "broken" in text

    # No writable log folder anywhere but the temporary one: still one line, exit 1.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("BOTTLENECK_LOG_DIR", str(tmp_path / "file" / "logs"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "file"))
    line = one_error_line(run_cli("info", tmp_path / "c.h5"))
    assert "full traceback in " in line and str(tmp_path / "file") not in line
    # ... and none at all: says so, still one line
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path / "file"))
    line = one_error_line(run_cli("info", tmp_path / "c.h5"))
    assert "the traceback could not be saved" in line


def test_usage_errors_still_exit_2(tmp_path):
    r = run_cli("train-head", tmp_path / "c.h5", "--epochs", "many")
    assert r.exit_code == 2


def test_a_full_disk_while_writing_a_run_loses_nothing(tmp_path, synth_run):
    cache, out = synth_run["cache"], copy_run(synth_run["run"], tmp_path)  # a run, and the cache it was made from
    before = tree_digest(out)
    # A real OSError from a real write: files may not grow past 64 KiB (EFBIG, as ENOSPC would), so head.keras of a
    # 512-wide head (~1 MB) cannot be written. Python ignores SIGXFSZ, so the write raises instead of killing.
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        r = run_cli("train-head", cache, "--out", out, "--hidden", "512", "--epochs", 1, "--overwrite", "-q")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    line = one_error_line(r)
    assert f"writing run directory {out} failed" in line and "nothing older was lost" in line, line
    assert tree_digest(out) == before
    assert not list(tmp_path.glob(".run*"))  # no staging folder left


# --- TensorFlow stays quiet ---------------------------------------------------------------------------------------

TF_NOISE = ("oneDNN", "cuda", "absl", "This TensorFlow binary", "cpu_feature_guard", "I0000", "E0000", "W0000")


@pytest.mark.slow  # two fresh processes, each importing TensorFlow (~15 s): `make test-slow`
def test_tensorflow_start_up_lines_never_reach_the_terminal(ham_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "BOTTLENECK_VERBOSE")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "0"  # a shell that asks TensorFlow for everything: still quiet without --verbose
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])

    def start(out, *extra):
        args = [sys.executable, "-m", "bottleneck", *extra, "predict", str(ham_run["run"]), str(an_image(ham_run)),
                "--out", str(tmp_path / out)]
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    def finish(proc):
        _, err = proc.communicate(timeout=300)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)

    # Both at once: each is mostly a TensorFlow start-up, one core each.
    # The control, `--verbose`: the same command shows the lines when asked.
    quiet_proc, loud_proc = start("p.csv"), start("q.csv", "--verbose")
    quiet, loud = finish(quiet_proc), finish(loud_proc)
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in TF_NOISE)], quiet.stderr
    assert loud.returncode == 0, loud.stderr
    assert any(n in loud.stderr for n in TF_NOISE), loud.stderr


# --- fine-tune checkpoints --------------------------------------------------------------------------------------

# Three epochs, the top layer group only: a resume keeps the recorded --unfreeze, and each checkpoint is then ~85 MB
# rather than ~110 MB (the optimizer's slot for every trainable weight).
SMALL_FT = {**OPTS, "epochs": 3, "unfreeze": 1}

@pytest.fixture(scope="module")
def interrupted(ham_run, tmp_path_factory):
    """The staging folder of a real fine-tune (epochs=3) interrupted after 2 epochs: made once, copied per test."""
    import keras

    from bottleneck.models.finetune import FineTuneOptions, fine_tune

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == 2:
                raise KeyboardInterrupt

    out = tmp_path_factory.mktemp("interrupted") / "ft"
    with pytest.raises(KeyboardInterrupt):
        fine_tune(ham_run["run"], FineTuneOptions(out=out, **SMALL_FT), callbacks=[Interrupt()])
    return out.with_name(f".{out.name}.tmp")


def interrupted_copy(interrupted: Path, out: Path) -> Path:
    """The interrupted fine-tune's staging folder, copied to where `--out out --resume` looks for it. Its models
    (~110 MB each) are hard links: fine-tune replaces a model file (a save is a rename), never writes into one, and
    so must these tests."""
    def link_models(src, dst):
        return os.link(src, dst) if src.endswith(".keras") else shutil.copy2(src, dst)

    return Path(shutil.copytree(interrupted, out.with_name(f".{out.name}.tmp"), copy_function=link_models))


def replace_with_empty(path: Path) -> None:
    """An empty file where a model was (what a kill during a non-atomic save leaves), the linked one untouched."""
    path.unlink()
    path.write_bytes(b"")


def resume(ham_run, out):
    return run_cli("fine-tune", ham_run["run"], "--out", out, "--resume", "--epochs", 3, "--lr", "1e-5",
                   "--batch-size", 8, "--no-augment", "-q")


@pytest.mark.slow
def test_a_truncated_last_checkpoint_resumes_from_the_previous_one(ham_run, interrupted, tmp_path):
    out = tmp_path / "ft"
    tmp = interrupted_copy(interrupted, out)
    state = json.loads((tmp / "progress.json").read_text())
    assert state["epoch"] == 2 and (tmp / "progress.prev.json").is_file()
    assert (tmp / state["last_file"]).is_file() and not list(tmp.glob(".*.part.keras"))
    replace_with_empty(tmp / state["last_file"])
    r = resume(ham_run, out)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    assert "warning: cannot resume from epoch 2" in r.output and "trying the previous checkpoint" in r.output
    config = json.loads((out / "config.json").read_text())
    assert config["epochs_run"] == 3 and len(pd.read_csv(out / "history.csv")) == 3
    assert not tmp.exists() and not list(out.glob("*-0*.keras")) and not (out / "progress.json").exists()


@pytest.mark.slow
def test_no_readable_checkpoint_starts_the_fine_tune_over(ham_run, interrupted, tmp_path):
    out = tmp_path / "ft"
    tmp = interrupted_copy(interrupted, out)
    for path in tmp.glob("*.keras"):
        replace_with_empty(path)
    r = resume(ham_run, out)
    assert r.exit_code == 0, r.output
    assert "starting this fine-tune over from epoch 0" in r.output
    assert json.loads((out / "config.json").read_text())["epochs_run"] == 3


@pytest.mark.slow
def test_checkpoints_are_written_under_a_temporary_name(ham_run, tmp_path, monkeypatch):
    """A save that dies midway (here: raises after writing part of the file) leaves the committed state whole."""
    import keras

    import bottleneck.models.checkpoints as checkpoints
    import bottleneck.models.finetune as finetune

    real_save = keras.Model.save
    calls = []

    def dying_save(self, path, *args, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 3:  # epoch 2's first save
            Path(path).write_bytes(b"PK\x03\x04 half")
            raise KeyboardInterrupt
        return real_save(self, path, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save", dying_save)
    out = tmp_path / "ft"
    with pytest.raises(KeyboardInterrupt):
        finetune.fine_tune(ham_run["run"], finetune.FineTuneOptions(out=out, **SMALL_FT))
    monkeypatch.setattr(keras.Model, "save", real_save)
    assert all(name.startswith(".") and name.endswith(".part.keras") for name in calls)
    tmp = out.with_name(f".{out.name}.tmp")
    state = json.loads((tmp / "progress.json").read_text())
    assert state["epoch"] == 1 and checkpoints._readable(tmp / state["last_file"])
    r = resume(ham_run, out)
    assert r.exit_code == 0 and "warning" not in r.output, r.output
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["test"]["accuracy"])
