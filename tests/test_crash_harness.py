"""The crash-test harness: every write of train-head, sweep and merge made to fail (a full disk) or to end the
process (SIGKILL), one at a time, for every write the command makes (`faultinject.py`).

After each fault: the command either succeeded with the uninterrupted result (a library that handles the error
itself, e.g. matplotlib's cache folder) or failed with exactly one `error:` line, no traceback and nothing
half-written in place of its output; and the same command rerun without the fault completes with exactly the
uninterrupted result. Behind the `crash` marker (`make test-crash`, run by .ci/run): a few minutes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_ARGS, class_tree, feature_cache, write_image  # noqa: F401  (class_tree: a fixture)

pytestmark = pytest.mark.crash

HARNESS = Path(__file__).with_name("faultinject.py")
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def bottleneck(cwd: Path, mode: str, k: int, *args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI under the harness; (the process, the writes it made or began)."""
    log = cwd / f".writes-{mode}-{k}"
    log.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(HARNESS), mode, str(k), str(log), "--", *map(str, args)],
                          cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    writes = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return proc, writes


def digest(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each file that must come out the same as in an uninterrupted run (None when missing)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None for p in paths}


def one_line_error(proc: subprocess.CompletedProcess) -> bool:
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    return proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr


def check_every_write(cwd: Path, args: list, outputs: list[Path], clean, mode: str) -> int:
    """Inject at every write of `args` in turn; returns how many writes there were."""
    clean()
    proc, writes = bottleneck(cwd, "fail", 0, *args)
    assert proc.returncode == 0, proc.stderr
    reference = digest(outputs)
    assert all(reference.values())
    for k in range(1, len(writes) + 1):
        clean()
        proc, made = bottleneck(cwd, mode, k, *args)
        where = f"{mode} at write {k} of {len(writes)} ({made[-1] if made else '?'})"
        if mode == "crash":
            assert proc.returncode in (0, 137), f"{where}: {proc.stderr[-2000:]}"
        elif proc.returncode == 0:
            assert digest(outputs) == reference, f"{where}: succeeded with another result"
        else:
            assert one_line_error(proc), f"{where}: {proc.stderr[-2000:]}"
            assert "(injected)" in proc.stderr, f"{where}: the error should say what failed: {proc.stderr}"
        rerun, _ = bottleneck(cwd, "fail", 0, *args)
        assert rerun.returncode == 0, f"rerun after {where}: {rerun.stderr[-2000:]}"
        assert digest(outputs) == reference, f"rerun after {where}: another result"
    return len(writes)


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_train_head_survives_a_fault_at_every_write(tmp_path, mode):
    feature_cache(tmp_path / "c.h5", counts={"bcc": 20, "mel": 20, "nv": 30}, dim=8)
    run = tmp_path / "run"
    args = ["train-head", "c.h5", "--out", "run", "--hidden", "8", "--epochs", "3", "--quiet"]

    def clean():
        shutil.rmtree(run, ignore_errors=True)

    n = check_every_write(tmp_path, args, [run / f for f in ("predictions.csv", "metrics.json", "split.csv")],
                          clean, mode)
    assert n >= 15


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_sweep_survives_a_fault_at_every_write(tmp_path, mode):
    """Without cleaning between the fault and the rerun: the sweep resumes from what the fault left."""
    feature_cache(tmp_path / "c.h5", counts={"bcc": 20, "mel": 20, "nv": 30}, dim=8)
    out = tmp_path / "sweep"
    args = ["sweep", "c.h5", "--out", "sweep", "--lr", "1e-3,3e-4", "--hidden", "8", "--epochs", "3",
            "--patience", "2", "--quiet"]

    def clean():
        shutil.rmtree(out, ignore_errors=True)

    best = out / "best"
    n = check_every_write(tmp_path, args, [best / "predictions.csv", best / "metrics.json", out / "split.csv"],
                          clean, mode)
    assert n >= 20


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_merge_survives_a_fault_at_every_write(tmp_path, mode):
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(4):
            write_image(root / c / f"{c}{i}.png", seed=ord(c) * 10 + i)
    for s in ("0/2", "1/2"):
        proc = subprocess.run([sys.executable, "-m", "bottleneck", "extract", str(root), "--cache",
                               str(tmp_path / f"s{s[0]}.h5"), "--shard", s, *TINY_ARGS], env=ENV,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    merged = tmp_path / "m.h5"

    def clean():
        for p in tmp_path.glob("m.h5*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()

    import h5py  # the merged file's bytes carry times: compare what it holds

    def content(path: Path) -> str:
        with h5py.File(path, "r") as f:
            h = hashlib.sha256()
            n = int(f.attrs["n_rows"])
            for name in ("features", "label"):
                h.update(f[name][:n].tobytes())
            for name in ("image_id", "sha256"):  # strings: their text, not the object array's pointers
                h.update("\n".join(v.decode() if isinstance(v, bytes) else v for v in f[name][:n]).encode())
            return h.hexdigest()

    clean()
    proc, writes = bottleneck(tmp_path, "fail", 0, "merge", "s0.h5", "s1.h5", "--out", "m.h5")
    assert proc.returncode == 0, proc.stderr
    reference = content(merged)
    for k in range(1, len(writes) + 1):
        clean()
        proc, made = bottleneck(tmp_path, mode, k, "merge", "s0.h5", "s1.h5", "--out", "m.h5")
        where = f"{mode} at write {k} of {len(writes)} ({made[-1] if made else '?'})"
        if mode == "fail" and proc.returncode:
            assert one_line_error(proc), f"{where}: {proc.stderr[-2000:]}"
        rerun, _ = bottleneck(tmp_path, "fail", 0, "merge", "s0.h5", "s1.h5", "--out", "m.h5")
        assert rerun.returncode == 0, f"rerun after {where}: {rerun.stderr[-2000:]}"
        assert content(merged) == reference, f"rerun after {where}: another result"
