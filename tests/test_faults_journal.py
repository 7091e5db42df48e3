"""Faults that lose nothing and never wedge (the batch journal's part): damaged or stale journal files, file names
that are not UTF-8, write errors (file too large, disk full), Ctrl-C at any moment, and a SIGKILL at every step of
the journal. Every time the rerun ends with exactly the features of an uninterrupted extraction."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARGS, extract_opts, run_cli, write_image

import bottleneck.cache.writer as cache_write
import bottleneck.extract.hashing as hashing_mod
import bottleneck.extract.run as extract_mod
from bottleneck.cache.batch import DamagedBatch, check_batch, storable_text
from bottleneck.cache.journal import CRASH_ENV, Journal, journal_dir, pending_batches
from bottleneck.cache.store import load_cache, read_failed
from bottleneck.errors import BottleneckWarning, CacheError
from bottleneck.extract.forward import NOT_UTF8
from bottleneck.extract.run import extract, make_config
from bottleneck.images.index import build_index


def _tree(root: Path, n: int = 8) -> Path:
    for i in range(n):
        write_image(root / ("mel" if i % 2 else "nv") / f"{i:02d}.png", seed=i)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An 8-image tree and its uninterrupted extraction (batches of 4): (root, image id -> features)."""
    tmp = tmp_path_factory.mktemp("ref")
    root = _tree(tmp / "data")
    extract(build_index(root), extract_opts(tmp, precision="float32"))
    return root, _features(tmp / "c.h5")


def _features(cache: Path) -> dict[str, np.ndarray]:
    d = load_cache(cache)
    return dict(zip(d.image_ids, d.features))


def _same(cache: Path, expected: dict[str, np.ndarray]) -> bool:
    got = _features(cache)
    return got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in expected)


def _row(i: int) -> dict:
    return dict(image_id=f"x{i}", path=f"mel/x{i}.png", label="mel", group="", sha256=f"{i:064x}", width=1,
                height=1)


# -- the journal's files ----------------------------------------------------------------------------------------

def test_damaged_and_stale_journal_files_are_set_aside_and_the_rerun_completes(tmp_path, reference):
    """A batch whose bytes fail its CRC, one of another feature size, a file merely named like a batch, a record
    cut off at a segment's end and parts of files an older version cut off mid-write: each damaged batch is kept
    in damaged/ with one warning naming it, the cut-off record and the parts are removed, and the extraction ends
    with exactly the uninterrupted features."""
    root, expected = reference
    o = extract_opts(tmp_path)
    config = make_config(o)
    journal = Journal(o.cache, config)
    whole = journal.write([_row(1), _row(2)], np.ones((2, config.num_features), np.float32))
    cut = journal.write([_row(4)], np.ones((1, config.num_features), np.float32))
    journal.close_segment()
    with open(whole.path, "r+b") as fh:  # a flipped byte, as a power cut can leave one
        fh.seek(whole.offset + whole.size - 3)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.truncate(cut.path, cut.offset + cut.size // 2)  # a record cut off mid-write: never a batch
    other = Journal(o.cache, make_config(extract_opts(tmp_path, backbone="mobilenet_v2")))
    other.write([_row(3)], np.ones((1, other.config.num_features), np.float32))  # loads, wrong shape
    other.close_segment()
    (journal.dir / "batch-extra.npz").write_bytes(b"not a batch")
    (journal.dir / ".batch-00000009.npz.part").write_bytes(b"cut off by an older version")
    (journal.dir / "batch-00000010.npz.tmp").write_bytes(b"cut off by an older version")
    assert [b.name for b in pending_batches(o.cache)] == ["journal-00000001.bnj@0", "journal-00000002.bnj@0"]
    with pytest.warns(BottleneckWarning) as warned:
        s = extract(build_index(root), o)
    named = " ".join(str(w.message) for w in warned)
    damaged = ("journal-00000001.bnj@0", "journal-00000002.bnj@0", "batch-extra")
    assert named.count("journal batch") == 3 and all(n in named for n in damaged), named
    assert "CRC" in named and s.extracted == 8 and _same(o.cache, expected)
    assert sorted(p.name for p in (journal.dir / "damaged").iterdir()) == [
        "batch-extra.npz", "journal-00000001-0.bnj", "journal-00000002-0.bnj"]
    assert [p.name for p in journal.dir.iterdir()] == ["damaged"]  # no part, no batch, no config left


@pytest.mark.parametrize("damage, why", [
    (lambda a: a.update(features=a["features"][:, :5]), "features of shape"),
    (lambda a: a.update(features=a["features"].astype(np.float64)), "features is float64"),
    (lambda a: a.update(path=a["path"][:1]), "path has 1 rows"),
    (lambda a: a.pop("sha256"), "arrays"),
    (lambda a: a.update(image_id=np.array(["caf\udce9", "b"])), "not valid UTF-8"),
    (lambda a: a.update(view_lo=np.array(3)), "view_lo 3")])
def test_check_batch_names_what_is_wrong(tmp_path, damage, why):
    config = make_config(extract_opts(tmp_path))
    batch = Journal(tmp_path / "c.h5", config).write([_row(1), _row(2)],
                                                     np.ones((2, config.num_features), np.float32))
    arrays = Journal.read(batch)
    check_batch(arrays, config.num_features, config.dtype)  # whole: passes
    damage(arrays)
    with pytest.raises(DamagedBatch, match=why):
        check_batch(arrays, config.num_features, config.dtype)


def test_a_record_cut_off_is_never_a_batch(tmp_path):
    config = make_config(extract_opts(tmp_path))
    j = Journal(tmp_path / "c.h5", config)
    j.write([_row(1)], None)
    cut = j.write([_row(2)], None)
    j.close_segment()
    os.truncate(cut.path, cut.offset + 10)  # inside the second record's header
    (j.dir / ".batch-00000002.npz.part").write_bytes(b"x")  # as an older version left a cut-off batch
    assert [b.name for b in pending_batches(tmp_path / "c.h5")] == ["journal-00000001.bnj@0"]
    assert list(Journal.read(pending_batches(tmp_path / "c.h5")[0])["image_id"]) == ["x1"]


# -- file names that are not UTF-8 ------------------------------------------------------------------------------

def test_a_file_name_that_is_not_utf8_is_listed_and_the_others_commit(tmp_path, reference):
    root, expected = reference
    data = tmp_path / "data"
    _tree(data)
    bad = os.path.join(os.fsencode(data / "mel"), b"caf\xe9.png")
    try:
        with open(bad, "wb") as fh:
            fh.write((data / "mel" / "01.png").read_bytes())
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    o = extract_opts(tmp_path)
    r = run_cli("extract", data, *TINY_ARGS, "--batch-size", 4, "--cache", o.cache)
    assert r.exit_code == 0, r.output
    assert _same(o.cache, expected)
    assert read_failed(o.cache) == [("mel/caf\\xe9.png", NOT_UTF8)]
    assert not pending_batches(o.cache)


# -- write errors -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("limit, fails", [
    (2048, "cannot write batch"),  # the first journal write
    (12 * 1024, "cannot commit to cache"),  # the first commit, which builds the file
    (None, "cannot commit to cache")])  # a commit in place, growing a cache of 4 rows
@pytest.mark.slow
def test_a_write_error_is_one_line_and_a_rerun_completes(tmp_path, reference, forked, limit, fails):
    """A real process whose files may not grow past `limit` (EFBIG, as ENOSPC would): its whole stderr is read,
    where HDF5 would print its own error stack."""
    root, expected = reference
    cache = tmp_path / "c.h5"
    committed = 0
    if limit is None:  # the dataset's nv images first; the rest are added to the same folder, as a clinic would
        shutil.copytree(root / "nv", tmp_path / "data" / "nv")
        committed = extract(build_index(tmp_path / "data"), extract_opts(tmp_path, cache=cache)).rows
        limit = cache.stat().st_size  # the journal's batches fit, the grown cache does not
        shutil.copytree(root, tmp_path / "data", dirs_exist_ok=True)
        root = tmp_path / "data"
    run = forked.run("extract", root, *TINY_ARGS, "--batch-size", "4", "--precision", "float32", "--cache", cache,
                     fsize=limit)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    assert fails in lines[0] and "rerun" in lines[0]
    assert not Path(f"{cache}.tmp").exists() and not Path(f"{cache}.undo").exists()
    assert (len(load_cache(cache).image_ids) if cache.exists() else 0) == committed
    s = extract(build_index(root), extract_opts(tmp_path, cache=cache))
    assert s.extracted + s.recovered + s.already_cached == 8 and _same(cache, expected)


def test_a_commit_that_needs_more_room_than_is_free_is_refused(tmp_path, reference, monkeypatch):
    root, expected = reference
    o = extract_opts(tmp_path)
    monkeypatch.setattr(cache_write, "free_bytes", lambda folder: 4096)
    with pytest.raises(CacheError, match=r"needs about .* MiB and .* has 0.0 MiB free.*free space and rerun"):
        extract(build_index(root), o)
    assert not o.cache.exists() and len(pending_batches(o.cache)) == 1
    monkeypatch.undo()
    extract(build_index(root), o)
    assert _same(o.cache, expected) and not journal_dir(o.cache).exists()


# -- Ctrl-C ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["hashing", "journal write", "between batches"])
def test_ctrl_c_anywhere_keeps_the_finished_batches(tmp_path, reference, monkeypatch, where):
    root, expected = reference
    o = extract_opts(tmp_path)
    calls = []

    def interrupt_on(k, real):
        def wrapper(*a, **kw):
            calls.append(1)
            if len(calls) == k:
                raise KeyboardInterrupt
            return real(*a, **kw)
        return wrapper

    if where == "hashing":
        monkeypatch.setattr(hashing_mod, "file_sha256", interrupt_on(5, hashing_mod.file_sha256))
    elif where == "journal write":
        monkeypatch.setattr(Journal, "_append", interrupt_on(2, Journal._append))  # batch 1, batch 2
    else:
        monkeypatch.setattr(extract_mod, "seeds_for", interrupt_on(2, extract_mod.seeds_for))
    r = run_cli("extract", root, *TINY_ARGS, "--batch-size", 4, "--cache", o.cache)
    assert r.exit_code == 130 and r.output.strip().splitlines() == ["interrupted; finished batches are kept in the "
                                                                     "cache"], r.output
    rows = len(load_cache(o.cache).image_ids) if o.cache.exists() else 0
    assert rows == (0 if where == "hashing" else 4) and not pending_batches(o.cache)
    monkeypatch.undo()
    s = extract(build_index(root), o)
    assert s.already_cached == rows and _same(o.cache, expected)


# -- the crash harness ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_an_extraction_killed_at_any_journal_step_reruns_to_the_same_features(tmp_path, reference, forked):
    """SIGKILL at the 1st, 2nd, ... step of the journal (each half-written record, each whole one, each cleanup)
    until a run gets past the last: every rerun ends with exactly the uninterrupted features."""
    root, expected = reference
    n, killed = 0, 0
    while True:
        n += 1
        cache = tmp_path / f"k{n}" / "c.h5"
        run = forked.run("extract", root, *TINY_ARGS, "--batch-size", "4", "--precision", "float32", "--cache", cache,
                         env={CRASH_ENV: n})
        if run.returncode == 0:
            break
        assert run.returncode == -signal.SIGKILL, run.stderr
        killed += 1
        extract(build_index(root), extract_opts(tmp_path, cache=cache))
        assert _same(cache, expected), f"killed at journal step {n}: the rerun differs"
        assert not journal_dir(cache).exists()
    assert _same(cache, expected) and killed >= 8


# -- no input can wedge the journal ----------------------------------------------------------------------------

def test_a_nul_in_a_csv_is_refused_at_the_door_and_a_batch_that_cannot_commit_is_set_aside(tmp_path, reference):
    """The issue's case: a NUL in a metadata cell made every commit fail, the batch stayed journaled and every rerun
    failed the same way after the CSV was fixed. Now the door refuses the CSV before anything is journaled; and a
    batch journaled with one (by an older version) is moved aside as damaged, its images extracted again."""
    root, expected = reference
    csv = tmp_path / "meta.csv"
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    rows = [f"{n},{n.split('/')[0]},site{k}" for k, n in enumerate(names)]
    csv.write_text("image,label,site\n" + "\n".join(rows).replace("site3", "si\x00te3") + "\n")
    cache = tmp_path / "c.h5"
    args = ["extract", root, *TINY_ARGS, "--precision", "float32", "--batch-size", "4", "--cache", cache,
            "--metadata", csv, "--id-column", "image", "--label-column", "label"]
    r = run_cli(*args)
    assert r.exit_code == 1 and f"{csv} row 5 column 'site' holds the control character U+0000" in r.output
    assert not cache.exists() and not journal_dir(cache).exists()

    config = make_config(extract_opts(tmp_path, precision="float32"))  # a batch an older version journaled
    with cache_write.CacheWriter(cache, config) as w:
        w.journal.write([dict(_row(1), meta={"site": "a\x00b"})], np.zeros((1, config.num_features), np.float32))
        with pytest.warns(BottleneckWarning, match="holds a NUL character"):
            w.commit()
    assert not cache.exists() and len(list((journal_dir(cache) / "damaged").iterdir())) == 1

    csv.write_text("image,label,site\n" + "\n".join(rows) + "\n")  # the CSV fixed: a plain rerun completes
    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    assert _same(cache, expected) and load_cache(cache).meta["site"][3] == "site3"


@pytest.mark.parametrize("bad", [dict(path="mel/caf\udce9.png"), dict(group="g\x00"), dict(label=7),
                                 dict(meta={"s\x00": "v"}), dict(meta={"site": "a\x00b"})])
def test_only_a_batch_of_storable_strings_skips_the_commits_check(bad):
    """A batch built by this writer from strings the cache can hold needs no check_batch at its commit; one with a
    NUL, a lone surrogate or a value that is not a string is left to check_batch, which sets it aside."""
    assert storable_text([_row(1), dict(_row(2), meta={"site": "a"})], [("p", "why", "s")])
    assert not storable_text([_row(1), dict(_row(2), **bad)])
    assert not storable_text([_row(1)], [("p\x00", "why", "")])


def test_a_batch_the_cache_cannot_take_is_set_aside_and_the_others_commit(tmp_path):
    """A commit that fails for a reason other than the file system (here a metadata column HDF5 cannot name) is
    retried batch by batch: the one that fails alone is moved aside, the others commit, nothing is wedged."""
    from conftest import feature_cache

    cache = feature_cache(tmp_path / "c.h5", counts={"mel": 4, "nv": 4})
    with cache_write.CacheWriter(cache, load_cache(cache).config) as w:
        w.journal.write([dict(_row(1), meta={".": "v"})], np.ones((1, 32), np.float32))
        w.journal.write([dict(_row(2), meta={"site": "v"})], np.ones((1, 32), np.float32))
        with pytest.warns(BottleneckWarning, match="cannot be committed"):
            assert w.commit() == 1
    d = load_cache(cache)
    assert list(d.image_ids[-1:]) == ["x2"] and len(d.image_ids) == 9 and not pending_batches(cache)
    assert len(list((journal_dir(cache) / "damaged").iterdir())) == 1
