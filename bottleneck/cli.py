"""The `bottleneck` command line: each command parses options, calls one library function and turns a
`BottleneckError` into a one-line message with exit code 1 (usage errors exit 2, from typer)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import List, Optional

# Before TensorFlow is imported anywhere: keep its start-up chatter off the user's terminal.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import typer

from .errors import BottleneckError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Extract CNN bottlenecks once into an HDF5 cache, then train heads off it in seconds.")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def handle_errors(fn):
    """Map the library's errors to `error: ...` and exit 1; Ctrl-C to exit 130 without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BottleneckError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            typer.echo("interrupted; finished batches are kept in the cache", err=True)
            raise typer.Exit(130)

    return wrapper


@app.command()
@handle_errors
def extract(
    data: Path = typer.Argument(..., help="Image folder: class subfolders, or images plus --metadata CSV."),
    metadata: Optional[Path] = typer.Option(None, help="Metadata CSV (HAM10000, ISIC 2019/2020 or any CSV)."),
    id_column: Optional[str] = typer.Option(None, help="CSV column with image ids (file names or stems)."),
    label_column: Optional[str] = typer.Option(None, help="CSV column with class labels."),
    group_column: Optional[str] = typer.Option(None, help="CSV column with lesion/patient ids for grouped splits."),
    backbone: str = typer.Option("inception_v3", help="Backbone name; see `bottleneck backbones`."),
    weights: str = typer.Option("imagenet", help="imagenet | none (seeded random init) | PATH to a weights file."),
    image_size: Optional[int] = typer.Option(None, help="Input side in pixels (default: the backbone's own)."),
    pooling: str = typer.Option("avg", help="Global pooling: avg or max."),
    batch_size: int = typer.Option(32, help="Images per inference batch (also the commit unit)."),
    views: int = typer.Option(0, help="Extra views per image: 1-7 flips/rotations, then seeded crops+jitter."),
    seed: int = typer.Option(0, help="Seed of --weights none initialisation, recorded in the cache."),
    dtype: str = typer.Option("float16", help="Storage dtype of features: float16 or float32."),
    cache: Optional[Path] = typer.Option(None, help="Cache file (default: cache/<dataset>-<config>.h5)."),
    strict: bool = typer.Option(False, help="Stop at the first unreadable image instead of listing it."),
    shard: Optional[str] = typer.Option(None, help="I/N: extract only shard I of N (deterministic by image id)."),
    engine: str = typer.Option("local", help="local (this process)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Run every image once through a pretrained CNN and store its bottleneck vector in an HDF5 cache.

    Example: bottleneck extract data/HAM10000 --backbone inception_v3 --weights imagenet
    """
    from .dataset import build_index, select_shard
    from .extract import ExtractOptions, extract as run_extract

    if engine != "local":
        fail(f"--engine {engine!r} is not available; use --engine local (shard with --shard I/N for many machines)")
    index = build_index(data, metadata, id_column, label_column, group_column)
    if shard:
        index = select_shard(index, shard)
    opts = ExtractOptions(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                          batch_size=batch_size, seed=seed, dtype=dtype, strict=strict, cache=cache,
                          progress=not quiet, views=views)
    s = run_extract(index, opts)
    typer.echo(f"cache: {s.cache}")
    typer.echo(f"images: {s.total} indexed, {s.extracted} extracted, {s.already_cached} already cached, "
               f"{s.reused} reused (same bytes), {len(s.failed)} failed")
    if s.extracted:
        typer.echo(f"time: {s.seconds:.1f} s ({s.build_seconds:.1f} s building the backbone), "
                   f"{s.images_per_s:.1f} images/s")
    typer.echo(f"rows in cache: {s.rows}" + (f", {s.views} augmented views each" if s.views else ""))
    if s.views_added:
        typer.echo(f"views added to {s.views_added} cached images (their plain vectors kept) in {s.seconds:.1f} s")
    if s.rows_without_image:
        typer.echo(f"metadata rows with no image: {s.rows_without_image} "
                   f"(e.g. {', '.join(index.rows_without_image[:3])})")
    if s.images_without_row:
        typer.echo(f"images with no metadata row: {s.images_without_row} "
                   f"(e.g. {', '.join(index.images_without_row[:3])})")
    for path, reason in s.failed[:10]:
        typer.echo(f"  failed: {path}: {reason}")
    if len(s.failed) > 10:
        typer.echo(f"  ... and {len(s.failed) - 10} more (bottleneck info {s.cache})")


@app.command()
@handle_errors
def info(cache: Path = typer.Argument(..., help="A cache written by `bottleneck extract`.")):
    """Show a cache's configuration, row count, class counts and failed images.

    Example: bottleneck info cache/HAM10000-inception_v3-imagenet-299-avg.h5
    """
    from .cache import describe_cache

    d = describe_cache(cache)
    typer.echo(f"cache: {cache}")
    for key in ("backbone", "weights", "input_size", "pooling", "preprocessing", "dtype", "num_features"):
        typer.echo(f"  {key}: {d['config'][key]}")
    for key in ("dataset", "source", "root", "created", "updated", "schema_version"):
        if d["attrs"].get(key) not in (None, ""):
            typer.echo(f"  {key}: {d['attrs'][key]}")
    typer.echo(f"rows: {d['rows']} ({d['groups']} groups)" if d["groups"] else f"rows: {d['rows']}")
    if d["views"]:
        typer.echo(f"views: {d['views']} per image besides the plain one ({', '.join(d['view_names'])}); "
                   f"{d['rows_with_views']} rows complete")
    typer.echo("classes:")
    for name, count in d["class_counts"].items():
        typer.echo(f"  {name}: {count}")
    if d["unlabeled"]:
        typer.echo(f"  (unlabeled): {d['unlabeled']}")
    if d["pending_batches"]:
        typer.echo(f"pending: {d['pending_batches']} journaled batches from an interrupted run; "
                   "rerun extract to complete the cache")
    typer.echo(f"failed images: {len(d['failed'])}")
    for path, reason in d["failed"][:20]:
        typer.echo(f"  {path}: {reason}")
    if len(d["failed"]) > 20:
        typer.echo(f"  ... and {len(d['failed']) - 20} more")


@app.command("train-head")
@handle_errors
def train_head(
    cache: Path = typer.Argument(..., help="A cache written by `bottleneck extract`."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<cache>-<time>)."),
    hidden: str = typer.Option("512,512", help="Hidden layer sizes, comma-separated."),
    dropout: float = typer.Option(0.5, help="Dropout after each hidden layer."),
    optimizer: str = typer.Option("rmsprop", help="rmsprop, adam or sgd."),
    lr: float = typer.Option(1e-3, help="Initial learning rate."),
    decay_rate: float = typer.Option(0.94, help="Exponential learning-rate decay factor ..."),
    decay_steps: int = typer.Option(100, help="... applied every this many steps."),
    batch_size: int = typer.Option(128, help="Batch size."),
    epochs: int = typer.Option(60, help="Maximum epochs (early stopping on validation loss)."),
    patience: int = typer.Option(10, help="Epochs without validation-loss improvement before stopping."),
    class_weight: str = typer.Option("balanced", help="balanced or none."),
    standardize: bool = typer.Option(True, help="Standardise inputs with training-split mean/std (in the head)."),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation, dropout and shuffling."),
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction (the rest trains)."),
    split_from: Optional[Path] = typer.Option(None, help="Reuse the split of an earlier run directory."),
    augment: bool = typer.Option(False, help="Train on stored augmented views (needs extract --views)."),
    tta: bool = typer.Option(False, help="Average predictions over stored views (needs extract --views)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train a classifier head off a cache in seconds; write metrics, plots and a report to a run directory.

    Example: bottleneck train-head cache/HAM10000-inception_v3-imagenet-299-avg.h5 --out runs/baseline
    """
    from .heads import HeadConfig, parse_hidden
    from .metrics import format_table
    from .runs import RunOptions, train_head_run
    from .splits import SplitSpec

    head = HeadConfig(hidden=parse_hidden(hidden), dropout=dropout, optimizer=optimizer, lr=lr,
                      decay_rate=decay_rate, decay_steps=decay_steps, batch_size=batch_size, epochs=epochs,
                      patience=patience, class_weight=class_weight, standardize=standardize, seed=seed)
    opts = RunOptions(out=out, split=SplitSpec(round(1 - val - test, 10), val, test, seed), split_from=split_from,
                      overwrite=overwrite, progress=not quiet, augment=augment, tta=tta)
    # The full command with every option spelled out, so config.json reruns it even if defaults change.
    command = ["bottleneck", "train-head", str(cache), "--out", "<out>" if out is None else str(out),
               "--hidden", ",".join(map(str, head.hidden)) or "0", "--dropout", str(dropout), "--optimizer", optimizer,
               "--lr", str(lr), "--decay-rate", str(decay_rate), "--decay-steps", str(decay_steps),
               "--batch-size", str(batch_size), "--epochs", str(epochs), "--patience", str(patience),
               "--class-weight", class_weight, "--standardize" if standardize else "--no-standardize",
               "--seed", str(seed), "--val", str(val), "--test", str(test)]
    if split_from:
        command += ["--split-from", str(split_from)]
    command += ["--augment"] * augment + ["--tta"] * tta
    r = train_head_run(cache, head, opts, command=command)
    sizes = ", ".join(f"{s} {r.split_sizes[s]['images']}" for s in ("train", "val", "test"))
    typer.echo(f"split: {sizes}; best epoch {r.best_epoch}, {r.seconds:.1f} s of training")
    typer.echo(format_table({s: r.metrics[s] for s in ("val", "test")}))
    for name, m in r.metrics.get("views_comparison", {}).items():
        t = m["test"]
        typer.echo(f"  {name}: test balanced acc {t['balanced_accuracy']:.3f}, accuracy {t['accuracy']:.3f}")
    typer.echo(f"run: {r.run_dir}  (report: {r.run_dir / 'report.md'})")


@app.command()
@handle_errors
def evaluate(
    run: Path = typer.Argument(..., help="A run directory made by train-head."),
    cache: Optional[Path] = typer.Option(None, help="Another cache of the same backbone configuration."),
    tta: bool = typer.Option(False, help="Average predictions over the cache's stored views."),
):
    """Evaluate a run's head on its own test split, or on another (external) cache.

    Example: bottleneck evaluate runs/baseline --cache cache/isic2019-inception_v3-imagenet-299-avg.h5
    """
    from .evaluate import evaluate_run
    from .metrics import format_table

    r = evaluate_run(run, cache, tta=tta)
    for note in r.notes:
        typer.echo(f"note: {note}")
    if r.unmapped:
        typer.echo("classes of the cache the run does not know (left out): "
                   + ", ".join(f"{k} ({v} images)" for k, v in r.unmapped.items()))
    typer.echo(format_table({"external" if r.external else "test": r.metrics}))
    typer.echo(f"written: {r.out_dir}")


@app.command()
@handle_errors
def sweep(
    cache: Path = typer.Argument(..., help="A cache written by `bottleneck extract`."),
    grid: Optional[Path] = typer.Option(None, help="TOML grid file (keys: " + ", ".join(
        ["hidden", "dropout", "optimizer", "lr", "decay_rate", "decay_steps", "batch_size", "class_weight",
         "seed", "epochs", "patience", "standardize"]) + ")."),
    hidden: Optional[List[str]] = typer.Option(None, help="Hidden sizes of one architecture; repeat for more."),
    dropout: Optional[str] = typer.Option(None, help="Comma-separated values, e.g. 0.3,0.5."),
    optimizer: Optional[str] = typer.Option(None, help="Comma-separated: rmsprop,adam,sgd."),
    lr: Optional[str] = typer.Option(None, help="Comma-separated initial learning rates."),
    decay_rate: Optional[str] = typer.Option(None, help="Comma-separated decay rates."),
    decay_steps: Optional[str] = typer.Option(None, help="Comma-separated decay steps."),
    batch_size: Optional[str] = typer.Option(None, help="Comma-separated batch sizes."),
    class_weight: Optional[str] = typer.Option(None, help="Comma-separated: balanced,none."),
    seed: Optional[str] = typer.Option(None, help="Comma-separated head seeds (init, dropout, shuffling)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs of every configuration."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience of every configuration."),
    folds: int = typer.Option(0, help="K-fold grouped, stratified CV on train+val (0: score on the val split)."),
    metric: str = typer.Option("balanced_accuracy", help="Ranking metric: balanced_accuracy, accuracy, "
                               "roc_auc_macro, melanoma_sensitivity."),
    out: Optional[Path] = typer.Option(None, help="Sweep directory (default: runs/sweep-<cache>); rerun to resume."),
    split_from: Optional[Path] = typer.Option(None, help="Reuse the split of an earlier run directory."),
    split_seed: int = typer.Option(0, help="Seed of the sweep's split and folds."),
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction."),
    tta: bool = typer.Option(False, help="Score with predictions averaged over the cache's stored views."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    """Train many heads off one cache load and rank them; retrain the best on train+val, test it once.

    Example: bottleneck sweep cache/HAM10000-inception_v3-imagenet-299-avg.h5 --lr 1e-3,3e-4 --dropout 0.3,0.5
    --hidden 512,512 --hidden 1024 --folds 5
    """
    from .splits import SplitSpec
    from .sweep import SweepOptions, expand_grid, format_leaderboard, load_grid_toml, parse_values, run_sweep
    from .sweep import split_list

    values = load_grid_toml(grid) if grid else {}
    listed = {"dropout": dropout, "optimizer": optimizer, "lr": lr, "decay_rate": decay_rate,
              "decay_steps": decay_steps, "batch_size": batch_size, "class_weight": class_weight, "seed": seed}
    for key, text in listed.items():
        if text is not None:
            values[key] = parse_values(key, split_list(text))
    if hidden:
        values["hidden"] = parse_values("hidden", hidden)
    for key, single in (("epochs", epochs), ("patience", patience)):
        if single is not None:
            values[key] = parse_values(key, [single])
    configs = expand_grid(values)
    opts = SweepOptions(out=out or Path("runs") / f"sweep-{cache.stem}", folds=folds, metric=metric,
                        split=SplitSpec(round(1 - val - test, 10), val, test, split_seed), split_from=split_from,
                        progress=not quiet, tta=tta)
    r = run_sweep(cache, configs, opts)
    typer.echo(f"{len(configs)} configurations: {r.computed} trained, {r.skipped} already done "
               f"({'%d-fold CV on train+val' % folds if folds else 'scored on the val split'})")
    typer.echo(format_leaderboard(r.leaderboard, metric, top=20))
    typer.echo(f"leaderboard: {r.out / 'leaderboard.csv'}")
    if r.best_dir:
        from .metrics import format_table

        typer.echo(f"\nbest ({r.leaderboard[0]['id']}) retrained on train+val, evaluated once on test:")
        typer.echo(format_table({"test": r.best_metrics["test"]}))
        typer.echo(f"best run: {r.best_dir}  (report: {r.best_dir / 'report.md'})")


@app.command()
@handle_errors
def bench(
    rows: int = typer.Option(10_000, help="Rows of the synthetic cache."),
    dim: int = typer.Option(2048, help="Feature width (2048: InceptionV3/ResNet)."),
    epochs: int = typer.Option(5, help="Epochs timed for the per-epoch figure."),
    backbone: str = typer.Option("inception_v3", help="Backbone of the extraction figure."),
    image_size: Optional[int] = typer.Option(None, help="Its input size (default: the backbone's)."),
    images: int = typer.Option(64, help="Images extracted to measure images/s."),
    part: List[str] = typer.Option(["head", "run", "extract", "sweep", "views"],
                                   help="Which parts: head, run, extract, sweep, views (repeat the option)."),
):
    """Measure head speed against one backbone pass; prints figures (see docs/benchmarks.md).

    Example: bottleneck bench --rows 10000 --backbone inception_v3
    """
    from .bench import BenchOptions, format_results, run_bench

    unknown = set(part) - {"head", "run", "extract", "sweep", "views"}
    if unknown:
        fail(f"--part should be head, run, extract, sweep or views; received {', '.join(sorted(unknown))}")
    opts = BenchOptions(rows=rows, dim=dim, epochs=epochs, backbone=backbone, image_size=image_size, images=images)
    typer.echo(format_results(run_bench(opts, tuple(part)), opts))


@app.command()
@handle_errors
def merge(
    shards: List[Path] = typer.Argument(..., help="Caches of one configuration, e.g. from extract --shard I/N."),
    out: Path = typer.Option(..., help="The merged cache (created, or completed if it exists)."),
    virtual: bool = typer.Option(False, help="HDF5 virtual datasets instead of a copy (not available yet)."),
):
    """Merge shard caches (same backbone configuration) into one cache; rows are keyed by image id.

    Example: bottleneck merge cache/ham-shard0of4.h5 cache/ham-shard1of4.h5 ... --out cache/ham.h5
    """
    from .cache_write import merge_caches

    if virtual:
        fail("--virtual is not available in this version; drop it to merge by copying (rows are keyed by id)")
    rows = merge_caches(shards, out)
    typer.echo(f"merged {len(shards)} caches into {out}: {rows} rows")


@app.command()
def backbones():
    """List the registered backbones with their input size and feature width."""
    from .backbones import REGISTRY

    for spec in REGISTRY.values():
        typer.echo(f"{spec.name:16s} {spec.input_size:4d}px  {spec.num_features:5d}-d  {spec.preprocessing}")


@app.command()
@handle_errors
def demo(
    out: Path = typer.Option(Path("demo_data"), help="Where to write the synthetic images."),
    images_per_class: int = typer.Option(40, help="Images per minority class (nv gets twice as many)."),
    backbone: str = typer.Option("resnet50", help="Backbone for the demo."),
    weights: str = typer.Option("none", help="none works offline; imagenet if this machine is online."),
    image_size: int = typer.Option(96, help="Input side in pixels (small: the demo runs in seconds on CPU)."),
    run: Path = typer.Option(Path("runs/demo"), help="Run directory of the demo head (replaced each time)."),
    seed: int = typer.Option(0),
):
    """Generate a small HAM10000-style dermoscopy-like dataset, extract it, train a head, point to the report.

    Offline by default (--weights none: a seeded random backbone, whose features still separate the
    synthetic classes); with ImageNet weights the same commands run on real data.
    """
    from .demo import make_demo_dataset

    ds = make_demo_dataset(out, images_per_class=images_per_class, seed=seed)
    typer.echo(f"demo data: {ds.n_images} JPEG images of {ds.n_lesions} lesions in {ds.root} "
               f"({', '.join(f'{k}: {v}' for k, v in ds.class_counts.items())})")
    cache = Path("cache") / f"demo-{backbone}-{weights}-{image_size}.h5"
    typer.echo(f"\n$ bottleneck extract {out} --backbone {backbone} --weights {weights} --image-size {image_size} "
               f"--cache {cache}")
    extract(ds.root, metadata=ds.metadata, id_column=None, label_column=None, group_column=None,
            backbone=backbone, weights=weights, image_size=image_size, pooling="avg", batch_size=32, views=0,
            seed=seed, dtype="float16", cache=cache, strict=False, shard=None, engine="local", quiet=False)
    typer.echo(f"\n$ bottleneck info {cache}")
    info(cache)
    typer.echo(f"\n$ bottleneck train-head {cache} --out {run} --overwrite")
    train_head(cache, out=run, hidden="512,512", dropout=0.5, optimizer="rmsprop", lr=1e-3, decay_rate=0.94,
               decay_steps=100, batch_size=128, epochs=60, patience=10, class_weight="balanced", standardize=True,
               seed=seed,
               val=0.15, test=0.15, split_from=None, augment=False, tta=False, overwrite=True, quiet=False)


def main():  # pragma: no cover
    app()


# fine-tune, predict and export live in cli_model.py; registered here so `app` has every command.
from .cli_model import register  # noqa: E402

register(app)
