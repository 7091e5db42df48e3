"""What the cli/ package itself guarantees for every command: bad input is one line starting with "error: ",
exit status 1, and nothing written; a usage error exits 2. A CLI test of one command's behaviour lives beside that
command's module tests (extract in test_extract.py, info in test_cache.py, merge in test_merge.py, ...)."""

import pytest
from conftest import TINY_ARGS, run_cli


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
    r = run_cli(*args)
    assert r.exit_code == 1
    assert message in r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1
    assert not cache.exists()


def test_usage_error_exits_2(tmp_path):
    assert run_cli("extract").exit_code == 2
