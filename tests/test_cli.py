"""The real CLI through typer's CliRunner; results are checked by opening the cache."""

import hashlib

import numpy as np

import h5py
import pytest
from typer.testing import CliRunner

from bottleneck.cache import load_cache
from bottleneck.cli import app
from conftest import make_ham

runner = CliRunner()
TINY_ARGS = ["--backbone", "vgg16", "--weights", "none", "--image-size", "32", "--quiet"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_extract_then_info_on_a_ham10000_folder(tmp_path):
    root = make_ham(tmp_path / "HAM10000")
    cache = tmp_path / "ham.h5"
    r = run("extract", root, *TINY_ARGS, "--cache", cache)
    assert r.exit_code == 0, r.output
    c = load_cache(cache)
    assert c.features.shape == (12, 512) and c.attrs["source"] == "ham10000"
    r = run("info", cache)
    assert r.exit_code == 0, r.output
    assert "rows: 12 (6 groups)" in r.output
    for name in c.class_names:
        assert f"  {name}: 4" in r.output


def test_default_cache_name_under_cache_dir(tmp_path, class_tree, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("extract", class_tree, *TINY_ARGS)
    assert r.exit_code == 0, r.output
    path = tmp_path / "cache" / "data-vgg16-none-s0-32-avg.h5"
    with h5py.File(path) as f:
        assert int(f.attrs["n_rows"]) == 12


@pytest.mark.parametrize("args, message", [
    (["extract", "{tmp}/nope", *TINY_ARGS], "does not exist"),
    (["extract", "{data}", "--backbone", "alexnet", "--weights", "none"], "unknown backbone 'alexnet'"),
    (["extract", "{data}", "--weights", "imagenett"], "received 'imagenett'"),
    (["extract", "{data}", *TINY_ARGS, "--pooling", "median"], "--pooling should be one of avg, max"),
    (["extract", "{data}", *TINY_ARGS, "--metadata", "{tmp}/missing.csv"], "missing.csv does not exist"),
    (["extract", "{data}", *TINY_ARGS, "--shard", "5/2"], "--shard should be I/N"),
    (["info", "{tmp}/missing.h5"], "does not exist"),
    (["info", "{data}/mel/img0.jpg"], "cannot open cache"),
])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(tmp_path, class_tree, args, message):
    cache = tmp_path / "c.h5"
    args = [a.format(tmp=tmp_path, data=class_tree) for a in args]
    if args[0] == "extract":
        args += ["--cache", str(cache)]
    r = run(*args)
    assert r.exit_code == 1
    assert message in r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert not cache.exists()


def test_failed_command_leaves_an_existing_cache_untouched(tmp_path, class_tree):
    cache = tmp_path / "c.h5"
    assert run("extract", class_tree, *TINY_ARGS, "--cache", cache).exit_code == 0
    digest = hashlib.sha256(cache.read_bytes()).hexdigest()
    r = run("extract", class_tree, "--backbone", "vgg16", "--weights", "none", "--image-size", "48",
            "--quiet", "--cache", cache)
    assert r.exit_code == 1 and "image size 32 (cache) vs 48 (this run)" in r.output
    assert hashlib.sha256(cache.read_bytes()).hexdigest() == digest


def test_usage_error_exits_2(tmp_path):
    assert run("extract").exit_code == 2


def test_shards_merge_into_the_same_cache_as_one_run(tmp_path, class_tree):
    whole = tmp_path / "whole.h5"
    assert run("extract", class_tree, *TINY_ARGS, "--cache", whole).exit_code == 0
    parts = []
    for i in range(3):
        part = tmp_path / f"part{i}.h5"
        r = run("extract", class_tree, *TINY_ARGS, "--shard", f"{i}/3", "--cache", part)
        assert r.exit_code == 0, r.output
        parts.append(part)
    merged = tmp_path / "merged.h5"
    r = run("merge", *parts, "--out", merged)
    assert r.exit_code == 0, r.output
    a, b = load_cache(whole), load_cache(merged)
    order = {i: k for k, i in enumerate(b.image_ids)}
    idx = [order[i] for i in a.image_ids]
    assert len(b.image_ids) == 12 and b.class_names == a.class_names
    np.testing.assert_allclose(b.features[idx], a.features, atol=1e-3)
    np.testing.assert_array_equal(b.labels[idx], a.labels)
    other = tmp_path / "other.h5"
    assert run("extract", class_tree, "--backbone", "vgg16", "--weights", "none", "--image-size", "48", "--quiet",
               "--cache", other).exit_code == 0
    r = run("merge", whole, other, "--out", tmp_path / "bad.h5")
    assert r.exit_code == 1 and "image size" in r.output and not (tmp_path / "bad.h5").exists()


def test_bench_prints_figures_for_a_small_cache():
    r = run("bench", "--rows", "400", "--dim", "32", "--epochs", "2", "--part", "head", "--part", "run")
    assert r.exit_code == 0, r.output
    assert "head epoch (360 x 32" in r.output and "whole default train-head run (400 x 32 cache)" in r.output


@pytest.mark.slow
def test_bench_all_parts_run():
    r = run("bench", "--rows", "400", "--dim", "32", "--epochs", "2", "--backbone", "vgg16", "--image-size", "32",
            "--images", "8")
    assert r.exit_code == 0, r.output
    assert "sweep of 16 configurations" in r.output and "KiB per view per image" in r.output
