"""Tool commands: `bench`, `demo`, `backbones`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..backbones import REGISTRY
from ..bench import PARTS, QUICK_PARTS, BenchOptions, choose_parts, format_results, parse_sizes, run_bench
from .app import app, handle_errors, quiet_option
from .demo import run_demo


@app.command("bench")
@handle_errors
def bench_command(
    rows: int = typer.Option(10_000, help="Rows of the synthetic cache."),
    dim: int = typer.Option(2048, help="Feature width (2048: InceptionV3/ResNet)."),
    epochs: int = typer.Option(5, help="Epochs timed for the per-epoch figure."),
    backbone: str = typer.Option("inception_v3", help="Backbone of the extraction figure."),
    image_size: Optional[int] = typer.Option(None, help="Its input size (default: the backbone's)."),
    images: int = typer.Option(256, help="HAM-sized JPEGs extracted for the extraction figures (at least 2 batches)."),
    batch_size: int = typer.Option(32, help="Extraction batch size."),
    part: List[str] = typer.Option([], help=f"Which parts: {', '.join(PARTS)} (repeat the option). Default: the "
                                   f"quick set ({', '.join(QUICK_PARTS)}), a few minutes on a 2-core laptop.",
                                   show_default=False),
    all_parts: bool = typer.Option(False, "--all", help="Every part: the quick set and "
                                   f"{', '.join(p for p in PARTS if p not in QUICK_PARTS)} (grow fills a "
                                   "1,000,000-row cache, about 4 GiB of disk; ray needs the [ray] extra)."),
    grow_rows: str = typer.Option("100000,1000000", help="Cache sizes the grow part adds 1% to (about 4 KiB of "
                                                         "disk per row at --dim 2048)."),
    coverage_sims: int = typer.Option(1000, help="Simulated test splits per row of the coverage part."),
    quiet: bool = quiet_option(),
):
    """Measure head speed against one backbone pass; prints figures (see docs/benchmarks.md). With no --part, a
    quick set of parts (and the names of those it skipped); --all runs every part.

    Example: bottleneck bench --rows 10000 --backbone inception_v3
    """
    chosen, skipped = choose_parts(tuple(part), all_parts)
    opts = BenchOptions(rows=rows, dim=dim, epochs=epochs, backbone=backbone, image_size=image_size, images=images,
                        batch_size=batch_size, grow_rows=parse_sizes(grow_rows), coverage_sims=coverage_sims)
    typer.echo(format_results(run_bench(opts, chosen, progress=not quiet), opts))
    if skipped:
        typer.echo(f"skipped: {', '.join(skipped)} (bottleneck bench --all runs every part, --part NAME one)")


@app.command("backbones")
@handle_errors
def backbones_command():
    """List the registered backbones with their input size and feature width."""
    for spec in REGISTRY.values():
        typer.echo(f"{spec.name:16s} {spec.input_size:4d}px  {spec.num_features:5d}-d  {spec.preprocessing}")


@app.command("demo")
@handle_errors
def demo_command(
    out: Path = typer.Option(Path("demo_data"), help="Where to write the synthetic images."),
    images_per_class: int = typer.Option(40, help="Images per minority class (nv gets twice as many)."),
    backbone: str = typer.Option("resnet50", help="Backbone for the demo."),
    weights: str = typer.Option("none", help="none works offline; imagenet if this machine is online."),
    image_size: int = typer.Option(96, help="Input side in pixels (small: the demo runs in seconds on CPU)."),
    run: Path = typer.Option(Path("runs/demo"), help="Run directory of the demo head (replaced each time)."),
    seed: int = typer.Option(0),
    quiet: bool = quiet_option(),
):
    """Generate a small HAM10000-style dermoscopy-like dataset, extract it, train a head, point to the report.

    Offline by default (--weights none: a seeded random backbone, whose features still separate the
    synthetic classes); with ImageNet weights the same commands run on real data.
    """
    run_demo(out, images_per_class=images_per_class, backbone=backbone, weights=weights, image_size=image_size,
             run=run, seed=seed, echo=typer.echo, progress=not quiet)
