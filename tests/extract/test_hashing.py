"""The hash pass of extraction on real files: every file's SHA-256 in the entries' order, computed on threads, and an
unreadable file's reason."""

from __future__ import annotations

from conftest import file_digest, write_image

from bottleneck.extract.hashing import FileHashes
from bottleneck.images.index import Entry


def test_hashes_come_in_entry_order_with_the_reason_of_an_unreadable_file(tmp_path):
    paths = [write_image(tmp_path / f"{k:02d}.jpg", seed=k) for k in range(24)][::-1]  # not in file-name order
    entries = [Entry(p.name, p, p.name, None) for p in paths]
    entries.insert(5, Entry("gone.jpg", tmp_path / "gone.jpg", "gone.jpg", None))
    with FileHashes(entries, progress=False, threads=4) as hashing:
        out = hashing.result()
    assert out[:5] + out[6:] == [(file_digest(p), "") for p in paths]
    assert out[5][0] == "" and out[5][1].startswith("cannot read file: No such file")
