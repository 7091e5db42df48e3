"""`bottleneck demo`: the synthetic dataset made (`synthetic/demo_data.py`), then extract, info and train-head run
on it and echoed as a user typing them would see them."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..cache import describe_cache
from ..extract import ExtractOptions, extract
from ..heads import HeadConfig, SplitSpec
from ..images import build_index
from ..runs import RunOptions, train_head_run
from ..synthetic import make_demo_dataset
from .summaries import extract_lines, info_lines, train_head_lines


def run_demo(out: Path = Path("demo_data"), *, images_per_class: int = 40, backbone: str = "resnet50",
             weights: str = "none", image_size: int = 96, run: Path = Path("runs/demo"), seed: int = 0,
             echo: Callable[[str], None] = print, progress: bool = True) -> Path:
    """`bottleneck demo`: make the synthetic dataset, then extract, info and train-head on it, echoing each
    command and what it prints, as a user typing them would see. Returns the run directory."""
    ds = make_demo_dataset(out, images_per_class=images_per_class, seed=seed)
    echo(f"demo data: {ds.n_images} JPEG images of {ds.n_lesions} lesions in {ds.root} "
         f"({', '.join(f'{k}: {v}' for k, v in ds.class_counts.items())})")
    cache = Path("cache") / f"demo-{backbone}-{weights}-{image_size}.h5"
    echo(f"\n$ bottleneck extract {out} --backbone {backbone} --weights {weights} --image-size {image_size} "
         f"--cache {cache}")
    index = build_index(ds.root, ds.metadata)
    summary = extract(index, ExtractOptions(backbone=backbone, weights=weights, image_size=image_size, seed=seed,
                                            cache=cache, progress=progress))
    for line in extract_lines(summary, index):
        echo(line)
    echo(f"\n$ bottleneck info {cache}")
    for line in info_lines(cache, describe_cache(cache)):
        echo(line)
    echo(f"\n$ bottleneck train-head {cache} --out {run} --overwrite")
    result = train_head_run(cache, HeadConfig(seed=seed),
                            RunOptions(out=run, split=SplitSpec.held_out(0.15, 0.15, seed), overwrite=True,
                                       progress=progress))
    for line in train_head_lines(result):
        echo(line)
    return result.run_dir
