"""Augmented views stored in the cache: augmentation without giving up the cache.

A dermoscopic image has no preferred orientation, so its 8 flips and 90-degree rotations (the dihedral
group) are all valid views. View k (1-based; view 0 is the plain image, stored in `features`):

    k = 1..7   the dihedral group without the identity: rot90 by (k % 4) quarter turns counter-clockwise,
               then a left-right mirror when k >= 4  (k = 4 is the mirror alone)
    k >= 8     a random but reproducible crop (80-100% of the area, resized back) with colour jitter,
               seeded by (cache seed, image SHA-256, k): the same image always gets the same view

`views` in the cache is (N, V, D), chunked one row per chunk: training with `--augment` reads one row's
views at a time (a random row order), so a chunk holds exactly what one such read needs.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..util import tensorflow

DIHEDRAL = 7  # non-identity dihedral views; more views are random crops with colour jitter


VIEW_NAMES = ("rot90", "rot180", "rot270", "mirror", "mirror rot90", "mirror rot180", "mirror rot270")


def view_names(n: int) -> list[str]:
    return [VIEW_NAMES[k - 1] if k <= DIHEDRAL else f"crop+jitter {k - DIHEDRAL}" for k in range(1, n + 1)]


def apply_view(images, k: int, seeds=None):
    """(B, S, S, 3) float images -> view k of each. `seeds`: (B, 2) int32, needed for k >= 8."""
    tf = tensorflow()
    if k <= DIHEDRAL:
        x = tf.image.rot90(images, k % 4)
        return tf.image.flip_left_right(x) if k >= 4 else x
    size = int(images.shape[1])
    s = tf.cast(seeds, tf.int32) + tf.constant([0, 1_000_003], tf.int32) * k  # a distinct stream per view

    def one(args):
        img, seed = args
        frac = tf.sqrt(tf.random.stateless_uniform((), seed, 0.8, 1.0))  # side fraction: 80-100% of the area
        side = tf.cast(tf.round(frac * size), tf.int32)
        off = tf.random.stateless_uniform((2,), seed + 1, 0, 1) * tf.cast(size - side, tf.float32)
        off = tf.cast(off, tf.int32)
        crop = tf.image.crop_to_bounding_box(img, off[0], off[1], side, side)
        crop = tf.image.resize(crop, (size, size), method="bilinear")
        crop = tf.image.stateless_random_brightness(crop, 0.08 * 255, seed + 2)
        crop = tf.image.stateless_random_contrast(crop, 0.9, 1.1, seed + 3)
        crop = tf.image.stateless_random_saturation(crop, 0.9, 1.1, seed + 4)
        return tf.clip_by_value(crop, 0.0, 255.0)

    return tf.map_fn(one, (images, s), fn_output_signature=tf.float32)


def seeds_for(sha256s: list[str], seed: int) -> np.ndarray:
    """(B, 2) int32 seeds from the image bytes' hash: reproducible whatever the batch or row order."""
    return np.array([[seed % (2**31 - 1), int(h[:8] or "0", 16) % (2**31 - 1)] for h in sha256s], dtype=np.int32)


def check_views(n: int) -> int:
    if n < 0 or n > 64:
        raise InputError(f"--views should be between 0 and 64; received {n}")
    return n


def view_sampler(plain: np.ndarray, views, rows: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
    """A Keras PyDataset for `--augment`: each epoch, every training row contributes one of its views (plain
    or stored), drawn uniformly and reproducibly from the seed, rows shuffled.

    `views` may be an in-memory (N, V, D) array or the cache's h5py dataset; then each batch reads only
    its rows (sorted, as h5py wants), so a large cache never has to fit in memory."""
    tensorflow()
    import keras

    class ViewSampler(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rows = np.asarray(rows)
            self.rng = np.random.default_rng(seed)
            self.n_views = int(views.shape[1]) + 1  # choice 0 is the plain view
            self.draws: list[np.ndarray] = []  # per epoch: the view drawn for each row (for tests and audit)
            self.on_epoch_end()

        def __len__(self):
            return -(-len(self.rows) // batch_size)

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(self.rows))
            self.choice = self.rng.integers(0, self.n_views, size=len(self.rows))
            self.draws.append(self.choice.copy())

        def __getitem__(self, i):
            pos = self.order[i * batch_size:(i + 1) * batch_size]
            sel, pick = self.rows[pos], self.choice[pos]
            x = plain[sel].astype(np.float32)  # (b, D)
            stored = np.flatnonzero(pick > 0)
            if len(stored):
                srt = stored[np.argsort(sel[stored])]
                block = np.asarray(views[sel[srt]], dtype=np.float32)  # (s, V, D)
                x[srt] = block[np.arange(len(srt)), pick[srt] - 1]
            return x, labels[sel]

    return ViewSampler()
