"""Merging caches (`extract --shard I/N` outputs) into one: by copying rows through `CacheWriter`, or as HDF5
virtual datasets over the shards' own files (`virtual=True`: no copy, the merged file is a few kilobytes).

Before anything is written the inputs are checked against each other, so a shard cannot silently go missing or
count twice: one configuration; each file and each shard once; every shard from one split (same N) of one index
(same `index_fingerprint`, the SHA-256 of the whole index's sorted image ids); and none missing, unless
`allow_partial`. Caches that record no shard (whole extractions, older caches) merge as before, keyed by id.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from ..errors import CacheError, CacheMismatchError, InputError
from .batch import ROW_FIELDS
from .handle import SCHEMA_VERSION
from .row_keys import KEYS, read_keys
from .store import (
    META,
    PHASH,
    STRING_DTYPE,
    CacheConfig,
    check_readable,
    decode_strings,
    load_cache,
    meta_dataset,
    open_cache,
    read_attrs,
    read_failed,
    read_phash,
    read_views,
    stored_meta_columns,
)
from .virtual import source_files, source_record
from .writer import CacheWriter


@dataclass(frozen=True)
class MergeResult:
    out: Path
    rows: int  # rows of the merged cache
    caches: int  # caches merged
    fingerprint: str = ""  # the index the shards came from ("" when they record none)
    shards: tuple[str, ...] = ()  # shards the merged cache holds, "I/N"
    missing: tuple[str, ...] = ()  # shards of that index it lacks (only with allow_partial)
    virtual: bool = False


@dataclass(frozen=True)
class _Split:
    """What the inputs' shard attributes say, checked: one index, one N, each shard once."""

    fingerprint: str = ""
    images: int = 0
    held: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def shards_held(attrs: dict) -> list[str]:
    """The shards a cache holds: its own `shard`, or those a merge recorded; [] for a whole or older cache."""
    if attrs.get("shard"):
        return [attrs["shard"]]
    return json.loads(attrs["shards"]) if attrs.get("shards") else []


def _is_whole(attrs: dict, fingerprint: str) -> bool:
    """An unsharded extraction of the index `fingerprint` (a merge records its shards instead)."""
    return attrs.get("shard") == "" and not attrs.get("shards") and attrs.get("index_fingerprint") == fingerprint


def _i_n(shard: str) -> tuple[int, int]:
    i, n = shard.split("/")
    return int(i), int(n)


def _listed(shards: list[str]) -> str:
    return shards[0] if len(shards) == 1 else ", ".join(shards[:-1]) + " and " + shards[-1]


def check_split(paths: list[Path], attrs: list[dict], out: Path | None = None, out_attrs: dict | None = None,
                allow_partial: bool = False) -> _Split:
    """Refuse, in one line naming the files, the same file or shard twice, shards of another index or another
    split, and missing shards (unless `allow_partial`). An existing `out` counts for the index, the split and
    completeness, not as a duplicate: merging a shard into a cache that holds it again refreshes its rows."""
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise InputError(f"cache {p} is passed twice ({seen[p.resolve()]} and {p}); pass each shard once")
        seen[p.resolve()] = p
    ref: tuple[Path, str, int, str] | None = None  # path, fingerprint, N, shard of the first shard seen
    held: dict[str, Path] = {}
    images = 0
    sources = list(zip(paths, attrs, [True] * len(paths)))
    if out is not None and out_attrs is not None:
        sources.append((out, out_attrs, False))
    for p, a, counts_twice in sources:
        fp = str(a.get("index_fingerprint", ""))
        for s in shards_held(a):
            n = _i_n(s)[1]
            if ref is None:
                ref, images = (p, fp, n, s), int(a.get("index_images", 0))
            elif fp != ref[1]:
                raise CacheMismatchError(f"cache {p} is shard {s} of another index (fingerprint {fp[:12]}...) than "
                                         f"{ref[0]} (shard {ref[3]}, fingerprint {ref[1][:12]}...): another dataset "
                                         "or another version of its metadata; merge the shards of one extraction")
            elif n != ref[2]:
                raise CacheMismatchError(f"cache {p} is shard {s} but {ref[0]} is shard {ref[3]} of the same index: "
                                         "shards of different splits overlap; extract every shard with "
                                         f"--shard I/{ref[2]}")
            if s in held and counts_twice:
                raise InputError(f"shard {s} of index {fp[:12]}... is passed twice: {held[s]} and {p}; pass each "
                                 "shard once")
            held.setdefault(s, p)
    if ref is None:
        return _Split()
    everything = [f"{i}/{ref[2]}" for i in range(ref[2])]
    if any(_is_whole(a, ref[1]) for _, a, _ in sources):  # a whole extraction of the same index holds every shard
        held = dict.fromkeys(everything, ref[0]) | held
    order = sorted(held, key=lambda s: _i_n(s)[0])
    missing = [s for s in everything if s not in held]
    if missing and not allow_partial:
        many = len(missing) > 1
        raise InputError(f"shard{'s' if many else ''} {_listed(missing)} of index {ref[1][:12]}... "
                         f"{'are' if many else 'is'} missing (given: {', '.join(str(p) for p in paths)}): pass "
                         f"{'them' if many else 'it'}, or --allow-partial to merge what is here")
    return _Split(ref[1], images, tuple(order), tuple(missing))


def _check_configs(paths: list[Path], attrs: list[dict]) -> CacheConfig:
    config = CacheConfig.from_attrs(attrs[0])
    for p, a in zip(paths[1:], attrs[1:]):
        diff = CacheConfig.from_attrs(a).mismatch(config)
        if diff:
            raise CacheMismatchError(f"cannot merge {p} into {paths[0]}: {diff.replace('(cache)', f'({p.name})')}"
                                     .replace("(this run)", f"({paths[0].name})"))
    return config


def merge_caches(shards: list[str | Path], out: str | Path, batch_rows: int = 4096, virtual: bool = False,
                 allow_partial: bool = False) -> MergeResult:
    """Merge caches of one configuration (e.g. `extract --shard I/N` outputs) into `out`.

    Copying (the default), rows are keyed by image id, so merging into an existing cache adds nothing twice;
    views are merged when every shard has the same number; metadata columns are the union of the shards', "" where
    a shard lacks one; fingerprints are kept, NO_FINGERPRINT (0) for the rows of a shard without them. `virtual`
    writes a new `out` of HDF5 virtual datasets over the shards' files instead (referred to by paths relative to
    `out`, so the folder can move whole)."""
    paths, out = [Path(s) for s in shards], Path(out)
    if not paths:
        raise CacheError("merge needs at least one shard cache")
    for p in paths:
        check_readable(p)
    attrs = [read_attrs(p) for p in paths]
    config = _check_configs(paths, attrs)
    if virtual:
        _check_virtual_out(out, paths)
    out_attrs = read_attrs(out) if out.exists() and not virtual else None
    if out_attrs is not None and out_attrs.get("virtual"):
        raise CacheError(f"cache {out} is a virtual merge of shards; extract into a shard, or merge by copying "
                         "into another --out")
    split = check_split(paths, attrs, out, out_attrs, allow_partial)
    info = {k: attrs[0].get(k, "") for k in ("root", "source", "metadata", "identity")}
    info["dataset"] = re.sub(r"-shard\d+of\d+$", "", str(attrs[0].get("dataset", "")))
    info["merged_from"] = json.dumps([str(p) for p in paths], allow_nan=False)
    if split.held:  # a merge holds shards of one index; it is whole once none is missing
        info.update(shard="", shards=json.dumps(list(split.held), allow_nan=False),
                    missing_shards=json.dumps(list(split.missing), allow_nan=False),
                    index_fingerprint=split.fingerprint, index_images=split.images)
    if virtual:
        rows = _write_virtual(out, paths, attrs, config, info)
    else:
        rows = _copy(out, paths, config, info, batch_rows)
    return MergeResult(out, rows, len(paths), split.fingerprint, split.held, split.missing, virtual)


def _copy(out: Path, paths: list[Path], config: CacheConfig, info: dict, batch_rows: int) -> int:
    datas = [load_cache(p) for p in paths]
    n_views = {d.n_views for d in datas}
    classes = sorted({c for d in datas for c in d.class_names})
    with CacheWriter(out, config, info, tuple(classes)) as writer:
        for d in datas:
            views_all = read_views(d.path) if len(n_views) == 1 and d.n_views else None
            for start in range(0, len(d.labels), batch_rows):
                sl = slice(start, start + batch_rows)
                metas = [{c: str(v[k]) for c, v in d.meta.items()} for k in range(*sl.indices(len(d.labels)))]
                prints = d.phash[sl] if d.phash is not None else np.zeros(len(metas), np.uint64)
                rows = [dict(image_id=i, path=p, label=d.class_names[lab] if lab >= 0 else None, group=g, sha256=s,
                             width=int(w), height=int(h), meta=m, **({"phash": int(ph)} if ph else {}))
                        for i, p, lab, g, s, (w, h), m, ph in zip(d.image_ids[sl], d.paths[sl], d.labels[sl],
                                                                d.groups[sl], d.sha256[sl], d.sizes[sl], metas, prints)]
                views = views_all[sl] if views_all is not None else None
                writer.write_batch(rows, d.features[sl], views=views, view_lo=1 if views is not None else 0)
            failed = read_failed(d.path, with_sha=True)  # (path, reason, sha256): the record as the shard has it
            if failed:
                writer.write_batch([], None, failed)
    return int(read_attrs(out)["n_rows"])


def _check_virtual_out(out: Path, paths: list[Path]) -> None:
    """--virtual writes a new file, or rebuilds the virtual merge at `out` (merging again after a shard changed):
    never over a cache that holds rows of its own, nor over a file that this merge reads."""
    if not out.exists():
        return
    try:
        rebuild = bool(read_attrs(out).get("virtual"))
    except CacheError:
        rebuild = False
    if not rebuild:
        raise InputError(f"--out {out} exists; --virtual writes a new file: remove it or pass another --out")
    if out.resolve() in {q.resolve() for p in paths for q in (p, *source_files(p))}:
        raise InputError(f"--out {out} is one of the caches this merge reads (or a shard of one); pass another --out")


def _write_virtual(out: Path, paths: list[Path], attrs: list[dict], config: CacheConfig, info: dict) -> int:
    """`out` as virtual datasets over rows 0..n_rows of each shard's datasets; the small failed/ table is copied,
    and what was read from each shard is recorded (attribute virtual_record, checked by every reader). Built
    beside `out` and renamed into place, as a first commit is (an older virtual `out` is replaced whole)."""
    classes = [json.loads(a["class_names"]) for a in attrs]
    for p, c in zip(paths[1:], classes[1:]):
        if c != classes[0]:
            raise CacheMismatchError(f"the class lists of {paths[0]} ({', '.join(classes[0])}) and {p} "
                                     f"({', '.join(c)}) differ, so their label indices disagree; merge by copying "
                                     "(drop --virtual), which relabels rows")
    views = {int(a.get("views", 0)) for a in attrs}
    n_views = views.pop() if len(views) == 1 else 0  # as the copying merge: views only when every shard agrees
    names = ["features", *ROW_FIELDS, "label", "orig_size", KEYS] + (["views", "views_ok"] if n_views else [])
    parts, keys, failed, metas, records = [], [], {}, [], []
    for p in paths:
        rel = os.path.relpath(p.resolve(), out.resolve().parent)
        with open_cache(p) as f:
            n = int(f.attrs["n_rows"])
            metas.append(stored_meta_columns(f))
            shapes = {k: (f[k].shape, f[k].dtype) for k in [*names, PHASH, *map(meta_dataset, metas[-1])] if k in f}
            keys.append(read_keys(f, n))  # computed for caches older than the keys
            records.append(source_record(f, rel))
        parts.append((rel, n, shapes))
        for path, reason, sha in read_failed(p, with_sha=True):
            failed.setdefault(path, (reason, sha))
    total = sum(n for _, n, _ in parts)
    if not total:
        raise CacheError(f"the caches {', '.join(map(str, paths))} hold no rows; nothing to merge")
    # The union of the metadata columns: virtual where every shard has the column, else copied with "" filled in.
    columns = list(dict.fromkeys(c for cols in metas for c in cols))
    names += [meta_dataset(c) for c in columns if all(c in cols for cols in metas)]
    copied = {c: _meta_values(paths, [n for _, n, _ in parts], metas, c) for c in columns
              if not all(c in cols for cols in metas)}
    stored_keys = all(KEYS in s and s[KEYS][0][0] >= n for _, n, s in parts)
    prints = _virtual_phash(paths, parts, names)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.require_group(META)
            for name in names:
                if name == KEYS and not stored_keys:
                    f.create_dataset(KEYS, data=np.concatenate(keys), maxshape=(None, 2), chunks=(8192, 2))
                    continue
                shape, dtype = parts[0][2][name]
                layout = h5py.VirtualLayout(shape=(total, *shape[1:]), dtype=dtype)
                start = 0
                for rel, n, shapes in parts:
                    if n:
                        layout[start:start + n] = h5py.VirtualSource(rel, name, shape=shapes[name][0],
                                                                     dtype=dtype)[:n]
                    start += n
                f.create_virtual_dataset(name, layout, fillvalue=0 if dtype.kind != "O" else None)
            if prints is not None:
                f.create_dataset(PHASH, data=prints, maxshape=(None,), chunks=(8192,))
            for c, values in copied.items():
                f.create_dataset(meta_dataset(c), data=np.array(values, dtype=object), dtype=STRING_DTYPE,
                                 maxshape=(None,), chunks=(4096,))
            for k, col in (("path", list(failed)), ("reason", [v[0] for v in failed.values()]),
                           ("sha256", [v[1] for v in failed.values()])):
                f.create_dataset(f"failed/{k}", data=np.array(col, dtype=object), dtype=STRING_DTYPE,
                                 maxshape=(None,), chunks=(1024,))
            f.attrs.update(asdict(config))
            f.attrs.update(schema_version=SCHEMA_VERSION, n_rows=total,
                           class_names=json.dumps(classes[0], allow_nan=False),
                           views=n_views, library_versions=attrs[0].get("library_versions", "{}"),
                           created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), virtual=True,
                           virtual_sources=json.dumps([rel for rel, _, _ in parts], allow_nan=False),
                           virtual_record=json.dumps(records, allow_nan=False),
                           meta_columns=json.dumps(columns, allow_nan=False), **info)
            f.attrs["updated"] = f.attrs["created"]
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return total


def _virtual_phash(paths: list[Path], parts: list[tuple], names: list[str]) -> np.ndarray | None:
    """Fingerprints of a virtual merge: virtual when every shard holds them for all its rows (PHASH joins `names`),
    else the shards' rows copied in turn, 0 (NO_FINGERPRINT) where a shard has none; None when no shard has any."""
    if all(PHASH in shapes and shapes[PHASH][0][0] >= n for _, n, shapes in parts):
        names.append(PHASH)
        return None
    if not any(PHASH in shapes for _, _, shapes in parts):
        return None
    out = []
    for p, (_, n, _) in zip(paths, parts):
        with open_cache(p) as f:
            got = read_phash(f, n)
        out.append(got if got is not None else np.zeros(n, np.uint64))
    return np.concatenate(out)


def _meta_values(paths: list[Path], rows: list[int], metas: list[list[str]], column: str) -> list[str]:
    """A metadata column over every shard's committed rows in turn: "" for the rows of a shard without it."""
    values: list[str] = []
    for p, n, cols in zip(paths, rows, metas):
        if column in cols:
            with open_cache(p) as f:
                values += list(decode_strings(f[meta_dataset(column)][:n]))
        else:
            values += [""] * n
    return values
