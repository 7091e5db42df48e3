"""The `extract` part on a dozen small JPEGs: each extraction between two timings of its own forward pass on the
same batches, and the median and spread of their ratios."""

import numpy as np
import pytest

from bottleneck.bench import BenchOptions
from bottleneck.bench.data import write_bench_images
from bottleneck.bench.extraction import bench_extraction, format_extraction, steady_batches


@pytest.mark.slow
def test_the_reference_is_timed_around_each_extraction_and_the_efficiency_is_their_median(tmp_path):
    opts = BenchOptions(backbone="vgg16", image_size=32, images=10, batch_size=4, repeats=2)
    e = bench_extraction(opts, tmp_path)
    p = e["precisions"]["float32"]
    assert e["repeats"] == 2 and len(p["forward_runs"]) == 3 and len(p["efficiency_runs"]) == 2
    assert min(p["forward_runs"]) > 0 and p["end_to_end_images_per_s"] > 0 and e["decode_images_per_s"] > 0
    assert p["efficiency"] == pytest.approx(np.median(p["efficiency_runs"]))
    assert p["spread"] == pytest.approx(max(p["efficiency_runs"]) - min(p["efficiency_runs"]))
    assert p["defect"] == (p["efficiency"] > 1.0 or p["spread"] > 0.1)
    assert len(p["whole_run_efficiency_runs"]) == 2 and min(p["whole_run_efficiency_runs"]) > 0
    assert p["whole_run_efficiency"] == pytest.approx(np.median(p["whole_run_efficiency_runs"]))
    assert len(list(tmp_path.glob("extract-float32-off-*.h5"))) == 2
    lines = format_extraction(e, 2, gpus=False)
    assert lines[1].startswith("  float32: extract ") and ("[bench defect" in lines[1]) == p["defect"]
    assert f"= {p['whole_run_efficiency']:.2f} of the pure forward" in lines[1]


def test_the_reference_batches_are_those_after_the_first_padded_as_extraction_pads_them(tmp_path):
    paths = sorted(str(p) for p in write_bench_images(tmp_path, 10).rglob("*.jpg"))
    held, batches, images = steady_batches(paths, 32, 4)
    assert (batches, images) == (2, 6)  # batches 4 + 4 + 2: the last two, padded
    assert [tuple(x.shape) for x in held] == [(4, 32, 32, 3)] * 2
    assert not np.any(held[1].numpy()[2:])  # the padding rows are zeros
