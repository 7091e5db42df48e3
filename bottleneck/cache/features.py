"""Features through a memory budget (`--memory-gb`): in memory when they fit, else streamed from the cache.

    cache `features` (N, D) float16, chunked by rows (~1 MiB chunks)
        fits in the budget as float32 -> an ndarray, exactly as `load_cache` always returned
        does not fit                  -> a FeatureReader: rows are read from the file when asked for

A FeatureReader opens the cache for each read and closes it again, so nothing holds the file between reads
(another process may be extending the cache meanwhile); it only ever reads the `n_rows` rows that were
committed when the cache was loaded, whose metadata (labels, ids, groups) the caller holds.

Training streams in chunk order, because reading whole chunks is what HDF5 does fast: each epoch the chunks
are shuffled, a buffer of as many chunks as half the budget allows is read at once, shuffled within, and cut
into batches (`chunk_batches`). Same batch size and number of steps as in memory, the same class weights.
Every read holds at most half the budget as float32 (plus its float16 copy from the file while it is read):
two of them, a batch straddling two buffers, fit in the budget.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from ..errors import BottleneckWarning, CacheError, InputError
from ..util import tensorflow
from .handle import open_cache
from .store import load_cache
from .virtual import recheck

GIB = 2**30
RAM_FRACTION = 0.25  # of the machine's memory, the default budget: the model, TF and copies need the rest
FLOAT32 = np.dtype(np.float32)


def total_memory_bytes() -> int | None:
    """Memory this process may use: physical RAM, or a container's (cgroup) limit when that is lower."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every platform names these
        try:
            with open("/proc/meminfo") as f:
                kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
            total = kib * 1024
        except (OSError, StopIteration, ValueError, IndexError):
            pass
    # A container sees the host's RAM in sysconf; its own limit is what an out-of-memory kill enforces.
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total if total and total > 0 else None


MAX_MEMORY_GB = 2**20  # 1 PiB: a larger --memory-gb is a typo or `inf`


def default_memory_gb() -> float:
    """The default `--memory-gb`: a quarter of the machine's memory (2 GiB where it cannot be read)."""
    total = total_memory_bytes()
    return max(0.01, round(RAM_FRACTION * total / GIB, 2)) if total else 2.0


def check_memory_gb(value: float) -> float:
    """A budget in GiB: positive and finite. `inf` is refused rather than read as "no limit": a budget is what keeps
    a command within memory, it is written into config.json (strict JSON has no infinity), and block sizes are
    computed from it (a huge one overflows them)."""
    if not value > 0:  # also refuses NaN
        raise InputError(f"--memory-gb should be a positive number of GiB; received {value}")
    if not value <= MAX_MEMORY_GB:
        raise InputError(f"--memory-gb should be a finite number of GiB, at most {MAX_MEMORY_GB}; received {value} "
                         "(to read every feature into memory, give at least their size as float32: rows x features "
                         "x 4 bytes)")
    return float(value)


def resolve_memory_gb(value: float | None) -> float:
    """The budget of a command: the value given (checked), or `default_memory_gb()` when None."""
    return default_memory_gb() if value is None else check_memory_gb(value)


def features_gib(n: int, d: int) -> float:
    return n * d * FLOAT32.itemsize / GIB


def features_fit(n: int, d: int, memory_gb: float) -> bool:
    """Whether (n, d) float32 features fit in `memory_gb` GiB."""
    return n * d * FLOAT32.itemsize <= memory_gb * GIB


def is_streamed(x) -> bool:
    return isinstance(x, FeatureReader)


def take(x, rows: np.ndarray):
    """x[rows]: a copy for an in-memory array (as always), a lazy row subset for a FeatureReader."""
    return x.take(rows) if is_streamed(x) else x[rows]


class FeatureReader:
    """A lazy (len, D) float32 view of a cache's `features`, over the rows `index` of the file.

    `reader[rows]` reads those rows (any order, repeats allowed) and returns them as float32, in the order
    asked; `reader.take(rows)` is a lazy subset; `reader.blocks()` yields the rows in order, in budgeted blocks.
    """

    dtype = FLOAT32
    ndim = 2

    def __init__(self, path: str | Path, n_rows: int, num_features: int, chunk_rows: int,
                 memory_gb: float | None = None, index: np.ndarray | None = None):
        self.path = Path(path)
        self.n_rows = int(n_rows)  # committed rows when the cache was loaded: the only rows ever read
        self.num_features = int(num_features)
        self.chunk_rows = int(chunk_rows)
        self.memory_gb = resolve_memory_gb(memory_gb)
        self.index = np.arange(self.n_rows) if index is None else np.asarray(index, dtype=np.int64)  # file rows
        self.sources = None  # a virtual cache's source files as last checked (virtual.recheck); None: not yet

    @classmethod
    def from_file(cls, f: h5py.File, path: str | Path, n_rows: int | None = None,
                  memory_gb: float | None = None) -> FeatureReader:
        """The reader of an open cache file `f` (found at `path`, where every later read reopens it)."""
        ds = f["features"]
        n = int(f.attrs["n_rows"]) if n_rows is None else int(n_rows)
        if n > ds.shape[0]:
            raise CacheError(f"cache {path} records n_rows={n} but holds {ds.shape[0]} feature rows; rerun the "
                             "extract command that wrote it to repair it")
        # Older or hand-made files may be contiguous: then read ~1 MiB of rows at a time all the same.
        chunk_rows = ds.chunks[0] if ds.chunks else max(1, 2**20 // (ds.shape[1] * ds.dtype.itemsize))
        return cls(path, n, ds.shape[1], chunk_rows, memory_gb)

    @classmethod
    def open(cls, path: str | Path, n_rows: int | None = None, memory_gb: float | None = None) -> FeatureReader:
        with open_cache(path) as f:
            return cls.from_file(f, path, n_rows, memory_gb)

    # -- the array protocol that callers use --------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.num_features)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (f"FeatureReader({str(self.path)!r}, shape={self.shape}, chunk_rows={self.chunk_rows}, "
                f"memory_gb={self.memory_gb:g})")

    def __array__(self, dtype=None, copy=None):
        # np.asarray(reader) would silently load everything the budget said not to load: make that loud.
        raise TypeError(f"the features of {self.path} are streamed (they exceed --memory-gb "
                        f"{self.memory_gb:g}); read rows with reader[rows] or reader.blocks(), not np.asarray")

    def positions(self, key) -> np.ndarray:
        """Positions 0..len-1 selected by an int, a slice, an int array or a boolean mask."""
        if isinstance(key, slice):
            return np.arange(len(self))[key]
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for a reader of {len(self)} rows")
            return np.flatnonzero(key)
        if key.size and (key.min() < -len(self) or key.max() >= len(self)):
            raise IndexError(f"row index out of range for a reader of {len(self)} rows")
        return np.where(key < 0, key + len(self), key).astype(np.int64)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            raise IndexError("a FeatureReader is indexed by rows only: reader[rows]")
        pos = self.positions(key)
        out = self.read_file_rows(self.index[pos.ravel()])
        return out.reshape(*pos.shape, self.num_features)

    def take(self, rows) -> FeatureReader:
        """The lazy subset reader[rows]: nothing is read until its rows are."""
        sub = copy.copy(self)
        sub.index = self.index[self.positions(rows)]
        return sub

    # -- reading ------------------------------------------------------------------------------------------
    def _open(self):
        # Open per read (waiting out a commit), close after: holding the file between reads would hold off
        # another process's commit of new rows for as long as training runs.
        return open_cache(self.path)

    def read_file_rows(self, file_rows: np.ndarray) -> np.ndarray:
        """(len(file_rows), D) float32 of the given file rows, in the given order.

        h5py wants increasing indices, and whole contiguous spans are far faster than point selections, so
        the distinct rows are read in increasing order, one span per chunk they touch (at most a chunk each)."""
        file_rows = np.asarray(file_rows, dtype=np.int64)
        if len(file_rows) == 0:
            return np.zeros((0, self.num_features), FLOAT32)
        uniq, inverse = np.unique(file_rows, return_inverse=True)
        chunk = uniq // self.chunk_rows
        starts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])
        ends = np.r_[starts[1:], len(uniq)]
        with self._open() as f:
            self.sources = recheck(f, self.path, self.sources)  # a shard changed since: checked again
            if int(f.attrs["n_rows"]) < self.n_rows or f["features"].shape[1] != self.num_features:
                raise CacheError(f"cache {self.path} changed while its features were being streamed (now "
                                 f"{int(f.attrs['n_rows'])} rows of {f['features'].shape[1]}, was {self.n_rows} of "
                                 f"{self.num_features}); rerun the command")
            ds = f["features"]
            vals = np.empty((len(uniq), self.num_features), ds.dtype)  # (u, D) as stored, float16 mostly
            for a, b in zip(starts, ends):
                lo, hi = int(uniq[a]), int(uniq[b - 1]) + 1
                vals[a:b] = ds[lo:hi][uniq[a:b] - lo]
        return vals[inverse.ravel()].astype(FLOAT32)

    def block_rows(self, fraction: float = 1.0) -> int:
        """Rows per read under the budget (times `fraction`), and at least one chunk's worth."""
        per_row = self.num_features * FLOAT32.itemsize
        return max(self.chunk_rows, int(fraction * self.memory_gb * GIB // per_row))

    def blocks(self):
        """(start, (b, D) float32) for consecutive blocks of the rows, in order, each within half the budget."""
        step = self.block_rows(0.5)
        for start in range(0, len(self), step):
            yield start, self[slice(start, start + step)]

    def tf_dataset(self):
        """The rows as a tf.data.Dataset of blocks (for `Normalization.adapt`, which accepts one)."""
        tf = tensorflow()
        return tf.data.Dataset.from_generator(lambda: (block for _, block in self.blocks()),
                                              output_signature=tf.TensorSpec((None, self.num_features), tf.float32))


class ViewsReader:
    """The cache's stored views (N, V, D) for `view_sampler` when they exceed the budget: each read opens the
    file (waiting out a commit) and reads the given increasing rows, like FeatureReader."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open_cache(self.path) as f:
            self.shape = tuple(f["views"].shape)
            self.sources = recheck(f, self.path, None)

    def __getitem__(self, rows) -> np.ndarray:
        with open_cache(self.path) as f:
            self.sources = recheck(f, self.path, self.sources)
            return f["views"][rows]  # (len(rows), V, D) as stored


def load_cache_within(path: str | Path, memory_gb: float):
    """`load_cache` under a budget; says so (one warning line in the CLI) when the features are streamed."""
    data = load_cache(path, features=False)  # the rows' metadata; then the features, in memory or as a reader
    n, d = len(data.labels), data.config.num_features
    with open_cache(path) as f:
        data.features = (f["features"][:n].astype(np.float32) if features_fit(n, d, memory_gb) else
                         FeatureReader.from_file(f, path, n, memory_gb))
    if is_streamed(data.features):
        n, d = data.features.shape
        warnings.warn(f"features of {path} ({n} rows, {features_gib(n, d):.3g} GiB as float32) exceed --memory-gb "
                      f"{memory_gb:g}; streaming them from the cache in chunk order", BottleneckWarning, stacklevel=2)
    return data


def features_record(x, memory_gb: float) -> dict:
    """What config.json records about how the features were read."""
    return {"memory_gb": memory_gb, "streamed": is_streamed(x)}


class EpochPlan:
    """The row order of one epoch and the buffers it is read in: buffer k is order[starts[k]:starts[k+1]]."""

    def __init__(self, order: np.ndarray, starts: np.ndarray):
        self.order = order  # (n,) positions into the reader
        self.starts = starts  # (buffers + 1,) boundaries, starts[0] = 0, starts[-1] = n

    def buffer_of(self, pos: int) -> int:
        return int(np.searchsorted(self.starts, pos, side="right")) - 1


def plan_epoch(x: FeatureReader, shuffle: bool, seed: int, epoch: int) -> EpochPlan:
    """Group the rows by HDF5 chunk; shuffle the chunks, then the rows within each buffer of chunks.

    A buffer holds whole chunks, as many as half the budget allows (a batch may straddle two buffers, which are
    then both held), and at least one. Without shuffling: the rows in their order, in buffers of the same size."""
    n = len(x)
    cap = x.block_rows(0.5)
    if not shuffle:
        return EpochPlan(np.arange(n), np.r_[np.arange(0, n, cap), n] if n else np.zeros(1, np.int64))
    rng = np.random.default_rng([seed, epoch])
    chunk = x.index // x.chunk_rows
    ids, inverse, counts = np.unique(chunk, return_inverse=True, return_counts=True)
    chunk_order = rng.permutation(len(ids))
    rank = np.empty(len(ids), np.int64)
    rank[chunk_order] = np.arange(len(ids))
    grouped = np.argsort(rank[inverse.ravel()], kind="stable")  # positions, chunk by chunk in shuffled chunk order
    sizes = counts[chunk_order]  # rows of each chunk, in that order
    starts, filled = [0], 0
    for size in sizes:
        if filled and filled + size > cap:
            starts.append(starts[-1] + filled)
            filled = 0
        filled += size
    starts.append(n)
    starts = np.array(starts, np.int64)
    order = np.concatenate([grouped[a:b][rng.permutation(b - a)] for a, b in zip(starts[:-1], starts[1:])]) \
        if n else grouped
    return EpochPlan(order, starts)


def chunk_batches(x: FeatureReader, y: np.ndarray, batch_size: int, seed: int = 0, shuffle: bool = True):
    """A Keras PyDataset of (features, labels) batches of a streamed reader, for `fit` (shuffle=True, with
    `shuffle=False` given to fit: the order is this dataset's) and validation (shuffle=False).

    ceil(n / batch_size) batches of `batch_size` rows, as in memory, so the learning-rate schedule sees the same
    steps; class weights are left to Keras (`class_weight=`), which applies them to a PyDataset's labels with
    the same function it uses for arrays. Epoch e is planned from (seed, e): reproducible."""
    tensorflow()
    import keras

    y = np.asarray(y)

    class ChunkBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self._plan: EpochPlan | None = None
            self._buffers: dict[int, np.ndarray] = {}  # buffer number -> (rows, D) float32, in plan order

        def __len__(self):
            return -(-len(x) // batch_size)

        def plan(self, epoch: int | None = None) -> EpochPlan:
            if epoch is not None and epoch != self.epoch:
                return plan_epoch(x, shuffle, seed, epoch)
            if self._plan is None:
                self._plan = plan_epoch(x, shuffle, seed, self.epoch)
            return self._plan

        def on_epoch_end(self):
            self.epoch += 1
            self._plan = None
            self._buffers.clear()  # free the budget before validation and the next epoch

        def _buffer(self, k: int) -> np.ndarray:
            if k not in self._buffers:
                for old in [b for b in self._buffers if b < k]:  # buffers are visited in order
                    del self._buffers[old]
                p = self.plan()
                self._buffers[k] = x[p.order[p.starts[k]:p.starts[k + 1]]]
            return self._buffers[k]

        def __getitem__(self, i):
            p = self.plan()
            lo, hi = i * batch_size, min(len(x), (i + 1) * batch_size)
            parts, pos = [], lo
            while pos < hi:
                k = p.buffer_of(pos)
                end = min(hi, int(p.starts[k + 1]))
                parts.append(self._buffer(k)[pos - p.starts[k]:end - p.starts[k]])
                pos = end
            xb = parts[0] if len(parts) == 1 else np.concatenate(parts)  # (b, D) float32
            return xb, y[p.order[lo:hi]]

    return ChunkBatches()
