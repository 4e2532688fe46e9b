"""The facts a model card states: :class:`ScBertCardData`, a ``huggingface_hub.CardData``, and where they come from.

The architecture and label map come from the model's config, the input contract from the tokenizer; the training
data, per-label cell counts, hyperparameters, evaluation metrics and provenance come from the caller, from a
``Trainer`` run (:class:`~modeling_scbert.trainer.ScBertModelCardCallback` captures them while training), or, for a
saved folder, from its ``scbert_card.json`` and the ``Trainer``'s files. A fact that is not known stays ``None`` and
its section is left out; nothing is invented. ``ScBertCardData.to_dict()`` is the card's YAML metadata (license, tags,
``model-index``, ...) as the Hub reads it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from huggingface_hub import CardData, EvalResult, ModelCardData

from tokenization import ScBertTokenizer
from tokenization.atomic_files import write_text_atomically
from tokenization.genes import detect_identifier_type, ensembl_species_prefix

__all__ = [
    "CARD_FACTS_NAME",
    "PER_CLASS_METRICS",
    "TAGS",
    "ModelCardError",
    "ScBertCardData",
    "metrics_to_evaluation",
    "report_to_evaluation",
    "state_hyperparameters",
]

CARD_FACTS_NAME = "scbert_card.json"
TAGS = ["single-cell", "scRNA-seq", "cell-type-annotation", "scbert", "performer", "biology"]
_METRIC_PREFIXES = ("eval_", "test_", "predict_")
PER_CLASS_METRICS = ("precision", "recall", "f1", "support")
# Ensembl gene-id prefixes of the species scBERT users meet; a symbol panel says nothing certain about species.
_ENSEMBL_SPECIES = {
    "ENSG": "human",
    "ENSMUSG": "mouse",
    "ENSRNOG": "rat",
    "ENSDARG": "zebrafish",
    "ENSMMUG": "macaque",
}


class ModelCardError(ValueError):
    """A model card could not be rendered, or a rendered card does not describe its model folder."""


@dataclass
class ScBertCardData(CardData):
    """The facts a model card is rendered from. ``None`` means "not known": the card leaves that section out.

    A ``huggingface_hub.CardData``: ``to_dict()`` / ``to_yaml()`` give the card's YAML metadata, so that
    ``huggingface_hub.ModelCard.from_template(card_data, ...)`` renders with it.

    Parameters
    ----------
    model_name
        Title of the card; the repository name or the folder name when ``None``.
    license
        SPDX-style license id of the weights (YAML ``license``). Converted published checkpoints default to
        ``"other"``: their own terms apply.
    base_model
        Hub id of the model this one was fine-tuned from (YAML ``base_model``).
    species
        Species of the training cells, e.g. ``"human"``. Read from an Ensembl panel's prefixes when ``None``.
    training_data
        ``{"name": ..., "hub_id": ..., "description": ..., "num_cells": ...}``; any key may be missing.
    label_counts
        Training cells per label, ``{label: count}``.
    hyperparameters
        Training settings, ``{name: value}``.
    evaluation
        ``{"dataset_name", "dataset_id", "split", "num_cells", "accuracy", "macro_f1",
        "per_class": {label: {"precision", "recall", "f1", "support"}},
        "majority_class": {"label", "accuracy", "macro_f1"}, "missed_classes": [{"label", "cells", "predicted",
        "f1"}]}``; any key may be missing. ``majority_class`` holds the scores of always predicting the most frequent
        training label; the card warns when the model is no better. ``missed_classes`` lists the classes of the
        evaluation cells the model never predicts or predicts with F1 near 0; the card names them in a warning.
    provenance
        For converted published checkpoints: ``{"source_file", "sha256", "layout"}``.
    novelty
        What the novelty detector's fit measured on held-out cells
        (:func:`modeling_scbert.training.novelty.novelty_facts`): ``{"method", "calibration_cells", "threshold",
        "held_out_flagged", "profile_cells", "left_out_auroc", "left_out_auroc_mean", "left_out_auroc_min",
        "expected_calibration_error", "coverage_accuracy"}``; any key may be missing.
    description
        A free-text paragraph placed under the title.
    """

    model_name: str | None = None
    license: str | None = None
    base_model: str | None = None
    species: str | None = None
    training_data: dict[str, Any] | None = None
    label_counts: dict[str, int] | None = None
    hyperparameters: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    novelty: dict[str, Any] | None = None
    description: str | None = None
    # Derived, never stored: re-read from the model (folder) each time, so that they cannot drift from it.
    architecture: dict[str, Any] | None = field(default=None, repr=False)
    contract: dict[str, Any] | None = field(default=None, repr=False)

    _DERIVED = ("architecture", "contract")

    def facts(self) -> dict[str, Any]:
        """The caller-supplied facts (everything but the derived architecture and contract), without ``None``s."""
        return {k: v for k, v in asdict(self).items() if k not in self._DERIVED and v is not None}

    def merged(self, other: ScBertCardData | dict[str, Any] | None) -> ScBertCardData:
        """A copy in which the facts of ``other`` that are not ``None`` replace these.

        Dict-valued facts (training data, hyperparameters, evaluation, ...) are merged key by key, so partial facts
        from two sources combine.

        Raises
        ------
        ModelCardError
            When ``other`` is a dict naming a fact that does not exist.
        """
        merged = asdict(self)
        if other is None:
            return ScBertCardData(**merged)
        values = other.facts() if isinstance(other, ScBertCardData) else _check_fact_names(other)
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                value = {**merged[key], **{k: v for k, v in value.items() if v is not None}}
            merged[key] = value
        return ScBertCardData(**merged)

    def save(self, model_dir: str | os.PathLike) -> Path:
        """Write the caller-supplied facts to ``scbert_card.json`` in ``model_dir``, so that a later push has them.

        Raises
        ------
        OSError
            When the folder cannot be written.
        """
        path = Path(model_dir) / CARD_FACTS_NAME
        write_text_atomically(path, json.dumps(self.facts(), indent=2) + "\n")
        return path

    def to_dict(self) -> dict[str, Any]:
        """The card's YAML metadata: license, library, tags, base model, datasets, ``model-index`` and our ``scbert``
        block (model class, panel size and hash, labels, source checksum)."""
        arch, contract, evaluation = self.architecture or {}, self.contract or {}, self.evaluation or {}
        eval_results = []
        dataset_name = evaluation.get("dataset_name")
        # The model-index needs a dataset to attach results to; results without one stay in the card's text only.
        for metric, value in (("accuracy", evaluation.get("accuracy")), ("f1", evaluation.get("macro_f1"))):
            if dataset_name and value is not None:
                eval_results.append(
                    EvalResult(
                        task_type="tabular-classification",
                        task_name="Cell-type annotation",
                        dataset_type=evaluation.get("dataset_id") or dataset_name,
                        dataset_name=dataset_name,
                        dataset_split=evaluation.get("split"),
                        metric_type=metric,
                        metric_name="Accuracy" if metric == "accuracy" else "Macro F1",
                        metric_value=round(float(value), 4),
                        metric_config=None if metric == "accuracy" else "macro",
                    )
                )
        datasets = [d for d in ((self.training_data or {}).get("hub_id"), evaluation.get("dataset_id")) if d]
        scbert_facts = {"model_class": arch.get("model_class"), "num_genes": arch.get("num_genes")}
        if contract:
            scbert_facts["panel_hash"] = contract["panel_hash"]
        if arch.get("is_classifier"):
            scbert_facts["num_labels"] = arch["num_labels"]
            scbert_facts["labels"] = arch["labels"]
        if self.provenance and self.provenance.get("sha256"):
            scbert_facts["source_sha256"] = self.provenance["sha256"]
        return ModelCardData(
            license=self.license,
            library_name="transformers",
            tags=list(TAGS),
            base_model=self.base_model,
            datasets=sorted(set(datasets)) or None,
            metrics=sorted({r.metric_type for r in eval_results}) or None,
            model_name=(self.model_name or "scBERT model") if eval_results else None,
            eval_results=eval_results or None,
            scbert=scbert_facts,
        ).to_dict()

    @classmethod
    def from_objects(
        cls,
        config: Any,
        tokenizer: ScBertTokenizer | None,
        facts: ScBertCardData | dict[str, Any] | None = None,
        *,
        num_parameters: int | None = None,
    ) -> ScBertCardData:
        """Collect the facts from a config (an ``ScBertConfig`` or its dict) and a tokenizer.

        Parameters
        ----------
        config
            The model's configuration.
        tokenizer
            The model's tokenizer; ``None`` leaves the input contract out (a push refuses that).
        facts
            Caller-supplied facts (training data, label counts, ...).
        num_parameters
            Parameter count, when known.

        Raises
        ------
        ModelCardError
            When the tokenizer's panel does not fit the config, or ``facts`` names an unknown fact.
        """
        config_dict = config if isinstance(config, dict) else config.to_dict()
        data = cls().merged(facts)
        data.architecture = _architecture(config_dict, num_parameters)
        if tokenizer is not None:
            try:
                tokenizer.check_model_config(config_dict)
            except ValueError as error:
                raise ModelCardError(str(error)) from error
            data.contract = _contract(tokenizer)
            if data.species is None:
                data.species = _species_from_panel(tokenizer.genes)
        if data.provenance and data.license is None:
            data.license = "other"  # a converted published checkpoint: the weights' own terms apply
        return data

    @classmethod
    def from_model_folder(
        cls, model_dir: str | os.PathLike, facts: ScBertCardData | dict[str, Any] | None = None
    ) -> ScBertCardData:
        """Collect the facts from a ``save_pretrained`` folder that also holds the tokenizer.

        Read, in order (later sources fill only what earlier ones left unknown; ``facts`` wins over all):
        ``config.json``, the tokenizer files, ``scbert_card.json``, ``eval_results.json`` / ``all_results.json`` /
        ``trainer_state.json`` (evaluation metrics and training length), ``classification_report.json`` (per-class
        metrics), the safetensors header (parameter count).

        Parameters
        ----------
        model_dir
            The folder.
        facts
            Caller-supplied facts, which replace those found in the folder.

        Raises
        ------
        FileNotFoundError
            When the folder, its ``config.json`` or its tokenizer is missing.
        ModelCardError
            When a file in the folder is not valid JSON, the config is not scBERT's, or a fact is unknown.
        """
        model_dir = Path(model_dir)
        config = read_config(model_dir)
        tokenizer = read_tokenizer(model_dir)
        data = cls().merged(_read_json(model_dir / CARD_FACTS_NAME) or {}).merged(facts)
        labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
        if data.evaluation is None or not any(k in data.evaluation for k in ("accuracy", "macro_f1", "per_class")):
            metrics = _trainer_metrics(model_dir)
            found = metrics_to_evaluation(metrics, labels) if metrics else None
            if found:
                data.evaluation = {**found, **(data.evaluation or {})}
        report = _read_json(model_dir / "classification_report.json")
        if report and (data.evaluation is None or not data.evaluation.get("per_class")):
            data.evaluation = {**(data.evaluation or {}), **report_to_evaluation(report, labels)}
        state = _read_json(model_dir / "trainer_state.json")
        if state:
            data.hyperparameters = {**state_hyperparameters(state), **(data.hyperparameters or {})}
        return cls.from_objects(config, tokenizer, data, num_parameters=_count_saved_parameters(model_dir))


def _check_fact_names(values: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(ScBertCardData)} - set(ScBertCardData._DERIVED)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ModelCardError(f"Unknown model-card facts {unknown}; the known facts are {sorted(known)}.")
    return values


# ------------------------------------------------------------------------------------------- facts from a training run
def metrics_to_evaluation(metrics: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Read accuracy, macro-F1 and per-class metrics out of a ``Trainer`` metrics dict.

    Keys may carry a split prefix (``eval_``, ``test_``, ``predict_``). Recognised: ``accuracy``, ``macro_f1`` (or
    ``f1_macro``) and, per class, ``{precision,recall,f1,support}_{label}`` for the model's labels.

    Parameters
    ----------
    metrics
        The metrics, e.g. the return value of ``Trainer.evaluate``.
    labels
        The model's labels in class-index order.

    Returns
    -------
    The evaluation facts found (possibly empty).
    """
    plain = {}
    for key, value in metrics.items():
        for prefix in _METRIC_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        plain.setdefault(key, value)
    evaluation: dict[str, Any] = {}
    if "accuracy" in plain:
        evaluation["accuracy"] = float(plain["accuracy"])
    for key in ("macro_f1", "f1_macro"):
        if key in plain:
            evaluation["macro_f1"] = float(plain[key])
            break
    per_class = {}
    for label in labels:
        row = {m: plain[f"{m}_{label}"] for m in PER_CLASS_METRICS if f"{m}_{label}" in plain}
        if row:
            per_class[label] = row
    if per_class:
        evaluation["per_class"] = per_class
    return evaluation


def report_to_evaluation(report: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class rows of a scikit-learn ``classification_report(output_dict=True)``.

    Parameters
    ----------
    report
        The report, as ``finetune`` writes it to ``classification_report.json``.
    labels
        The model's labels in class-index order.

    Returns
    -------
    The evaluation facts found (possibly empty).
    """
    per_class = {}
    for label in labels:
        row = report.get(label)
        if isinstance(row, dict):
            values = {"precision": row.get("precision"), "recall": row.get("recall"), "f1": row.get("f1-score")}
            values["support"] = row.get("support")
            per_class[label] = {key: value for key, value in values.items() if value is not None}
    evaluation: dict[str, Any] = {"per_class": per_class} if per_class else {}
    if isinstance(report.get("accuracy"), int | float):
        evaluation["accuracy"] = float(report["accuracy"])
    if isinstance(report.get("macro avg"), dict) and report["macro avg"].get("f1-score") is not None:
        evaluation["macro_f1"] = float(report["macro avg"]["f1-score"])
    return evaluation


def state_hyperparameters(state: Any) -> dict[str, Any]:
    """The training length a ``TrainerState`` (or its ``trainer_state.json`` dict) records, named for the card."""
    keys = {"global_step": "optimisation steps", "num_train_epochs": "epochs", "train_batch_size": "batch size"}
    values = state if isinstance(state, dict) else {key: getattr(state, key, None) for key in keys}
    return {label: values[key] for key, label in keys.items() if values.get(key) is not None}


# ------------------------------------------------------------------------------------ facts from config and tokenizer
def _architecture(config: dict[str, Any], num_parameters: int | None) -> dict[str, Any]:
    architectures = config.get("architectures") or []
    is_classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
    labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)] if is_classifier else []
    keys = ("num_hidden_layers", "hidden_size", "num_attention_heads", "head_dim", "intermediate_size")
    keys += ("num_random_features", "vocab_size", "num_genes", "gene_embedding_type")
    return {
        "model_class": architectures[0] if architectures else "ScBertModel",
        "is_classifier": is_classifier,
        "labels": labels,
        "num_labels": len(labels),
        **{key: config[key] for key in keys},
        "classifier_type": config.get("classifier_type"),
        "classifier_hidden_sizes": config.get("classifier_hidden_sizes"),
        "num_parameters": num_parameters,
        "has_remote_code": bool(config.get("auto_map")),
    }


def _contract(tokenizer: ScBertTokenizer) -> dict[str, Any]:
    return {
        "num_genes": tokenizer.num_genes,
        "sequence_length": tokenizer.sequence_length,
        "panel_hash": tokenizer.panel_hash,
        "identifier_type": detect_identifier_type(list(tokenizer.genes)),
        "example_genes": list(tokenizer.genes[:5]),
        "normalization_target": tokenizer.normalization_target,
        "log_base": tokenizer.log_base,
        "max_bin": tokenizer.max_bin,
        "mask_token_id": tokenizer.mask_token_id,
        "min_gene_overlap": tokenizer.min_gene_overlap,
    }


def _species_from_panel(genes: tuple[str, ...]) -> str | None:
    prefixes = {prefix for prefix in map(ensembl_species_prefix, genes) if prefix}
    if len(prefixes) == 1 and detect_identifier_type(list(genes)) == "ensembl":
        return _ENSEMBL_SPECIES.get(prefixes.pop())
    return None


# -------------------------------------------------------------------------------------------------- a saved folder
def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path} is not valid JSON ({error}); fix or remove it.") from error


def read_config(model_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of an scBERT model folder, as a dict.

    Raises
    ------
    FileNotFoundError
        When the folder or its ``config.json`` is missing.
    ModelCardError
        When ``config.json`` is not valid JSON or describes another model type.
    """
    if not model_dir.is_dir():
        raise FileNotFoundError(f"Model folder {str(model_dir)!r} does not exist; pass a save_pretrained folder.")
    config = _read_json(model_dir / "config.json")
    if config is None:
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no config.json; expected a folder written by model.save_pretrained."
        )
    if config.get("model_type") != "scbert":
        raise ModelCardError(
            f"{model_dir / 'config.json'} describes model_type={config.get('model_type')!r}, not 'scbert'."
        )
    return config


def read_tokenizer(model_dir: Path) -> ScBertTokenizer:
    """The tokenizer saved in a model folder.

    Raises
    ------
    FileNotFoundError
        When the folder holds no tokenizer, saying how to save one.
    """
    try:
        return ScBertTokenizer.from_pretrained(model_dir)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"The model folder {str(model_dir)!r} has no tokenizer ({error}). A model is only usable with its gene "
            "panel: save it next to the weights with `tokenizer.save_pretrained(folder)` (or `scbert convert "
            "--genes`), then push again."
        ) from error


def _trainer_metrics(model_dir: Path) -> dict[str, Any] | None:
    for name in ("eval_results.json", "all_results.json", "test_results.json"):
        metrics = _read_json(model_dir / name)
        if metrics and any(key.startswith(_METRIC_PREFIXES) for key in metrics):
            return metrics
    state = _read_json(model_dir / "trainer_state.json")
    if state:
        evaluations = [entry for entry in state.get("log_history", []) if any(k.startswith("eval_") for k in entry)]
        if evaluations:
            return evaluations[-1]
    return None


def _count_saved_parameters(model_dir: Path) -> int | None:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                if name.endswith("random_features"):
                    continue  # FAVOR+ random features are a saved buffer, not a learned parameter
                count = 1
                for size in handle.get_slice(name).get_shape():
                    count *= size
                total += count
    return total
