"""What `bottleneck bench` prints: the machine a figure depends on, and one line per part measured."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from ..backbones import BF16_FLAGS, cpu_flags, fastest_native
from ..cache import library_versions
from ..util import tensorflow
from .coverage import format_coverage
from .data import BenchOptions
from .decoders import format_decoders
from .duplicates import format_duplicates
from .extraction import format_extraction
from .fixed import format_fixed
from .pipeline_ceiling import format_ceiling
from .write_rate import format_writer


def machine_info() -> dict:
    """What a figure depends on: CPU model and the flags that decide the fast paths, cores, GPUs, libraries."""
    tf = tensorflow()

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        model = platform.processor()
    flags = cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", *BF16_FLAGS, "amx_tile") if f in flags]
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": model or platform.machine(), "flags": shown, "cores": os.cpu_count(), "gpus": gpus,
            "fastest_native_precision": fastest_native(), "versions": library_versions()}


def format_results(r: dict, opts: BenchOptions) -> str:
    m = r["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m['flags']) or '(none of note)'}, "
             f"{len(m['gpus'])} GPU, fastest native precision {m['fastest_native_precision']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if k != "bottleneck")]
    if "head" in r:
        h = r["head"]
        lines.append(f"head epoch ({h['rows']} x {h['dim']}, batch 128, default head): {h['epoch_s']:.3f} s "
                     f"(first epoch, with tracing: {h['first_epoch_s']:.3f} s)")
    if "run" in r:
        lines.append(f"whole default train-head run ({opts.rows} x {opts.dim} cache): {r['run']['seconds']:.1f} s "
                     f"({r['run']['epochs_run']} epochs, {r['run']['train_seconds']:.1f} s of fitting)")
    for part, format_part in (("writer", format_writer), ("ceiling", format_ceiling), ("decode", format_decoders)):
        if part in r:
            lines += format_part(r[part])
    if "extract" in r:
        lines += format_extraction(r["extract"], m["cores"], bool(m["gpus"]))
        lines.append(f"  -> one pass over {opts.rows} images: {r['backbone_pass_s']:.0f} s")
    if "epoch_vs_pass" in r:
        lines.append(f"one head epoch = {100 * r['epoch_vs_pass']:.3f}% of one backbone pass")
    if "run_vs_pass" in r:
        lines.append(f"whole train-head run = {100 * r['run_vs_pass']:.2f}% of one backbone pass")
    if "batch1" in r:
        b = r["batch1"]
        lines.append(f"one image at a time (batch 1, {b['images']} images): {b['batch1_images_per_s']:.2f} images/s "
                     f"vs extract {b['extract_images_per_s']:.2f} images/s = {b['speedup']:.1f}x")
    if "load" in r:
        c = r["load"]
        lines.append(f"loading {c['rows']} x {c['dim']} features: cache {c['cache_s']:.2f} s "
                     f"({c['cache_mib']:.0f} MiB) vs one text file per image {c['text_s']:.1f} s "
                     f"({c['text_mib']:.0f} MiB) = {c['speedup']:.0f}x")
    if "rerun" in r:
        u = r["rerun"]
        lines.append(f"rerun of a {u['images']}-image extraction ({u['full_s']:.1f} s): nothing new "
                     f"{u['nothing_new_s']:.1f} s = {100 * u['nothing_new_fraction']:.1f}%; {u['added']} new images "
                     f"(1%) {u['one_percent_s']:.1f} s = {100 * u['one_percent_fraction']:.1f}%")
    if "memory" in r:
        (n1, n8), (r1, r8) = r["memory"]["images"], r["memory"]["peak_rss_mib"]
        lines.append(f"peak RSS of extract (mobilenet_v2 96 px): {r1:.0f} MiB at {n1} images, {r8:.0f} MiB at {n8} "
                     f"images ({r['memory']['growth']:.2f}x)")
    if "sweep" in r:
        w = r["sweep"]
        lines.append(f"sweep of {w['configs']} configurations ({w['epochs']} epochs each): {w['sweep_s']:.1f} s; "
                     f"16 x one in-process head: {w['in_process_x16_s']:.1f} s; 16 separate train-head commands: "
                     f"{w['commands_x16_s']:.1f} s (mean of {w['commands_timed']} timed, x16)")
    if "views" in r:
        v = r["views"]
        lines.append(f"extracting {v['views']} views besides the plain one ({v['images']} images, {opts.backbone}): "
                     f"{v['views_s']:.1f} s vs {v['plain_s']:.1f} s plain = {v['cost_ratio']:.1f}x; disk "
                     f"{v['bytes_per_view_per_image'] / 1024:.1f} KiB per view per image "
                     f"({v['bytes_per_view_per_image'] * opts.rows / 2**20:.0f} MiB per view for {opts.rows} images)")
    for g in r.get("grow", {}).get("sizes", []):
        lines.append(
            f"adding 1% ({g['added']} rows x {opts.dim}) to a {g['rows']}-row cache ({g['cache_mib']:.0f} MiB): "
            f"{g['append_s']:.2f} s vs {g['alone_s']:.2f} s into an empty cache = {g['ratio']:.2f}x (finding which "
            f"are cached already: {g['append_read_rows_s']:.3f} s); commit of {g['batch']} rows into the "
            f"growing cache: first {g['first_commit_s']:.2f} s, last {g['last_commit_s']:.2f} s; copying the "
            f"file, as every commit did before: {g['copy_s']:.2f} s")
    if "ray" in r:
        lines.append(_ray_line(r["ray"], opts))
    for part, format_part in (("coverage", format_coverage), ("duplicates", format_duplicates),
                              ("fixed", format_fixed)):
        if part in r:
            lines += format_part(r[part])
    return "\n".join(lines)


def _ray_line(y: dict, opts: BenchOptions) -> str:
    if "skipped" in y:
        return f"ray engine: skipped ({y['skipped']})"
    return (f"ray engine vs local, {y['images']} JPEGs ({opts.backbone}): after start-up "
            f"{y['ray_images_per_s']:.2f} vs {y['local_images_per_s']:.2f} images/s = {y['ratio']:.2f}x "
            "(Ray's includes its backbone actor's start); "
            f"whole backbone stage {y['ray_whole_s']:.1f} s vs {y['local_whole_s']:.1f} s, of which "
            f"starting Ray {y['ray_start_s']:.1f} s vs building the backbone {y['local_build_s']:.1f} s")
