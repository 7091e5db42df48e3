"""The comparison command: `compare`, runs scored on the same images compared as pairs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..runs import compare_runs
from ..stats import PAIRED_RESAMPLES
from .app import CLASS_MAP_SYNTAX, app, class_map_arg, echo_lines, handle_errors, quiet_option
from .heads import MEMORY_HELP
from .summaries import compare_lines


@app.command("compare")
@handle_errors
def compare_command(
    runs: List[Path] = typer.Argument(..., help="Two or more runs (train-head, sweep OUT/best, train-head --folds, "
                                      "fine-tune) or evaluation folders (RUN/eval-*) scored on the same images."),
    cache: Optional[Path] = typer.Option(None, help="Evaluate each head run on this external cache (into the "
                                         "comparison's folder) and compare them there."),
    class_map: Optional[str] = typer.Option(None, help=f"With --cache: how its classes become the runs': "
                                            f"{CLASS_MAP_SYNTAX}, or a .toml/.csv file (as evaluate takes it)."),
    positive: Optional[str] = typer.Option(None, help="The class of the AUC and the sensitivity/specificity. "
                                           "Default: the class of the runs' operating points, else mel/melanoma."),
    resamples: int = typer.Option(PAIRED_RESAMPLES, help="Lesion resamples of the paired bootstrap."),
    seed: int = typer.Option(0, help="Seed of the resamples."),
    intersect: bool = typer.Option(False, help="Runs scored on different images: compare them on the images every "
                                   "run scored (said in the report) instead of refusing."),
    memory_gb: Optional[float] = typer.Option(None, help=MEMORY_HELP + " With --cache.", show_default=False),
    out: Optional[Path] = typer.Option(None, help="Comparison folder (default: compare-<A>-<B>... beside the first "
                                       "run)."),
    overwrite: bool = typer.Option(False, help="Replace an existing comparison folder (once the new one is whole)."),
    quiet: bool = quiet_option(),  # compare prints no progress (its evaluations run with numpy, in seconds)
):
    """Compare runs on the same images: paired lesion-bootstrap differences in balanced accuracy, AUC, sensitivity
    and specificity with 95% intervals, DeLong's test for the AUCs and Holm's correction; overlaid ROC curves.

    Example: bottleneck compare runs/baseline runs/sweep/best --out runs/baseline-vs-best
    """
    echo_lines(compare_lines(compare_runs(runs, cache, class_map=class_map_arg(class_map), out=out,
                                          intersect=intersect, overwrite=overwrite, positive=positive,
                                          resamples=resamples, seed=seed, memory_gb=memory_gb)))
