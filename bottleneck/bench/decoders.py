"""The `decode` part: images/s of decoding JPEGs to S x S pixels by each candidate mechanism, on 1, 2 and all
cores (`cores.on_cores`, with as many threads or processes), for HAM-sized (600 x 450) and ISIC-sized
(4000 x 3000) files, and how far each one's pixels are from the current decoder's.

- tf.data + load_image: the current pipeline (`inference_batches`, no fingerprints): Pillow in a numpy_function,
  with `Image.draft` (DCT-domain downscaling by 1/2..1/8 while >= S on both sides) and a bilinear resize;
- threads + load_image: the same function in a thread pool (what the GIL leaves of Pillow's released sections);
- processes + load_image: the same function in a pool of processes (started before the clock, pixels pickled back);
- Pillow without draft: a full decode, then the same resize: what DCT-domain downscaling saves;
- tf.io.decode_jpeg(ratio) + resize: TensorFlow's decoder (no GIL) at the DCT scale draft would pick, then
  `tf.image.resize` (bilinear, antialiased), in tf.data.
Pixels are compared with load_image's, image by image (max absolute difference over all images, 0..255).
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..images import inference_batches, load_image
from ..util import tensorflow
from .cores import core_counts, on_cores
from .data import BenchOptions, write_bench_images, write_large_images

CURRENT = "tf.data + load_image"
WAYS = (CURRENT, "threads + load_image", "processes + load_image", "Pillow without draft",
        "tf.io.decode_jpeg(ratio) + resize")


def pil_no_draft(path: str, size: int) -> np.ndarray:
    """A full-size Pillow decode and load_image's resize (RGB JPEGs without EXIF rotation, as the bench writes)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), np.uint8)


def tf_ratio_dataset(paths: list[str], size: int, parallel: int):
    """tf.data of (S, S, 3) uint8: each JPEG decoded by TensorFlow at the largest scale 1/r (r in 1, 2, 4, 8) that
    Pillow's draft would choose (r <= min(width // S, height // S)), then resized to S x S. Handles no EXIF
    rotation, CMYK or other formats: a candidate to measure, not a decoder for the messy files of a data folder."""
    tf = tensorflow()

    def decode(path):
        data = tf.io.read_file(path)
        shape = tf.io.extract_jpeg_shape(data)
        scale = tf.minimum(shape[0] // size, shape[1] // size)
        branch = tf.cast(scale >= 2, tf.int32) + tf.cast(scale >= 4, tf.int32) + tf.cast(scale >= 8, tf.int32)

        def at(ratio):
            def run():
                img = tf.io.decode_jpeg(data, channels=3, ratio=ratio)
                img = tf.image.resize(img, (size, size), method="bilinear", antialias=True)
                return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)
            return run

        return tf.switch_case(branch, [at(r) for r in (1, 2, 4, 8)])

    return tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=parallel, deterministic=True)


def _decoder(way: str, paths: list[str], size: int, workers: int, pool=None):
    """A function that decodes every path of `paths` by `way` and returns the pixels; what can be made before
    the clock (the tf.data graph, traced when built) is made here, and run once over a few images."""
    if way in (CURRENT, "tf.io.decode_jpeg(ratio) + resize"):
        if way == CURRENT:
            ds = inference_batches(paths, size, 8).map(lambda x, *_: x).unbatch()
        else:
            ds = tf_ratio_dataset(paths, size, workers)
        for _ in ds.take(workers):  # warm-up: the pipeline's threads started
            pass
        return lambda: [x.numpy() for x in ds]
    # load_image itself goes to the processes: they import bottleneck.images only, not this package
    fn = pil_no_draft if way == "Pillow without draft" else load_image
    chunk = max(1, len(paths) // (4 * workers))

    def run(some=paths):
        return [x if fn is pil_no_draft else x[0] for x in pool.map(fn, some, [size] * len(some), chunksize=chunk)]

    run(paths[:workers])  # warm-up: processes started and their imports done
    return run


def _time_way(way: str, paths: list[str], size: int, workers: int) -> tuple[float, list[np.ndarray]]:
    """(images/s, pixels) of `way` with `workers` threads or processes, the pool and tf.data started before the
    clock."""
    pool = None
    if way == "processes + load_image":  # spawn: a fork of a process running TensorFlow's threads can deadlock
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    elif way in ("threads + load_image", "Pillow without draft"):
        pool = ThreadPoolExecutor(workers)
    try:
        run = _decoder(way, paths, size, workers, pool)
        start = time.perf_counter()
        pixels = run()
        return len(paths) / (time.perf_counter() - start), pixels
    finally:
        if pool is not None:
            pool.shutdown()


def measure_set(paths: list[str], size: int, counts: tuple[int, ...]) -> dict:
    """Per way: images/s at each core count and the max abs pixel difference from load_image's."""
    reference = [load_image(p, size)[0] for p in paths]
    out = {}
    for way in WAYS:
        rates, diff = [], 0
        for k in counts:
            with on_cores(k):
                rate, pixels = _time_way(way, paths, size, k)
            rates.append(rate)
            diff = max(int(np.abs(a.astype(np.int16) - b).max()) for a, b in zip(pixels, reference))
        out[way] = {"images_per_s": rates, "max_abs_diff": diff}
    return out


def bench_decoders(opts: BenchOptions, workdir: Path, counts: tuple[int, ...] | None = None) -> dict:
    """`opts.decode_images` HAM-sized and `opts.large_images` ISIC-sized (`opts.large_size`) JPEGs decoded to
    299 px (or --image-size) by every way, at each of `counts` cores (default 1, 2 and all)."""
    counts = counts or core_counts()
    size = opts.image_size or 299
    ham = write_bench_images(workdir / "decode-ham", opts.decode_images, opts.seed)
    large = write_large_images(workdir / "decode-large", opts.large_images, opts.large_size, opts.seed)
    sets = {}
    for name, folder, (w, h) in (("HAM", ham, (600, 450)), ("ISIC", large, opts.large_size)):
        paths = sorted(str(p) for p in folder.rglob("*.jpg"))
        mib = sum(Path(p).stat().st_size for p in paths) / len(paths) / 2**20
        sets[name] = {"images": len(paths), "width": w, "height": h, "mib_per_file": mib,
                      "ways": measure_set(paths, size, counts)}
    return {"size": size, "cores": list(counts), "sets": sets}


def format_decoders(r: dict) -> list[str]:
    lines = [f"decode to {r['size']} px, images/s on {', '.join(map(str, r['cores']))} cores (as many threads or "
             "processes); max |pixel difference| from load_image's:"]
    for name, s in r["sets"].items():
        lines.append(f"  {name} ({s['images']} JPEGs {s['width']}x{s['height']}, {s['mib_per_file']:.1f} MiB each):")
        for way, m in s["ways"].items():
            lines.append(f"    {way}: {' / '.join(f'{v:.0f}' for v in m['images_per_s'])}; "
                         f"max diff {m['max_abs_diff']}")
    return lines
