"""The unit of independence: a lesion (or patient) with all its images, or a single image without one.

Splits keep a unit in one split, CV folds in one fold, and the bootstrap draws whole units; all of them name units
by `group_keys`, so that a group id can never collide with an image id (a lesion called "ISIC_0024412" and an
image of that id are two units)."""

from __future__ import annotations

import numpy as np


def group_keys(groups: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N,) unit key of each row: "g:<group>" where the row has a group, else "i:<id>" (its image id, or any id
    unique to the row). Sorting the keys sorts groups before ungrouped rows, independently of row order."""
    return np.array([f"g:{g}" if g else f"i:{i}" for g, i in zip(groups, ids)], dtype=str)


def resampling_units(groups: np.ndarray) -> np.ndarray:
    """(N,) index of each row's resampling unit: its group (lesion/patient), or the row itself without one."""
    if not len(groups):
        return np.zeros(0, dtype=np.int64)
    return np.unique(group_keys(groups, np.arange(len(groups))), return_inverse=True)[1].reshape(-1)
