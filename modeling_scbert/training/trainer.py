"""The Trainer and what it takes for scBERT: :class:`ScBertTrainer` (a stock ``Trainer`` whose pushes carry the
scBERT model card), the FAVOR+ feature-redraw callback, and the class-weighted loss.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import extract_model_from_parallel
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tokenization import ScBertTokenizer
from tokenization.atomic_files import write_text_atomically
from tokenization.pipeline_scbert import save_pipeline_code

from ..hub.card import README_NAME, render_model_card, validate_model_card
from ..hub.card_data import ScBertCardData
from ..hub.model_files import plan_upload
from ..modeling_scbert import ScBertForSequenceClassification
from .run_card import ScBertModelCardCallback

logger = logging.getLogger(__name__)

CLASS_WEIGHTINGS = ("none", "balanced")


class ScBertFeatureRedrawCallback(TrainerCallback):
    """Redraw the FAVOR+ random features every ``interval`` optimisation steps, as the published training did.

    The draw uses a generator seeded from ``(seed, global_step)``, so every process of a distributed run draws the
    same features without communicating, and a resumed run draws what the uninterrupted run would have.

    Parameters
    ----------
    interval
        Steps between redraws. ``None`` uses the model's ``config.feature_redraw_interval``; 0 or ``None`` there
        never redraws.
    seed
        Base seed. ``None`` uses ``TrainingArguments.seed``.
    """

    def __init__(self, interval: int | None = None, seed: int | None = None):
        self.interval = interval
        self.seed = seed

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        if model is None:
            return
        model = extract_model_from_parallel(model, keep_torch_compile=False)  # DDP, FSDP, DeepSpeed, compiled
        interval = self.interval if self.interval is not None else model.config.feature_redraw_interval
        if not interval or state.global_step % interval:
            return
        seed = self.seed if self.seed is not None else args.seed
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + state.global_step)
        model.redraw_random_features(generator=generator)
        logger.debug("Redrew FAVOR+ random features at step %d", state.global_step)


def balanced_class_weights(labels: Sequence[int] | np.ndarray, num_labels: int) -> torch.Tensor:
    """Per-class weights ``n_cells / (num_labels * n_cells_of_class)`` (scikit-learn's ``"balanced"``).

    A class absent from ``labels`` gets weight 0 (it cannot contribute to the loss anyway).

    Parameters
    ----------
    labels
        Class ids of the training cells.
    num_labels
        Number of classes.

    Returns
    -------
    float32 tensor of shape ``(num_labels,)``.

    Raises
    ------
    ValueError
        When ``labels`` hold a class id of ``num_labels`` or more.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_labels).astype(np.float64)
    if counts.shape[0] > num_labels:
        raise ValueError(f"labels contain class ids up to {counts.shape[0] - 1}, but num_labels is {num_labels}.")
    weights = np.divide(counts.sum(), num_labels * counts, out=np.zeros_like(counts), where=counts > 0)
    return torch.tensor(weights, dtype=torch.float32)


@dataclass
class ScBertWeightedLoss:
    """Class-weighted cross-entropy for ``Trainer(compute_loss_func=...)``.

    The loss is ``sum_i w[y_i] * CE_i / num_items_in_batch``, where ``num_items_in_batch`` is the Trainer's count of
    labelled cells over the whole accumulated, all-process batch. This is how the Trainer expects a
    ``compute_loss_func`` to normalise: it then neither divides by the gradient-accumulation steps nor averages
    differently across processes, so gradients match a single-process run on the same global batch. With
    :func:`balanced_class_weights` the weights average 1 over the training cells, so the scale of the loss is that of
    the unweighted mean.

    Parameters
    ----------
    class_weights
        ``(num_labels,)`` weights.
    """

    class_weights: torch.Tensor

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None):
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        weights = self.class_weights.to(device=logits.device, dtype=torch.float32)
        losses = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1), weight=weights, reduction="sum")
        count = labels.numel() if num_items_in_batch is None else num_items_in_batch
        if torch.is_tensor(count):
            count = count.to(losses.device)
        return losses / count


class ScBertTrainer(Trainer):
    """The stock ``Trainer``, whose model card is the scBERT card and whose saved classifiers carry their pipeline.

    ``trainer.push_to_hub()`` then saves model and tokenizer, renders the card from the facts captured while
    training (see :class:`ScBertModelCardCallback`) and pushes them in one commit: only the model's files, by the
    allow-list of ``scbert push`` (:func:`modeling_scbert.hub.model_files.plan_upload`).

    Parameters
    ----------
    *args, **kwargs
        Those of ``transformers.Trainer``.
    card_facts
        Card facts (``license`` at least, to push; training data, ``label_counts``, evaluation dataset, ...), for
        the :class:`ScBertModelCardCallback` added when ``callbacks`` has none.

    Raises
    ------
    ModelCardError
        When ``card_facts`` names a fact that does not exist.
    ValueError
        When ``card_facts`` is given and ``callbacks`` holds a ``ScBertModelCardCallback`` too.
    """

    def __init__(self, *args: Any, card_facts: ScBertCardData | dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.card_callback is None:
            self.add_callback(ScBertModelCardCallback(facts=card_facts))
        elif card_facts is not None:
            raise ValueError(
                "card_facts= and a ScBertModelCardCallback in callbacks= both give the card's facts; pass them to one: "
                "ScBertModelCardCallback(facts=...) or card_facts=."
            )

    @property
    def card_callback(self) -> ScBertModelCardCallback | None:
        """The callback that captures the card's facts."""
        found = [c for c in self.callback_handler.callbacks if isinstance(c, ScBertModelCardCallback)]
        return found[0] if found else None

    def save_model(self, output_dir: str | None = None, **kwargs: Any) -> None:
        """Save as the stock ``Trainer`` does; a classifier's folder also gets the pipeline code.

        Raises
        ------
        OSError
            When the folder cannot be written.
        """
        super().save_model(output_dir, **kwargs)
        folder = Path(output_dir if output_dir is not None else self.args.output_dir)
        model = extract_model_from_parallel(self.model, keep_torch_compile=False)
        is_classifier = isinstance(model, ScBertForSequenceClassification)
        if self.args.should_save and is_classifier and (folder / "config.json").is_file():
            save_pipeline_code(folder)  # pipeline("cell-type-annotation", ...) as remote code

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save the model, tokenizer and card in ``output_dir`` and upload the model's files, nothing else.

        As the stock ``Trainer.push_to_hub`` (same arguments; ``kwargs`` go to :meth:`create_model_card`), except
        that the upload is the allow-list of ``scbert push`` (:func:`~modeling_scbert.hub.model_files.plan_upload`):
        weights, config, remote code, tokenizer, card and the evaluation it reports. Tokens, notes, trackers' files,
        ``training_args.bin``, ``trainer_state.json`` and sub-folders an output folder may also hold stay local.

        Returns
        -------
        huggingface_hub.CommitInfo | Future | None
            The commit (a future with ``blocking=False``); ``None`` on every process but the main one.

        Raises
        ------
        ValueError
            When a file to upload is a symbolic link leaving the folder (before anything is uploaded).
        ModelCardError
            When the card cannot be rendered or does not match the saved folder.
        """
        from transformers.utils.hub import hf_api  # the Trainer's own client (its endpoint, its user agent)

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:  # push_to_hub called with args.push_to_hub False
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)  # every process: saving may gather sharded weights
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        plan = plan_upload(self.args.output_dir)
        if plan.left_out:
            logger.info("Not uploading %s (not part of a model): %s", self.args.output_dir, ", ".join(plan.left_out))
        self._finish_current_push()
        return hf_api().upload_folder(
            repo_id=self.hub_model_id,
            folder_path=self.args.output_dir,
            commit_message=commit_message,
            token=token,
            run_as_future=not blocking,
            allow_patterns=list(plan.files),
            revision=revision if revision is not None else self.args.hub_revision,
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The stock push at each save (``hub_strategy``), with the upload of ``output_dir`` limited to the model's
        files, as in :meth:`push_to_hub`. With ``hub_strategy="checkpoint"`` / ``"all_checkpoints"`` the checkpoint
        folder itself is uploaded whole, as that option asks (resuming needs its optimizer state)."""
        from transformers.trainer_utils import HubStrategy, SaveStrategy
        from transformers.utils import PushInProgress
        from transformers.utils.hub import hf_api

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return  # the last push is still running
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        output_dir, checkpoint = Path(self.args.output_dir), Path(checkpoint_folder)
        # The checkpoint's model files (no new gathering of the weights) and the tokenizer, then the model's files.
        for name in plan_upload(checkpoint).files:
            shutil.copy(checkpoint / name, output_dir / name)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        if self.args.save_strategy == SaveStrategy.STEPS:
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch)}"
        upload = {"repo_id": self.hub_model_id, "token": self.args.hub_token, "revision": self.args.hub_revision}
        jobs = [
            hf_api().upload_folder(
                folder_path=output_dir,
                commit_message=commit_message,
                run_as_future=True,
                allow_patterns=list(plan_upload(output_dir).files),
                **upload,
            )
        ]
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            in_repo = "last-checkpoint" if self.args.hub_strategy == HubStrategy.CHECKPOINT else checkpoint.name
            jobs.append(
                hf_api().upload_folder(
                    folder_path=checkpoint,
                    path_in_repo=in_repo,
                    commit_message=commit_message + ", checkpoint",
                    run_as_future=True,
                    **upload,
                )
            )
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress(jobs)
        else:
            self.push_in_progress.jobs.extend(jobs)

    def create_model_card(
        self,
        card_facts: ScBertCardData | dict[str, Any] | None = None,
        *,
        license: str | None = None,
        finetuned_from: str | None = None,
        **ignored: Any,
    ) -> None:
        """Write the scBERT card to ``output_dir/README.md``, checked against the saved model folder.

        Called by ``push_to_hub`` after saving. The card is rendered from the model's config, the tokenizer, the facts
        the :class:`ScBertModelCardCallback` captured and ``card_facts``; all of them are also written to
        ``scbert_card.json``, so that ``scbert push`` of the folder renders the same card.

        Parameters
        ----------
        card_facts
            Facts known only after training (final evaluation, majority-class baseline, ...); they win over the
            others.
        license, finetuned_from
            As in ``Trainer.create_model_card``: the card's ``license`` and ``base_model``.
        **ignored
            ``Trainer.create_model_card``'s other options (``model_name``, ``tags``, ``language``, ``tasks``,
            ``dataset``, ...): the card's title is the repository's name and its tags are scBERT's.

        Raises
        ------
        ValueError
            When the ``Trainer`` has no ``ScBertTokenizer`` (pass it as ``processing_class``).
        ModelCardError
            When the card has no license, or does not match the saved folder.
        """
        if not self.is_world_process_zero():
            return
        tokenizer = self.processing_class
        if self.card_callback is not None and self.card_callback.tokenizer is not None:
            tokenizer = self.card_callback.tokenizer
        if not isinstance(tokenizer, ScBertTokenizer):
            raise ValueError(
                "The scBERT model card needs the model's ScBertTokenizer: give it to the Trainer as processing_class= "
                f"(got {type(tokenizer).__name__})."
            )
        callback = self.card_callback or ScBertModelCardCallback()
        callback.record_run(self.args, self.state)
        extra = ScBertCardData(license=license, base_model=finetuned_from).merged(card_facts)
        data = callback.card_data(self.model, tokenizer).merged(extra)
        output_dir = Path(self.args.output_dir)
        text = render_model_card(data, repo_id=self.hub_model_id, local_name=output_dir.resolve().name)
        validate_model_card(text, output_dir)
        data.save(output_dir)
        write_text_atomically(output_dir / README_NAME, text)
        logger.info("Wrote the model card %s", os.fspath(output_dir / README_NAME))


__all__ = [
    "CLASS_WEIGHTINGS",
    "ScBertFeatureRedrawCallback",
    "ScBertTrainer",
    "ScBertWeightedLoss",
    "balanced_class_weights",
]
