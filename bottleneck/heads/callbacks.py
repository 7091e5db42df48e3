"""Keras callbacks with one concern each, shared by head training and fine-tuning: `epoch_bar` (a bar over epochs)
and `step_bar` (a bar over the images of a whole fit, moved at every batch)."""

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


def step_bar(epochs: int, images: int, batch_size: int, initial_epoch: int = 0, enabled: bool = True,
             desc: str = "fine-tune", stream=None, interval: float | None = None):
    """A progress bar (util/progress.py) over the training images of a whole fit, moved at every batch
    (`on_train_batch_end`): `epochs` x `images` per epoch (steps per epoch x `batch_size`, the last batch short),
    so its rate is images/s and its time left runs to the end of the last epoch (sooner when early stopping ends the
    fit). It starts at `initial_epoch` (a resumed fit); the epoch and the last losses are shown beside it."""
    tensorflow()
    import keras  # after tensorflow(): its import is the slow, noisy part of start-up

    more = {} if interval is None else {"interval": interval}

    class StepBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = progress_bar(total=epochs * images, desc=desc, unit="img", enabled=enabled, stream=stream,
                                    initial=initial_epoch * images, **more)
            self.base, self.shown = initial_epoch * images, {}

        def on_epoch_begin(self, epoch, logs=None):
            self.base = epoch * images
            self.shown["epoch"] = f"{epoch + 1}/{epochs}"
            self.bar.set_postfix(self.shown, refresh=False)

        def on_train_batch_end(self, batch, logs=None):
            self._to(self.base + min((batch + 1) * batch_size, images))

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.shown |= {k: f"{logs[k]:.3f}" for k in ("loss", "val_loss") if k in logs}
            self.bar.set_postfix(self.shown, refresh=False)
            self._to((epoch + 1) * images)  # unreadable images left out of the batches: the epoch is done all the same

        def _to(self, n: int) -> None:
            if n > self.bar.n:
                self.bar.update(n - self.bar.n)

        def on_train_end(self, logs=None):
            self.bar.close()

    return StepBar()
