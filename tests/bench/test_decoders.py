"""The `decode` part on a few small JPEGs: every way measured, and the ways that run load_image give its pixels."""

import numpy as np
from PIL import Image

from bottleneck.bench import BenchOptions
from bottleneck.bench.decoders import CURRENT, WAYS, bench_decoders, format_decoders, tf_ratio_dataset
from bottleneck.images import load_image


def test_every_way_decodes_both_sets_and_load_image_ways_give_the_same_pixels(tmp_path):
    opts = BenchOptions(decode_images=4, large_images=1, large_size=(1200, 900), image_size=64)
    r = bench_decoders(opts, tmp_path, counts=(1,))
    assert r["size"] == 64 and r["cores"] == [1] and list(r["sets"]) == ["HAM", "ISIC"]
    ham, isic = r["sets"]["HAM"], r["sets"]["ISIC"]
    assert (ham["images"], ham["width"], ham["height"]) == (4, 600, 450)
    assert (isic["images"], isic["width"], isic["height"]) == (1, 1200, 900) and isic["mib_per_file"] > 0
    for s in (ham, isic):
        assert list(s["ways"]) == list(WAYS)
        for way, m in s["ways"].items():
            assert len(m["images_per_s"]) == 1 and m["images_per_s"][0] > 0, way
        for way in (CURRENT, "threads + load_image", "processes + load_image"):
            assert s["ways"][way]["max_abs_diff"] == 0, way
    # 1200x900 to 64 px: draft decodes at 1/8, a full decode differs after the resize
    assert isic["ways"]["Pillow without draft"]["max_abs_diff"] > 0
    lines = format_decoders(r)
    assert lines[1] == f"  HAM (4 JPEGs 600x450, {ham['mib_per_file']:.1f} MiB each):" and len(lines) == 13


def test_tensorflow_decodes_at_the_scale_draft_picks(tmp_path):
    """A 1200x900 JPEG to 100 px: draft and decode_jpeg both decode at 1/8 (150x112), then resize: close pixels."""
    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 255, (9, 12, 3), dtype=np.uint8)).resize((1200, 900), Image.BICUBIC)
    path = tmp_path / "big.jpg"
    field.save(path, quality=95)
    (ours,) = [x.numpy() for x in tf_ratio_dataset([str(path)], 100, 1)]
    reference, _ = load_image(path, 100)
    assert ours.shape == reference.shape == (100, 100, 3) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - reference).max() <= 8
