"""What a cache holds, so that two datasets never end up in one cache without a word.

A cache records the identity of the index it was extracted from (attribute `identity`, JSON): the resolved image
root, the source kind, the metadata CSV and its SHA-256. Extracting into it from another root or CSV is refused,
unless `--append` adds that dataset on purpose (recorded in the identity's `appended` list). A rerun whose CSV
changes the labels or groups of cached images counts them and records it (attribute `relabels`). A cache written
before the attribute adopts the identity of the first extract into it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..backbones import parse_weights
from ..cache import CacheConfig, read_attrs
from ..errors import CacheMismatchError
from ..images import DatasetIndex, Entry
from ..util import sha256_file

KEYS = ("root", "source", "metadata", "metadata_sha256")
SHOWN = 3  # changed rows named in the message (the record keeps up to RECORDED)
RECORDED = 20


def dataset_identity(index: DatasetIndex) -> dict:
    """{root, source, metadata, metadata_sha256, metadata_extra} of an index: what a cache extracted from it holds.
    `metadata` is the CSV the labels come from; CSVs joined to it (`metadata_extra`, ISIC 2019's age/sex/site)
    add columns to the same dataset, so joining one later is a rerun, not another dataset."""
    csv = index.metadata
    return {"root": str(index.root), "source": index.source, "metadata": str(csv or ""),
            "metadata_sha256": sha256_file(csv) if csv else "",
            # only where there are any: the identity of a one-CSV dataset stays as caches have always recorded it
            **({"metadata_extra": [str(p) for p in index.metadata_extra]} if index.metadata_extra else {})}


def _take(identity: dict, current: dict) -> None:
    """Update a recorded dataset to this run's CSVs (their content may change: relabels are counted)."""
    identity.update({k: current[k] for k in KEYS})
    identity.pop("metadata_extra", None)
    identity.update({k: current[k] for k in ("metadata_extra",) if k in current})


def root_tag(index: DatasetIndex) -> str:
    """A short hash of the resolved image root: two roots of one folder name get two default cache names."""
    return hashlib.sha256(str(index.root).encode("utf-8", "surrogateescape")).hexdigest()[:8]


def default_cache_path(index: DatasetIndex, config: CacheConfig, cache_dir: Path = Path("cache")) -> Path:
    """`cache/<dataset>-<root hash>-<configuration>.h5`: two image roots never share a default cache. A cache at
    the name used before the root hash, extracted from this same root, is kept (found, not extracted again)."""
    ref = parse_weights(config.weights)
    weights = f"none-s{config.seed}" if ref.kind == "none" else ref.tag
    tail = f"{config.backbone}-{weights}-{config.input_size}-{config.pooling}.h5"
    path, older = cache_dir / f"{index.name}-{root_tag(index)}-{tail}", cache_dir / f"{index.root.name}-{tail}"
    if not path.exists() and older.exists():
        attrs = read_attrs(older)
        if (recorded_identity(attrs) or attrs).get("root") == str(index.root):
            return older
    return path


def recorded_identity(attrs: dict) -> dict | None:
    """The identity a cache records, None for a cache written before the attribute (or a merge of such)."""
    text = attrs.get("identity") or ""
    return json.loads(text) if text else None


def describe(ident: dict) -> str:
    """`ROOT (source S, metadata CSV)`: one identity in a line."""
    csv = f", metadata {ident['metadata']}" if ident.get("metadata") else ""
    csv += "".join(f" + {extra}" for extra in ident.get("metadata_extra", []))
    return f"{ident['root']} (source {ident.get('source', '?')}{csv})"


def _same(a: dict, b: dict) -> bool:
    """One dataset: the same root and CSV file (the CSV's content may change: that is a relabel, counted)."""
    return (a["root"], a.get("metadata", "")) == (b["root"], b.get("metadata", ""))


@dataclass
class IdentityNote:
    """What the identity check found, for the summary."""
    adopted: bool = False  # the cache recorded no identity and takes this extract's
    appended: str = ""  # the root this run added to the cache with --append ("" when none)
    labels_changed: int = 0
    groups_changed: int = 0
    labels_shown: list[str] = field(default_factory=list)  # the first few changes, `ID old -> new`
    groups_shown: list[str] = field(default_factory=list)


@dataclass
class IdentityPlan:
    """The identity to record in a cache at the next commit (`info`), and how it came about (`note`)."""
    identity: dict  # the cache's identity after this run
    current: dict  # this run's dataset
    info: dict  # attributes for the writer: `identity`, and for an appended dataset the first one's root...
    note: IdentityNote
    changed: bool  # whether `identity` differs from what the cache records: commit it even with no new rows


def plan_identity(path: Path, index: DatasetIndex, append: bool, current: dict | None = None) -> IdentityPlan:
    """Check that `index` may be extracted into cache `path`; refuse (CacheMismatchError, nothing written) a cache
    of another root or CSV unless `append`."""
    current = current or dataset_identity(index)
    attrs = read_attrs(path) if path.exists() else {}
    recorded = recorded_identity(attrs)
    note = IdentityNote()
    if recorded is None:  # a new cache, or one from before the attribute: this dataset is its identity
        note.adopted = bool(attrs)
        identity = dict(current, appended=[])
        return IdentityPlan(identity, current, {"identity": identity}, note, True)
    identity = copy.deepcopy(recorded)
    identity.setdefault("appended", [])
    if _same(identity, current):
        _take(identity, current)  # the CSV's SHA-256 follows its content
    else:
        known = next((a for a in identity["appended"] if _same(a, current)), None)
        if known is None and not append:
            raise CacheMismatchError(
                f"cache {path} holds the images of {describe(identity)}, not of {describe(current)}; a cache never "
                f"mixes datasets: pass --cache NEW for this one (or drop --cache for its own default name), or "
                f"--append to add {current['root']} to this cache on purpose")
        if known is None:
            identity["appended"].append(dict(current, at=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
            note.appended = current["root"]
        else:
            _take(known, current)
        # rows keep paths relative to the cache's own root: `root` and friends stay the first dataset's
    info = {"identity": identity, **({k: attrs[k] for k in ("dataset", "root", "source", "metadata") if k in attrs}
                                     if not _same(identity, current) else {})}
    return IdentityPlan(identity, current, info, note, identity != recorded)


def note_changes(plan: IdentityPlan, path: Path, entries: list[Entry], existing: dict) -> dict:
    """Count the cached images whose label or group this run's index changes (into `plan.note`); returns the
    attributes that record it (`relabels`, the cache's list plus this run's record), {} when nothing changed.
    A dataset appended now whose image ids the cache already holds is refused: its rows would replace the others'."""
    if plan.note.appended and existing:
        ids = sorted(existing)
        raise CacheMismatchError(
            f"cache {path} already holds {len(ids)} of the image ids of {plan.current['root']} (e.g. {ids[0]}) from "
            f"{plan.identity['root']}; --append would replace those rows: pass --cache NEW, or give the images "
            "distinct ids (a metadata CSV with --id-column)")
    labels, groups = [], []
    for e in entries:
        old = existing.get(e.image_id)
        if old is None:
            continue
        if old["label"] != e.label:
            labels.append(f"{e.image_id} {old['label'] or '(none)'} -> {e.label or '(none)'}")
        if old["group"] != e.group:
            groups.append(f"{e.image_id} {old['group'] or '(none)'} -> {e.group or '(none)'}")
    note = plan.note
    note.labels_changed, note.groups_changed = len(labels), len(groups)
    note.labels_shown, note.groups_shown = labels[:SHOWN], groups[:SHOWN]
    if not labels and not groups:
        return {}
    attrs = read_attrs(path) if path.exists() else {}
    record = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "metadata": plan.current["metadata"],
              "metadata_sha256": plan.current["metadata_sha256"], "labels_changed": len(labels),
              "groups_changed": len(groups), "first": labels[:RECORDED] + groups[:RECORDED]}
    return {"relabels": json.loads(attrs.get("relabels") or "[]") + [record]}


def record_identity(writer, plan: IdentityPlan, index: DatasetIndex, entries: list[Entry], existing: dict,
                    append: bool) -> IdentityNote:
    """Under the writer's lock: check the identity again (another writer may have extracted meanwhile), count the
    relabelled rows, and hand the writer what it records at its next commit; a cache whose identity changes with
    no new rows gets an empty batch, so that the record is committed all the same."""
    plan = plan_identity(writer.path, index, append, plan.current)
    writer.info.update(plan.info)
    writer.info.update(note_changes(plan, writer.path, entries, existing))
    if plan.changed and writer.path.exists():
        writer.write_batch([], None)
    return plan.note

