"""`bottleneck bench` on a small synthetic cache: every part it is asked for prints its figures."""

import pytest
from conftest import run_cli

from bottleneck.bench.parts import PARTS, QUICK_PARTS, choose_parts
from bottleneck.errors import InputError


@pytest.mark.slow
def test_bench_prints_figures_for_a_small_cache():
    r = run_cli("bench", "--rows", "400", "--dim", "32", "--epochs", "2", "--part", "head", "--part", "run")
    assert r.exit_code == 0, r.output
    assert "head epoch (360 x 32" in r.output and "whole default train-head run (400 x 32 cache)" in r.output


@pytest.mark.slow
def test_bench_all_parts_run():
    r = run_cli("bench", "--all", "--rows", "400", "--dim", "32", "--epochs", "2", "--backbone", "vgg16",
                "--image-size", "32", "--images", "16", "--batch-size", "4", "--grow-rows", "3000,30000")
    assert r.exit_code == 0, r.output
    for figure in ("writer: one CacheWriter", "ceiling: extract with a stand-in", "emulated GPU", "decode to 32 px",
                   "ray engine", "to a 3000-row cache", "to a 30000-row cache", "efficiency", "decode only",
                   "GFLOP/s vs matrix product", "one image at a time", "one text file per image", "nothing new",
                   "peak RSS", "sweep of 16 configurations", "KiB per view per image"):
        assert figure in r.output, figure


@pytest.mark.slow
def test_bench_writer_part_prints_the_writer_beside_h5py():
    r = run_cli("bench", "--part", "writer", "--dim", "64")
    assert r.exit_code == 0, r.output
    assert "writer: one CacheWriter, 20000 rows x 64 float16 in batches of 32: " in r.output
    assert "vs plain h5py in one call" in r.output and "skipped" not in r.output


def test_bench_refuses_too_few_images_for_a_steady_state():
    r = run_cli("bench", "--part", "extract", "--images", "40", "--batch-size", "32")
    assert r.exit_code == 1 and "--images should be at least twice the batch size (64)" in r.output


def test_bench_refuses_bad_grow_rows():
    r = run_cli("bench", "--part", "grow", "--grow-rows", "100k")
    assert r.exit_code == 1 and "--grow-rows should be comma-separated positive row counts" in r.output


def test_with_no_option_bench_runs_the_quick_set_and_names_the_rest():
    """`bottleneck bench` once ran every part, `grow` to 1,000,000 rows (about 4 GiB of disk) and `ray` included."""
    chosen, skipped = choose_parts()
    assert chosen == QUICK_PARTS and "grow" in skipped and "ray" in skipped
    assert set(chosen) | set(skipped) == set(PARTS) and not set(chosen) & set(skipped)
    assert choose_parts(all_parts=True) == (PARTS, ())
    assert choose_parts(("run", "head")) == (("head", "run"), ())  # PARTS order; --part skips nothing to report
    with pytest.raises(InputError, match="--all runs every part and --part chooses some"):
        choose_parts(("head",), all_parts=True)
    with pytest.raises(InputError, match="--part should be among"):
        choose_parts(("gpu",))


def test_bench_help_names_all_and_the_quick_set():
    r = run_cli("bench", "--help")
    assert r.exit_code == 0 and "--all" in r.output and ", ".join(QUICK_PARTS[:2]) in r.output
    r = run_cli("bench", "--all", "--part", "head")
    assert r.exit_code == 1 and r.output.startswith("error: --all runs every part")
