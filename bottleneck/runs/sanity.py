"""Degenerate inputs and outputs that make a run's metrics meaningless, each said in one line with its likely cause.

A wrong weights file, or a backbone whose activations underflow the cache's float16, gives features that barely
vary between images; a head trained on them predicts one class for every image, and its metrics then describe
the class frequencies, not the images. Nothing fails in that case, so these checks say so: train-head puts the
lines into metrics.json ("warnings") and warns with each (`BottleneckWarning`, one `warning:` line in the CLI).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..cache import is_streamed
from ..errors import BottleneckWarning

CONSTANT_STD = 1e-6  # a feature whose std over the training rows is below this carries nothing
CONSTANT_SHARE = 0.99  # of the dimensions: more than this constant, and the features are
IDENTICAL_SPREAD = 1e-4  # rows whose spread is this small a part of their size are copies of one vector
ONE_CLASS_SHARE = 0.99  # of the test images: more predicted as one class, and the head ignores its input
ONE_CLASS_MIN = 20  # test images: one class for all of fewer is as likely a small split as a broken head
BLOCK_ROWS = 4096


def feature_spread(x) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std (float64, (D,) each) of x: an array or a streamed FeatureReader, read block by
    block (Chan's merge of block means and squared deviations: no float64 copy of x, no cancellation)."""
    blocks = (b for _, b in x.blocks()) if is_streamed(x) else (x[i:i + BLOCK_ROWS] for i in
                                                                 range(0, len(x), BLOCK_ROWS))
    n, mean, m2 = 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for block in blocks:
        b = np.asarray(block, dtype=np.float64)
        k, bmean = len(b), b.mean(axis=0)
        delta = bmean - mean
        m2 += ((b - bmean) ** 2).sum(axis=0) + delta**2 * n * k / (n + k)
        mean += delta * k / (n + k)
        n += k
    return mean, np.sqrt(m2 / max(n, 1))


def feature_warnings(x) -> list[str]:
    """One line when the (training) features are nearly constant across images, else none."""
    if len(x) < 2:
        return []
    mean, std = feature_spread(x)
    d = len(std)
    share = float((std < CONSTANT_STD).mean())
    cause = "a wrong weights file or a dtype that underflows; these metrics are not meaningful"
    if share > CONSTANT_SHARE:
        return [f"the features are nearly constant across images (std < {CONSTANT_STD:g} in {_pct(share)} of "
                f"{d} dimensions): {cause}"]
    size = float(np.linalg.norm(mean))
    if size > 0 and float(np.linalg.norm(std)) <= IDENTICAL_SPREAD * size:
        return [f"the features are nearly identical across images (they vary by "
                f"{float(np.linalg.norm(std)) / size:.1g} of their size over {len(x)} images): {cause}"]
    return []


def prediction_warnings(proba: np.ndarray, class_names: list[str], what: str = "test images") -> list[str]:
    """One line when the head predicts one class for more than ONE_CLASS_SHARE of the rows of `proba` (N, C),
    N >= ONE_CLASS_MIN."""
    if len(proba) < ONE_CLASS_MIN:
        return []
    counts = np.bincount(np.asarray(proba).argmax(axis=1), minlength=len(class_names))
    top = int(counts.argmax())
    share = counts[top] / len(proba)
    if share <= ONE_CLASS_SHARE:
        return []
    return [f"the head predicts {class_names[top]} for {_pct(share)} of {len(proba)} {what}: it ignores its input "
            "(nearly constant features, a diverged or too short training); its metrics say little"]


def run_warnings(x_train, test_proba: np.ndarray, class_names: list[str]) -> list[str]:
    """The checks of a head run (features it trained on, its test probabilities), each also warned."""
    lines = feature_warnings(x_train) + prediction_warnings(test_proba, class_names)
    for line in lines:
        warnings.warn(line, BottleneckWarning, stacklevel=2)
    return lines


def _pct(share: float) -> str:
    """0.995 -> "99.5%", 1.0 -> "100%": rounded down, so never "100%" unless it is."""
    return "100%" if share >= 1 else f"{np.floor(share * 1e4) / 100:g}%"
