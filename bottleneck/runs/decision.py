"""The decision rule in a run's report: which rule made every predicted class, how often it is not the most probable
class, and what the AUCs rank instead (`decision_section`, a "### Decision rule" paragraph of report.md)."""

from __future__ import annotations

from ..stats import binary_positive
from ..util import md_text


def decision_section(metrics: dict, names: list[str]) -> list[str]:
    """### Decision rule: which rule made every predicted class of the report, how often it is not the most probable
    class, and what the AUCs rank instead (no rule: they score the probabilities themselves)."""
    rule, test = metrics.get("decision_rule"), metrics["test"]
    if not rule:
        return []
    differs = test["not_most_probable"]
    lines = ["### Decision rule",
             f"Every predicted class in this report (accuracy, balanced accuracy, recall, the confusion matrix, "
             f"sensitivity and specificity outside the operating point, `predicted` in `predictions.csv`) follows the "
             f"**{md_text(rule['rule'])}** rule (`--decision {md_text(rule['rule'])}`): {md_text(rule['text'])}. "
             f"On the test split, **{differs['rows']} of {test['n']} images ({differs['share']:.1%})** are predicted "
             "as a class that is not their most probable one (`most_probable` in `predictions.csv`)."]
    auc = ""
    if len(names) == 2:
        shown = names[binary_positive(names, _index(metrics, names))]
        auc = (f" With two classes there is one AUC and one ROC curve, the {md_text(shown)} class's: the other "
               "class's ranking is its exact reverse.")
    lines += ["", "AUCs and ROC curves use no rule: they rank each class's float64 log-probability against the "
              "others' (`logp_<class>` in `predictions.csv`, one-vs-rest log-odds), so no probability rounded to "
              "0 or 1 ties images that the head tells apart." + auc, ""]
    return lines


def _index(metrics: dict, names: list[str]) -> int | None:
    """The run's positive class (--positive, else mel/melanoma) as an index, None without one."""
    pos = metrics.get("positive")
    return names.index(pos) if pos in names else None
