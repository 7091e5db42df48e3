"""`--class-map`: the task defined off one cache, without a new extraction.

    "mel=mel;other=*"                       binary melanoma vs rest
    "malignant=mel,bcc,akiec;benign=*"      merged classes
    "mel=melanoma;nv=common_nevus,atypical_nevus"   an external set's names onto a run's classes

A rule is `target=source1,source2`; `*` stands for every source class no rule names; a class named nowhere is
dropped (its rows become unlabeled: no split, no metric) and counted. The same map can be a TOML file
(`target = ["src1", "src2"]` or `target = "src1,src2"`, at the top or under `[class_map]`) or a two-column CSV
(source,target; a header row naming `source` and `target` is allowed).

Mapping relabels a loaded cache (`map_classes`): the rows, features and groups stay as they are, so a split
made after mapping is grouped by lesion exactly as before, and a reused split refers to the same images.

A run records its map structurally (`to_record`: each target and its sources as JSON strings) and every reader
rebuilds it from that structure (`recorded_map`), so a class named `nevus, atypical` or `mel;x=y` survives; the
SPEC text kept beside it is for people. A SPEC cannot hold such names (a target with ';' or '=', a source with
';' or ',', spaces at either end): they come from a CSV or TOML file, whose path reruns the map.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..cache import CacheData
from ..errors import InputError

STAR = "*"
FILE_SUFFIXES = (".toml", ".csv")
RECORDED = "the run's class map (config.json key 'class_map')"


def writable(name: str, separator: str) -> bool:
    """Whether a SPEC can hold `name` as a target (separator '=') or a source (separator ',')."""
    return bool(name) and name == name.strip() and ";" not in name and separator not in name


@dataclass(frozen=True)
class ClassMap:
    """Rules in the order given: (target, source class names); `*` may be one source."""

    rules: tuple[tuple[str, tuple[str, ...]], ...]
    origin: str | None = field(default=None, compare=False)  # the .toml/.csv file it was read from, if any

    @property
    def inline(self) -> bool:
        """Whether a SPEC can hold every name of the map."""
        return all(writable(t, "=") and all(writable(s, ",") for s in ss) for t, ss in self.rules)

    @property
    def spec(self) -> str:
        """The SPEC text, for people: what a rerun passes when `inline`; otherwise the names a SPEC cannot hold are
        shown in JSON quotes. Never parsed back from a record (see `to_record`)."""
        def show(name: str, separator: str) -> str:
            return name if writable(name, separator) else json.dumps(name, ensure_ascii=False, allow_nan=False)

        return ";".join(f"{show(t, '=')}={','.join(show(s, ',') for s in ss)}" for t, ss in self.rules)

    @property
    def argument(self) -> str:
        """What `--class-map` reruns this map with: its SPEC, or the file it came from when a SPEC cannot hold it."""
        return self.origin if self.origin and not self.inline else self.spec

    @property
    def targets(self) -> list[str]:
        return [t for t, _ in self.rules]

    def to_record(self) -> dict:
        """The map as config.json keeps it: `targets` is the map; `spec` (and `file`) are for people."""
        return {"spec": self.argument, "file": self.origin,
                "targets": [{"name": t, "sources": list(s)} for t, s in self.rules]}

    @classmethod
    def from_record(cls, record: dict, where: str = RECORDED) -> ClassMap:
        """The map of a record: `targets` as a list, or the {target: sources} object that earlier versions kept
        beside the SPEC; a record with only the SPEC text is parsed as it was written (right for names a SPEC
        can hold, all that such versions could record faithfully)."""
        targets = record.get("targets")
        if targets is None and isinstance(record.get("spec"), str):
            return parse_spec(record["spec"])
        if isinstance(targets, list) and all(isinstance(r, dict) for r in targets):
            pairs = [(r.get("name"), r.get("sources")) for r in targets]
        elif isinstance(targets, dict):
            pairs = list(targets.items())
        else:
            raise InputError(f"{where} has no list of targets; the run is damaged: train it again")
        if not all(isinstance(t, str) and isinstance(s, list) and all(isinstance(n, str) for n in s)
                   for t, s in pairs):
            raise InputError(f"{where} should list each target's name and source class names; the run is damaged: "
                             "train it again")
        origin = record.get("file")
        return replace(_check_rules(pairs, where), origin=origin if isinstance(origin, str) else None)


@dataclass(frozen=True)
class Mapped:
    """A class map resolved against one cache's classes."""

    index: np.ndarray  # (source classes,) target index of each source class, -1 when dropped
    class_names: list[str]  # the targets, in the order of the head's outputs
    record: dict  # what config.json / metrics.json keep: spec, sources per target, counts, dropped


def parse_class_map(value: str) -> ClassMap:
    """SPEC (`target=a,b;other=*`) or a .toml/.csv file holding the same; checked for shape, not yet against
    any cache's classes."""
    text = str(value).strip()
    path = _file_of(text)
    if path is None:
        return parse_spec(text)
    if not _is_file(path):
        if path.suffix.lower() in FILE_SUFFIXES:
            raise InputError(f"--class-map file {path} does not exist; pass a .toml or .csv file, or a SPEC such as "
                             "'mel=mel;other=*'")
        raise InputError(f"--class-map should be target=source1,source2;... (e.g. 'mel=mel;other=*') or a "
                         f".toml/.csv file; received {value!r}")
    pairs = _read_toml(path) if path.suffix.lower() == ".toml" else _read_csv(path)
    return replace(_check_rules(pairs, f"--class-map file {path}"), origin=str(path))


def parse_spec(text: str) -> ClassMap:
    """A SPEC `target=a,b;other=*` (names stripped of spaces at either end)."""
    pairs = []
    for rule in filter(None, (r.strip() for r in text.split(";"))):
        target, eq, sources = rule.partition("=")
        if not eq:
            raise InputError(f"--class-map rule {rule!r} should be target=source1,source2 (a class name holding ';' "
                             "or '=' cannot be written in a SPEC: pass a .csv or .toml file of the map instead)")
        pairs.append((target.strip(), [s.strip() for s in sources.split(",") if s.strip()]))
    return _check_rules(pairs, "--class-map")


def _file_of(text: str) -> Path | None:
    """The file a --class-map value names, or None for a SPEC. A value without '=' can only be a file; one with
    '=' is a SPEC unless it ends in .toml/.csv and such a file exists. Probing never raises: a SPEC longer than a
    file name may be (255 bytes) is still a SPEC."""
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # '~name' of no such user
        path = Path(text)
    if "=" not in text:
        return path
    return path if path.suffix.lower() in FILE_SUFFIXES and _is_file(path) else None


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # ENAMETOOLONG, a NUL byte, ...
        return False


def _read_toml(path: Path) -> list[tuple[str, list[str]]]:
    import tomllib

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"cannot read --class-map file {path}: {exc}") from None
    table = doc.get("class_map", doc)
    pairs = []
    for target, sources in table.items():
        if isinstance(sources, str):  # the SPEC-like shorthand "a,b"; a list's strings are kept exactly
            sources = [n.strip() for n in sources.split(",")]
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise InputError(f"--class-map file {path}: {target!r} should list source class names, e.g. "
                             f"{target} = [\"mel\"]")
        pairs.append((str(target), [s for s in sources if s.strip()]))
    return pairs


def _read_csv(path: Path) -> list[tuple[str, list[str]]]:
    try:
        rows = [r for r in csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))) if any(c.strip() for c in r)]
    except (UnicodeDecodeError, OSError, csv.Error) as exc:
        raise InputError(f"cannot read --class-map file {path}: {exc}") from None
    order = (0, 1)
    if rows and {c.strip().lower() for c in rows[0]} == {"source", "target"}:
        header = [c.strip().lower() for c in rows.pop(0)]
        order = (header.index("source"), header.index("target"))
    pairs: dict[str, list[str]] = {}
    for k, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise InputError(f"--class-map file {path}: row {k} has {len(row)} columns; expected two: source,target")
        source, target = row[order[0]].strip(), row[order[1]].strip()
        pairs.setdefault(target, []).append(source)
    return list(pairs.items())


def _check_rules(pairs, where: str) -> ClassMap:
    if not pairs:
        raise InputError(f"{where} has no rules; write target=source1,source2 (e.g. 'mel=mel;other=*')")
    seen_target, seen_source = set(), {}
    for target, sources in pairs:
        if not target.strip():
            raise InputError(f"{where}: a rule has no target name before '='")
        if not sources:
            raise InputError(f"{where}: target {target!r} has no source classes after '='")
        if target in seen_target:
            raise InputError(f"{where}: target {target!r} appears twice; list all its sources in one rule "
                             f"({target}=a,b)")
        seen_target.add(target)
        for s in sources:
            if s in seen_source:
                what = "'*' appears" if s == STAR else f"source class {s!r} is mapped"
                raise InputError(f"{where}: {what} twice (to {seen_source[s]!r} and {target!r}); a class goes to "
                                 "one target")
            seen_source[s] = target
    return ClassMap(tuple((t, tuple(s)) for t, s in pairs))


def resolve(cmap: ClassMap, source_classes: list[str], counts: np.ndarray, targets: list[str] | None = None,
            strict: bool = True, what: str = "the cache") -> Mapped:
    """The map against the classes of one cache (`counts`: labeled rows per source class).

    targets: the classes the outputs must be, in order (a trained run's; the map may name fewer); None: the
    map's own targets in the order given. strict: a source the cache lacks is an error (a typo), else ignored
    (a recorded map applied to another cache)."""
    exact = {n: i for i, n in enumerate(source_classes)}
    folded: dict[str, int] = {}
    for i, n in enumerate(source_classes):
        folded.setdefault(fold(n), i)
    names = list(targets) if targets is not None else cmap.targets
    if targets is not None:
        unknown = [t for t in cmap.targets if t not in names]
        if unknown:
            raise InputError(f"--class-map target {unknown[0]!r} is not a class of the run (its classes: "
                             f"{', '.join(names)}); targets name the run's classes, sources the cache's")
    index = np.full(len(source_classes), -1, dtype=np.int64)
    star = None
    pairs = [(names.index(t), s) for t, sources in cmap.rules for s in sources]
    for j, s in pairs:  # exact names first: a case-folded match never takes a class another rule names exactly
        if s == STAR:
            star = j
        elif s in exact:
            index[exact[s]] = j
    for j, s in pairs:
        if s == STAR or s in exact:
            continue
        i = folded.get(fold(s))
        if i is not None and index[i] < 0:
            index[i] = j
        elif strict:
            raise InputError(f"--class-map source {s!r} is not a class of {what} (its classes: "
                             f"{', '.join(source_classes) or 'none'}){_file_hint(cmap, source_classes)}")
    named = index >= 0
    if star is not None:
        index[~named] = star
    counts = np.asarray(counts)
    per_target = {t: int(counts[index == j].sum()) for j, t in enumerate(names)}
    dropped = {n: int(counts[i]) for i, n in enumerate(source_classes) if index[i] < 0}
    record = {**cmap.to_record(),
              "sources": {t: [n for i, n in enumerate(source_classes) if index[i] == j] for j, t in enumerate(names)},
              "counts": per_target, "dropped": dropped, "source_classes": list(source_classes)}
    return Mapped(index, names, record)


def fold(name: str) -> str:
    """A class name as a source matches it when no class has the exact name: case and spaces at either end
    ignored (a CSV's cells are stripped; a class folder's name is not)."""
    return name.strip().casefold()


def missing_sources(cmap: ClassMap, class_names: list[str]) -> list[str]:
    """The sources of `cmap` (but `*`) that no class of `class_names` matches."""
    have = {fold(n) for n in class_names}
    return [s for _, sources in cmap.rules for s in sources if s != STAR and fold(s) not in have]


def _file_hint(cmap: ClassMap, source_classes: list[str]) -> str:
    """Where a SPEC was given and the cache has a class name a SPEC cannot hold: how to name it instead."""
    odd = [n for n in source_classes if not writable(n, ",")]
    if cmap.origin or not odd:
        return ""
    return (f"; a SPEC cannot hold a class name such as {odd[0]!r} (';' or ',' in it, or spaces at either end): "
            "write the map as a CSV file of source,target rows (such names in double quotes) or a TOML file "
            "(target = [\"source\", ...]) and pass its path")


def map_classes(data: CacheData, cmap: ClassMap | None, targets: list[str] | None = None, strict: bool = True,
                require_rows: bool = True) -> CacheData:
    """`data` relabelled by `cmap` (dropped classes become unlabeled, -1); the map's record is kept in
    `data.class_map`. None: `data` unchanged. require_rows: refuse a map that keeps no labeled row."""
    if cmap is None:
        return data
    counts = np.bincount(data.labels[data.labels >= 0], minlength=len(data.class_names))
    m = resolve(cmap, data.class_names, counts, targets, strict, what=f"cache {data.path}")
    if require_rows and not any(m.record["counts"].values()):
        raise InputError(f"--class-map {cmap.spec!r} keeps no labeled image of {data.path} (its classes: "
                         f"{', '.join(data.class_names)})")
    labels = np.where(data.labels >= 0, m.index[np.maximum(data.labels, 0)], -1).astype(np.int32)
    return replace(data, labels=labels, class_names=m.class_names, class_map=m.record)


def recorded_map(config: dict, where: str = RECORDED) -> ClassMap | None:
    """The class map a run was trained with (config.json), or None: rebuilt from the record's structure, never
    from a SPEC text that a class name with ',' or ';' would split. where: the record, for messages."""
    record = config.get("class_map")
    if record and not isinstance(record, dict):
        raise InputError(f"{where} should be a JSON object; the run is damaged: train it again")
    return ClassMap.from_record(record, where) if record else None


def run_class_names(config: dict) -> list[str]:
    """The classes a run's head predicts, in output order (older runs recorded only the cache's)."""
    return list(config.get("class_names") or config["cache"]["class_names"])


def describe(record: dict) -> list[str]:
    """The map in words, one line per target plus the dropped classes: for the CLI and the reports."""
    lines = []
    for target, n in record["counts"].items():
        sources = record["sources"].get(target, [])
        lines.append(f"{target}: {', '.join(sources) or 'no class of the cache'} ({n:,} images)")
    dropped = record["dropped"]
    lines.append("dropped: " + (", ".join(f"{k} ({v:,} images)" for k, v in dropped.items()) if dropped else "none"))
    return lines
