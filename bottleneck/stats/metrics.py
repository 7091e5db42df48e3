"""Imbalance-aware metrics of a classifier head, as a JSON-ready dict, and a compact text table of them.

Skin-lesion data sets are dominated by one class (nevi are ~67% of HAM10000), so plain accuracy flatters a
model that ignores the rare, dangerous classes. Every result therefore carries balanced accuracy (the ISIC 2018
metric), per-class numbers, the majority-class baseline to beat and melanoma sensitivity/specificity.
Pure numpy/scikit-learn: no TensorFlow here, so metrics can be recomputed from `predictions.csv` alone.
AUCs rank float64 log-probabilities (`ovr_scores`), never probabilities that float32 has rounded to 0 or 1.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

# scikit-learn is imported inside the functions that use it: importing it costs ~1-2 s, which every command
# (`bottleneck --help`, `info`) would otherwise pay at start-up through the CLI's imports.

MELANOMA_NAMES = ("mel", "melanoma", "MEL")  # match case-insensitively on the class name
_MELANOMA_FOLDED = {n.casefold() for n in MELANOMA_NAMES}


def _check_inputs(y_true, proba, class_names) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    c = len(class_names)
    if c < 2:
        raise InputError(f"need at least 2 class names to compute metrics, got {list(class_names)!r}")
    if y.ndim != 1:
        raise InputError(f"y_true must be 1-D class indices of shape (N,), got shape {y.shape}; "
                         "pass labels, not one-hot rows (use .argmax(axis=1) on one-hot labels)")
    if len(y) == 0:
        raise InputError("y_true is empty: no labeled images to evaluate; check the split or the cache's labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"y_true must hold integer class indices, got dtype {y.dtype}")
    if p.shape != (len(y), c):
        raise InputError(f"proba must have shape (N, C) = ({len(y)}, {c}) for {len(y)} labels and {c} class names, "
                         f"got {p.shape}; pass the head's softmax output for the same rows")
    bad = y[(y < 0) | (y >= c)]
    if len(bad):
        raise InputError(f"y_true holds class index {int(bad[0])} outside 0..{c - 1} ({c} class names); "
                         "drop unlabeled rows (-1) before computing metrics")
    if not np.isfinite(p).all():
        raise InputError("proba contains NaN or infinite values; the head diverged or the features are broken")
    return y.astype(np.int64), p


def _majority_class(train_labels, y: np.ndarray, c: int) -> int:
    if train_labels is None:
        ref = y
    else:
        t = np.asarray(train_labels)
        if t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
            raise InputError(f"train_labels must be 1-D integer class indices, got shape {t.shape} dtype {t.dtype}")
        ref = t[t >= 0]  # -1 marks an unlabeled image in the cache: it has no class to count
        if len(ref) == 0:
            raise InputError("train_labels has no labeled entry; pass train_labels=None to take the majority "
                             "class from y_true instead")
        if ref.max() >= c:
            raise InputError(f"train_labels holds class index {int(ref.max())} outside 0..{c - 1} ({c} class names)")
    return int(np.bincount(ref, minlength=c).argmax())  # ties go to the lowest index, deterministically


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    # Mean recall over the classes present in y_true, as sklearn's balanced_accuracy_score and ISIC 2018 define
    # it; computed directly because sklearn warns whenever a prediction names a class absent from y_true.
    present = np.unique(y)
    return float(np.mean([(pred[y == k] == k).mean() for k in present]))


TIE_RTOL = 1e-5  # a class's probabilities this close on every row are ties: their AUC ranks nothing


def log_softmax(z: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of logits z (N, C), without rounding a probability near 1 to exactly 1:
    log p_k = (z_k - max) - log1p(sum of exp(z_j - max) over the other classes). A float32 softmax gives 1.0 (and
    log 1.0 = 0) to every row whose runner-up is below 6e-8, and 0.0 below 1e-45: ties that move an AUC."""
    d = np.asarray(z, dtype=np.float64)
    d = d - d.max(axis=1, keepdims=True)
    e = np.exp(d)
    e[np.arange(len(d)), d.argmax(axis=1)] = 0.0  # the top class's exp(0) = 1 is the 1 of log1p
    return d - np.log1p(e.sum(axis=1, keepdims=True))


def log_of(proba: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of probabilities, without clipping (an exact 0 gives -inf)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(proba, dtype=np.float64))


def ovr_scores(log_proba: np.ndarray) -> np.ndarray:
    """(N, C) one-vs-rest log-odds, log p_k - log(sum of p_j over j != k): what every AUC and ROC curve ranks.

    The same order as p_k, with no false ties at either end: p_k near 1 is held by the (tiny, exact) probabilities
    of the other classes, p_k near 0 by its own log. Of two classes, class 0's score is exactly minus class 1's.
    Recomputed from predictions.csv's logp_<class> columns as logp_k - logsumexp(logp_j, j != k)."""
    lp = np.asarray(log_proba, dtype=np.float64)
    out = np.empty_like(lp)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(lp.shape[1]):
            rest = np.delete(lp, k, axis=1)  # (N, C-1)
            top = rest.max(axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0.0)  # every other class at log 0 = -inf: the sum is 0
            out[:, k] = lp[:, k] - (top[:, 0] + np.log(np.exp(rest - top).sum(axis=1)))
    # An exact 0 or 1 (a probability that underflowed before it got here) has an infinite score: the largest finite
    # one keeps its place in the order, and sklearn refuses infinities.
    big = np.finfo(np.float64).max
    return np.nan_to_num(out, nan=0.0, posinf=big, neginf=-big)


def _tied(score: np.ndarray) -> bool:
    # A head fed constant features gives every row the same probabilities (up to float noise between batch
    # positions); an AUC of ties reads 0.5, or anything by tie order, and would pass for a result.
    return float(np.ptp(score)) <= TIE_RTOL * float(np.abs(score).max()) if len(score) else False


def _auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    # One-vs-rest AUC is undefined without both positives and negatives; None keeps the JSON NaN-free.
    if positive.all() or not positive.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, score))


def melanoma_index(class_names: list[str]) -> int | None:
    """The class named mel/melanoma (any case), else None."""
    return next((i for i, n in enumerate(class_names) if n.casefold() in _MELANOMA_FOLDED), None)


def binary_positive(class_names: list[str], positive: int | None = None) -> int:
    """The class whose AUC and ROC curve a two-class task reports: `positive`, else the melanoma-named class, else
    class 1."""
    k = positive if positive is not None else melanoma_index(class_names)
    return 1 if k is None else k


def decide(proba: np.ndarray, decision_weights=None) -> np.ndarray:
    """Predicted class per row: argmax of the probabilities, times the decision weights when given (a calibrated
    head's class weights, which keep the balanced decision rule; see clinical.Calibration)."""
    if decision_weights is None or len(decision_weights) == 0:
        return np.asarray(proba).argmax(axis=1)
    return (np.asarray(proba) * np.asarray(decision_weights, dtype=np.float64)).argmax(axis=1)


def _melanoma(y: np.ndarray, pred: np.ndarray, class_names: list[str], idx: int | None = None) -> dict | None:
    idx = melanoma_index(class_names) if idx is None else idx
    if idx is None:
        return None
    is_mel = y == idx
    others = ~is_mel
    return {"class": class_names[idx],
            "sensitivity": float((pred[is_mel] == idx).mean()) if is_mel.any() else None,
            "specificity": float((pred[others] != idx).mean()) if others.any() else None,
            "support": int(is_mel.sum())}


def roc_aucs(y: np.ndarray, p: np.ndarray, log_proba: np.ndarray, class_names: list[str],
             positive: int | None = None) -> dict:
    """One-vs-rest ROC AUC per class, ranked by `ovr_scores(log_proba)`, and their macro mean, as compute_metrics
    reports them. Of two classes there is one AUC, the positive class's (`positive`, else the melanoma-named class,
    else class 1), given to both: the other class's ranking is its exact reverse."""
    scores = ovr_scores(log_proba)  # (N, C)
    tied = [n for i, n in enumerate(class_names) if _tied(p[:, i])]
    if len(class_names) == 2:
        k = binary_positive(class_names, positive)
        macro = None if class_names[k] in tied else _auc(y == k, scores[:, k])
        auc = {n: macro for n in class_names}
        tied = [class_names[k]] if tied else []
    else:
        auc = {n: None if n in tied else _auc(y == i, scores[:, i]) for i, n in enumerate(class_names)}
        defined = [v for v in auc.values() if v is not None]
        macro = float(np.mean(defined)) if len(defined) >= 2 else None
    return {"roc_auc_macro": macro, "roc_auc_per_class": auc,
            **({"roc_auc_note": f"AUC left out (null) for {', '.join(tied)}: the head gives every image the same "
                                "probability of it, so there is no ranking to score"} if tied else {})}


def compute_metrics(y_true: np.ndarray, proba: np.ndarray | None, class_names: list[str],
                    train_labels: np.ndarray | None = None, decision_weights=None,
                    positive: int | None = None, log_proba: np.ndarray | None = None) -> dict:
    """Metrics of softmax outputs `proba` (N, C) against class indices `y_true` (N,), as a JSON-ready dict.

    Undefined values (AUC of a class absent from y_true or whose probabilities are all tied, with a
    "roc_auc_note" then; melanoma sensitivity without melanoma cases) are None, never NaN. The majority
    baseline predicts the most frequent class of `train_labels` (of y_true when None). Predictions are
    `decide(proba, decision_weights)`; "positive" holds the sensitivity/specificity of class index `positive`
    (default: the melanoma-named class), "melanoma" those of the melanoma-named class. "not_most_probable" counts
    the rows whose prediction is not their most probable class (the decision weights' doing).

    log_proba: the float64 log-probabilities `proba` came from (`log_softmax` of the logits), which the AUCs rank
    (`roc_aucs`); None: the log of `proba` (a probability rounded to 1.0 is then held by the others' small ones).
    proba may be None when log_proba is given."""
    class_names = list(class_names)
    if proba is None:
        proba = np.exp(np.asarray(log_proba, dtype=np.float64))
    y, p = _check_inputs(y_true, proba, class_names)
    lp = log_of(p) if log_proba is None else _check_log(log_proba, p.shape)
    c = len(class_names)
    labels = list(range(c))
    pred = decide(p, decision_weights)  # (N,) predicted class index
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    per_class = {n: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                     "support": int(sup[i])} for i, n in enumerate(class_names)}
    maj = _majority_class(train_labels, y, c)
    baseline_pred = np.full_like(y, maj)
    differs = int((pred != decide(p)).sum())

    return {"n": int(len(y)),
            "accuracy": float((pred == y).mean()),
            "balanced_accuracy": _balanced_accuracy(y, pred),
            "per_class": per_class,
            **roc_aucs(y, p, lp, class_names, positive),
            "confusion_matrix": confusion_matrix(y, pred, labels=labels).astype(int).tolist(),
            "not_most_probable": {"rows": differs, "share": differs / len(y)},
            "majority_baseline": {"class": class_names[maj],
                                  "accuracy": float((y == maj).mean()),
                                  "balanced_accuracy": _balanced_accuracy(y, baseline_pred)},
            "melanoma": _melanoma(y, pred, class_names),
            "positive": _melanoma(y, pred, class_names, positive)}


def _check_log(log_proba, shape: tuple) -> np.ndarray:
    lp = np.asarray(log_proba, dtype=np.float64)
    if lp.shape != shape:
        raise InputError(f"log_proba must have the shape of proba {shape}, got {lp.shape}; pass the "
                         "log-probabilities of the same rows")
    if np.isnan(lp).any() or (lp > 0).any():
        raise InputError("log_proba holds NaN or positive values; pass log-probabilities (log_softmax of logits)")
    return lp


def fmt(v, digits: int = 3) -> str:
    """A metric for a table: fixed decimals, "-" when undefined."""
    return "-" if v is None else f"{v:.{digits}f}"


def evaluate_splits(y: np.ndarray, proba: np.ndarray, split_of_rows: np.ndarray, class_names, y_train,
                    splits=("val", "test"), decision_weights=None, positive: int | None = None,
                    log_proba: np.ndarray | None = None) -> dict:
    """`compute_metrics` per split name of `splits` that has rows; y, proba (and log_proba, the log-probabilities
    the AUCs rank) and split_of_rows are row-aligned."""
    out = {}
    for s in splits:
        m = split_of_rows == s
        if m.any():
            out[s] = compute_metrics(y[m], proba[m], class_names, train_labels=y_train,
                                     decision_weights=decision_weights, positive=positive,
                                     log_proba=None if log_proba is None else log_proba[m])
    return out


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width summary: one row per split (headline metrics and the baseline), then per-class recall.

    `results` maps a split name ("val", "test", ...) to a `compute_metrics` dict; missing values print as "-".
    """
    header = ["split", "n", "accuracy", "balanced acc", "macro AUC", "mel sens", "mel spec", "majority bal acc"]
    rows = []
    for split, m in results.items():
        mel = m.get("melanoma") or {}
        base = m.get("majority_baseline") or {}
        rows.append([str(split), str(m.get("n", "-")), fmt(m.get("accuracy")), fmt(m.get("balanced_accuracy")),
                     fmt(m.get("roc_auc_macro")), fmt(mel.get("sensitivity")), fmt(mel.get("specificity")),
                     fmt(base.get("balanced_accuracy"))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        # Split names read left-aligned, numbers right-aligned so their decimal points line up.
        return "  ".join([r[0].ljust(widths[0]), *(v.rjust(w) for v, w in zip(r[1:], widths[1:]))])

    out = [line(header), line(["-" * w for w in widths]), *[line(r) for r in rows]]

    classes = list(dict.fromkeys(n for m in results.values() for n in (m.get("per_class") or {})))
    if classes:
        splits = [str(s) for s in results]
        cw = max(len("recall by class"), *(len(n) for n in classes))
        sw = [max(len(s), 5) for s in splits]
        out += ["", "recall by class".ljust(cw) + "  " + "  ".join(s.rjust(w) for s, w in zip(splits, sw))]
        for name in classes:
            cells = []
            for m, w in zip(results.values(), sw):
                pc = (m.get("per_class") or {}).get(name)
                # Recall of a class with no cases is undefined; sklearn's 0.0 would read as a total miss.
                cells.append(("-" if pc is None or not pc.get("support") else fmt(pc.get("recall"))).rjust(w))
            out.append(name.ljust(cw) + "  " + "  ".join(cells))
    return "\n".join(out)
