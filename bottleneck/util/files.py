"""Plain file helpers every stage shares: SHA-256 of a file, atomic writes, walking an image folder.

An atomic write goes to `<name>.tmp` beside the target and is renamed over it, so a reader (or a rerun
after a crash) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import numbers
import os
import stat
from dataclasses import dataclass
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
    """`obj` as strict JSON, atomically. NaN and the infinities raise ValueError (`allow_nan=False`): Python would
    write them as bare `NaN`/`Infinity`, which strict JSON readers (jq, JavaScript, most languages) refuse. A value
    that may be undefined is None at its source; the writers of metrics pass `finite_or_null(metrics)`."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, allow_nan=False))


def finite_or_null(obj):
    """`obj` with every NaN or infinite float (numpy's included) replaced by None, through dicts, lists and tuples.

    Only for metrics, where a figure can be undefined by the data (an AUC over one class); a configuration or a
    state keeps a non-finite value an error, so that a bug is not written down as null."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral) and not math.isfinite(obj):
        return None
    return obj


def is_hidden(name: str) -> bool:
    """Dot files and the litter of file managers (Thumbs.db, __MACOSX, ...): never data."""
    return name.startswith(".") or name in HIDDEN_NAMES


# Why a link was not followed (or a file not read): listed by `extract`, never dropped silently.
LINK_OUTSIDE = "symlink leaves the image folder (pass --follow-symlinks to follow it)"
LINK_LOOP = "symlink loop (it leads back into a folder above it)"
LINK_BROKEN = "broken symlink (its target does not exist)"
NOT_REGULAR = "not a regular file (a FIFO, socket or device would block or fail the read)"


@dataclass(frozen=True)
class Walk:
    """What `scan_folder` found under a root: paths are the root as given joined to the names walked."""
    files: tuple[Path, ...]  # every file once, in walk order
    reals: tuple[str, ...]  # ... and each one's real path (links resolved), in the same order
    folders: tuple[Path, ...]  # every folder walked (links to folders included), the root left out
    skipped: tuple[tuple[Path, str], ...]  # (path, reason): links not followed, special files, unreadable folders


def _walk_key(rel_parts: tuple[str, ...]) -> tuple:
    # A folder's files (sorted) before its subfolders (sorted, depth first): the order os.walk gives sorted.
    if not rel_parts:
        return ()
    return tuple((1, name) for name in rel_parts[:-1]) + ((0, rel_parts[-1]),)


def scan_folder(root: str | os.PathLike, follow_symlinks: bool = False) -> Walk:
    """Every non-hidden regular file under `root`, each real file once, and what was skipped and why.

    A symlink (to a file or a folder) is followed only when its resolved target lies inside `root`;
    `follow_symlinks` follows links that leave it too. Either way a folder is walked once: a link to a folder
    above it on its own path (the root's parents included) is a loop, and a link to a folder or file already
    walked is skipped, so nothing is found twice. Real paths are walked before any link, so a file reached
    both ways keeps its real path; between links, the first in walk order wins."""
    root = Path(root)
    try:
        boundary = Path(os.path.realpath(root, strict=True))
    except OSError:
        return Walk((), (), (), ())
    if not boundary.is_dir():
        return Walk((), (), (), ())
    walker = _Walker(root, boundary, follow_symlinks)
    walker.run()
    rel = lambda p: p.relative_to(root).parts  # noqa: E731
    files = sorted(walker.files.items(), key=lambda item: _walk_key(rel(item[1])))
    return Walk(tuple(p for _, p in files), tuple(r for r, _ in files),
                tuple(p for p in walker.folders.values() if p != root),
                tuple(sorted(walker.skipped, key=lambda s: _walk_key(rel(s[0])))))


class _Walker:
    """Depth first over real folders, then over the queued links in the order they were met (a stack, not
    recursion: a hostile tree can be thousands of folders deep)."""

    def __init__(self, root: Path, boundary: Path, follow: bool):
        self.root, self.boundary, self.follow = root, boundary, follow
        self.files: dict[str, Path] = {}  # real path -> path as walked
        self.folders: dict[tuple[int, int], Path] = {}  # (st_dev, st_ino) -> path as walked
        self.links: list[tuple[Path, tuple]] = []  # (link as walked, ids of the folders above it)
        self.skipped: list[tuple[Path, str]] = []
        # the root's own parents count as above every folder: a link to /, or to the root's parent, is a loop
        self.above_root = tuple(_dir_id(p) for p in boundary.parents)

    def run(self) -> None:
        self._walk(self.root, str(self.boundary), _dir_id(self.boundary), self.above_root)
        i = 0
        while i < len(self.links):  # links met while walking a link's folder join the end of the queue
            self._follow(*self.links[i])
            i += 1

    def _walk(self, path: Path, real: str, key: tuple[int, int], above: tuple) -> None:
        stack = [(path, real, key, above)]
        while stack:
            path, real, key, above = stack.pop()
            if key in self.folders:  # a bind mount, or a folder reached twice: walk it once
                self.skipped.append((path, f"folder already indexed as {self._show(self.folders[key])}"))
                continue
            self.folders[key] = path
            above = above + (key,)
            try:
                with os.scandir(path) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.skipped.append((path, f"cannot read folder: {exc.strerror or exc}"))
                continue
            subfolders = []
            for e in entries:
                if is_hidden(e.name):
                    continue
                p, r = path / e.name, os.path.join(real, e.name)
                try:
                    if e.is_symlink():
                        self.links.append((p, above))
                    elif e.is_dir(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        subfolders.append((p, r, (st.st_dev, st.st_ino), above))
                    elif e.is_file(follow_symlinks=False):
                        self.files.setdefault(r, p)
                    else:
                        self.skipped.append((p, NOT_REGULAR))
                except OSError as exc:  # vanished or unreadable between listing and stat
                    self.skipped.append((p, f"cannot read: {exc.strerror or exc}"))
            stack.extend(reversed(subfolders))

    def _follow(self, link: Path, above: tuple) -> None:
        try:
            target = os.path.realpath(link, strict=True)
            st = os.stat(target)
        except FileNotFoundError:
            self.skipped.append((link, LINK_BROKEN))
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self.skipped.append((link, LINK_LOOP))
            else:
                self.skipped.append((link, f"cannot read symlink target: {exc.strerror or exc}"))
            return
        if not self.follow and not Path(target).is_relative_to(self.boundary):
            self.skipped.append((link, LINK_OUTSIDE))
        elif stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in above:
                self.skipped.append((link, LINK_LOOP))
            elif key in self.folders:
                self.skipped.append((link, f"symlink to a folder already indexed as {self._show(self.folders[key])}"))
            else:
                self._walk(link, target, key, above)
        elif stat.S_ISREG(st.st_mode):
            if target in self.files:
                self.skipped.append((link, f"symlink to a file already indexed as {self._show(self.files[target])}"))
            else:
                self.files[target] = link
        else:
            self.skipped.append((link, NOT_REGULAR))

    def _show(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() or "."


def _dir_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def walk_files(root: str | os.PathLike, follow_symlinks: bool = False) -> list[Path]:
    """Every non-hidden regular file under root once, in a stable order: a folder's files (sorted), then its
    subfolders' (sorted by name, depth first). Links are followed as `scan_folder` says."""
    return list(scan_folder(root, follow_symlinks).files)
