"""The batch journal of a cache (`<cache>.journal/`): the redo log between a batch and its commit.

Each finished batch is one `.npz`, written under a temporary name and renamed, so a batch is journaled whole
or not at all; a commit applies the journal to the cache and then empties it. Batches are keyed by image id,
so applying one twice (a crash between the commit and the cleanup) adds nothing twice.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .files import write_text_atomic

ROW_FIELDS = ("image_id", "path", "group", "sha256")  # string columns, one per row


def journal_dir(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def pending_batches(path: Path) -> list[Path]:
    j = journal_dir(path)
    return sorted(j.glob("batch-*.npz")) if j.is_dir() else []


class Journal:
    """Batches of one cache written durably, in order, by its one writer."""

    def __init__(self, path: Path, config):
        self.path = path
        self.dir = journal_dir(path)
        self.config = config
        self.seq = max((int(p.stem.split("-")[1]) for p in pending_batches(path)), default=0)

    def write(self, rows: list[dict], features: np.ndarray | None, failed=(), views: np.ndarray | None = None,
              view_lo: int = 0) -> Path:
        """Journal one batch (see CacheWriter.write_batch for the arguments); returns its file."""
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True)
            # A first run's configuration lives here until its first commit creates the cache.
            write_text_atomic(self.dir / "config.json", json.dumps(asdict(self.config)))
        d, dtype, n = self.config.num_features, self.config.dtype, len(rows)
        if features is None:
            features = np.zeros((n, d), np.float32)
        payload = {k: np.array([r[k] or "" for r in rows], dtype=str) for k in ROW_FIELDS}
        payload.update(
            label=np.array([r["label"] if r["label"] is not None else "" for r in rows], dtype=str),
            has_label=np.array([r["label"] is not None for r in rows], dtype=bool),
            size=np.array([[r["width"], r["height"]] for r in rows], dtype=np.int32).reshape(n, 2),
            has_features=np.array([r.get("has_features", True) for r in rows], dtype=bool),
            features=np.asarray(features, dtype=dtype).reshape(n, d),
            failed=np.array([list(x) for x in failed], dtype=str).reshape(len(failed), 3),
            view_lo=np.array(view_lo if views is not None else 0),
            views=(np.zeros((n, 0, d), dtype) if views is None else np.asarray(views, dtype=dtype)),
        )
        self.seq += 1
        target = self.dir / f"batch-{self.seq:08d}.npz"
        tmp = target.with_name(target.name + ".tmp")  # not matched by pending_batches' batch-*.npz
        with open(tmp, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # atomic: a batch is either wholly journaled or absent
        return target

    @staticmethod
    def read(batch: Path) -> dict:
        with np.load(batch) as b:
            return {k: b[k] for k in b.files}

    def clear(self, batches: list[Path]) -> None:
        """Drop applied batches; the folder (its config.json, a cut-off `.tmp`) goes when no batch is left."""
        for b in batches:
            b.unlink(missing_ok=True)
        if self.dir.is_dir() and not pending_batches(self.path):
            shutil.rmtree(self.dir, ignore_errors=True)
