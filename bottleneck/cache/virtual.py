"""Virtual caches (`merge --virtual`) checked to the bottom before anything reads them.

A virtual cache holds no rows: its datasets map rows 0..n of each source file (a shard, or another virtual cache).
HDF5 reads whatever a source holds *now*, and fills rows a source no longer has with zeros and empty strings, so a
shard re-extracted after the merge would be read as zero rows with empty ids, or as rows under the wrong class.
The merge therefore records, per source, what it read (attribute `virtual_record`, see `source_record`): the
row count, the class list and the SHA-256 of the ids in row order. Every reader (`check_readable`, and the
streamed readers in features.py before each read when a source file changed) compares each source with its record,
recursively when the source is itself virtual; any difference is refused in one line naming the source and the
merge to run again.

The check reads each source's attributes and its `image_id` column, never its features: about 0.7 s per million
rows and level of virtual merges (130 ms for 200,000 rows, 290 ms for them through a virtual merge of a virtual
merge, on this project's 2-core test machine), once per open.

Virtual caches written before the record existed are checked as far as the file allows (each source is there, holds
the rows the virtual datasets map and the same class list up to classes appended since) and say so in one warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from ..errors import BottleneckWarning, CacheError
from .checks import check_cache, check_virtual_record, check_virtual_sources
from .handle import SCHEMA_VERSION, open_cache

WARNED: set[tuple[str, int]] = set()  # legacy virtual caches already warned about in this process (path, mtime)


def _attrs(f) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def ids_sha256(f, n: int) -> str:
    """SHA-256 of the first n ids of the open cache `f`, in row order, as UTF-8 joined by NUL (which HDF5 strings
    cannot hold, so the joining is unambiguous)."""
    ids = f["image_id"][:n]
    return hashlib.sha256(b"\0".join(i if isinstance(i, bytes) else str(i).encode("utf-8", "surrogateescape")
                                     for i in ids)).hexdigest()


def source_record(f, file: str) -> dict:
    """What a virtual merge reads from the open source cache `f` (named `file` relative to the merged cache)."""
    n = int(f.attrs["n_rows"])
    return {"file": file, "n_rows": n, "class_names": json.loads(_attrs(f)["class_names"]),
            "ids_sha256": ids_sha256(f, n)}


def _listed(names: list[str]) -> str:
    return ", ".join(names) if names else "none"


def _difference(record: dict | None, f, attrs: dict, mapped: int, classes: list[str]) -> str | None:
    """How the open source `f` differs from what the merge recorded (`record`), or from what a merge without a
    record maps (`mapped` rows, the merged cache's `classes`); None when it does not."""
    n = int(attrs["n_rows"])
    now = json.loads(attrs["class_names"])
    if record is None:
        if n < mapped:
            return f"has {n} rows, the merge mapped {mapped}"
        if now[:len(classes)] != classes:
            return f"has the classes {_listed(now)}, the merge's are {_listed(classes)}"
        return None
    if n != record["n_rows"]:
        return f"has {n} rows, the merge recorded {record['n_rows']}"
    if now != record["class_names"]:
        return f"has the classes {_listed(now)}, the merge recorded {_listed(record['class_names'])}"
    if ids_sha256(f, n) != record["ids_sha256"]:
        return f"holds other image ids than the merge recorded (the same {n} rows, another order or other ids)"
    return None


def _mapped_rows(f) -> dict[str, int]:
    """Rows of each source file that the virtual `image_id` maps, by the file name as stored ({} if unreadable)."""
    rows: dict[str, int] = {}
    try:
        for m in f["image_id"].virtual_sources():
            (_lo,), (hi,) = m.src_space.get_select_bounds()
            rows[m.file_name] = max(rows.get(m.file_name, 0), int(hi) + 1)
    except (KeyError, ValueError, TypeError, OSError, RuntimeError):
        return {}
    return rows


def merge_again(path: Path, attrs: dict, chain: tuple[Path, ...] = (), without: str = "") -> str:
    """The merge command that rebuilds the virtual cache `path` (without its source `without`, gone for good), and
    the virtual caches above it (`chain`) after it."""
    sources = [os.path.normpath(path.parent / s) for s in check_virtual_sources(attrs, path) if s != without]
    named = " ".join(sources) if len(sources) <= 6 else f"{sources[0]} ... {sources[-1]} (its {len(sources)} shards)"
    partial = " --allow-partial" if without or json.loads(attrs.get("missing_shards", "[]") or "[]") else ""
    above = f", then {', '.join(str(p) for p in reversed(chain))} the same way" if chain else ""
    return f"bottleneck merge {named} --out {path} --virtual{partial}{above}"


def check_virtual(f, path: Path, chain: tuple[Path, ...] = ()) -> None:
    """Refuse the open virtual cache `f` (at `path`, read through the virtual caches `chain`) if a source file is
    missing, damaged, or differs from what its merge recorded, checking virtual sources the same way."""
    attrs = _attrs(f)
    sources = check_virtual_sources(attrs, path)
    records = check_virtual_record(attrs, path, sources)
    mapped = _mapped_rows(f) if records is None else {}
    classes = json.loads(attrs.get("class_names", "[]"))
    where = (f"cache {chain[0]} reads the virtual merge {path}, whose" if chain else
             f"cache {path} is a virtual merge whose")
    seen = {p.resolve() for p in (*chain, path)}
    for k, rel in enumerate(sources):
        src = path.parent / rel
        if not src.is_file():
            raise CacheError(f"{where} shard {rel} (relative to {path.parent}) is missing; put the shard file back "
                             f"beside it, or merge again without it: {merge_again(path, attrs, chain, rel)}")
        if src.resolve() in seen:
            raise CacheError(f"{where} shard {src} reads {path} itself (a loop of virtual merges); merge the shards "
                             "again into a new --out")
        with open_cache(src) as g:
            source_attrs = _attrs(g)
            if source_attrs.get("virtual"):
                check_virtual(g, src, (*chain, path))
            check_cache(g, src, SCHEMA_VERSION)
            diff = _difference(records[k] if records else None, g, source_attrs, mapped.get(rel, 0), classes)
        if diff:
            raise CacheError(f"{where} shard {src} changed since the merge: it {diff}; merge again: "
                             f"{merge_again(path, attrs, chain)}")
    if records is None:
        _warn_legacy(path, attrs)


def _warn_legacy(path: Path, attrs: dict) -> None:
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key in WARNED:  # once per cache per process: a command opens its cache several times
        return
    WARNED.add(key)
    warnings.warn(f"cache {path} is a virtual merge made before merges recorded what they read from each shard, so "
                  "its shards' image ids cannot be checked (only that each is there with the rows and classes it "
                  f"maps); merge it again to record them: {merge_again(path, attrs)}", BottleneckWarning,
                  stacklevel=3)


def source_stamps(path: Path, attrs: dict, seen: frozenset = frozenset()) -> tuple:
    """(file, inode, size, mtime, ctime) of every source file under the virtual cache `path` (attributes `attrs`),
    to the bottom; a missing file is stamped as such. () for a cache that is not virtual."""
    if not attrs.get("virtual"):
        return ()
    stamps: list[tuple] = []
    for rel in check_virtual_sources(attrs, path):
        src = path.parent / rel
        try:
            st = src.stat()
        except OSError:
            stamps.append((str(src), "missing"))
            continue
        stamps.append((str(src), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        if src.resolve() not in seen:
            with open_cache(src) as g:
                stamps += source_stamps(src, _attrs(g), seen | {path.resolve()})
    return tuple(stamps)


def source_files(path: Path) -> list[Path]:
    """Every file the cache at `path` reads its rows from, to the bottom ([] when it is not virtual)."""
    with open_cache(path) as f:
        return [Path(s[0]) for s in source_stamps(path, _attrs(f))]


def recheck(f, path: Path, known: tuple | None) -> tuple:
    """For a reader that opens the cache `f` again and again: its source stamps now, after checking the virtual
    cache to the bottom again when they differ from `known` (the stamps of its previous check; None: never)."""
    stamps = source_stamps(path, _attrs(f))
    if stamps and stamps != known:
        check_virtual(f, path)
    return stamps
