"""The classifier head on cached features (`model`; applied with numpy, without TensorFlow: `dense`), its callbacks,
the grouped splits and CV folds (`splits`) and the class maps that define a task (`class_map`).

What other packages may use is named here; everything else is private to the package."""


from .callbacks import epoch_bar, step_bar
from .class_map import (
                        STAR,
                        ClassMap,
                        describe,
                        map_classes,
                        missing_sources,
                        parse_class_map,
                        recorded_map,
                        run_class_names,
)
from .dense import DenseHead, keras_head, read_dense_head
from .duplicates import indistinct_features
from .model import (
                        HEAD_OPTIONS,
                        OPTIMIZERS,
                        HeadConfig,
                        TrainedHead,
                        class_weights,
                        fold_calibration,
                        make_optimizer,
                        parse_hidden,
                        predict_log_proba,
                        predict_proba,
)
from .splits import (
                        DUPLICATES,
                        EARLY_STOP_FRACTION,
                        SPLITS,
                        SplitSpec,
                        check_duplicates,
                        check_split,
                        cv_parts,
                        duplicate_groups,
                        duplicates_metrics,
                        duplicates_record,
                        early_stopping_slice,
                        find_near_duplicates,
                        join_near_duplicates,
                        load_split,
                        make_folds,
                        make_split,
                        recorded_groups,
                        save_split,
)
from .stack import Part, StackedHead, fit_head, fit_stack

__all__ = [
    "DenseHead", "keras_head", "read_dense_head", "Part", "StackedHead", "fit_stack",
    "DUPLICATES", "indistinct_features", "check_duplicates", "duplicate_groups", "duplicates_metrics",
    "duplicates_record",
    "find_near_duplicates", "join_near_duplicates", "recorded_groups",
    "EARLY_STOP_FRACTION", "HEAD_OPTIONS", "cv_parts", "early_stopping_slice", "make_folds",
    "ClassMap", "HeadConfig", "OPTIMIZERS", "SPLITS", "STAR", "SplitSpec", "TrainedHead", "check_split",
    "class_weights", "describe", "epoch_bar", "fit_head", "fold_calibration", "load_split", "make_optimizer",
    "make_split", "map_classes", "missing_sources", "parse_class_map", "parse_hidden", "predict_log_proba",
    "predict_proba", "recorded_map",
    "run_class_names", "save_split", "step_bar",
]
