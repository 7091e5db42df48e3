"""The forward pass of extraction and what each of its batches becomes, shared by the local and the Ray engine.

    make_forward: (B, S, S, 3) float32 pixels -> (B, D) float32 features (preprocessing + backbone, traced)
    entry_row: a dataset entry and its hash -> the row dict `CacheWriter.write_batch` takes
    check_dtype_range: refuse features that float16 storage would flush to zero
    unstorable_name: why an entry's names cannot be stored in the cache (a file name that is not UTF-8)
    JournalThread: the batches journaled by one thread of their own, so that the forward pass never waits for a
                   journal write or a commit
"""

from __future__ import annotations

import os
import queue
import threading

import numpy as np

from ..backbones import get_spec
from ..cache import CacheConfig, CacheWriter, utf8_ok
from ..errors import InputError
from ..images import Entry
from ..util import tensorflow


def entry_row(entry: Entry, sha: str, size=(0, 0), has_features=True, phash=None) -> dict:
    """`phash`: the image's perceptual fingerprint, or None to keep the cached one (a row without one gets none)."""
    return dict(image_id=entry.image_id, path=entry.rel_path, label=entry.label, group=entry.group,
                sha256=sha, width=int(size[0]), height=int(size[1]), has_features=has_features,
                meta=dict(entry.meta), **({} if phash is None else {"phash": int(phash)}))


NOT_UTF8 = "file name is not valid UTF-8; rename it"


def unstorable_name(entry: Entry) -> str:
    """The failure reason when the cache cannot hold this entry's names, else "".

    On POSIX a file name is bytes; one that is not UTF-8 reaches Python as lone surrogates, which the cache's
    UTF-8 columns (and the CSV and JSON files of runs) cannot hold. Storing an escaped form instead would name a
    file that fine-tune, predict and evaluate cannot reopen (or another file, named with a backslash), so the
    image is listed as failed: renaming it is the fix, and the rerun extracts it."""
    texts = (entry.image_id, entry.rel_path, entry.label or "", entry.group or "")
    return "" if all(utf8_ok(t) for t in texts) else NOT_UTF8


def printable_path(rel_path: str) -> str:
    """A path as the failed-image table can hold it: undecodable bytes escaped (`caf\\xe9.jpg`)."""
    return os.fsencode(rel_path).decode("utf-8", "backslashreplace") if not utf8_ok(rel_path) else rel_path


def make_forward(config: CacheConfig, model):
    """(B, S, S, 3) float32 pixels 0..255 -> (B, D) float32 features: preprocessing plus the backbone, traced once
    per batch shape and compiled with XLA when `config.xla`. Extraction and `bench` time the same function."""
    tf = tensorflow()
    preprocess = get_spec(config.backbone).preprocess_fn()

    def forward(x):
        return tf.cast(model(preprocess(x), training=False), tf.float32)

    return tf.function(forward, jit_compile=config.xla, reduce_retracing=True)


def check_dtype_range(feats: np.ndarray, config: CacheConfig) -> None:
    """Refuse to store features that float16 would flatten to zero (some randomly initialised backbones
    produce ~1e-12 activations): silent information loss is worse than a clear error."""
    if config.dtype != "float16":
        return
    nonzero = feats[feats != 0]
    if nonzero.size and np.mean(nonzero.astype(np.float16) == 0) > 0.01:
        raise InputError(
            f"features of {config.backbone} with weights {config.weights_identity} are too small for float16 "
            f"(largest |value| {np.abs(nonzero).max():.2g}); pass --dtype float32")


# Batches computed and waiting for the journal: the forward pass runs on while one is journaled or committed. One:
# a kill loses the batch being computed and at most one computed and not yet journaled.
JOURNAL_QUEUE = 1


class JournalThread:
    """`CacheWriter.write_batch` on a thread of its own, fed by a bounded queue, batches journaled in the order they
    were put; while it runs, only this thread uses the writer.

    Use as a context manager: `put` takes the writer's arguments, blocks only while `JOURNAL_QUEUE` batches are
    waiting, and raises the writer's error, if it had one, in the caller's thread; leaving journals every batch
    already put (also on Ctrl-C or an error, like the synchronous writer's last batch) and re-raises an error
    of the writer that no `put` raised yet. After an error the writer gets no further batch: what was journaled
    before stays, and the next run extracts the rest."""

    def __init__(self, writer: CacheWriter, depth: int = JOURNAL_QUEUE):
        self.writer = writer
        self.error: BaseException | None = None
        self._raised = False
        self._queue: queue.Queue = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="bottleneck-journal", daemon=True)

    def __enter__(self) -> JournalThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_batch(*item[0], **item[1])
                except BaseException as exc:  # noqa: BLE001 -- handed to the caller's thread, raised there
                    self.error = exc

    def put(self, *args, **kwargs) -> None:
        self._check()
        self._queue.put((args, kwargs))

    def _check(self) -> None:
        if self.error is not None and not self._raised:
            self._raised = True
            raise self.error

    def __exit__(self, exc_type, exc, tb) -> None:
        # A Ctrl-C here must not leave the thread writing while the writer commits: wait it out, then raise it.
        interrupted = _uninterrupted(lambda: self._queue.put(None))
        interrupted |= _uninterrupted(self._thread.join)
        if exc is None:
            self._check()
            if interrupted:
                raise KeyboardInterrupt


def _uninterrupted(wait) -> bool:
    """Call `wait` until it returns, through Ctrl-Cs; whether there was one."""
    interrupted = False
    while True:
        try:
            wait()
            return interrupted
        except KeyboardInterrupt:
            interrupted = True
