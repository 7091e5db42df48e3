"""epoch_bar as a real Keras callback of a real (tiny) fit: one tick per epoch, the losses shown, quiet when off."""

from __future__ import annotations

import numpy as np

from bottleneck.heads.callbacks import epoch_bar


def tiny_fit(callback, epochs=3):
    import keras

    x = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=8, verbose=0, callbacks=[callback])


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
