"""The dataset index: what images there are, their labels, groups and metadata columns (age, sex, body site...),
from class folders or a metadata CSV.

Nothing here decodes an image; the index is cheap to build and every later stage (extraction, splits)
reads its labels and groups from the cache, not from here.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import InputError
from ..util import Walk, scan_folder
from .decode import IMAGE_EXTENSIONS, sniff_format
from .naming import dataset_name
from .tables import Table, companions, label_determining, layout_of, read_table


@dataclass(frozen=True)
class Entry:
    image_id: str
    path: Path  # absolute path of the image file
    rel_path: str  # POSIX path relative to the index root, stored in the cache
    label: str | None  # None when unknown
    group: str = ""  # lesion or patient id; "" when the source has none
    # (column, value) of the CSV's metadata columns kept for the cache (`--meta-columns`), stripped text, ""
    # when missing; a tuple of pairs, not a dict, so that an Entry stays hashable
    meta: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DatasetIndex:
    root: Path
    name: str
    source: str  # "folders" | "unlabeled" | "ham10000" | "isic2019" | "isic2020" | "csv"
    entries: tuple[Entry, ...]
    class_names: tuple[str, ...]
    metadata: Path | None = None
    rows_without_image: tuple[str, ...] = ()  # CSV ids with no image file
    images_without_row: tuple[str, ...] = ()  # image files (relative) no CSV row names
    ignored_files: tuple[str, ...] = field(default=())  # files outside class folders
    # (relative path, reason) of what the walk did not follow or read: symlinks that leave the image folder
    # (without --follow-symlinks), loop or are broken, links to what is already indexed, FIFOs and devices
    skipped_paths: tuple[tuple[str, str], ...] = ()
    shard: str = ""  # "I/N" when `select_shard` kept one shard; "" for the whole index
    whole_fingerprint: str = ""  # a sharded index's `index_fingerprint` of the whole index it came from
    whole_images: int = 0  # ... and how many images that whole index had
    meta_columns: tuple[str, ...] = ()  # the columns of every entry's `meta`: CSV order, or as --meta-columns names
    metadata_extra: tuple[Path, ...] = ()  # CSVs joined to `metadata` on the image id (ISIC 2019's age/sex/site)
    notes: tuple[str, ...] = ()  # what indexing chose that the user should see: an id column, columns left out

    @property
    def fingerprint(self) -> str:
        """The whole index's fingerprint: every shard of one index carries the same one."""
        return self.whole_fingerprint or index_fingerprint(self.entries)

    @property
    def total_images(self) -> int:
        return self.whole_images or len(self.entries)


def index_fingerprint(entries) -> str:
    """SHA-256 over the sorted image ids: the same for every shard of one index, another for another dataset or
    another version of its metadata, so `merge` can tell shards of one extraction from strangers."""
    h = hashlib.sha256()
    for image_id in sorted(e.image_id for e in entries):
        h.update(image_id.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _looks_like_image(path: Path) -> bool:
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(16)) is not None
    except OSError:
        return False


def build_index(data: str | Path, metadata: str | Path | list | tuple | None = None, id_column: str | None = None,
                label_column: str | None = None, group_column: str | None = None,
                follow_symlinks: bool = False, meta_columns: str | tuple[str, ...] = "all") -> DatasetIndex:
    """Index `data`: class folders (`DATA/<class>/*`), or an image folder plus metadata CSVs.

    `metadata`: one CSV, or several (a sequence, or "A.csv,B.csv") joined on the image id, e.g. ISIC 2019's ground
    truth and its metadata file; without it, a top-level CSV of a known layout in `data` is used.
    A symlink is followed only when its target lies inside `data` (`follow_symlinks`: wherever it leads, loops
    still cut); each real file is indexed once, and what was skipped is in `skipped_paths` with the reason.
    `meta_columns` (`--meta-columns`): which CSV columns each entry carries as metadata, "all" (every column but
    the id, label and group ones and those that determine the label), "none", or a list of names (or "C,C")."""
    wanted = parse_meta_columns(meta_columns)
    root = Path(data).expanduser()
    if not root.exists():
        raise InputError(f"data folder {root} does not exist; pass the folder that holds your images")
    if not root.is_dir():
        raise InputError(f"data path {root} is a file, not a folder; pass the folder that holds your images "
                         "(and a metadata CSV with --metadata)")
    root = root.resolve()
    csvs = metadata_paths(metadata)
    if not csvs and (id_column or label_column or group_column):
        raise InputError("--id-column/--label-column/--group-column need --metadata CSV")
    notes = ()
    if csvs:
        others = companions(csvs)
        notes = tuple(f"{p} beside {csvs[0].name} is not used; pass it with --metadata too to join its columns"
                      for p in others)
    else:
        csvs = _find_known_csvs(root)
    if csvs:
        index = _index_from_csv(root, csvs, id_column, label_column, group_column, follow_symlinks, wanted)
        return replace(index, notes=(*index.notes, *notes))
    if wanted not in ("all", "none"):
        raise InputError(f"--meta-columns {','.join(wanted)} needs a metadata CSV, but {root} is indexed as class "
                         "folders, which carry no metadata columns; pass --metadata CSV, or drop --meta-columns")
    return _index_from_folders(root, follow_symlinks)


def metadata_paths(metadata) -> list[Path]:
    """`--metadata` as paths: one, several, or "A.csv,B.csv" (split at commas unless the whole names a file)."""
    if metadata is None:
        return []
    items = [metadata] if isinstance(metadata, (str, Path)) else list(metadata)
    paths = []
    for item in items:
        text = str(item)
        split = [t.strip() for t in text.split(",")] if "," in text and not Path(text).expanduser().exists() else [text]
        paths += [Path(t).expanduser() for t in split if t]
    return list(dict.fromkeys(paths))


def parse_meta_columns(value: str | tuple[str, ...]) -> str | tuple[str, ...]:
    """`--meta-columns`: "all", "none", or the named columns (from "C,C" or a sequence), stripped, each once."""
    if isinstance(value, str):
        if value.strip().lower() in ("all", "none"):
            return value.strip().lower()
        value = value.split(",")
    names = tuple(dict.fromkeys(c.strip() for c in value if c.strip()))
    if not names:
        raise InputError(f"--meta-columns should be all, none or column names like age,sex; received {value!r}")
    return names


def _find_known_csvs(root: Path) -> list[Path]:
    """The top-level CSVs of a recognised layout (HAM10000_metadata.csv, ISIC 2019's ground truth and metadata
    files...) are used without --metadata, so `bottleneck extract HAM10000/` does not mistake
    `HAM10000_images_part_1/` for a class; several of the first one's layout are joined."""
    found: list[tuple[Path, str]] = []
    for csv in sorted(root.glob("*.csv")):
        try:
            with open(csv, encoding="utf-8-sig", errors="replace") as f:
                header = {c.strip() for c in f.readline().split(",")}
        except OSError:
            continue
        layout = layout_of(csv, header)
        if layout != "csv":
            found.append((csv, layout))
    if not found:
        return []
    # one file per role (ISIC 2019's ground truth and metadata; a _v2 replaces the file it corrects)
    roles = {re.sub(r"(_v\d+)?\.csv$", "", csv.name.lower()): csv for csv, layout in found if layout == found[0][1]}
    return sorted(roles.values())


def _index_from_folders(root: Path, follow_symlinks: bool) -> DatasetIndex:
    walk = scan_folder(root, follow_symlinks)
    skipped = _relative_skipped(walk, root)
    if not (walk.files or walk.folders or skipped):
        raise InputError(f"data folder {root} is empty; expected class subfolders ({root}/<class>/*.jpg) "
                         "or an image folder with --metadata CSV")
    # class folders are the top-level folders walked: real ones and links to folders the walk followed
    has_classes = any(len(p.relative_to(root).parts) == 1 for p in walk.folders)
    top_files = [p for p in walk.files if len(p.relative_to(root).parts) == 1]
    if has_classes:
        entries = []
        for path in walk.files:
            rel = path.relative_to(root)
            if len(rel.parts) > 1:
                entries.append(Entry(rel.as_posix(), path, rel.as_posix(), rel.parts[0]))
        ignored = tuple(p.name for p in top_files)
        source = "folders"
    else:  # a flat folder of images: unlabeled (e.g. an external set to predict on)
        entries = [Entry(p.name, p, p.name, None) for p in top_files]
        ignored = ()
        source = "unlabeled"
    if not any(_looks_like_image(e.path) for e in entries):
        raise InputError(f"no images found in {root}: expected class subfolders with image files "
                         f"(JPEG, PNG, BMP, ...) or --metadata CSV{_skipped_hint(skipped)}")
    classes = tuple(sorted({e.label for e in entries if e.label is not None}))
    return DatasetIndex(root, dataset_name(root), source, tuple(entries), classes, ignored_files=ignored,
                        skipped_paths=skipped)


def _relative_skipped(walk: Walk, root: Path) -> tuple[tuple[str, str], ...]:
    return tuple((p.relative_to(root).as_posix(), reason) for p, reason in walk.skipped)


def _skipped_hint(skipped) -> str:
    if not skipped:
        return ""
    rel, reason = skipped[0]
    hint = f"{rel}: {reason}"  # both may hold names with a newline, which must not break the one-line error
    return f" ({len(skipped)} skipped, e.g. {''.join(c if c.isprintable() else repr(c)[1:-1] for c in hint)})"


def _index_from_csv(root: Path, csvs: list[Path], id_column, label_column, group_column,
                    follow_symlinks: bool, wanted: str | tuple[str, ...] = "all") -> DatasetIndex:
    table = read_table(csvs, id_column, label_column, group_column)
    csv, df = table.csv, table.frame
    meta_cols, notes = _meta_columns(table, wanted)
    for part in table.parts:
        keys = [c for c in (part.id_col, table.label_col, table.group_col) if c in part.frame.columns]
        _refuse_control_characters(part.path, part.frame, keys, tuple(c for c in meta_cols if c in part.frame))
    values = {c: list(df[c]) for c in meta_cols}
    metas = [tuple((c, values[c][k]) for c in meta_cols) for k in range(len(df))]
    groups = list(df[table.group_col]) if table.group_col is not None else [""] * len(df)

    finder = _ImageFinder(root, follow_symlinks)
    entries, missing, named = [], [], {}  # named: real path -> the first id that named it
    for image_id, label, group, meta in zip(df[table.id_col], table.labels, groups, metas):
        found = finder.find(image_id, csv)
        if found is None:
            missing.append(image_id)
            continue
        path, real = found
        if real in named:  # two ids, one file: its features would be stored twice, maybe under two labels
            raise InputError(f"image ids {named[real]!r} and {image_id!r} in {csv} name the same file "
                             f"{path.relative_to(root).as_posix()}; each row must name a different image")
        named[real] = image_id
        entries.append(Entry(image_id, path, path.relative_to(root).as_posix(), label, group, meta))
    if not entries:
        raise InputError(f"none of the {len(df)} ids in {csv} (column {table.id_col!r}) matches an image file "
                         f"under {root}; check the image folder and --id-column{_skipped_hint(finder.skipped)}")
    unlisted = tuple(p.relative_to(root).as_posix() for p, r in zip(finder.images, finder.reals) if r not in named)
    classes = tuple(sorted({e.label for e in entries if e.label is not None}))
    return DatasetIndex(root, dataset_name(root), table.source, tuple(entries), classes, csv.resolve(),
                        tuple(missing), unlisted, skipped_paths=finder.skipped, meta_columns=meta_cols,
                        metadata_extra=tuple(p.path.resolve() for p in table.parts[1:]),
                        notes=(*table.notes, *notes))


CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0 and C1 control characters, DEL
CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # the same but tab, newline, CR


def _refuse_control_characters(csv: Path, df, keys: list[str], meta: tuple[str, ...]) -> None:
    """The door for text from a CSV: ids, labels and groups hold no control character, metadata values (free
    text, where a tab or a line break is fine) none but tab and line breaks, column names none. A NUL would
    otherwise reach the cache, whose strings end at one, and other controls break lines of reports and logs."""
    for col in [*keys, *meta]:
        if CONTROL.search(col):
            raise InputError(f"a column name of metadata CSV {csv} holds a control character ({col[:60]!r}); "
                             "rename the column in the CSV")
        found = df[col].str.contains(CONTROL if col in keys else CONTROL_IN_TEXT, regex=True, na=False)
        if found.any():
            k = int(found.values.argmax())
            char = (CONTROL if col in keys else CONTROL_IN_TEXT).search(df[col].iloc[k]).group()
            raise InputError(f"metadata CSV {csv} row {k + 2} column {col!r} holds the control character "
                             f"U+{ord(char):04X} ({df[col].iloc[k][:60]!r}); remove it from the CSV and "
                             "rerun")


def _meta_columns(table: Table, wanted: str | tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """The CSV columns kept as metadata, and notes: for "all" every one but the id/label/group columns and those
    that repeat the label (named in a note), none for "none", else the named ones, each of which the CSVs must have
    and the cache must be able to name."""
    columns = list(table.frame.columns)
    if wanted == "none":
        return (), []
    if wanted == "all":
        candidates = [c for c in columns if c not in table.own and _storable_column(c)]
        left_out = label_determining(table, candidates)
        notes = [f"left out of metadata: {', '.join(left_out)} (they determine the label; name them in "
                 "--meta-columns to keep them)"] if left_out else []
        return tuple(c for c in candidates if c not in left_out), notes
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        where = (f"{table.csv} has" if len(table.parts) == 1 else
                 f"none of {', '.join(str(p.path) for p in table.parts)} has")
        raise InputError(f"{where} no column {unknown[0]!r} (--meta-columns); its columns are: {', '.join(columns)}")
    for c in wanted:
        if not _storable_column(c):
            raise InputError(f"column {c!r} of {table.csv} cannot name a metadata column of the cache (it holds '/' "
                             "or is '.'); rename it in the CSV, or leave it out of --meta-columns")
    return wanted, []


def _storable_column(name: str) -> bool:
    """Whether `name` can be an HDF5 dataset name under meta/ (a '/' would make a subgroup)."""
    return bool(name) and "/" not in name and name not in (".", "..")


class _ImageFinder:
    """Find the file a CSV id names: a relative path, a file name, or a file stem, searched recursively.

    Every id obeys the walk's rule: a file whose real path leaves the root (through a symlink) is refused
    unless `follow_symlinks`, and a file reached through links is the one file the walk indexed."""

    def __init__(self, root: Path, follow_symlinks: bool):
        self.root, self.follow = root, follow_symlinks
        walk = scan_folder(root, follow_symlinks)
        self.skipped = _relative_skipped(walk, root)
        keep = [(p, r) for p, r in zip(walk.files, walk.reals) if p.suffix.lower() in IMAGE_EXTENSIONS or not p.suffix]
        self.images = [p for p, _ in keep]
        self.reals = [r for _, r in keep]
        self.by_real = dict(zip(self.reals, self.images))
        self.real_of = dict(zip(self.images, self.reals))
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for p in self.images:
            self.by_name.setdefault(p.name, []).append(p)
            self.by_stem.setdefault(p.stem, []).append(p)

    def find(self, image_id: str, csv: Path) -> tuple[Path, str] | None:
        """(path under the root, real path) of the file `image_id` names, or None when there is none."""
        parts = re.split(r"[\\/]", image_id)
        if ".." in parts or image_id.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", image_id):
            raise InputError(f"image id {image_id!r} in {csv} points outside the image folder {self.root}; "
                             "ids must be file names or paths inside it")
        if len(parts) > 1:
            named = self.root.joinpath(*parts)
            real = os.path.realpath(named)
            self._check_inside(image_id, csv, real)
            if real in self.by_real:
                return self.by_real[real], real
            if os.path.isfile(real):  # a file the walk left out (a hidden folder, another extension): named, so used
                return (Path(real) if Path(real).is_relative_to(self.root) else named), real
            folder = os.path.dirname(real)
            matches = [p for p in self.by_stem.get(named.name, []) if os.path.dirname(self.real_of[p]) == folder]
        else:
            matches = self.by_name.get(image_id) or self.by_stem.get(image_id, [])
        if len(matches) > 1:
            shown = ", ".join(p.relative_to(self.root).as_posix() for p in matches[:3])
            raise InputError(f"image id {image_id!r} in {csv} matches {len(matches)} files ({shown}); "
                             "make ids unique or use relative paths as ids")
        return (matches[0], self.real_of[matches[0]]) if matches else None

    def _check_inside(self, image_id: str, csv: Path, real: str) -> None:
        if not self.follow and not Path(real).is_relative_to(self.root):
            raise InputError(f"image id {image_id!r} in {csv} leads through a symlink to {real}, outside the image "
                             f"folder {self.root}; pass --follow-symlinks to allow it, or copy the image into the "
                             "folder")


def select_shard(index: DatasetIndex, shard: str) -> DatasetIndex:
    """Keep shard I of N (`--shard I/N`, 0-based): a stable hash of the image id decides, so every machine
    computes the same partition without talking to the others, and shards can be merged later."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(f"--shard should be I/N with 0 <= I < N, e.g. 0/4; received {shard!r}")
    i, n = int(m.group(1)), int(m.group(2))

    def bucket(image_id: str) -> int:
        return int.from_bytes(hashlib.sha1(image_id.encode()).digest()[:8], "big") % n

    if index.shard:
        raise InputError(f"the index is already shard {index.shard}; shard the whole index once")
    entries = tuple(e for e in index.entries if bucket(e.image_id) == i)
    return replace(index, entries=entries, name=f"{index.name}-shard{i}of{n}", shard=f"{i}/{n}",
                   whole_fingerprint=index_fingerprint(index.entries), whole_images=len(index.entries))
