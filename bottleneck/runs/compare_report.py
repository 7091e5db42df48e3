"""What `bottleneck compare` writes beside comparison.json: comparison.md (the table of paired differences, the rows
used, how to read it) and the figures, roc.png (every run's ROC curve of the positive class, overlaid) and
calibration.png (their reliability diagrams side by side), drawn off-screen as plots.py draws (Figure + Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..stats import FEW_LESIONS, PAIRED_METRICS, Scored, fmt
from ..util import md_code, md_table, md_text, write_text_atomic
from .plots import figure, save_png

SHOWN = {"balanced_accuracy": "balanced accuracy", "auc": "AUC", "sensitivity": "sensitivity",
         "specificity": "specificity"}
LINESTYLES = ("-", "--", "-.", ":")


def signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def pvalue(p: float | None) -> str:
    """A p-value for a table: three decimals; below 0.001 four (the bootstrap's floor, 1/2000, reads 0.0005)."""
    return "-" if p is None else f"{p:.4f}" if p < 0.001 else f"{p:.3f}"


def difference_cell(d: dict) -> str:
    """`+0.052 (-0.013 to +0.090)`: B - A and its 95% interval ("to": a minus sign is not a dash)."""
    if d.get("difference") is None:
        return "-"
    if d["lower"] is None:
        return signed(d["difference"])
    return f"{signed(d['difference'])} ({signed(d['lower'])} to {signed(d['upper'])})"


def delong_cell(test: dict | None) -> str:
    if not test or test.get("p") is None:
        return "-"
    return f"{pvalue(test['p'])} (Holm {pvalue(test.get('p_holm'))})"


def comparison_table(record: dict) -> list[str]:
    """The differences as a Markdown table: one row per pair and figure."""
    rows = []
    for pair in record["pairs"]:
        for m in PAIRED_METRICS:
            d = pair["metrics"][m]
            rows.append([f"{pair['b']} - {pair['a']}", SHOWN[m], fmt(d["a"]), fmt(d["b"]), difference_cell(d),
                         pvalue(d["p_bootstrap"]), delong_cell(pair["delong"]) if m == "auc" else "",
                         pvalue(d.get("p_holm")), "-" if d.get("p_holm") is None else
                         "yes" if d["survives"] else "no"])
    return md_table(["B - A", "figure", "A", "B", "B - A (95% CI)", "bootstrap p", "DeLong p", "Holm p",
                     f"survives at {record['alpha']:g}"], rows)


def survivors_line(record: dict) -> str:
    """Which differences survive Holm's correction, each with its interval, in one sentence."""
    s, alpha = record["survivors"], record["alpha"]
    tests = f"{s['tests']} test{'s' if s['tests'] != 1 else ''}"
    if not s["differences"]:
        return (f"No difference survives Holm's correction for the {tests} at {alpha:g}: none is told apart from "
                "the noise of drawing these lesions.")
    shown = [f"{d['b']} - {d['a']} {SHOWN[d['figure']]} {difference_cell(d)}" for d in s["differences"]]
    return f"Surviving Holm's correction for the {tests} at {alpha:g}: {'; '.join(shown)}."


def rows_lines(record: dict) -> list[str]:
    """The rows compared, in words: how many images and lesions, which rows of each run, --intersect."""
    r = record["rows"]
    where = f"external cache {md_code(record['cache'])}" if record.get("cache") else r["what"]
    lines = [f"Compared on the same {r['images']} images ({where}) of {r['lesions']} "
             f"{'lesions' if r['grouped'] else 'images without group ids'}; {r['positives']} images of "
             f"{md_text(record['positive'])} (the positive class) in {r['positive_lesions']} lesions.", ""]
    if r["intersect"]:
        first = r["first_difference"]
        left = ", ".join(f"{md_text(k)} {v}" for k, v in r["left_out"].items())
        lines += [f"**--intersect**: the runs were not scored on the same images ({md_text(first['a'])} vs "
                  f"{md_text(first['b'])}: {md_text(first['counts'])}); only the {r['images']} images every run "
                  f"scored are compared (left out per run: {left}).", ""]
    runs = [[r_["label"], r_["kind"], r_["rows"], r_["flagged_by"], fmt(record["calibration"][r_["label"]]["ece"]),
             fmt(record["calibration"][r_["label"]]["brier"])] for r_ in record["runs"]]
    return lines + md_table(["run", "kind", "rows", "flagged positive when", "ECE", "Brier"], runs) + [""] + [
        f"- {md_text(r_['label'])}: {md_code(r_['path'])}" for r_ in record["runs"]]


def notes(record: dict) -> list[str]:
    """Warnings on what the figures rest on: few positive lesions, images without groups, DeLong and lesions."""
    r, out = record["rows"], []
    if r["positive_lesions"] < FEW_LESIONS:
        out.append(f"The AUC and sensitivity rest on {r['positive_lesions']} positive lesions (fewer than "
                   f"{FEW_LESIONS}): their differences are rough, and a real difference can easily fail to show.")
    if not r["grouped"]:
        out.append("The images carry no group (lesion/patient) ids: each is resampled as its own unit, which is "
                   "right only if no two images show one lesion.")
    elif r["lesions"] < r["images"]:
        out.append(f"DeLong's test treats the {r['images']} images as independent, but they are {r['lesions']} "
                   "lesions: where its p-value is smaller than the bootstrap's, trust the bootstrap, which draws "
                   "whole lesions.")
    return out


HOW_TO_READ = [
    "## How to read this", "",
    "- **B - A** is run B's figure minus run A's on the same images: positive means B is higher. The interval is "
    "the 95% percentile interval of that difference over lesion resamples in which *both* runs are scored on the "
    "same drawn lesions; an interval that excludes 0 is a difference the data can tell from noise.",
    "- **bootstrap p**: twice the smaller share of resampled differences on either side of 0 (at least "
    "1/resamples). **DeLong p** (AUC only): DeLong's test for two correlated AUCs, the usual second opinion.",
    "- **Holm p** adjusts the bootstrap p-values for the number of tests made (every pair times every figure; "
    "DeLong's in their own family): a difference *survives* when its Holm p is at most the level. Without the "
    "adjustment, one in twenty true non-differences would read as significant.",
    "- Two runs' separate intervals that overlap say nothing about their difference: the paired interval is "
    "narrower because the noise of which lesions were drawn is shared (docs/clinical.md, \"Reading a paired "
    "difference\").",
    "- Sensitivity and specificity are at each run's own operating point (the table above says how each flags a "
    "positive): a difference there mixes ranking with the choice of threshold; the AUC compares ranking alone.", ""]


def write_markdown(path: Path, record: dict) -> list[str]:
    """comparison.md; returns its table of differences (what the CLI prints)."""
    table = comparison_table(record)
    names = " vs ".join(r["label"] for r in record["runs"])
    b = record["bootstrap"]
    lines = [f"# Comparison: {md_text(names)}", "", *rows_lines(record), "",
             f"## Paired differences ({b['resamples']} lesion resamples, seed {b['seed']})", "", *table, "",
             survivors_line(record), ""]
    lines += [f"- {md_text(n)}" for n in notes(record)] + ([""] if notes(record) else [])
    lines += HOW_TO_READ + ["## Figures", "", "- `roc.png`: ROC curves of the positive class, every run overlaid "
                            "(operating points marked).", "- `calibration.png`: reliability diagrams side by side.",
                            "- `comparison.json`: every number of this report.", ""]
    write_text_atomic(path, "\n".join(lines))
    return table


# --- figures ----------------------------------------------------------------------------------------------------

def plot_rocs(path: Path, record: dict, y: np.ndarray, positive: int, runs: list[Scored]) -> Path:
    """Each run's ROC curve of the positive class (one against the rest, ranked by its log-odds), its AUC in the
    legend and its operating point marked."""
    from sklearn.metrics import auc, roc_curve

    fig = figure(6.0, 5.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    hit = y == positive
    for k, (run, info) in enumerate(zip(runs, record["runs"])):
        fpr, tpr, _ = roc_curve(hit, run.score)
        line = ax.plot(fpr, tpr, linewidth=2, linestyle=LINESTYLES[k % len(LINESTYLES)],
                       label=f"{info['label']} (AUC {auc(fpr, tpr):.3f})")
        sens, spec = run.flagged[hit].mean(), (~run.flagged[~hit]).mean()
        ax.plot([1 - spec], [sens], marker="*", markersize=12, color=line[0].get_color(), linestyle="none")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(f"ROC, {record['positive']} against the rest ({len(y)} images; * operating points)")
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)


def plot_reliabilities(path: Path, record: dict) -> Path:
    """Each run's reliability diagram (accuracy against confidence of its predicted class, per bin, point size and
    label the bin's images), side by side on the same axes."""
    runs = record["runs"]
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig = figure(4.2 * cols, 4.2 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True)).reshape(-1)
    for ax, run in zip(axes, runs):
        cal = record["calibration"][run["label"]]
        points = cal["reliability"]
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
        counts = [p["n"] for p in points]
        conf, acc = [p["confidence"] for p in points], [p["accuracy"] for p in points]
        ax.plot(conf, acc, color="tab:blue", linewidth=1, alpha=0.6)
        ax.scatter(conf, acc, s=[12 + 200 * n / max(counts) for n in counts], color="tab:blue", zorder=3)
        for c, a, n in zip(conf, acc, counts):
            ax.annotate(str(n), (c, a), textcoords="offset points", xytext=(6, -10), fontsize=7, color="tab:blue")
        ax.set_title(f"{run['label']} (ECE {cal['ece']:.3f})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("confidence (predicted class)")
        ax.set_ylabel("accuracy in the bin")
    for ax in axes[len(runs):]:
        ax.set_visible(False)
    fig.suptitle(f"Reliability on the same {record['rows']['images']} images (numbers: images per bin)")
    return save_png(fig, path)


def write_figures(tmp: Path, record: dict, y: np.ndarray, positive: int, runs: list[Scored]) -> list[str]:
    """roc.png (where the rows hold both positives and negatives) and calibration.png; the names written."""
    written = []
    if 0 < int((y == positive).sum()) < len(y):
        plot_rocs(tmp / "roc.png", record, y, positive, runs)
        written.append("roc.png")
    plot_reliabilities(tmp / "calibration.png", record)
    return written + ["calibration.png"]
