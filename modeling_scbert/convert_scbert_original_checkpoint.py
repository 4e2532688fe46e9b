"""Convert a published scBERT checkpoint (``.pth``) into a Hugging Face model folder.

The published code saves ``torch.save({"epoch": ..., "model_state_dict": model.state_dict(), ...})`` of its
``PerformerLM``. Two layouts exist: pretraining (``to_out`` is a 7-way linear layer) and fine-tuned (``to_out`` is the
classification head ``conv1``/``fc1``/``fc2``/``fc3``). The architecture is read off the tensor shapes; every tensor is
accounted for, and anything missing, unexpected or mis-shaped is refused by name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tokenization import ScBertTokenizer
from tokenization.atomic_files import atomic_path

from .configuration_scbert import ScBertConfig
from .hub.card import write_model_card
from .hub.card_data import ScBertCardData
from .modeling_scbert import ScBertForMaskedLM, ScBertForSequenceClassification

logger = logging.getLogger(__name__)

PRETRAINING_LAYOUT = "pretraining"
FINETUNED_LAYOUT = "fine-tuned"
PUBLISHED_HEAD_DIM = 64

_LAYER_KEY = re.compile(r"^performer\.net\.layers\.(\d+)\.")
# Published name -> our name, per layer (``{i}`` is the layer index).
_LAYER_KEYS = {
    "performer.net.layers.{i}.0.norm.weight": "scbert.encoder.layers.{i}.attention_norm.weight",
    "performer.net.layers.{i}.0.norm.bias": "scbert.encoder.layers.{i}.attention_norm.bias",
    "performer.net.layers.{i}.0.fn.to_q.weight": "scbert.encoder.layers.{i}.attention.query.weight",
    "performer.net.layers.{i}.0.fn.to_k.weight": "scbert.encoder.layers.{i}.attention.key.weight",
    "performer.net.layers.{i}.0.fn.to_v.weight": "scbert.encoder.layers.{i}.attention.value.weight",
    "performer.net.layers.{i}.0.fn.to_out.weight": "scbert.encoder.layers.{i}.attention.output.weight",
    "performer.net.layers.{i}.0.fn.to_out.bias": "scbert.encoder.layers.{i}.attention.output.bias",
    "performer.net.layers.{i}.0.fn.fast_attention.projection_matrix": (
        "scbert.encoder.layers.{i}.attention.random_features"
    ),
    "performer.net.layers.{i}.1.norm.weight": "scbert.encoder.layers.{i}.feed_forward_norm.weight",
    "performer.net.layers.{i}.1.norm.bias": "scbert.encoder.layers.{i}.feed_forward_norm.bias",
    "performer.net.layers.{i}.1.fn.fn.w1.weight": "scbert.encoder.layers.{i}.feed_forward.intermediate.weight",
    "performer.net.layers.{i}.1.fn.fn.w1.bias": "scbert.encoder.layers.{i}.feed_forward.intermediate.bias",
    "performer.net.layers.{i}.1.fn.fn.w2.weight": "scbert.encoder.layers.{i}.feed_forward.output.weight",
    "performer.net.layers.{i}.1.fn.fn.w2.bias": "scbert.encoder.layers.{i}.feed_forward.output.bias",
}
_SHARED_KEYS = {
    "token_emb.weight": "scbert.embeddings.expression_embeddings.weight",
    "pos_emb.emb.weight": "scbert.embeddings.gene_embeddings.weight",
    "norm.weight": "scbert.final_layer_norm.weight",
    "norm.bias": "scbert.final_layer_norm.bias",
}
_PRETRAINING_HEAD_KEYS = {"to_out.weight": "lm_head.weight", "to_out.bias": "lm_head.bias"}
_FINETUNED_HEAD_KEYS = {
    "to_out.conv1.weight": "classifier.token_projection.weight",
    "to_out.conv1.bias": "classifier.token_projection.bias",
    "to_out.fc1.weight": "classifier.hidden_layers.0.weight",
    "to_out.fc1.bias": "classifier.hidden_layers.0.bias",
    "to_out.fc2.weight": "classifier.hidden_layers.1.weight",
    "to_out.fc2.bias": "classifier.hidden_layers.1.bias",
    "to_out.fc3.weight": "classifier.out_proj.weight",
    "to_out.fc3.bias": "classifier.out_proj.bias",
}
# Bookkeeping of the published training loop, not part of the model's function.
_IGNORED_KEYS = {"performer.calls_since_last_redraw"}


class CheckpointConversionError(ValueError):
    """The file is not a published scBERT checkpoint that can be converted as it is."""


@dataclass
class ConversionReport:
    """What the converter found and wrote."""

    source: str
    sha256: str
    layout: str
    config: ScBertConfig
    num_parameters: int
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    gene_table_rounding_error: float = 0.0
    ignored_keys: list[str] = field(default_factory=list)
    panel_hash: str | None = None

    def summary(self) -> str:
        c = self.config
        lines = [
            f"source: {self.source} (sha256 {self.sha256})",
            f"layout: {self.layout}",
            f"architecture: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads x "
            f"{c.head_dim}, feed-forward {c.intermediate_size}, {c.num_random_features} random features, "
            f"{c.vocab_size} expression tokens, {c.num_genes} genes + 1 appended token",
            f"gene embedding: {c.gene_embedding_type} (float32; largest rounding from the stored dtype: "
            f"{self.gene_table_rounding_error:.2e})",
        ]
        if self.layout == FINETUNED_LAYOUT:
            sizes = " -> ".join(str(s) for s in [c.sequence_length, *c.classifier_hidden_sizes, c.num_labels])
            lines.append(f"classifier: {c.classifier_type} ({sizes}); labels: {list(c.id2label.values())}")
        lines.append(f"parameters: {self.num_parameters:,}")
        if self.panel_hash is None:
            lines.append("tokenizer: none written (pass --genes or --reference-h5ad to write the gene panel)")
        else:
            lines.append(f"tokenizer: {c.num_genes} genes, panel sha256 {self.panel_hash}")
        if self.ignored_keys:
            lines.append(f"not converted (training bookkeeping): {', '.join(self.ignored_keys)}")
        return "\n".join(lines)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_original_state_dict(path: str | os.PathLike, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read the model weights of a published checkpoint, without the optional ``module.`` (DDP) prefix.

    Parameters
    ----------
    path
        The ``.pth`` file.
    trust_checkpoint
        Allow full unpickling. By default only tensors and plain containers are read
        (``weights_only=True``), which cannot run code hidden in the file.

    Raises
    ------
    CheckpointConversionError
        The file is missing, is not a torch checkpoint, holds no model weights, or holds NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointConversionError(f"Checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as error:  # torch raises several types for unreadable or unsafe files
        hint = (
            "" if trust_checkpoint else " If you trust its origin and it holds other objects, pass --trust-checkpoint."
        )
        raise CheckpointConversionError(f"Could not read {path} as a torch checkpoint: {error}.{hint}") from error
    if isinstance(payload, dict) and "model_state_dict" in payload:
        state_dict = payload["model_state_dict"]
    elif isinstance(payload, dict) and all(isinstance(value, torch.Tensor) for value in payload.values()):
        state_dict = payload
    else:
        found = sorted(payload)[:10] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointConversionError(
            f"{path} holds neither a dict with 'model_state_dict' nor a state dict of tensors (found: {found})."
        )
    state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    non_finite = [
        f"{key} ({int((~torch.isfinite(value)).sum())} of {value.numel()})"
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if non_finite:
        raise CheckpointConversionError(
            f"{path} holds NaN or infinite values in {len(non_finite)} tensors: {', '.join(non_finite[:10])}. A "
            "model with them predicts NaN for every cell; convert an intact checkpoint."
        )
    return state_dict


def infer_config(
    state_dict: dict[str, torch.Tensor], *, labels: list[str] | None = None, **overrides
) -> tuple[ScBertConfig, str]:
    """Read the architecture off the tensor shapes. ``overrides`` are ``ScBertConfig`` fields that win.

    Raises
    ------
    CheckpointConversionError
        The tensors are not an scBERT checkpoint's, their shapes disagree, or the
        architecture they give is not a valid ``ScBertConfig``.
    """
    _require(state_dict, ["token_emb.weight", "pos_emb.emb.weight", "norm.weight"])
    layer_indices = sorted({int(m.group(1)) for key in state_dict if (m := _LAYER_KEY.match(key))})
    if not layer_indices:
        raise CheckpointConversionError("No 'performer.net.layers.{i}.*' tensors found: not an scBERT checkpoint.")
    if layer_indices != list(range(len(layer_indices))):
        raise CheckpointConversionError(f"Layer indices are not contiguous from 0: {layer_indices}.")
    first = "performer.net.layers.0."
    _require(
        state_dict,
        [first + "0.fn.to_q.weight", first + "0.fn.fast_attention.projection_matrix", first + "1.fn.fn.w1.weight"],
    )
    vocab_size, hidden_size = state_dict["token_emb.weight"].shape
    projection = state_dict[first + "0.fn.fast_attention.projection_matrix"]
    num_random_features, head_dim = projection.shape
    inner_size = state_dict[first + "0.fn.to_q.weight"].shape[0]
    if inner_size % head_dim:
        raise CheckpointConversionError(
            f"q/k/v width {inner_size} is not a multiple of the random features' head width {head_dim}."
        )
    if "to_out.conv1.weight" in state_dict:
        layout = FINETUNED_LAYOUT
    elif "to_out.weight" in state_dict:
        layout = PRETRAINING_LAYOUT
    else:
        heads = sorted(key for key in state_dict if key.startswith("to_out."))
        raise CheckpointConversionError(
            f"Unknown output head: expected 'to_out.weight' or 'to_out.conv1.*', found {heads}."
        )
    values = {
        "vocab_size": int(vocab_size),
        "num_genes": int(state_dict["pos_emb.emb.weight"].shape[0]) - 1,
        "hidden_size": int(hidden_size),
        "num_hidden_layers": len(layer_indices),
        "num_attention_heads": int(inner_size // head_dim),
        "head_dim": int(head_dim),
        "intermediate_size": int(state_dict[first + "1.fn.fn.w1.weight"].shape[0]),
        "num_random_features": int(num_random_features),
        "gene_embedding_type": "frozen",
        "mask_token_id": int(vocab_size) - 1,
    }
    if layout == FINETUNED_LAYOUT:
        _require(state_dict, ["to_out.fc1.weight", "to_out.fc2.weight", "to_out.fc3.weight"])
        num_labels = int(state_dict["to_out.fc3.weight"].shape[0])
        values["classifier_type"] = "conv"
        values["classifier_hidden_sizes"] = [
            int(state_dict["to_out.fc1.weight"].shape[0]),
            int(state_dict["to_out.fc2.weight"].shape[0]),
        ]
        if labels is not None and len(labels) != num_labels:
            raise CheckpointConversionError(
                f"{len(labels)} label names were given but the checkpoint's classifier has {num_labels} outputs."
            )
        names = labels or [f"LABEL_{i}" for i in range(num_labels)]
        values["id2label"] = dict(enumerate(names))
        values["label2id"] = {name: i for i, name in enumerate(names)}
    elif labels is not None:
        raise CheckpointConversionError(
            "Label names were given, but this is a pretraining checkpoint (no classifier)."
        )
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        config = ScBertConfig(**values)
    except ValueError as error:
        raise CheckpointConversionError(f"The inferred architecture is not valid: {error}") from error
    return config, layout


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: ScBertConfig, layout: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename the published tensors to ours, refusing missing, unexpected or mis-shaped ones by name.

    Raises
    ------
    CheckpointConversionError
        Tensors are missing, unexpected or mis-shaped (each named).
    """
    mapping = dict(_SHARED_KEYS)
    for i in range(config.num_hidden_layers):
        mapping.update({src.format(i=i): dst.format(i=i) for src, dst in _LAYER_KEYS.items()})
    mapping.update(_FINETUNED_HEAD_KEYS if layout == FINETUNED_LAYOUT else _PRETRAINING_HEAD_KEYS)

    missing = sorted(set(mapping) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(mapping) - _IGNORED_KEYS)
    if missing or unexpected:
        raise CheckpointConversionError(
            "The checkpoint does not have the published scBERT layout "
            f"({layout}, {config.num_hidden_layers} layers). Missing: {missing or 'none'}. Unexpected: "
            f"{unexpected or 'none'}. (A performer-pytorch checkpoint has 'proj_updater' keys and no attention-output "
            "bias; it is not a published scBERT checkpoint.)"
        )
    model_class = ScBertForSequenceClassification if layout == FINETUNED_LAYOUT else ScBertForMaskedLM
    with torch.device("meta"):
        expected_shapes = {name: tuple(t.shape) for name, t in model_class(config).state_dict().items()}
    converted = {}
    mis_shaped = []
    for src, dst in mapping.items():
        tensor = state_dict[src]
        if dst == "classifier.token_projection.weight":
            tensor = tensor.reshape(1, -1)  # Conv2d(1, 1, (1, hidden)) weight is a Linear(hidden, 1) weight
        if tuple(tensor.shape) != expected_shapes[dst]:
            mis_shaped.append(f"{src}: {tuple(tensor.shape)}, expected {expected_shapes[dst]}")
            continue
        converted[dst] = tensor.detach().to(torch.float32).contiguous()
    if mis_shaped:
        raise CheckpointConversionError("Mis-shaped tensors: " + "; ".join(mis_shaped))
    ignored = sorted(set(state_dict) & _IGNORED_KEYS)
    return converted, ignored


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    labels: list[str] | None = None,
    tokenizer: ScBertTokenizer | None = None,
    overwrite: bool = False,
    trust_checkpoint: bool = False,
    **overrides,
) -> ConversionReport:
    """Convert a published ``.pth`` checkpoint into a ``save_pretrained`` folder.

    Parameters
    ----------
    checkpoint
        The published ``.pth`` file.
    output_dir
        Folder to write. It is written next to its final place and moved there when complete.
    labels
        Class names in class-index order (fine-tuned checkpoints); default ``LABEL_i``.
    tokenizer
        The model's gene panel (e.g. ``ScBertTokenizer.from_gene_file``), written next to the model. Its
        panel size must equal the checkpoint's ``num_genes``.
    overwrite
        Replace an existing ``output_dir``.
    trust_checkpoint
        Allow full unpickling of the checkpoint (see :func:`load_original_state_dict`).
    **overrides
        ``ScBertConfig`` fields that replace the inferred values.

    Raises
    ------
    FileExistsError
        ``output_dir`` exists and ``overwrite`` is false.
    CheckpointConversionError
        The checkpoint cannot be read or converted, or the tokenizer's panel is not the
        checkpoint's.

    Returns
    -------
    The conversion report.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} exists; choose another folder or pass overwrite=True (--overwrite).")
    state_dict = load_original_state_dict(checkpoint, trust_checkpoint=trust_checkpoint)
    config, layout = infer_config(state_dict, labels=labels, **overrides)
    converted, ignored = convert_state_dict(state_dict, config, layout)
    if tokenizer is not None:
        try:
            tokenizer.check_model_config(config)
        except ValueError as error:
            raise CheckpointConversionError(str(error)) from error

    model_class = ScBertForSequenceClassification if layout == FINETUNED_LAYOUT else ScBertForMaskedLM
    model = model_class(config)
    result = model.load_state_dict(converted, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept for clarity of intent
        raise CheckpointConversionError(f"Internal key mismatch: {result}")
    model.eval()

    gene_table = state_dict["pos_emb.emb.weight"]
    rounding = (gene_table.double() - converted["scbert.embeddings.gene_embeddings.weight"].double()).abs().max()

    sha256 = file_sha256(checkpoint)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    # Written beside output_dir and moved there when complete: a failure leaves no half folder, nor touches the old one.
    with atomic_path(output_dir, directory=True) as staging:
        model.save_pretrained(staging)
        # The provenance goes with the weights, so that the card of a later push states where they came from.
        provenance = {"provenance": {"source_file": Path(checkpoint).name, "sha256": sha256, "layout": layout}}
        if tokenizer is None:
            ScBertCardData().merged(provenance).save(staging)
        else:
            tokenizer.save_pretrained(staging)
            write_model_card(staging, provenance)

    report = ConversionReport(
        source=str(checkpoint),
        sha256=sha256,
        layout=layout,
        config=config,
        num_parameters=sum(p.numel() for p in model.parameters()),
        shapes={name: tuple(t.shape) for name, t in converted.items()},
        gene_table_rounding_error=float(rounding),
        ignored_keys=ignored,
        panel_hash=None if tokenizer is None else tokenizer.panel_hash,
    )
    logger.info("Converted %s to %s\n%s", checkpoint, output_dir, report.summary())
    return report


def _require(state_dict: dict[str, torch.Tensor], keys: list[str]) -> None:
    missing = [key for key in keys if key not in state_dict]
    if missing:
        raise CheckpointConversionError(
            f"Not a published scBERT checkpoint: missing {missing}. Found keys such as {sorted(state_dict)[:8]}."
        )


__all__ = ["CheckpointConversionError", "ConversionReport", "convert_checkpoint", "infer_config"]
