"""The out-of-fold section of a `train-head --folds K` run's report.md (`oof_section`), and the limitations of a run
with no test split (`oof_limitations`). The figures are metrics.json's "oof" and "folds" (folds.py)."""

from __future__ import annotations

from ..heads import EARLY_STOP_FRACTION
from ..stats import fmt, limitations
from ..util import md_table, md_text
from .figures import ci
from .report import lesion_section, results_section, subgroup_section

SCOPE = "out-of-fold set"


def oof_section(config: dict, metrics: dict, names: list[str]) -> list[str]:
    """## Out-of-fold results: the protocol in words, the pooled figures with intervals, each fold's beside them
    (mean and sample standard deviation), the operating point and calibration out of fold, lesions and subgroups."""
    oof, folds = metrics["oof"], metrics["folds"]
    k, test = folds["k"], "test" in metrics
    calibrated = oof["calibration"]["folds_calibrated"]
    lines = ["", "## Out-of-fold results",
             f"Protocol: **{md_text(metrics['protocol'])}** (`--folds {k}`). Each fold's head was trained on the other "
             f"{k - 1} folds, early-stopped on a grouped slice of them ({EARLY_STOP_FRACTION:.0%} of their lesions, "
             "per class), calibrated and given its operating point's threshold on that same slice, and then predicted "
             "its held-out fold: no image is scored by a head that saw it, or that chose its epoch, temperature or "
             f"threshold on it. Calibration applied in {calibrated} of {k} folds (the rest: too few images in the "
             f"slice or no gain; see metrics.json). `head.keras` is trained on all {oof['sizes']['images']} folded "
             f"images for {config['epochs_run']} epochs (the folds' mean best epoch), without early stopping; it is "
             "not scored on held-out images itself, and these figures estimate it"
             + (". The test split above was scored once, by that head." if test else "; there is no test split "
                "(`--test 0`), so these are the run's headline figures."), ""]
    view = oof | {"test": oof["metrics"]}
    if not test:  # else the test split's Decision rule paragraph above says it
        rule, differs = oof["decision_rule"], oof["metrics"]["not_most_probable"]
        lines += ["### Decision rule",
                  f"Every predicted class below follows the **{md_text(rule['rule'])}** rule (`--decision "
                  f"{md_text(rule['rule'])}`) of each fold's head: {md_text(rule['text'])}. {differs['rows']} of "
                  f"{oof['metrics']['n']} out-of-fold images ({differs['share']:.1%}) are predicted as a class that is "
                  "not their most probable one. AUCs and ROC curves use no rule: they rank each class's float64 "
                  "log-probability (`logp_<class>` in `predictions.csv`).", ""]
    lines += results_section(view, names, SCOPE)
    lines += _folds_table(folds)
    lines += _point_lines(oof.get("operating_point") or {})
    cal = oof["calibration"]["test"]
    lines += ["### Calibration out of fold",
              f"Expected calibration error ({cal['bins']} bins), Brier score and NLL of the pooled predictions; lower "
              "is better.", ""]
    rows = [["fold heads as trained", fmt(cal["ece_before"]), fmt(cal["brier_before"]), fmt(cal.get("nll_before"))]]
    if "ece_after" in cal:
        rows.append([f"each fold's calibration ({calibrated} of {k})", fmt(cal["ece_after"]), fmt(cal["brier_after"]),
                     fmt(cal.get("nll_after"))])
    lines += md_table(["", "ECE", "Brier", "NLL"], rows) + [""]
    for section in (lesion_section(view, SCOPE), subgroup_section(view, SCOPE)):
        lines += [section[0].replace("## ", "### ") + ", out of fold"] + section[1:]
    return lines


def _folds_table(folds: dict) -> list[str]:
    """Each fold's images, lesions, best epoch and figures, with mean ± sample standard deviation below."""
    s = folds["summary"]

    def spread(key: str) -> str:
        v = s[key]
        return "-" if v["mean"] is None else fmt(v["mean"]) + ("" if v["std"] is None else f" ± {fmt(v['std'])}")

    rows = [[f["fold"], f["images"], f["lesions"], f["best_epoch"], fmt(f["balanced_accuracy"]),
             fmt(f["roc_auc_macro"]), "yes" if f["calibration"]["applied"] else "no"] for f in folds["per_fold"]]
    rows.append(["mean ± sd", fmt(s["images"]["mean"], 1), "", fmt(s["best_epoch"]["mean"], 1),
                 spread("balanced_accuracy"), spread("roc_auc_macro"), ""])
    return ["### Per fold",
            "Each fold scored alone by its own head; sd is the sample standard deviation over folds (ddof=1). A fold "
            "holds few lesions, so its figures scatter more than the pooled ones above.", ""] + md_table(
        ["fold", "images", "lesions", "best epoch", "balanced acc", "macro AUC", "calibrated"], rows) + [""]


def _point_lines(op: dict) -> list[str]:
    lines = ["### Operating point out of fold"]
    if not op.get("oof"):
        return lines + [f"None: {md_text(op.get('reason', 'no positive class'))}.", ""]
    pos, t = md_text(op["positive"]), op["oof"]
    lines += [f"Each fold flags an image as {pos} when its {pos} probability reaches that fold's threshold, chosen "
              f"on its early-stopping slice for {op['target_sensitivity']:.0%} sensitivity (thresholds "
              + ", ".join(fmt(v, 4) for v in op["thresholds"]) + f"). Pooled over {op['images']} images "
              f"({op['positives']} {pos}, prevalence {op['prevalence']:.1%}):", ""]
    return lines + md_table(["sensitivity", "specificity", "PPV", "NPV"],
                            [[ci(t["sensitivity"]), ci(t["specificity"]), ci(t["ppv"]), ci(t["npv"])]]) + [""]


def oof_limitations(config: dict, metrics: dict) -> list[str]:
    """The limitations of a run with no test split: stats.limitations less its test-split lines, and what
    out-of-fold figures do not show."""
    sizes = metrics["oof"]["sizes"]
    lines = [line for line in limitations(config, metrics, 0)
             if not line.startswith(("One split", "The test split has", "Overlap:"))]
    return [f"No test split (`--test 0`): every figure is out of fold, over {sizes['images']} images of "
            f"{sizes['lesions']} lesions, each predicted by a head that did not see it. The served head (trained on "
            "all of them) was never scored on held-out images; the folds' heads, trained on less, estimate it, "
            "usually a little pessimistically."] + lines
