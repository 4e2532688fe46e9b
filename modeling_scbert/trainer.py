"""A ``Trainer`` whose pushes carry the scBERT model card: :class:`ScBertTrainer` and :class:`ScBertModelCardCallback`.

``ScBertTrainer`` is the stock ``Trainer`` with two hooks overridden, as TRL's trainers do: ``create_model_card``
renders the scBERT card (so the stock ``trainer.push_to_hub()`` pushes model, tokenizer and our card in one commit),
and ``save_model`` adds the ``cell-type-annotation`` pipeline code to a classifier's folder. The facts the card states
are captured while training by :class:`ScBertModelCardCallback`: the run's settings and length (``on_train_end``) and
the latest evaluation (``on_evaluate`` / ``on_predict``); nothing is read back from the files a run writes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from accelerate.utils import extract_model_from_parallel
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tokenization import ScBertTokenizer
from tokenization.atomic_files import write_text_atomically
from tokenization.pipeline_scbert import save_pipeline_code

from .model_card import README_NAME, render_model_card, validate_model_card
from .model_card_data import ScBertCardData, metrics_to_evaluation, state_hyperparameters
from .modeling_scbert import ScBertForSequenceClassification

logger = logging.getLogger(__name__)

__all__ = ["ScBertModelCardCallback", "ScBertTrainer", "count_parameters", "hyperparameters_from_args"]


def hyperparameters_from_args(args: Any) -> dict[str, Any]:
    """The training settings of a ``TrainingArguments`` that a card states, named for the card."""
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


def count_parameters(model: Any) -> int:
    """Numbers a model saves (parameters and buffers, each shared tensor once), without the FAVOR+ random features:
    the count :meth:`ScBertCardData.from_model_folder` reads from the saved weights."""
    seen, total = set(), 0
    for name, tensor in model.state_dict().items():
        if name.endswith("random_features") or tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel()
    return total


class ScBertModelCardCallback(TrainerCallback):
    """Capture the facts of a training run for the scBERT model card, and keep the card in ``output_dir``.

    While training it records the latest evaluation metrics (``on_evaluate``, ``on_predict``) and the run's settings
    and length (``on_train_end``, and before every push). Before every checkpoint push the ``Trainer`` makes
    (``push_to_hub=True``) and at the end of training, the card is rendered from the model's config, the tokenizer,
    the facts given here and those captured, and written to ``output_dir/README.md``, so that checkpoint pushes carry
    it. :class:`ScBertTrainer` renders the final card from the same facts when it pushes.

    Parameters
    ----------
    tokenizer
        The model's tokenizer; by default the ``Trainer``'s ``processing_class``.
    facts
        Card facts: training data, ``label_counts``, ``base_model``, ``license``, evaluation dataset, ...

    Raises
    ------
    ModelCardError
        When ``facts`` names a fact that does not exist.
    """

    def __init__(self, tokenizer: ScBertTokenizer | None = None, facts: ScBertCardData | dict[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.facts = ScBertCardData().merged(facts)
        self.metrics: dict[str, Any] | None = None
        self.run: dict[str, Any] = {}

    def record_run(self, args: TrainingArguments, state: TrainerState) -> None:
        """Record the run's settings and length (hyperparameters of the card)."""
        self.run = {
            **state_hyperparameters(state),
            **hyperparameters_from_args(args),
            "optimisation steps": state.global_step,
        }

    def record_metrics(self, metrics: dict[str, Any] | None) -> None:
        """Record evaluation metrics (``Trainer.evaluate`` / ``predict``'s); the latest ones are the card's."""
        if metrics:
            self.metrics = dict(metrics)

    def card_data(self, model: Any, tokenizer: ScBertTokenizer | None) -> ScBertCardData:
        """The card facts of ``model``: captured while training, under the facts given to the callback.

        Raises
        ------
        ModelCardError
            When the tokenizer's panel does not fit the model's config.
        """
        model = extract_model_from_parallel(model, keep_torch_compile=False)
        labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
        evaluation = metrics_to_evaluation(self.metrics, labels) if self.metrics else None
        found = ScBertCardData(hyperparameters=self.run or None, evaluation=evaluation or None)
        return ScBertCardData.from_objects(
            model.config, tokenizer, found.merged(self.facts), num_parameters=count_parameters(model)
        )

    def _write(self, args: TrainingArguments, state: TrainerState, model: Any, processing_class: Any, why: str):
        if not state.is_world_process_zero or model is None:
            return
        self.record_run(args, state)
        tokenizer = self.tokenizer or (processing_class if isinstance(processing_class, ScBertTokenizer) else None)
        if tokenizer is None:
            logger.warning("No ScBertTokenizer given to ScBertModelCardCallback or the Trainer; no card written.")
            return
        data = self.card_data(model, tokenizer)
        if data.license is None:
            log = logger.warning if why == "push" else logger.info
            log("No license given to the model card (facts={'license': ...}); no card written.")
            return
        hub_id = args.hub_model_id if args.push_to_hub else None
        text = render_model_card(data, repo_id=hub_id, local_name=Path(args.output_dir).resolve().name)
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically(output_dir / README_NAME, text)
        if self.facts.facts():
            self.facts.save(output_dir)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        self.record_metrics(metrics)

    def on_predict(self, args, state, control, metrics=None, **kwargs) -> None:
        self.record_metrics(metrics)

    def on_push_begin(self, args, state, control, model=None, processing_class=None, **kwargs) -> None:
        self._write(args, state, model, processing_class, "push")

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self._write(args, state, kwargs.get("model"), kwargs.get("processing_class"), "end")


class ScBertTrainer(Trainer):
    """The stock ``Trainer``, whose model card is the scBERT card and whose saved classifiers carry their pipeline.

    ``trainer.push_to_hub()`` (stock) then saves model and tokenizer, renders the card from the facts captured while
    training (see :class:`ScBertModelCardCallback`) and pushes them in one commit.

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
