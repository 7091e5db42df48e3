"""An undo file is applied only to the file it was made for (issue: a stale or foreign `<cache>.undo` destroyed a
good cache). The interrupted commit is made for real: an UndoFile saves pages and overwrites them, and is then
dropped without `finish`, as a SIGKILL leaves it (the kill itself: test_writer.py's crash harness)."""

import os
import shutil
import warnings

import numpy as np
import pytest
from conftest import feature_cache, file_digest, run_cli

from bottleneck.cache import load_cache
from bottleneck.cache.undo import UndoFile, rollback, undo_path
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import BottleneckWarning, CacheError


def _interrupted_commit(path):
    """Leave `path` as a commit killed midway leaves it: pages of its head (the superblock, past the user block
    HDF5 never writes) and of its end overwritten, their old bytes in `<path>.undo`, the file grown."""
    fd = os.open(path, os.O_RDWR)
    try:
        undo = UndoFile(fd, path)
        size = os.fstat(fd).st_size
        for offset in (600, 5000, size - 100):
            undo.seek(offset)
            undo.write(b"\xff" * 300)
        undo.undo.close()  # no finish(): the process died here
    finally:
        os.close(fd)
    assert undo_path(path).exists()


def _rows(path):
    d = load_cache(path)
    return list(d.image_ids), d.features.tolist(), d.labels.tolist()


@pytest.fixture
def caches(tmp_path):
    a = feature_cache(tmp_path / "a.h5", counts={"bcc": 40, "mel": 50}, seed=1)
    b = feature_cache(tmp_path / "b.h5", counts={"nv": 30, "mel": 30}, seed=2)
    return a, b


def test_the_undo_of_the_same_file_rolls_it_back_byte_for_byte(caches):
    a, _ = caches
    digest = file_digest(a)
    _interrupted_commit(a)
    assert file_digest(a) != digest
    assert len(load_cache(a).image_ids) == 90  # a reader rolls it back first
    assert file_digest(a) == digest and not undo_path(a).exists()


@pytest.mark.parametrize("ids", [True, False], ids=["ids", "caches-from-before-ids"])
def test_a_cache_copied_over_the_file_is_not_touched_by_its_old_undo(caches, ids):
    """The issue's case: another good cache copied over c.h5 (same inode), then a plain `info`. Caches written
    before ids existed (no user block id) are told apart by their sample pages."""
    a, b = caches
    if not ids:
        for path in caches:
            with open(path, "r+b") as f:
                f.write(bytes(24))
    _interrupted_commit(a)
    shutil.copyfile(b, a)  # in place: the inode stays
    digest, rows = file_digest(b), _rows(b)
    result = run_cli("info", a)
    assert result.exit_code == 0, result.output
    assert file_digest(a) == digest and _rows(a) == rows
    assert not undo_path(a).exists() and undo_path(a).with_name("a.h5.undo.foreign").exists()
    assert result.output.count("warning: undo file") == 1 and "a.h5.undo.foreign" in result.output


def test_a_file_replaced_by_rename_is_not_touched(caches):
    a, b = caches
    _interrupted_commit(a)
    os.replace(shutil.copyfile(b, a.with_name("new.h5")), a)  # a new inode
    digest = file_digest(a)
    with pytest.warns(BottleneckWarning, match="made for the cache file of id"):
        assert len(load_cache(a).image_ids) == 60
    assert file_digest(a) == digest


def test_a_deleted_cache_rebuilt_by_the_same_extract_keeps_its_new_rows(caches, tmp_path):
    """The issue's other case: the interrupted cache deleted, the same extract rerun: the first commit builds a new
    file, and the old undo is gone before it exists (no warning: it has no file left)."""
    a, _ = caches
    _interrupted_commit(a)
    config = load_cache(tmp_path / "b.h5").config
    a.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BottleneckWarning)  # ours; not pandas' first import's, whenever it comes
        feature_cache(a, counts={"bcc": 40, "mel": 50}, seed=1)
        assert not undo_path(a).exists()
        with CacheWriter(a, config) as w:  # a second commit, in place: nothing old is rolled onto it
            w.write_batch([dict(image_id="new", path="mel/new.jpg", label="mel", group="", sha256="e" * 64,
                                width=1, height=1)], np.ones((1, 32), np.float32))
    d = load_cache(a)
    assert len(d.image_ids) == 91 and d.image_ids[-1] == "new"


def test_an_undo_whose_pages_do_not_match_the_head_is_set_aside(caches):
    """Same inode and size, different head: the head rebuilt from the saved pages is compared, not only the
    inode (an inode number can be reused by a new file)."""
    a, _ = caches
    _interrupted_commit(a)
    fd = os.open(a, os.O_RDWR)
    try:
        os.pwrite(fd, bytes(range(64)), 20000)  # a byte of the head the commit never saved changes
        with pytest.warns(BottleneckWarning, match="its page at byte"):
            assert rollback(a, fd) is False
    finally:
        os.close(fd)
    assert undo_path(a).with_name("a.h5.undo.foreign").exists()


def test_garbage_in_the_undo_file_is_set_aside_and_a_cut_off_header_dropped(caches):
    a, _ = caches
    digest = file_digest(a)
    undo_path(a).write_bytes(b"not an undo file at all, long enough")
    with pytest.warns(BottleneckWarning, match="not a bottleneck undo journal"):
        load_cache(a)
    undo_path(a).write_bytes(b"BNUNDO02" + b"\x00" * 20)  # died while writing its header: nothing was changed
    load_cache(a)
    assert not undo_path(a).exists() and file_digest(a) == digest


def test_an_undo_the_reader_cannot_remove_names_the_folder(caches, monkeypatch):
    """A read-only folder: the undo could be applied but never removed, so every reader would be locked out. The
    reader refuses before writing anything, naming the folder. (Root ignores permission bits; as root the
    folder's answer is simulated.)"""
    a, _ = caches
    _interrupted_commit(a)
    digest = file_digest(a)
    folder = a.parent
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == os.fspath(folder)
                            and mode == os.W_OK else real(p, mode))
    else:
        folder.chmod(0o555)
    try:
        with pytest.raises(CacheError, match=f"cannot write to its folder {folder}.*write access"):
            load_cache(a)
        assert file_digest(a) == digest and undo_path(a).exists()
    finally:
        folder.chmod(0o755)
    monkeypatch.undo()
    assert len(load_cache(a).image_ids) == 90 and not undo_path(a).exists()


def test_a_large_commit_starts_its_flush_early_and_an_early_flush_error_is_raised_by_the_closing_sync(tmp_path,
                                                                                                    monkeypatch):
    """Past FLUSH_AHEAD bytes, what a commit wrote goes to the disk on a thread while it goes on; the kernel reports a
    write-back error once per open file, so an error that thread met must fail the commit's closing sync."""
    import errno

    from bottleneck.cache import undo as undo_mod

    path = tmp_path / "f.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        out = undo_mod.FdFile(fd, path)
        out.write(b"x" * (undo_mod.FLUSH_AHEAD + 1))
        assert out._ahead is not None  # started
        out.sync()
        assert path.stat().st_size == undo_mod.FLUSH_AHEAD + 1 and out.unflushed == 0

        def failing(_fd):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(undo_mod.os, "fdatasync", failing)
        out = undo_mod.FdFile(fd, path)
        out.seek(0)
        out.write(b"y" * undo_mod.FLUSH_AHEAD)
        with pytest.raises(OSError) as err:
            out.sync()
        assert err.value.errno == errno.EIO
    finally:
        os.close(fd)
