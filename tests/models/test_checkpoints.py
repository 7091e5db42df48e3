"""Fine-tune's resume protocol on a tiny Keras model: progress.json in the format interrupted runs already hold, the
files each epoch commits and prunes, and the states a resume tries (damaged ones passed over, older formats read).
The whole protocol under kills and damaged files is tested with a real fine-tune in test_faults_doors.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bottleneck.errors import BottleneckWarning, InputError
from bottleneck.models.checkpoints import (
    PREVIOUS,
    PROGRESS,
    Progress,
    clear,
    discard_unless_resumable,
    fresh_staging,
    resumable,
    resume_model,
    saved_states,
    tracker,
)

# progress.json as fine-tune has written it since the model files were numbered: the keys in this order.
WRITTEN = {"source_run": "/runs/head", "options": {"lr": 1e-05, "unfreeze": 2, "data": None, "progress": True},
           "unfrozen": {"groups": 2, "layers": 10}, "epoch": 2,
           "history": {"loss": [1.1, 0.9], "val_loss": [1.0, 0.95]}, "best": 0.95, "best_epoch": 2, "wait": 0,
           "stopped": False, "skipped_in_training": {"/img/bad.jpg": "not a JPEG"}, "seconds": 12.5,
           "best_file": "best-0002.keras", "last_file": "last-0002.keras"}


def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def test_progress_reads_and_writes_the_format_interrupted_runs_hold():
    state = Progress.from_json(json.loads(json.dumps(WRITTEN)))
    assert state.best_model == "best-0002.keras" and state.epoch == 2
    assert json.dumps(state.to_json(), indent=1) == json.dumps(WRITTEN, indent=1)  # byte for byte
    fresh = Progress("/runs/head", {"lr": 1e-05}, {"groups": 2})
    assert list(fresh.to_json()) == list(WRITTEN)[:-2] and fresh.to_json()["best"] is None  # strict JSON: no inf
    no_best = {k: v for k, v in WRITTEN.items() if k != "best_file"} | {"best": math.inf, "best_epoch": 0}
    state = Progress.from_json(no_best)  # no epoch had a finite validation loss
    assert state.best_file is None and state.best_model == "last-0002.keras" and "best_file" not in state.to_json()


def test_progress_is_strict_json_and_reads_back_an_infinite_best_and_diverged_losses():
    state = Progress("/runs/head", {"lr": 1e-05}, {"groups": 2}, epoch=2,
                     history={"loss": [1.1, math.nan], "val_loss": [math.inf, math.nan]})
    text = json.dumps(state.to_json(), allow_nan=False)  # what write_json_atomic writes: no NaN, no Infinity
    back = Progress.from_json(json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in progress.json")))
    assert back.best == math.inf and back.history["loss"][0] == 1.1
    assert all(math.isnan(v) for v in (back.history["loss"][1], *back.history["val_loss"]))  # no loss: NaN
    older = Progress.from_json(json.loads(json.dumps(WRITTEN | {"best": math.inf, "best_epoch": 0})))
    assert older.best == math.inf  # `Infinity`, as fine-tunes interrupted before this version wrote it


def test_a_state_from_before_numbered_files_names_the_old_files():
    legacy = {k: v for k, v in WRITTEN.items() if k not in ("best_file", "last_file")}
    state = Progress.from_json(legacy)
    assert (state.last_file, state.best_file, state.best_model) == ("last.keras", "checkpoint.keras",
                                                                   "checkpoint.keras")


def test_each_epoch_commits_its_files_then_its_state_and_prunes_older_ones(tmp_path):
    tmp = tmp_path / ".ft.tmp"
    fresh_staging(tmp)
    state = Progress("/runs/head", {"lr": 0.1}, {"groups": 1})
    x, y = np.random.default_rng(0).normal(size=(16, 4)).astype("float32"), np.arange(16) % 2
    tiny_model().fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[tracker(tmp, state, patience=5)])
    written, previous = json.loads((tmp / PROGRESS).read_text()), json.loads((tmp / PREVIOUS).read_text())
    assert list(written) == list(WRITTEN) and written["epoch"] == 3 and written["last_file"] == "last-0003.keras"
    assert previous["epoch"] == 2  # one epoch older, kept (with its files) until this one is whole
    named = {written["last_file"], written["best_file"], previous["last_file"], previous["best_file"]}
    assert {p.name for p in tmp.glob("*.keras")} == named  # every other model file pruned
    assert resumable(tmp)

    (tmp / written["last_file"]).write_bytes(b"")  # the newest model damaged: the previous state is resumed
    with pytest.warns(BottleneckWarning, match="cannot resume from epoch 3"):
        model, resumed = resume_model(tmp, [Progress.from_json(written), Progress.from_json(previous)])
    assert resumed.epoch == 2 and model is not None
    clear(tmp)
    assert not list(tmp.iterdir()) and not resumable(tmp)
    discard_unless_resumable(tmp)
    assert not tmp.exists()


def test_saved_states_newest_first_damaged_ones_passed_over(tmp_path):
    run = tmp_path / "head"
    run.mkdir()
    tmp = tmp_path / ".ft.tmp"
    tmp.mkdir()
    with pytest.raises(InputError, match="nothing to resume"):
        saved_states(run, tmp)
    state = dict(WRITTEN, source_run=str(run.resolve()))
    (tmp / PREVIOUS).write_text(json.dumps(dict(state, epoch=1)))
    (tmp / PROGRESS).write_text("{ half a stat")
    with pytest.warns(BottleneckWarning, match="progress.json is damaged"):
        states = saved_states(run, tmp)
    assert [s.epoch for s in states] == [1]
    (tmp / PROGRESS).write_text(json.dumps(state))
    assert [s.epoch for s in saved_states(run, tmp)] == [2, 1]
    (tmp / PROGRESS).write_text(json.dumps(dict(state, source_run="/elsewhere")))
    with pytest.raises(InputError, match="continues a fine-tune of /elsewhere"):
        saved_states(run, tmp)


def test_no_readable_model_starts_over_and_an_unreadable_best_is_forgotten(tmp_path):
    tmp = tmp_path / ".ft.tmp"
    fresh_staging(tmp)
    state = Progress.from_json(WRITTEN)
    with pytest.warns(BottleneckWarning) as said:
        assert resume_model(tmp, [state]) is None
    assert [str(w.message).split(":")[0] for w in said] == ["cannot resume from epoch 2",
                                                            f"no readable checkpoint in {tmp}"]
    tiny_model().save(tmp / state.last_file)
    with pytest.warns(BottleneckWarning, match="the best checkpoint best-0002.keras .epoch 2. cannot be read"):
        _, resumed = resume_model(tmp, [state])
    assert (resumed.best, resumed.best_epoch, resumed.best_file) == (math.inf, 0, None)
    assert resumed.best_model == "last-0002.keras"
