"""A sweep's leaderboard: ranked by the chosen metric with unscored configurations last, written as CSV and Markdown;
the winner's rule (choose_winner, head_size) is tested with the clinical figures in test_clinical.py."""

from __future__ import annotations

import pandas as pd

from bottleneck.heads.model import HeadConfig
from bottleneck.runs.leaderboard import METRICS, choose_winner, format_leaderboard, metric_score, write_leaderboard


def result(cid: str, score: float | None, std: float | None = None, folds: int = 3, **config) -> dict:
    """A configuration's result.json as evaluate_config writes it."""
    summary = {k: {"mean": None if score is None else score - 0.01 * i, "std": std, "n": folds}
               for i, k in enumerate(METRICS)}
    summary["best_epoch"] = {"mean": 4.0, "std": None, "n": folds}
    return {"id": cid, "config": HeadConfig(**config).to_dict(), "summary": summary, "seconds": 1.234}


def test_rows_are_ranked_by_the_metric_and_written_with_their_hyperparameters(tmp_path):
    results = [result("b", 0.7), result("none", None), result("a", 0.7, hidden=(64,)), result("c", 0.9, lr=3e-4)]
    rows = write_leaderboard(results, "balanced_accuracy", tmp_path)
    assert [(r["rank"], r["id"]) for r in rows] == [(1, "c"), (2, "a"), (3, "b"), (4, "none")]  # ties by id
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert list(board.columns[:4]) == ["rank", "id", "balanced_accuracy", "balanced_accuracy_std"]
    assert list(board["id"]) == ["c", "a", "b", "none"]
    assert board["hidden"].astype(str).tolist()[:2] == ["512,512", "64"]
    assert str(tmp_path / "configs" / "c") == board["run_dir"][0] and board["seconds"][0] == 1.23

    text = format_leaderboard(rows, "balanced_accuracy", top=2)
    lines = text.splitlines()
    assert lines[0].startswith("| rank | balanced_accuracy | hidden |") and len(lines) == 4
    assert lines[2] == "| 1 | 0.900 | 512,512 | 0.5 | rmsprop | 0.0003 | 0.94/100 | 128 | balanced | 0 | 4 | c |"


def test_a_spread_is_shown_and_the_winner_says_how_it_was_chosen(tmp_path):
    rows = write_leaderboard([result("big", 0.80, 0.05), result("small", 0.78, 0.04, hidden=(16,))], "accuracy",
                             tmp_path)
    assert "(mean ± SD over 3 folds)" in format_leaderboard(rows, "accuracy").splitlines()[0]
    assert list(pd.read_csv(tmp_path / "leaderboard.csv")["folds"]) == [3, 3]
    winner, how = choose_winner(rows, "accuracy")
    assert winner == "small" and "simplest head" in how and "over 3 folds" in how and "sample standard" in how


def test_melanoma_sensitivity_is_read_from_its_own_block():
    assert metric_score({"melanoma": {"sensitivity": 0.8}}, "melanoma_sensitivity") == 0.8
    assert metric_score({"accuracy": 0.5}, "melanoma_sensitivity") is None
    assert metric_score({"accuracy": 0.5}, "accuracy") == 0.5


def test_the_linear_baseline_is_ranked_and_named_but_never_chosen(tmp_path):
    baseline = result("lin", 0.95, 0.01, hidden=()) | {"baseline": True}
    rows = write_leaderboard([result("big", 0.80, 0.05), baseline], "accuracy", tmp_path)
    assert [r["id"] for r in rows] == ["lin", "big"]  # ranked like any configuration
    assert "| linear (baseline) |" in format_leaderboard(rows, "accuracy")
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    assert board["hidden"].tolist() == ["linear", "512,512"] and board["baseline"].tolist() == [True, False]
    assert choose_winner(rows, "accuracy")[0] == "big"
    # a linear head the grid asked for is a candidate like any other, and the simplest
    rows = write_leaderboard([result("big", 0.80, 0.05), result("lin", 0.79, 0.01, hidden=())], "accuracy", tmp_path)
    assert choose_winner(rows, "accuracy")[0] == "lin"
