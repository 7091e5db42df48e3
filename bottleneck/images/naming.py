"""A dataset's name from its folder: what the default cache name and the cache's `dataset` attribute say."""

from __future__ import annotations

import re
from pathlib import Path


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "dataset"


# Folder names that say what a folder holds, not which dataset: `data/ph2/images` and `data/clinicB/images` are
# two datasets, named by their parents (ISIC's own `ISIC_2019_Training_Input` counts as such a name too).
GENERIC_WORDS = frozenset(("images", "image", "imgs", "img", "jpg", "jpeg", "png", "train", "training", "test",
                           "testing", "val", "valid", "validation", "data", "dataset", "datasets", "input", "inputs",
                           "raw", "photos", "pictures", "files", "all"))
ISIC_FOLDER = re.compile(r"isic_?\d{4}_(training|test|validation)_(input|jpeg|jpg|images?|data)", re.IGNORECASE)


def _generic(name: str) -> bool:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return bool(ISIC_FOLDER.fullmatch(name)) or all(w in GENERIC_WORDS or w.isdigit() for w in words)


def dataset_name(root: Path) -> str:
    """The dataset's name from its (resolved) folder: the folder's own, or its nearest parent's that is not
    generic when the folder is called `images`, `train`, `ISIC_2019_Training_Input`..."""
    for folder in (root, *root.parents):
        if folder.name and not _generic(folder.name):
            return _safe_name(folder.name)
    return _safe_name(root.name)
