"""Plain file helpers on real files: chunked SHA-256, atomic writes, walking an image folder (symlinks included)."""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from bottleneck.util.files import (
    LINK_BROKEN,
    LINK_LOOP,
    LINK_OUTSIDE,
    NOT_REGULAR,
    finite_or_null,
    is_hidden,
    scan_folder,
    sha256_file,
    walk_files,
    write_json_atomic,
    write_text_atomic,
)


def test_sha256_file_equals_hashlib_over_many_chunks(tmp_path):
    data = os.urandom(10_000) + bytes(range(256)) * 3
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path, chunk=7) == expected  # 1,539 reads, the last one short
    assert sha256_file(path, chunk=len(data)) == expected
    assert sha256_file(str(path)) == expected  # default chunk, str path
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty, chunk=7) == hashlib.sha256(b"").hexdigest()


def test_write_text_atomic_replaces_the_content_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("old content that is longer than the new one")
    for fsync in (False, True):
        assert write_text_atomic(path, f"new: café {fsync}", fsync=fsync) == path
        assert path.read_text(encoding="utf-8") == f"new: café {fsync}"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    write_text_atomic(tmp_path / "fresh.txt", "")  # a file that did not exist yet
    assert (tmp_path / "fresh.txt").read_text() == "" and not list(tmp_path.glob("*.tmp"))


def test_write_json_atomic_round_trips(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "d"}}
    path = write_json_atomic(tmp_path / "x.json", obj)
    assert json.loads(path.read_text()) == obj and "\n  " in path.read_text()  # indented by default
    write_json_atomic(path, [1], indent=None)
    assert path.read_text() == "[1]" and not list(tmp_path.glob("*.tmp"))


def strict_loads(text: str):
    """json.loads as a strict reader (jq, JavaScript): NaN, Infinity and -Infinity are errors."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c} written"))


def test_write_json_atomic_refuses_nan_and_infinities_and_leaves_the_old_file(tmp_path):
    path = write_json_atomic(tmp_path / "config.json", {"lr": 0.001})
    for bad in (math.nan, math.inf, -math.inf, np.float64("nan"), np.float64("inf")):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            write_json_atomic(path, {"memory_gb": bad})
        assert strict_loads(path.read_text()) == {"lr": 0.001} and not list(tmp_path.glob("*.tmp"))


def test_metrics_with_undefined_figures_are_written_as_null_and_read_strictly(tmp_path):
    metrics = {"test": {"accuracy": 1.0, "roc_auc": {"mel": math.nan, "nv": np.float64(0.75)}, "n": 6,
                        "ece": np.float32("inf"), "ok": True, "curve": [0.5, -math.inf, (1, math.nan)]}}
    path = write_json_atomic(tmp_path / "metrics.json", finite_or_null(metrics))
    back = strict_loads(path.read_text())
    assert back == {"test": {"accuracy": 1.0, "roc_auc": {"mel": None, "nv": 0.75}, "n": 6, "ece": None, "ok": True,
                             "curve": [0.5, None, [1, None]]}}
    assert finite_or_null({"n": 3, "flag": False}) == {"n": 3, "flag": False}  # ints and bools are never null


def test_every_json_text_the_package_writes_is_strict():
    """Every json.dump/json.dumps under bottleneck/ passes allow_nan=False: its text ends up in a file or an HDF5
    attribute, where a bare NaN or Infinity would be refused by strict readers (a new call is checked here too)."""
    loose = []
    for module in sorted((Path(__file__).parents[2] / "bottleneck").rglob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("dump", "dumps") and getattr(node.func.value, "id", "") == "json"):
                strict = any(k.arg == "allow_nan" and getattr(k.value, "value", True) is False for k in node.keywords)
                if not strict:
                    loose.append(f"{module.name}:{node.lineno}")
    assert not loose, f"json.dump(s) without allow_nan=False: {loose}"


@pytest.mark.parametrize("name, hidden", [(".x", True), (".DS_Store", True), ("Thumbs.db", True),
                                          ("desktop.ini", True), ("__MACOSX", True), ("img.jpg", False),
                                          ("x.", False), ("thumbs.db.jpg", False)])
def test_is_hidden(name, hidden):
    assert is_hidden(name) is hidden


def test_walk_files_skips_hidden_files_and_folders_and_is_sorted(tmp_path):
    visible = ["a.jpg", "b/z.png", "b/c/a.jpg", "B2/x.jpg", "b/c/d/e.jpg", "z"]
    hidden = [".x", "Thumbs.db", "desktop.ini", "b/.hidden.jpg", "b/Thumbs.db", "__MACOSX/a/b.jpg", ".git/config",
              "b/c/.cache/a.jpg", "b/__MACOSX/img.jpg"]
    for rel in visible + hidden:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = walk_files(tmp_path)
    rels = [p.relative_to(tmp_path).as_posix() for p in found]
    assert set(rels) == set(visible)
    # files of a folder first, then its subfolders, each level in sorted order; the same on every call
    assert rels == ["a.jpg", "z", "B2/x.jpg", "b/z.png", "b/c/a.jpg", "b/c/d/e.jpg"]
    assert walk_files(tmp_path) == found and all(p.is_file() for p in found)
    assert walk_files(tmp_path / "empty-or-missing") == []


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rels(root, paths):
    return [p.relative_to(root).as_posix() for p in paths]


@pytest.fixture
def linked_tree(tmp_path):
    """root/{a,b}/ with real files; links: a loop up, a link to the root's parent, a self-loop, a broken link,
    links to a file and a folder outside the root, and (in b/) one to a folder outside holding a link back."""
    root = tmp_path / "root"
    for rel in ("a/1.jpg", "a/sub/2.jpg", "b/3.jpg"):
        touch(root / rel)
    touch(tmp_path / "out" / "o.jpg")
    touch(tmp_path / "out" / "deep" / "d.jpg")
    touch(tmp_path / "solo.jpg")
    (root / "a" / "sub" / "up").symlink_to("../..")  # the root itself
    (root / "a" / "parent").symlink_to(tmp_path)  # above the root: walking it would find the root again
    (root / "a" / "self").symlink_to("self")
    (root / "a" / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (root / "a" / "solo.jpg").symlink_to(tmp_path / "solo.jpg")
    (root / "b" / "out").symlink_to(tmp_path / "out")
    (tmp_path / "out" / "back").symlink_to(root / "b")  # outside -> inside: already indexed
    return root


def test_scan_folder_follows_no_link_out_of_the_root_and_lists_each_skipped_link(linked_tree):
    root = linked_tree
    w = scan_folder(root)
    assert rels(root, w.files) == ["a/1.jpg", "a/sub/2.jpg", "b/3.jpg"]
    assert w.reals == tuple(os.path.realpath(p) for p in w.files)
    assert rels(root, w.folders) == ["a", "a/sub", "b"]
    assert {rel: reason for rel, reason in ((p.relative_to(root).as_posix(), r) for p, r in w.skipped)} == {
        "a/gone.jpg": LINK_BROKEN, "a/parent": LINK_OUTSIDE, "a/self": LINK_LOOP, "a/solo.jpg": LINK_OUTSIDE,
        "a/sub/up": LINK_LOOP, "b/out": LINK_OUTSIDE}
    assert walk_files(root) == list(w.files)


def test_follow_symlinks_leaves_the_root_but_still_cuts_loops_and_walks_each_folder_once(linked_tree):
    root = linked_tree
    w = scan_folder(root, follow_symlinks=True)
    assert rels(root, w.files) == ["a/1.jpg", "a/solo.jpg", "a/sub/2.jpg", "b/3.jpg", "b/out/o.jpg",
                                   "b/out/deep/d.jpg"]
    reasons = {p.relative_to(root).as_posix(): r for p, r in w.skipped}
    assert reasons["a/sub/up"] == LINK_LOOP and reasons["a/self"] == LINK_LOOP and reasons["a/gone.jpg"] == LINK_BROKEN
    assert reasons["a/parent"] == LINK_LOOP  # the root's parent is above it: walking it would loop
    assert reasons["b/out/back"] == LINK_LOOP  # b -> out -> back -> b, along one path
    assert len(set(w.reals)) == len(w.reals) == 6


def test_a_file_reached_through_links_is_listed_once_under_its_real_path(tmp_path):
    root = tmp_path / "root"
    touch(root / "b" / "x.jpg")
    touch(root / "b" / "y.jpg")
    touch(tmp_path / "ext" / "e.jpg")
    (root / "a").mkdir()
    (root / "a" / "alias").symlink_to("../b")  # met before b in walk order: the real path still wins
    (root / "a" / "y.jpg").symlink_to("../b/y.jpg")
    (root / "a" / "e1").symlink_to(tmp_path / "ext")
    (root / "c").mkdir()
    (root / "c" / "e2").symlink_to(tmp_path / "ext")  # the same outside folder again: the first link wins
    (root / "c" / "e.jpg").symlink_to(tmp_path / "ext" / "e.jpg")
    w = scan_folder(root, follow_symlinks=True)
    assert rels(root, w.files) == ["a/e1/e.jpg", "b/x.jpg", "b/y.jpg"]  # in walk order
    reasons = {p.relative_to(root).as_posix(): r for p, r in w.skipped}
    assert reasons == {"a/alias": "symlink to a folder already indexed as b",
                       "a/y.jpg": "symlink to a file already indexed as b/y.jpg",
                       "c/e2": "symlink to a folder already indexed as a/e1",
                       "c/e.jpg": "symlink to a file already indexed as a/e1/e.jpg"}
    assert scan_folder(root, follow_symlinks=True) == w  # deterministic


def test_special_files_and_unreadable_folders_are_listed_not_read(tmp_path):
    touch(tmp_path / "a.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block the extraction for ever
    (tmp_path / "fifo-link.jpg").symlink_to("pipe.jpg")
    w = scan_folder(tmp_path)
    assert rels(tmp_path, w.files) == ["a.jpg"]
    assert [(p.name, r) for p, r in w.skipped] == [("fifo-link.jpg", NOT_REGULAR), ("pipe.jpg", NOT_REGULAR)]
    if os.geteuid() != 0:  # root reads any folder
        (tmp_path / "locked").mkdir()
        (tmp_path / "locked").chmod(0)
        try:
            assert [(p.name, r) for p, r in scan_folder(tmp_path).skipped][-1] == \
                ("locked", "cannot read folder: Permission denied")
        finally:
            (tmp_path / "locked").chmod(0o755)


def test_links_that_multiply_paths_and_deep_trees_do_not_wedge_the_walk(tmp_path):
    # 20 folders, each with two links to the next: 2**20 paths through links, 20 folders to walk
    root = tmp_path / "root"
    for i in range(20):
        touch(root / f"d{i:02d}" / "f.jpg")
        if i:
            for k in ("l1", "l2"):
                (root / f"d{i - 1:02d}" / k).symlink_to(f"../d{i:02d}")
    deep = root / "deep"
    deep.mkdir()
    for _ in range(1200):  # deeper than Python's recursion limit (which os.makedirs itself would hit)
        deep = deep / "n"
        deep.mkdir()
    (deep / "leaf.jpg").write_bytes(b"x")
    try:
        start = time.monotonic()
        w = scan_folder(root)
        assert time.monotonic() - start < 10
    finally:  # bottom up, by hand: pytest's own clean-up (shutil.rmtree) recurses once per level and would fail
        (deep / "leaf.jpg").unlink()
        while deep != root:
            deep.rmdir()
            deep = deep.parent
    assert len(w.files) == 21 and len(set(w.reals)) == 21
    assert len(w.skipped) == 38 and all("already indexed" in r for _, r in w.skipped)
