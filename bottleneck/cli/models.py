"""Model commands, from a run to a model and its use: `fine-tune`, `predict`, `export`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..models import FINETUNE_OPTIONS, PRECISION_HELP, FineTuneOptions, export, fine_tune, predict
from .app import CLASS_MAP_SYNTAX, app, class_map_arg, echo_lines, handle_errors, quiet_option
from .params import declared, with_declared
from .summaries import export_lines, fine_tune_lines, predict_lines


@app.command("fine-tune")
@handle_errors(interrupted="interrupted; finished epochs are kept: rerun the same command with "
                          + FINETUNE_OPTIONS["resume"].flag)
@with_declared
def fine_tune_command(
    run: Path = typer.Argument(..., help="A run directory made by train-head (its head and split are used)."),
    opts: dict = declared(FINETUNE_OPTIONS),  # --data ... --precision: FineTuneOptions's fields (finetune.py)
    class_map: Optional[str] = typer.Option(None, help=f"Class map from the cache's classes to the head's: "
                                            f"{CLASS_MAP_SYNTAX} ('*': every other class), or a .toml/.csv file; "
                                            "default: the run's own. Its targets must be the head's classes."),
    overwrite: bool = declared(FINETUNE_OPTIONS, "overwrite"),
    quiet: bool = quiet_option(),
):
    """Reattach a run's head to its backbone and train both end to end from the images at a low rate.

    Example: bottleneck fine-tune runs/baseline --unfreeze 2 --lr 1e-5 --epochs 10
    """
    opts = FineTuneOptions(**opts, overwrite=overwrite, progress=not quiet, class_map=class_map_arg(class_map))
    echo_lines(fine_tune_lines(fine_tune(run, opts)))


@app.command("predict")
@handle_errors
def predict_command(
    model: Path = typer.Argument(..., help="A fine-tune run, a train-head run, or an exported .keras model."),
    paths: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
    out: Path = typer.Option(Path("predictions.csv"), help="CSV: path, predicted, p_<class>..., error."),
    tta: bool = typer.Option(False, help="Average over the 8 flips/rotations of each image."),
    batch_size: int = typer.Option(32, help="Images per batch."),
    precision: str = typer.Option("auto", help=PRECISION_HELP),
    calibrate: bool = typer.Option(True, help="The run's calibrated probabilities, decision weights and operating "
                                   "point (default); --no-calibrate for the head's own probabilities, argmax."),
    quiet: bool = quiet_option(),
):
    """Class probabilities and the top class of each image; unreadable files are listed, not fatal.

    Example: bottleneck predict runs/baseline-finetune new_images/ --out predictions.csv --tta
    """
    echo_lines(predict_lines(predict(model, paths, out=out, batch_size=batch_size, tta=tta, precision=precision,
                                     calibrate=calibrate, progress=not quiet), out, tta))


@app.command("export")
@handle_errors
def export_command(
    run: Path = typer.Argument(..., help="A train-head or fine-tune run directory."),
    format: str = typer.Option("keras", "--format", help="keras, savedmodel or tflite."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN-<format> next to RUN)."),
    data: Optional[Path] = typer.Option(None, help="Image root for the parity check, if the images moved."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    calibrate: bool = typer.Option(True, help="Keep the run's calibration in the exported model (default); "
                                   "--no-calibrate exports the head's own probabilities."),
    quiet: bool = quiet_option(),  # export prints no progress; taken as every command that works a while takes it
):
    """Write one model taking raw RGB images (preprocessing inside) plus labels.json, after a parity check.

    Example: bottleneck export runs/baseline-finetune --format savedmodel --out exported/ham
    """
    echo_lines(export_lines(export(run, format, out=out, data=data, overwrite=overwrite, calibrate=calibrate)))
