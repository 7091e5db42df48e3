"""Training curves and confusion matrices written as valid PNGs, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from bottleneck.errors import InputError
from bottleneck.runs.plots import figure, plot_confusion, plot_curves, plot_roc, roc_curves, save_png
from bottleneck.stats.metrics import log_softmax


def assert_png(path):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 0 and img.size[1] > 0


def test_plot_curves_with_and_without_validation(tmp_path):
    full = {"loss": [1.2, 0.8, 0.6, 0.5], "val_loss": [1.3, 0.9, 1.0, 1.1],
            "accuracy": [0.4, 0.6, 0.7, 0.8], "val_accuracy": [0.35, 0.55, 0.5, 0.5]}
    out = plot_curves(full, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    assert_png(out)
    assert_png(plot_curves({"loss": [1.0, 0.7], "accuracy": [0.5, 0.6]}, tmp_path / "sub" / "train_only.png"))
    assert_png(plot_curves({"loss": [1.0]}, tmp_path / "one_epoch.png"))
    with pytest.raises(InputError, match="no 'loss'"):
        plot_curves({"val_loss": [1.0]}, tmp_path / "x.png")


def test_plot_confusion_with_a_zero_row(tmp_path, recwarn):
    m = [[5, 1, 0], [0, 0, 0], [2, 0, 3]]
    out = plot_confusion(m, ["nv", "mel", "bcc"], tmp_path / "confusion.png", title="test split, 11 images")
    assert out == tmp_path / "confusion.png"
    assert_png(out)
    assert_png(plot_confusion(m, ["nv", "mel", "bcc"], tmp_path / "raw.png", normalize=False))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no 0/0 on the empty row
    with pytest.raises(InputError, match=r"shape \(3, 3\) but there are 2 class names"):
        plot_confusion(m, ["nv", "mel"], tmp_path / "bad.png")


def test_a_two_class_roc_is_one_curve_of_the_positive_class_from_unsaturated_scores(tmp_path):
    # mel first (index 0); its logit margin puts p_other at exactly 1.0 in float32 on five rows, which would draw
    # them as one tie: the curve ranks the float64 log-probabilities instead
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    d = np.array([-20.0, -22.0, 5.0, -25.0, -30.0, -40.0, 3.0])
    logp = log_softmax(np.stack([d, np.zeros_like(d)], axis=1))
    curves = roc_curves(y, logp, ["mel", "other"])
    assert list(curves) == [0]  # one curve, the melanoma class's
    fpr, tpr = curves[0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(y == 0, d))
    assert list(roc_curves(y, logp, ["a", "b"])) == [1]  # no melanoma: class 1's
    assert list(roc_curves(y, logp, ["mel", "other"], positive=1)) == [1]  # --positive other
    assert len(roc_curves(np.array([0, 1, 2, 0]), log_softmax(np.eye(3)[[0, 1, 2, 1]]), ["a", "b", "c"])) == 3
    assert_png(plot_roc(y, np.exp(logp), ["mel", "other"], tmp_path / "roc.png", log_proba=logp))


def dark_columns(path, threshold: int = 100) -> np.ndarray:
    """Per pixel column of the PNG, whether any pixel in it is dark (text or lines)."""
    with Image.open(path) as img:
        return (np.asarray(img.convert("L")) < threshold).any(axis=0)


def test_seven_classes_keep_the_confusion_matrix_y_label_on_the_canvas(tmp_path):
    names = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    matrix = (np.eye(7, dtype=int) * 3 + 1).tolist()
    path = plot_confusion(matrix, names, tmp_path / "c.png", title="test split, 20 images")
    dark = dark_columns(path)
    # the rotated y label "true class (images)" is drawn left of the tick labels: dark pixels near the left edge,
    # not cut off at the canvas border
    assert dark[2:40].any() and not dark[0]


def test_a_one_epoch_history_is_drawn_as_values_not_a_dot(tmp_path):
    one = plot_curves({"loss": [0.9], "val_loss": [1.0], "accuracy": [0.5], "val_accuracy": [0.4]},
                      tmp_path / "one.png")
    many = plot_curves({"loss": [0.9, 0.8], "val_loss": [1.0, 0.9], "accuracy": [0.5, 0.6],
                        "val_accuracy": [0.4, 0.5]}, tmp_path / "two.png")
    with Image.open(one) as a, Image.open(many) as b:
        ink = [(np.asarray(img.convert("L")) < 200).mean() for img in (a, b)]
    assert ink[0] > 2 * ink[1]  # bars, not two dots on an empty axis


def test_a_figure_is_drawn_once_into_the_bytes_savefig_writes(tmp_path):
    def heatmap():  # constrained layout, a colour bar, rotated labels and cell texts: what the layout moves
        fig = figure(6.0, 5.0)
        ax = fig.subplots()
        fig.colorbar(ax.imshow(np.arange(16.0).reshape(4, 4), cmap="Blues"), ax=ax, shrink=0.8)
        for i in range(4):
            ax.text(i, i, f"{i}\n{25 * i}%", ha="center", va="center")
        ax.set_xticks(range(4))
        ax.set_xticklabels([f"a long class name {i}" for i in range(4)], rotation=45, ha="right")
        ax.set_ylabel("true class (images)")
        return fig

    fig, draws = heatmap(), []
    fig.canvas.mpl_connect("draw_event", draws.append)
    path = save_png(fig, tmp_path / "sub" / "once.png")
    assert path == tmp_path / "sub" / "once.png" and len(draws) == 1  # savefig draws it twice (layout, picture)
    heatmap().savefig(tmp_path / "savefig.png", dpi=100, format="png")
    assert path.read_bytes() == (tmp_path / "savefig.png").read_bytes()
