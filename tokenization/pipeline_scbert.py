"""The ``cell-type-annotation`` pipeline: an AnnData (or an ``.h5ad`` path) in, one ``{"label", "score"}`` per cell out.

It is a standard ``transformers`` custom pipeline. Saved with a fine-tuned model (``pipe.save_pretrained(folder)``, or
:func:`save_pipeline_code` for a folder that already holds the model and its tokenizer), it travels as remote code::

    from transformers import pipeline

    annotator = pipeline("cell-type-annotation", model="FOLDER_OR_REPO", trust_remote_code=True)
    annotator(adata)  # [{"label": "B cell", "score": 0.97}, ...], one per cell, in order

and works where this package is not installed (torch, transformers and anndata are enough). The file lives in
``tokenization`` and imports the tokenizer relatively because remote code can import only the files saved beside it:
this way the files that are saved are the package's own, and the tokenizer's logic exists once. So do the batching
(``cell_batches.py``) and the call rule (``cell_calls.py``), which ``modeling_scbert``'s ``annotate`` uses too. It
never imports ``modeling_scbert``: the model it runs is the one the pipeline factory loads
(``AutoModelForSequenceClassification``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Pipeline

from .atomic_files import write_text_atomically
from .cell_batches import INFERENCE_BATCH_CELLS, cell_batches
from .cell_calls import UNASSIGNED, call_cells
from .novelty import DEFAULT_NOVELTY_THRESHOLD, NoveltyDetector
from .preprocessing import default_min_genes
from .saved_weights import check_finite_weights, check_loaded_weights
from .tokenization_scbert import ScBertTokenizer

TASK = "cell-type-annotation"


class ScBertCellTypeAnnotationPipeline(Pipeline):
    """Annotate every cell of an AnnData with a fine-tuned scBERT classifier.

    The cells are read with the model's own :class:`ScBertTokenizer` (saved with the model) and batched as
    ``modeling_scbert``'s ``annotate`` batches them (:func:`~tokenization.cell_batches.cell_batches`), so the
    preprocessing is exactly annotate's, and so are the labels (the one rule of
    :func:`~tokenization.cell_calls.call_cells`): the most likely class, with ``"Unassigned"`` where its probability is
    below ``unassigned_threshold`` or where the cell has too little signal in the panel (no panel counts, or fewer
    detected panel genes than ``min_genes``; the score is still the top probability).

    Call options (also accepted by the ``pipeline(...)`` factory):

    - ``top_k`` (default 1): with 1, one ``{"label", "score"}`` dict per cell; with ``k > 1`` (or ``None`` for all
      classes) a list of the ``k`` most likely classes per cell, most likely first.
    - ``unassigned_threshold`` (default ``None``): the top label becomes ``"Unassigned"`` when its probability (the
      ``score``, which is kept) is below this.
    - ``novel_types`` (default ``False``): the top label becomes ``"Unassigned"`` when the cell's ``novelty`` is at or
      above ``novelty_threshold`` (default 0.95: at most 5% of cells like the reference's flagged). A model saved
      with its novelty detector (``novelty_detector.safetensors``, see ``tokenization/novelty.py``) gives every
      cell's ``novelty`` in its result (the first entry with ``top_k > 1``); a model without one gives none and
      refuses ``novel_types``.
    - ``batch_size`` (default 32): cells per forward pass.
    - ``layer``, ``gene_key``, ``input_kind``, ``synonyms``, ``min_gene_overlap``, ``use_raw``, ``min_genes``: how to
      read the cells, as for :meth:`ScBertTokenizer.__call__` (and ``annotate``).
    """

    _load_tokenizer = False  # the scBERT tokenizer is not a transformers tokenizer; __init__ loads it
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, model: Any, tokenizer: ScBertTokenizer | None = None, **kwargs: Any) -> None:
        if tokenizer is None:
            # The model's own panel and binning contract, from the same folder or repository (and commit).
            tokenizer = ScBertTokenizer.from_pretrained(
                model.name_or_path, revision=getattr(model.config, "_commit_hash", None)
            )
        super().__init__(model, tokenizer=tokenizer, **kwargs)
        tokenizer.check_model_config(model.config)
        # The factory's from_pretrained fills missing tensors at random and casts mistyped ones: check what it loaded.
        if model.name_or_path:
            check_loaded_weights(model, model.name_or_path, revision=getattr(model.config, "_commit_hash", None))
        else:
            check_finite_weights(model)
        self.class_names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
        self.novelty_detector = None
        if model.name_or_path:
            revision = getattr(model.config, "_commit_hash", None)
            self.novelty_detector = NoveltyDetector.load(model.name_or_path, revision=revision)
        if self.novelty_detector is not None:
            self.novelty_detector.check_classes(self.class_names, source=model.name_or_path)
            if self.novelty_detector.num_genes != tokenizer.num_genes or not self.novelty_detector.calibrated:
                raise ValueError(
                    f"The novelty detector of {model.name_or_path!r} does not fit its model (another panel, or not "
                    "calibrated); remove novelty_detector.safetensors or fine-tune again."
                )

    def _sanitize_parameters(
        self,
        top_k: int | None | str = "unset",
        unassigned_threshold: float | None = None,
        novel_types: bool = False,
        novelty_threshold: float = DEFAULT_NOVELTY_THRESHOLD,
        layer: str | None = None,
        gene_key: str | None = None,
        input_kind: str | None = None,
        synonyms: Any = None,
        min_gene_overlap: float | None = None,
        use_raw: bool | None = None,
        min_genes: int | None = None,
        **unknown: Any,
    ) -> tuple[dict, dict, dict]:
        if unknown:
            raise TypeError(
                f"Unknown option(s) {sorted(unknown)} for the {TASK} pipeline; the options are top_k, "
                "unassigned_threshold, novel_types, novelty_threshold, batch_size, layer, gene_key, input_kind, synonyms, min_gene_overlap, use_raw "
                "and min_genes."
            )
        reading = {
            "layer": layer,
            "gene_key": gene_key,
            "input_kind": input_kind,
            "synonyms": synonyms,
            "min_gene_overlap": min_gene_overlap,
            "use_raw": use_raw,
            "min_genes": min_genes,
        }
        preprocess = {key: value for key, value in reading.items() if value is not None}
        # min_genes is a reading option (the tokenizer counts such cells) and part of the call rule.
        postprocess: dict[str, Any] = {} if min_genes is None else {"min_genes": min_genes}
        if top_k != "unset":
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a positive integer or None (all classes); got {top_k!r}.")
            postprocess["top_k"] = top_k
        if unassigned_threshold is not None:
            if not 0 <= unassigned_threshold <= 1:
                raise ValueError(
                    f"unassigned_threshold must lie in [0, 1] (a probability); got {unassigned_threshold}."
                )
            if UNASSIGNED in self.model.config.id2label.values():
                raise ValueError(f"The model has a class named {UNASSIGNED!r}, which the threshold would shadow.")
            postprocess["unassigned_threshold"] = unassigned_threshold
        if novel_types:
            if self.novelty_detector is None:
                raise ValueError(
                    f"novel_types=True needs the model's novelty detector (novelty_detector.safetensors), and "
                    f"{self.model.name_or_path!r} has none: it was fine-tuned before novelty detectors existed, or from an encoded "
                    "dataset. Use unassigned_threshold, or fine-tune again."
                )
            if not 0 < novelty_threshold <= 1:
                raise ValueError(f"novelty_threshold must lie in (0, 1]; got {novelty_threshold}.")
            if UNASSIGNED in self.model.config.id2label.values():
                raise ValueError(f"The model has a class named {UNASSIGNED!r}, which novel types would shadow.")
            postprocess["novelty_threshold"] = novelty_threshold
        return preprocess, {}, postprocess

    def __call__(self, inputs: Any, **kwargs: Any) -> list:
        """Annotate the cells of ``inputs`` (an AnnData or an ``.h5ad`` path; a list of them gives a list of
        results). Returns one result per cell, in order (see the class docstring).

        Raises
        ------
        TypeError
            For an input that is neither an AnnData nor a path, and for an unknown option.
        FileNotFoundError
            For a path that is not a file.
        ValueError
            For ``batch_size``, ``top_k`` or ``unassigned_threshold`` out of range, and whatever the tokenizer
            refuses about the cells (too few panel genes, values that are not counts, ...).
        """
        if isinstance(inputs, (list, tuple)):
            return [self(item, **kwargs) for item in inputs]
        batch_size = kwargs.pop("batch_size", None) or self._batch_size or INFERENCE_BATCH_CELLS
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}.")
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        postprocess = {**self._postprocess_params, **postprocess}
        # Stream: encode a chunk of cells, run it in batches, keep only the probabilities.
        probabilities, detected_genes, novelty = [], [], []
        for model_inputs in self.preprocess(inputs, batch_size=batch_size, **preprocess):
            detected_genes.append(model_inputs.pop("detected_genes"))
            if "novelty" in model_inputs:
                novelty.append(model_inputs.pop("novelty"))
            probabilities.append(self.forward(model_inputs, **forward)["probabilities"])
        stacked = (
            torch.cat(probabilities).numpy() if probabilities else np.zeros((0, len(self.class_names)), np.float32)
        )
        detected = np.concatenate(detected_genes) if detected_genes else np.zeros(0, dtype=np.int64)
        outputs = {"probabilities": stacked, "detected_genes": detected}
        if self.novelty_detector is not None:
            outputs["novelty"] = np.concatenate(novelty) if novelty else np.zeros(0, np.float32)
        return self.postprocess(outputs, **postprocess)

    def preprocess(
        self, inputs: Any, *, batch_size: int = INFERENCE_BATCH_CELLS, **read_options: Any
    ) -> Iterator[dict[str, Any]]:
        detector = self.novelty_detector
        batches = cell_batches(
            self.tokenizer, _read(inputs), batch_size=batch_size, return_values=detector is not None, **read_options
        )
        for batch in batches:
            model_inputs = {"input_ids": batch.input_ids, "detected_genes": batch.detected_genes}
            if detector is not None:
                model_inputs["novelty"] = detector.scores(batch.values)
            yield model_inputs

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(**model_inputs).logits
        return {"probabilities": torch.softmax(logits.float(), dim=-1)}

    def postprocess(
        self,
        model_outputs: dict[str, np.ndarray],
        top_k: int | None = 1,
        unassigned_threshold: float | None = None,
        min_genes: int | None = None,
        novelty_threshold: float | None = None,
    ) -> list:
        probabilities = model_outputs["probabilities"]
        novelty = model_outputs.get("novelty")
        detected_genes = model_outputs.get("detected_genes")
        min_genes = default_min_genes(self.tokenizer.num_genes) if min_genes is None else min_genes
        if detected_genes is None:  # probabilities alone: no cell is judged on its signal in the panel
            detected_genes, min_genes = np.ones(len(probabilities), dtype=np.int64), 0
        calls = call_cells(
            probabilities,
            self.class_names,
            detected_genes=detected_genes,
            min_genes=min_genes,
            unassigned_threshold=unassigned_threshold,
            novelty=novelty,
            novelty_threshold=novelty_threshold,
        )
        k = len(self.class_names) if top_k is None else min(top_k, len(self.class_names))
        # A stable sort puts the first of tied classes first, as the call rule's argmax does.
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        results = []
        for i, (cell, classes, label) in enumerate(zip(probabilities, order, calls.labels)):
            ranked = [{"label": self.class_names[c], "score": float(cell[c])} for c in classes]
            ranked[0]["label"] = label
            if novelty is not None:
                ranked[0]["novelty"] = float(novelty[i])
            results.append(ranked[0] if top_k == 1 else ranked)
        return results


def _read(inputs: Any) -> Any:
    import anndata

    if isinstance(inputs, anndata.AnnData):
        return inputs
    if isinstance(inputs, (str, os.PathLike)):
        path = Path(inputs)
        if not path.is_file():
            raise FileNotFoundError(f"The input {str(path)!r} does not exist or is not a file.")
        return anndata.read_h5ad(path, backed="r")  # read chunk by chunk; the file is never modified
    raise TypeError(f"The {TASK} pipeline takes an AnnData or the path of an .h5ad file; got {type(inputs).__name__}.")


def save_pipeline_code(save_directory: str | os.PathLike) -> list[str]:
    """Add the pipeline to a folder that holds a fine-tuned model and its tokenizer.

    Copies this file and the tokenizer's modules (which it imports relatively) into the folder and records the task in
    its ``config.json`` under ``custom_pipelines``, as ``Pipeline.save_pretrained`` does, so that
    ``pipeline("cell-type-annotation", model=folder, trust_remote_code=True)`` finds it. Files are written atomically.

    Returns
    -------
    The files written.

    Raises
    ------
    FileNotFoundError
        When the folder has no ``config.json``.
    """
    from transformers.dynamic_module_utils import get_relative_import_files

    directory = Path(save_directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(directory)!r} has no config.json; save the model there first.")
    written = []
    for source in [__file__, *get_relative_import_files(__file__)]:
        target = directory / Path(source).name
        write_text_atomically(target, Path(source).read_text(encoding="utf-8"))
        written.append(str(target))
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["custom_pipelines"] = {
        TASK: {
            "impl": f"{Path(__file__).stem}.{ScBertCellTypeAnnotationPipeline.__name__}",
            "pt": ["AutoModelForSequenceClassification"],
        }
    }
    write_text_atomically(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    written.append(str(config_path))
    return written


__all__ = ["TASK", "ScBertCellTypeAnnotationPipeline", "save_pipeline_code"]
