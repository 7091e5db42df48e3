"""Metadata CSVs: read, recognise the published layouts (HAM10000, ISIC 2019, ISIC 2020) by file name or columns,
find the image-id column, join several CSVs on it, turn one-hot columns into labels, and choose the metadata columns
a cache keeps (leaving out those that repeat the label).

ISIC 2019 ships its labels and its age/sex/site in two files, so one CSV cannot be assumed; the index (`index`)
receives one joined `Table` whatever was given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

ISIC2019_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
# The obvious image-id columns, preferred in this order when a CSV has several (compared case-insensitively).
ID_CANDIDATES = ("image_id", "image", "isic_id", "image_name", "filename")
# Columns that each state the diagnosis, in finer or coarser words: with one as the label, the others repeat it.
LABEL_FAMILIES = (frozenset({"diagnosis", "benign_malignant", "target"}),)
LAYOUTS = {
    "ham10000": {"id": "image_id", "label": "dx", "group": "lesion_id"},
    "isic2019": {"id": "image", "label": None, "group": "lesion_id"},  # labels from the one-hot columns
    "isic2020": {"id": "image_name", "label": "benign_malignant", "group": "patient_id"},
    "csv": {"id": None, "label": None, "group": None},
}
# The published file names: ISIC 2019's metadata CSV holds no class column, so only its name says what it is.
KNOWN_FILES = ((re.compile(r"HAM10000_metadata.*\.csv", re.I), "ham10000"),
               (re.compile(r"ISIC_2019_Training_(GroundTruth|Metadata).*\.csv", re.I), "isic2019"),
               (re.compile(r"ISIC_2020_Training_GroundTruth.*\.csv", re.I), "isic2020"))


def layout_of(path: Path, columns: set[str]) -> str:
    """The layout of one CSV: by its published file name, else by its columns; "csv" when neither tells."""
    for pattern, layout in KNOWN_FILES:
        if pattern.fullmatch(path.name):
            return layout
    if {"lesion_id", "image_id", "dx"} <= columns:
        return "ham10000"
    if "image" in columns and {"MEL", "NV", "BCC"} <= columns:
        return "isic2019"
    if {"image_name", "target"} <= columns:
        return "isic2020"
    return "csv"


def read_csv(path: Path):
    """A metadata CSV as text: every value a stripped str, ids like "NA" or "00123" kept as written."""
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
    return df.fillna("").apply(lambda col: col.str.strip())  # a short row leaves NaN: "" like any missing value


@dataclass(frozen=True)
class Part:
    """One CSV of a table: its file, its text, its layout and its image-id column."""
    path: Path
    frame: object  # pandas.DataFrame of str
    layout: str
    id_col: str


@dataclass(frozen=True)
class Table:
    """The metadata CSVs joined on the image id: one row per row of the first CSV (the one holding the labels)."""
    parts: tuple[Part, ...]  # the first is the one the rows come from
    frame: object  # pandas.DataFrame: the first CSV's columns, then each other's new ones; "" when missing
    source: str
    id_col: str  # in `frame`, the first CSV's id column
    label_col: str | None
    group_col: str | None
    labels: tuple[str | None, ...]
    own: frozenset[str]  # id, label, group and one-hot columns: never metadata
    notes: tuple[str, ...]

    @property
    def csv(self) -> Path:
        return self.parts[0].path


def read_table(csvs: list[Path], id_column: str | None, label_column: str | None,
               group_column: str | None) -> Table:
    """Read `csvs`, recognise their layout, and join them on the image id (`--id-column`, else the layout's, else
    the obvious one); the first CSV that holds the labels gives the rows."""
    notes: list[str] = []
    parts = [_part(csv, read_csv(csv), id_column, notes) for csv in csvs]
    first = next((p for p in parts if _has_labels(p, label_column)), parts[0])
    parts = [first, *(p for p in parts if p is not first)]
    for part in parts:
        if id_column is not None and part.id_col != id_column and (part is first or not part.id_col):
            raise InputError(f"{part.path} has no column {id_column!r} (--id-column); its columns are: "
                             f"{', '.join(part.frame.columns)}")
    source = next((p.layout for p in parts if p.layout != "csv"), "csv")
    frame = _join(parts, notes)
    columns = list(frame.columns)
    layout = LAYOUTS[source]
    label_col = label_column or (layout["label"] if layout["label"] in columns else None)
    if source == "isic2020" and label_col is None and "target" in columns:
        label_col = "target"
    group_col = group_column or (layout["group"] if layout["group"] in columns else None)
    for opt, col in (("--label-column", label_col), ("--group-column", group_col)):
        if col is not None and col not in columns:
            if len(parts) == 1:
                raise InputError(f"{first.path} has no column {col!r} ({opt}); its columns are: {', '.join(columns)}")
            shown = "; ".join(f"{p.path}: {', '.join(p.frame.columns)}" for p in parts)
            raise InputError(f"none of the metadata CSVs has a column {col!r} ({opt}); their columns are: {shown}")
    onehot = [c for c in ISIC2019_CLASSES if c in columns] if source == "isic2019" and label_col is None else []
    if label_col is not None:
        labels = tuple(v or None for v in frame[label_col])
    elif onehot:
        labels = _onehot_labels(frame, onehot, first)
    else:
        labels = (None,) * len(frame)
        if source == "csv":
            notes.append(f"{first.path} names no label column: its images are stored unlabeled (pass "
                         "--label-column C to label them)")
    own = frozenset({first.id_col, label_col, group_col, *onehot} - {None})
    return Table(tuple(parts), frame, source, first.id_col, label_col, group_col, labels, own, tuple(notes))


def _part(csv: Path, df, id_column: str | None, notes: list[str]) -> Part:
    """One CSV with its id column: `--id-column` where it has it, else its layout's, else the obvious one (""
    when `--id-column` names another column and nothing obvious is there: `read_table` says so)."""
    columns = list(df.columns)
    layout = layout_of(csv, set(columns))
    found = [c for name in ID_CANDIDATES for c in columns if c.lower() == name]
    if id_column is not None and id_column in columns:
        id_col = id_column
    elif LAYOUTS[layout]["id"] in columns:
        id_col = LAYOUTS[layout]["id"]
    elif found:
        id_col = found[0]
        if len(found) > 1 and id_column is None:
            notes.append(f"image ids from column {id_col!r} of {csv} (it also has {', '.join(found[1:])}; pass "
                         "--id-column to choose)")
    elif id_column is not None:
        return Part(csv, df, layout, "")
    else:
        raise InputError(f"cannot tell which column of {csv} holds image ids (columns: {', '.join(columns)}; "
                         f"none is called {', '.join(ID_CANDIDATES)}); pass --id-column and --label-column")
    ids = df[id_col]
    dup = ids[ids.duplicated()]
    if len(dup):
        raise InputError(f"duplicate image id {dup.iloc[0]!r} in {csv} ({len(dup)} duplicate rows); "
                         "each row must name a different image")
    if (ids == "").any():
        raise InputError(f"{csv} has a row with an empty {id_col!r} (row {int((ids == '').values.argmax()) + 2})")
    return Part(csv, df, layout, id_col)


def _has_labels(part: Part, label_column: str | None) -> bool:
    columns = set(part.frame.columns)
    if label_column is not None:
        return label_column in columns
    label = LAYOUTS[part.layout]["label"]
    return (label in columns or (part.layout == "isic2019" and "MEL" in columns)
            or (part.layout == "isic2020" and "target" in columns))


def _join(parts: list[Part], notes: list[str]):
    """The first part's rows, with each other part's new columns joined on the image id ("" where it has no row).
    A column two CSVs both hold must agree on every image they share."""
    frame = parts[0].frame
    key = parts[0].id_col
    origin = dict.fromkeys(frame.columns, parts[0].path)  # column -> the CSV it came from
    for part in parts[1:]:
        other = part.frame.rename(columns={part.id_col: key}) if part.id_col != key else part.frame
        if key in other.columns[other.columns.duplicated()]:
            raise InputError(f"{part.path} has both {part.id_col!r} and {key!r}; pass --id-column to say which "
                             "holds the image ids")
        shared = [c for c in other.columns if c != key and c in frame.columns]
        both = frame[[key, *shared]].merge(other[[key, *shared]], on=key, suffixes=("", "\0"))
        for c in shared:
            differ = both[c] != both[c + "\0"]
            if differ.any():
                k = int(differ.values.argmax())
                raise InputError(f"column {c!r} says {both[c].iloc[k]!r} in {origin[c]} but "
                                 f"{both[c + chr(0)].iloc[k]!r} in {part.path} for image {both[key].iloc[k]!r}; "
                                 "correct one of them (the CSVs are joined on the image id)")
        new = [c for c in other.columns if c not in frame.columns]
        mine, theirs = set(frame[key]), set(other[key])  # sets: Series.isin of arrow strings is 10x slower
        extra, lacking = len(theirs - mine), len(mine - theirs)
        frame = frame.merge(other[[key, *new]], on=key, how="left").fillna("")
        origin.update(dict.fromkeys(new, part.path))
        if extra or lacking:
            notes.append(f"joined {part.path} on the image id: "
                         + ", ".join(s for s in (f"{extra} of its ids are not in {parts[0].path} (ignored)"
                                                 if extra else "", f"{lacking} images have no row in it"
                                                 if lacking else "") if s))
    return frame


def _onehot_labels(frame, columns: list[str], part: Part) -> tuple[str | None, ...]:
    """One-hot class columns (ISIC 2019's MEL, NV, ...) as class names in lower case, as HAM10000 writes its dx
    (`mel`, `nv`): the two datasets' classes then line up. Every row must hold exactly one 1."""
    import pandas as pd

    values = frame[columns]
    numeric = values.replace("", "0").apply(lambda c: pd.to_numeric(c, errors="coerce"))
    bad = ~numeric.isin((0.0, 1.0))
    if bad.any().any():
        k, j = (int(i[0]) for i in bad.values.nonzero())
        raise InputError(f"{part.path}: image {frame[part.id_col].iloc[k]!r} has {values.iloc[k, j]!r} in one-hot "
                         f"column {columns[j]!r}; each class column holds 0 or 1 (1.0 for the image's class)")
    ones = numeric.sum(axis=1).to_numpy()
    wrong = (ones != 1).nonzero()[0]
    if len(wrong):
        k = int(wrong[0])
        hot = [c for c in columns if numeric[c].iloc[k] == 1]
        what = f"1 in {' and '.join(hot)}" if hot else f"no 1 in {', '.join(columns)}"
        more = f" (and {len(wrong) - 1} more rows)" if len(wrong) > 1 else ""
        raise InputError(f"{part.path}: image {frame[part.id_col].iloc[k]!r} has {what}{more}; give each row "
                         "exactly one class (1.0), or drop the row")
    return tuple(columns[int(j)].lower() for j in numeric.to_numpy().argmax(axis=1))


def label_determining(table: Table, candidates: list[str]) -> list[str]:
    """The `candidates` that repeat the label, so that a subgroup by them would be a class by another name: a
    column of the label's own family (ISIC 2020's diagnosis, benign_malignant, target), or one whose every value
    goes with a single label over all rows, with at least two values each seen twice on average. Id columns
    (patient_id, lesion_id, ...) are never counted: one id per lesion trivially has one label."""
    family = next((f for f in LABEL_FAMILIES if table.label_col in f), frozenset())
    labels = table.labels
    found = []
    for c in candidates:
        if c in family:
            found.append(c)
            continue
        if re.search(r"(^|[_\s-])id$", c, re.I) or c.lower() in ID_CANDIDATES:
            continue
        pairs = {(v, lab) for v, lab in zip(table.frame[c], labels) if v and lab is not None}
        rows = sum(1 for v, lab in zip(table.frame[c], labels) if v and lab is not None)
        values = {v for v, _ in pairs}
        if len(values) >= 2 and len(pairs) == len(values) and 2 * len(values) <= rows:
            found.append(c)
    return found


def companions(csvs: list[Path]) -> list[Path]:
    """Published CSVs of the same layout beside the given ones and not among them (ISIC 2019's metadata file
    beside its ground truth), for a note that says what else could be joined."""
    given = {p.resolve() for p in csvs}
    layouts = {layout for p in csvs for pattern, layout in KNOWN_FILES if pattern.fullmatch(p.name)}
    found = []
    for folder in {p.resolve().parent for p in csvs}:
        for p in sorted(folder.glob("*.csv")):
            if p.resolve() not in given and any(pattern.fullmatch(p.name) and layout in layouts
                                                for pattern, layout in KNOWN_FILES):
                found.append(p)
    return found
