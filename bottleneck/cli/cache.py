"""Cache commands: `extract`, `info`, `merge`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..cache import describe_cache, merge_caches
from ..extract import ExtractOptions, check_engine, extract
from ..images import build_index, select_shard
from .app import app, echo_lines, handle_errors, quiet_option
from .summaries import extract_lines, info_lines, merge_lines


@app.command("extract")
@handle_errors
def extract_command(
    data: Path = typer.Argument(..., help="Image folder: class subfolders, or images plus --metadata CSV."),
    metadata: Optional[List[Path]] = typer.Option(None, metavar="CSV", help="Metadata CSV (HAM10000, ISIC "
                                                  "2019/2020 or any CSV); repeat it (or separate with commas) for "
                                                  "CSVs joined on the image id, e.g. ISIC 2019's GroundTruth and "
                                                  "Metadata files."),
    id_column: Optional[str] = typer.Option(None, help="CSV column with image ids (file names or stems; default: "
                                            "the layout's, else image_id, image, isic_id, image_name or filename)."),
    label_column: Optional[str] = typer.Option(None, help="CSV column with class labels."),
    group_column: Optional[str] = typer.Option(None, help="CSV column with lesion/patient ids for grouped splits."),
    meta_columns: str = typer.Option("all", help="CSV columns stored per row as metadata (for subgroup reports): "
                                     "all (every column but the id, label and group ones and those that "
                                     "determine the label, which are named), none, or names like "
                                     "age,sex,localization."),
    follow_symlinks: bool = typer.Option(False, help="Follow symlinks that lead outside the image folder too (by "
                                         "default only links into it are followed; loops are cut either way)."),
    backbone: str = typer.Option("inception_v3", help="Backbone name; see `bottleneck backbones`."),
    weights: str = typer.Option("imagenet", help="imagenet | none (seeded random init) | PATH to a weights file."),
    image_size: Optional[int] = typer.Option(None, help="Input side in pixels (default: the backbone's own)."),
    pooling: str = typer.Option("avg", help="Global pooling: avg or max."),
    batch_size: int = typer.Option(32, help="Images per inference batch (also the commit unit)."),
    views: int = typer.Option(0, help="Extra views per image: 1-7 flips/rotations, then seeded crops+jitter."),
    seed: int = typer.Option(0, help="Seed of --weights none initialisation, recorded in the cache."),
    precision: str = typer.Option("auto", help="Compute precision: auto (the cache's, else the fastest native: "
                                  "bfloat16 on CPUs with AVX512-BF16/AMX, float16 on GPUs, float32), float32, "
                                  "bfloat16 or float16."),
    xla: str = typer.Option("auto", help="Compile the forward pass with XLA: auto (the cache's, else on for "
                            "float32 on backbones it speeds up), on or off."),
    dtype: str = typer.Option("float16", help="Storage dtype of features: float16 or float32."),
    cache: Optional[Path] = typer.Option(None, help="Cache file. Default: cache/<dataset>-<8hex>-<config>.h5, "
                                         "<dataset> the folder's name (its parent's for a folder called images, "
                                         "train, data...), <8hex> a hash of the folder's path."),
    append: bool = typer.Option(False, help="Add this image root (or CSV) to a cache extracted from another one, on "
                                "purpose (recorded in the cache); without it such a cache is refused."),
    strict: bool = typer.Option(False, help="Stop at the first unreadable image instead of listing it."),
    shard: Optional[str] = typer.Option(None, help="I/N: extract only shard I of N (deterministic by image id)."),
    engine: str = typer.Option("local", help="local (this process) or ray (decode in Ray tasks, the backbone in "
                               "Ray actors, one writer here; needs pip install -e \".[ray]\"). See docs/scale.md."),
    address: Optional[str] = typer.Option(None, help="--engine ray: Ray cluster to join (HOST:PORT, "
                                          "ray://HOST:10001, or auto: the one `ray start --head` started on this "
                                          "machine); checked first, refused in about 12 s when no Ray answers. "
                                          "Default: start a local Ray instance."),
    workers: Optional[int] = typer.Option(None, help="--engine ray: backbone actors (default: one per GPU, else 1)."),
    devices: str = typer.Option("all", help="Where the backbone runs: all (every GPU, else the CPU), cpu, GPU "
                                "indices like 0,1, or device names; several GPUs run one replica each "
                                "(MirroredStrategy), same features."),
    quiet: bool = quiet_option(),
):
    """Run every image once through a pretrained CNN and store its bottleneck vector in an HDF5 cache.

    Example: bottleneck extract data/HAM10000 --backbone inception_v3 --weights imagenet
    """
    check_engine(engine, views, workers, address)
    index = build_index(data, metadata, id_column, label_column, group_column, follow_symlinks, meta_columns)
    if shard:
        index = select_shard(index, shard)
    opts = ExtractOptions(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                          batch_size=batch_size, seed=seed, dtype=dtype, strict=strict, cache=cache,
                          progress=not quiet, views=views, precision=precision, xla=xla,
                          engine=engine, address=address, workers=workers, devices=devices, append=append)
    echo_lines(extract_lines(extract(index, opts), index))


@app.command("info")
@handle_errors
def info_command(cache: Path = typer.Argument(..., help="A cache written by `bottleneck extract`.")):
    """Show a cache's configuration, row count, class counts and failed images.

    Example: bottleneck info cache/HAM10000-inception_v3-imagenet-299-avg.h5
    """
    echo_lines(info_lines(cache, describe_cache(cache)))


@app.command("merge")
@handle_errors
def merge_command(
    shards: List[Path] = typer.Argument(..., help="Caches of one configuration, e.g. from extract --shard I/N."),
    out: Path = typer.Option(..., help="The merged cache (created, or completed if it exists; with --virtual, "
                             "created, or rebuilt if it is a virtual merge)."),
    virtual: bool = typer.Option(False, help="Write --out as HDF5 virtual datasets over the shard files (no copy; "
                                 "keep the shards beside it)."),
    allow_partial: bool = typer.Option(False, help="Merge even if shards of the index are missing (and say which)."),
    quiet: bool = quiet_option(),  # merge prints no progress; taken as every command that works a while takes it
):
    """Merge shard caches (same backbone configuration) into one cache; rows are keyed by image id.

    Refuses, before writing anything, the same shard twice, shards of another index or split, and missing shards.

    Example: bottleneck merge cache/ham-0.h5 cache/ham-1.h5 cache/ham-2.h5 cache/ham-3.h5 --out cache/ham.h5
    """
    echo_lines(merge_lines(merge_caches(shards, out, virtual=virtual, allow_partial=allow_partial)))
