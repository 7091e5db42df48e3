"""Hostile inputs to indexing (issue 14): symlink loops and links out of the image folder through the real CLI,
and property tests of the folder walk, build_index and the CSV reader on random trees and random CSVs."""

from __future__ import annotations

import csv as csvlib
import io
import os
import tempfile
from pathlib import Path

import pytest
from conftest import TINY_ARGS, hostile_tree, run_cli
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bottleneck.cache.store import load_cache
from bottleneck.errors import InputError
from bottleneck.images.decode import IMAGE_EXTENSIONS
from bottleneck.images.index import build_index
from bottleneck.util.files import is_hidden, scan_folder

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the reported bug, through the CLI ---------------------------------------------------------------------------

@pytest.fixture
def hostile(tmp_path):
    return hostile_tree(tmp_path)


def test_extract_stores_each_real_image_once_and_follows_links_out_only_when_asked(hostile, tmp_path):
    r = run_cli("extract", hostile, *TINY_ARGS, "--cache", tmp_path / "c.h5")
    assert r.exit_code == 0, r.output
    data = load_cache(tmp_path / "c.h5", features=False)
    rows = sorted(zip(data.image_ids, (data.class_names[y] for y in data.labels)))
    assert rows == [(f"{c}/x{i}.jpg", c) for c in "ab" for i in range(3)]
    assert "a/loop: symlink loop" in r.output and "b/ext: symlink leaves the image folder" in r.output  # not silent

    r = run_cli("extract", hostile, *TINY_ARGS, "--cache", tmp_path / "f.h5", "--follow-symlinks")
    assert r.exit_code == 0, r.output
    data = load_cache(tmp_path / "f.h5", features=False)
    assert sorted(data.image_ids) == sorted([f"{c}/x{i}.jpg" for c in "ab" for i in range(3)]
                                            + ["a/out.jpg", "b/ext/o.jpg"])
    assert len(set(data.sha256)) == 8  # every row a different file: the loop still cut


def test_extract_refuses_a_csv_path_through_a_link_out_of_the_folder(hostile, tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("id,label\na/x0.jpg,mel\nb/ext/o.jpg,nv\n")
    args = ["extract", hostile, *TINY_ARGS, "--metadata", csv, "--id-column", "id", "--label-column", "label",
            "--cache", tmp_path / "c.h5"]
    r = run_cli(*args)
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith("error: image id 'b/ext/o.jpg'") and "--follow-symlinks" in r.output
    assert not (tmp_path / "c.h5").exists()
    assert run_cli(*args, "--follow-symlinks").exit_code == 0
    assert sorted(load_cache(tmp_path / "c.h5", features=False).image_ids) == ["a/x0.jpg", "b/ext/o.jpg"]


# --- property: the folder walk and build_index on random trees ---------------------------------------------------

NAMES = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=6),
    st.sampled_from([".hidden", "Thumbs.db", "__MACOSX", "a b", "x.y.z", " lead", "trail ", "é", "雪", "-"]),
).filter(lambda n: n not in (".", ".."))
LINK_KINDS = ("dir", "file", "ancestor", "out_dir", "out_sub", "out_file", "root_parent", "broken", "self")


@st.composite
def random_trees(draw):
    """A plan: folders (parent index, name), files (folder index, name, .jpg or not), links (folder index, name,
    kind, which target)."""
    folders = []
    for i in range(draw(st.integers(0, 6))):
        folders.append((draw(st.integers(0, i)), draw(NAMES)))  # parent 0 is the root, k is folders[k - 1]
    n = len(folders) + 1
    files = draw(st.lists(st.tuples(st.integers(0, n - 1), NAMES, st.booleans()), max_size=8))
    links = draw(st.lists(st.tuples(st.integers(0, n - 1), NAMES, st.sampled_from(LINK_KINDS), st.integers(0, 50)),
                          max_size=6))
    return folders, files, links, draw(st.booleans())


def make_tree(base: Path, plan) -> tuple[Path, set[str]]:
    """Build the plan under base/root (and base/out); return the root and the real paths of the files a correct
    walk finds: every regular file on a path of visible names, plus, when following, what visible links reach
    outside. Names that cannot be created (a clash with an earlier one) are left out of the plan."""
    folders, files, links, follow = plan
    root, out = base / "root", base / "out"
    for rel in ("o.jpg", "sub/p.jpg"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    (out / "back").symlink_to(root)  # outside, pointing back in: reached only by following
    root.mkdir()
    dirs = [root]
    for parent, name in folders:
        path = dirs[parent] / name
        try:
            path.mkdir()
        except OSError:
            path = dirs[parent]  # a clash: the folder's children go to its parent
        dirs.append(path)
    for folder, name, jpg in files:
        try:
            (dirs[folder] / (name + (".jpg" if jpg else ""))).write_bytes(b"x")
        except OSError:
            pass
    visible = lambda p: not any(is_hidden(part) for part in p.relative_to(base).parts)  # noqa: E731
    real_dirs = [d for d in dirs if visible(d)]
    real_files = [Path(dp) / f for dp, _, fs in os.walk(root) for f in fs
                  if visible(Path(dp) / f) and (Path(dp) / f).is_file() and not (Path(dp) / f).is_symlink()]
    expected = {str(f) for f in real_files}
    for folder, name, kind, k in links:
        link = dirs[folder] / name
        targets = {"dir": real_dirs, "file": real_files or real_dirs, "ancestor": [link.parent, *link.parent.parents],
                   "out_dir": [out], "out_sub": [out / "sub"], "out_file": [out / "o.jpg"],
                   "root_parent": [base], "broken": [base / "nowhere"], "self": [link]}[kind]
        target = targets[k % len(targets)]
        try:
            link.symlink_to(os.path.relpath(target, link.parent) if k % 2 else target)
        except OSError:
            continue
        if follow and visible(link) and kind.startswith("out_"):
            expected |= {str(out / "o.jpg"), str(out / "sub" / "p.jpg")} if kind == "out_dir" else \
                {str(out / "sub" / "p.jpg")} if kind == "out_sub" else {str(out / "o.jpg")}
    return root, expected


@SETTINGS
@given(random_trees())
# the reported tree: a/loop -> .. beside images in a/ and b/, and a link out of the root; with and without following
@example(([(0, "a"), (0, "b")], [(1, "x", True), (2, "y", True)],
          [(1, "loop", "ancestor", 1), (2, "ext", "out_dir", 0), (1, "o.jpg", "out_file", 1)], False))
@example(([(0, "a"), (0, "b")], [(1, "x", True), (2, "y", True)],
          [(1, "loop", "ancestor", 1), (2, "ext", "out_dir", 0), (1, "up", "root_parent", 0)], True))
# a skipped link under a folder named "\n": the error that names it stays on one line
@example(([(0, "\n")], [], [(1, "l", "out_file", 0)], False))
def test_walk_finds_every_visible_file_once_and_nothing_outside_unless_following(plan):
    follow = plan[3]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp).resolve()
        root, expected = make_tree(base, plan)
        w = scan_folder(root, follow_symlinks=follow)
        event(f"{len(w.files)} files, {len(w.skipped)} skipped")
        assert len(set(w.reals)) == len(w.reals)  # nothing twice
        assert set(w.reals) == expected
        assert all(os.path.realpath(p) == r and p.is_relative_to(root) for p, r in zip(w.files, w.reals))
        assert all(os.path.islink(p) or not os.path.isfile(p) for p, _ in w.skipped)  # links and special files

        try:
            index = build_index(root, follow_symlinks=follow)
        except InputError as exc:  # an empty folder, or one without a single image file
            assert "\n" not in str(exc) and str(root) in str(exc)
            has_classes = any(len(p.relative_to(root).parts) == 1 for p in w.folders)
            candidates = [p for p in w.files if (len(p.relative_to(root).parts) > 1) == has_classes]
            assert not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in candidates)
            return
        reals = [os.path.realpath(e.path) for e in index.entries]
        assert len(set(reals)) == len(reals)
        assert set(reals) | {os.path.realpath(root / name) for name in index.ignored_files} == expected
        assert all(e.label == (e.rel_path.split("/")[0] if index.source == "folders" else None)
                   for e in index.entries)
        assert {p for p, _ in index.skipped_paths} == {p.relative_to(root).as_posix() for p, _ in w.skipped}


# --- property: the CSV reader on random CSVs ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def csv_tree(tmp_path_factory):
    """imgs/: p/{x0.jpg, x1.png, dup.jpg}, q/{y é.jpg, c,d.jpg, dup.jpg}, q/in -> ../p, ext -> ../out (o.jpg)."""
    base = tmp_path_factory.mktemp("csvtree")
    root = base / "imgs"
    for rel in ("p/x0.jpg", "p/x1.png", "p/dup.jpg", "q/y é.jpg", "q/c,d.jpg", "q/dup.jpg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    (base / "out").mkdir()
    (base / "out" / "o.jpg").write_bytes(b"o")
    (root / "q" / "in").symlink_to("../p")
    (root / "ext").symlink_to(base / "out")
    return root


ERROR, MISSING = "error", None
# id as written -> (the file it names without --follow-symlinks, with it); ERROR: the whole CSV is refused
IDS = {
    "x0.jpg": ("p/x0.jpg",) * 2, "x0": ("p/x0.jpg",) * 2, "p/x0.jpg": ("p/x0.jpg",) * 2, " p/x0 ": ("p/x0.jpg",) * 2,
    "q/in/x0.jpg": ("p/x0.jpg",) * 2, "p\\x0.jpg": ("p/x0.jpg",) * 2, "x1": ("p/x1.png",) * 2,
    "y é": ("q/y é.jpg",) * 2, "q/y é.jpg": ("q/y é.jpg",) * 2, "c,d.jpg": ("q/c,d.jpg",) * 2,
    "dup": (ERROR,) * 2, "dup.jpg": (ERROR,) * 2, "p/dup": ("p/dup.jpg",) * 2, "q/dup.jpg": ("q/dup.jpg",) * 2,
    "o.jpg": (MISSING, "ext/o.jpg"), "ext/o.jpg": (ERROR, "ext/o.jpg"), "ext/o": (ERROR, "ext/o.jpg"),
    "nothere.jpg": (MISSING,) * 2, "p/nothere.jpg": (MISSING,) * 2,
    "../imgs/p/x0.jpg": (ERROR,) * 2, "/etc/passwd": (ERROR,) * 2, "": (ERROR,) * 2, "   ": (ERROR,) * 2,
}
WALKED = {"p/x0.jpg", "p/x1.png", "p/dup.jpg", "q/y é.jpg", "q/c,d.jpg", "q/dup.jpg"}
LABEL_CHARS = {"latin-1": "ab ,\"'é\nü;", "utf-8": "ab ,\"'é\n雪😀;\0\t", "utf-8-sig": "ab ,\"'é\n雪😀;\x85"}


GOOD = sorted(i for i, (plain, _) in IDS.items() if plain != ERROR)
BAD = sorted(i for i, (plain, _) in IDS.items() if plain == ERROR)


@st.composite
def random_csvs(draw):
    """Rows of ids that name different files, then, a third of the time, one hostile row among them: an id refused
    outright, the same id again, or another id of a file already named."""
    encoding = draw(st.sampled_from(sorted(LABEL_CHARS)))
    labels = st.text(LABEL_CHARS[encoding], max_size=5)
    rows = draw(st.lists(st.tuples(st.sampled_from(GOOD), labels), min_size=1, max_size=5,
                         unique_by=lambda row: IDS[row[0]][0] or row[0].strip()))
    if draw(st.integers(0, 2)) == 0:
        named = {IDS[i][0] for i, _ in rows}
        twins = [i for i in GOOD if IDS[i][0] in named] or GOOD
        hostile = draw(st.sampled_from(BAD) | st.sampled_from([r[0] for r in rows]) | st.sampled_from(twins))
        rows.insert(draw(st.integers(0, len(rows))), (hostile, draw(labels)))
    return (encoding, rows, draw(st.sampled_from(["\n", "\r\n"])),
            draw(st.sampled_from([csvlib.QUOTE_MINIMAL, csvlib.QUOTE_ALL])), draw(st.integers(0, 5)) == 0,
            draw(st.booleans()))


def expected_outcome(rows, encoding, text, ragged, follow):
    """ERROR, or (entries as (id, rel_path, label), ids without an image) as a correct reader gives them."""
    if ragged or not rows or (encoding == "latin-1" and not text.isascii()):
        return ERROR
    ids = [i.strip() for i, _ in rows]
    if len(set(ids)) < len(ids):
        return ERROR
    if any(ch in label.strip() for _, label in rows for ch in "\0\t\n\x85"):  # a control character in a label
        return ERROR
    entries, missing, named = [], [], set()
    for (image_id, label), key in zip(rows, ids):
        target = IDS[image_id][follow]
        if target == ERROR or target in named:  # refused, or a second id naming the same file
            return ERROR
        if target is MISSING:
            missing.append(key)
        else:
            named.add(target)
            entries.append((key, target, label.strip() or None))
    return (entries, tuple(missing)) if entries else ERROR


@SETTINGS
@given(random_csvs())
@example(("utf-8", [("x0", "a"), ("p/x0.jpg", "b")], "\n", csvlib.QUOTE_MINIMAL, False, False))  # one file twice
@example(("utf-8-sig", [("o.jpg", "a"), ("q/in/x0.jpg", " b ")], "\r\n", csvlib.QUOTE_ALL, False, False))
@example(("utf-8", [("ext/o.jpg", "a"), ("o.jpg", "b")], "\n", csvlib.QUOTE_MINIMAL, False, True))
@example(("latin-1", [("y é", "é")], "\r\n", csvlib.QUOTE_MINIMAL, False, False))  # not UTF-8
def test_csv_reader_gives_the_right_index_or_one_line_naming_the_csv(csv_tree, case):
    encoding, rows, newline, quoting, ragged, follow = case
    buf = io.StringIO()
    writer = csvlib.writer(buf, lineterminator=newline, quoting=quoting)
    writer.writerow(["id", "label"])
    writer.writerows(rows)
    text = buf.getvalue() + (f"a,b,c{newline}" if ragged else "")  # a row with a field too many
    csv = csv_tree.parent / "meta.csv"
    csv.write_bytes(text.encode(encoding))
    want = expected_outcome(rows, encoding, text, ragged, follow)
    event("refused" if want == ERROR else "indexed")
    try:
        index = build_index(csv_tree, csv, id_column="id", label_column="label", follow_symlinks=follow)
    except InputError as exc:
        assert want == ERROR, f"refused a good CSV: {exc}"
        assert "\n" not in str(exc) and str(csv) in str(exc)
        return
    assert want != ERROR, "accepted a CSV it should refuse"
    entries, missing = want
    assert [(e.image_id, e.rel_path, e.label) for e in index.entries] == entries
    assert all(e.path.is_file() and e.path.is_relative_to(csv_tree) for e in index.entries)
    assert index.rows_without_image == missing
    walked = WALKED | ({"ext/o.jpg"} if follow else set())
    assert set(index.images_without_row) == walked - {rel for _, rel, _ in entries}
