"""epoch_bar and step_bar as real Keras callbacks of a real (tiny) fit: one tick per epoch or per batch, the losses
shown, quiet when off."""

from __future__ import annotations

import io
import re

import numpy as np

from bottleneck.heads.callbacks import epoch_bar, step_bar


def tiny_fit(callback, epochs=3, initial_epoch=0):
    import keras

    x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=8, verbose=0, callbacks=[callback],
              initial_epoch=initial_epoch)


def test_epoch_bar_ticks_once_per_epoch_and_shows_the_losses(capsys):
    bar = epoch_bar(3, desc="my-head")
    tiny_fit(bar)
    assert bar.bar.n == 3 and bar.bar.total == 3 and bar.bar.unit == "epoch"
    assert "loss=" in bar.bar.postfix and "val_loss=" in bar.bar.postfix
    assert bar.bar.desc == "my-head"
    # stderr is no terminal here (as in a log file): a transient bar shorter than its 30 s interval prints nothing,
    # and never the carriage returns of a redrawn bar (util/progress.py)
    assert capsys.readouterr().err == ""
    again = epoch_bar(2, desc="second")  # a new bar at each fit
    tiny_fit(again, epochs=2)
    assert again.bar.n == 2 and again.bar is not bar.bar


def test_a_disabled_bar_prints_nothing(capsys):
    bar = epoch_bar(3, enabled=False, desc="silent-head")
    tiny_fit(bar)
    assert bar.bar.disable and "silent-head" not in capsys.readouterr().err


def test_step_bar_moves_at_every_batch_over_the_whole_run_with_images_per_second():
    """16 images in batches of 8 for 3 epochs: 48 images in 6 steps. Into a stream that is no terminal (a log), with
    no interval between lines, it writes one whole line per batch, each with the run's total, a rate in img/s and
    the time left to the end of the run."""
    stream = io.StringIO()
    bar = step_bar(3, 16, 8, desc="my-fine-tune", stream=stream, interval=0)
    tiny_fit(bar)
    assert bar.bar.total == 48 and bar.bar.n == 48 and bar.bar.unit == "img"
    text = stream.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and [re.match(r"my-fine-tune: (\d+)/48 img", line)[1] for line in lines] == [
        "8", "16", "24", "32", "40", "48"]
    assert all("img/s" in line and " left" in line for line in lines)
    assert "epoch=3/3" in lines[-1] and "val_loss=" in lines[-1]


def test_a_resumed_step_bar_starts_at_its_epoch_and_a_disabled_one_prints_nothing(capsys):
    stream = io.StringIO()
    bar = step_bar(3, 16, 8, initial_epoch=2, stream=stream, interval=0)
    tiny_fit(bar, initial_epoch=2)
    assert [line.split()[1] for line in stream.getvalue().splitlines()] == ["40/48", "48/48"]
    quiet = step_bar(3, 16, 8, enabled=False, desc="silent-tune")
    tiny_fit(quiet)
    assert quiet.bar.disable and "silent-tune" not in capsys.readouterr().err
