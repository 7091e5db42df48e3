"""The HDF5 bottleneck cache: layout, provenance and reading. Writing lives in `cache_write.py`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .. import __version__
from ..errors import CacheError
from ..images import view_names
from ..util import tensorflow
from .checks import check_cache
from .handle import SCHEMA_VERSION, open_cache
from .journal import journal_dir, pending_batches
from .pending import writer_pid
from .virtual import check_virtual


@dataclass(frozen=True)
class CacheConfig:
    """Everything that determines the features; two caches are comparable only if these match."""

    backbone: str
    weights: str  # "imagenet" | "none" | path of a weights file
    weights_sha256: str
    seed: int
    input_size: int
    pooling: str
    preprocessing: str
    dtype: str  # storage dtype of `features`
    num_features: int
    precision: str = "float32"  # compute precision of the backbone (older caches all computed in float32)
    xla: bool = False  # forward pass compiled with XLA

    @property
    def weights_identity(self) -> str:
        if self.weights_sha256:
            return f"file sha256={self.weights_sha256[:12]}"
        return f"none (seed {self.seed})" if self.weights == "none" else self.weights

    def mismatch(self, other: CacheConfig) -> str | None:
        """Describe the first difference that would mix incomparable features, or None."""
        checks = [("backbone", self.backbone, other.backbone),
                  ("weights", self.weights_identity, other.weights_identity),
                  ("image size", self.input_size, other.input_size),
                  ("pooling", self.pooling, other.pooling),
                  ("dtype", self.dtype, other.dtype),
                  ("compute precision", self.precision, other.precision),
                  ("XLA", "on" if self.xla else "off", "on" if other.xla else "off")]
        for what, mine, theirs in checks:
            if mine != theirs:
                return f"{what} {theirs} (cache) vs {mine} (this run)"
        return None

    @classmethod
    def from_attrs(cls, attrs) -> CacheConfig:
        values = {k: attrs[k] for k in cls.__dataclass_fields__ if k in attrs}  # older caches lack the newer keys
        values["seed"], values["input_size"], values["num_features"] = (
            int(values["seed"]), int(values["input_size"]), int(values["num_features"]))
        if "xla" in values:
            values["xla"] = bool(values["xla"])
        return cls(**{k: (v.decode() if isinstance(v, bytes) else v) for k, v in values.items()})


TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly")


def _installed_version(*distributions: str) -> str | None:
    from importlib import metadata

    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str]:
    """Versions a cache or run records. TensorFlow's and Keras' come from the installed packages' metadata:
    importing TensorFlow (~5 s) only to read a string made `merge` and `info`-sized commands slow."""
    tf_version = _installed_version(*TENSORFLOW_DISTRIBUTIONS)
    keras_version = _installed_version("keras")
    if tf_version is None or keras_version is None:  # an unusual install: ask the modules themselves
        tf = tensorflow()
        import keras  # after tensorflow(): its import is the slow, noisy part of start-up

        tf_version, keras_version = tf.__version__, keras.__version__
    return {"bottleneck": __version__, "tensorflow": tf_version, "keras": keras_version,
            "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "numpy": np.__version__}


@dataclass
class CacheData:
    """A cache loaded for training: features in memory plus per-row metadata."""

    path: Path
    config: CacheConfig
    class_names: list[str]
    features: np.ndarray  # (N, D) float32; a FeatureReader when feature_store.load_cache_within streams them
    labels: np.ndarray  # (N,) int32, -1 unknown
    image_ids: np.ndarray  # (N,) str
    paths: np.ndarray  # (N,) str, relative to `root`
    groups: np.ndarray  # (N,) str, "" when none
    sha256: np.ndarray
    sizes: np.ndarray  # (N, 2) int32 width, height
    attrs: dict = field(default_factory=dict)
    views_ok: np.ndarray | None = None  # (N,) bool: row has all `n_views` stored views
    class_map: dict | None = None  # class_map.map_classes's record when the labels were relabelled by a map
    # metadata columns (`extract --meta-columns`): name -> (N,) str, "" when missing; {} for caches without any
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    # (N,) uint64 perceptual fingerprints (images.fingerprint), NO_FINGERPRINT (0) where a row has none; None for a
    # cache without the column (extracted before fingerprints: rerunning its extract command adds them)
    phash: np.ndarray | None = None

    @property
    def n_views(self) -> int:
        return int(self.attrs.get("views", 0))

    @property
    def root(self) -> Path:
        return Path(self.attrs.get("root", ""))


STRING_DTYPE = h5py.string_dtype("utf-8")  # every string column of a cache
PHASH = "phash"  # the (N,) uint64 fingerprint column; absent from caches extracted before fingerprints
# How a cache gets the fingerprints it lacks: what `info` and the checks that need fingerprints tell the user.
ADD_FINGERPRINTS = ("rerun the extract command that made the cache (same images, same options) to add them: it only "
                    "decodes the images, no backbone pass")
META = "meta"  # the group of the metadata columns: one (N,) string dataset each, named by attribute meta_columns


def meta_dataset(column: str) -> str:
    return f"{META}/{column}"


def stored_meta_columns(f) -> list[str]:
    """The metadata columns an open cache holds, in order (attribute meta_columns; none in older caches)."""
    raw = f.attrs.get("meta_columns", "[]")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def read_phash(f, n: int) -> np.ndarray | None:
    """The first n rows' fingerprints of an open cache, 0 (NO_FINGERPRINT) past the column's end (rows added by a
    version without fingerprints); None when the cache has no such column."""
    if PHASH not in f:
        return None
    out = np.zeros(n, np.uint64)
    stored = f[PHASH][: min(n, f[PHASH].shape[0])]
    out[: len(stored)] = stored
    return out


def decode_strings(values) -> np.ndarray:
    """An HDF5 string column (bytes or str) -> an object array of str."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def read_attrs(path: Path) -> dict:
    with open_cache(path) as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def check_readable(path: Path) -> None:
    """Refuse a missing file, a file that is not a bottleneck cache, one of a newer schema, or one whose attributes
    or datasets are damaged (checks.check_cache), and a virtual merge whose sources, to the bottom, are missing
    or differ from what the merge recorded (virtual.check_virtual): every reader calls this first."""
    if not path.exists():
        raise CacheError(f"cache {path} does not exist; create it with `bottleneck extract DATA --cache {path}`")
    with open_cache(path) as f:
        if f.attrs.get("virtual"):  # HDF5 reads rows a source lacks as zeros: refuse rather than train on them
            check_virtual(f, path)
        check_cache(f, path, SCHEMA_VERSION)


def load_cache(path: str | Path, dtype=np.float32, features: bool = True) -> CacheData:
    """Read a whole cache into memory (features as `dtype`, or an empty (0, D) array when `features` is
    False, for callers that need only the rows); never touches an image. Under a memory budget, see
    `feature_store.load_cache_within`."""
    path = Path(path)
    check_readable(path)
    with open_cache(path) as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        n = int(attrs["n_rows"])
        return CacheData(
            path=path, config=CacheConfig.from_attrs(attrs), class_names=json.loads(attrs["class_names"]),
            features=(f["features"][:n] if features else np.zeros((0, f["features"].shape[1]))).astype(dtype),
            labels=f["label"][:n].astype(np.int32),
            image_ids=decode_strings(f["image_id"][:n]), paths=decode_strings(f["path"][:n]),
            groups=decode_strings(f["group"][:n]),
            sha256=decode_strings(f["sha256"][:n]), sizes=f["orig_size"][:n].astype(np.int32), attrs=attrs,
            views_ok=f["views_ok"][:n].astype(bool) if "views_ok" in f else np.zeros(n, bool),
            meta={c: decode_strings(f[meta_dataset(c)][:n]) for c in stored_meta_columns(f)},
            phash=read_phash(f, n))


def read_views(path: str | Path, rows: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """Stored views (len(rows), V, D) of the given rows (all rows when None), read in row order."""
    with open_cache(path) as f:
        if "views" not in f:
            raise CacheError(f"cache {path} holds no augmented views; extract with --views N to add them")
        ds = f["views"]
        if rows is None:
            return ds[: int(f.attrs["n_rows"])].astype(dtype)
        rows = np.asarray(rows)
        order = np.argsort(rows)
        out = np.empty((len(rows), ds.shape[1], ds.shape[2]), dtype)
        out[order] = ds[rows[order]] if len(rows) else out[order]  # h5py reads increasing indices
        return out


def read_failed(path: str | Path, with_sha: bool = False) -> list[tuple]:
    """(relative path, reason) of every image the cache records as failed, plus its sha256 when `with_sha`."""
    with open_cache(path) as f:
        if "failed" not in f:
            return []
        cols = [decode_strings(f[f"failed/{k}"][:]) for k in ("path", "reason", "sha256")[:3 if with_sha else 2]]
        return list(zip(*cols))


def recorded_config(path: Path) -> CacheConfig | None:
    """The configuration a cache (or the journal of its interrupted first run) was extracted with, or None."""
    if path.exists():
        check_readable(path)
        return CacheConfig.from_attrs(read_attrs(path))
    meta = journal_dir(path) / "config.json"
    return CacheConfig(**json.loads(meta.read_text())) if meta.is_file() else None


def describe_cache(path: str | Path) -> dict:
    """What `bottleneck info` shows: configuration, counts per class, failed images, pending batches, and the
    metadata columns with how many rows have a value in each."""
    path = Path(path)
    if not path.exists() and pending_batches(path):
        pid = writer_pid(path)
        if pid is not None:
            raise CacheError(f"cache {path} is being created by a running extract (pid {pid}): its batches are "
                             "journaled, none committed yet; run info again in a moment")
        raise CacheError(f"cache {path} has only journaled batches from an interrupted first run; "
                         "rerun the same extract command to complete it")
    data = load_cache(path, features=False)
    labels = data.labels
    counts = {name: int((labels == i).sum()) for i, name in enumerate(data.class_names)}
    return {"config": asdict(data.config), "attrs": data.attrs, "rows": len(labels),
            "groups": len({g for g in data.groups if g}), "class_counts": counts,
            "unlabeled": int((labels < 0).sum()), "failed": read_failed(path), "views": data.n_views,
            "view_names": view_names(data.n_views), "rows_with_views": int(data.views_ok.sum()),
            "meta_columns": {c: int(sum(1 for v in values if v)) for c, values in data.meta.items()},
            "fingerprints": None if data.phash is None else int(np.count_nonzero(data.phash)),
            "pending_batches": len(pending_batches(path)), "writer_pid": writer_pid(path)}
