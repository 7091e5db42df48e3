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

ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


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


def build_index(data: str | Path, metadata: str | Path | None = None, id_column: str | None = None,
                label_column: str | None = None, group_column: str | None = None,
                follow_symlinks: bool = False, meta_columns: str | tuple[str, ...] = "all") -> DatasetIndex:
    """Index `data`: class folders (`DATA/<class>/*`), or an image folder plus a metadata CSV.

    A symlink is followed only when its target lies inside `data` (`follow_symlinks`: wherever it leads, loops
    still cut); each real file is indexed once, and what was skipped is in `skipped_paths` with the reason.
    `meta_columns` (`--meta-columns`): which CSV columns each entry carries as metadata, "all" (every column but
    the id, label and group ones), "none", or a list of names (or "C,C")."""
    wanted = parse_meta_columns(meta_columns)
    root = Path(data).expanduser()
    if not root.exists():
        raise InputError(f"data folder {root} does not exist; pass the folder that holds your images")
    if not root.is_dir():
        raise InputError(f"data path {root} is a file, not a folder; pass the folder that holds your images "
                         "(and a metadata CSV with --metadata)")
    root = root.resolve()
    if metadata is None and (id_column or label_column or group_column):
        raise InputError("--id-column/--label-column/--group-column need --metadata CSV")
    if metadata is None:
        metadata = _find_known_csv(root)
    if metadata is not None:
        return _index_from_csv(root, Path(metadata).expanduser(), id_column, label_column, group_column,
                               follow_symlinks, wanted)
    if wanted not in ("all", "none"):
        raise InputError(f"--meta-columns {','.join(wanted)} needs a metadata CSV, but {root} is indexed as class "
                         "folders, which carry no metadata columns; pass --metadata CSV, or drop --meta-columns")
    return _index_from_folders(root, follow_symlinks)


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


def _find_known_csv(root: Path) -> Path | None:
    """A top-level CSV in a recognised format (e.g. HAM10000_metadata.csv) is used without --metadata,
    so `bottleneck extract HAM10000/` does not mistake `HAM10000_images_part_1/` for a class."""
    for csv in sorted(root.glob("*.csv")):
        try:
            with open(csv, encoding="utf-8-sig", errors="replace") as f:
                header = {c.strip() for c in f.readline().split(",")}
        except OSError:
            continue
        if _detect_format(header)[0] != "csv":
            return csv
    return None


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


def _detect_format(columns: set[str]) -> tuple[str, dict]:
    if {"lesion_id", "image_id", "dx"} <= columns:
        return "ham10000", {"id": "image_id", "label": "dx", "group": "lesion_id"}
    if "image" in columns and {"MEL", "NV", "BCC"} <= columns:
        return "isic2019", {"id": "image", "label": None, "group": "lesion_id" if "lesion_id" in columns else None}
    if {"image_name", "target"} <= columns:
        label = "benign_malignant" if "benign_malignant" in columns else "target"
        return "isic2020", {"id": "image_name", "label": label,
                            "group": "patient_id" if "patient_id" in columns else None}
    return "csv", {"id": None, "label": None, "group": None}


def _read_csv(path: Path):
    import pandas as pd  # 0.5 s of import: only indexing a CSV pays it, not every command's start-up

    if not path.is_file():
        raise InputError(f"metadata CSV {path} does not exist")
    try:
        # utf-8-sig strips a BOM; dtype=str and no NA parsing keep ids like "NA" or "00123" as written.
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True)
    except UnicodeDecodeError as exc:  # guessing another encoding could misread ids silently: say what to do
        raise InputError(f"metadata CSV {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start}); save it as UTF-8, e.g. 'CSV UTF-8' in Excel") from None
    except (ValueError, pd.errors.ParserError) as exc:
        # pandas' tokenizer messages end in a newline: one line, as every error is
        raise InputError(f"cannot read metadata CSV {path}: {' '.join(str(exc).split())}") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise InputError(f"metadata CSV {path} has no rows")
    return df.apply(lambda col: col.str.strip())


def _index_from_csv(root: Path, csv: Path, id_column, label_column, group_column,
                    follow_symlinks: bool, wanted: str | tuple[str, ...] = "all") -> DatasetIndex:
    df = _read_csv(csv)
    columns = set(df.columns)
    source, cols = _detect_format(columns)
    id_col = id_column or cols["id"]
    lab_col = label_column or cols["label"]
    grp_col = group_column or cols["group"]
    if id_col is None:
        raise InputError(f"cannot tell which column of {csv} holds image ids (columns: {', '.join(df.columns)}); "
                         "pass --id-column and --label-column")
    for opt, col in (("--id-column", id_col), ("--label-column", lab_col), ("--group-column", grp_col)):
        if col is not None and col not in columns:
            raise InputError(f"{csv} has no column {col!r} ({opt}); its columns are: {', '.join(df.columns)}")

    ids = df[id_col]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(f"duplicate image id {dup.iloc[0]!r} in {csv} ({len(dup)} duplicate rows); "
                         "each row must name a different image")
    if (ids == "").any():
        raise InputError(f"{csv} has a row with an empty {id_col!r} (row {int((ids == '').values.argmax()) + 2})")

    if lab_col is not None:
        labels = [v or None for v in df[lab_col]]
    elif source == "isic2019" and label_column is None:
        onehot = [c for c in ISIC2019_CLASSES if c in columns]
        values = df[onehot].apply(lambda c: c.map(lambda v: float(v or 0))).to_numpy()
        labels = [onehot[int(r.argmax())] if r.max() > 0 else None for r in values]
    else:
        labels = [None] * len(df)
    groups = list(df[grp_col]) if grp_col is not None else [""] * len(df)
    own = {id_col, lab_col, grp_col} | (set(ISIC2019_CLASSES) if source == "isic2019" and lab_col is None else set())
    meta_cols = _meta_columns(csv, list(df.columns), wanted, own)
    _refuse_control_characters(csv, df, [c for c in (id_col, lab_col, grp_col) if c is not None], meta_cols)
    values = {c: [v if isinstance(v, str) else "" for v in df[c]] for c in meta_cols}  # a short row: NaN -> ""
    metas = [tuple((c, values[c][k]) for c in meta_cols) for k in range(len(df))]

    finder = _ImageFinder(root, follow_symlinks)
    entries, missing, named = [], [], {}  # named: real path -> the first id that named it
    for image_id, label, group, meta in zip(ids, labels, groups, metas):
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
        raise InputError(f"none of the {len(df)} ids in {csv} (column {id_col!r}) matches an image file under "
                         f"{root}; check the image folder and --id-column{_skipped_hint(finder.skipped)}")
    unlisted = tuple(p.relative_to(root).as_posix() for p, r in zip(finder.images, finder.reals) if r not in named)
    classes = tuple(sorted({e.label for e in entries if e.label is not None}))
    return DatasetIndex(root, dataset_name(root), source, tuple(entries), classes, csv.resolve(),
                        tuple(missing), unlisted, skipped_paths=finder.skipped, meta_columns=meta_cols)


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


def _meta_columns(csv: Path, columns: list[str], wanted: str | tuple[str, ...], own: set) -> tuple[str, ...]:
    """The CSV columns kept as metadata: every one but the id/label/group columns (`own`) for "all", none for
    "none", else the named ones, each of which the CSV must have and the cache must be able to name."""
    if wanted == "none":
        return ()
    if wanted == "all":
        return tuple(c for c in columns if c not in own and _storable_column(c))
    unknown = [c for c in wanted if c not in columns]
    if unknown:
        raise InputError(f"{csv} has no column {unknown[0]!r} (--meta-columns); its columns are: "
                         f"{', '.join(columns)}")
    for c in wanted:
        if not _storable_column(c):
            raise InputError(f"column {c!r} of {csv} cannot name a metadata column of the cache (it holds '/' or is "
                             "'.'); rename it in the CSV, or leave it out of --meta-columns")
    return wanted


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
