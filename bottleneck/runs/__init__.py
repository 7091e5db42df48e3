"""Runs of heads and what they write: the run directory (`directory`), train-head (`train`), evaluate, sweep
(`sweep`, its `grid` and `leaderboard`; its CV folds are heads' splits), the plots, the report and the sanity checks;
runs compared as pairs on the same images (`compare`).

What other packages may use is named here; everything else is private to the package."""


from .compare import CompareResult, compare_runs
from .directory import (
                        check_free,
                        load_head,
                        load_keras,
                        publish,
                        read_config,
                        restore_interrupted,
                        staged,
                        staging_dir,
                        write_history,
                        write_predictions,
)
from .evaluate import EvalResult, evaluate_run
from .finetune_report import paired_with_head, write_finetune_report
from .folds import train_head_run
from .grid import GRID_KEYS, expand_grid, grid_from_options
from .leaderboard import format_leaderboard
from .plots import plot_confusion, plot_curves, plot_reliability, plot_roc
from .sweep import SweepOptions, SweepResult, run_sweep
from .train import RunOptions, RunResult

__all__ = [
    "CompareResult", "compare_runs",
    "EvalResult", "GRID_KEYS", "RunOptions", "RunResult", "SweepOptions", "SweepResult", "check_free", "evaluate_run",
    "expand_grid", "format_leaderboard", "grid_from_options", "load_head", "load_keras", "plot_confusion",
    "plot_curves", "plot_reliability", "plot_roc", "publish", "read_config", "restore_interrupted", "run_sweep",
    "staged", "paired_with_head",
    "staging_dir", "train_head_run", "write_finetune_report", "write_history", "write_predictions",
]
