"""Validation at the cache's door: its attributes and datasets checked before anything reads them, so that a
damaged file is refused in one line naming the file, the field and the fix instead of failing halfway with a
traceback. (Run directories and saved models are checked by `util/validate.py`.)

Nothing here writes: a refused cache is left exactly as it was."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CacheError

# Per-row datasets every cache has (created empty by the writer), and the configuration attributes that
# CacheConfig needs from every cache; newer optional ones (precision, xla, views...) may be absent.
ROW_DATASETS = ("features", "label", "image_id", "path", "group", "sha256", "orig_size")
CONFIG_INTS = ("seed", "input_size", "num_features")
CONFIG_STRS = ("backbone", "weights", "weights_sha256", "pooling", "preprocessing", "dtype")
REEXTRACT = "the cache is damaged: extract its images again into a new --cache"


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _int_attr(attrs, key: str, path: Path, minimum: int = 0) -> int:
    value = _text(attrs[key]) if key in attrs else None
    try:
        number = int(value)
        if isinstance(value, float) and value != number:
            raise ValueError
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        got = "missing" if value is None else repr(value) if isinstance(value, str) else str(value)
        raise CacheError(f"cache {path}: attribute {key} is {got}, not a whole number >= {minimum}; {REEXTRACT}")
    return number


def check_cache(f, path: Path, schema_version: int) -> None:
    """Refuse a cache (an open h5py.File) whose attributes or datasets the readers could not use: schema version,
    the configuration, the committed row count, the class list, the per-row datasets (metadata columns included)
    and the label range."""
    attrs = f.attrs
    if "schema_version" not in attrs:
        raise CacheError(f"{path} is not a bottleneck cache (no schema_version attribute); pass a file written by "
                         "`bottleneck extract`")
    version = _int_attr(attrs, "schema_version", path, minimum=1)
    if version > schema_version:
        raise CacheError(f"cache {path} has schema version {version}, newer than this bottleneck understands "
                         f"({schema_version}); upgrade bottleneck")
    for key in CONFIG_INTS:
        _int_attr(attrs, key, path, minimum=0 if key == "seed" else 1)
    for key in CONFIG_STRS:
        if key not in attrs or not isinstance(_text(attrs[key]), str):
            raise CacheError(f"cache {path}: attribute {key} is missing or not text; {REEXTRACT}")
    n = _int_attr(attrs, "n_rows", path)
    raw = _text(attrs.get("class_names"))
    try:
        classes = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        classes = None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise CacheError(f"cache {path}: attribute class_names is {'missing' if raw is None else repr(raw)[:60]}, "
                         f"not a JSON list of class names; {REEXTRACT}")
    if len(set(classes)) != len(classes):
        raise CacheError(f"cache {path}: attribute class_names names a class twice ({classes}); {REEXTRACT}")
    for name in (*ROW_DATASETS, *(f"meta/{c}" for c in _meta_columns(attrs, path))):
        ds = f.get(name)
        if ds is None or not hasattr(ds, "shape"):
            raise CacheError(f"cache {path}: dataset {name!r} is missing; {REEXTRACT}")
        if len(ds.shape) < 1 or ds.shape[0] < n:
            raise CacheError(f"cache {path}: dataset {name!r} holds {ds.shape[0] if ds.shape else 0} rows but "
                             f"attribute n_rows says {n} are committed; {REEXTRACT}")
    phash = f.get("phash")  # optional (older caches have none); may be shorter than n_rows: readers pad with 0
    if phash is not None and (not hasattr(phash, "shape") or len(phash.shape) != 1 or phash.dtype != "uint64"):
        raise CacheError(f"cache {path}: dataset 'phash' is {getattr(phash, 'dtype', 'a group')} of shape "
                         f"{getattr(phash, 'shape', '?')}, not (rows,) uint64 fingerprints; delete it with h5py "
                         "(`del f['phash']`) and rerun the extract command to compute them again")
    width = f["features"].shape[1] if len(f["features"].shape) == 2 else None
    if width != int(_text(attrs["num_features"])):
        raise CacheError(f"cache {path}: dataset 'features' has shape {f['features'].shape}, not (rows, "
                         f"{_text(attrs['num_features'])}) as attribute num_features says; {REEXTRACT}")
    labels = f["label"][:n]
    if n and (labels.min() < -1 or labels.max() >= len(classes)):
        bad = int(labels.max()) if labels.max() >= len(classes) else int(labels.min())
        raise CacheError(f"cache {path}: dataset 'label' holds class index {bad}, outside the {len(classes)} "
                         f"classes of attribute class_names (-1 is unlabeled); {REEXTRACT}")


def _meta_columns(attrs, path: Path) -> list[str]:
    """Attribute meta_columns: a JSON list of distinct column names (absent in older caches: none)."""
    raw = _text(attrs.get("meta_columns", "[]"))
    try:
        columns = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        columns = None
    if (not isinstance(columns, list) or not all(isinstance(c, str) and c and "/" not in c for c in columns)
            or len(set(columns)) != len(columns)):
        raise CacheError(f"cache {path}: attribute meta_columns is {raw!r:.60}, not a JSON list of distinct metadata "
                         f"column names; {REEXTRACT}")
    return columns


def check_virtual_sources(attrs: dict, path: Path) -> list[str]:
    """The shard files a virtual merge reads its rows from (attribute virtual_sources, a JSON list)."""
    raw = attrs.get("virtual_sources", "[]")
    try:
        sources = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        sources = None
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise CacheError(f"cache {path}: attribute virtual_sources is {raw!r:.60}, not a JSON list of shard files; "
                         "merge the shards again")
    return sources


def check_virtual_record(attrs: dict, path: Path, sources: list[str]) -> list[dict] | None:
    """What the merge read from each source of a virtual cache (attribute virtual_record, a JSON list in the order
    of virtual_sources: file, n_rows, class_names, ids_sha256), or None for a merge made before the record."""
    raw = attrs.get("virtual_record")
    if raw is None:
        return None
    try:
        records = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        records = None
    if not (isinstance(records, list) and all(isinstance(r, dict) for r in records)
            and [r.get("file") for r in records] == sources
            and all(type(r.get("n_rows")) is int and r["n_rows"] >= 0 and isinstance(r.get("ids_sha256"), str)
                    and isinstance(r.get("class_names"), list) for r in records)):
        raise CacheError(f"cache {path}: attribute virtual_record is {raw!r:.60}, not a JSON list of what the merge "
                         "read from each file of virtual_sources; merge the shards again")
    return records
