"""The numbers of a run, in numpy, scipy and scikit-learn only (no Keras, no h5py): imbalance-aware metrics and the
one decision rule (`metrics`), the lesion bootstrap (`bootstrap`) and the intervals it gives (`intervals`),
calibration (`calibration`), the figures a clinician can defend (`clinical`) and runs compared as pairs (`paired`).

What other packages may use is named here; everything else is private to the package."""


from .bootstrap import bootstrap, bootstrap_record, interval_of, metric_intervals, ratio, resample_weights
from .calibration import (
    DECISIONS,
    Calibration,
    DecisionRule,
    calibrate_on_validation,
    calibration_figures,
    check_decision,
    uncalibrated_record,
)
from .clinical import (
    TARGET_SENSITIVITY,
    ClinicalOptions,
    binary_stats,
    binary_support,
    check_target,
    choose_threshold,
    clinical_results,
    few_groups_warning,
    parse_subgroups,
    positive_index,
    small_class_warnings,
    subgroup_columns,
    subgroup_table,
    warn,
)
from .intervals import FEW_LESIONS, proportion_interval
from .limitations import data_checks, limitations
from .metrics import (
    binary_positive,
    compute_metrics,
    decide,
    evaluate_splits,
    fmt,
    format_table,
    log_of,
    log_softmax,
    ovr_scores,
)
from .paired import ALPHA, PAIRED_METRICS, PAIRED_RESAMPLES, Scored, bootstrap_p, delong, holm, paired_bootstrap
from .units import group_keys, resampling_units

__all__ = [
    "DECISIONS", "binary_positive", "check_decision", "log_of", "log_softmax", "ovr_scores",
    "Calibration", "ClinicalOptions", "DecisionRule", "TARGET_SENSITIVITY", "binary_stats", "binary_support",
    "bootstrap", "bootstrap_record", "calibrate_on_validation", "calibration_figures", "check_target",
    "choose_threshold", "clinical_results", "compute_metrics", "data_checks", "decide", "evaluate_splits",
    "few_groups_warning", "fmt", "format_table", "group_keys", "limitations", "metric_intervals", "parse_subgroups",
    "positive_index", "resampling_units", "small_class_warnings", "subgroup_columns", "subgroup_table",
    "uncalibrated_record", "warn",
    "FEW_LESIONS", "interval_of", "proportion_interval", "ratio", "resample_weights",
    "ALPHA", "PAIRED_METRICS", "PAIRED_RESAMPLES", "Scored", "bootstrap_p", "delong", "holm", "paired_bootstrap",
]
