"""Training helpers for the stock ``transformers.Trainer``."""

from __future__ import annotations

import logging

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


class ScBertFeatureRedrawCallback(TrainerCallback):
    """Redraw the FAVOR+ random features every ``interval`` optimisation steps, as the published training did.

    The draw uses a generator seeded from ``(seed, global_step)``, so every process of a distributed run draws the
    same features without communicating, and a resumed run draws what the uninterrupted run would have.

    Args:
        interval: Steps between redraws. ``None`` uses the model's ``config.feature_redraw_interval``; 0 or ``None``
            there never redraws.
        seed: Base seed. ``None`` uses ``TrainingArguments.seed``.
    """

    def __init__(self, interval: int | None = None, seed: int | None = None):
        self.interval = interval
        self.seed = seed

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        if model is None:
            return
        model = getattr(model, "module", model)  # unwrap DDP-style wrappers
        interval = self.interval if self.interval is not None else model.config.feature_redraw_interval
        if not interval or state.global_step % interval:
            return
        seed = self.seed if self.seed is not None else args.seed
        generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + state.global_step)
        model.redraw_random_features(generator=generator)
        logger.debug("Redrew FAVOR+ random features at step %d", state.global_step)


__all__ = ["ScBertFeatureRedrawCallback"]
