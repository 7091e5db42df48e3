"""`report.md`: the short human-readable summary of a head run, written from its config and metrics, and the
sections it shares with a fine-tune run's (finetune_report.py) and an evaluation's (eval_report.py)."""

from __future__ import annotations

import shlex
from pathlib import Path

from ..heads import run_class_names
from ..stats import FEW_LESIONS, fmt
from ..util import md_code, md_table, md_text
from .decision import decision_section
from .figures import FEW, ci, few_note

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


def results_section(metrics: dict, names: list[str], scope: str = "test split") -> list[str]:
    """Headline test figures (of `scope`: "out-of-fold set" for --folds) with their bootstrap intervals, and per-class
    recall with intervals."""
    test, boot = metrics["test"], metrics["bootstrap"]
    iv = test["intervals"]
    pos = metrics.get("positive")
    lines = [f"### {scope[0].upper()}{scope[1:]}, with 95% intervals",
             f"Intervals: {boot['resamples']} bootstrap resamples of the {scope}'s {boot['units']} "
             f"{'lesions/patients' if boot['unit'].startswith('lesion') else 'images (no group ids)'} "
             f"(seed {boot['seed']}). Proportions (sensitivity, specificity, recall, PPV, NPV) get the exact binomial "
             "(Clopper-Pearson) interval on their effective number of images: the images divided by the design "
             "effect those resamples measure (images of one lesion agree, so they count for less); AUC and balanced "
             f"accuracy the resamples' percentile interval. {FEW}: fewer than {FEW_LESIONS} lesions. Predictions: "
             f"the {(metrics.get('decision_rule') or {}).get('rule', 'balanced')} decision rule (see Decision rule).",
             ""]
    header = ["n", "balanced acc", "macro AUC"] + ([f"{pos} sensitivity", f"{pos} specificity"] if pos else [])
    row = [test["n"], ci(iv["balanced_accuracy"]), ci(iv["roc_auc_macro"])]
    row += [ci(iv["sensitivity"]), ci(iv["specificity"])] if pos else []
    lines += md_table(header, [row]) + [""]
    lines += md_table(["class", f"{scope.split()[0]} images", "recall (95% interval)"],
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


SERVED_BY = "`head.keras`, `predictions.csv`, `evaluate`, `predict` and `export`"  # what serves a head run's


def calibration_section(metrics: dict, served_by: str = SERVED_BY) -> list[str]:
    """## Calibration: what was done (applied, or skipped and why), its check on validation, and the test figures of
    the head's own and the calibrated probabilities, both scored on the run's decisions. `served_by`: the files and
    commands that give the run's probabilities."""
    cal = metrics["calibration"]
    f = cal["test"]
    lines = ["## Calibration", f"Whether the probability given to {f.get('confidence_of', 'the most probable class')} "
             f"matches how often it is right: expected calibration error ({f['bins']} bins), Brier score and negative "
             "log-likelihood (NLL) on the test split; lower is better. Both rows score the same decisions, so they "
             "differ only in the probabilities.", ""]
    cross = cal.get("cross_fit")
    forms = cross.get("candidates", {}) if cross else {}
    checked = (f" Checked on validation by cross-fitting ({cross['folds']} folds of whole lesions, each scored by a "
               f"temperature fitted on the others): held-out NLL {fmt(cross['nll_before'])} without calibration, "
               f"{fmt(cross['nll_after'])} with" + (" (" + ", ".join(f"{md_text(k)} {fmt(v)}" for k, v in forms.items())
                                                     + ")" if len(forms) > 1 else "") + "." if cross else "")
    rule = [f"Rule: calibration is {md_text(cal['rule'])}.", ""] if cal.get("rule") else []
    if cal.get("applied"):
        shift = any(cal["prior_shift"])
        lines += [f"Temperature scaling fitted on the validation split: T = {cal['temperature']:.3f}"
                  + (", after undoing the prior shift of the balanced class weights (probabilities then estimate "
                     "the training prevalence; the predicted classes stay the head's own)" if shift else "")
                  + "." + checked + f" {served_by} give the calibrated probabilities (`--no-calibrate` for the "
                  "head's own).", ""] + rule
        lines += md_table(["", "ECE", "Brier", "NLL"],
                          [["head as trained", fmt(f["ece_before"]), fmt(f["brier_before"]), fmt(f.get("nll_before"))],
                           ["calibrated", fmt(f["ece_after"]), fmt(f["brier_after"]), fmt(f.get("nll_after"))]])
    else:
        lines += [f"Not calibrated: {md_text(cal['reason'])}." + checked + " Probabilities and decisions are the "
                  f"head's own, in {served_by}.", ""] + rule
        lines += md_table(["", "ECE", "Brier", "NLL"],
                          [["head as trained", fmt(f["ece_before"]), fmt(f["brier_before"]), fmt(f.get("nll_before"))]])
    lines += [""] + [f"**Flag:** {md_text(x)}." for x in cal.get("flags", [])]
    return lines + ["", "![reliability diagram](calibration.png)", ""]


def lesion_section(metrics: dict, scope: str = "test split") -> list[str]:
    les = metrics.get("lesion_level") or {}
    lines = ["## Lesion-level results"]
    if "metrics" not in les:
        return lines + [md_text(les.get("note", "not computed")) + ".", ""]
    m, iv = les["metrics"], les["metrics"]["intervals"]
    pos = metrics.get("positive")
    lines += [f"Probabilities averaged over each lesion's images: {les['lesions']} {scope.split()[0]} lesions "
              f"({les['lesions_with_several_images']} with more than one image); intervals resample lesions.", ""]
    header = ["lesions", "balanced acc", "macro AUC"] + ([f"{pos} sensitivity", f"{pos} specificity"] if pos else [])
    row = [m["n"], ci(iv["balanced_accuracy"]), ci(iv["roc_auc_macro"])]
    row += [ci(iv["sensitivity"]), ci(iv["specificity"])] if pos else []
    return lines + md_table(header, [row]) + [""]


def subgroup_section(metrics: dict, scope: str = "test split") -> list[str]:
    """## Subgroups: per metadata column, figures that compare like with like (the positive class's sensitivity and
    specificity, each class's recall with its count), balanced accuracy only where a subgroup holds every class."""
    sub = metrics.get("subgroups") or {}
    lines = ["## Subgroups"]
    if not sub.get("columns"):
        return lines + [md_text(sub.get("note", "None asked for (--subgroups none)")) + ".", ""]
    pos = metrics.get("positive")
    at = "at the operating point" if sub["at"] == "operating point" else "as predicted"
    lines += [f"{scope[0].upper()}{scope[1:]} by metadata column; intervals resample lesions within the subgroup. A "
              "subgroup of "
              f"few images or few {md_text(pos or 'positive')} cases has a wide interval: read it before the figure. A "
              f"figure resting on fewer than {FEW_LESIONS} lesions is marked {FEW}; proportions get the exact "
              "binomial interval on their effective number of images, as in the test results. Balanced accuracy "
              "is the mean recall over every class of the run, so it is shown only for a subgroup holding all of "
              "them; elsewhere the missing classes are named (a mean over the classes a subgroup happens to hold "
              "would be another quantity in each row). Recall by class: the recall, its interval and the "
              "subgroup's images of that class; `-` where it has none.", ""]
    for col, rows in sub["tables"].items():
        header = [col, "images", "lesions"] + ([f"{pos} images (lesions)", f"{pos} sensitivity ({at})",
                                                f"{pos} specificity ({at})"] if pos else []) + ["balanced acc"]
        lines += md_table(header, [[r["value"], r["images"], r["lesions"]]
                                   + ([f"{r['positives']} ({r.get('positive_lesions', '-')})", ci(r["sensitivity"]),
                                       ci(r.get("specificity"))] if pos else [])
                                   + [_balanced_cell(r)] for r in rows]) + [""]
        names = list(rows[0].get("per_class") or {}) if rows else []
        if names:
            lines += [f"Recall by class, by {md_text(col)}:", ""]
            lines += md_table([col, *names], [[r["value"]] + [f"{ci(r['recall'][n])}, n={r['per_class'][n]}"
                                                              if n in r["recall"] else "-" for n in names]
                                              for r in rows]) + [""]
    return lines


def _balanced_cell(row: dict) -> str:
    missing = row.get("missing_classes") or []
    return ci(row["balanced_accuracy"]) if not missing else "- (no " + ", ".join(missing) + ")"


def results_lines(metrics: dict, names: list[str]) -> list[str]:
    """## Results: val and test against the majority-class baseline, the decision rule, the test figures with their
    intervals and the class-wise table (of a head run or a fine-tune run)."""
    lines = ["", "## Results",
             "Balanced accuracy (mean recall over classes, the ISIC 2018 metric) is the headline number; the "
             "majority-class baseline always predicts the most frequent training class.", ""]
    lines += splits_table(metrics)
    test = metrics.get("test")
    if test:
        lines += [""] + decision_section(metrics, names)
        lines += results_section(metrics, names) if "bootstrap" in metrics else []
        lines += ["### Class-wise results on the test split", ""]
        lines += md_table(["class", "support", "precision", "recall", "F1", "ROC AUC"],
                          [[n, test["per_class"][n]["support"], fmt(test["per_class"][n]["precision"]),
                            fmt(test["per_class"][n]["recall"]), fmt(test["per_class"][n]["f1"]),
                            fmt(test["roc_auc_per_class"].get(n))] for n in names])
    return lines


def write_head_report(path: Path, config: dict, metrics: dict, name: str, limits: list[str] = (),
                      extra: list[str] = ()) -> Path:
    """report.md of a head run; `extra`: lines after the results (--folds: the out-of-fold section, fold_report.py).
    A run without a test split (--folds K --test 0) has no test sections."""
    names = run_class_names(config)
    lines = [f"# Head run {md_code(name)}", ""] + data_section(config["cache"], names)
    lines += class_map_section(config.get("class_map"))
    lines += split_section(config["split"], names)
    lines += results_lines(metrics, names)
    lines += list(extra)
    if metrics.get("warnings"):
        lines += ["", "**Warnings**", ""] + [f"- {md_text(w)}" for w in metrics["warnings"]]
    if "bootstrap" in metrics:
        lines += [""] + operating_point_section(metrics) + calibration_section(metrics) + lesion_section(metrics)
        lines += subgroup_section(metrics)
    lines += _views_section(config.get("views") or {}, metrics)
    if config.get("selection"):
        lines += _selection_section(config)
    lines += _training_section(config, metrics, names)
    if limits:
        lines += ["## Limitations", ""] + [f"- {md_text(x)}" for x in limits] + [""]
    lines += few_note(lines)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _selection_section(config: dict) -> list[str]:
    """## Selection: the sweep that chose this head (its directory), how, and the winner's validation scores."""
    sweep = config.get("sweep") or (config.get("split") or {}).get("from") or "(not recorded)"
    lines = ["", "## Selection", f"Chosen by sweep {md_code(sweep)}: {md_text(config['selection'])}."]
    scores = config.get("validation") or {}
    metric = config.get("selected_by")
    s = scores.get(metric) or {}
    if s.get("mean") is not None:
        n = s.get("n")
        spread = (f" ± {fmt(s['std'])} (sample standard deviation over {n} folds)" if s.get("std") is not None
                  else " (one validation split, no spread)")
        lines += ["", f"Validation {md_text(metric)} of this configuration: {fmt(s['mean'])}{spread}."]
    return lines


def data_section(cache: dict, names: list[str]) -> list[str]:
    """## Data: the cache and the backbone configuration its features come from."""
    cc = cache["config"]
    weights = cc["weights"] if cc["weights"] in ("imagenet", "none") else f"file {cc['weights_sha256'][:12]}"
    return ["## Data",
            f"- cache: {md_code(cache['path'])} (sha256 `{cache['sha256'][:12]}`, {cache['rows']} rows)",
            md_text(f"- backbone: {cc['backbone']}, weights {weights}, {cc['input_size']} px, {cc['pooling']} "
                    f"pooling, {cc['num_features']} features ({cc['dtype']})"),
            f"- classes: {md_text(', '.join(names))}", ""]


def split_section(split: dict, names: list[str]) -> list[str]:
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
                             for s in ("train", "val", "test")]) + duplicates_section(split.get("duplicates"))


def duplicates_section(record: dict | None) -> list[str]:
    """### Near-duplicates: what was searched, the pairs across groups found, those that cross train/val/test (or
    were joined into one group before splitting), and the first of them."""
    if not record:
        return []
    lines = ["", "### Near-duplicates"]
    if record["mode"] == "ignore":
        return lines + ["Not searched (`--duplicates ignore`): two ids of the same picture may sit in train and test.",
                        ""]
    searched = "; ".join(f"{md_text(k)}: {md_text(v.get('search', ''))}"
                         + (f" ({md_text(v['reason'])})" if v.get("reason") else "")
                         for k, v in record["checks"].items())
    n, crossing, joined = record["pairs"], record["crossing"], len(record["joined"])
    lines += [f"Pairs of images in different groups (lesions, or lone images) that look like copies: perceptual hash "
              f"within {record['checks'].get('phash', {}).get('max_bits', 'a few')} bits of a flip or quarter turn, "
              f"or feature cosine above the threshold ({searched}). "
              f"Found {n} {'pair' if n == 1 else 'pairs'} ({record['by_check'].get('phash', 0)} by hash, "
              f"{record['by_check'].get('cosine', 0)} by features); {crossing} cross train/val/test."
              + (f" `--duplicates group` joined {joined} {'set' if joined == 1 else 'sets'} of groups "
                 "into one group each before splitting."
                 if record["mode"] == "group" and joined else "")
              + (" Listed only (`--duplicates report`): the split was not changed." if record["mode"] == "report"
                 else ""), ""]
    if record["listed"]:
        lines += md_table(["image", "group", "split", "image", "group", "split", "check", "bits", "cosine"],
                          [[p["image_a"], p["group_a"] or "-", p["split_a"] or "-", p["image_b"], p["group_b"] or "-",
                            p["split_b"] or "-", p["check"], "-" if p["bits"] is None else p["bits"],
                            fmt(p["cosine"])] for p in record["listed"]])
        if n > len(record["listed"]):
            lines += ["", f"(the first {len(record['listed'])} of {n}, those crossing splits first)"]
    return lines + [""]


def splits_table(metrics: dict) -> list[str]:
    """The headline figures of the validation and test splits against the majority-class baseline."""
    rows = []
    shown = [(s, metrics[s]) for s in ("val", "test") if s in metrics]
    for s, m in shown + ([("out-of-fold", metrics["oof"]["metrics"])] if metrics.get("oof") else []):
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
             f"Training {training}; evaluation {evaluation}. The effect, on the same split, each row scored as this "
             "run's figures are (" + ("calibrated probabilities, " if (metrics.get("calibration") or {}).get("applied")
                                      else "") + f"the {(metrics.get('decision_rule') or {}).get('rule', 'balanced')} "
             "decision rule); the row marked (this run) is the one the rest of this report shows:", ""]
    tests = {name: m["test"] for name, m in metrics.get("views_comparison", {}).items()}
    # the run's own figures: with TTA the TTA row, else this head on the plain view (train.py's _views_comparison)
    mine = [name for name in tests if (", TTA over " in name if views["tta"] else name.endswith("plain view only"))]
    return lines + md_table(["variant", "test balanced acc", "test accuracy", "test macro AUC", "melanoma sens"],
                            [[name + (" (this run)" if name in mine else ""), fmt(t["balanced_accuracy"]),
                              fmt(t["accuracy"]), fmt(t["roc_auc_macro"]),
                              fmt((t.get("melanoma") or {}).get("sensitivity"))] for name, t in tests.items()])


def _training_section(config: dict, metrics: dict, names: list[str]) -> list[str]:
    """## Training (the head, its optimiser and how long it trained), the figures, ## Files and the rerun command."""
    cc, head = config["cache"]["config"], config["head"]
    hidden = " -> ".join(str(h) for h in head["hidden"])
    shape = (f"{hidden} -> {len(names)}, dropout {head['dropout']}" if hidden else
             f"{len(names)}: **linear** (multinomial logistic regression)")
    return ["", "## Training",
            f"- head: {cc['num_features']} -> {'standardise (train mean/std) -> ' if head.get('standardize') else ''}"
            f"{shape}, "
            f"{head['optimizer']} lr {head['lr']} (x{head['decay_rate']} every {head['decay_steps']} steps), "
            f"batch {head['batch_size']}, class weight {head['class_weight']}, seed {head['seed']}",
            (f"- linear: fitted to convergence by scikit-learn's LogisticRegression (L-BFGS, L2 penalty C = 1, the "
             f"class weights above); the MLP's lr, optimizer, decay, batch and epoch options do not apply; "
             f"{config['train_seconds']:.1f} s" if not head["hidden"] and config.get("epochs_run") == 1 else
             f"- trained on train+val for {config['epochs_run']} epochs ("
             + ("the folds' mean best epoch" if config.get("folds") else "the epoch count chosen on validation") + "), "
             f"no early stopping; {config['train_seconds']:.1f} s" if config.get("trained_on") == "train+val" else
             f"- early stopping on validation loss (patience {head['patience']}): best epoch "
             f"{config['best_epoch']} of {config['epochs_run']} run, restored; {config['train_seconds']:.1f} s"),
            f"- training accuracy {fmt(metrics['train']['accuracy'])} (compare with validation for overfitting)",
            "", "![training curves](curves.png)", "", "![confusion matrix, test split](confusion.png)", "",
            "## Files",
            "`config.json` (how to rerun), `split.csv`, `history.csv`, `metrics.json`, `predictions.csv`, "
            "`curves.png`, `confusion.png`, `calibration.png`, `roc.png`, `head.keras`.", "",
            f"Rerun: {md_code(shlex.join(config['command']))}", ""]
