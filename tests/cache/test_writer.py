"""The cache writer: one locked writer, journaled batches, a SIGKILLed extraction losing at most the batch in
flight, a cache of another configuration refused untouched. Merging (and a virtual merge refusing writers) is in
test_merge.py."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_ARGS, extract_opts, feature_cache, file_digest, run_cli, write_image

from bottleneck.cache.store import journal_dir, load_cache, pending_batches, read_failed
from bottleneck.cache.undo import CRASH_ENV, undo_path
from bottleneck.cache.writer import CacheWriter
from bottleneck.errors import BottleneckWarning, CacheLockedError, CacheMismatchError
from bottleneck.extract.run import extract, make_config
from bottleneck.images.index import build_index


@pytest.mark.parametrize("change, named", [
    (dict(backbone="mobilenet_v2"), "backbone vgg16 (cache) vs mobilenet_v2 (this run)"),
    (dict(image_size=48), "image size 32 (cache) vs 48 (this run)"),
    (dict(pooling="max"), "pooling avg (cache) vs max (this run)"),
    (dict(seed=1), "weights none (seed 0) (cache) vs none (seed 1) (this run)"),
    pytest.param(dict(precision="bfloat16"), "compute precision float32 (cache) vs bfloat16 (this run)",
                 marks=pytest.mark.filterwarnings("ignore:bfloat16 is emulated")),
    (dict(xla="on"), "XLA off (cache) vs on (this run)")])
def test_a_cache_is_never_mixed(tmp_path, class_tree, change, named):
    o = extract_opts(tmp_path, precision="float32", xla="off")
    extract(build_index(class_tree), o)
    digest = file_digest(o.cache)
    write_image(class_tree / "mel" / "new.jpg", seed=50)
    with pytest.raises(CacheMismatchError) as err:
        extract(build_index(class_tree), extract_opts(tmp_path, **change))
    assert named in str(err.value)
    assert file_digest(o.cache) == digest and not journal_dir(o.cache).exists()


def test_failed_command_leaves_an_existing_cache_untouched(tmp_path, class_tree):
    cache = tmp_path / "c.h5"
    assert run_cli("extract", class_tree, *TINY_ARGS, "--cache", cache).exit_code == 0
    digest = hashlib.sha256(cache.read_bytes()).hexdigest()
    r = run_cli("extract", class_tree, "--backbone", "vgg16", "--weights", "none", "--image-size", "48",
                "--quiet", "--cache", cache)
    assert r.exit_code == 1 and "image size 32 (cache) vs 48 (this run)" in r.output
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == digest


def test_a_second_writer_is_refused(tmp_path, class_tree):
    o = extract_opts(tmp_path)
    with CacheWriter(o.cache, make_config(o)):
        with pytest.raises(CacheLockedError, match=f"pid {os.getpid()}"):
            extract(build_index(class_tree), o)


RESUME_SCRIPT = """
import sys
from pathlib import Path
from bottleneck.images.index import build_index
from bottleneck.extract.run import ExtractOptions, extract
extract(build_index(sys.argv[1]), ExtractOptions(backbone="vgg16", weights="none", image_size=32,
        batch_size=4, cache=Path(sys.argv[2]), progress=False, precision=sys.argv[3]))
"""


@pytest.mark.filterwarnings("ignore:bfloat16 is emulated")
# bfloat16: a second kill cycle, the rerun following the precision the killed run journaled: `make test-slow`
@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_sigkill_loses_at_most_the_batch_in_flight_and_rerun_completes(tmp_path, forked, precision):
    root = tmp_path / "data"
    for i in range(160):
        write_image(root / ("mel" if i % 2 else "nv") / f"{i:03d}.png", seed=i, size=(96, 96))
    killed = tmp_path / "killed.h5"
    proc = forked.start(root, killed, precision, code=RESUME_SCRIPT)  # a real process, SIGKILLed below
    deadline = time.time() + 120
    while time.time() < deadline and len(pending_batches(killed)) < 3:  # the folder comes and goes with commits
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    journaled = pending_batches(killed)
    assert journaled, "the extraction never committed a batch before it was killed"
    assert not killed.exists() or load_cache(killed).features.shape[0] < 160

    o = extract_opts(tmp_path, cache=killed)  # precision auto: the killed run's, recorded in its journal
    s = extract(build_index(root), o)
    assert s.precision == precision
    assert s.recovered >= 4 * len(journaled) - 4 and s.extracted == 160 - s.already_cached - s.recovered
    full = tmp_path / "full.h5"
    extract(build_index(root), extract_opts(tmp_path, cache=full, precision=precision))
    a, b = load_cache(killed), load_cache(full)
    order = np.argsort(a.image_ids)
    assert list(a.image_ids[order]) == list(b.image_ids)
    np.testing.assert_allclose(a.features[order], b.features, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(a.labels[order], b.labels)


READ_WHILE_RUNNING = RESUME_SCRIPT.replace("progress=False", "progress=False, commit_seconds=0")


@pytest.mark.slow
def test_a_first_extraction_is_readable_while_it_runs_and_after_a_sigkill(tmp_path, forked):
    """Committed every batch: `info` and load_cache read the rows committed so far while the extraction runs,
    a SIGKILL leaves a readable cache, and the rerun completes it with the features of an uninterrupted run."""
    root = tmp_path / "data"
    n = 192  # enough that the extraction still runs after the reader has seen it grow twice
    for i in range(n):
        write_image(root / ("mel" if i % 2 else "nv") / f"{i:03d}.png", seed=i, size=(96, 96))
    cache = tmp_path / "growing.h5"
    proc = forked.start(root, cache, "float32", code=READ_WHILE_RUNNING)  # a real process, SIGKILLed below
    seen, deadline = [], time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(seen) < 2:
        if cache.exists():
            rows = load_cache(cache).features.shape[0]  # reads between commits, never a torn file
            r = run_cli("info", cache)
            assert r.exit_code == 0, r.output
            if not seen or rows > seen[-1]:
                seen.append(rows)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert len(seen) >= 2 and seen == sorted(seen) and 0 < seen[0] < n, seen  # it grew while we read it
    after = load_cache(cache)
    assert seen[-1] <= len(after.image_ids) < n
    s = extract(build_index(root), extract_opts(tmp_path, cache=cache))
    # No row readable after the kill is computed again. Killed between a commit and the journal's cleanup, the
    # batch is both in the cache and journaled: the rerun counts its rows as recovered, not as already cached.
    assert s.already_cached + s.recovered >= len(after.image_ids) and s.rows == n
    assert s.extracted == n - s.already_cached - s.recovered
    full = tmp_path / "full.h5"
    extract(build_index(root), extract_opts(tmp_path, cache=full, precision="float32"))
    a, b = load_cache(cache), load_cache(full)
    order = np.argsort(a.image_ids)
    assert list(a.image_ids[order]) == list(b.image_ids)
    np.testing.assert_array_equal(a.features[order], b.features)


COMMIT_SCRIPT = """
import sys
import numpy as np
from bottleneck.cache.store import load_cache
from bottleneck.cache.writer import CacheWriter
cache = sys.argv[1]
config = load_cache(cache, features=False).config
n = 1100  # past the first 1,024-row chunk of features
rows = [dict(image_id=f"new{i}", path=f"mel/new{i}.jpg", label="mel", group=f"N{i}", sha256=f"{i:064x}",
             width=2, height=3, phash=(i * 0x9E3779B97F4A7C15) % 2**64 | 2) for i in range(n)]  # the column is new
feats = np.arange(n * 32, dtype=np.float32).reshape(n, 32) / 1000
with CacheWriter(cache, config, commit_seconds=1e9) as w:  # one commit, on leaving
    if len(sys.argv) > 2:  # a write error (disk full, quota) once the commit has begun to grow the file
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    w.write_batch(rows[:600], feats[:600], [("bad/x.jpg", "cannot decode", "")])
    w.write_batch(rows[600:], feats[600:])
    w.write_batch([dict(image_id="img00000", path="bcc/img00000.jpg", label="scc", group="G", sha256="0" * 64,
                        width=1, height=1, has_features=False, phash=2**63 + 6)], None)  # new class, row refreshed
"""


def _cache_state(path):
    d = load_cache(path)
    return (list(d.image_ids), d.features.tolist(), d.labels.tolist(), d.class_names, list(d.paths),
            read_failed(path), None if d.phash is None else d.phash.tolist())


# Counts the writes of the commit it runs (the crash harness's unit, FdFile.write) and prints the count on exit.
COUNT_WRITES = """
import atexit
import bottleneck.cache.undo as undo
most = [0]
real_write = undo.FdFile.write
def counting(self, data):
    n = real_write(self, data)
    most[0] = max(most[0], self.writes)
    return n
undo.FdFile.write = counting
atexit.register(lambda: print("writes", most[0]))
"""


@pytest.fixture
def commit_harness(tmp_path):
    """An original cache, the commit run uninterrupted on a copy (its result and its number of writes), and
    `crash_all(ks)`: the commit killed before write k of a fresh copy, for each k (two at a time)."""
    original = feature_cache(tmp_path / "orig.h5", counts={"bcc": 100, "mel": 100}, dim=32)
    other = feature_cache(tmp_path / "another.h5", counts={"bcc": 100, "mel": 100}, dim=32, seed=7)  # a good cache
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    reference = tmp_path / "ref.h5"
    shutil.copyfile(original, reference)
    run = subprocess.run([sys.executable, "-c", COUNT_WRITES + COMMIT_SCRIPT, str(reference)], env=env, check=True,
                         capture_output=True, text=True)
    expected = _cache_state(reference)
    assert len(expected[0]) == 1300 and expected[3] == ["bcc", "mel", "scc"]
    assert expected[6][:3] == [2**63 + 6, 0, 0] and expected[6][200] == 2  # fingerprints: the refreshed row, new rows
    assert _cache_state(original)[6] is None  # the commit adds the column to a cache without fingerprints

    def crash_at(n: int):
        cache = tmp_path / f"k{n}" / "c.h5"
        cache.parent.mkdir()
        shutil.copyfile(original, cache)
        run = subprocess.run([sys.executable, "-c", COMMIT_SCRIPT, str(cache)], env={**env, CRASH_ENV: str(n)})
        return n, cache, run.returncode

    def crash_all(ks):
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(crash_at, ks))

    return dict(writes=int(run.stdout.split()[-1]), expected=expected, before=_cache_state(original),
                other=other, other_state=_cache_state(other), digest=file_digest(original), crash_all=crash_all)


def _killed_and_replayed(harness, k: int, cache: Path, rc: int) -> None:
    """A commit killed before write k left the cache byte for byte as before; the next writer replays the journal
    to the result of the uninterrupted commit."""
    assert rc == -signal.SIGKILL and undo_path(cache).exists() and len(pending_batches(cache)) == 3
    other = cache.with_name("other.h5")  # its undo beside another cache copied over it (same inode): not applied
    shutil.copyfile(cache, other)
    raw = bytearray(undo_path(cache).read_bytes())
    raw[16:32] = struct.pack("<QQ", other.stat().st_dev, other.stat().st_ino)  # so that only its pages can tell
    undo_path(other).write_bytes(bytes(raw))
    shutil.copyfile(harness["other"], other)
    with pytest.warns(BottleneckWarning, match="does not belong to cache"):
        assert _cache_state(other) == harness["other_state"], f"killed before write {k}: a foreign undo applied"
    assert file_digest(other) == file_digest(harness["other"])
    assert _cache_state(cache) == harness["before"], f"killed before write {k}: the cache changed"
    assert file_digest(cache) == harness["digest"] and not undo_path(cache).exists()
    with CacheWriter(cache, load_cache(cache).config):  # the next writer replays the journal
        pass
    assert _cache_state(cache) == harness["expected"], f"killed before write {k}: the replay differs"


@pytest.mark.slow
def test_a_commit_killed_at_its_first_middle_and_last_write_leaves_the_cache_as_it_was(commit_harness):
    """The crash harness's three-point sample (all points: test_a_commit_killed_at_any_write_..., `make
    test-crash`): SIGKILL before the first, a middle and the last write of an in-place commit; one write more than
    the commit makes completes it."""
    n = commit_harness["writes"]
    assert n >= 10  # metadata, the partial last chunk, new chunks, the row count: many points
    *killed, (_, done, rc) = commit_harness["crash_all"]((1, (n + 1) // 2, n, n + 1))
    assert rc == 0 and _cache_state(done) == commit_harness["expected"]  # past the last write: it completed
    for k, cache, rc in killed:
        _killed_and_replayed(commit_harness, k, cache, rc)


@pytest.mark.crash
def test_a_commit_killed_at_any_write_leaves_the_cache_as_it_was(commit_harness):
    """The crash harness: SIGKILL before the 1st, 2nd, ... write of an in-place commit. Every time the cache
    reads back byte for byte as before the commit, and the next writer commits the journal to the same result
    as an uninterrupted commit."""
    n, killed = 0, 0
    while True:
        results = commit_harness["crash_all"]((n + 1, n + 2))
        n += 2
        for k, cache, rc in results:
            if rc == 0:  # past the commit's last write: nothing left to interrupt
                continue
            killed += 1
            _killed_and_replayed(commit_harness, k, cache, rc)
        if any(rc == 0 for _, _, rc in results):
            break
    assert killed >= 10 and killed == commit_harness["writes"]  # every write a point, and the count was right


def test_a_commit_appends_in_place_and_finds_cached_rows_by_key(tmp_path):
    """No copy: the file keeps its inode and its committed bytes' values; rows already there are refreshed, not
    added twice, and the same bytes under another id are found by their key."""
    cache = feature_cache(tmp_path / "c.h5", counts={"bcc": 300, "mel": 300}, dim=32)
    before, inode = load_cache(cache), cache.stat().st_ino
    with CacheWriter(cache, before.config) as w:
        ids = ["img00003", "fresh", "copy-of-5"]
        found, same_bytes = w.lookup(ids, [before.sha256[3], "e" * 64, before.sha256[5]])
        assert set(found) == {"img00003"} and found["img00003"]["row"] == 3
        assert same_bytes == {before.sha256[3]: 3, before.sha256[5]: 5}
        w.write_batch([dict(image_id=i, path=f"mel/{i}.jpg", label="mel", group="", sha256="e" * 64, width=1,
                            height=1) for i in ("fresh", "img00003")], np.full((2, 32), 7, np.float32))
    after = load_cache(cache)
    assert cache.stat().st_ino == inode and len(after.image_ids) == 601 and after.image_ids[600] == "fresh"
    np.testing.assert_array_equal(after.features[:3], before.features[:3])
    np.testing.assert_array_equal(after.features[[3, 600]], np.full((2, 32), 7))  # refreshed in place, appended
    with CacheWriter(cache, before.config) as w:  # a new writer finds them by their keys
        assert w.lookup(["fresh", "img00003", "nope"], ["e" * 64, "", ""])[0].keys() == {"fresh", "img00003"}


def test_a_write_error_inside_a_commit_rolls_it_back_and_keeps_the_batches(tmp_path):
    cache = feature_cache(tmp_path / "c.h5", counts={"bcc": 100, "mel": 100}, dim=32)
    before, digest = _cache_state(cache), file_digest(cache)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    limit = cache.stat().st_size + 8192  # the journal fits, the grown cache does not
    run = subprocess.run([sys.executable, "-c", COMMIT_SCRIPT, str(cache), str(limit)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 1 and "cannot commit to cache" in run.stderr and "nothing was lost" in run.stderr
    assert run.stderr.count("Traceback") == 1  # the script's own, for the CacheError; none from h5py, no crash
    assert file_digest(cache) == digest and _cache_state(cache) == before and not undo_path(cache).exists()
    assert len(pending_batches(cache)) == 3
    with CacheWriter(cache, load_cache(cache).config):
        pass
    assert len(load_cache(cache).image_ids) == 1300 and not pending_batches(cache)


WRITE_CUT_OFF = """
import resource, signal, sys
import numpy as np
from bottleneck.cache.store import CacheConfig, read_attrs
from bottleneck.cache.writer import CacheWriter
path = sys.argv[1]
config = CacheConfig.from_attrs(read_attrs(path))
with CacheWriter(path, config) as w:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises OSError, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    rows = [dict(image_id=f"big{i}", path=f"big{i}.jpg", label="mel", group="", sha256=f"{i:064x}", width=1,
                 height=1) for i in range(4000)]
    w.write_batch(rows, np.ones((4000, config.num_features), np.float32))
"""


def test_a_batch_cut_off_while_being_written_is_never_applied(tmp_path):
    """A write error (disk full, quota) in the middle of journaling a batch leaves a partial file in the journal;
    the next writer must not read it as a batch, and the committed rows stay as they were."""
    cache = feature_cache(tmp_path / "c.h5", counts={"bcc": 4, "mel": 4}, dim=32)
    before = load_cache(cache)
    run = subprocess.run([sys.executable, "-c", WRITE_CUT_OFF, str(cache)], capture_output=True, text=True)
    assert run.returncode == 1 and "cannot write batch" in run.stderr and "File too large" in run.stderr
    assert not pending_batches(cache)  # the cut-off file is under a name no commit reads as a batch ...
    (journal_dir(cache) / ".batch-00000001.npz.part").write_bytes(b"PK\x03\x04 cut")  # ... as a kill leaves it
    with CacheWriter(cache, before.config) as w:  # a rerun: commits what the journal holds
        assert not list(journal_dir(cache).glob(".*.part"))  # the next writer removed it
        w.write_batch([dict(image_id="after", path="after.jpg", label="bcc", group="", sha256="f" * 64, width=1,
                            height=1)], np.zeros((1, 32), np.float32))
    after = load_cache(cache)
    assert list(after.image_ids) == list(before.image_ids) + ["after"]
    np.testing.assert_array_equal(after.features[:8], before.features)
