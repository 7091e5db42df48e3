"""Plain file helpers every stage shares: SHA-256 of a file, atomic writes, walking an image folder.

An atomic write goes to `<name>.tmp` beside the target and is renamed over it, so a reader (or a rerun
after a crash) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

HIDDEN_NAMES = frozenset({"Thumbs.db", "desktop.ini", "__MACOSX"})


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weights files and caches can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: Path, text: str, fsync: bool = False) -> Path:
    """Write `text` to `path` through `<path>.tmp` and a rename; `fsync` also survives a power cut."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_json_atomic(path: Path, obj, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent))


def is_hidden(name: str) -> bool:
    """Dot files and the litter of file managers (Thumbs.db, __MACOSX, ...): never data."""
    return name.startswith(".") or name in HIDDEN_NAMES


def walk_files(root: Path) -> list[Path]:
    """Every non-hidden regular file under root, in a stable order: a folder's files (sorted), then its
    subfolders' (sorted by name, depth first)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not is_hidden(f))
    return out
