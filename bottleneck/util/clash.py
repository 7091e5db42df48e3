"""The name we share: PyPI's `Bottleneck` (pip install bottleneck), a pandas accelerator of fast NumPy functions in
C, is also imported as `bottleneck`. Two distributions with one import package cannot share an environment: pip
writes both into one `site-packages/bottleneck/` folder, the second install overwrites the first's `__init__.py`,
and uninstalling either deletes files of the other. Our distribution is therefore called `bottleneck-derm`, and the
CLI looks, on every command, for the accelerator's files where ours are, to say so in one line rather than fail later
in an import that makes no sense. Cheap by design: a few directory listings, no import, no metadata query (~0.1 ms).

The accelerator shows up in one of two places. Installed over a regular install of ours, its files sit in our own
`bottleneck/` folder (and whichever `__init__.py` came last wins). Beside an editable install, its
`site-packages/bottleneck/` is found first (setuptools' editable finder comes after the path finder), so the top
`bottleneck` module is its `__init__.py` while our subpackages still load from the source tree: that folder is
checked too.
"""

from __future__ import annotations

import os
import sys
from fnmatch import fnmatch
from pathlib import Path

from .. import __version__

DISTRIBUTION = "bottleneck-derm"  # our name on PyPI and in pip; the import package stays `bottleneck`
ACCELERATOR = "Bottleneck"  # the pandas accelerator's distribution name

CLASH_NOTE = (f"the pandas accelerator {ACCELERATOR} (PyPI: bottleneck) also imports as bottleneck: "
              "the two cannot share an environment")

# What the accelerator's wheel puts into `bottleneck/` that we never ship: its C extensions (.so; .pyd on Windows)
# and its test runner. `__init__.py`, `_version.py` and `conftest.py` are ambiguous names, so they are not looked for.
ACCELERATOR_FILES = ("move*.so", "reduce*.so", "nonreduce*.so", "nonreduce_axis*.so",
                     "move*.pyd", "reduce*.pyd", "nonreduce*.pyd", "nonreduce_axis*.pyd", "_pytesttester.py")
# Its metadata folder in site-packages: `Bottleneck-1.3.7.dist-info` (older wheels), `bottleneck-1.6.1.dist-info`
# (newer ones, lower case), or an `.egg-info` of a setup.py install.
ACCELERATOR_METADATA = ("bottleneck-*.dist-info", "bottleneck-*.egg-info")
# The one summary a `bottleneck-*` metadata folder may hold that is not the accelerator's: ours, from before the
# distribution was renamed (0.1.0).
OUR_OLD_SUMMARY = "Summary: Fast, honest transfer learning"


def installed_version() -> str:
    """Our version as pip recorded it, or `__version__` when we are not installed (run from a source tree). Not
    `__version__` first: beside the accelerator, the top `bottleneck` module may be its (`package_dirs`)."""
    from importlib import metadata  # a scan of sys.path's metadata: only for --version, not on every command

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__


def _names(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries]
    except OSError:  # not a folder, or not readable: nothing of the accelerator's can be seen there either
        return []


def _is_ours(metadata_dir: Path) -> bool:
    """True for our own pre-rename metadata (distribution `bottleneck` 0.1.0), read from its first lines."""
    for name in ("METADATA", "PKG-INFO"):
        try:
            with open(metadata_dir / name, encoding="utf-8", errors="replace") as f:
                return OUR_OLD_SUMMARY in f.read(2048)
        except OSError:
            continue
    return False


def package_dirs() -> list[Path]:
    """Where `bottleneck` lives in this process: the folder of our own modules, then the folder the top `bottleneck`
    module was imported from when that is another one (the accelerator's, shadowing an editable install)."""
    ours = Path(__file__).resolve().parent.parent
    top = getattr(sys.modules.get("bottleneck"), "__file__", None)
    imported = Path(top).resolve().parent if top else ours
    return [ours] if imported == ours else [ours, imported]


def find_clash(folders: Path | list[Path] | None = None) -> list[str]:
    """The accelerator's files found in each `bottleneck/` folder of `folders` (default: `package_dirs()`) and its
    metadata folders beside them, as paths relative to the folder's parent; empty when there are none."""
    folders = package_dirs() if folders is None else [folders] if isinstance(folders, (str, Path)) else folders
    found = []
    for package_dir in map(Path, folders):
        found += [f"{package_dir.name}/{n}" for n in sorted(_names(package_dir))
                  if any(fnmatch(n, p) for p in ACCELERATOR_FILES)]
        found += [n for n in sorted(_names(package_dir.parent)) if n not in found
                  and any(fnmatch(n.lower(), p) for p in ACCELERATOR_METADATA) and not _is_ours(package_dir.parent / n)]
    return found


def clash_warning(folders: Path | list[Path] | None = None, shown: int = 3) -> str | None:
    """One line saying what `find_clash` found and the fix, or None when the environment is clean."""
    folders = package_dirs() if folders is None else [folders] if isinstance(folders, (str, Path)) else folders
    hits = {Path(f).parent: find_clash([Path(f)]) for f in folders}  # site folder -> what it holds of theirs
    found = [name for names in hits.values() for name in names]
    if not found:
        return None
    listed = ", ".join(found[:shown]) + (f" and {len(found) - shown} more" if len(found) > shown else "")
    where = " and ".join(str(site) for site, names in hits.items() if names)
    return (f"the pandas accelerator {ACCELERATOR} is installed beside {DISTRIBUTION} ({listed}, in {where}): "
            f"both import as bottleneck and overwrite each other's files; use a separate virtualenv, or "
            f"`pip uninstall {ACCELERATOR}` and then reinstall {DISTRIBUTION} (pip install --force-reinstall)")
