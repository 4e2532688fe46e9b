"""Publishing to the Hugging Face Hub: model cards rendered from facts, and a one-step push.

A card is rendered from :class:`ScBertCardData`, whose fields are facts: the architecture and label map come from
``config.json``, the input contract from the tokenizer, the training data, per-label cell counts, hyperparameters,
evaluation metrics and provenance from the caller, from ``scbert_card.json`` in the model folder, or from the
``Trainer``'s ``eval_results.json`` / ``all_results.json`` / ``trainer_state.json``. A fact that is not known is left
out together with its section; nothing is invented. The templates live in ``hub_cards/`` and are rendered with
jinja2's ``StrictUndefined``, so a template that names a fact that does not exist fails loudly.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from accelerate.utils import extract_model_from_parallel
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tokenization import ScBertTokenizer
from tokenization.genes import detect_identifier_type

logger = logging.getLogger(__name__)

__all__ = [
    "CARD_FACTS_NAME",
    "HubAuthenticationError",
    "ModelCardError",
    "ScBertCardData",
    "ScBertModelCardCallback",
    "check_repo_id",
    "push_model_folder",
    "push_trainer_to_hub",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]

CARD_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "hub_cards"
ANNOTATOR_TEMPLATE = "annotator.md.j2"
BACKBONE_TEMPLATE = "backbone.md.j2"
CARD_FACTS_NAME = "scbert_card.json"
README_NAME = "README.md"
TAGS = ["single-cell", "scRNA-seq", "cell-type-annotation", "scbert", "performer", "biology"]
SCBERT_PAPER = (
    "Yang, F., Wang, W., Wang, F. et al. scBERT as a large-scale pretrained deep language model for cell type "
    "annotation of single-cell RNA-seq data. *Nat Mach Intell* 4, 852–866 (2022). "
    "https://doi.org/10.1038/s42256-022-00534-z"
)
SCBERT_BIBTEX = """@article{yang2022scbert,
  title   = {scBERT as a large-scale pretrained deep language model for cell type annotation of single-cell RNA-seq data},
  author  = {Yang, Fan and Wang, Wenchuan and Wang, Fang and Fang, Yuan and Tang, Duyu and Huang, Junzhou and Lu, Hui and Yao, Jianhua},
  journal = {Nature Machine Intelligence},
  volume  = {4},
  pages   = {852--866},
  year    = {2022},
  doi     = {10.1038/s42256-022-00534-z}
}"""
# Repo ids are "namespace/name": letters, digits, "-", "_", "."; no "--" or ".." (the Hub's own rule), <= 96 chars.
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What must never reach a rendered card: template syntax, to-do markers, angle-bracket placeholders, empty values.
_PLACEHOLDER_RES = [
    (re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}"), "template syntax"),
    (re.compile(r"\b(TODO|TBD|FIXME|XXX)\b"), "a to-do marker"),
    (re.compile(r"More Information Needed", re.IGNORECASE), "the Hub's default placeholder"),
    (re.compile(r"<[A-Za-z_][\w .:/-]{0,60}>"), "an angle-bracket placeholder"),
    (re.compile(r"(?<![\w`\"'])(None|nan|NaN|null)(?![\w`\"'])"), "an empty value"),
]
# Files that never go to the Hub: pickles (unsafe to load, and the Trainer's are not needed to use the model).
_NEVER_UPLOADED_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_METRIC_PREFIXES = ("eval_", "test_", "predict_")
# The keys each structured fact may have; a template sees every key (``None`` when unknown), never a missing one.
_FACT_KEYS = {
    "training_data": ("name", "hub_id", "description", "num_cells"),
    "evaluation": (
        "dataset_name",
        "dataset_id",
        "split",
        "num_cells",
        "accuracy",
        "macro_f1",
        "per_class",
        "majority_class",
    ),
    "provenance": ("source_file", "sha256", "layout"),
}
_PER_CLASS_METRICS = ("precision", "recall", "f1", "support")


class ModelCardError(ValueError):
    """A model card could not be rendered, or a rendered card does not describe its model folder."""


class HubAuthenticationError(PermissionError):
    """No Hugging Face token is available for a push."""


# ---------------------------------------------------------------------------------------------------------- card data
@dataclass
class ScBertCardData:
    """The facts a model card is rendered from. ``None`` means "not known": the card leaves that section out.

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
        "majority_class": {"label", "accuracy", "macro_f1"}}``; any key may be missing. ``majority_class`` holds the
        scores of always predicting the most frequent training label; the card warns when the model is no better.
    provenance
        For converted published checkpoints: ``{"source_file", "sha256", "layout"}``.
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
    description: str | None = None
    # Derived, never stored: re-read from the model folder each time, so that they cannot drift from it.
    architecture: dict[str, Any] | None = field(default=None, repr=False)
    contract: dict[str, Any] | None = field(default=None, repr=False)

    _DERIVED = ("architecture", "contract")

    def facts(self) -> dict[str, Any]:
        """The caller-supplied facts (everything but the derived architecture and contract), without ``None``s."""
        return {k: v for k, v in asdict(self).items() if k not in self._DERIVED and v is not None}

    def merged(self, other: ScBertCardData | dict[str, Any] | None) -> ScBertCardData:
        """A copy in which the facts of ``other`` that are not ``None`` replace these; dict-valued facts (training
        data, hyperparameters, evaluation, ...) are merged key by key, so partial facts from two sources combine."""
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
        """Write the caller-supplied facts to ``scbert_card.json`` in ``model_dir``, so that a later push has them."""
        path = Path(model_dir) / CARD_FACTS_NAME
        path.write_text(json.dumps(self.facts(), indent=2) + "\n", encoding="utf-8")
        return path

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
        ``trainer_state.json`` (evaluation metrics and training length), the safetensors header (parameter count).

        Parameters
        ----------
        model_dir
            The folder.
        facts
            Caller-supplied facts, which replace those found in the folder.
        """
        model_dir = Path(model_dir)
        config = _read_config(model_dir)
        tokenizer = _read_tokenizer(model_dir)
        stored = _read_json(model_dir / CARD_FACTS_NAME) or {}
        data = cls().merged(stored).merged(facts)
        labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
        if data.evaluation is None or not any(k in data.evaluation for k in ("accuracy", "macro_f1", "per_class")):
            metrics = _trainer_metrics(model_dir)
            found = metrics_to_evaluation(metrics, labels) if metrics else None
            if found:
                data.evaluation = {**found, **(data.evaluation or {})}
        report = _read_json(model_dir / "classification_report.json")
        if report and (data.evaluation is None or not data.evaluation.get("per_class")):
            data.evaluation = {**(data.evaluation or {}), **_report_to_evaluation(report, labels)}
        state = _read_json(model_dir / "trainer_state.json")
        if state:
            data.hyperparameters = {**_state_hyperparameters(state), **(data.hyperparameters or {})}
        return cls.from_objects(config, tokenizer, data, num_parameters=_count_parameters(model_dir))


def _check_fact_names(values: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(ScBertCardData)} - set(ScBertCardData._DERIVED)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ModelCardError(f"Unknown model-card facts {unknown}; the known facts are {sorted(known)}.")
    return values


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
        row = {m: plain[f"{m}_{label}"] for m in _PER_CLASS_METRICS if f"{m}_{label}" in plain}
        if row:
            per_class[label] = row
    if per_class:
        evaluation["per_class"] = per_class
    return evaluation


def _report_to_evaluation(report: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Per-class rows of a scikit-learn ``classification_report(output_dict=True)``, as written by ``finetune``."""
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


def _architecture(config: dict[str, Any], num_parameters: int | None) -> dict[str, Any]:
    architectures = config.get("architectures") or []
    is_classifier = any(name.endswith("ForSequenceClassification") for name in architectures)
    labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)] if is_classifier else []
    return {
        "model_class": architectures[0] if architectures else "ScBertModel",
        "is_classifier": is_classifier,
        "labels": labels,
        "num_labels": len(labels),
        "num_hidden_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "num_attention_heads": config["num_attention_heads"],
        "head_dim": config["head_dim"],
        "intermediate_size": config["intermediate_size"],
        "num_random_features": config["num_random_features"],
        "vocab_size": config["vocab_size"],
        "num_genes": config["num_genes"],
        "gene_embedding_type": config["gene_embedding_type"],
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


# Ensembl gene-id prefixes of the species scBERT users meet; a symbol panel says nothing certain about species.
_ENSEMBL_SPECIES = {
    "ENSG": "human",
    "ENSMUSG": "mouse",
    "ENSRNOG": "rat",
    "ENSDARG": "zebrafish",
    "ENSMMUG": "macaque",
}


def _species_from_panel(genes: tuple[str, ...]) -> str | None:
    prefixes = {re.match(r"^(ENS[A-Z]*G)\d{11}$", g).group(1) for g in genes if re.match(r"^ENS[A-Z]*G\d{11}$", g)}
    if len(prefixes) == 1 and len(genes) and detect_identifier_type(list(genes)) == "ensembl":
        return _ENSEMBL_SPECIES.get(prefixes.pop())
    return None


# ------------------------------------------------------------------------------------------------ reading a folder
def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelCardError(f"{path} is not valid JSON ({error}); fix or remove it.") from error


def _read_config(model_dir: Path) -> dict[str, Any]:
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


def _read_tokenizer(model_dir: Path) -> ScBertTokenizer:
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


def _state_hyperparameters(state: dict[str, Any]) -> dict[str, Any]:
    keys = {"global_step": "optimisation steps", "num_train_epochs": "epochs", "train_batch_size": "batch size"}
    return {label: state[key] for key, label in keys.items() if state.get(key) is not None}


def _count_parameters(model_dir: Path) -> int | None:
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
                total += _numel(handle.get_slice(name).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _hyperparameters_from_args(args: TrainingArguments) -> dict[str, Any]:
    values = {
        "learning rate": args.learning_rate,
        "batch size per device": args.per_device_train_batch_size,
        "gradient accumulation steps": args.gradient_accumulation_steps,
        "processes": args.world_size,
        "epochs": args.num_train_epochs if args.max_steps is None or args.max_steps <= 0 else None,
        "max steps": args.max_steps if args.max_steps and args.max_steps > 0 else None,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "learning-rate schedule": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup steps": args.warmup_steps or None,
        "weight decay": args.weight_decay,
        "seed": args.seed,
        "mixed precision": "bf16" if args.bf16 else "fp16" if args.fp16 else None,
    }
    return {key: value for key, value in values.items() if value is not None}


# --------------------------------------------------------------------------------------------------------- rendering
def _environment(template_dir: Path):
    import jinja2

    if not template_dir.is_dir():
        raise ModelCardError(
            f"Model-card templates not found in {template_dir}; they ship in the repository's hub_cards/ folder "
            "(install the package from a checkout with `pip install -e .`)."
        )
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,  # a template naming a fact that does not exist must fail, not print ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _card_metadata(data: ScBertCardData, model_name: str):
    from huggingface_hub import EvalResult, ModelCardData

    arch, contract, evaluation = data.architecture or {}, data.contract or {}, data.evaluation or {}
    eval_results = []
    dataset_name = evaluation.get("dataset_name") or (data.training_data or {}).get("name")
    # The model-index needs a dataset to attach results to; results without one stay in the card's text only.
    if dataset_name and evaluation.get("dataset_name"):
        for metric, value in (("accuracy", evaluation.get("accuracy")), ("f1", evaluation.get("macro_f1"))):
            if value is None:
                continue
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
    datasets = [d for d in ((data.training_data or {}).get("hub_id"), evaluation.get("dataset_id")) if d]
    scbert_facts = {"model_class": arch.get("model_class"), "num_genes": arch.get("num_genes")}
    if contract:
        scbert_facts["panel_hash"] = contract["panel_hash"]
    if arch.get("is_classifier"):
        scbert_facts["num_labels"] = arch["num_labels"]
        scbert_facts["labels"] = arch["labels"]
    if data.provenance and data.provenance.get("sha256"):
        scbert_facts["source_sha256"] = data.provenance["sha256"]
    return ModelCardData(
        license=data.license,
        library_name="transformers",
        tags=list(TAGS),
        base_model=data.base_model,
        datasets=sorted(set(datasets)) or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        scbert=scbert_facts,
    )


def render_model_card(
    data: ScBertCardData,
    *,
    repo_id: str | None = None,
    local_name: str | None = None,
    template: str | os.PathLike | None = None,
) -> str:
    """Render a model card (YAML metadata + Markdown) from facts.

    Parameters
    ----------
    data
        The facts; ``data.architecture`` must be set (see :meth:`ScBertCardData.from_model_folder`).
    repo_id
        The Hub repository, used in the usage examples; ``local_name`` is used when ``None``.
    local_name
        Folder name used in the usage examples when the repository is not known yet.
    template
        A template file; by default ``hub_cards/annotator.md.j2`` for classifiers, ``backbone.md.j2`` otherwise.

    Returns
    -------
    The card text. It has been checked for placeholders.

    Raises
    ------
    ModelCardError
        If the template names a fact that does not exist, or the result contains placeholder text.
    """
    import jinja2

    if data.architecture is None:
        raise ModelCardError("The card data has no architecture; build it with ScBertCardData.from_model_folder.")
    arch = data.architecture
    if template is None:
        template_dir, template_name = (
            CARD_TEMPLATES_DIR,
            ANNOTATOR_TEMPLATE if arch["is_classifier"] else BACKBONE_TEMPLATE,
        )
    else:
        template_dir, template_name = Path(template).resolve().parent, Path(template).name
    model_ref = repo_id or (f"./{local_name}" if local_name else None)
    model_name = data.model_name or (repo_id.split("/")[-1] if repo_id else local_name) or "scBERT model"
    label_rows = None
    if arch["is_classifier"]:
        counts = data.label_counts or {}
        unknown = sorted(set(counts) - set(arch["labels"]))
        if unknown:
            raise ModelCardError(
                f"label_counts names labels the model does not have: {unknown}; the model's labels are "
                f"{arch['labels']}."
            )
        label_rows = [{"id": i, "label": label, "count": counts.get(label)} for i, label in enumerate(arch["labels"])]
    structured = {name: _complete(name, getattr(data, name)) for name in _FACT_KEYS}
    if structured["evaluation"] and structured["evaluation"]["per_class"]:
        structured["evaluation"]["per_class"] = {
            label: {metric: row.get(metric) for metric in _PER_CLASS_METRICS}
            for label, row in structured["evaluation"]["per_class"].items()
        }
    context = {
        "card": data.facts(),
        "model_name": model_name,
        "model_ref": model_ref,
        "repo_id": repo_id,
        "arch": arch,
        "contract": data.contract,
        "species": data.species,
        "labels": label_rows,
        "label_counts_known": bool(data.label_counts),
        "training_data": structured["training_data"],
        "hyperparameters": data.hyperparameters,
        "evaluation": structured["evaluation"],
        "provenance": structured["provenance"],
        "base_model": data.base_model,
        "description": data.description,
        "citation": SCBERT_PAPER,
        "bibtex": SCBERT_BIBTEX,
    }
    try:
        body = _environment(template_dir).get_template(template_name).render(**context)
    except jinja2.UndefinedError as error:
        raise ModelCardError(
            f"The card template {template_name!r} refers to a fact that does not exist ({error}). The facts a "
            f"template can use are: {sorted(context)}. Fix the template; a card never says what it does not know."
        ) from error
    except jinja2.TemplateNotFound as error:
        raise ModelCardError(f"Card template {error.name!r} not found in {template_dir}.") from error
    if data.license is None:
        raise ModelCardError(
            "The card needs a license for the weights (YAML `license`), e.g. license='apache-2.0' "
            "(`scbert push --license`)."
        )
    metadata = _card_metadata(data, model_name)
    text = f"---\n{metadata.to_yaml()}\n---\n\n{body.strip()}\n"
    text = re.sub(r"\n{3,}", "\n\n", text)  # sections left out leave no gaps
    problems = find_placeholders(text)
    if problems:
        raise ModelCardError(f"The rendered card still contains placeholder text: {problems}. Fix the template.")
    return text


def _complete(name: str, values: dict[str, Any] | None) -> dict[str, Any] | None:
    if not values:
        return None
    unknown = sorted(set(values) - set(_FACT_KEYS[name]))
    if unknown:
        raise ModelCardError(
            f"Unknown keys {unknown} in the {name!r} facts; the known keys are {list(_FACT_KEYS[name])}."
        )
    return {key: values.get(key) for key in _FACT_KEYS[name]}


def find_placeholders(card_text: str) -> list[str]:
    """Lines of a card that hold template syntax, to-do markers, ``<...>`` placeholders or empty values.

    Code blocks are checked for template syntax and to-do markers only (Python's ``None`` is fine there).
    """
    found, in_code = [], False
    for number, line in enumerate(card_text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        patterns = _PLACEHOLDER_RES[:2] if in_code else _PLACEHOLDER_RES
        for pattern, what in patterns:
            match = pattern.search(line)
            if match:
                found.append(f"line {number}: {what} {match.group(0)!r}")
    return found


def validate_model_card(card_text: str, model_dir: str | os.PathLike) -> None:
    """Check that a rendered card describes the model folder it will be pushed with.

    Checks: the YAML parses and has ``license``, ``library_name: transformers`` and the scBERT tags; no placeholder
    text; the card's label list equals the model head's labels (count and order); its panel hash equals the
    tokenizer's and appears in the text; its evaluation labels are the model's labels.

    Parameters
    ----------
    card_text
        The card (``README.md``) text.
    model_dir
        The model folder (config, weights, tokenizer).

    Raises
    ------
    ModelCardError
        Naming every mismatch found.
    """
    from huggingface_hub import ModelCard

    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    tokenizer = _read_tokenizer(model_dir)
    try:
        card = ModelCard(card_text, ignore_metadata_errors=False)
    except ValueError as error:
        raise ModelCardError(f"The card's YAML metadata does not parse: {error}") from error
    meta = card.data.to_dict()
    problems = find_placeholders(card_text)
    if not meta.get("license"):
        problems.append("YAML `license` is missing")
    if meta.get("library_name") != "transformers":
        problems.append(f"YAML library_name is {meta.get('library_name')!r}, expected 'transformers'")
    missing_tags = sorted(set(TAGS) - set(meta.get("tags") or []))
    if missing_tags:
        problems.append(f"YAML tags lack {missing_tags}")
    facts = meta.get("scbert") or {}
    architectures = config.get("architectures") or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
        card_labels = facts.get("labels")
        if facts.get("num_labels") != len(labels) or card_labels is None or len(card_labels) != len(labels):
            problems.append(
                f"the card lists {facts.get('num_labels', 'no')} labels but the model head has num_labels="
                f"{len(labels)}"
            )
        elif list(card_labels) != labels:
            problems.append(f"the card's labels {card_labels} differ from the model's id2label {labels}")
        missing = [label for label in labels if f"| {label} |" not in card.text]
        if missing:
            problems.append(f"the card's label table lacks {missing}")
    if facts.get("panel_hash") != tokenizer.panel_hash:
        problems.append(
            f"the card's panel hash {str(facts.get('panel_hash'))[:12]}... differs from the tokenizer's "
            f"{tokenizer.panel_hash[:12]}..."
        )
    elif tokenizer.panel_hash not in card.text:
        problems.append("the card's text does not state the panel hash")
    if facts.get("num_genes") != config.get("num_genes"):
        problems.append(f"the card says {facts.get('num_genes')} genes, config.json {config.get('num_genes')}")
    if problems:
        raise ModelCardError(f"The model card does not match {model_dir}: " + "; ".join(problems) + ".")


def write_model_card(
    model_dir: str | os.PathLike,
    facts: ScBertCardData | dict[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    template: str | os.PathLike | None = None,
    save_facts: bool = True,
) -> Path:
    """Render the card of a model folder from its facts, check it against the folder, and write ``README.md``.

    Parameters
    ----------
    model_dir
        A ``save_pretrained`` folder with the tokenizer.
    facts
        Facts to add to those found in the folder (see :class:`ScBertCardData`).
    repo_id
        The Hub repository the card will live in (for the usage examples), if known.
    template
        A template file instead of the default one.
    save_facts
        Also write the caller-supplied facts to ``scbert_card.json``, so that ``scbert push`` renders the same card.

    Returns
    -------
    The path of ``README.md``.
    """
    model_dir = Path(model_dir)
    data = ScBertCardData.from_model_folder(model_dir, facts)
    text = render_model_card(data, repo_id=repo_id, local_name=model_dir.resolve().name, template=template)
    validate_model_card(text, model_dir)
    if save_facts and data.facts():
        data.save(model_dir)
    path = model_dir / README_NAME
    path.write_text(text, encoding="utf-8")
    logger.info("Wrote the model card %s", path)
    return path


# -------------------------------------------------------------------------------------------------------------- push
def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it has the form ``"namespace/name"``; raise a ``ValueError`` that says why not."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(repo_id, str) or not _REPO_ID_RE.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(
            f"Repository id {repo_id!r} is not of the form 'namespace/name' (a user or organisation, a slash, a name; "
            "letters, digits, '-', '_' and '.', no '--' or '..'), e.g. 'my-lab/scbert-pbmc'."
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"Repository id {repo_id!r} is not valid on the Hub: {error}") from error
    return repo_id


def _resolve_token(token: str | bool | None) -> str:
    if isinstance(token, str) and token:
        return token
    if token is False:
        raise HubAuthenticationError("A push needs a Hugging Face token, but token=False was passed.")
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise HubAuthenticationError(
            "No Hugging Face token found, and a push needs one with write access. Log in with `hf auth login`, or "
            "set the HF_TOKEN environment variable, or pass token= (`scbert push --token`); tokens are made at "
            "https://huggingface.co/settings/tokens."
        )
    return found


def _files_to_upload(model_dir: Path) -> list[Path]:
    files = []
    for path in sorted(model_dir.iterdir()):
        if not path.is_file() or path.name.startswith((".", "_")):
            continue
        if path.suffix in _NEVER_UPLOADED_SUFFIXES:
            logger.info("Not uploading %s (pickled training state is neither safe nor needed to use the model).", path)
            continue
        files.append(path)
    return files


def _check_model_folder(model_dir: Path) -> dict[str, Any]:
    config = _read_config(model_dir)
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no .safetensors weights; save the model with model.save_pretrained(folder)."
        )
    missing_code = sorted(
        {value.split(".")[0] + ".py" for value in (config.get("auto_map") or {}).values() if isinstance(value, str)}
        - {path.name for path in model_dir.glob("*.py")}
    )
    if missing_code:
        raise FileNotFoundError(
            f"config.json's auto_map names {missing_code}, which are not in {str(model_dir)!r}; without them the "
            "model cannot load with trust_remote_code=True. Save the model with `import modeling_scbert` done first."
        )
    _read_tokenizer(model_dir)
    return config


def push_model_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str = "Upload scBERT model, tokenizer and model card",
    facts: ScBertCardData | dict[str, Any] | None = None,
    template: str | os.PathLike | None = None,
):
    """Push a model folder (weights, config, remote code, tokenizer) with its rendered card, in one commit.

    The card is rendered from the folder's facts (plus ``facts``), checked against the folder with
    :func:`validate_model_card`, and written to ``model_dir/README.md`` before the upload, so the folder and the
    repository hold the same card. Pickled files (``*.bin``, ``*.pt``, ...) and hidden files are not uploaded.

    Parameters
    ----------
    model_dir
        A ``save_pretrained`` folder holding the tokenizer too.
    repo_id
        ``"namespace/name"``; created if it does not exist.
    private
        Visibility of a newly created repository (an existing one keeps its visibility).
    revision
        Branch to commit to; created from ``main`` if it does not exist. ``None`` commits to ``main``.
    token
        Hub token; by default the one from ``hf auth login`` or ``HF_TOKEN``.
    commit_message
        The commit message.
    facts
        Facts for the card in addition to those found in the folder.
    template
        A card template instead of the default one.

    Returns
    -------
    huggingface_hub.CommitInfo
        The commit; ``.oid`` is its sha, the revision to pin.

    Raises
    ------
    ValueError
        A malformed ``repo_id``.
    FileNotFoundError
        A folder without config, weights, remote code files or tokenizer.
    ModelCardError
        A card that cannot be rendered or does not match the folder.
    HubAuthenticationError
        No token.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    _check_model_folder(model_dir)
    token = _resolve_token(token)
    card_path = write_model_card(model_dir, facts, repo_id=repo_id, template=template)
    logger.info("Rendered %s for %s", card_path, repo_id)

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    # One commit for everything: a repository never shows weights with another model's card or tokenizer.
    operations = [
        CommitOperationAdd(path_in_repo=path.name, path_or_fileobj=str(path)) for path in _files_to_upload(model_dir)
    ]
    commit = api.create_commit(repo_id, operations=operations, commit_message=commit_message, revision=revision)
    logger.info("Pushed %d files to %s at commit %s", len(operations), repo_id, commit.oid)
    return commit


# ----------------------------------------------------------------------------------------------- Trainer integration
class ScBertModelCardCallback(TrainerCallback):
    """Keep the scBERT model card in a ``Trainer``'s ``output_dir``.

    Before every push the ``Trainer`` makes of a checkpoint (``push_to_hub=True``), and at the end of training, the
    card is rendered from the model's config, the tokenizer, the facts given here, the training arguments and the
    latest evaluation in ``state.log_history``, and written to ``output_dir/README.md`` (so checkpoint pushes carry
    it). ``Trainer.push_to_hub`` replaces ``README.md`` with transformers' generic card; end a run with
    :func:`push_trainer_to_hub` instead, which pushes model, tokenizer and this card in one commit.

    Parameters
    ----------
    tokenizer
        The model's tokenizer; by default the ``Trainer``'s ``processing_class``.
    facts
        Card facts: training data, ``label_counts``, ``base_model``, ``license``, evaluation dataset, ...
    """

    def __init__(self, tokenizer: ScBertTokenizer | None = None, facts: ScBertCardData | dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.facts = ScBertCardData().merged(facts)

    def _write(self, args: TrainingArguments, state: TrainerState, model: Any, processing_class: Any) -> None:
        if not state.is_world_process_zero or model is None:
            return
        tokenizer = self.tokenizer or (processing_class if isinstance(processing_class, ScBertTokenizer) else None)
        if tokenizer is None:
            logger.warning("No ScBertTokenizer given to ScBertModelCardCallback or the Trainer; no card written.")
            return
        model = extract_model_from_parallel(model, keep_torch_compile=False)
        labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
        evaluations = [entry for entry in state.log_history if any(key.startswith("eval_") for key in entry)]
        found = ScBertCardData(
            hyperparameters={**_hyperparameters_from_args(args), "optimisation steps": state.global_step},
            evaluation=metrics_to_evaluation(evaluations[-1], labels) or None if evaluations else None,
        )
        data = ScBertCardData.from_objects(
            model.config,
            tokenizer,
            found.merged(self.facts),
            num_parameters=sum(p.numel() for n, p in model.named_parameters()),
        )
        if data.license is None:
            logger.warning("No license given to ScBertModelCardCallback (facts={'license': ...}); no card written.")
            return
        hub_id = args.hub_model_id if args.push_to_hub else None
        text = render_model_card(data, repo_id=hub_id, local_name=Path(args.output_dir).resolve().name)
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / README_NAME).write_text(text, encoding="utf-8")
        if self.facts.facts():
            self.facts.save(output_dir)

    def on_push_begin(self, args, state, control, model=None, processing_class=None, **kwargs) -> None:
        self._write(args, state, model, processing_class)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._write(args, state, kwargs.get("model"), kwargs.get("processing_class"))


def push_trainer_to_hub(
    trainer: Any,
    *,
    tokenizer: ScBertTokenizer | None = None,
    facts: ScBertCardData | dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    commit_message: str = "End of training",
):
    """End a ``Trainer`` run: save the model and tokenizer to ``output_dir``, render the card, push in one commit.

    Use instead of ``trainer.push_to_hub()``, which writes transformers' generic card. Without
    ``args.push_to_hub`` the folder is saved with its card and nothing is pushed. Call it on every process (saving
    gathers sharded weights); only the main process writes the card and pushes.

    Parameters
    ----------
    trainer
        The ``transformers.Trainer`` after ``train()``.
    tokenizer
        The model's tokenizer; by default ``trainer.processing_class``.
    facts
        Card facts (training data, ``label_counts``, ``license``, ``base_model``, evaluation dataset name, ...).
    metrics
        Final evaluation metrics (e.g. ``trainer.evaluate()``'s); saved as ``eval_results.json``.
    commit_message
        The commit message.

    Returns
    -------
    huggingface_hub.CommitInfo | None
        The commit, or ``None`` where nothing was pushed.
    """
    args = trainer.args
    # `_internal_call=True` saves without the Trainer's own push (which would write transformers' generic card).
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(args.output_dir)
    tokenizer = tokenizer or trainer.processing_class
    if not isinstance(tokenizer, ScBertTokenizer):
        raise ValueError(
            "push_trainer_to_hub needs the model's ScBertTokenizer: pass tokenizer=, or give it to the Trainer as "
            f"processing_class= (got {type(tokenizer).__name__})."
        )
    tokenizer.save_pretrained(output_dir)
    model = extract_model_from_parallel(trainer.model, keep_torch_compile=False)
    if "ScBertForSequenceClassification" in type(model).__name__:
        from tokenization.pipeline_scbert import save_pipeline_code

        save_pipeline_code(output_dir)  # pipeline("cell-type-annotation", ...) as remote code
    trainer.state.save_to_json(str(output_dir / "trainer_state.json"))
    if metrics:
        (output_dir / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    found = ScBertCardData(
        hyperparameters={**_hyperparameters_from_args(args), "optimisation steps": trainer.state.global_step}
    )
    if metrics:
        found.evaluation = metrics_to_evaluation(metrics, labels) or None
    card_facts = found.merged(facts)
    if not args.push_to_hub:
        write_model_card(output_dir, card_facts)
        return None
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    return push_model_folder(
        output_dir,
        repo_id,
        private=bool(args.hub_private_repo),
        revision=args.hub_revision,
        token=args.hub_token,
        commit_message=commit_message,
        facts=card_facts,
    )
