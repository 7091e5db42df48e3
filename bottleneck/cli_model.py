"""`fine-tune`, `predict` and `export`: the commands that turn a run into a model. `register(app)` adds them to
the `bottleneck` app; each parses options, calls one library function and prints a short summary."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    from .cli import fail, handle_errors

    @app.command("fine-tune")
    @handle_errors
    def fine_tune(
        run: Path = typer.Argument(..., help="A run directory made by train-head (its head and split are used)."),
        data: Optional[Path] = typer.Option(None, help="Image root replacing the one recorded in the cache."),
        unfreeze: str = typer.Option("2", help="Top layer groups of the backbone to train, or 'all'."),
        lr: float = typer.Option(1e-5, help="Learning rate (low: the backbone is pretrained)."),
        epochs: int = typer.Option(10, help="Maximum epochs (early stopping on validation loss)."),
        patience: int = typer.Option(3, help="Epochs without validation-loss improvement before stopping."),
        optimizer: str = typer.Option("rmsprop", help="rmsprop or adam."),
        batch_size: int = typer.Option(32, help="Images per training batch."),
        augment: bool = typer.Option(True, help="Random flips, 90-degree rotations, brightness/contrast jitter."),
        seed: int = typer.Option(0, help="Seed of shuffling and augmentation."),
        out: Optional[Path] = typer.Option(None, help="Run directory (default: RUN-finetune next to RUN)."),
        resume: bool = typer.Option(False, help="Continue an interrupted fine-tune into the same --out."),
        mixed_precision: bool = typer.Option(False, help="float16 compute on GPU (refused on CPU)."),
        overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    ):
        """Reattach a run's head to its backbone and train both end to end from the images at a low rate.

        Example: bottleneck fine-tune runs/baseline --unfreeze 2 --lr 1e-5 --epochs 10
        """
        from .finetune import FineTuneOptions, fine_tune as run_fine_tune, parse_unfreeze
        from .metrics import format_table

        opts = FineTuneOptions(data=data, unfreeze=parse_unfreeze(unfreeze), lr=lr, epochs=epochs, patience=patience,
                               optimizer=optimizer, batch_size=batch_size, out=out, resume=resume,
                               overwrite=overwrite, mixed_precision=mixed_precision, augment=augment, seed=seed,
                               progress=not quiet)
        command = ["bottleneck", "fine-tune", str(run), "--unfreeze", str(unfreeze), "--lr", str(lr), "--epochs",
                   str(epochs), "--patience", str(patience), "--optimizer", optimizer, "--batch-size",
                   str(batch_size), "--seed", str(seed), "--augment" if augment else "--no-augment"]
        command += ["--data", str(data)] * bool(data) + ["--out", str(out)] * bool(out)
        try:
            r = run_fine_tune(run, opts, command=command)
        except KeyboardInterrupt:
            typer.echo("interrupted; finished epochs are kept: rerun the same command with --resume", err=True)
            raise typer.Exit(130)
        typer.echo(f"best epoch {r.best_epoch} of {r.epochs_run}, {r.seconds:.1f} s of training")
        shown = {"head only (test)": r.metrics["head_only"]["test"]} if "test" in r.metrics["head_only"] else {}
        typer.echo(format_table({**shown, "fine-tuned (val)": r.metrics["val"], "fine-tuned (test)": r.metrics["test"]}))
        for f in r.failed[:10]:
            typer.echo(f"  unreadable ({f['stage']}, {f['split']}): {f['path']}: {f['reason']}")
        if len(r.failed) > 10:
            typer.echo(f"  ... and {len(r.failed) - 10} more (config.json lists them)")
        typer.echo(f"run: {r.run_dir}  (report: {r.run_dir / 'report.md'})")

    @app.command()
    @handle_errors
    def predict(
        model: Path = typer.Argument(..., help="A fine-tune run, a train-head run, or an exported .keras model."),
        paths: List[Path] = typer.Argument(..., help="Image files or folders (searched recursively)."),
        out: Path = typer.Option(Path("predictions.csv"), help="CSV: path, predicted, p_<class>..., error."),
        tta: bool = typer.Option(False, help="Average over the 8 flips/rotations of each image."),
        batch_size: int = typer.Option(32, help="Images per batch."),
    ):
        """Class probabilities and the top class of each image; unreadable files are listed, not fatal.

        Example: bottleneck predict runs/baseline-finetune new_images/ --out predictions.csv --tta
        """
        from .serve import predict as run_predict

        r = run_predict(model, paths, out=out, batch_size=batch_size, tta=tta)
        ok = r.frame[r.frame["error"] == ""]
        typer.echo(f"{len(ok)} images predicted{' (8-view TTA)' if tta else ''}, {len(r.failed)} unreadable")
        width = min(60, max([len(p) for p in ok["path"].head(20)] + [4]))
        for _, row in ok.head(20).iterrows():
            typer.echo(f"  {row['path'][-width:]:<{width}}  {row['predicted']}  "
                       f"{row['p_' + row['predicted']]:.3f}")
        if len(ok) > 20:
            typer.echo(f"  ... and {len(ok) - 20} more")
        for path, reason in r.failed[:10]:
            typer.echo(f"  unreadable: {path}: {reason}")
        if len(r.failed) > 10:
            typer.echo(f"  ... and {len(r.failed) - 10} more (see the error column)")
        typer.echo(f"written: {out}")

    @app.command()
    @handle_errors
    def export(
        run: Path = typer.Argument(..., help="A train-head or fine-tune run directory."),
        format: str = typer.Option("keras", "--format", help="keras, savedmodel or tflite."),
        out: Optional[Path] = typer.Option(None, help="Output folder (default: RUN-<format> next to RUN)."),
        data: Optional[Path] = typer.Option(None, help="Image root for the parity check, if the images moved."),
        overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
    ):
        """Write one model taking raw RGB images (preprocessing inside) plus labels.json, after a parity check.

        Example: bottleneck export runs/baseline-finetune --format savedmodel --out exported/ham
        """
        from .serve import FORMATS, export as run_export

        if format not in FORMATS:
            fail(f"--format should be one of {', '.join(FORMATS)}; received {format!r}")
        r = run_export(run, format, out=out, data=data, overwrite=overwrite)
        typer.echo(f"parity: worst probability difference {r.worst_difference:.2g} on {r.images_checked} cached "
                   f"images (tolerance {r.tolerance})")
        typer.echo(f"exported: {r.out} ({', '.join(r.files)})")
