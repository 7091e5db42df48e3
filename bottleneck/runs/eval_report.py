"""`report.md` of `bottleneck evaluate` (`write_eval_report`): which data, what was left out and why, the decision
rule, and the figures a head run's test split gets (intervals, calibration, operating point, ROC, subgroups)."""

from __future__ import annotations

from pathlib import Path

from ..heads import describe, run_class_names
from ..stats import fmt
from ..util import md_code, md_table, md_text
from .figures import ci, few_note
from .report import subgroup_section


def served_section(record: dict, m: dict, names: list[str]) -> list[str]:
    """An evaluation's intervals, calibration (reliability diagram), the run's operating point on the evaluated
    images and their ROC curves."""
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
    lines += ["", "### Calibration on these images",
              f"Expected calibration error ({cal['bins']} bins, confidence in "
              f"{md_text(cal.get('confidence_of', 'the most probable class'))}) and Brier score; lower is better."
              + (" The run's calibration (fitted on its validation split) against the head's own probabilities "
                 "(that calibration undone): whether it carries over to these images." if "ece_after" in cal else ""),
              ""]
    rows = [["head as trained", fmt(cal["ece_before"]), fmt(cal["brier_before"])]]
    rows += [["calibrated by the run", fmt(cal["ece_after"]), fmt(cal["brier_after"])]] if "ece_after" in cal else []
    lines += md_table(["", "ECE", "Brier"], rows) + ["", "![reliability diagram](calibration.png)", ""]
    op = record.get("operating_point")
    if op:
        pos = md_text(op["positive"])
        lines += [f"At the run's operating point ({pos} probability >= {op['threshold']:.4f}, chosen "
                  f"on its validation split; {op['positives']} {pos} images here):", ""]
        lines += md_table(["sensitivity", "specificity", "PPV", "NPV"],
                          [[ci(op["sensitivity"]), ci(op["specificity"]), ci(op["ppv"]), ci(op["npv"])]]) + [""]
    if "roc.png" not in record.get("figures", ["roc.png"]):
        return lines + ["No ROC curve: these images hold a single class."]
    marked = op and op.get("sensitivity") and op.get("specificity")
    return lines + [f"![ROC curves{', operating point marked' if marked else ''}](roc.png)"]


def write_eval_report(path: Path, config: dict, record: dict, run_name: str, name: str) -> Path:
    """report.md of `bottleneck evaluate`: which data, what was left out and why, and the results."""
    m, external = record["metrics"], record["external"]
    base, mel = m["majority_baseline"], m.get("melanoma") or {}
    cache = md_code(record["cache"])
    what = f"external cache {cache}" if external else f"the run's test split of {cache}"
    lines = [f"# Evaluation {md_code(name)} of head run {md_code(run_name)}", ""]
    lines += [f"- folder: {md_code(record['out'])}; run: {md_code(record['run'])}"] if record.get("out") else []
    lines += [f"- data: {what}, {m['n']} images"]
    listed = "overlap.csv" if external and record["overlap"].get("kept") else "excluded.csv"
    if external:
        lines.append(f"- overlap with the run's training and validation data: {md_text(record['overlap_message'])}"
                     + (f" (listed in `{listed}`)" if record["overlap"].get("found") else ""))
    if record.get("class_map"):
        lines.append(f"- class map {md_code(record['class_map']['spec'])} (the cache's classes onto the run's): "
                     + md_text("; ".join(describe(record["class_map"]))))
    elif record["unmapped_classes"]:
        lines.append("- classes the run does not know (left out): "
                     + md_text(", ".join(f"{k} ({v:,} images)" for k, v in record["unmapped_classes"].items())))
    lines += _rule_lines(record["decision_rule"], m)
    lines += [f"- note: {md_text(n)}" for n in record["notes"]]
    baseline = ("the most frequent class of the run's training split" if record["majority_baseline_from"] == "training"
                else "the most frequent class of the evaluated images (the training labels could not be read)")
    lines += overlap_section(record["overlap"]) if external else []
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
    lines += ["", "![confusion matrix](confusion.png)", ""]
    # the train-head subgroup table, of these images (an external cache's own metadata columns)
    lines += [x.replace("Test split by metadata column", "These images by metadata column")
              for x in subgroup_section({"subgroups": record["subgroups"], "positive": (m.get("positive") or {})
                                         .get("class")})] if "subgroups" in record else []
    lines += ["Files: `metrics.json`, `predictions.csv` (probabilities at full precision: the metrics recompute "
              "exactly from it)" + (f", `{listed}`" if external and record["overlap"].get("found") else "")
              + "".join(f", `{f}`" for f in record.get("figures", ["confusion.png"])) + ".", ""]
    lines += few_note(lines)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def overlap_section(o: dict) -> list[str]:
    """The overlap checks of an external evaluation, one row each: the images it is the first to match (what is
    counted), those it matches on its own, or why it was not made."""
    if not o.get("checked"):
        return []
    kinds = {"same_bytes": "same bytes (SHA-256)", "same_id": "same image id",
             "same_lesion": f"same lesion id ({o['lesion_ids'] or 'none'} compared)",
             "similar_picture": f"similar picture (fingerprint within {o['near_bits']} bits, any flip or turn)",
             "similar_features": f"similar features (cosine similarity >= {o['near_cosine']})"}
    rows = [[what, *(["not compared", md_text(o["not_compared"][k])] if k in o["not_compared"] else
                     [f"{o[k]:,}", f"{o['found_by'][k]:,}"])] for k, what in kinds.items()]
    return (["", "### Overlap with the run's training and validation data",
             f"Each of the {o['candidates']:,} images was compared with the run's training and validation images; "
             f"{o['found']:,} matched and {'were kept (`--keep-overlap`)' if o['kept'] else 'were left out'}. An image "
             "counts under the first check that matches it; the last column is what each check finds on its own.", ""]
            + md_table(["check", "images", "found by this check alone"], rows)
            + ["", f"Not detectable: {md_text(o['not_detectable'])}."])


def _rule_lines(rule: dict, m: dict) -> list[str]:
    """The run's decision rule (older runs' records name none) and how often it is not the most probable class."""
    if not rule.get("rule"):
        return []
    differs = m["not_most_probable"]
    return [f"- decision rule: **{md_text(rule['rule'])}** (the run's `--decision`): {md_text(rule['text'])}; "
            f"{differs['rows']} of {m['n']} images ({differs['share']:.1%}) are predicted as a class that is not "
            "their most probable one (`predicted` and `most_probable` in `predictions.csv`)"]
