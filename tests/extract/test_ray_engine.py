"""`bottleneck extract --engine ray` (bottleneck/extract_ray.py): the same cache as the local engine, on one local
Ray instance with 2 CPUs started once for the module. Marked `ray` (`make test-ray`); skipped without the extra."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY_ARGS, extract_opts, run_cli

NO_RAY = '--engine ray needs Ray: pip install -e ".[ray]" (or pip install "ray[data]")'


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    yield ray
    ray.shutdown()


@pytest.fixture
def tree_with_bad_image(class_tree):
    (class_tree / "mel" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return class_tree


def rows_of(path):
    from bottleneck.cache.store import load_cache, read_failed

    data = load_cache(path)
    order = np.argsort(data.image_ids)
    rows = [(data.image_ids[i], data.labels[i], data.groups[i], data.sha256[i], tuple(data.sizes[i]), data.paths[i])
            for i in order]
    return rows, data.features[order], sorted(read_failed(path, with_sha=True))


@pytest.mark.ray
def test_ray_engine_writes_the_local_cache(ray_instance, tree_with_bad_image, tmp_path):
    local = run_cli("extract", tree_with_bad_image, *TINY_ARGS, "--batch-size", 4, "--cache", tmp_path / "local.h5")
    assert local.exit_code == 0, local.output
    result = run_cli("extract", tree_with_bad_image, *TINY_ARGS, "--batch-size", 4, "--cache", tmp_path / "ray.h5",
                     "--engine", "ray")
    assert result.exit_code == 0, result.output
    assert "engine ray, 1 backbone worker" in result.output

    local_rows, local_feats, local_failed = rows_of(tmp_path / "local.h5")
    ray_rows, ray_feats, ray_failed = rows_of(tmp_path / "ray.h5")
    assert len(ray_rows) == 12 and ray_rows == local_rows
    np.testing.assert_array_equal(ray_feats, local_feats)  # same pixels, weights and traced forward: exact
    assert len(ray_failed) == 1 and ray_failed == local_failed  # (path, reason, sha256), as recorded locally
    assert ray_failed[0][0] == "mel/broken.jpg"

    # The third way: two shards on "two machines", merged. The same rows and features as both.
    parts = [tmp_path / f"part{i}.h5" for i in range(2)]
    for i, part in enumerate(parts):
        assert run_cli("extract", tree_with_bad_image, *TINY_ARGS, "--batch-size", 4, "--shard", f"{i}/2",
                       "--cache", part).exit_code == 0
    merged = run_cli("merge", *parts, "--out", tmp_path / "merged.h5")
    assert merged.exit_code == 0, merged.output
    merged_rows, merged_feats, merged_failed = rows_of(tmp_path / "merged.h5")  # each sorted by image id
    assert merged_rows == local_rows and merged_failed == local_failed
    np.testing.assert_array_equal(merged_feats, local_feats)


@pytest.mark.ray
def test_ray_rerun_skips_the_cache_and_local_extends_it(ray_instance, class_tree, tmp_path):
    from conftest import write_image

    from bottleneck.extract.run import extract
    from bottleneck.images.index import build_index

    opts = extract_opts(tmp_path, engine="ray")
    first = extract(build_index(class_tree), opts)
    assert (first.engine, first.extracted, first.rows) == ("ray", 12, 12)
    again = extract(build_index(class_tree), opts)
    assert (again.extracted, again.already_cached, again.seconds) == (0, 12, 0.0)  # no Ray pass at all

    write_image(class_tree / "bcc" / "new.jpg", seed=77)  # the engine is no part of the configuration
    local = extract(build_index(class_tree), extract_opts(tmp_path))
    assert (local.engine, local.extracted, local.already_cached, local.rows) == ("local", 1, 12, 13)


@pytest.mark.ray
def test_ray_refuses_views(ray_instance, class_tree, tmp_path):
    result = run_cli("extract", class_tree, *TINY_ARGS, "--cache", tmp_path / "c.h5", "--engine", "ray",
                     "--views", 2)
    assert result.exit_code == 1
    assert "--views is not available with --engine ray; extract the views with --engine local" in result.output
    assert not (tmp_path / "c.h5").exists()


def test_ray_engine_without_ray_is_one_line(class_tree, tmp_path):
    """Not marked `ray`: runs in `make test` whether or not Ray is installed, with Ray made unimportable."""
    code = "import sys; sys.modules['ray'] = None; from bottleneck.cli import app; app()"
    proc = subprocess.run([sys.executable, "-c", code, "extract", str(class_tree), *TINY_ARGS,
                           "--cache", str(tmp_path / "c.h5"), "--engine", "ray"], capture_output=True, text=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {NO_RAY}"]
    assert not (tmp_path / "c.h5").exists()
