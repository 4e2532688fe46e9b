"""Publishing to the Hugging Face Hub: a model folder and its rendered card, pushed in one commit.

:func:`push_model_folder` checks the repository id (``huggingface_hub.utils.validate_repo_id``) and the folder
(config, weights, remote code, tokenizer), renders the card and checks it against the folder
(:mod:`modeling_scbert.model_card`), then uploads the files of the model and nothing else: :func:`plan_upload` picks
them by an allow-list (:mod:`.model_files`: ``MODEL_FILE_NAMES``, ``MODEL_FILE_PATTERNS`` and the remote code that
``config.json`` names; ``ScBertTrainer.push_to_hub`` uploads through the same list), so tokens, keys, notes, logs, pickles, hidden files and sub-folders a model folder may also
hold stay local. Training pushes through the stock ``Trainer.push_to_hub`` of
:class:`~modeling_scbert.trainer.ScBertTrainer`; :func:`push_trainer_to_hub` does the same for a plain ``Trainer``.
The card names are re-exported here, where they have always been importable from.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from tokenization import ScBertTokenizer
from tokenization.pipeline_scbert import save_pipeline_code

from ..modeling_scbert import ScBertForSequenceClassification
from ..training.run_card import hyperparameters_from_args
from ..training.trainer import ScBertTrainer
from .card import README_NAME, render_model_card, validate_model_card, write_model_card
from .card_data import (
    CARD_FACTS_NAME,
    ScBertCardData,
    metrics_to_evaluation,
    read_config,
    read_tokenizer,
    state_hyperparameters,
)
from .model_files import UploadPlan, plan_upload

logger = logging.getLogger(__name__)

__all__ = [
    "HubAuthenticationError",
    "check_repo_id",
    "push_model_folder",
    "push_trainer_to_hub",
]


class HubAuthenticationError(PermissionError):
    """No Hugging Face token is available for a push."""


def check_repo_id(repo_id: str) -> str:
    """Return ``repo_id`` if it is a Hub repository id of the form ``"namespace/name"``.

    Parameters
    ----------
    repo_id
        The id, e.g. ``"my-lab/scbert-pbmc"``.

    Returns
    -------
    ``repo_id``, unchanged.

    Raises
    ------
    ValueError
        Saying why not (``huggingface_hub.utils.validate_repo_id``'s reason, or a missing namespace).
    """
    try:
        namespace, _, name = repo_id.partition("/") if isinstance(repo_id, str) else ("", "", "")
        if not namespace or not name:
            raise HFValidationError("a namespace (user or organisation) and a name are both needed")
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(
            f"Repository id {repo_id!r} is not of the form 'namespace/name' that the Hub accepts (a user or "
            "organisation, a slash, a name; letters, digits, '-', '_' and '.', no '--' or '..', at most 96 "
            f"characters), e.g. 'my-lab/scbert-pbmc'. The Hub's check says: {error}"
        ) from error
    return repo_id


def _resolve_token(token: str | bool | None) -> str:
    if isinstance(token, str) and token:
        return token
    if token is False:
        raise HubAuthenticationError("A push needs a Hugging Face token, but token=False was passed.")
    found = get_token()
    if not found:
        raise HubAuthenticationError(
            "No Hugging Face token found, and a push needs one with write access. Log in with `hf auth login`, or "
            "set the HF_TOKEN environment variable, or pass token= (`scbert push --token`); tokens are made at "
            "https://huggingface.co/settings/tokens."
        )
    return found


def _check_model_folder(model_dir: Path) -> dict[str, Any]:
    config = read_config(model_dir)
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
    read_tokenizer(model_dir)
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
    dry_run: bool = False,
):
    """Push a model folder (weights, config, remote code, tokenizer) with its rendered card, in one commit.

    The card is rendered from the folder's facts (plus ``facts``), checked against the folder with
    :func:`validate_model_card`, and written to ``model_dir/README.md`` before the upload, so the folder and the
    repository hold the same card. Only the model's files are uploaded (see :func:`plan_upload` for the allow-list);
    what is left out is named in a log line. Sub-folders (checkpoints, logs) stay local.

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
    dry_run
        Check the folder and render the card in memory, then return what would be uploaded: nothing is written,
        no token is needed, and nothing reaches the Hub.

    Returns
    -------
    huggingface_hub.CommitInfo | UploadPlan
        The commit (``.oid`` is its sha, the revision to pin); with ``dry_run``, the :class:`UploadPlan`.

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
    ValueError
        Also for a file to upload that is a symbolic link leaving the folder (see :func:`plan_upload`).
    """
    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    _check_model_folder(model_dir)
    plan = plan_upload(model_dir)  # refuses links leaving the folder before anything is written or sent
    if dry_run:
        data = ScBertCardData.from_model_folder(model_dir, facts)
        text = render_model_card(data, repo_id=repo_id, local_name=model_dir.resolve().name, template=template)
        validate_model_card(text, model_dir)
        files = sorted({*plan.files, README_NAME, *([CARD_FACTS_NAME] if data.facts() else [])})
        return UploadPlan(files=tuple(files), left_out=plan.left_out)
    token = _resolve_token(token)
    card_path = write_model_card(model_dir, facts, repo_id=repo_id, template=template)
    logger.info("Rendered %s for %s", card_path, repo_id)
    plan = plan_upload(model_dir)  # again: the card and its facts file are written now
    if plan.left_out:
        logger.warning(
            "Not uploading %d entries of %s that are not part of a model (see modeling_scbert.hub.push."
            "model_files.MODEL_FILE_NAMES): %s",
            len(plan.left_out),
            model_dir,
            ", ".join(plan.left_out),
        )

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    # One commit for everything: a repository never shows weights with another model's card or tokenizer.
    commit = api.create_commit(
        repo_id=repo_id,
        operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=model_dir / name) for name in plan.files],
        commit_message=commit_message,
        revision=revision,
    )
    logger.info("Pushed %s to %s at commit %s", model_dir, repo_id, commit.oid)
    return commit


def push_trainer_to_hub(
    trainer: Any,
    *,
    tokenizer: ScBertTokenizer | None = None,
    facts: ScBertCardData | dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    commit_message: str = "End of training",
):
    """End a ``Trainer`` run: save model, tokenizer, metrics and state to ``output_dir`` with the card; push them.

    With an :class:`~modeling_scbert.trainer.ScBertTrainer`, prefer its own ``push_to_hub()``; this calls it. A plain
    ``Trainer``'s ``push_to_hub`` (and ``save_model`` with ``push_to_hub`` set) would write transformers' generic
    card, so its model is saved the way ``accelerate`` documents (gathered state dict, ``save_pretrained``) and the
    folder is pushed with :func:`push_model_folder`. Without ``args.push_to_hub`` the folder is saved with its card
    and nothing is pushed. Call it on every process (saving gathers sharded weights); only the main process writes
    and pushes.

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

    Raises
    ------
    ValueError
        When no ``ScBertTokenizer`` is given or known to the ``Trainer``.
    ModelCardError
        When the card cannot be rendered or does not match the saved folder.
    """
    args = trainer.args
    tokenizer = tokenizer or trainer.processing_class
    if not isinstance(tokenizer, ScBertTokenizer):
        raise ValueError(
            "push_trainer_to_hub needs the model's ScBertTokenizer: pass tokenizer=, or give it to the Trainer as "
            f"processing_class= (got {type(tokenizer).__name__})."
        )
    model = trainer.accelerator.unwrap_model(trainer.model)
    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    card_facts = ScBertCardData(evaluation=metrics_to_evaluation(metrics, labels) or None if metrics else None)
    card_facts = card_facts.merged(facts)
    if metrics:
        trainer.save_metrics("eval", metrics)
    if isinstance(trainer, ScBertTrainer):
        trainer.save_state()
        if args.push_to_hub:
            return trainer.push_to_hub(commit_message=commit_message, card_facts=card_facts)
        trainer.save_model()
        trainer.create_model_card(card_facts)
        return None
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)  # every process: gathers shards
    if not trainer.is_world_process_zero():
        return None
    output_dir = Path(args.output_dir)
    model.save_pretrained(output_dir, state_dict=state_dict)
    tokenizer.save_pretrained(output_dir)
    if isinstance(model, ScBertForSequenceClassification):
        save_pipeline_code(output_dir)  # pipeline("cell-type-annotation", ...) as remote code
    trainer.save_state()
    run = {**hyperparameters_from_args(args), "optimisation steps": trainer.state.global_step}
    card_facts = ScBertCardData(hyperparameters={**state_hyperparameters(trainer.state), **run}).merged(card_facts)
    if not args.push_to_hub:
        write_model_card(output_dir, card_facts)
        return None
    return push_model_folder(
        output_dir,
        trainer.hub_model_id or args.hub_model_id,
        private=bool(args.hub_private_repo),
        revision=args.hub_revision,
        token=args.hub_token,
        commit_message=commit_message,
        facts=card_facts,
    )
