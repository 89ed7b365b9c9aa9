"""The MPI context every stage receives: rank, size, local rank, rank-0 logging and progress.

The same command runs plainly (one process, MPI singleton) or under ``mpirun -n N`` / ``srun``.
An exception on any rank ends the whole job (``MPI_Abort``) with the error shown, instead of
leaving the other ranks waiting in a collective forever.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable

log = logging.getLogger("hpcmorph")

# Environment variables launchers set for the node-local rank, in order of preference.
_LOCAL_RANK_VARS = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PALS_LOCAL_RANKID",
                    "PMI_LOCAL_RANK", "LOCAL_RANK")


@dataclass
class Context:
    """Rank bookkeeping around an ``mpi4py`` communicator."""

    comm: Any
    _hosts: list[str] | None = field(default=None, repr=False, compare=False)

    @property
    def rank(self) -> int:
        return self.comm.Get_rank()

    @property
    def size(self) -> int:
        return self.comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def local_rank(self) -> int:
        """Rank within the node: picks this rank's GPU."""
        found = launcher_local_rank()
        if found is not None:
            return found
        return self.comm.Split_type(_mpi().COMM_TYPE_SHARED).Get_rank() if self.size > 1 else 0

    def hosts(self) -> list[str]:
        """Every rank's host name, by rank. Collective the first time (every rank must call it)."""
        if self._hosts is None:
            self._hosts = self.allgather(socket.gethostname()) if self.size > 1 else [socket.gethostname()]
        return self._hosts

    def barrier(self) -> None:
        self.comm.Barrier()

    def bcast(self, obj, root: int = 0):
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj) -> list:
        return self.comm.allgather(obj)

    def allreduce_max(self, value):
        return self.comm.allreduce(value, op=_mpi().MAX)

    def share(self, items: Iterable) -> list:
        """This rank's share of ``items``: round-robin, so every rank's list is fixed by (rank, size)."""
        return list(items)[self.rank::self.size]

    def progress(self, iterable=None, **kwargs):
        """A tqdm bar on rank 0 only; other ranks iterate silently."""
        from tqdm.auto import tqdm

        enabled = self.is_root and kwargs.pop("enabled", True)
        return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        if self.size > 1:
            self.comm.Abort(code)
        sys.exit(code)


def placement(hosts: list[str], local_ranks: list[int]) -> str:
    """Which ranks run on which host, with their node-local ranks (which pick the GPUs), as one line:
    ``2 hosts: node1 ranks 0, 1 (local 0, 1); node2 ranks 2, 3 (local 0, 1)``."""
    by_host: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    parts = [f"{host} rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} "
             f"(local {', '.join(str(local_ranks[r]) for r in ranks)})" for host, ranks in by_host.items()]
    return f"{len(by_host)} host{'s' if len(by_host) > 1 else ''}: {'; '.join(parts)}"


def log_placement(ctx: Context) -> None:
    """Log (rank 0) where every rank runs: on a job of several nodes, the proof that it spans them."""
    if ctx.size == 1:
        return
    hosts, local = ctx.hosts(), ctx.allgather(ctx.local_rank)
    log.info("%d ranks on %s", ctx.size, placement(hosts, local))


def launcher_local_rank() -> int | None:
    """The node-local rank the launcher set (Open MPI, MPICH, Slurm, PALS, torchrun), or None."""
    for var in _LOCAL_RANK_VARS:
        if var in os.environ:
            return int(os.environ[var])
    return None


# MPI libraries as they are named on disk: MPICH's libmpi.so.12 (Debian: libmpich.so.12), Open MPI's
# libmpi.so.40, Cray MPICH's libmpi_gnu_123.so.12 and the like; not the C++ or Fortran bindings.
_MPI_LIBRARY = re.compile(r"^lib(mpi|mpich)(_(?!cxx|mpifh|usempi)[a-z]+_?\d*)?\.so(\.|$)")


def library_files() -> list[str]:
    """The MPI library files this process has mapped (after importing mpi4py), from /proc/self/maps:
    in a container they show whether the site's library replaced the image's (the hybrid model)."""
    from mpi4py import MPI  # noqa: F401 - loads the library

    try:
        with open("/proc/self/maps") as f:
            paths = {fields[5] for fields in (line.split(None, 5) for line in f) if len(fields) == 6}
    except OSError:
        return []
    return sorted(p.strip() for p in paths if _MPI_LIBRARY.match(os.path.basename(p.strip())))


def device_for(local_rank: int):
    """This rank's torch device: one GPU per rank, picked by the node-local rank; the CPU where there
    is none. On a GPU, cuDNN's kernels are fixed so that a block redone after a kill computes the
    same numbers."""
    import torch

    if torch.cuda.is_available():
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        return torch.device("cuda", index)
    return torch.device("cpu")


def _mpi():
    from mpi4py import MPI

    return MPI


def world() -> Context:
    """The world communicator, initialising MPI on first use."""
    return Context(_mpi().COMM_WORLD)


def setup_logging(ctx: Context, verbose: bool = False) -> None:
    """INFO on rank 0, warnings and errors (with the rank named) on the others."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {ctx.rank}/{ctx.size}] " if ctx.size > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(level if ctx.is_root else logging.WARNING)
    log.propagate = False


@contextmanager
def abort_on_error(ctx: Context, user_errors: tuple[type[BaseException], ...] = ()):
    """Turn an exception on any rank into a message and an exit of the whole job.

    ``user_errors`` (bad config, bad input) are expected to be raised identically on every rank: they
    print one line on rank 0 and exit 2 without a traceback. Anything else prints its traceback on
    the rank that raised it and aborts every rank with exit code 1.
    """
    try:
        try:
            yield
        except OSError as err:
            # A full disk is the run's surroundings, not a bug, wherever the write was: writers that
            # know their file say so (errors.DiskFull); this names what the error names.
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            from .errors import DiskFull, free_space

            if err.filename:
                raise DiskFull.writing(err.filename, removed=False) from err
            raise DiskFull(f"no space left on the device ({err}; in the working directory {Path.cwd()}: "
                           f"{free_space(Path.cwd())}); free some space and run the same command again") from err
    except user_errors as err:
        if ctx.size > 1 and not ctx.is_root:
            # Usually every rank meets the same bad input: let rank 0 say it once and abort the job
            # (which ends this rank during the wait). If only this rank met it, it speaks after.
            time.sleep(2.0)
        where = f" (rank {ctx.rank})" if ctx.size > 1 and not ctx.is_root else ""
        print(f"hpcmorph: error{where}: {err}", file=sys.stderr, flush=True)
        if ctx.size > 1:
            time.sleep(0.5)  # let the launcher forward the message before the abort tears the job down
            ctx.comm.Abort(2)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"hpcmorph: interrupted on rank {ctx.rank}", file=sys.stderr)
        ctx.abort(130)
    except SystemExit:
        raise
    except BaseException:
        import traceback

        print(f"hpcmorph: rank {ctx.rank} of {ctx.size} failed:\n{traceback.format_exc()}", file=sys.stderr, end="")
        ctx.abort(1)
