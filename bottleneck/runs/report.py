"""`report.md`: the short human-readable summary of a run (a head run, or a fine-tune run against its head),
written from its config and metrics."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..heads import describe, run_class_names
from ..stats import fmt
from ..util import md_code, md_table, md_text

# Text from data (class names, metadata values, paths, the run's name) goes in through md_table (every table cell),
# md_text (prose) or md_code (a code span): a `|`, a line break or HTML in a value cannot add cells or tags.


def class_map_section(record: dict | None) -> list[str]:
    """## Task: the classes a --class-map made of the cache's, with counts, and what it dropped."""
    if not record:
        return []
    lines = ["## Task", f"Classes defined by {md_code('--class-map ' + str(record['spec']))} off the cache's classes "
             f"({md_text(', '.join(record['source_classes']))}); a dropped class's images are in no split.", ""]
    lines += md_table(["class", "from the cache's", "images"],
                      [[t, ", ".join(record["sources"].get(t, [])) or "none", f"{n:,}"]
                       for t, n in record["counts"].items()]
                      + [[f"(dropped) {k}", k, f"{v:,}"] for k, v in record["dropped"].items()])
    return lines + [""]


def ci(record: dict | None, digits: int = 3) -> str:
    """An interval record as `0.812 (0.781-0.842)`; "-" when undefined."""
    if not record:
        return "-"
    if record.get("lower") is None:
        return fmt(record["value"], digits)
    return f"{fmt(record['value'], digits)} ({fmt(record['lower'], digits)}-{fmt(record['upper'], digits)})"


def results_section(metrics: dict, names: list[str]) -> list[str]:
    """Headline test figures with their bootstrap intervals, and per-class recall with intervals."""
    test, boot = metrics["test"], metrics["bootstrap"]
    iv = test["intervals"]
    pos = metrics.get("positive")
    lines = ["### Test split, with 95% intervals",
             f"Intervals: {boot['resamples']} bootstrap resamples of the test split's {boot['units']} "
             f"{'lesions/patients' if boot['unit'].startswith('lesion') else 'images (no group ids)'} "
             f"(percentile method, seed {boot['seed']}). Predictions: "
             + ("the head's own classes (calibration changes probabilities, not decisions)."
                if (metrics.get("calibration") or {}).get("applied") else "the class of highest probability."), ""]
    header = ["n", "balanced acc", "macro AUC"] + ([f"{pos} sensitivity", f"{pos} specificity"] if pos else [])
    row = [test["n"], ci(iv["balanced_accuracy"]), ci(iv["roc_auc_macro"])]
    row += [ci(iv["sensitivity"]), ci(iv["specificity"])] if pos else []
    lines += md_table(header, [row]) + [""]
    lines += md_table(["class", "test images", "recall (95% interval)"],
                      [[n, test["per_class"][n]["support"], ci(iv["recall"][n])] for n in names])
    return lines + [""]


def operating_point_section(metrics: dict) -> list[str]:
    op = metrics.get("operating_point") or {}
    lines = ["## Operating point"]
    if op.get("threshold") is None:
        return lines + [f"None: {md_text(op.get('reason', 'not computed'))}.", ""]
    t, pos = op["test"], op["positive"]
    pos = md_text(pos)
    lines += [f"A screening reader flags an image as {pos} when its {pos} probability is at least "
              f"**{op['threshold']:.4f}**, the threshold chosen on the validation split to reach "
              f"{op['target_sensitivity']:.0%} sensitivity there ({op['val']['positives']} validation {pos} images, "
              f"{fmt(op['val']['sensitivity'])} reached, specificity {fmt(op['val']['specificity'])}). On the test "
              f"split ({op['test_images']} images, {op['test_positives']} {pos}, prevalence "
              f"{op['test_prevalence']:.1%}):", ""]
    lines += md_table(["sensitivity", "specificity", "PPV", "NPV"],
                      [[ci(t["sensitivity"]), ci(t["specificity"]), ci(t["ppv"]), ci(t["npv"])]])
    return lines + ["", "![ROC curves, operating point marked](roc.png)", ""]


def calibration_section(metrics: dict) -> list[str]:
    cal = metrics["calibration"]
    f = cal["test"]
    lines = ["## Calibration", f"Expected calibration error ({f['bins']} bins, top class) and Brier score on the "
             "test split; lower is better.", ""]
    if cal.get("applied"):
        shift = any(cal["prior_shift"])
        lines += [f"Temperature scaling fitted on the validation split: T = {cal['temperature']:.3f}"
                  + (", after undoing the prior shift of the balanced class weights (probabilities then estimate "
                     "the training prevalence; the predicted classes stay the head's own)" if shift else "")
                  + ". `head.keras`, `predictions.csv`, `evaluate`, `predict` and `export` give the calibrated "
                  "probabilities (`--no-calibrate` for the head's own).", ""]
        lines += md_table(["", "ECE", "Brier"], [["head as trained", fmt(f["ece_before"]), fmt(f["brier_before"])],
                                                 ["calibrated", fmt(f["ece_after"]), fmt(f["brier_after"])]])
    else:
        lines += [f"Not calibrated: {md_text(cal['reason'])}.", ""]
        lines += md_table(["", "ECE", "Brier"], [["head as trained", fmt(f["ece_before"]), fmt(f["brier_before"])]])
    return lines + ["", "![reliability diagram](calibration.png)", ""]


def lesion_section(metrics: dict) -> list[str]:
    les = metrics.get("lesion_level") or {}
    lines = ["## Lesion-level results"]
    if "metrics" not in les:
        return lines + [md_text(les.get("note", "not computed")) + ".", ""]
    m, iv = les["metrics"], les["metrics"]["intervals"]
    pos = metrics.get("positive")
    lines += [f"Probabilities averaged over each lesion's images: {les['lesions']} test lesions "
              f"({les['lesions_with_several_images']} with more than one image); intervals resample lesions.", ""]
    header = ["lesions", "balanced acc", "macro AUC"] + ([f"{pos} sensitivity", f"{pos} specificity"] if pos else [])
    row = [m["n"], ci(iv["balanced_accuracy"]), ci(iv["roc_auc_macro"])]
    row += [ci(iv["sensitivity"]), ci(iv["specificity"])] if pos else []
    return lines + md_table(header, [row]) + [""]


def subgroup_section(metrics: dict) -> list[str]:
    sub = metrics.get("subgroups") or {}
    lines = ["## Subgroups"]
    if not sub.get("columns"):
        return lines + [md_text(sub.get("note", "None asked for (--subgroups none)")) + ".", ""]
    pos = metrics.get("positive")
    at = "at the operating point" if sub["at"] == "operating point" else "at the argmax"
    lines += [f"Test split by metadata column; intervals resample lesions within the subgroup. A subgroup of "
              f"few images or few {md_text(pos or 'positive')} cases has a wide interval: read it before the figure. A "
              "figure resting on a single lesion has no interval (resampling one lesion cannot show its "
              "uncertainty), and under about ten cases the percentile interval understates it.", ""]
    for col, rows in sub["tables"].items():
        header = [col, "images", "lesions", "balanced acc"] + ([f"{pos} images", f"{pos} sensitivity ({at})"]
                                                               if pos else [])
        lines += md_table(header, [[r["value"], r["images"], r["lesions"], ci(r["balanced_accuracy"])]
                                   + ([r["positives"], ci(r["sensitivity"])] if pos else []) for r in rows]) + [""]
    return lines


def write_head_report(path: Path, config: dict, metrics: dict, name: str, limits: list[str] = ()) -> Path:
    names = run_class_names(config)
    lines = [f"# Head run {md_code(name)}", ""] + _data_section(config["cache"], names)
    lines += class_map_section(config.get("class_map"))
    lines += _split_section(config["split"], names)
    lines += ["", "## Results",
              "Balanced accuracy (mean recall over classes, the ISIC 2018 metric) is the headline number; the "
              "majority-class baseline always predicts the most frequent training class.", ""]
    lines += _splits_table(metrics)
    test = metrics["test"]
    lines += [""]
    if "bootstrap" in metrics:
        lines += results_section(metrics, names)
    lines += ["### Class-wise results on the test split", ""]
    lines += md_table(["class", "support", "precision", "recall", "F1", "ROC AUC"],
                      [[n, test["per_class"][n]["support"], fmt(test["per_class"][n]["precision"]),
                        fmt(test["per_class"][n]["recall"]), fmt(test["per_class"][n]["f1"]),
                        fmt(test["roc_auc_per_class"].get(n))] for n in names])
    if metrics.get("warnings"):
        lines += ["", "**Warnings**", ""] + [f"- {md_text(w)}" for w in metrics["warnings"]]
    if "bootstrap" in metrics:
        lines += [""] + operating_point_section(metrics) + calibration_section(metrics) + lesion_section(metrics)
        lines += subgroup_section(metrics)
    lines += _views_section(config.get("views") or {}, metrics)
    if config.get("selection"):
        lines += ["", "## Selection", f"Chosen by sweep {md_code(config.get('from', ''))}: "
                  f"{md_text(config['selection'])}."]
    lines += _training_section(config, metrics, names)
    if limits:
        lines += ["## Limitations", ""] + [f"- {md_text(x)}" for x in limits] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _data_section(cache: dict, names: list[str]) -> list[str]:
    """## Data: the cache and the backbone configuration its features come from."""
    cc = cache["config"]
    weights = cc["weights"] if cc["weights"] in ("imagenet", "none") else f"file {cc['weights_sha256'][:12]}"
    return ["## Data",
            f"- cache: {md_code(cache['path'])} (sha256 `{cache['sha256'][:12]}`, {cache['rows']} rows)",
            md_text(f"- backbone: {cc['backbone']}, weights {weights}, {cc['input_size']} px, {cc['pooling']} "
                    f"pooling, {cc['num_features']} features ({cc['dtype']})"),
            f"- classes: {md_text(', '.join(names))}", ""]


def _split_section(split: dict, names: list[str]) -> list[str]:
    """## Split: how the images were split, and each split's images, groups and classes."""
    sizes = split["sizes"]
    n_groups = sum(sizes[s]["groups"] for s in sizes)
    how = (f"grouped by lesion/patient ({n_groups} groups, none in two splits)" if n_groups
           else "no group ids in the cache: each image is its own group")
    origin = f"reused from {md_code(split['from'])}" if split.get("from") else (
        f"fractions {'/'.join(str(f) for f in split['fractions'])}, seed {split['seed']}")
    lines = ["## Split", f"Stratified by class, {how}; {origin}.", ""]
    return lines + md_table(["split", "images", "groups", *names],
                            [[s, sizes[s]["images"], sizes[s]["groups"], *[sizes[s]["per_class"][n] for n in names]]
                             for s in ("train", "val", "test")])


def _splits_table(metrics: dict) -> list[str]:
    """The headline figures of the validation and test splits against the majority-class baseline."""
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
    return md_table(["split", "n", "accuracy", "balanced acc", "macro AUC", "baseline acc", "baseline bal acc",
                     "melanoma sens", "melanoma spec"], rows)


def _views_section(views: dict, metrics: dict) -> list[str]:
    """### Augmented views: what training and evaluation did with the stored views, and the effect of each."""
    if not (views.get("augment") or views.get("tta")):
        return ["", "Augmented views: not used (plain view for training and evaluation)."]
    training = "drew one view per image per epoch (--augment)" if views["augment"] else "used the plain view"
    evaluation = "averaged probabilities over all views (--tta)" if views["tta"] else "used the plain view"
    lines = ["", "### Augmented views",
             f"The cache stores {views['stored']} augmented views per image besides the plain one. "
             f"Training {training}; evaluation {evaluation}. The effect, on the same split:", ""]
    tests = {name: m["test"] for name, m in metrics.get("views_comparison", {}).items()}
    return lines + md_table(["variant", "test balanced acc", "test accuracy", "test macro AUC", "melanoma sens"],
                            [[name, fmt(t["balanced_accuracy"]), fmt(t["accuracy"]), fmt(t["roc_auc_macro"]),
                              fmt((t.get("melanoma") or {}).get("sensitivity"))] for name, t in tests.items()])


def _training_section(config: dict, metrics: dict, names: list[str]) -> list[str]:
    """## Training (the head, its optimiser and how long it trained), the figures, ## Files and the rerun command."""
    cc, head = config["cache"]["config"], config["head"]
    hidden = " -> ".join(str(h) for h in head["hidden"]) or "none"
    return ["", "## Training",
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
            "`curves.png`, `confusion.png`, `calibration.png`, `roc.png`, `head.keras`.", "",
            f"Rerun: {md_code(shlex.join(config['command']))}", ""]


def write_finetune_report(path: Path, config: dict, metrics: dict, name: str) -> Path:
    """report.md: head only (the source run) against fine-tuned, on the same test split."""
    o, u = config["options"], config["unfrozen"]

    def row(label, m):
        mel = m.get("melanoma") or {}
        return [label, m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["roc_auc_macro"]),
                fmt(mel.get("sensitivity")), fmt(mel.get("specificity"))]

    lines = [f"# Fine-tune run {md_code(name)}", "",
             f"- source run: {md_code(config['source_run']['path'])} (its head, its split)",
             f"- backbone: {md_text(config['cache']['config']['backbone'])} at "
             f"{config['cache']['config']['input_size']} px, "
             f"top {u['groups']} of {u['of']} layer groups trained, {u['frozen_batchnorm_layers']} BatchNorm layers "
             "kept frozen (inference mode)",
             f"- {o['optimizer']} lr {o['lr']}, batch {o['batch_size']}, augment {o['augment']}, early stopping on "
             f"val loss (patience {o['patience']}): best epoch {config['best_epoch']} of {config['epochs_run']}",
             ""] + class_map_section(config.get("class_map")) + [
             "## Test split: head only against fine-tuned", ""]
    rows = [row("head only (cached features)", metrics["head_only"]["test"])] if "test" in metrics.get(
        "head_only", {}) else []
    lines += md_table(["model", "n", "accuracy", "balanced acc", "macro AUC", "melanoma sens", "melanoma spec"],
                      rows + [row("fine-tuned (from images)", metrics["test"])]) + [""]
    bad = [f for f in config["failed"] if f["split"] == "test"]
    if bad:
        lines += [f"{len(bad)} test images could not be read and are left out of the fine-tuned row.", ""]
    lines += ["![training curves](curves.png)", "", "![confusion matrix, test split](confusion.png)", "",
              f"Rerun: {md_code(shlex.join(config['command']))}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def served_section(record: dict, m: dict, names: list[str]) -> list[str]:
    """An evaluation's intervals, calibration and the run's operating point on the evaluated images."""
    rule, boot, iv, cal = record["decision_rule"], record["bootstrap"], m["intervals"], record["calibration"]
    pos = (m.get("positive") or {}).get("class")
    lines = [f"With 95% intervals ({boot['resamples']} bootstrap resamples of {boot['units']} "
             f"{'lesions/patients' if boot['unit'].startswith('lesion') else 'images'}); probabilities "
             + (f"calibrated by the run (temperature {rule['temperature']:.3f})." if rule["calibrated"] else
                "as the head gives them (not calibrated)."), ""]
    header = ["balanced acc", "macro AUC"] + ([f"{pos} sensitivity", f"{pos} specificity"] if pos else [])
    row = [ci(iv["balanced_accuracy"]), ci(iv["roc_auc_macro"])] + ([ci(iv["sensitivity"]), ci(iv["specificity"])]
                                                                    if pos else [])
    lines += md_table(header, [row])
    lines += ["", f"Calibration on these images: ECE {fmt(cal['ece_before'])} ({cal['bins']} bins), Brier "
              f"{fmt(cal['brier_before'])}."]
    op = record.get("operating_point")
    if op:
        pos = md_text(op["positive"])
        lines += ["", f"At the run's operating point ({pos} probability >= {op['threshold']:.4f}, chosen "
                  f"on its validation split; {op['positives']} {pos} images here):", ""]
        lines += md_table(["sensitivity", "specificity", "PPV", "NPV"],
                          [[ci(op["sensitivity"]), ci(op["specificity"]), ci(op["ppv"]), ci(op["npv"])]])
    return lines


def write_eval_report(path: Path, config: dict, record: dict, run_name: str, name: str) -> Path:
    """report.md of `bottleneck evaluate`: which data, what was left out and why, and the results."""
    m, external = record["metrics"], record["external"]
    base, mel = m["majority_baseline"], m.get("melanoma") or {}
    cache = md_code(record["cache"])
    what = f"external cache {cache}" if external else f"the run's test split of {cache}"
    lines = [f"# Evaluation {md_code(name)} of head run {md_code(run_name)}", "", f"- data: {what}, {m['n']} images"]
    if external:
        lines.append(f"- overlap with the run's training and validation data: {md_text(record['overlap_message'])}"
                     + (" (listed in `excluded.csv`)" if record["overlap"]["excluded"] else ""))
    if record.get("class_map"):
        lines.append(f"- class map {md_code(record['class_map']['spec'])} (the cache's classes onto the run's): "
                     + md_text("; ".join(describe(record["class_map"]))))
    elif record["unmapped_classes"]:
        lines.append("- classes the run does not know (left out): "
                     + md_text(", ".join(f"{k} ({v:,} images)" for k, v in record["unmapped_classes"].items())))
    lines += [f"- note: {md_text(n)}" for n in record["notes"]]
    baseline = ("the most frequent class of the run's training split" if record["majority_baseline_from"] == "training"
                else "the most frequent class of the evaluated images (the training labels could not be read)")
    lines += ["", "## Results", f"The majority-class baseline always predicts {baseline}: {md_code(base['class'])}.",
              ""]
    lines += md_table(["n", "accuracy", "balanced acc", "macro AUC", "baseline acc", "baseline bal acc",
                       "melanoma sens", "melanoma spec"],
                      [[m["n"], fmt(m["accuracy"]), fmt(m["balanced_accuracy"]), fmt(m["roc_auc_macro"]),
                        fmt(base["accuracy"]), fmt(base["balanced_accuracy"]), fmt(mel.get("sensitivity")),
                        fmt(mel.get("specificity"))]])
    names = run_class_names(config)
    lines += [""] + served_section(record, m, names)
    lines += ["", "### Class-wise results", ""]
    lines += md_table(["class", "support", "precision", "recall", "F1", "ROC AUC"],
                      [[n, m["per_class"][n]["support"], fmt(m["per_class"][n]["precision"]),
                        fmt(m["per_class"][n]["recall"]), fmt(m["per_class"][n]["f1"]),
                        fmt(m["roc_auc_per_class"].get(n))] for n in names])
    lines += ["", "![confusion matrix](confusion.png)", "",
              "Files: `metrics.json`, `predictions.csv` (probabilities at full precision: the metrics recompute "
              "exactly from it)" + (", `excluded.csv`" if external and record["overlap"]["excluded"] else "")
              + ", `confusion.png`.", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
