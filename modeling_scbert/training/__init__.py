"""Training: masked-expression pretraining and cell-type fine-tuning with the stock ``transformers.Trainer``.

- :mod:`.workflows`: :func:`pretrain`, :func:`finetune` and their command-line entries;
- :mod:`.arguments`: the options and defaults of ``scbert pretrain`` / ``scbert finetune``;
- :mod:`.data` and :mod:`.labels`: encoding the training cells, the class list, the evaluation split;
- :mod:`.model_setup`: which model and tokenizer a run starts from, ``NEW_MODEL_DEFAULTS``, the presets;
- :mod:`.trainer`: :class:`ScBertTrainer`, the feature-redraw callback, the class-weighted loss;
- :mod:`.metrics`: the metrics, the per-class report, the majority-class floor, the final evaluation;
- :mod:`.run_card`: the model card's facts of one run, before, while and after it trains;
- :mod:`.ensemble`: :func:`finetune_ensemble`, one fine-tuning per seed.
"""

from tokenization._imports import lazy_attributes

_LAZY = {
    "ScBertDataArguments": "modeling_scbert.training.arguments",
    "ScBertFinetuningArguments": "modeling_scbert.training.arguments",
    "ScBertModelArguments": "modeling_scbert.training.arguments",
    "finetune_ensemble": "modeling_scbert.training.ensemble",
    "classification_report": "modeling_scbert.training.metrics",
    "compute_classification_metrics": "modeling_scbert.training.metrics",
    "majority_class_baseline": "modeling_scbert.training.metrics",
    "NEW_MODEL_DEFAULTS": "modeling_scbert.training.model_setup",
    "apply_finetuning_preset": "modeling_scbert.training.model_setup",
    "parse_config_overrides": "modeling_scbert.training.model_setup",
    "ScBertModelCardCallback": "modeling_scbert.training.run_card",
    "ScBertFeatureRedrawCallback": "modeling_scbert.training.trainer",
    "ScBertTrainer": "modeling_scbert.training.trainer",
    "ScBertWeightedLoss": "modeling_scbert.training.trainer",
    "balanced_class_weights": "modeling_scbert.training.trainer",
    "finetune": "modeling_scbert.training.workflows",
    "finetune_main": "modeling_scbert.training.workflows",
    "pretrain": "modeling_scbert.training.workflows",
    "pretrain_main": "modeling_scbert.training.workflows",
}
# What the module modeling_scbert.training gave before 0.2 and now lives elsewhere.
_MOVED = {
    "COMMAND_ARGUMENTS": "modeling_scbert.training.arguments",
    "ScBertReadingArguments": "tokenization.reading",
    "argument_parser": "modeling_scbert.training.arguments",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals(), _MOVED)

__all__ = [
    "NEW_MODEL_DEFAULTS",
    "ScBertDataArguments",
    "ScBertFeatureRedrawCallback",
    "ScBertFinetuningArguments",
    "ScBertModelArguments",
    "ScBertModelCardCallback",
    "ScBertTrainer",
    "ScBertWeightedLoss",
    "apply_finetuning_preset",
    "balanced_class_weights",
    "classification_report",
    "compute_classification_metrics",
    "finetune",
    "finetune_ensemble",
    "finetune_main",
    "majority_class_baseline",
    "parse_config_overrides",
    "pretrain",
    "pretrain_main",
]
