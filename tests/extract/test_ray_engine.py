"""`bottleneck extract --engine ray` (bottleneck/extract_ray.py): the same cache as the local engine, on one local
Ray instance with 2 CPUs started once for the module. Marked `ray` (`make test-ray`); skipped without the extra."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY_ARGS, extract_opts, run_cli

from bottleneck.errors import InputError
from bottleneck.extract.ray_engine import RayAddress, check_address, ray_address_file, resolve_address

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
    rows = [(data.image_ids[i], data.labels[i], data.groups[i], data.sha256[i], tuple(data.sizes[i]), data.paths[i],
             int(data.phash[i])) for i in order]  # the fingerprint too: the same pixels hashed in each engine
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
    assert all(r[-1] for r in ray_rows)  # every decoded image has its fingerprint
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


# -- --address: checked before Ray is asked to join it (no Ray needed for these) -----------------------------------

def free_port() -> int:
    """A loopback port where nothing listens: bound, then closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_nothing_listens_is_refused_at_once_naming_it_and_the_fix():
    port = free_port()
    start = time.perf_counter()
    with pytest.raises(InputError) as err:
        check_address(f"127.0.0.1:{port}", environ={})
    assert time.perf_counter() - start < 5
    assert str(err.value) == (f"no Ray cluster at 127.0.0.1:{port}: Connection refused; start one there with `ray "
                              f"start --head --port {port}`, or drop --address to start a local Ray instance")
    with pytest.raises(InputError, match=rf"no Ray cluster at ray://127.0.0.1:{port}: Connection refused; start one "
                                         r"there with `ray start --head`, or drop"):
        check_address(f"ray://127.0.0.1:{port}", environ={})
    with pytest.raises(InputError, match=rf"127.0.0.1:{port} \(from RAY_ADDRESS\): Connection refused"):
        check_address(None, environ={"RAY_ADDRESS": f"127.0.0.1:{port}"})  # Ray itself would follow RAY_ADDRESS


def test_an_address_where_something_listens_passes_the_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert check_address(f"127.0.0.1:{port}", environ={}) == f"127.0.0.1:{port}"
        assert check_address(f"ray://localhost:{port}", environ={}) == f"ray://localhost:{port}"
    assert check_address(None, environ={}) is None and check_address("local", environ={}) is None  # a local instance


def test_address_forms_auto_and_bad_values(tmp_path):
    env = {"RAY_TMPDIR": str(tmp_path)}
    assert ray_address_file(env) == tmp_path / "ray" / "ray_current_cluster"
    with pytest.raises(InputError, match=r"--address auto: no Ray cluster was started on this machine \(no "
                                         r"RAY_ADDRESS, no .*ray_current_cluster\); start one with `ray start "
                                         r"--head`, or drop --address"):
        resolve_address("auto", env)
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.1.2.3:6379\n")  # what `ray start --head` records
    assert resolve_address("auto", env) == RayAddress("10.1.2.3:6379", "10.1.2.3", 6379,
                                                      f" (--address auto, from {ray_address_file(env)})")
    assert resolve_address("auto", {**env, "RAY_ADDRESS": "head:6380"})[:3] == ("head:6380", "head", 6380)
    assert resolve_address("ray://head", {})[1:3] == ("head", 10001)  # Ray Client's default port
    assert resolve_address("[::1]:6379", {})[1:3] == ("::1", 6379)
    for bad in ("head", "head:port", "head:70000", ":6379", "ray://:10001"):
        with pytest.raises(InputError, match=rf"--address should be auto, HOST:PORT or ray://HOST\[:PORT\]; "
                                             rf"received '{bad}'"):
            resolve_address(bad, {})


def run_python(code: str, *args, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": os.getcwd()})
    return proc, time.perf_counter() - start


@pytest.mark.ray
def test_extract_with_an_address_where_nothing_listens_is_one_line(class_tree, tmp_path):
    """It once retried for ever, printing Ray's C++ warnings: now one line before any image is read."""
    port = free_port()
    proc, seconds = run_python("from bottleneck.cli import app; app()", "extract", class_tree, *TINY_ARGS,
                               "--cache", tmp_path / "c.h5", "--engine", "ray", "--address", f"127.0.0.1:{port}")
    assert proc.returncode == 1 and seconds < 60, (seconds, proc.stderr)
    assert proc.stderr.strip().splitlines() == [f"error: no Ray cluster at 127.0.0.1:{port}: Connection refused; "
                                                f"start one there with `ray start --head --port {port}`, or drop "
                                                "--address to start a local Ray instance"]
    assert not list(tmp_path.glob("c.h5*"))


JOIN = """
import sys, time
from bottleneck.extract.ray_engine import ray_session
start = time.perf_counter()
try:
    with ray_session(sys.argv[1]):
        pass
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
print(f"{time.perf_counter() - start:.1f}")
"""


@pytest.mark.ray
def test_joining_an_address_where_no_ray_answers_gives_up_in_bounded_time_quietly():
    """Something accepts connections there (the TCP check passes) but it is no Ray head: ray.init gives up within
    its connect timeouts, and Ray's C++ warnings stay off the terminal."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)  # accepts, never answers
        port = server.getsockname()[1]
        proc, _ = run_python(JOIN, f"127.0.0.1:{port}")
    out = proc.stdout.strip().splitlines()
    assert out[0].startswith(f"InputError: cannot join the Ray cluster at 127.0.0.1:{port}: "), proc.stdout
    assert "`ray status --address" in out[0] and float(out[1]) < 30, (out, proc.stderr)
    assert "Failed to connect" not in proc.stderr and "rpc_client" not in proc.stderr, proc.stderr

