"""The stored augmented views of a cache at training and evaluation time: checked (`require_views`), drawn one per
image per epoch (`view_batches`, --augment) and averaged over (`tta_log_proba`, --tta).

TTA averages probabilities over the plain view and every stored view; the mean is taken in log space (float64
log-probabilities, `np.logaddexp`), so a view's probability of 1e-30 still counts and nothing is rounded to 0 or 1.
"""

from __future__ import annotations

import math

import numpy as np

from ..cache import GIB, CacheData, ViewsReader, read_views
from ..errors import InputError
from ..heads import HeadConfig, predict_log_proba
from ..images import view_sampler
from ..stats import log_of


def require_views(data: CacheData, rows: np.ndarray) -> None:
    if data.n_views == 0:
        raise InputError(f"cache {data.path} holds no augmented views; add them with "
                         f"`bottleneck extract DATA --views 7 --cache {data.path}` (the plain vectors are kept)")
    missing = int((~data.views_ok[rows]).sum())
    if missing:
        raise InputError(f"{missing} images of cache {data.path} lack their {data.n_views} views (added after "
                         "the views were extracted); rerun the same extract command to complete them")


def view_batches(data: CacheData, rows: np.ndarray, head: HeadConfig, memory_gb: float):
    """--augment batches; the views are read into memory when they fit in `memory_gb`, else streamed.
    Streamed plain features (a FeatureReader) are read batch by batch too, each batch's rows from the file."""
    need = len(data.labels) * data.n_views * data.config.num_features * 4
    if need <= memory_gb * 2**30:
        views = read_views(data.path)
    else:  # each batch reads its own rows, opening the file for that read only
        views = ViewsReader(data.path)
    return view_sampler(data.features, views, rows, data.labels, head.batch_size, head.seed)


def tta_log_proba(model, data: CacheData, rows: np.ndarray, plain_log_proba: np.ndarray,
                  memory_gb: float | None = None) -> np.ndarray:
    """log of the mean probabilities over the plain view and every stored view of `rows`, float64 (N, C).

    The views of all `rows` are read at once when they fit in `memory_gb` (or it is None), else in blocks of
    rows that do, and of at least 1 MiB (as a streamed feature read is at least one ~1 MiB chunk): smaller blocks
    would spend their time in per-call overhead."""
    total = np.array(plain_log_proba, dtype=np.float64)  # log of the sum of probabilities so far
    per_row = max(1, data.n_views * data.config.num_features * 4)  # float32 bytes of one row's views
    block = len(rows) if memory_gb is None else int(max(memory_gb * GIB, 2**20) // per_row)
    block = max(1, block)
    n_views = data.n_views
    for start in range(0, len(rows), block):
        part = slice(start, start + block)
        views = read_views(data.path, rows[part])  # (b, V, D)
        n_views = views.shape[1]
        for k in range(n_views):
            total[part] = np.logaddexp(total[part], predict_log_proba(model, views[:, k]))
    return total - math.log(n_views + 1)


def tta_proba(model, data: CacheData, rows: np.ndarray, plain_proba: np.ndarray,
              memory_gb: float | None = None) -> np.ndarray:
    """Mean probabilities over the plain view and every stored view of `rows`: exp of `tta_log_proba`."""
    return np.exp(tta_log_proba(model, data, rows, log_of(plain_proba), memory_gb))
