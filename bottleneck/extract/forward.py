"""The forward pass of extraction and what each of its batches becomes, shared by the local and the Ray engine.

    make_forward: (B, S, S, 3) float32 pixels -> (B, D) float32 features (preprocessing + backbone, traced)
    entry_row: a dataset entry and its hash -> the row dict `CacheWriter.write_batch` takes
    check_dtype_range: refuse features that float16 storage would flush to zero
    unstorable_name: why an entry's names cannot be stored in the cache (a file name that is not UTF-8)
"""

from __future__ import annotations

import os

import numpy as np

from ..backbones import get_spec
from ..cache import CacheConfig, utf8_ok
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
