"""Head commands, all off a cache: `train-head`, `evaluate`, `sweep`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..cache import default_memory_gb
from ..heads import HEAD_OPTIONS, HeadConfig, SplitSpec, check_duplicates
from ..runs import (
    GRID_KEYS,
    RunOptions,
    SweepOptions,
    evaluate_run,
    expand_grid,
    grid_from_options,
    run_sweep,
    train_head_run,
)
from ..stats import TARGET_SENSITIVITY, ClinicalOptions, check_decision, parse_subgroups
from .app import CLASS_MAP_HELP, CLASS_MAP_SYNTAX, app, class_map_arg, echo_lines, handle_errors, quiet_option
from .params import declared, with_declared
from .summaries import evaluate_lines, sweep_lines, train_head_lines

MEMORY_HELP = ("Memory for the cache's features, in GiB (2^30 bytes) as float32: larger ones are streamed from the "
               "cache in chunk order (slower, same results within training noise). Default: a quarter of this "
               f"machine's RAM ({default_memory_gb():g} GiB here).")

DUPLICATES_HELP = ("Near-duplicates across groups (perceptual hash within a few bits of a flip or turn, or feature "
                   "cosine above a threshold): group (join each pair into one group before splitting, so it never "
                   "crosses train/val/test), report (list them only) or ignore (no search). Recorded in config.json.")


@app.command("train-head")
@handle_errors
@with_declared
def train_head_command(
    cache: Path = typer.Argument(..., help="A cache written by `bottleneck extract`."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default: runs/<cache>-<time>)."),
    head: dict = declared(HEAD_OPTIONS),  # --hidden ... --seed: HeadConfig's fields (heads/model.py)
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction (the rest trains)."),
    split_from: Optional[Path] = typer.Option(None, help="Reuse the split of an earlier run directory."),
    augment: bool = typer.Option(False, help="Train on stored augmented views (needs extract --views)."),
    tta: bool = typer.Option(False, help="Average predictions over stored views (needs extract --views)."),
    class_map: Optional[str] = typer.Option(None, help=CLASS_MAP_HELP + " Default: the cache's classes, or the "
                                            "class map of the --split-from run."),
    positive: Optional[str] = typer.Option(None, help="The class whose sensitivity/specificity are reported and "
                                           "whose operating point is chosen. Default: mel/melanoma when present."),
    target_sensitivity: float = typer.Option(TARGET_SENSITIVITY, help="Sensitivity the operating point reaches "
                                             "on the validation split (its threshold is then reported on test)."),
    subgroups: Optional[str] = typer.Option(None, help="Metadata columns of the subgroup table, comma-separated, "
                                            "or none. Default: sex, age (banded), body site and dataset, where the "
                                            "cache has them."),
    calibrate: bool = typer.Option(True, help="Fit temperature scaling on validation (after undoing the "
                                   "class-weight prior) and fold it into the head."),
    decision: str = typer.Option("balanced", help="How probabilities become the predicted class: balanced (the "
                                 "equal-prior rule: the class the head ranks first as if every class were equally "
                                 "common, what balanced accuracy rewards) or most-probable (the class of highest "
                                 "calibrated probability). Recorded; evaluate, predict and export reuse it."),
    memory_gb: Optional[float] = typer.Option(None, help=MEMORY_HELP, show_default=False),
    duplicates: str = typer.Option("group", help=DUPLICATES_HELP),
    folds: int = typer.Option(0, help="Small-data mode: K grouped, stratified folds of the non-test images (all "
                              "images with --test 0), each predicted by a head trained, early-stopped, calibrated and "
                              "thresholded on the other folds; the pooled out-of-fold predictions are scored with "
                              "intervals, each fold beside them. head.keras is trained on every non-test image. 0: one "
                              "train/val/test split."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    quiet: bool = quiet_option(),
):
    """Train a classifier head off a cache in seconds; write metrics, plots and a report to a run directory.

    Example: bottleneck train-head cache/HAM10000-inception_v3-imagenet-299-avg.h5 --out runs/baseline
    (a few hundred images or fewer: add --folds 5 --test 0 for out-of-fold figures over all of them)
    """
    opts = RunOptions(out=out, split=SplitSpec.held_out(val, test, head["seed"]), split_from=split_from,
                      overwrite=overwrite, progress=not quiet, augment=augment, tta=tta, memory_gb=memory_gb,
                      class_map=class_map_arg(class_map),
                      clinical=ClinicalOptions(positive, target_sensitivity, parse_subgroups(subgroups), calibrate),
                      decision=check_decision(decision), duplicates=check_duplicates(duplicates), folds=folds)
    echo_lines(train_head_lines(train_head_run(cache, HeadConfig(**head), opts)))


@app.command("evaluate")
@handle_errors
def evaluate_command(
    run: Path = typer.Argument(..., help="A run directory made by train-head."),
    cache: Optional[Path] = typer.Option(None, help="Another cache of the same backbone configuration."),
    class_map: Optional[str] = typer.Option(None, help=f"How the cache's classes become the run's: {CLASS_MAP_SYNTAX}"
                                            ", each target a class of the run, each src a class of the cache ('*': "
                                            "every other class; classes named nowhere are left out and counted), or "
                                            "a .toml/.csv file. Default: the run's own class map, or classes of the "
                                            "same name."),
    tta: bool = typer.Option(False, help="Average predictions over the cache's stored views."),
    calibrate: bool = typer.Option(True, help="Use the run's calibration (its default); --no-calibrate for the "
                                   "head's own probabilities."),
    memory_gb: Optional[float] = typer.Option(None, help=MEMORY_HELP, show_default=False),
    out: Optional[Path] = typer.Option(None, help="Evaluation folder (default: RUN/eval-<test|cache name>, then "
                                       "-tta and -nocal for those options)."),
    overwrite: bool = typer.Option(False, help="Replace an existing evaluation folder (once the new one is whole)."),
    keep_overlap: bool = typer.Option(False, help="Evaluate external images found in the run's training or "
                                      "validation data (or near copies of them) instead of leaving them out; still "
                                      "counted, listed in overlap.csv."),
    quiet: bool = quiet_option(),  # evaluate prints no progress (it applies the head with numpy, in seconds)
):
    """Evaluate a run's head on its own test split, or on another (external) cache; an earlier evaluation is never
    replaced without --overwrite.

    Example: bottleneck evaluate runs/baseline --cache cache/ph2.h5 --class-map "mel=melanoma;nv=common_nevus"
    """
    echo_lines(evaluate_lines(evaluate_run(run, cache, tta=tta, memory_gb=memory_gb,
                                           class_map=class_map_arg(class_map), calibrate=calibrate, out=out,
                                           overwrite=overwrite, keep_overlap=keep_overlap)))


@app.command("sweep")
@handle_errors
@with_declared
def sweep_command(
    cache: Path = typer.Argument(..., help="A cache written by `bottleneck extract`."),
    grid: Optional[Path] = typer.Option(None, help=f"TOML grid file (keys: {', '.join(GRID_KEYS)})."),
    given: dict = declared(HEAD_OPTIONS, sweep=True),  # --hidden, --dropout, ...: the grid keys a sweep varies
    folds: int = typer.Option(0, help="K-fold grouped, stratified CV on train+val (0: score on the val split)."),
    metric: str = typer.Option("balanced_accuracy", help="Ranking metric: balanced_accuracy, accuracy, "
                               "roc_auc_macro, melanoma_sensitivity."),
    out: Optional[Path] = typer.Option(None, help="Sweep directory (default: runs/sweep-<cache>); rerun to resume."),
    split_from: Optional[Path] = typer.Option(None, help="Reuse the split of an earlier run directory."),
    split_seed: int = typer.Option(0, help="Seed of the sweep's split and folds."),
    val: float = typer.Option(0.15, help="Validation fraction."),
    test: float = typer.Option(0.15, help="Test fraction."),
    class_map: Optional[str] = typer.Option(None, help=CLASS_MAP_HELP + " Default: the cache's classes, or the "
                                            "class map of the --split-from run."),
    tta: bool = typer.Option(False, help="Score with predictions averaged over the cache's stored views."),
    memory_gb: Optional[float] = typer.Option(None, help=MEMORY_HELP, show_default=False),
    duplicates: str = typer.Option("group", help=DUPLICATES_HELP + " A resumed sweep keeps its recorded split."),
    quiet: bool = quiet_option(),
):
    """Train many heads off one cache load and rank them beside a linear baseline; retrain the best as train-head
    would (early-stopped, calibrated and given an operating point on val) and test it once.

    Example: bottleneck sweep cache/HAM10000-inception_v3-imagenet-299-avg.h5 --lr 1e-3,3e-4 --dropout 0.3,0.5
    --hidden 512,512 --hidden 1024 --folds 5
    """
    configs = expand_grid(grid_from_options(grid, given))
    opts = SweepOptions(out=out, folds=folds, metric=metric, split=SplitSpec.held_out(val, test, split_seed),
                        split_from=split_from, progress=not quiet, tta=tta, memory_gb=memory_gb,
                        class_map=class_map_arg(class_map), duplicates=check_duplicates(duplicates))
    echo_lines(sweep_lines(run_sweep(cache, configs, opts), len(configs), folds, metric))
