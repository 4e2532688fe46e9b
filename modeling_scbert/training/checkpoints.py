"""Which ``checkpoint-*`` folder a run resumes from: the last complete one.

The ``Trainer`` writes a checkpoint in place (``Trainer._save_checkpoint``): the model's weights, then (unless
``save_only_model``) the optimizer, the scheduler, the scaler and the RNG states, and ``trainer_state.json`` last. A
process killed while it writes, or a full disk, leaves a folder that has the name of a checkpoint but not its content;
transformers' ``get_last_checkpoint`` would pick it by its name, and resuming would fail or start from broken weights.
:func:`last_complete_checkpoint` reads what each folder holds instead, newest first, and names every incomplete one it
passes over in a WARNING.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile

from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
# The model's weights as save_pretrained writes them: one file, or shards listed in an index (also a PEFT adapter).
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Engines that keep weights and optimizer state in folders of their own (DeepSpeed's global_step*, FSDP's shards).
_ENGINE_FOLDERS = re.compile(r"^(global_step\d+|pytorch_model_fsdp_\d+|optimizer_\d+)$")


def _readable(path: str) -> bool:
    """Whether a weight or state file is whole: a safetensors header that accounts for the file's size, a torch
    zip archive with its central directory, JSON that parses."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt"):
                return True
        if path.endswith((".bin", ".pt", ".pth")):
            return zipfile.is_zipfile(path)  # torch.save's format; a truncated archive has no central directory
        with open(path, encoding="utf-8") as handle:
            json.load(handle)
        return True
    except Exception:  # noqa: BLE001 - any failure to read means the file is not whole
        return False


def checkpoint_problems(folder: str, *, save_only_model: bool = False) -> list[str]:
    """What keeps ``folder`` from being a complete checkpoint (empty when it is complete).

    Complete: ``trainer_state.json`` (written last) parses and names its step; the model's weights are there and
    whole (one file, or an index with every shard); unless ``save_only_model`` (or an engine keeps it in folders of
    its own), ``optimizer.pt`` and ``scheduler.pt`` are there and whole; every other weight or state file is whole.
    """
    names = set(os.listdir(folder))
    problems = []
    state = os.path.join(folder, "trainer_state.json")
    if "trainer_state.json" not in names:
        problems.append("no trainer_state.json")
    elif not _readable(state):
        problems.append("trainer_state.json does not parse")
    engine = any(_ENGINE_FOLDERS.match(name) and os.path.isdir(os.path.join(folder, name)) for name in names)
    weights = [name for name in _WEIGHT_FILES if name in names]
    for index in (name for name in _WEIGHT_INDEXES if name in names):
        try:
            with open(os.path.join(folder, index), encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
        except Exception:  # noqa: BLE001
            problems.append(f"{index} does not parse")
            continue
        missing = [shard for shard in shards if shard not in names]
        if missing:
            problems.append(f"{index} lists missing shards {missing}")
        weights.append(index)
    if not weights and not engine:
        problems.append("no model weights")
    if not save_only_model and not engine:
        if not names & {"optimizer.pt", "optimizer.bin"}:
            problems.append("no optimizer state")
        if "scheduler.pt" not in names:
            problems.append("no scheduler state")
    for name in sorted(names):
        path = os.path.join(folder, name)
        if name.endswith((".safetensors", ".bin", ".pt", ".pth")) and os.path.isfile(path) and not _readable(path):
            problems.append(f"{name} is truncated or damaged")
    return problems


def last_complete_checkpoint(training_args: TrainingArguments) -> str:
    """The newest complete ``checkpoint-*`` folder in ``training_args.output_dir``; incomplete newer ones are named in
    a WARNING and passed over.

    Raises
    ------
    FileNotFoundError
        When ``output_dir`` holds no checkpoint folder, or none that is complete (each named with what it lacks).
    """
    output_dir = training_args.output_dir
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = _CHECKPOINT.match(name)
            if match and os.path.isdir(os.path.join(output_dir, name)):
                found.append((int(match.group(1)), os.path.join(output_dir, name)))
    if not found:
        raise FileNotFoundError(
            f"resume_from_checkpoint=True but {output_dir!r} holds no checkpoint-* folder; "
            "drop the option to start afresh, or pass the checkpoint folder."
        )
    incomplete = []
    for _, folder in sorted(found, reverse=True):
        problems = checkpoint_problems(folder, save_only_model=training_args.save_only_model)
        if not problems:
            return folder
        logger.warning(
            "Checkpoint %s is incomplete (%s; a run killed while saving it?): skipping it.",
            folder,
            "; ".join(problems),
        )
        incomplete.append(f"{os.path.basename(folder)} ({'; '.join(problems)})")
    raise FileNotFoundError(
        f"resume_from_checkpoint=True but no checkpoint in {output_dir!r} is complete: {', '.join(incomplete)}. "
        "Drop the option to start afresh, or pass a checkpoint folder."
    )


__all__ = ["checkpoint_problems", "last_complete_checkpoint"]
