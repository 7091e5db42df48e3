"""Plain file helpers on real files: chunked SHA-256, atomic writes, walking an image folder."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from bottleneck.files import is_hidden, sha256_file, walk_files, write_json_atomic, write_text_atomic


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
