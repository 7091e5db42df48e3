"""Progress in a log file or a pipe: whole lines, at most one per interval, never a carriage return; none with -q."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
from conftest import TINY_ARGS

from bottleneck.util.progress import LogLines, interactive, progress_bar


def test_a_bar_into_a_file_writes_lines_at_most_every_interval_and_a_last_one():
    log = io.StringIO()  # not a terminal
    bar = progress_bar(total=6, desc="extract x", unit="img", stream=log, interval=0.2)
    assert isinstance(bar, LogLines) and not interactive(log)
    for _ in range(6):
        time.sleep(0.1)
        bar.set_postfix({"loss": "0.5"})  # tqdm redraws here on a terminal
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 4, lines  # ~0.6 s at one line per 0.2 s at most, the last one included
    assert lines[-1].startswith("extract x: 6/6 img (100%)") and "loss=0.5" in lines[-1]


def test_an_iterable_a_transient_bar_and_a_quiet_one():
    log = io.StringIO()
    assert list(progress_bar(range(3), desc="sweep", unit="config", stream=log)) == [0, 1, 2]
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sweep: 3/3 config (100%)")  # the last line only: under 30 s
    quick = io.StringIO()  # a transient bar (an epoch bar) that never reached its interval prints nothing
    bar = progress_bar(total=2, desc="train-head", stream=quick, leave=False)
    bar.update(2)
    bar.close()
    quiet = io.StringIO()
    bar = progress_bar(total=2, desc="quiet", stream=quiet, enabled=False)
    bar.update(2)
    bar.close()
    assert quick.getvalue() == quiet.getvalue() == ""


@pytest.mark.slow
def test_extract_with_stderr_into_a_file_has_no_carriage_return(tmp_path, class_tree):
    """`bottleneck extract ... 2> log` once filled the log with a redrawn bar ("\\r" per refresh)."""
    log = tmp_path / "extract.log"
    args = [a for a in TINY_ARGS if a != "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-m", "bottleneck", "extract", str(class_tree), *args, "--cache",
                               str(tmp_path / "c.h5")], stdout=subprocess.PIPE, stderr=err, text=True, timeout=300,
                              env=env)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text
    assert any(line.startswith("extract vgg16: ") and "(100%)" in line for line in text.splitlines()), text
    assert (tmp_path / "c.h5").is_file()
