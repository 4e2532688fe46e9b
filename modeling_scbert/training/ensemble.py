"""Fine-tune an ensemble: one :func:`~modeling_scbert.training.finetune` per seed, side by side in worker processes.

A model trained on a small reference moves with its seed alone (the head's initialisation, the order of the cells,
the dropout); the average of a few seeds' probabilities is steadier and usually better than any one of them
(docs/training.md). :func:`finetune_ensemble` trains the members and returns their folders, which
:func:`~modeling_scbert.annotate` (and ``scbert annotate --model A B ...``) takes as one ensemble::

    members = finetune_ensemble(reference, seeds=[0, 1, 2], output_dir="annotator", label_key="cell_type",
                                training_args=TrainingArguments(output_dir="unused", num_train_epochs=4))
    annotate(query, members)  # averaged probabilities

On CPU, small models train faster side by side, one process per member with the cores split between them, than one
after another with every core each (their operations are too short for many threads to help).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, TrainingArguments
from transformers.utils import logging as hf_logging

from .workflows import finetune

logger = logging.getLogger(__name__)


def member_dir(output_dir: str | PathLike, seed: int) -> Path:
    """The folder of the member fine-tuned with ``seed``: ``output_dir/seed_<seed>``."""
    return Path(output_dir) / f"seed_{seed}"


def available_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ensemble_processes(processes: int | None, n_members: int) -> tuple[int, int]:
    """How many members train at once, and the torch threads of each.

    Parameters
    ----------
    processes
        Members trained at once; ``None`` is one per CPU core up to the number of members on CPU, and 1 where a
        GPU is available (the members would share it).
    n_members
        Members to train.

    Returns
    -------
    ``(processes, threads)``: never more processes than members; ``threads`` splits the cores between them.

    Raises
    ------
    ValueError
        For ``processes`` below 1.
    """
    if processes is not None and (isinstance(processes, bool) or not isinstance(processes, int) or processes < 1):
        raise ValueError(
            f"processes must be a whole number of at least 1, or None for one per core; got {processes!r}."
        )
    cores = available_cores()
    if processes is None:
        processes = 1 if torch.cuda.is_available() else cores
    processes = max(1, min(processes, n_members))
    return processes, max(1, cores // processes)


def _check_seeds(seeds: Sequence[int]) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise TypeError(f"seeds must be a list of whole numbers, one per member; got {seeds!r}.")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give one seed per member, e.g. seeds=[0, 1, 2].")
    wrong = [seed for seed in seeds if isinstance(seed, bool) or not isinstance(seed, int)]
    if wrong:
        raise TypeError(f"seeds must be whole numbers; got {wrong}.")
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(f"seeds {repeated} appear more than once; each member needs its own seed (and folder).")
    return seeds


def _member_arguments(template: TrainingArguments, output_dir: Path, seed: int) -> TrainingArguments:
    """A copy of ``template`` for one member: its folder and seed (the caller's object is left as it is)."""
    return dataclasses.replace(template, output_dir=str(output_dir), seed=seed)


def _finetune_member(train_data: Any, training_args: TrainingArguments, finetune_kwargs: dict[str, Any]) -> str:
    finetune(train_data, training_args=training_args, **finetune_kwargs)
    return training_args.output_dir


def _start_worker(threads: int, verbosity: int, log_level: int) -> None:
    """Set up a spawned worker: its share of the cores and the parent's log levels (it inherits neither)."""
    torch.set_num_threads(threads)
    hf_logging.set_verbosity(verbosity)
    logging.getLogger("modeling_scbert").setLevel(log_level)


def finetune_ensemble(
    train_data: Any,
    *,
    seeds: Sequence[int],
    output_dir: str | PathLike,
    training_args: TrainingArguments | None = None,
    processes: int | None = None,
    **finetune_kwargs: Any,
) -> list[str]:
    """Fine-tune one model per seed on the same cells, side by side, for an ensemble that annotates by averaged
    probabilities.

    Each member is one :func:`~modeling_scbert.training.finetune` with ``training_args`` whose ``output_dir`` is
    ``output_dir/seed_<seed>`` and whose ``seed`` is the member's (the head's initialisation, the order of the cells,
    the dropout); everything else is shared, including the evaluation split (``split_seed``). Members run in
    spawned worker processes (so a script that calls this needs the ``if __name__ == "__main__":`` guard), each
    with its share of the CPU cores as torch threads; with ``processes=1`` they run one after another in this
    process. Each worker receives its own copy of ``train_data``: for a large reference, pass a dataset from
    :func:`tokenization.data.to_dataset` (memory-mapped, cheap to send) rather than an in-memory AnnData.

    Parameters
    ----------
    train_data
        Labelled reference cells, as for :func:`~modeling_scbert.training.finetune`.
    seeds
        One seed per member, all different.
    output_dir
        The members are saved in ``output_dir/seed_<seed>``, each with its tokenizer (and model card when
        ``card_facts`` has a license).
    training_args
        The members' ``TrainingArguments``, of which each gets a copy with its own ``output_dir`` and ``seed``
        (those two fields of this object are ignored; it is not changed). ``None``: ``TrainingArguments``'
        defaults.
    processes
        Members trained at once. ``None``: one per CPU core, up to the number of members, on CPU; 1 where a GPU is
        available.
    **finetune_kwargs
        Every other keyword argument of :func:`~modeling_scbert.training.finetune` (``model``, ``tokenizer``,
        ``label_key``, ``eval_data``, ``eval_fraction``, ``config_overrides``, ``card_facts``, reading options,
        ...), the same for every member. A model object is copied for each member, so it is never trained twice.

    Returns
    -------
    The members' folders, in the order of ``seeds``: pass them together as ``model=`` to
    :func:`~modeling_scbert.annotate`.

    Raises
    ------
    TypeError
        For seeds that are not whole numbers, or ``training_args`` that is not a ``TrainingArguments``.
    ValueError
        For an empty or repeated seed list, ``processes`` below 1, or a ``resume_from_checkpoint`` folder (only
        ``True`` fits every member).
    RuntimeError
        When any member's fine-tuning fails: it names each failed seed with its error (the first error is chained);
        the members that finished are kept in their folders.
    """
    seeds = _check_seeds(seeds)
    if training_args is None:
        template = TrainingArguments(output_dir=str(output_dir))
    elif isinstance(training_args, TrainingArguments):
        template = training_args
    else:
        raise TypeError(f"training_args must be a TrainingArguments (or None); got a {type(training_args).__name__}.")
    if "resume_from_checkpoint" in finetune_kwargs and finetune_kwargs["resume_from_checkpoint"] not in (None, True):
        raise ValueError(
            "resume_from_checkpoint of an ensemble can only be True (each member resumes from the last checkpoint in "
            "its own folder); one checkpoint folder cannot resume every member."
        )
    processes, threads = ensemble_processes(processes, len(seeds))
    members = [(seed, _member_arguments(template, member_dir(output_dir, seed), seed)) for seed in seeds]
    logger.info(
        "Fine-tuning %d members (seeds %s) into %s, %d at a time with %d thread(s) each.",
        len(seeds),
        seeds,
        output_dir,
        processes,
        threads,
    )

    outcomes: list[tuple[int, str | None, BaseException | None]] = []
    if processes == 1:
        for seed, member_args in members:
            kwargs = dict(finetune_kwargs)
            if isinstance(kwargs.get("model"), PreTrainedModel):
                kwargs["model"] = copy.deepcopy(kwargs["model"])  # each member starts from the same weights
            try:
                outcomes.append((seed, _finetune_member(train_data, member_args, kwargs), None))
            except Exception as error:  # noqa: BLE001 - every member's error is reported together below
                outcomes.append((seed, None, error))
    else:
        # Spawned workers: a forked one would inherit torch's thread pool in whatever state this process left it.
        parent_levels = (hf_logging.get_verbosity(), logging.getLogger("modeling_scbert").getEffectiveLevel())
        with ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(threads, *parent_levels),
        ) as pool:
            futures = [
                (seed, pool.submit(_finetune_member, train_data, member_args, finetune_kwargs))
                for seed, member_args in members
            ]
            for seed, future in futures:
                try:
                    outcomes.append((seed, future.result(), None))
                except Exception as error:  # noqa: BLE001 - every member's error is reported together below
                    outcomes.append((seed, None, error))

    failed = [(seed, error) for seed, _, error in outcomes if error is not None]
    if failed:
        done = [path for _, path, error in outcomes if error is None]
        details = "; ".join(f"seed {seed}: {type(error).__name__}: {error}" for seed, error in failed)
        raise RuntimeError(
            f"{len(failed)} of {len(seeds)} ensemble members failed to fine-tune ({details}). "
            + (f"The others are saved in {done}. " if done else "")
            + "Fix the cause and rerun (with the seeds that failed only, if you keep the others)."
        ) from failed[0][1]
    return [path for _, path, _ in outcomes]


__all__ = ["ensemble_processes", "finetune_ensemble", "member_dir"]
