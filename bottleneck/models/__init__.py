"""Backbone and head as one model from images: the classifier, fine-tuning (`finetune`, resumable through
`checkpoints`, scored as a head run is by `finetune_eval`), and serving it (`serve`: predict and export).

What other packages may use is named here; everything else is private to the package."""


from .finetune import FINETUNE_OPTIONS, PRECISION_HELP, FineTuneOptions, FineTuneResult, fine_tune, parse_unfreeze
from .serve import ExportResult, PredictResult, export, predict

__all__ = [
    "FINETUNE_OPTIONS", "PRECISION_HELP",
    "ExportResult", "FineTuneOptions", "FineTuneResult", "PredictResult", "export", "fine_tune", "parse_unfreeze",
    "predict",
]
