"""The crash-test harness: every write of train-head, sweep, merge and fine-tune made to fail (a full disk) or to
end the process (SIGKILL), one at a time, for every write the command makes (`faultinject.py`).

After each fault: the command either succeeded with the uninterrupted result (a library that handles the error
itself, e.g. matplotlib's cache folder) or failed with exactly one `error:` line, no traceback and nothing
half-written in place of its output; and the same command rerun without the fault completes with exactly the
uninterrupted result. Behind the `crash` marker (`make test-crash`, run by .ci/run): a few minutes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_ARGS, feature_cache, run_cli, write_image

pytestmark = pytest.mark.crash

HARNESS = Path(__file__).with_name("faultinject.py")


def every_write(cwd: Path, mode: str, args: list, outputs: list[str], log_dir: Path) -> dict:
    """Run the driver (a fault at each write in turn, each followed by a clean rerun); its results."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "BOTTLENECK_LOG_DIR": str(log_dir), "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(HARNESS), mode, "results.json", ";".join(outputs), "--",
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / "results.json").read_text())


def one_line_error(r: dict) -> bool:
    """Exit 1 with one `error:` line; `warning:` lines the run printed before the fault (small classes) aside."""
    lines = [x for x in r["stderr"].splitlines() if x.strip() and not x.startswith("warning: ")]
    return r["rc"] == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r["stderr"]


def judge(results: dict, mode: str) -> int:
    """Every fault: success with the uninterrupted result, or one `error:` line (fail) or a death (crash) that
    leaves the previous result in place; then a rerun that completes with the uninterrupted result."""
    ref = results["reference"]
    assert ref["rc"] == 0, ref["stderr"]
    expected = ref["outputs"]
    assert all(expected.values()), expected
    for r in results["runs"]:
        fault, rerun = r["fault"], r["rerun"]
        n = len(ref["writes"])
        where = f"{mode} at write {fault['k']} of {n} ({fault['writes'][-1] if fault['writes'] else '?'})"
        if fault["rc"] == 0:
            assert fault["outputs"] == expected, f"{where}: succeeded with another result"
        elif mode == "fail":
            assert one_line_error(fault), f"{where}: exit {fault['rc']}: {fault['stderr'][-2000:]}"
            assert "No space left on device" in fault["stderr"], \
                f"{where}: the message should say why: {fault['stderr']}"
            assert fault["outputs"] == expected, f"{where}: the previous result was damaged"
        else:
            assert fault["rc"] == 137, f"{where}: exit {fault['rc']}: {fault['stderr'][-2000:]}"
        assert rerun["rc"] == 0, f"rerun after {where}: {rerun['stderr'][-2000:]}"
        assert rerun["outputs"] == expected, f"rerun after {where}: another result"
    return len(ref["writes"])


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_train_head_survives_a_fault_at_every_write(tmp_path, mode):
    """--overwrite: each fault meets the complete run the previous rerun left, which must survive it."""
    feature_cache(tmp_path / "c.h5", counts={"bcc": 20, "mel": 20, "nv": 30}, dim=8)
    args = ["train-head", "c.h5", "--out", "run", "--hidden", "8", "--epochs", "3", "--quiet", "--overwrite"]
    results = every_write(tmp_path, mode, args, ["run/predictions.csv", "run/metrics.json", "run/split.csv"],
                          tmp_path / "logs")
    assert judge(results, mode) >= 15


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_sweep_survives_a_fault_at_every_write(tmp_path, mode):
    """The rerun resumes from whatever the fault left (finished configurations are kept)."""
    feature_cache(tmp_path / "c.h5", counts={"bcc": 20, "mel": 20, "nv": 30}, dim=8)
    args = ["sweep", "c.h5", "--out", "sweep", "--lr", "1e-3,3e-4", "--hidden", "8", "--epochs", "3",
            "--patience", "2", "--quiet"]
    results = every_write(tmp_path, mode, args, ["sweep/best/predictions.csv", "sweep/best/metrics.json",
                                                 "sweep/split.csv"], tmp_path / "logs")
    assert judge(results, mode) >= 20


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_merge_survives_a_fault_at_every_write(tmp_path, mode):
    """Each fault meets the merged cache the previous rerun left (a merge into it refreshes the same rows)."""
    root = tmp_path / "data"
    for c in ("a", "b"):
        for i in range(4):
            write_image(root / c / f"{c}{i}.png", seed=ord(c) * 10 + i)
    for s in ("0/2", "1/2"):  # the shards, extracted in this process: only the merge is faulted
        r = run_cli("extract", root, "--cache", tmp_path / f"s{s[0]}.h5", "--shard", s, *TINY_ARGS)
        assert r.exit_code == 0, r.output
    results = every_write(tmp_path, mode, ["merge", "s0.h5", "s1.h5", "--out", "m.h5"], ["m.h5"], tmp_path / "logs")
    assert judge(results, mode) >= 5


@pytest.mark.parametrize("mode", ["fail", "crash"])
def test_fine_tune_survives_a_fault_at_every_write(ham_run, tmp_path, mode):
    """Fine-tuning is not bit-exact from run to run on a CPU (threaded convolutions), so what must match is the
    run's content: every file, every image in its split with its label. The rerun is the same command (without
    --resume: after a kill it starts over; resuming is tested in test_faults_doors and test_finetune)."""
    shutil.copytree(ham_run["run"], tmp_path / "head")
    args = ["fine-tune", "head", "--out", "ft", "--epochs", "1", "--batch-size", "8", "--no-augment", "--unfreeze",
            "1", "--quiet", "--overwrite"]
    outputs = ["ft/predictions.csv:image_id,split,true", "ft/split.csv", "ft/model.keras?", "ft/report.md?",
               "ft/curves.png?", "ft/confusion.png?", "ft/history.csv:epoch"]
    results = every_write(tmp_path, mode, args, outputs, tmp_path / "logs")
    assert judge(results, mode) >= 10
