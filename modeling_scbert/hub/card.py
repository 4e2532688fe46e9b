"""Model cards: rendered from :class:`ScBertCardData` with ``huggingface_hub.ModelCard``, checked against the folder.

The Markdown body comes from the templates in ``hub_cards/``, rendered with jinja2's ``StrictUndefined`` (a template
that names a fact that does not exist fails loudly, it never prints an empty string); the YAML metadata is
``ScBertCardData.to_dict()``; ``huggingface_hub.ModelCard.from_template`` puts the two together. A rendered card is
refused while its own text holds placeholder text (``{{``, ``TODO``, ``<...>``, ``None``), and
:func:`validate_model_card` checks it against the model folder it goes with (labels, panel hash, metadata).

Text that comes from the user (labels, names, dataset names) is data, not template: it is escaped where it enters the
Markdown (:func:`markdown_text`: a ``|`` cannot split a table, a newline cannot start a heading, ``<...>`` is not
HTML), and the placeholder check looks past it (a class may well be called ``TBD`` or ``None``).
"""

from __future__ import annotations

import html
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from tokenization.atomic_files import write_text_atomically

from .card_data import PER_CLASS_METRICS, TAGS, ModelCardError, ScBertCardData, read_config, read_tokenizer

logger = logging.getLogger(__name__)

__all__ = [
    "README_NAME",
    "find_placeholders",
    "markdown_text",
    "render_model_card",
    "validate_model_card",
    "write_model_card",
]

CARD_TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "hub_cards"
ANNOTATOR_TEMPLATE = "annotator.md.j2"
BACKBONE_TEMPLATE = "backbone.md.j2"
README_NAME = "README.md"
# How ModelCard.from_template assembles a card: the YAML of the card data, then the body rendered from our templates.
_CARD_LAYOUT = "---\n{{ card_data }}\n---\n\n{{ body }}"
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
# What must never reach a rendered card: template syntax, to-do markers, angle-bracket placeholders, empty values.
_PLACEHOLDER_RES = [
    (re.compile(r"\{\{|\}\}|\{%|%\}|\{#|#\}"), "template syntax"),
    (re.compile(r"\b(TODO|TBD|FIXME|XXX)\b"), "a to-do marker"),
    (re.compile(r"More Information Needed", re.IGNORECASE), "the Hub's default placeholder"),
    (re.compile(r"<[A-Za-z_][\w .:/-]{0,60}>"), "an angle-bracket placeholder"),
    (re.compile(r"(?<![\w`\"'])(None|nan|NaN|null)(?![\w`\"'])"), "an empty value"),
]
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
        "missed_classes",
    ),
    "provenance": ("source_file", "sha256", "layout"),
    "novelty": (
        "method",
        "calibration_cells",
        "threshold",
        "held_out_flagged",
        "profile_cells",
        "left_out_auroc",
        "left_out_auroc_mean",
        "left_out_auroc_min",
        "expected_calibration_error",
        "coverage_accuracy",
    ),
}


def markdown_text(value: Any) -> str:
    """User text as one line of literal Markdown: whitespace runs (newlines included) become one space, HTML's
    ``& < >`` become entities, and Markdown's ``\\ ` * _ [ ] | # ~`` are backslash-escaped.

    The card's templates pass every user-supplied string through this (the ``text`` filter), so that a label such as
    ``'lymphoid|T cell'`` keeps its table row, ``'Unknown <QC fail>'`` shows as written, and ``'x\\n# y'`` cannot add a
    heading.
    """
    text = html.escape(" ".join(str(value).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|#~])", r"\\\1", text)


def _user_strings(data: ScBertCardData) -> list[str]:
    """The user-supplied strings a card shows: labels, names, descriptions, dataset names, hyperparameter values."""
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                collect(key)
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    collect(data.facts())
    collect((data.architecture or {}).get("labels"))
    return found


def _environment(template_dir: Path):
    import jinja2

    if not template_dir.is_dir():
        raise ModelCardError(
            f"Model-card templates not found in {template_dir}; they ship in the repository's hub_cards/ folder "
            "(install the package from a checkout with `pip install -e .`)."
        )
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,  # a template naming a fact that does not exist must fail, not print ""
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["text"] = markdown_text
    return environment


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
        If the facts have no architecture or license, the template names a fact that does not exist, or the result
        contains placeholder text.
    """
    import jinja2

    if data.architecture is None:
        raise ModelCardError("The card data has no architecture; build it with ScBertCardData.from_model_folder.")
    arch = data.architecture
    if template is None:
        template_dir = CARD_TEMPLATES_DIR
        template_name = ANNOTATOR_TEMPLATE if arch["is_classifier"] else BACKBONE_TEMPLATE
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
            label: {metric: row.get(metric) for metric in PER_CLASS_METRICS}
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
        "novelty": structured["novelty"],
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
    body = re.sub(r"\n{3,}", "\n\n", body.strip()) + "\n"  # sections left out leave no gaps
    card = ModelCard.from_template(data.merged({"model_name": model_name}), template_str=_CARD_LAYOUT, body=body)
    text = str(card)
    problems = find_placeholders(text, user_text=_user_strings(data))
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


def find_placeholders(card_text: str, *, user_text: Iterable[str] = ()) -> list[str]:
    """Lines of a card whose own text holds template syntax, to-do markers, ``<...>`` placeholders or empty values.

    Code blocks are checked for template syntax and to-do markers only (Python's ``None`` is fine there). The
    strings in ``user_text`` (labels, names: data, not template) are looked past, as written and as
    :func:`markdown_text` renders them: a class called ``TBD`` is no placeholder.

    Parameters
    ----------
    card_text
        The card (``README.md``) text.
    user_text
        Strings the card shows on the user's behalf.

    Returns
    -------
    One ``"line N: what 'match'"`` entry per finding; empty for a clean card.
    """
    forms = {form for value in user_text if value for form in (value, markdown_text(value))}
    found, in_code = [], False
    for number, line in enumerate(card_text.splitlines(), start=1):
        for form in sorted(forms, key=len, reverse=True):
            line = line.replace(form, "\x00")
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        patterns = _PLACEHOLDER_RES[:2] if in_code else _PLACEHOLDER_RES
        for pattern, what in patterns:
            match = pattern.search(line)
            if match:
                found.append(f"line {number}: {what} {match.group(0)!r}")
    return found


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (*_strings_in(key), *_strings_in(item))]
    if isinstance(value, (list, tuple)):
        return [text for item in value for text in _strings_in(item)]
    return []


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
    FileNotFoundError
        When the folder lacks ``config.json`` or the tokenizer.
    """
    model_dir = Path(model_dir)
    config = read_config(model_dir)
    tokenizer = read_tokenizer(model_dir)
    try:
        card = ModelCard(card_text, ignore_metadata_errors=False)
    except ValueError as error:
        raise ModelCardError(f"The card's YAML metadata does not parse: {error}") from error
    meta = card.data.to_dict()
    labels = []
    if any(name.endswith("ForSequenceClassification") for name in config.get("architectures") or []):
        labels = [config["id2label"][key] for key in sorted(config.get("id2label", {}), key=int)]
    problems = find_placeholders(card_text, user_text=[*labels, *_strings_in(meta)])
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
        missing = [label for label in labels if f"| {markdown_text(label)} |" not in card.text]
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

    Raises
    ------
    FileNotFoundError
        When the folder lacks ``config.json`` or the tokenizer.
    ModelCardError
        When the card cannot be rendered or does not match the folder (see :func:`render_model_card` and
        :func:`validate_model_card`).
    """
    model_dir = Path(model_dir)
    data = ScBertCardData.from_model_folder(model_dir, facts)
    text = render_model_card(data, repo_id=repo_id, local_name=model_dir.resolve().name, template=template)
    validate_model_card(text, model_dir)
    if save_facts and data.facts():
        data.save(model_dir)
    path = model_dir / README_NAME
    write_text_atomically(path, text)
    logger.info("Wrote the model card %s", path)
    return path
