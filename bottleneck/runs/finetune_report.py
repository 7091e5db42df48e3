"""`report.md` of a fine-tune run: the sections of a head run's report (report.py: data, split, results with
intervals, operating point, calibration, lesion-level results, subgroups, limitations), the fine-tuned model against
the head it started from, and how it was trained."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..errors import BottleneckError
from ..heads import run_class_names
from ..stats import PAIRED_RESAMPLES, fmt
from ..util import md_code, md_table, md_text
from .compare import compare, read_run
from .compare_report import comparison_table, notes, rows_lines, survivors_line
from .figures import few_note
from .report import (
    calibration_section,
    class_map_section,
    data_section,
    lesion_section,
    operating_point_section,
    results_lines,
    split_section,
    subgroup_section,
)

# What gives a fine-tune run's probabilities (evaluate takes head runs only).
SERVED_BY = "`model.keras`, `predictions.csv`, `predict` and `export`"


def write_finetune_report(path: Path, config: dict, metrics: dict, name: str, limits: list[str] = ()) -> Path:
    """report.md of a fine-tune run: every section of a head run's, plus the head alone against the fine-tuned
    model on the same test split and their paired comparison (metrics.json's `paired_with_head`)."""
    names = run_class_names(config)
    o, u = config["options"], config["unfrozen"]
    lines = [f"# Fine-tune run {md_code(name)}", "",
             f"- source run: {md_code(config['source_run']['path'])} (its head, its split)",
             f"- backbone: {md_text(config['cache']['config']['backbone'])} at "
             f"{config['cache']['config']['input_size']} px, "
             f"top {u['groups']} of {u['of']} layer groups trained, {u['frozen_batchnorm_layers']} BatchNorm layers "
             "kept frozen (inference mode)",
             f"- {o['optimizer']} lr {o['lr']}, batch {o['batch_size']}, augment {o['augment']}, early stopping on "
             f"val loss (patience {o['patience']}): best epoch {config['best_epoch']} of {config['epochs_run']}",
             ""] + data_section(config["cache"], names) + class_map_section(config.get("class_map"))
    lines += split_section(config["split"], names)
    lines += results_lines(metrics, names)
    lines += [""] + head_comparison(config, metrics) + paired_section(config, metrics.get("paired_with_head"))
    if metrics.get("warnings"):
        lines += ["", "**Warnings**", ""] + [f"- {md_text(w)}" for w in metrics["warnings"]]
    lines += [""] + operating_point_section(metrics) + calibration_section(metrics, SERVED_BY)
    lines += lesion_section(metrics) + subgroup_section(metrics) + _training_section(config, metrics)
    if limits:
        lines += ["## Limitations", ""] + [f"- {md_text(x)}" for x in limits] + [""]
    lines += few_note(lines)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def head_comparison(config: dict, metrics: dict) -> list[str]:
    """### Test split: head only against fine-tuned: the two models' point estimates side by side."""
    def row(label, m):
        mel = m.get("melanoma") or {}
        return [label, m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["roc_auc_macro"]),
                fmt(mel.get("sensitivity")), fmt(mel.get("specificity"))]

    head = (metrics.get("head_only") or {}).get("test")
    lines = ["### Test split: head only against fine-tuned",
             "Point estimates of the head on the cached features (its own run's figures) and of the fine-tuned model "
             "on the images; two intervals that overlap are not a test of the difference (see the paired comparison "
             "below).", ""]
    lines += md_table(["model", "n", "accuracy", "balanced acc", "macro AUC", "melanoma sens", "melanoma spec"],
                      ([row("head only (cached features)", head)] if head else [])
                      + [row("fine-tuned (from images)", metrics["test"])]) + [""]
    bad = [f for f in config["failed"] if f["split"] == "test"]
    if bad:
        lines += [f"{len(bad)} test images could not be read and are left out of the fine-tuned row.", ""]
    return lines


def paired_with_head(head_run: Path, staged: Path, name: str, seed: int = 0) -> dict:
    """The paired comparison (compare.py, as `bottleneck compare HEAD_RUN FINETUNE_RUN --intersect` makes it) of the
    fine-tune run being written in `staged` (its predictions.csv and config.json already there; `name`: the run's
    folder once published) with the head run it started from, on the test images both scored: a test image the
    fine-tune could not read is left out, and the record says so. {"made": False, "reason": ...} where it cannot be
    made (a head run written before predictions.csv had logp_ columns)."""
    try:
        head = read_run(Path(head_run), Path(head_run).name)
        tuned = read_run(staged, name if name != head.label else f"{name} (fine-tuned)")
        tuned.path = staged.parent / name  # where it is once published
        record, _ = compare([head, tuned], True, None, PAIRED_RESAMPLES, seed)
    except BottleneckError as exc:
        return {"made": False, "reason": str(exc)}
    return {"made": True, **record}


def paired_section(config: dict, record: dict | None) -> list[str]:
    """## Paired comparison with the head run: `paired_with_head`'s differences on the same test lesions with their
    intervals, bootstrap and DeLong p-values and Holm's correction; or why it was not made and the command."""
    lines = ["## Paired comparison with the head run"]
    if record and record.get("made"):
        b = record["bootstrap"]
        return lines + [f"The fine-tuned model (B) against the head it started from (A), scored on the same test "
                        f"images: {b['resamples']} paired resamples of whole lesions (seed {b['seed']}), as "
                        "`bottleneck compare` makes it (docs/clinical.md, \"Reading a paired difference\").", ""] + \
            rows_lines(record) + [""] + comparison_table(record) + ["", survivors_line(record), ""] + \
            [f"- {md_text(n)}" for n in notes(record)] + [""]
    why = f"Not made: {md_text(record['reason'])}. " if record else ""
    command = shlex.join(["bottleneck", "compare", config["source_run"]["path"], "THIS_RUN", "--intersect"])
    return lines + [f"{why}Make it with {md_code(command)}, where THIS_RUN is this run's directory.", ""]


def _training_section(config: dict, metrics: dict) -> list[str]:
    """## Training (what was unfrozen, the optimiser, how long), the figures, ## Files and the rerun command."""
    o, u = config["options"], config["unfrozen"]
    train = metrics.get("train") or {}
    return ["## Training",
            f"- fine-tuned end to end from the images: the head of the source run on its backbone, the top "
            f"{u['groups']} of {u['of']} layer groups trained ({u.get('trainable_weights', '?')} weights), every "
            "BatchNorm layer frozen",
            f"- {o['optimizer']} lr {o['lr']}, batch {o['batch_size']}, augment {o['augment']}, seed {o['seed']}, "
            f"precision {md_text(str(o.get('precision')))}",
            f"- early stopping on validation loss (patience {o['patience']}): best epoch {config['best_epoch']} of "
            f"{config['epochs_run']} run, kept; {config['train_seconds']:.1f} s",
            f"- training accuracy {fmt(train.get('accuracy'))} (compare with validation for overfitting)",
            "", "![training curves](curves.png)", "", "![confusion matrix, test split](confusion.png)", "",
            "## Files",
            "`config.json` (how to rerun), `split.csv`, `history.csv`, `metrics.json`, `predictions.csv`, "
            "`curves.png`, `confusion.png`, `calibration.png`, `roc.png`, `model.keras`.", "",
            f"Rerun: {md_code(shlex.join(config['command']))}", ""]
