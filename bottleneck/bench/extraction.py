"""The `extract` part: steady-state `extract` against the pure forward pass at the same precision and batch size,
and the forward pass's FLOP/s against a matrix product's.

The reference is the very function extraction runs: `make_forward` of the same configuration, called inside a
traced step that casts the uint8 batch as extraction's own does, from the same (main) thread, on the same batches
(every batch after the first, decoded by the same pipeline, the short last one padded as extraction pads it), so
that it does the work of extraction's steady window minus decoding and writing. It is timed before and after each
of `repeats` extractions; each extraction is compared with the mean of the two timings around it, and the median
and spread (max - min) of those ratios are reported. An efficiency above 1.0 or a spread above 0.1 is flagged as
a defect of the measurement (a shared machine's burst, too few images), not a result.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from ..backbones import create_backbone, fastest_native, has_gpu, resolve_xla
from ..cache import CacheConfig
from ..extract import ExtractOptions, extract, make_config, make_forward
from ..images import build_index, inference_batches, pad_batch
from ..util import tensorflow
from .ceilings import decode_ceiling, forward_flops, matmul_flops_per_s
from .data import BenchOptions, write_bench_images
from .pipeline_ceiling import drain_rate

MAX_HELD_BATCHES = 64  # batches the reference holds in memory (64 x 32 x 299 x 299 x 3 bytes = 549 MB); cycled past


def extract_once(index, opts: BenchOptions, cache: Path, precision: str, xla: str = "auto", engine: str = "local"):
    return extract(index, ExtractOptions(backbone=opts.backbone, weights="none", image_size=opts.image_size,
                                         cache=cache, progress=False, dtype="float32", precision=precision,
                                         xla=xla, batch_size=opts.batch_size, engine=engine))


def float32_config(opts: BenchOptions) -> CacheConfig:
    return make_config(ExtractOptions(backbone=opts.backbone, weights="none", image_size=opts.image_size,
                                      precision="float32", xla="off"))


def steady_batches(paths: list[str], size: int, batch_size: int) -> tuple[list, int, int]:
    """(the batches after the first, padded to `batch_size`, at most MAX_HELD_BATCHES of them; how many such
    batches extraction runs; how many images they hold)."""
    held = []
    for k, (pixels, *_) in enumerate(inference_batches(paths, size, batch_size)):
        if 1 <= k <= MAX_HELD_BATCHES:
            held.append(pad_batch(pixels, batch_size))
        elif k > MAX_HELD_BATCHES:
            break
    return held, math.ceil(len(paths) / batch_size) - 1, max(0, len(paths) - batch_size)


def forward_rate(step, held: list, batches: int, images: int) -> float:
    """Images/s of `step` over `batches` batches (the held ones, cycled), holding `images` images."""
    start = time.perf_counter()
    for i in range(batches):
        step(held[i % len(held)]).numpy()
    return images / (time.perf_counter() - start)


def bench_variants(backbone: str) -> list[tuple[str, str]]:
    """(precision, xla) pairs to time: float32 without XLA (the reference), with it where `auto` would use it, and
    the reduced precision this machine runs natively (emulated ones would only be slower)."""
    variants = [("float32", "off")]
    if resolve_xla("auto", backbone, "float32"):
        variants.append(("float32", "on"))
    native = fastest_native()
    return variants + ([(native, "off")] if native != "float32" else [])


def _variant(opts: BenchOptions, workdir: Path, index, config: CacheConfig, batches, precision: str, xla: str):
    tf = tensorflow()
    held, n_batches, n_images = batches
    model = create_backbone(opts.backbone, "none", config.input_size, seed=opts.seed, precision=precision)
    forward = make_forward(dataclasses.replace(config, precision=precision, xla=xla == "on"), model)
    step = tf.function(lambda x: forward(tf.cast(x, tf.float32)))  # extraction's step for the plain view
    step(held[0]).numpy()  # trace
    fwd, runs = [forward_rate(step, held, n_batches, n_images)], []
    for k in range(max(1, opts.repeats)):
        runs.append(extract_once(index, opts, workdir / f"extract-{precision}-{xla}-{k}.h5", precision, xla))
        fwd.append(forward_rate(step, held, n_batches, n_images))
    around = [(fwd[k] + fwd[k + 1]) / 2 for k in range(len(runs))]
    ratios = [r.steady_images_per_s / f for r, f in zip(runs, around)]
    whole = [r.images_per_s / f for r, f in zip(runs, around)]  # tracing, the first batch and the end included
    efficiency, spread = float(np.median(ratios)), float(max(ratios) - min(ratios))
    return model, {"precision": precision, "xla": runs[0].xla,
                   "end_to_end_images_per_s": float(np.median([r.steady_images_per_s for r in runs])),
                   "forward_images_per_s": float(np.median(fwd)), "forward_runs": fwd, "efficiency": efficiency,
                   "efficiency_runs": ratios, "spread": spread, "defect": efficiency > 1.0 or spread > 0.1,
                   "whole_run_images_per_s": float(np.median([r.images_per_s for r in runs])),
                   "whole_run_efficiency": float(np.median(whole)), "whole_run_efficiency_runs": whole,
                   "build_s": runs[0].build_seconds}


def bench_extraction(opts: BenchOptions, workdir: Path) -> dict:
    """Steady-state `extract` against its own pure forward pass (see the module's note), on `opts.images`
    HAM-sized JPEGs with a seeded random backbone (the same compute as ImageNet weights). Per precision: float32,
    plus float32 + XLA where `auto` picks it and bfloat16/float16 where native."""
    folder = write_bench_images(workdir / "bench-images", opts.images, opts.seed)
    index = build_index(folder)
    paths = [str(e.path) for e in index.entries]
    config = float32_config(opts)
    size, bs = config.input_size, opts.batch_size
    out = {"backbone": opts.backbone, "images": len(paths), "input_size": size, "batch_size": bs,
           "repeats": max(1, opts.repeats), "decode_images_per_s": drain_rate(paths, size, bs), "precisions": {}}
    batches = steady_batches(paths, size, bs)
    flops = None
    for precision, xla in bench_variants(opts.backbone):
        model, r = _variant(opts, workdir, index, config, batches, precision, xla)
        flops = flops or forward_flops(model)
        r.update(forward_gflop_per_s=r["forward_images_per_s"] * flops / 1e9,
                 matmul_gflop_per_s=matmul_flops_per_s(precision) / 1e9,
                 ceiling=decode_ceiling(r["forward_images_per_s"], out["decode_images_per_s"], has_gpu()))
        out["precisions"][precision + (" + XLA" if xla == "on" else "")] = r
    out["gflop_per_image"] = flops / 1e9
    f32 = out["precisions"]["float32"]
    for r in out["precisions"].values():
        r["speedup_vs_float32"] = r["end_to_end_images_per_s"] / f32["end_to_end_images_per_s"]
    out["images_per_s"] = max(r["end_to_end_images_per_s"] for r in out["precisions"].values())
    return out


def format_extraction(e: dict, cores: int, gpus: bool) -> list[str]:
    lines = [f"extraction, {e['backbone']} {e['input_size']} px, batch {e['batch_size']}, {e['images']} JPEGs "
             f"600x450 ({e['gflop_per_image']:.2f} GFLOP per image); decode only: "
             f"{e['decode_images_per_s']:.0f} images/s on {cores} cores"]
    for precision, p in e["precisions"].items():
        flag = (" [bench defect: an efficiency above 1.0 or a spread above 0.1 is the measurement's, not the "
                "pipeline's; rerun on a quieter machine or with more --images]") if p["defect"] else ""
        lines.append(
            f"  {precision}: extract {p['end_to_end_images_per_s']:.2f} images/s (steady state), pure forward "
            f"{p['forward_images_per_s']:.2f} images/s (extraction's own function, same batches), efficiency "
            f"{p['efficiency']:.2f} (median of {' / '.join(f'{x:.2f}' for x in p['efficiency_runs'])}, spread "
            f"{p['spread']:.2f}){flag}; decoding allows at most {p['ceiling']:.2f}"
            f"{'' if gpus else ' on shared cores'}; "
            f"forward {p['forward_gflop_per_s']:.0f} GFLOP/s vs matrix product {p['matmul_gflop_per_s']:.0f} "
            f"GFLOP/s; {p['speedup_vs_float32']:.2f}x float32 end to end; whole run incl. tracing "
            f"{p['whole_run_images_per_s']:.2f} images/s = {p['whole_run_efficiency']:.2f} of the pure forward "
            f"(each run: {' / '.join(f'{x:.2f}' for x in p['whole_run_efficiency_runs'])})")
    return lines
