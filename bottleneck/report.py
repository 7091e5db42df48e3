"""`report.md`: the short human-readable summary of a run (a head run, or a fine-tune run against its head),
written from its config and metrics."""

from __future__ import annotations

from pathlib import Path

from .class_map import describe, run_class_names
from .metrics import fmt


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def class_map_section(record: dict | None) -> list[str]:
    """## Task: the classes a --class-map made of the cache's, with counts, and what it dropped."""
    if not record:
        return []
    lines = ["## Task", f"Classes defined by `--class-map {record['spec']}` off the cache's classes "
             f"({', '.join(record['source_classes'])}); a dropped class's images are in no split.", ""]
    lines += _table(["class", "from the cache's", "images"],
                    [[t, ", ".join(record["sources"].get(t, [])) or "none", f"{n:,}"]
                     for t, n in record["counts"].items()]
                    + [[f"(dropped) {k}", k, f"{v:,}"] for k, v in record["dropped"].items()])
    return lines + [""]


def write_head_report(path: Path, config: dict, metrics: dict, name: str) -> Path:
    cache, head, split = config["cache"], config["head"], config["split"]
    cc = cache["config"]
    names = run_class_names(config)
    sizes = split["sizes"]
    weights = cc["weights"] if cc["weights"] in ("imagenet", "none") else f"file {cc['weights_sha256'][:12]}"
    lines = [f"# Head run `{name}`", "",
             "## Data",
             f"- cache: `{cache['path']}` (sha256 `{cache['sha256'][:12]}`, {cache['rows']} rows)",
             f"- backbone: {cc['backbone']}, weights {weights}, {cc['input_size']} px, {cc['pooling']} pooling, "
             f"{cc['num_features']} features ({cc['dtype']})",
             f"- classes: {', '.join(names)}", ""]
    lines += class_map_section(config.get("class_map"))
    n_groups = sum(sizes[s]["groups"] for s in sizes)
    how = (f"grouped by lesion/patient ({n_groups} groups, none in two splits)" if n_groups
           else "no group ids in the cache: each image is its own group")
    origin = f"reused from `{split['from']}`" if split.get("from") else (
        f"fractions {'/'.join(str(f) for f in split['fractions'])}, seed {split['seed']}")
    lines += ["## Split", f"Stratified by class, {how}; {origin}.", ""]
    lines += _table(["split", "images", "groups", *names],
                    [[s, sizes[s]["images"], sizes[s]["groups"], *[sizes[s]["per_class"][n] for n in names]]
                     for s in ("train", "val", "test")])
    lines += ["", "## Results",
              "Balanced accuracy (mean recall over classes, the ISIC 2018 metric) is the headline number; the "
              "majority-class baseline always predicts the most frequent training class.", ""]
    rows = []
    for s in ("val", "test"):
        if s not in metrics:
            continue
        m = metrics[s]
        base = m["majority_baseline"]
        mel = m.get("melanoma") or {}
        rows.append([s, m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["roc_auc_macro"]),
                     fmt(base["accuracy"]), fmt(base["balanced_accuracy"]),
                     fmt(mel.get("sensitivity")), fmt(mel.get("specificity"))])
    lines += _table(["split", "n", "accuracy", "balanced acc", "macro AUC", "baseline acc", "baseline bal acc",
                     "melanoma sens", "melanoma spec"], rows)
    test = metrics["test"]
    lines += ["", "### Class-wise results on the test split", ""]
    lines += _table(["class", "support", "precision", "recall", "F1", "ROC AUC"],
                    [[n, test["per_class"][n]["support"], fmt(test["per_class"][n]["precision"]),
                      fmt(test["per_class"][n]["recall"]), fmt(test["per_class"][n]["f1"]),
                      fmt(test["roc_auc_per_class"].get(n))] for n in names])
    views = config.get("views") or {}
    if views.get("augment") or views.get("tta"):
        lines += ["", "### Augmented views",
                  f"The cache stores {views['stored']} augmented views per image besides the plain one. "
                  f"Training {'drew one view per image per epoch (--augment)' if views['augment'] else 'used the plain view'}; "
                  f"evaluation {'averaged probabilities over all views (--tta)' if views['tta'] else 'used the plain view'}. "
                  "The effect, on the same split:", ""]
        comp = metrics.get("views_comparison", {})
        lines += _table(["variant", "test balanced acc", "test accuracy", "test macro AUC", "melanoma sens"],
                        [[name, fmt(m["test"]["balanced_accuracy"]), fmt(m["test"]["accuracy"]),
                          fmt(m["test"]["roc_auc_macro"]), fmt((m["test"].get("melanoma") or {}).get("sensitivity"))]
                         for name, m in comp.items()])
    else:
        lines += ["", "Augmented views: not used (plain view for training and evaluation)."]
    hidden = " -> ".join(str(h) for h in head["hidden"]) or "none"
    lines += ["", "## Training",
              f"- head: {cc['num_features']} -> {'standardise (train mean/std) -> ' if head.get('standardize') else ''}"
              f"{hidden} -> {len(names)}, dropout {head['dropout']}, "
              f"{head['optimizer']} lr {head['lr']} (x{head['decay_rate']} every {head['decay_steps']} steps), "
              f"batch {head['batch_size']}, class weight {head['class_weight']}, seed {head['seed']}",
              (f"- trained on train+val for {config['epochs_run']} epochs (the epoch count chosen on validation), "
               f"no early stopping; {config['train_seconds']:.1f} s" if config.get("trained_on") == "train+val" else
               f"- early stopping on validation loss (patience {head['patience']}): best epoch "
               f"{config['best_epoch']} of {config['epochs_run']} run, restored; {config['train_seconds']:.1f} s"),
              f"- training accuracy {fmt(metrics['train']['accuracy'])} (compare with validation for overfitting)",
              "", "![training curves](curves.png)", "", "![confusion matrix, test split](confusion.png)", "",
              "## Files",
              "`config.json` (how to rerun), `split.csv`, `history.csv`, `metrics.json`, `predictions.csv`, "
              "`curves.png`, `confusion.png`, `head.keras`.", "",
              f"Rerun: `{' '.join(config['command'])}`", ""]
    path.write_text("\n".join(lines))
    return path


def write_finetune_report(path: Path, config: dict, metrics: dict, name: str) -> Path:
    """report.md: head only (the source run) against fine-tuned, on the same test split."""
    o, u = config["options"], config["unfrozen"]

    def row(label, m):
        mel = m.get("melanoma") or {}
        return (f"| {label} | {m['n']} | {fmt(m['accuracy'])} | {fmt(m['balanced_accuracy'])} | "
                f"{fmt(m['roc_auc_macro'])} | {fmt(mel.get('sensitivity'))} | {fmt(mel.get('specificity'))} |")

    lines = [f"# Fine-tune run `{name}`", "",
             f"- source run: `{config['source_run']['path']}` (its head, its split)",
             f"- backbone: {config['cache']['config']['backbone']} at {config['cache']['config']['input_size']} px, "
             f"top {u['groups']} of {u['of']} layer groups trained, {u['frozen_batchnorm_layers']} BatchNorm layers "
             "kept frozen (inference mode)",
             f"- {o['optimizer']} lr {o['lr']}, batch {o['batch_size']}, augment {o['augment']}, early stopping on "
             f"val loss (patience {o['patience']}): best epoch {config['best_epoch']} of {config['epochs_run']}",
             ""] + class_map_section(config.get("class_map")) + [
             "## Test split: head only against fine-tuned", "",
             "| model | n | accuracy | balanced acc | macro AUC | melanoma sens | melanoma spec |",
             "|---|---|---|---|---|---|---|"]
    if "test" in metrics.get("head_only", {}):
        lines.append(row("head only (cached features)", metrics["head_only"]["test"]))
    lines += [row("fine-tuned (from images)", metrics["test"]), ""]
    bad = [f for f in config["failed"] if f["split"] == "test"]
    if bad:
        lines += [f"{len(bad)} test images could not be read and are left out of the fine-tuned row.", ""]
    lines += ["![training curves](curves.png)", "", "![confusion matrix, test split](confusion.png)", "",
              f"Rerun: `{' '.join(config['command'])}`", ""]
    path.write_text("\n".join(lines))
    return path


def write_eval_report(path: Path, config: dict, record: dict, run_name: str, name: str) -> Path:
    """report.md of `bottleneck evaluate`: which data, what was left out and why, and the results."""
    m, external = record["metrics"], record["external"]
    base, mel = m["majority_baseline"], m.get("melanoma") or {}
    what = f"external cache `{record['cache']}`" if external else f"the run's test split of `{record['cache']}`"
    lines = [f"# Evaluation `{name}` of head run `{run_name}`", "", f"- data: {what}, {m['n']} images"]
    if external:
        lines.append(f"- overlap with the run's training and validation data: {record['overlap_message']}"
                     + (" (listed in `excluded.csv`)" if record["overlap"]["excluded"] else ""))
    if record.get("class_map"):
        lines.append(f"- class map `{record['class_map']['spec']}` (the cache's classes onto the run's): "
                     + "; ".join(describe(record["class_map"])))
    elif record["unmapped_classes"]:
        lines.append("- classes the run does not know (left out): "
                     + ", ".join(f"{k} ({v:,} images)" for k, v in record["unmapped_classes"].items()))
    lines += [f"- note: {n}" for n in record["notes"]]
    baseline = ("the most frequent class of the run's training split" if record["majority_baseline_from"] == "training"
                else "the most frequent class of the evaluated images (the training labels could not be read)")
    lines += ["", "## Results", f"The majority-class baseline always predicts {baseline}: `{base['class']}`.", ""]
    lines += _table(["n", "accuracy", "balanced acc", "macro AUC", "baseline acc", "baseline bal acc",
                     "melanoma sens", "melanoma spec"],
                    [[m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["roc_auc_macro"]),
                      fmt(base["accuracy"]), fmt(base["balanced_accuracy"]), fmt(mel.get("sensitivity")),
                      fmt(mel.get("specificity"))]])
    names = run_class_names(config)
    lines += ["", "### Class-wise results", ""]
    lines += _table(["class", "support", "precision", "recall", "F1", "ROC AUC"],
                    [[n, m["per_class"][n]["support"], fmt(m["per_class"][n]["precision"]),
                      fmt(m["per_class"][n]["recall"]), fmt(m["per_class"][n]["f1"]),
                      fmt(m["roc_auc_per_class"].get(n))] for n in names])
    lines += ["", "![confusion matrix](confusion.png)", "",
              "Files: `metrics.json`, `predictions.csv` (probabilities at full precision: the metrics recompute "
              "exactly from it)" + (", `excluded.csv`" if external and record["overlap"]["excluded"] else "")
              + ", `confusion.png`.", ""]
    path.write_text("\n".join(lines))
    return path
