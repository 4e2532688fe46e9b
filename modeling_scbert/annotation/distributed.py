"""Annotation and embedding over several processes: which cells each process takes, and how the results meet.

Under ``torchrun`` or ``accelerate launch`` (which set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``), every process runs the same call on its own device (``cuda:LOCAL_RANK`` when CUDA is available,
otherwise the CPU) over its own contiguous share of the rows, so a backed file is read once in total, each process
streaming its own rows. The per-cell results are gathered in row order to the main process (rank 0), which alone
writes them. Without those variables everything here is a no-op for a single process.

Plain ``torch.distributed`` rather than accelerate's ``PartialState``: on a machine without CUDA, ``PartialState()``
under ``torchrun`` runs as one process unless told ``cpu=True``, and with ``cpu=True`` it prefers MPI when available
and changes the thread count, where all that is needed here is one ``init_process_group`` (gloo on CPU, NCCL on
GPUs) and two collectives.

Failures. Everything that can fail on one process but not another (reading its rows, a model that is missing on
one machine, running out of memory) runs inside :meth:`InferenceProcesses.all_or_none`: each process finishes the
block, the processes then exchange one status each, and if any failed, every process raises (the failing one its
own error, the others :class:`ScBertProcessError` naming it), so none waits forever in a collective and nothing is
written. A process that dies outright (killed, segfault) is not an exception: ``torchrun`` then stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

logger = logging.getLogger(__name__)

# Rows are gathered in rounds of at most about this many bytes per process, so the main process never holds more
# than one round's messages besides the outputs themselves.
GATHER_BLOCK_BYTES = 16 * 2**20


class ScBertProcessError(RuntimeError):
    """Raised on every process when a step failed on another process."""


@dataclass(frozen=True)
class InferenceProcesses:
    """This process's place among the processes that annotate together (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is the process that gathers the results and writes them (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n_obs: int, *, rank: int | None = None) -> tuple[int, int]:
        """The contiguous rows ``(start, end)`` of a process (this one by default).

        Shares differ by at most one row: the first ``n_obs % world_size`` processes take one row more.
        """
        rank = self.rank if rank is None else rank
        base, extra = divmod(n_obs, self.world_size)
        start = rank * base + min(rank, extra)
        return start, start + base + int(rank < extra)

    def device(self, requested: str | torch.device | None) -> torch.device:
        """The device this process computes on.

        One process: ``requested``, or the first of CUDA, MPS and CPU that is available. Several processes:
        ``cuda:LOCAL_RANK`` when CUDA is available (also for a requested ``"cuda"`` without an index), otherwise the
        CPU; a requested device with an index is taken as given.

        Raises
        ------
        ValueError
            When several processes on one machine would need more GPUs than it has.
        """
        if requested is not None:
            device = torch.device(requested)
            if not (self.distributed and device.type == "cuda" and device.index is None):
                return device
        elif not self.distributed:
            if torch.cuda.is_available():
                return torch.device("cuda")
            if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
                return torch.device("mps")
            return torch.device("cpu")
        elif not torch.cuda.is_available():
            return torch.device("cpu")
        if self.local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"Process {self.rank} (LOCAL_RANK={self.local_rank}) has no GPU of its own: this machine shows "
                f"{torch.cuda.device_count()}. Start at most that many processes per machine (--nproc_per_node), or "
                "pass device='cpu' / --device cpu."
            )
        return torch.device("cuda", self.local_rank)

    @contextmanager
    def all_or_none(self, what: str) -> Iterator[None]:
        """Run a block on every process; if it raised on any process, raise on every process.

        The failing process re-raises its own exception; the others raise :class:`ScBertProcessError` with its
        message. With one process the block runs as it is.

        Raises
        ------
        ScBertProcessError
            On the processes where the block went through, when it raised on another.
        """
        if not self.distributed:
            yield
            return
        import torch.distributed as dist

        error: Exception | None = None
        try:
            yield
        except Exception as caught:  # every failure is exchanged, so that no process waits for this one
            error = caught
        statuses: list[str | None] = [None] * self.world_size
        dist.all_gather_object(statuses, None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        failed = [(rank, status) for rank, status in enumerate(statuses) if status is not None]
        if failed:
            rank, status = failed[0]
            raise ScBertProcessError(
                f"{what} failed on process {rank} of {self.world_size} ({status}); every process stopped and no "
                "output was written."
            )

    def gather_rows(self, arrays: dict[str, np.ndarray], n_obs: int) -> dict[str, np.ndarray] | None:
        """Gather every process's rows of each array, in row order, to the main process.

        ``arrays`` holds this process's rows (``shard(n_obs)``) of each per-cell output; every process passes the
        same keys, dtypes and trailing shapes. Returns the full ``(n_obs, ...)`` arrays on the main process and
        ``None`` on the others. Rows travel in rounds of about :data:`GATHER_BLOCK_BYTES` per process.
        """
        if not self.distributed:
            return arrays
        import torch.distributed as dist

        bounds = [self.shard(n_obs, rank=rank) for rank in range(self.world_size)]
        gathered = None
        if self.is_main:
            gathered = {key: np.empty((n_obs, *value.shape[1:]), dtype=value.dtype) for key, value in arrays.items()}
        row_bytes = sum(value.dtype.itemsize * int(np.prod(value.shape[1:])) for value in arrays.values())
        rows_per_round = max(1, GATHER_BLOCK_BYTES // max(row_bytes, 1))
        largest = max(end - start for start, end in bounds)
        for offset in range(0, largest, rows_per_round):  # every process takes part in every round
            piece = {key: value[offset : offset + rows_per_round] for key, value in arrays.items()}
            received: list[dict[str, np.ndarray]] | None = [{}] * self.world_size if self.is_main else None
            dist.gather_object(piece, received, dst=0)
            if gathered is not None:
                for rank, part in enumerate(received):
                    start = bounds[rank][0] + offset
                    for key, value in part.items():
                        gathered[key][start : start + len(value)] = value
        return gathered

    def gather_sparse_rows(self, rows: sp.csr_matrix, n_obs: int) -> sp.csr_matrix | None:
        """Gather every process's rows of a CSR matrix, in row order, to the main process.

        ``rows`` holds this process's rows (``shard(n_obs)``); every process passes the same number of columns and
        dtypes. Returns the ``(n_obs, columns)`` matrix on the main process and ``None`` on the others. Rows travel
        in rounds of at most about :data:`GATHER_BLOCK_BYTES` per process.
        """
        if not self.distributed:
            return rows
        import torch.distributed as dist

        bounds = [self.shard(n_obs, rank=rank) for rank in range(self.world_size)]
        # Every process takes part in every round, so a round is a number of rows that all agree on: as many as fit
        # when every column of a row is stored (a value and a column index each).
        row_bytes = rows.shape[1] * (rows.data.dtype.itemsize + rows.indices.dtype.itemsize)
        rows_per_round = max(1, GATHER_BLOCK_BYTES // max(row_bytes, 1))
        largest = max(end - start for start, end in bounds)
        pieces: list[list[sp.csr_matrix]] = [[] for _ in range(self.world_size)]
        for offset in range(0, largest, rows_per_round):
            received: list[sp.csr_matrix] | None = [None] * self.world_size if self.is_main else None
            dist.gather_object(rows[offset : offset + rows_per_round], received, dst=0)
            if received is not None:
                for rank, part in enumerate(received):
                    pieces[rank].append(part)
        if not self.is_main:
            return None
        blocks = [part for parts in pieces for part in parts if part.shape[0]]
        return sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, rows.shape[1]), dtype=rows.dtype)


def inference_processes() -> InferenceProcesses:
    """The processes this one annotates with, joining the process group that ``torchrun`` described.

    An existing process group (a script that set one up itself) is used as it is. Otherwise, when ``WORLD_SIZE`` is
    above 1, one is created from the launcher's environment: NCCL when CUDA is available (after selecting
    ``cuda:LOCAL_RANK``), gloo otherwise.

    Raises
    ------
    RuntimeError
        When the launcher asked for several processes but this build of torch has no ``torch.distributed``.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return InferenceProcesses(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return InferenceProcesses()
    if not torch.distributed.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world_size} asks for several processes, but this torch build has no torch.distributed; "
            "run one process (python / scbert without torchrun)."
        )
    backend = "gloo"
    if torch.cuda.is_available() and local_rank < torch.cuda.device_count():
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    torch.distributed.init_process_group(backend=backend)
    processes = InferenceProcesses(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)
    logger.info("Process %d of %d (%s) joined.", processes.rank, processes.world_size, backend)
    return processes


__all__ = ["InferenceProcesses", "ScBertProcessError", "inference_processes"]
