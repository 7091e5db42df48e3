"""A sweep's leaderboard: its configurations ranked by a validation metric (`write_leaderboard`, and as Markdown
`format_leaderboard`), and the winner chosen from it (`choose_winner`: the simplest head among those tied with the
best, `head_size` saying which is simplest)."""

from __future__ import annotations

from pathlib import Path

from ..stats import fmt
from ..util import md_table, write_csv

METRICS = ("balanced_accuracy", "accuracy", "roc_auc_macro", "melanoma_sensitivity")


def metric_score(metrics: dict, metric: str) -> float | None:
    """One ranking metric of a compute_metrics dict (None when it has none, e.g. no melanoma class)."""
    if metric == "melanoma_sensitivity":
        return (metrics.get("melanoma") or {}).get("sensitivity")
    return metrics.get(metric)


def write_leaderboard(results: list[dict], metric: str, out: Path) -> list[dict]:
    """The configurations' results ranked by `metric` (best first, unscored last), written to out/leaderboard.csv."""
    import pandas as pd

    rows = []
    for r in results:
        s = r["summary"]
        cfg = r["config"]
        rows.append({"id": r["id"], "score": s[metric]["mean"], "std": s[metric]["std"],
                     "folds": s[metric].get("n", len(r.get("folds") or ())),  # scores the mean and std rest on
                     **{f"{k}": s[k]["mean"] for k in METRICS if k != metric},
                     "best_epoch": s["best_epoch"]["mean"], "seconds": round(r["seconds"], 2),
                     **{k: (",".join(map(str, v)) or "linear" if k == "hidden" else v) for k, v in cfg.items()},
                     "baseline": bool(r.get("baseline")), "run_dir": str(out / "configs" / r["id"])})
    rows.sort(key=lambda r: (r["score"] is None, -(r["score"] or 0), r["id"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    df = pd.DataFrame(rows)
    if len(df):
        df = df[["rank", *[c for c in df.columns if c != "rank"]]]
    write_csv(out / "leaderboard.csv", df.rename(columns={"score": metric, "std": f"{metric}_std"}))
    return rows


def format_leaderboard(rows: list[dict], metric: str, top: int | None = None) -> str:
    """The ranked rows as a Markdown table (leaderboard.md, and the top `top` in the command's output)."""
    spread = f" (mean ± SD over {_folds(rows)} folds)" if any(r["std"] is not None for r in rows) else ""
    header = ["rank", f"{metric}{spread}", "hidden", "dropout", "optimizer", "lr", "decay", "batch", "class weight",
              "seed", "epochs", "id"]
    cells = []
    for r in rows[:top]:
        score = fmt(r["score"]) + ("" if r["std"] is None else f" ± {fmt(r['std'])}")
        epochs = "-" if r["best_epoch"] is None else f"{r['best_epoch']:.0f}"
        hidden = str(r["hidden"] or "linear") + (" (baseline)" if r.get("baseline") else "")
        cells.append([r["rank"], score, hidden, r["dropout"], r["optimizer"], f"{r['lr']:g}",
                      f"{r['decay_rate']:g}/{r['decay_steps']}", r["batch_size"], r["class_weight"], r["seed"], epochs,
                      r["id"]])
    return "\n".join(md_table(header, cells))


def _folds(rows: list[dict]) -> str:
    """The number of folds behind the rows' spreads ("3", or "2-3" where a metric was undefined in some folds)."""
    ks = sorted({r.get("folds") for r in rows if r["std"] is not None and r.get("folds")})
    return "?" if not ks else str(ks[0]) if len(ks) == 1 else f"{ks[0]}-{ks[-1]}"


def head_size(row: dict) -> tuple[int, int]:
    """How complex a leaderboard row's head is: (hidden units in all, hidden layers); a linear head is (0, 0)."""
    hidden = [int(h) for h in str(row["hidden"] or "").split(",") if h.strip().isdigit() and int(h)]
    return sum(hidden), len(hidden)


def choose_winner(rows: list[dict], metric: str) -> tuple[str | None, str]:
    """(id, how) of the winner: the best mean score; configurations whose mean is within one standard deviation
    (the sample standard deviation over folds) of the best count as tied, and the simplest head among them wins
    (fewest hidden units, then layers; then the higher mean). Without a spread (no folds) the best mean wins.
    The linear baseline row a sweep adds (`baseline`) is there to be compared with, never chosen."""
    scored = [r for r in rows if r["score"] is not None and not r.get("baseline")]
    if not scored:
        return None, "no configuration has a score"
    best = scored[0]
    if best["std"] is None:
        return best["id"], f"highest validation {metric} ({fmt(best['score'])}, one validation split, no spread)"
    floor = best["score"] - best["std"]
    tied = [r for r in scored if r["score"] >= floor]
    winner = min(tied, key=lambda r: (head_size(r), -r["score"], r["id"]))
    how = (f"highest mean {metric} over {_folds([best])} folds is {fmt(best['score'])} ± {fmt(best['std'])} "
           f"(sample standard deviation; {best['id']}); "
           f"{len(tied)} configuration{'s' * (len(tied) != 1)} within one standard deviation of it "
           f"(mean >= {fmt(floor)}) count as tied, and the simplest head among them wins (fewest hidden units, "
           f"then fewest layers): {winner['id']}")
    return winner["id"], how
