"""What the cli/ package itself guarantees for every command: bad input is one line starting with "error: ",
exit status 1, and nothing written; a usage error exits 2. A CLI test of one command's behaviour lives beside that
command's module tests (extract in test_extract.py, info in test_cache.py, merge in test_merge.py, ...)."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import typer
from conftest import TINY_ARGS, copy_run, feature_cache, run_cli
from typer.testing import CliRunner

from bottleneck.cli import app
from bottleneck.cli.app import CLASS_MAP_SYNTAX, QUIET_HELP, handle_errors


@pytest.mark.parametrize("args, message", [
    (["extract", "{tmp}/nope", *TINY_ARGS], "does not exist"),
    (["extract", "{data}", "--backbone", "alexnet", "--weights", "none"], "unknown backbone 'alexnet'"),
    (["extract", "{data}", "--weights", "imagenett"], "received 'imagenett'"),
    (["extract", "{data}", *TINY_ARGS, "--pooling", "median"], "--pooling should be one of avg, max"),
    (["extract", "{data}", *TINY_ARGS, "--metadata", "{tmp}/missing.csv"], "missing.csv does not exist"),
    (["extract", "{data}", *TINY_ARGS, "--shard", "5/2"], "--shard should be I/N"),
    (["extract", "{data}", *TINY_ARGS, "--address", "auto"], "--address applies only to --engine ray; add"),
    (["extract", "{data}", *TINY_ARGS, "--workers", "2", "--engine", "local"], "--workers applies only to"),
    (["info", "{tmp}/missing.h5"], "does not exist"),
    (["info", "{data}/mel/img0.jpg"], "cannot open cache"),
])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(tmp_path, class_tree, args, message):
    cache = tmp_path / "c.h5"
    args = [a.format(tmp=tmp_path, data=class_tree) for a in args]
    if args[0] == "extract":
        args += ["--cache", str(cache)]
    r = run_cli(*args)
    assert r.exit_code == 1
    assert message in r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert not cache.exists()


def test_usage_error_exits_2(tmp_path):
    assert run_cli("extract").exit_code == 2


def bottleneck_command(*args) -> list[str]:
    return [sys.executable, "-m", "bottleneck", *map(str, args)]


@pytest.mark.slow
def test_output_into_a_closed_pipe_ends_quietly_on_every_command(tmp_path):
    """`bottleneck info CACHE | head -1` once ended in `error: BrokenPipeError`: a reader that has gone ends the
    command quietly with the shell's SIGPIPE status (141): no error line, no traceback, no "Exception ignored"."""
    cache = feature_cache(tmp_path / "c.h5")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    for args in (["info", cache], ["backbones"]):
        read, write = os.pipe()
        os.close(read)  # the reader is gone before the first line: every write fails with EPIPE
        try:
            proc = subprocess.run(bottleneck_command(*args), stdout=write, stderr=subprocess.PIPE, text=True,
                                  timeout=120, env=env)
        finally:
            os.close(write)
        assert (proc.returncode, proc.stderr) == (141, ""), (args, proc.stderr)
    # The pipeline as typed: the first line reaches `head`, and whatever the race, nothing but it is printed.
    line = " ".join(bottleneck_command("info", cache)) + ' | head -1; echo "status ${PIPESTATUS[0]}"'
    shell = subprocess.run(line, shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
                           env=env)
    lines = shell.stdout.splitlines()
    assert lines[0] == f"cache: {cache}" and lines[1] in ("status 0", "status 141") and len(lines) == 2, shell.stdout
    assert shell.stderr == ""



# Run in a fresh interpreter: each command through the real CLI (CliRunner), then what got imported.
NO_TENSORFLOW = """
import json, sys
from typer.testing import CliRunner
from bottleneck.cli import app
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, (args, r.output)
print(json.dumps(sorted(m for m in ("tensorflow", "keras") if m in sys.modules)))
"""


def views_cache(path, views=2):
    """A cache of the synthetic run's configuration (feature_cache's, other images: other ids, bytes and features)
    with `views` stored views of each image."""
    from bottleneck.cache.store import load_cache
    from bottleneck.cache.writer import CacheWriter

    src = load_cache(feature_cache(path.with_name("plain.h5"), counts={"bcc": 8, "mel": 8, "nv": 14}, seed=9))
    x = np.asarray(src.features, np.float32)
    rows = [dict(image_id=f"ext{k}", path=f"ext/{k}.jpg", label=src.class_names[y], group=f"E{k}",
                 sha256=f"e{k:063x}", width=40, height=30) for k, y in enumerate(src.labels)]
    noise = np.random.default_rng(5).normal(0, 0.3, (len(x), views, x.shape[1]))
    with CacheWriter(path, src.config, {"dataset": "external"}, tuple(src.class_names)) as w:
        w.write_batch(rows, x, views=(x[:, None] + noise).astype(np.float32), view_lo=1)
    return path


@pytest.mark.slow
def test_help_info_merge_and_evaluate_never_import_tensorflow(tmp_path, synth_run):
    """TensorFlow's import alone takes ~10 s: the commands that read caches and apply a trained head to cached
    features (evaluate reads head.keras with numpy, heads/dense.py) must start without it."""
    import json

    from conftest import copy_run

    run = copy_run(synth_run["run"], tmp_path)
    ext = views_cache(tmp_path / "ext.h5")
    commands = [["--help"], ["info", ext], ["merge", ext, "--out", tmp_path / "merged.h5"],
                ["evaluate", run], ["evaluate", run, "--cache", ext, "--tta", "--no-calibrate"],
                ["evaluate", run, "--cache", ext, "--memory-gb", "0.000001", "--out", tmp_path / "streamed"]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, json.dumps([[str(a) for a in c] for c in commands])],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == []
    assert (tmp_path / "merged.h5").is_file() and (run / "eval-test" / "metrics.json").is_file()
    tta = json.loads((run / "eval-ext-tta-nocal" / "metrics.json").read_text())
    assert tta["tta"] and tta["metrics"]["n"] == 30 and not tta["decision_rule"]["calibrated"]
    streamed = json.loads((tmp_path / "streamed" / "metrics.json").read_text())
    assert streamed["features"] != tta["features"] and streamed["metrics"]["n"] == 30


# --- help and flags: what every command shows and takes -----------------------------------------------------------

COMMANDS = [c.name for c in app.registered_commands]
# Every command that works long enough to print progress (or runs commands that do) takes -q/--quiet.
QUIET_COMMANDS = ["extract", "merge", "train-head", "evaluate", "sweep", "fine-tune", "predict", "export", "bench",
                  "demo", "compare"]


def help_text(*args) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_at_80_columns_cuts_nothing_and_shows_no_bool_type(command):
    """At 80 columns typer's rich panels cut `--class-map`'s syntax and the default cache name with an ellipsis and
    showed a <bool> type beside every flag (`--help <bool>`)."""
    text = help_text(*([command] if command else []))
    assert "<bool>" not in text and "\u2026" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
    if "--class-map" in text:
        assert CLASS_MAP_SYNTAX in text
    if command == "extract":
        assert "cache/<dataset>-<8hex>-<config>.h5" in text


def test_the_commands_with_a_class_map_show_its_syntax():
    assert {c for c in COMMANDS if CLASS_MAP_SYNTAX in help_text(c)} == {"train-head", "evaluate", "sweep",
                                                                           "fine-tune", "compare"}


def test_quiet_is_the_same_option_on_every_command_that_prints_progress(tmp_path, synth_run):
    """`evaluate -q` once failed with "No such option: -q" while extract and train-head took it."""
    for command in QUIET_COMMANDS:
        assert f"-q, --quiet {QUIET_HELP.split(' (')[0]}" in " ".join(help_text(command).split()), command
    run = copy_run(synth_run["run"], tmp_path)
    r = run_cli("evaluate", run, "-q")
    assert r.exit_code == 0, r.output
    assert (run / "eval-test" / "metrics.json").is_file()


def test_a_library_warning_is_one_warning_line(tmp_path):
    """Keras' and TensorFlow's own warnings (not ours) once printed in Python's two-line format, file and source
    line included; they are one `warning:` line each, with their category and package."""
    tiny = typer.Typer()

    @tiny.command()
    @handle_errors
    def warn():
        warnings.warn_explicit("Do not pass an `input_shape` to a layer.\nSecond line.", UserWarning,
                               "/x/site-packages/keras/src/layers/core/input_layer.py", 12)
        warnings.warn("a second warning, from here", RuntimeWarning, stacklevel=1)

    r = CliRunner().invoke(tiny, [])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == "warning: Do not pass an `input_shape` to a layer. (UserWarning from keras)"
    assert lines[1] == "warning: a second warning, from here (RuntimeWarning from test_app.py)"
    assert len(lines) == 2
