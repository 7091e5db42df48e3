"""The numbers of a run, in numpy, scipy and scikit-learn only (no Keras, no h5py): imbalance-aware metrics and the
one decision rule (`metrics`), the lesion bootstrap (`bootstrap`), calibration (`calibration`) and the figures a
clinician can defend (`clinical`).

What other packages may use is named here; everything else is private to the package."""


from .bootstrap import bootstrap, bootstrap_record, metric_intervals
from .calibration import Calibration, DecisionRule, calibration_figures
from .clinical import (
    TARGET_SENSITIVITY,
    ClinicalOptions,
    binary_stats,
    binary_support,
    check_target,
    choose_threshold,
    clinical_results,
    few_groups_warning,
    limitations,
    parse_subgroups,
    positive_index,
    small_class_warnings,
    subgroup_columns,
    warn,
)
from .metrics import compute_metrics, decide, evaluate_splits, fmt, format_table
from .units import group_keys, resampling_units

__all__ = [
    "Calibration", "ClinicalOptions", "DecisionRule", "TARGET_SENSITIVITY", "binary_stats", "binary_support",
    "bootstrap", "bootstrap_record", "calibration_figures", "check_target", "choose_threshold", "clinical_results",
    "compute_metrics", "decide", "evaluate_splits", "few_groups_warning", "fmt", "format_table", "group_keys",
    "limitations", "metric_intervals", "parse_subgroups", "positive_index", "resampling_units", "small_class_warnings",
    "subgroup_columns", "warn",
]
