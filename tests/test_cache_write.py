"""The cache writer: one locked writer, journaled batches, a SIGKILLed extraction losing at most the batch in
flight, a cache of another configuration refused untouched, shards merged into the cache of one run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bottleneck.cache import journal_dir, load_cache
from bottleneck.cache_write import CacheWriter
from bottleneck.dataset import build_index
from bottleneck.errors import CacheLockedError, CacheMismatchError
from bottleneck.extract import extract, make_config
from conftest import TINY_ARGS, extract_opts, feature_cache, file_digest, run_cli, write_image


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
from bottleneck.dataset import build_index
from bottleneck.extract import ExtractOptions, extract
extract(build_index(sys.argv[1]), ExtractOptions(backbone="vgg16", weights="none", image_size=32,
        batch_size=4, cache=Path(sys.argv[2]), progress=False, precision=sys.argv[3]))
"""


@pytest.mark.filterwarnings("ignore:bfloat16 is emulated")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_sigkill_loses_at_most_the_batch_in_flight_and_rerun_completes(tmp_path, precision):
    root = tmp_path / "data"
    for i in range(160):
        write_image(root / ("mel" if i % 2 else "nv") / f"{i:03d}.png", seed=i, size=(96, 96))
    killed = tmp_path / "killed.h5"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(Path(__file__).parents[1]))
    proc = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(root), str(killed), precision], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(journal_dir(killed).glob("batch-*.npz"))) < 3:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    journaled = list(journal_dir(killed).glob("batch-*.npz"))
    assert journaled, "the extraction never committed a batch before it was killed"
    assert not killed.exists() or load_cache(killed).features.shape[0] < 160

    o = extract_opts(tmp_path, cache=killed)  # precision auto: the killed run's, recorded in its journal
    s = extract(build_index(root), o)
    assert s.precision == precision
    assert s.already_cached >= 4 * len(journaled) - 4 and s.extracted == 160 - s.already_cached
    full = tmp_path / "full.h5"
    extract(build_index(root), extract_opts(tmp_path, cache=full, precision=precision))
    a, b = load_cache(killed), load_cache(full)
    order = np.argsort(a.image_ids)
    assert list(a.image_ids[order]) == list(b.image_ids)
    np.testing.assert_allclose(a.features[order], b.features, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(a.labels[order], b.labels)


def test_shards_merge_into_the_same_cache_as_one_run(tmp_path, class_tree):
    whole = tmp_path / "whole.h5"
    assert run_cli("extract", class_tree, *TINY_ARGS, "--cache", whole).exit_code == 0
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        r = run_cli("extract", class_tree, *TINY_ARGS, "--shard", f"{i}/3", "--cache", part)
        assert r.exit_code == 0, r.output
        parts.append(part)
    merged = tmp_path / "merged.h5"
    r = run_cli("merge", *parts, "--out", merged)
    assert r.exit_code == 0, r.output
    a, b = load_cache(whole), load_cache(merged)
    order = {i: k for k, i in enumerate(b.image_ids)}
    idx = [order[i] for i in a.image_ids]
    assert len(b.image_ids) == 12 and b.class_names == a.class_names
    np.testing.assert_allclose(b.features[idx], a.features, atol=1e-3)
    np.testing.assert_array_equal(b.labels[idx], a.labels)
    other = tmp_path / "other.h5"
    assert run_cli("extract", class_tree, "--backbone", "vgg16", "--weights", "none", "--image-size", "48", "--quiet",
                   "--cache", other).exit_code == 0
    r = run_cli("merge", whole, other, "--out", tmp_path / "bad.h5")
    assert r.exit_code == 1 and "image size" in r.output and not (tmp_path / "bad.h5").exists()


WRITE_CUT_OFF = """
import resource, signal, sys
import numpy as np
from bottleneck.cache import CacheConfig, read_attrs
from bottleneck.cache_write import CacheWriter
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
    assert run.returncode != 0 and "File too large" in run.stderr  # the write was really cut off
    assert any(journal_dir(cache).iterdir())  # ... and left its partial file behind
    with CacheWriter(cache, before.config) as w:  # a rerun: commits what the journal holds
        w.write_batch([dict(image_id="after", path="after.jpg", label="bcc", group="", sha256="f" * 64, width=1,
                            height=1)], np.zeros((1, 32), np.float32))
    after = load_cache(cache)
    assert list(after.image_ids) == list(before.image_ids) + ["after"]
    np.testing.assert_array_equal(after.features[:8], before.features)
