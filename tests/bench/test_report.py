"""The printed table of `bottleneck bench`: one line per part measured, from a small results dict."""

from bottleneck.bench import BenchOptions, format_results

MACHINE = {"cpu": "Test CPU", "cores": 2, "flags": ["avx2", "fma"], "gpus": [], "fastest_native_precision": "float32",
           "versions": {"numpy": "2.0", "bottleneck": "0.1"}}


def test_the_table_has_the_machine_and_a_line_per_part():
    results = {"machine": MACHINE, "head": {"rows": 360, "dim": 32, "epoch_s": 0.1234, "first_epoch_s": 1.5},
               "memory": {"images": (16, 128), "peak_rss_mib": (500.0, 520.0), "growth": 1.04},
               "ray": {"skipped": "install the [ray] extra"}}
    lines = format_results(results, BenchOptions(rows=400, dim=32)).splitlines()
    assert lines[0] == ("machine: Test CPU, 2 cores, flags avx2 fma, 0 GPU, fastest native precision float32; "
                        "numpy 2.0")  # the package's own version is not a library
    assert lines[1] == "head epoch (360 x 32, batch 128, default head): 0.123 s (first epoch, with tracing: 1.500 s)"
    assert lines[2] == "peak RSS of extract (mobilenet_v2 96 px): 500 MiB at 16 images, 520 MiB at 128 images (1.04x)"
    assert lines[3] == "ray engine: skipped (install the [ray] extra)" and len(lines) == 4


def test_grow_sizes_print_one_line_each_and_a_machine_without_flags_says_so():
    size = {"added": 30, "rows": 3000, "cache_mib": 1.0, "append_s": 0.2, "alone_s": 0.1, "ratio": 2.0,
            "append_read_rows_s": 0.01, "batch": 50000, "first_commit_s": 0.1, "last_commit_s": 0.2, "copy_s": 0.01}
    results = {"machine": MACHINE | {"flags": []}, "grow": {"sizes": [size, size | {"rows": 30000}]}}
    lines = format_results(results, BenchOptions(dim=32)).splitlines()
    assert "flags (none of note)" in lines[0] and len(lines) == 3
    assert lines[1].startswith("adding 1% (30 rows x 32) to a 3000-row cache (1 MiB): 0.20 s vs 0.10 s into an "
                               "empty cache = 2.00x")
    assert "to a 30000-row cache" in lines[2]
