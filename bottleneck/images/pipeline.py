"""The one image pipeline: image files -> decoded, resized uint8 RGB -> batches, for extract, fine-tune and predict.

    paths -> tf.data (parallel `load_image` in a numpy_function) -> (S, S, 3) uint8 + original size + error
          -> inference: batch -> prefetch, in file order, unreadable images marked by their error (and, for
             extraction, each image's perceptual fingerprint of those same pixels: `fingerprint.py`)
          -> training:  shuffle -> drop unreadable (recorded) -> float32 -> augment -> batch -> prefetch

Every command decodes with `load_image`, so an image gives the same pixels, and a cached image the same
bottleneck, whichever command read it.

tf.data's autotuning is off and the parallelism fixed (`decode_threads`, `PREFETCH_BATCHES`): its optimisation
thread sleeps between rounds on a timer that doubles up to 60 s, and an iterator's destructor waits for that
sleep to end (TensorFlow 2.21: `~RootDataset::Iterator` joins `Model::OptimizeLoop`, which the cancellation does
not wake), which was the wait of up to several seconds after the last batch of an extraction and after every
epoch of a fine-tune.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ImageDecodeError
from ..util import tensorflow
from .decode import load_image
from .fingerprint import NO_FINGERPRINT, perceptual_hash


def decode_image(path: str, size: int) -> tuple[np.ndarray, np.int32, np.int32, str]:
    """One image file -> (pixels (S, S, 3) uint8, width, height, reason); an unreadable image gives black pixels,
    size 0 and its reason ("" if decoded). The tf.data pipeline and the Ray engine's decode tasks both call this."""
    try:
        pixels, (w, h) = load_image(path, size)
        return pixels, np.int32(w), np.int32(h), ""
    except ImageDecodeError as exc:
        return np.zeros((size, size, 3), np.uint8), np.int32(0), np.int32(0), str(exc)


def fingerprint_of(pixels: np.ndarray, reason: str) -> np.uint64:
    """The perceptual fingerprint of `decode_image`'s pixels; NO_FINGERPRINT for an unreadable image."""
    return NO_FINGERPRINT if reason else perceptual_hash(pixels)


def _decoder(paths: list[str], size: int, failures: dict | None = None, fingerprints: bool = False):
    """A tf.data map function: index -> (pixels (S, S, 3) uint8, width, height, error bytes; b"" if decoded), and
    the fingerprint of those pixels (uint64) when `fingerprints`: computed in the parallel decode, not in the loop
    that runs the backbone.

    An unreadable image gives black pixels and its reason, also recorded in `failures` (path -> reason)
    when given: in a training pipeline it is filtered out before it could reach Python."""
    tf = tensorflow()

    def load(i):
        path = paths[int(i)]
        pixels, w, h, reason = decode_image(path, size)
        if reason and failures is not None:
            failures[path] = reason
        if fingerprints:
            return pixels, w, h, reason.encode(), fingerprint_of(pixels, reason)
        return pixels, w, h, reason.encode()

    def decode(i):
        types = [tf.uint8, tf.int32, tf.int32, tf.string] + ([tf.uint64] if fingerprints else [])
        out = tf.numpy_function(load, [i], types, stateful=False)
        out[0].set_shape((size, size, 3))
        return tuple(out)

    return decode


PREFETCH_BATCHES = 2  # batches decoded ahead of the consumer, beyond the one being assembled


def decode_threads() -> int:
    """Images decoded at once: one per core this process may run on (the decode is CPU-bound, and Pillow releases
    the GIL while it decodes)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def without_autotune(ds):
    """`ds` with tf.data's autotuning off: no optimisation thread whose timed sleep an iterator's end waits for."""
    tf = tensorflow()
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def inference_batches(paths: list[str], size: int, batch_size: int, fingerprints: bool = False,
                      threads: int | None = None):
    """tf.data of (pixels (B, S, S, 3) uint8, width (B,), height (B,), error (B,) bytes), plus the images'
    fingerprints (B,) uint64 when `fingerprints`, in the order of `paths`; decoding runs on `threads` threads
    (default `decode_threads()`) ahead of the consumer. The last batch may be short: see `pad_batch`."""
    tf = tensorflow()
    return without_autotune(tf.data.Dataset.range(len(paths))
                            .map(_decoder(paths, size, fingerprints=fingerprints),
                                 num_parallel_calls=threads or decode_threads(), deterministic=True)
                            .batch(batch_size)
                            .prefetch(PREFETCH_BATCHES))


def pad_batch(x, batch_size: int):
    """(n, ...) -> (batch_size, ...) with zero rows: one shape for every call of a traced model, so the last
    short batch neither retraces it nor gets other numerics."""
    tf = tensorflow()
    n = int(x.shape[0])
    if n >= batch_size:
        return x
    return tf.concat([x, tf.zeros((batch_size - n, *x.shape[1:]), x.dtype)], axis=0)


def augment_image(x):
    """(S, S, 3) float 0..255 -> a random dihedral view (dermoscopy has no up) with small photometric jitter."""
    tf = tensorflow()
    x = tf.image.random_flip_left_right(x)
    x = tf.image.random_flip_up_down(x)
    x = tf.image.rot90(x, tf.random.uniform((), 0, 4, tf.int32))
    x = tf.image.random_brightness(x, 0.05 * 255)
    x = tf.image.random_contrast(x, 0.9, 1.1)
    return tf.clip_by_value(x, 0.0, 255.0)


def training_batches(paths: list[str], labels: np.ndarray, weights: np.ndarray, size: int, batch_size: int,
                     failures: dict, *, augment: bool, shuffle: bool, seed: int = 0):
    """tf.data of (x (B, S, S, 3) float32 0..255, y (B,), sample weight (B,)). Unreadable images are dropped and
    recorded in `failures` (path -> reason); `shuffle` reshuffles every epoch from `seed`."""
    tf = tensorflow()
    decode = _decoder(paths, size, failures)

    def load(i, y, w):
        pixels, _, _, err = decode(i)
        return tf.cast(pixels, tf.float32), y, w, tf.equal(tf.strings.length(err), 0)

    def readable(x, y, w, ok):
        return ok

    def drop_flag(x, y, w, ok):
        return x, y, w

    def augmented(x, y, w):
        return augment_image(x), y, w

    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), labels.astype(np.int32),
                                             weights.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(load, num_parallel_calls=decode_threads(), deterministic=not shuffle)
    ds = ds.filter(readable).map(drop_flag)
    if augment:
        ds = ds.map(augmented, num_parallel_calls=decode_threads())
    return without_autotune(ds.batch(batch_size).prefetch(PREFETCH_BATCHES))
