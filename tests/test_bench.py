"""`bottleneck bench` on a small synthetic cache: every part it is asked for prints its figures."""

import pytest

from conftest import run_cli


def test_bench_prints_figures_for_a_small_cache():
    r = run_cli("bench", "--rows", "400", "--dim", "32", "--epochs", "2", "--part", "head", "--part", "run")
    assert r.exit_code == 0, r.output
    assert "head epoch (360 x 32" in r.output and "whole default train-head run (400 x 32 cache)" in r.output


@pytest.mark.slow
def test_bench_all_parts_run():
    r = run_cli("bench", "--rows", "400", "--dim", "32", "--epochs", "2", "--backbone", "vgg16", "--image-size", "32",
                "--images", "8")
    assert r.exit_code == 0, r.output
    assert "sweep of 16 configurations" in r.output and "KiB per view per image" in r.output
