"""Run the real `bottleneck` CLI with a fault injected at its K-th write, as SQLite's crash tests do.

    python tests/faultinject.py MODE K COUNT_FILE -- bottleneck arguments...

A write is any file opened for writing (`open`), a folder created (`os.mkdir`), a rename (`os.replace`,
`os.rename`), a file removed or a folder deleted, or an HDF5 file opened to write (`h5py.File`). At the K-th:
MODE `fail` raises OSError(ENOSPC), as a full disk does; MODE `crash` ends the process at once (os._exit, as
SIGKILL would: no cleanup, no atexit). K = 0 injects nothing. COUNT_FILE receives one line per write made (what
it wrote), so a run with K = 0 tells the harness which K exist.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import sys

mode, k, count_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]
args = sys.argv[sys.argv.index("--") + 1:]
writes = 0


def hit(what) -> None:
    global writes
    writes += 1
    with _real_open(count_file, "a") as f:  # one line per write, kept current: a crash still leaves the list
        f.write(f"{what}\n")
    if writes == k:
        if mode == "crash":
            os._exit(137)
        raise OSError(errno.ENOSPC, "No space left on device (injected)", str(what))


_real_open = builtins.open


def _open(file, mode="r", *a, **kw):
    if isinstance(mode, str) and any(c in mode for c in "wax+") and not str(file).startswith("/dev/"):
        hit(file)
    return _real_open(file, mode, *a, **kw)


def _wrap(owner, name):
    real = getattr(owner, name)

    def wrapped(*a, **kw):
        hit(a[0] if a else name)
        return real(*a, **kw)

    setattr(owner, name, wrapped)


builtins.open = io.open = _open  # io.open: what pathlib and zipfile (Keras' .keras files) call
for fn in ("mkdir", "replace", "rename", "unlink", "remove", "rmdir"):
    _wrap(os, fn)
_wrap(shutil, "rmtree")

import h5py  # noqa: E402

_real_h5 = h5py.File.__init__


def _h5_init(self, name, mode="r", *a, **kw):
    if mode != "r":
        hit(name)
    _real_h5(self, name, mode, *a, **kw)


h5py.File.__init__ = _h5_init

from bottleneck.cli import app  # noqa: E402

app(args=args, prog_name="bottleneck")
