"""`bottleneck compare RUN_A RUN_B [RUN_C ...]`: runs scored on the same images, compared as pairs.

Each run's rows come from its own predictions.csv: a head run's (or a sweep's OUT/best, or a fine-tune run's) test
split, a `train-head --folds K` run's out-of-fold rows when every run compared is one, an evaluation folder's
(RUN/eval-*) every row; with --cache EXT, each head run is first evaluated on that cache (`evaluate_run`, into the
comparison's folder) and compared there. The rows must be the same images in every run, or the comparison is
refused with the counts (--intersect: on the images every run scored, said in the report). Every figure is then
recomputed from those rows, so the comparison recomputes from the runs' predictions.csv alone:

    runs -> predictions.csv rows (or evaluate_run on EXT) -> same images? -> paired lesion bootstrap + DeLong -> Holm
         -> comparison.md, comparison.json, roc.png, calibration.png

The statistics are stats/paired.py's; the report and figures compare_report.py's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..heads import ClassMap
from ..stats import (
    ALPHA,
    PAIRED_METRICS,
    PAIRED_RESAMPLES,
    DecisionRule,
    Scored,
    binary_positive,
    calibration_figures,
    delong,
    holm,
    ovr_scores,
    paired_bootstrap,
    positive_index,
    resampling_units,
)
from ..util import csv_unescape, finite_or_null, read_json_object, write_json_atomic
from .compare_report import survivors_line, write_figures, write_markdown
from .directory import restore_interrupted, staged
from .evaluate import evaluate_run

# What a comparison folder holds: --overwrite replaces a folder of these (and its eval-* folders) only.
COMPARE_FILES = {"comparison.md", "comparison.json", "roc.png", "calibration.png"}
FIX = "pass a run made by train-head, sweep (OUT/best) or fine-tune, or an evaluation folder (RUN/eval-*)"


@dataclass
class RunRows:
    """One run's predictions as read for a comparison: every row of its predictions.csv and where they came from."""

    label: str
    path: Path
    kind: str  # head run, folds run, fine-tune run or evaluation
    frame: object  # pandas DataFrame of predictions.csv, text as written (ids unescaped)
    class_names: list[str]
    config: dict = field(default_factory=dict)  # config.json (runs) or metrics.json (evaluations)


@dataclass
class CompareResult:
    out_dir: Path
    record: dict  # comparison.json
    table: list[str]  # the markdown table of differences, as comparison.md shows it
    survivors: str  # the differences that survive Holm's correction, in a sentence


def compare_runs(runs: list[str | Path], cache: str | Path | None = None, class_map: ClassMap | None = None,
                 out: str | Path | None = None, intersect: bool = False, overwrite: bool = False,
                 positive: str | None = None, resamples: int = PAIRED_RESAMPLES, seed: int = 0,
                 memory_gb: float | None = None) -> CompareResult:
    """Compare runs pairwise on the same images (see the module's docstring); written to `out`, by default
    compare-<A>-<B>[...] beside the first run, never replacing an earlier comparison without `overwrite` and then
    only once the new one is whole (`staged`)."""
    paths = check_runs(runs, cache, class_map, resamples)
    labels = run_labels(paths)
    out = check_out(Path(out) if out is not None else default_out(paths, labels), paths, cache, overwrite)
    with staged(out, overwrite, "comparison") as tmp:
        if cache is not None:  # each head on the external cache, into the comparison's folder
            paths = [evaluate_run(p, cache, memory_gb=memory_gb, class_map=class_map,
                                  out=tmp / f"eval-{label}").out_dir for p, label in zip(paths, labels)]
        read = [read_run(p, label) for p, label in zip(paths, labels)]
        for r in read if cache is not None else ():
            r.path = out / r.path.name  # where its evaluation is once the comparison is published
        record, arrays = compare(read, intersect, positive, resamples, seed)
        record |= {"cache": str(Path(cache).resolve()) if cache is not None else None, "out": str(out.resolve())}
        table = write_markdown(tmp / "comparison.md", record)
        record["figures"] = write_figures(tmp, record, *arrays)
        write_json_atomic(tmp / "comparison.json", finite_or_null(record))
    return CompareResult(out, record, table, survivors_line(record))


def check_runs(runs: list, cache, class_map, resamples: int) -> list[Path]:
    """The runs as paths, checked before any work: at least two, each once, each a folder; --class-map only with
    --cache; enough resamples for a p-value."""
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise InputError(f"compare needs at least two runs, got {len(paths)}; pass RUN_A RUN_B [RUN_C ...]")
    for p in paths:
        restore_interrupted(p)
        if not p.is_dir():
            raise InputError(f"run {p} does not exist; {FIX}")
    seen = {}
    for p in paths:
        if p.resolve() in seen:
            raise InputError(f"run {p} is given twice (as {seen[p.resolve()]} and {p}); a run compared with itself "
                             "differs by nothing: pass each run once")
        seen[p.resolve()] = p
    if class_map is not None and cache is None:
        raise InputError("--class-map maps an external cache's classes onto the runs': it needs --cache EXT.h5")
    if cache is not None and not Path(cache).is_file():
        raise InputError(f"--cache {cache} does not exist; pass a cache written by `bottleneck extract`")
    if resamples < 100:
        raise InputError(f"--resamples should be at least 100 (the smallest p-value is 1/resamples), got {resamples};"
                         f" the default is {PAIRED_RESAMPLES}")
    return [p.resolve() for p in paths]


def run_labels(paths: list[Path]) -> list[str]:
    """A short name per run: its folder's name; `parent-name` where two share one (two sweeps' `best`)."""
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}-{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [lab if labels.count(lab) == 1 else f"{lab}-{i + 1}" for i, lab in enumerate(labels)]


def default_out(paths: list[Path], labels: list[str]) -> Path:
    """compare-<A>-<B>[...] beside the first run (the first two and a count when the names run long)."""
    name = "compare-" + "-".join(labels)
    if len(name) > 120:
        name = f"compare-{labels[0]}-{labels[1]}-and-{len(labels) - 2}-more"
    return paths[0].parent / name


def check_out(out: Path, paths: list[Path], cache, overwrite: bool) -> Path:
    """Where the comparison goes, checked before any work: never a run, a cache or a folder holding one; never a
    file or a folder of anything but a comparison's files; an existing comparison only with --overwrite."""
    restore_interrupted(out)
    target = out.resolve()
    for held in [*paths, *([Path(cache)] if cache is not None else [])]:
        if target == held.resolve() or target in held.resolve().parents:
            raise InputError(f"--out {out} would replace {held}, which this comparison reads; choose a folder that "
                             "holds neither a run nor a cache")
    if out.exists():
        if not out.is_dir() or not all(p.name in COMPARE_FILES or (p.is_dir() and p.name.startswith("eval-"))
                                       for p in out.iterdir()):
            raise InputError(f"--out {out} exists and is {'a file' if not out.is_dir() else 'not a comparison'}; "
                             "compare replaces only an earlier comparison's folder: choose another --out")
        if not overwrite:
            raise InputError(f"comparison {out} already exists; pass --overwrite to replace it, or --out DIR to keep "
                             "both")
    return out


def read_run(path: Path, label: str) -> RunRows:
    """predictions.csv of a run or an evaluation folder, with what it is (config.json of a run, metrics.json of an
    evaluation); a folder that is neither, or a file without the columns compare reads, refused in one line."""
    import pandas as pd

    if (path / "config.json").is_file():
        config = read_json_object(path / "config.json", FIX)
        kind = "fine-tune run" if config.get("kind") == "finetune" else "head run"
    elif (path / "metrics.json").is_file():
        config, kind = read_json_object(path / "metrics.json", FIX), "evaluation"
        if not isinstance(config.get("decision_rule"), dict):
            raise InputError(f"{path}: metrics.json has no decision_rule, so it is not an evaluation; {FIX}")
    else:
        raise InputError(f"{path} is neither a run nor an evaluation (no config.json or metrics.json); {FIX}")
    file = path / "predictions.csv"
    if not file.is_file():
        raise InputError(f"{path} has no predictions.csv to compare; {FIX}")
    try:
        frame = csv_unescape(pd.read_csv(file, dtype=str, keep_default_na=False))
    except (pd.errors.ParserError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{file} is not a readable predictions file ({str(exc).strip().splitlines()[0][:120]}); "
                         "rerun the command that wrote it") from None
    names = [c[2:] for c in frame.columns if c.startswith("p_")]
    missing = [c for c in ("image_id", "split", "true", "predicted", *(f"logp_{n}" for n in names))
               if c not in frame.columns]
    if missing or len(names) < 2:
        raise InputError(f"{file} lacks the column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(missing) or 'p_<class> (two or more)'} that compare reads; it was written by "
                         "an older version or by hand: rerun the command that wrote it")
    check_values(frame, names, file)
    if kind == "head run" and "fold" in frame.columns and (frame["fold"] != "").any():
        kind = "folds run"
    return RunRows(label, path, kind, frame, names, config)


def check_values(frame, names: list[str], file: Path) -> None:
    """predictions.csv's values that compare reads: p_/logp_ numbers (converted in place), classes of the run, fold
    numbers; a damaged or hand-edited file refused in one line naming the column."""
    for column in [f"p_{n}" for n in names] + [f"logp_{n}" for n in names]:
        try:
            frame[column] = np.asarray(frame[column], dtype=np.float64)
        except ValueError:
            raise InputError(f"{file}: column {column} holds a value that is not a number; rerun the command that "
                             "wrote it") from None
    for column, allowed in (("true", {"", *names}), ("predicted", set(names))):
        bad = sorted(set(frame[column]) - allowed)
        if bad:
            raise InputError(f"{file}: column {column} holds {bad[0]!r}, not a class of the run ({', '.join(names)});"
                             " rerun the command that wrote it")
    if "fold" in frame.columns and not all(f == "" or f.isdigit() and int(f) > 0 for f in frame["fold"]):
        raise InputError(f"{file}: column fold holds a value that is not a fold number (1, 2, ...); rerun the "
                         "command that wrote it")


def compared_rows(run: RunRows, oof: bool):
    """The rows of `run` that are compared: out-of-fold rows of a folds run (`oof`), every labeled row of an
    evaluation, else the labeled rows of the test split; refused when there are none."""
    f = run.frame
    labeled = f["true"] != ""
    if oof:
        rows, what = labeled & (f["fold"] != ""), "out-of-fold rows"
    elif run.kind == "evaluation":
        rows, what = labeled, "evaluated images"
    else:
        rows, what = labeled & (f["split"] == "test"), "test split"
    if not rows.any():
        raise InputError(f"run {run.path} has no labeled {what} in predictions.csv (a `--folds K --test 0` run has "
                         "none: compare it with other folds runs on their out-of-fold rows, or pass --cache EXT)")
    chosen = f[rows]
    dup = chosen["image_id"][chosen["image_id"].duplicated()]
    if len(dup):
        raise InputError(f"{run.path / 'predictions.csv'} lists image {dup.iloc[0]!r} twice among its {what}; "
                         "rerun the command that wrote it")
    return chosen.set_index("image_id", drop=False), what


def align(runs: list[RunRows], frames: list, intersect: bool) -> tuple[list, dict]:
    """The runs' rows put in one order (run A's), with the record of which images were compared: every run must
    have scored the same images (refused with the counts of the first pair that differs), or with --intersect
    the images every run scored."""
    sets = [set(f.index) for f in frames]
    first = next((i for i in range(1, len(runs)) if sets[i] != sets[0]), None)
    shared = set.intersection(*sets)
    record = {"intersect": False, "images_per_run": {r.label: len(f) for r, f in zip(runs, frames)}}
    if first is not None:
        a, b = runs[0].label, runs[first].label
        counts = (f"{len(sets[0] - sets[first])} only in {a}, {len(sets[first] - sets[0])} only in {b}, "
                  f"{len(sets[0] & sets[first])} shared")
        if not intersect:
            raise InputError(f"runs {a} and {b} were not scored on the same images ({counts}); a paired comparison "
                             "needs the same images: compare runs of one split (train-head --split-from) or "
                             f"evaluations of one cache, or pass --intersect to compare on the {len(shared)} images "
                             "every run scored")
        if not shared:
            raise InputError(f"runs {a} and {b} share no image ({counts}); there is nothing to compare them on")
        record |= {"intersect": True, "first_difference": {"a": a, "b": b, "counts": counts},
                   "left_out": {r.label: len(s - shared) for r, s in zip(runs, sets)}}
    order = [i for i in frames[0].index if i in shared]
    aligned = [f.loc[order] for f in frames]
    for r, f in zip(runs[1:], aligned[1:]):
        differs = (f["true"].to_numpy() != aligned[0]["true"].to_numpy())
        if differs.any():
            k = int(np.argmax(differs))
            raise InputError(f"image {order[k]!r} is labelled {aligned[0]['true'].iloc[k]!r} in {runs[0].label} and "
                             f"{f['true'].iloc[k]!r} in {r.label} ({int(differs.sum())} images differ): the runs map "
                             "the classes differently; compare runs of one task (the same --class-map)")
    return aligned, record | {"images": len(order)}


def common_classes(runs: list[RunRows]) -> list[str]:
    """The runs' classes (run A's order); refused, naming them, when a run has others."""
    names = runs[0].class_names
    for r in runs[1:]:
        if set(r.class_names) != set(names):
            raise InputError(f"runs {runs[0].label} ({', '.join(names)}) and {r.label} ({', '.join(r.class_names)}) "
                             "predict different classes; compare runs of one task (the same --class-map)")
    return list(names)


def recorded_point(run: RunRows, oof: bool) -> tuple[str | None, object]:
    """(positive class, threshold) of a run's operating point: a float, a list of each fold's (out of fold, from
    metrics.json's "oof"), or None."""
    if run.kind == "evaluation":
        rule = run.config.get("decision_rule") or {}
        return rule.get("positive"), rule.get("threshold")
    if oof:
        file = run.path / "metrics.json"
        metrics = read_json_object(file, FIX) if file.is_file() else {}
        point = (metrics.get("oof") or {}).get("operating_point") or {}
        return point.get("positive"), point.get("thresholds")
    rule = DecisionRule.of(run.config)
    return rule.positive, rule.threshold


def choose_positive(runs: list[RunRows], points: list, names: list[str], given: str | None) -> int:
    """--positive, else the class of the runs' operating points (refused when they differ), else the melanoma-named
    class, else of two classes class 1; refused when none of these names one."""
    if given is not None:
        return positive_index(names, given)
    recorded = {p for p, _ in points if p}
    if len(recorded) > 1:
        shown = ", ".join(f"{r.label}: {p or 'none'}" for r, (p, _) in zip(runs, points))
        raise InputError(f"the runs' operating points are for different classes ({shown}); pass --positive CLASS "
                         "to compare them on one")
    if recorded and recorded <= set(names):
        return names.index(recorded.pop())
    k = positive_index(names, None)
    if k is None and len(names) == 2:
        k = binary_positive(names)
    if k is None:
        raise InputError(f"no positive class for the AUC and the operating point: the runs record none and no class "
                         f"is named mel/melanoma; pass --positive CLASS (one of {', '.join(names)})")
    return k


def scored(run: RunRows, frame, names: list[str], positive: int, point: tuple, oof: bool) -> tuple[Scored, dict]:
    """The run's decisions on the aligned rows (`Scored`) and how its operating point flags a row."""
    logp = np.column_stack([np.asarray(frame[f"logp_{n}"], dtype=np.float64) for n in names])  # (N, C)
    p_pos = np.asarray(frame[f"p_{names[positive]}"], dtype=np.float64)
    pred = np.array([names.index(v) for v in frame["predicted"]], dtype=np.int64)
    recorded, threshold = point
    by_class = pred == positive
    if recorded != names[positive] or threshold is None:
        why = ("no operating point recorded" if threshold is None else
               f"its operating point is for {recorded}, not {names[positive]}")
        return Scored(pred, ovr_scores(logp)[:, positive], by_class), {
            "flagged_by": f"predicted class == {names[positive]} ({why})", "threshold": None}
    if oof:  # each out-of-fold row by its own fold's threshold; a fold without one by its predicted class
        if not isinstance(threshold, list) or max(int(k) for k in frame["fold"]) > len(threshold):
            raise InputError(f"{run.path / 'metrics.json'}: oof.operating_point.thresholds does not name a threshold "
                             "for each fold of predictions.csv; the run directory is damaged: train it again")
        t = np.array([np.nan if threshold[int(k) - 1] is None else threshold[int(k) - 1] for k in frame["fold"]])
        flagged = np.where(np.isnan(t), by_class, p_pos >= np.nan_to_num(t))
        return Scored(pred, ovr_scores(logp)[:, positive], flagged), {
            "flagged_by": f"p({names[positive]}) \u2265 its fold's threshold", "threshold": list(threshold)}
    return Scored(pred, ovr_scores(logp)[:, positive], p_pos >= float(threshold)), {
        "flagged_by": f"p({names[positive]}) \u2265 {float(threshold):.4g} (the run's operating point)",
        "threshold": float(threshold)}


def compare(runs: list[RunRows], intersect: bool, given: str | None, resamples: int, seed: int) -> tuple[dict, tuple]:
    """comparison.json's figures of the runs, and the arrays the figures draw (y, positive, [Scored])."""
    names = common_classes(runs)
    oof = all(r.kind == "folds run" for r in runs)
    picked = [compared_rows(r, oof) for r in runs]
    frames, rows = align(runs, [f for f, _ in picked], intersect)
    points = [recorded_point(r, oof) for r in runs]
    positive = choose_positive(runs, points, names, given)
    y = np.array([names.index(v) for v in frames[0]["true"]], dtype=np.int64)
    groups = frames[0]["group"].to_numpy(dtype=str) if "group" in frames[0].columns else np.full(len(y), "")
    units = resampling_units(groups)
    decisions, how = zip(*(scored(r, f, names, positive, p, oof) for r, f, p in zip(runs, frames, points)))
    pairs = list(itertools.combinations(range(len(runs)), 2))
    diffs = paired_bootstrap(y, positive, list(decisions), pairs, units, seed, resamples)
    is_pos = y == positive
    out = []
    for (i, j), d in zip(pairs, diffs):
        test = delong(is_pos, decisions[i].score, decisions[j].score)
        out.append({"a": runs[i].label, "b": runs[j].label, "metrics": d, "delong": test})
    survivors = adjust(out)
    probas = [np.column_stack([np.asarray(f[f"p_{n}"], dtype=np.float64) for n in names]) for f in frames]
    calibration = {r.label: calibration_figures(y, p, None, d.pred) for r, p, d in zip(runs, probas, decisions)}
    record = {
        "runs": [{"label": r.label, "path": str(r.path), "kind": r.kind, "rows": picked[k][1]} | how[k]
                 for k, r in enumerate(runs)],
        "class_names": names, "positive": names[positive],
        "rows": rows | {"what": picked[0][1], "lesions": int(units.max()) + 1 if len(units) else 0,
                        "positives": int(is_pos.sum()),
                        "positive_lesions": int(len(np.unique(units[is_pos]))),
                        "grouped": bool(any(g for g in groups)), "groups_from": runs[0].label},
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95, "unit": "lesion (group id), or image"},
        "alpha": ALPHA, "metrics": list(PAIRED_METRICS), "pairs": out, "survivors": survivors,
        # each run's probabilities as served, against its own decisions (calibration_figures' "before": as given)
        "calibration": {k: {n.replace("_before", ""): v for n, v in c.items()} for k, c in calibration.items()}}
    return record, (y, positive, list(decisions))


def adjust(pairs: list[dict]) -> dict:
    """Holm's adjustment over every bootstrap p-value (each pair, each figure) and, as their own family, over the
    DeLong p-values; each record gets its `p_holm` and `survives`. The survivors, in words."""
    keys = [(k, m) for k, p in enumerate(pairs) for m in PAIRED_METRICS]
    adjusted = holm([pairs[k]["metrics"][m]["p_bootstrap"] for k, m in keys])
    for (k, m), p in zip(keys, adjusted):
        pairs[k]["metrics"][m] |= {"p_holm": p, "survives": p is not None and p <= ALPHA}
    tested = [p["delong"] for p in pairs]
    for d, p in zip(tested, holm([t["p"] if t else None for t in tested])):
        if d is not None:
            d |= {"p_holm": p, "survives": p is not None and p <= ALPHA}
    survive = [{"a": pairs[k]["a"], "b": pairs[k]["b"], "figure": m} | {x: pairs[k]["metrics"][m][x] for x in
               ("difference", "lower", "upper", "p_holm")} for (k, m), p in zip(keys, adjusted)
               if p is not None and p <= ALPHA]
    return {"tests": sum(p is not None for p in adjusted), "family": "bootstrap p-values of every pair and figure",
            "delong_tests": sum(t is not None and t.get("p") is not None for t in tested), "differences": survive}
