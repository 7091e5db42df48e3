"""Keras callbacks with one concern each, shared by head training and fine-tuning."""

from __future__ import annotations

from ..util import progress_bar, tensorflow


def epoch_bar(total: int, enabled: bool = True, desc: str = "train-head"):
    """A progress bar (util/progress.py) over epochs (with epochs/s) showing the current losses; a new bar at each
    `fit`."""
    tensorflow()
    import keras  # after tensorflow(): its import is the slow, noisy part of start-up

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = progress_bar(total=total, desc=desc, unit="epoch", enabled=enabled, leave=False)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.set_postfix({k: f"{logs[k]:.3f}" for k in ("loss", "val_loss") if k in logs})
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochBar()
