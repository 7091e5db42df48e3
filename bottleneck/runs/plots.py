"""PNG figures of a run: training curves and the confusion matrix, drawn off-screen.

Figures are built as `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: pyplot would open a
window on a desktop, and `matplotlib.use("Agg")` would switch the backend of a notebook that calls us.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..stats import binary_positive, log_of, ovr_scores

RELIABILITY_MIN_IMAGES = 100  # below this a reliability diagram is said to be unreadable (bins of a few images)
LINESTYLES = ("-", "--", "-.", ":")


def figure(width: float, height: float):
    """A constrained-layout Figure on its own Agg canvas (no pyplot), for `save_png`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Constrained layout keeps the colour bar and long rotated class names inside the saved image.
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: `save_png` renders with Agg whatever the global backend is
    return fig


def save_png(fig, path) -> Path:
    """The figure as a PNG at 100 dpi, drawn once. `savefig` draws a constrained-layout figure twice (a layout pass,
    then the picture); one Agg draw runs the same layout and renders the same pixels, which `imsave` writes as
    `savefig`'s last step does (same dpi and metadata: the same bytes). No `fig.clear()` after it: clearing rebuilds
    every axis' ticks (a tenth of a figure's time) only to drop them; the figure, canvas and buffer are one reference
    cycle that the garbage collector frees (memory stays flat over many figures)."""
    from matplotlib.image import imsave

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.set_dpi(100)
    fig.canvas.draw()
    imsave(path, fig.canvas.buffer_rgba(), format="png", origin="upper", dpi=fig.dpi)
    return path


def plot_curves(history: dict[str, list[float]], path) -> Path:
    """Loss and accuracy per epoch (train and, when present, validation), best validation-loss epoch dashed."""
    from matplotlib.ticker import MaxNLocator

    loss = list(history.get("loss") or [])
    if not loss:
        raise InputError(f"history has no 'loss' values (keys: {sorted(history) or 'none'}); "
                         "pass the Keras History.history dict of a fit that ran at least one epoch")
    epochs = np.arange(1, len(loss) + 1)
    style = dict(marker="o", markersize=3) if len(loss) <= 30 else {}  # a single epoch is otherwise invisible

    val_loss = np.asarray(history.get("val_loss") or [], dtype=float)
    best = None
    if val_loss.size and np.isfinite(val_loss).any():  # a diverged fit logs NaN losses; nanargmin skips them
        best = int(np.nanargmin(val_loss)) + 1

    fig = figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    panels = ((ax_loss, "loss", "loss (cross-entropy)"), (ax_acc, "accuracy", "accuracy"))
    if len(loss) == 1:  # one epoch (or a linear head fitted to convergence): values, not a curve of one dot
        return save_png(_one_point(fig, history, panels), path)
    for ax, key, ylabel in panels:
        drawn = False
        for name, label in ((key, "train"), (f"val_{key}", "validation")):
            values = history.get(name)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, label=label, **style)
                drawn = True
        if not drawn:
            ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=ax.transAxes, color="0.4")
        if best is not None:
            ax.axvline(best, color="0.3", linestyle="--", linewidth=1, label=f"best (epoch {best})")
        ax.set_title(ylabel.split(" ")[0].capitalize() + " per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0.5, len(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(loc="best", fontsize=9)
    # Keras logs accuracy as a fraction: a fixed 0..1 axis makes runs comparable at a glance.
    if history.get("accuracy") or history.get("val_accuracy"):
        ax_acc.set_ylim(0, 1.02)
    fig.suptitle("Training curves" + (f" (best validation loss at epoch {best})" if best else " (no validation)"))
    return save_png(fig, path)


def _one_point(fig, history: dict, panels):
    """Bars of the train and validation values of a history with one entry, each labelled with its value."""
    for ax, key, ylabel in panels:
        pairs = [(label, history[name][0]) for name, label in ((key, "train"), (f"val_{key}", "validation"))
                 if history.get(name)]
        if not pairs:
            ax.text(0.5, 0.5, f"no {key} recorded", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        bars = ax.bar([p[0] for p in pairs], [p[1] for p in pairs], color=["tab:blue", "tab:orange"][:len(pairs)],
                      width=0.5)
        ax.bar_label(bars, labels=[f"{p[1]:.3f}" for p in pairs], padding=3)
        ax.set_ylabel(ylabel)
        top = max(p[1] for p in pairs)
        ax.set_ylim(0, 1.1 if key == "accuracy" else 1.15 * top if top > 0 else 1)
        ax.grid(True, axis="y", alpha=0.3)
    how = ("one fit run to convergence (a linear head): no epochs to draw" if history.get("lbfgs_iterations")
           else "one epoch: no curve to draw")
    fig.suptitle(f"Training: {how}")
    return fig


def plot_confusion(matrix: list[list[int]], class_names: list[str], path, title: str = "",
                   normalize: bool = True) -> Path:
    """Confusion matrix heatmap, rows = true class; each cell shows its count and its share of the row.

    With `normalize` the colour is the row share (the recall per true class, comparable across imbalanced
    classes); without it the colour is the raw count.
    """
    m = np.asarray(matrix, dtype=np.int64)
    c = len(class_names)
    if m.shape != (c, c):
        raise InputError(f"confusion matrix has shape {m.shape} but there are {c} class names; "
                         f"pass a ({c}, {c}) matrix with rows = true class, columns = predicted class")
    totals = m.sum(axis=1, keepdims=True)  # (C, 1) support per true class
    # A class without cases has an all-zero row: show 0 rather than dividing by zero.
    share = np.divide(m, totals, out=np.zeros(m.shape, dtype=float), where=totals > 0)
    colour = share if normalize else m.astype(float)

    side = max(4.5, 0.75 * c + 2.5)
    fig = figure(side + 1.0, side)
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(1.0, float(m.max()))
    im = ax.imshow(colour, cmap="Blues", vmin=0.0, vmax=vmax)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)  # fraction/pad of its own kept the y label off the canvas
    cbar.set_label("share of true class (recall on the diagonal)" if normalize else "images")

    fontsize = 9 if c <= 8 else 7 if c <= 14 else 5
    for i in range(c):
        for j in range(c):
            dark = colour[i, j] > 0.55 * vmax  # white text where the cell is dark enough to need it
            ax.text(j, i, f"{m[i, j]}\n{100 * share[i, j]:.0f}%", ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(class_names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels([f"{n} ({t})" for n, t in zip(class_names, totals[:, 0])])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (images)")
    ax.set_title(title or "Confusion matrix")
    return save_png(fig, path)


def plot_reliability(figures: dict, path, title: str = "") -> Path:
    """Reliability diagram: accuracy against confidence per bin, before and after calibration, with the ECE of
    each in the legend; a perfectly calibrated head lies on the diagonal. `figures`: clinical.calibration_figures."""
    fig = figure(5.5, 5.0)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    total = 0
    for key, label, style in (("before", "head as trained", dict(color="tab:red", marker="o")),
                              ("after", "calibrated", dict(color="tab:blue", marker="s"))):
        points = figures.get(f"reliability_{key}")
        if not points:
            continue
        conf = [p["confidence"] for p in points]
        acc = [p["accuracy"] for p in points]
        counts = [p["n"] for p in points]
        line = ax.plot(conf, acc, label=f"{label} (ECE {figures[f'ece_{key}']:.3f})", linewidth=1, alpha=0.6,
                       **{k: v for k, v in style.items() if k != "marker"})
        # Each bin's point is as large as its image count, and says it: a bin of 2 images is not a finding.
        ax.scatter(conf, acc, s=[12 + 200 * n / max(counts) for n in counts], color=line[0].get_color(),
                   marker=style["marker"], zorder=3)
        for c, a, n in zip(conf, acc, counts):
            ax.annotate(str(n), (c, a), textcoords="offset points", xytext=(6, -10 if key == "after" else 6),
                        fontsize=7, color=line[0].get_color())
        total = sum(counts)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy in the bin")
    few = bool(total) and total < RELIABILITY_MIN_IMAGES
    # Said above the plot, where no point can hide under it: a diagram of a few images per bin is noise.
    ax.set_title((title or "Reliability diagram") + (f"\nonly {total} images: too few to read "
                                                     "(numbers: images per bin)" if few else ""),
                 fontsize=9.5 if few else None)
    ax.legend(loc="upper left", fontsize=8)
    return save_png(fig, path)


def roc_curves(y: np.ndarray, log_proba: np.ndarray, class_names: list[str],
               positive: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """class index -> (false positive rates, true positive rates) of its one-vs-rest ROC curve, for each class
    present with both positives and negatives; of two classes, the positive class's only (`stats.binary_positive`):
    the other's is the same curve mirrored. Ranked by `stats.ovr_scores`, as the AUCs of metrics.json are."""
    from sklearn.metrics import roc_curve

    scores = ovr_scores(log_proba)  # (N, C)
    shown = [binary_positive(class_names, positive)] if len(class_names) == 2 else range(len(class_names))
    curves = {}
    for k in shown:
        hit = y == k
        if hit.any() and not hit.all():
            fpr, tpr, _ = roc_curve(hit, scores[:, k])
            curves[k] = (fpr, tpr)
    return curves


def plot_roc(y: np.ndarray, proba: np.ndarray, class_names: list[str], path, positive: int | None = None,
             point: dict | None = None, title: str = "", log_proba: np.ndarray | None = None) -> Path:
    """`roc_curves` drawn, the positive class bold and its operating point marked; one curve of two classes.

    `log_proba`: float64 log-probabilities (else the log of `proba`): probabilities rounded to 0 or 1 would draw
    false ties as straight segments."""
    binary = len(class_names) == 2
    fig = figure(6.0, 5.5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    from sklearn.metrics import auc

    curves = roc_curves(y, log_of(proba) if log_proba is None else log_proba, class_names, positive)
    for i, (k, (fpr, tpr)) in enumerate(curves.items()):
        bold = k == positive or binary
        # Each class's AUC in the legend (the area under this very curve: metrics.json's AUC) and a line style of
        # its own, so that overlapping curves of many classes can still be told apart.
        ax.plot(fpr, tpr, linewidth=2.5 if bold else 1.2, alpha=1.0 if bold else 0.8,
                linestyle="-" if bold else LINESTYLES[i % len(LINESTYLES)],
                label=class_names[k] + (f" against {class_names[1 - k]}" if binary else "")
                + f" (AUC {auc(fpr, tpr):.3f})", zorder=3 if bold else 2)
    if point and point.get("threshold") is not None:
        sens, spec = point["test"]["sensitivity"]["value"], point["test"]["specificity"]["value"]
        ax.plot([1 - spec], [sens], marker="*", markersize=14, color="black", linestyle="none", zorder=4,
                label=f"operating point (p >= {point['threshold']:.3f})")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title(title or ("ROC curve" if binary else "ROC curves, one class against the rest"))
    ax.legend(loc="lower right", fontsize=8)
    return save_png(fig, path)
