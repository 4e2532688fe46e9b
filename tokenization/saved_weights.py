"""Weights that load but are wrong: missing or mistyped tensors in a saved model, and non-finite values.

``transformers``' ``from_pretrained`` initialises a tensor the file lacks at random (it prints a load report and
goes on), and casts a tensor stored with another dtype (an int64 weight is truncated silently). For an annotator
either means labels that look fine and are not, so the package's own loading (annotate, embed, gene attention, the
``cell-type-annotation`` pipeline, the starting model of fine-tuning) checks the file against the model it built
(:func:`check_saved_weights`) and the loaded values (:func:`check_finite_weights`).

This module lives in ``tokenization`` because the pipeline, which travels as remote code with its sibling files,
checks the model it is given with it; it needs only torch and safetensors.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "SAFETENSORS_INDEX_NAME",
    "SAFETENSORS_NAME",
    "DamagedWeightsError",
    "check_finite_weights",
    "check_loaded_weights",
    "check_saved_weights",
    "model_weight_files",
    "saved_weight_files",
]

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


class DamagedWeightsError(ValueError):
    """A saved model whose tensors are missing, of the wrong kind, or not finite."""


def saved_weight_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a saved model folder (one file, or the shards its index names); empty if none.

    Raises
    ------
    DamagedWeightsError
        When the index names a shard that is not in the folder.
    """
    folder = Path(folder)
    if (folder / SAFETENSORS_NAME).is_file():
        return [folder / SAFETENSORS_NAME]
    index = folder / SAFETENSORS_INDEX_NAME
    if not index.is_file():
        return []
    shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
    missing = [name for name in shards if not (folder / name).is_file()]
    if missing:
        raise DamagedWeightsError(f"{str(folder)!r}: the weight shards {missing} named in {index.name} are missing.")
    return [folder / name for name in shards]


def model_weight_files(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> list[Path]:
    """The safetensors files of a model folder, or of a Hub repository (from the local cache or the Hub).

    ``hub_kwargs`` are ``revision``, ``local_files_only``, ... as for ``from_pretrained``. Empty where the model has
    no safetensors files (an old ``pytorch_model.bin``): then only the values are checked.
    """
    if Path(name_or_path).is_dir():
        return saved_weight_files(name_or_path)
    from transformers.utils import cached_file

    kwargs = {key: value for key, value in hub_kwargs.items() if key in ("revision", "local_files_only", "token")}
    single = cached_file(str(name_or_path), SAFETENSORS_NAME, _raise_exceptions_for_missing_entries=False, **kwargs)
    if single is not None:
        return [Path(single)]
    index = cached_file(
        str(name_or_path), SAFETENSORS_INDEX_NAME, _raise_exceptions_for_missing_entries=False, **kwargs
    )
    if index is None:
        return []
    for shard in sorted(set(json.loads(Path(index).read_text()).get("weight_map", {}).values())):
        cached_file(str(name_or_path), shard, **kwargs)  # fetched beside the index
    return saved_weight_files(Path(index).parent)


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating point"
    if dtype.is_complex:
        return "complex"
    return "boolean" if dtype == torch.bool else "integer"


def check_saved_weights(
    model: torch.nn.Module, files: Sequence[str | os.PathLike], *, may_lack: Iterable[str] = (), source: str = ""
) -> None:
    """Check that the saved tensors in ``files`` are the ones ``model`` needs: none missing, none extra, none of
    another kind.

    An "extra" tensor is one the file holds in a part the model has (its encoder, its head) but the model does not
    know: the file was written by another architecture or version. Tensors of parts the model lacks (a classifier's
    head read by the bare encoder, a masked-LM head read by a classifier) are not extra; transformers drops them by
    design.

    A tensor "of another kind" is stored as integers where the model holds floating point (or the other way round):
    ``from_pretrained`` would cast it, truncating or inventing values. Precision alone (float16 or bfloat16 files for
    a float32 model) is not a fault.

    Parameters
    ----------
    model
        The model the files were loaded into (its ``state_dict`` names what must be there).
    files
        The model's safetensors files (:func:`saved_weight_files`).
    may_lack
        Name prefixes that may be absent, e.g. ``("classifier.",)`` when a pretrained encoder starts a new head.
    source
        The folder or repository, for messages.

    Raises
    ------
    DamagedWeightsError
        Naming every missing or extra tensor and every tensor of another kind.
    """
    from safetensors import safe_open

    stored: dict[str, torch.dtype] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                stored[key] = handle.get_slice(key).get_dtype()
    if not files:
        return
    # A base model and a model with a head name the encoder's tensors with and without the base model's prefix
    # ("scbert."); transformers loads either from the other, so they are compared without it.
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    stored = {key.removeprefix(prefix): dtype for key, dtype in stored.items()}
    tied = getattr(model, "_tied_weights_keys", None) or {}
    may_lack = tuple(name.removeprefix(prefix) for name in (*tuple(may_lack), *tied))
    expected = {key.removeprefix(prefix): tensor for key, tensor in model.state_dict().items()}
    missing = sorted(key for key in expected if key not in stored and not key.startswith(tuple(may_lack)))
    parts = {key.split(".", 1)[0] for key in expected}
    extra = sorted(key for key in stored if key not in expected and key.split(".", 1)[0] in parts)
    mistyped = sorted(
        f"{key} (stored as {_dtype(stored[key])}, needed {expected[key].dtype})"
        for key in expected
        if key in stored and _kind(_dtype(stored[key])) != _kind(expected[key].dtype)
    )
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} tensors are missing ({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''})"
        )
    if extra:
        problems.append(
            f"{len(extra)} tensors are not the model's ({', '.join(extra[:10])}{', ...' if len(extra) > 10 else ''})"
        )
    if mistyped:
        problems.append(f"{len(mistyped)} are of another kind: {', '.join(mistyped[:10])}")
    if problems:
        where = f" in {source!r}" if source else ""
        raise DamagedWeightsError(
            f"The saved weights{where} do not fit the model: {'; '.join(problems)}. Loading would fill them at random "
            "or cast them; the folder is damaged or belongs to another model. Save or download it again."
        )


def _dtype(stored: object) -> torch.dtype:
    """safetensors names dtypes as strings (``'F32'``, ``'I64'``, ...) or gives torch dtypes, by version."""
    if isinstance(stored, torch.dtype):
        return stored
    names = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    names.update({"I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8})
    names.update({"BOOL": torch.bool})
    return names.get(str(stored).upper(), torch.float32)


def check_finite_weights(model: torch.nn.Module, *, source: str = "") -> None:
    """Refuse a model with NaN or infinite values in any parameter or buffer (which makes every probability NaN).

    Raises
    ------
    DamagedWeightsError
        Naming the tensors with non-finite values and how many values each has.
    """
    tensors = [*model.named_parameters(), *model.named_buffers()]
    bad = [
        f"{name} ({int((~torch.isfinite(tensor)).sum())} of {tensor.numel()})"
        for name, tensor in tensors
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        where = f" of {source!r}" if source else ""
        raise DamagedWeightsError(
            f"The weights{where} hold NaN or infinite values in {len(bad)} tensors: {', '.join(bad[:10])}. Every "
            "prediction would be NaN; the weights are damaged (or training diverged). Use another checkpoint."
        )


def check_loaded_weights(
    model: torch.nn.Module, name_or_path: str | os.PathLike, *, may_lack: Iterable[str] = (), **hub_kwargs: Any
) -> None:
    """Check a model just loaded from ``name_or_path`` (a folder or Hub id): its saved tensors against the model
    (:func:`check_saved_weights`, files found by :func:`model_weight_files` with ``hub_kwargs``) and its values
    (:func:`check_finite_weights`).

    Raises
    ------
    DamagedWeightsError
        As those two functions raise it.
    """
    source = str(name_or_path)
    check_saved_weights(model, model_weight_files(name_or_path, **hub_kwargs), may_lack=may_lack, source=source)
    check_finite_weights(model, source=source)
