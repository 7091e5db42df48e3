"""The `ceiling` part: what is left of a fast forward pass once decode, resize, batching, the journal and the
commits are around it, measured without a GPU.

- Per core count (1, 2, all; `cores.on_cores`): the real `extract` (hashing, tf.data decode, the writer) over
  HAM-sized JPEGs with a stand-in backbone whose forward pass costs nothing (`standin`), beside the decode-only
  rate of the same pipeline (`inference_batches` with fingerprints, as extraction runs it, drained with no
  backbone) timed just before and after it; their ratio says what the rest of extraction costs.
- On all cores: the same extraction with a forward pass that waits B / 2,000 s per batch of B, off every core (an
  emulated GPU), reported as end to end / min(that forward's own rate, the decode-only rate).

Every rate is a steady state: the images after the first batch over the time they took (extraction's own
`steady_images_per_s`; the first batch pays building, tracing and the pipeline's start).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..backbones import create_backbone
from ..extract import ExtractOptions, extract, make_config, make_forward
from ..images import build_index, inference_batches
from ..util import tensorflow
from .cores import core_counts, on_cores
from .data import BenchOptions, write_bench_images
from .standin import stand_in_backbone

GPU_IMAGES_PER_S = 2000.0  # one current GPU's InceptionV3/ResNet50 forward rate in float16 (the figure)


def drain_rate(paths: list[str], size: int, batch_size: int, fingerprints: bool = True) -> float:
    """Images/s of the extraction pipeline with no backbone (read, decode, resize, fingerprint, batch), counted
    after its first batch as extraction's steady state is."""
    n, first = 0, None
    for pixels, *_ in inference_batches(paths, size, batch_size, fingerprints=fingerprints):
        if first is None:
            first = time.perf_counter()
        else:
            n += int(pixels.shape[0])
    return n / (time.perf_counter() - first) if n else 0.0


def _stand_in_extract(index, opts: BenchOptions, name: str, size: int, cache: Path):
    return extract(index, ExtractOptions(backbone=name, weights="none", image_size=size, cache=cache, progress=False,
                                         precision="float32", xla="off", batch_size=opts.batch_size, seed=opts.seed))


def _forward_alone(name: str, size: int, batch_size: int, batches: int = 8) -> float:
    """Images/s of the stand-in's forward pass alone (extraction's traced function, in-memory batches)."""
    tf = tensorflow()
    config = make_config(ExtractOptions(backbone=name, weights="none", image_size=size, precision="float32",
                                        xla="off"))
    forward = make_forward(config, create_backbone(name, "none", size, precision="float32"))
    x = tf.zeros((batch_size, size, size, 3), tf.float32)
    forward(x).numpy()  # trace
    start = time.perf_counter()
    for _ in range(batches):
        forward(x).numpy()
    return batches * batch_size / (time.perf_counter() - start)


def bench_ceiling(opts: BenchOptions, workdir: Path, counts: tuple[int, ...] | None = None) -> dict:
    """The figures above on `opts.ceiling_images` HAM-sized JPEGs at 299 px (or --image-size), batch `opts.batch_size`,
    `opts.dim`-d float16 features; `counts`: the core counts (default 1, 2 and all)."""
    folder = write_bench_images(workdir / "ceiling-images", opts.ceiling_images, opts.seed)
    index = build_index(folder)
    paths = [str(e.path) for e in index.entries]
    size, bs = opts.image_size or 299, opts.batch_size
    out = {"images": len(paths), "input_size": size, "batch_size": bs, "dim": opts.dim, "cores": []}
    k = 0

    def cache() -> Path:
        nonlocal k
        k += 1
        return workdir / f"ceiling-{k}.h5"  # a new cache each time: nothing is cached already

    with stand_in_backbone(opts.dim, size) as name:
        _stand_in_extract(index, opts, name, size, cache())  # warm-up: tf.data and Keras' first use
        for n_cores in counts or core_counts():
            with on_cores(n_cores):
                out["cores"].append({"cores": n_cores, **_interleaved(index, paths, opts, name, size, cache)})
    with stand_in_backbone(opts.dim, size, images_per_s=GPU_IMAGES_PER_S) as name:
        forward = _forward_alone(name, size, bs)
        g = _interleaved(index, paths, opts, name, size, cache, forward)
    out["emulated_gpu"] = {"target_images_per_s": GPU_IMAGES_PER_S, "forward_images_per_s": forward, **g,
                           "bound_images_per_s": min(forward, g["decode_images_per_s"])}
    return out


def _interleaved(index, paths: list[str], opts: BenchOptions, name: str, size: int, cache,
                 forward: float = float("inf")) -> dict:
    """decode, extract, decode, ... (`opts.repeats` extractions): the median of each extraction against
    min(`forward`, the mean of the decode-only rates just before and after it), and the spread of those ratios; a
    shared machine's drift falls on both sides of each ratio."""
    decode, runs = [drain_rate(paths, size, opts.batch_size)], []
    for _ in range(max(1, opts.repeats)):
        start = time.perf_counter()
        s = _stand_in_extract(index, opts, name, size, cache())
        runs.append((s.steady_images_per_s, s.extracted / (time.perf_counter() - start)))
        decode.append(drain_rate(paths, size, opts.batch_size))
    ratios = [r / min(forward, (decode[k] + decode[k + 1]) / 2) for k, (r, _) in enumerate(runs)]
    return {"decode_images_per_s": float(np.median(decode)), "decode_runs": decode,
            "extract_images_per_s": float(np.median([r for r, _ in runs])), "extract_runs": [r for r, _ in runs],
            "whole_call_images_per_s": float(np.median([w for _, w in runs])), "ratio": float(np.median(ratios)),
            "ratio_runs": ratios, "spread": float(max(ratios) - min(ratios))}


def format_ceiling(r: dict) -> list[str]:
    lines = [f"ceiling: extract with a stand-in backbone whose forward pass costs nothing ({r['images']} JPEGs "
             f"600x450 -> {r['input_size']} px, batch {r['batch_size']}, {r['dim']}-d float16), steady state, "
             "medians of extractions each between two decode-only timings:"]
    for c in r["cores"]:
        lines.append(f"  {c['cores']} core{'s' if c['cores'] > 1 else ''}: extract {c['extract_images_per_s']:.0f} "
                     f"images/s vs decode only {c['decode_images_per_s']:.0f} images/s (medians), ratio "
                     f"{c['ratio']:.2f} ({_runs(c)}); whole call, hashing and start included: "
                     f"{c['whole_call_images_per_s']:.0f} images/s")
    g = r["emulated_gpu"]
    lines.append(f"  emulated GPU (a forward pass that waits 1/{g['target_images_per_s']:.0f} s per image, off the "
                 f"cores; alone {g['forward_images_per_s']:.0f} images/s): extract {g['extract_images_per_s']:.0f} "
                 f"images/s / min(forward, decode {g['decode_images_per_s']:.0f}): ratio {g['ratio']:.2f} ({_runs(g)})")
    lines.append("  (the emulation casts each uint8 batch to float32 on the cores, which a GPU does on the device)")
    return lines


def _runs(c: dict) -> str:
    return (f"median of {' / '.join(f'{x:.2f}' for x in c['ratio_runs'])}, spread {c['spread']:.2f}; decode "
            f"{' / '.join(f'{x:.0f}' for x in c['decode_runs'])}")
