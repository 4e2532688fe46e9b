"""What a model folder holds and the Hub gets: the one allow-list of model files, for every push.

:func:`plan_upload` splits a folder's entries into the files a push uploads (:data:`MODEL_FILE_NAMES`,
:data:`MODEL_FILE_PATTERNS` and the remote code that ``config.json`` names) and those it leaves out.
:func:`~modeling_scbert.hub.push.push_model_folder` (``scbert push``) and
:meth:`~modeling_scbert.training.trainer.ScBertTrainer.push_to_hub` both upload through it.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tokenization.tokenizer_contract import GENES_NAME, TOKENIZER_CONFIG_NAME

from .card import README_NAME
from .card_data import CARD_FACTS_NAME

# What a model folder holds and the Hub gets (top-level files only; everything else stays local):
# - config.json (transformers' save_pretrained; the converter and save_pipeline_code rewrite it),
#   generation_config.json (save_pretrained writes it for generative models only), the weights and their shard index;
# - the tokenizer: tokenizer_config.json and genes.txt (the only gene file ScBertTokenizer writes);
# - the card: README.md and the facts it was rendered from (scbert_card.json);
# - the evaluation the card reports, as the package writes it: classification_report.json (finetune) and the
#   Trainer's eval_results.json / all_results.json (save_metrics in finetune and push_trainer_to_hub);
# - the remote code: the modules config.json names (auto_map, custom_pipelines) and those they import relatively
#   (modeling_scbert.py, configuration_scbert.py; the pipeline and tokenizer modules save_pipeline_code copies).
# Left out on purpose: trainer_state.json (its facts are in the card; it records local paths such as
# best_model_checkpoint), training_args.bin and other pickles (unsafe to load, not needed to use the model),
# checkpoints and logs (sub-folders), hidden files, and anything else: tokens, keys, notes, experiment trackers' files.
MODEL_FILE_NAMES = (
    "config.json",
    "generation_config.json",
    TOKENIZER_CONFIG_NAME,
    GENES_NAME,
    README_NAME,
    CARD_FACTS_NAME,
    "classification_report.json",
    "eval_results.json",
    "all_results.json",
)
MODEL_FILE_PATTERNS = ("*.safetensors", "*.safetensors.index.json")


@dataclass(frozen=True)
class UploadPlan:
    """What a push of a model folder uploads (``files``) and what it leaves out (``left_out``), as names in it.

    Sub-folders are listed in ``left_out`` with a trailing ``/``.
    """

    files: tuple[str, ...]
    left_out: tuple[str, ...]


def _remote_code_files(model_dir: Path) -> set[str]:
    """The ``.py`` files of ``model_dir`` that its ``config.json`` loads as remote code, and their relative imports."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    references = list((config.get("auto_map") or {}).values())
    references += [
        task.get("impl") for task in (config.get("custom_pipelines") or {}).values() if isinstance(task, dict)
    ]
    modules = set()
    for reference in references:
        for value in reference if isinstance(reference, list) else [reference]:
            if isinstance(value, str) and "." in value:
                modules.add(value.split("--")[-1].rsplit(".", 1)[0])  # "repo--module.Class" names another repo's code
    from transformers.dynamic_module_utils import get_relative_imports

    found: set[str] = set()
    while modules:
        module = modules.pop()
        name = f"{module}.py"
        path = model_dir / name
        if name in found or "/" in module or not path.is_file():
            continue
        found.add(name)
        modules.update(get_relative_imports(path))
    return found


def plan_upload(model_dir: str | os.PathLike) -> UploadPlan:
    """Split the entries of a model folder into the files a push uploads and those it leaves out.

    The files uploaded are the top-level files that :data:`MODEL_FILE_NAMES` and :data:`MODEL_FILE_PATTERNS` allow,
    and the remote code ``config.json`` names (with its relative imports). Hidden files are never uploaded.

    Raises
    ------
    ValueError
        When a file to upload is a symbolic link whose target lies outside the folder (naming the link and the
        target): the upload would publish a file that is not part of the model folder.
    """
    model_dir = Path(model_dir)
    root = model_dir.resolve()
    allowed = {*MODEL_FILE_NAMES, *_remote_code_files(model_dir)}
    files, left_out = [], []
    for entry in sorted(model_dir.iterdir(), key=lambda path: path.name):
        name = entry.name
        if entry.is_dir():
            left_out.append(f"{name}/")
            continue
        wanted = not name.startswith(".") and (
            name in allowed or any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_FILE_PATTERNS)
        )
        if not wanted or not entry.is_file():
            left_out.append(name)
            continue
        if entry.is_symlink() and not entry.resolve().is_relative_to(root):
            raise ValueError(
                f"{str(entry)!r} is a symbolic link to {str(entry.resolve())!r}, outside the model folder; a push "
                "would upload a file that is not part of it. Replace the link with a copy of the file, or remove it."
            )
        files.append(name)
    return UploadPlan(files=tuple(files), left_out=tuple(left_out))


__all__ = ["MODEL_FILE_NAMES", "MODEL_FILE_PATTERNS", "UploadPlan", "plan_upload"]
