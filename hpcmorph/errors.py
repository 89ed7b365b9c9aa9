"""The errors a user can cause, and how the command line ends on them.

Everything a user can get wrong (a config field, an input file, an output in the way, a launcher
that does not fit the backend) is a :class:`UserError`: the ``hpcmorph`` command prints it as one
``hpcmorph: error: ...`` line and exits 2, on any number of ranks, never with a traceback. Each
message names the field or file and says what was expected and what came. Any other exception is a
bug or a failed machine: its traceback is shown and every rank stops with exit 1.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

USER_ERROR_EXIT = 2
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: a signal asked the run to stop; the same command resumes


class UserError(Exception):
    """A mistake in the config, the input or the run's surroundings: one line, exit 2."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used, with the offending field named."""


class SourceError(UserError, ValueError):
    """An input file that cannot be used, with the path and the problem named."""


class StoreError(UserError):
    """A missing, incomplete or inconsistent stage output, with the path named."""


class StageError(UserError):
    """A stage cannot proceed as asked (an output from another config in the way, an input it needs
    missing or empty)."""


class OutputLocked(StageError):
    """Another run holds the lock on this output (``hpcmorph.lock``): the message names it."""


class DiskFull(StoreError):
    """The file system ran out of space while a stage wrote a file: the message names the file and the
    space left. The stage's partial file is gone; the previous complete output is untouched."""

    @classmethod
    def writing(cls, path, removed: bool = True) -> DiskFull:
        path = Path(path)
        free = free_space(path)
        done = ("the partial file was removed and the previous complete output, if any, is unchanged; "
                if removed else "")
        return cls(f"{path}: no space left on the device while writing it ({free}); {done}free some space (or "
                   "choose another run.root) and run the same command again: it resumes")


def free_space(path) -> str:
    """Space left to this user on the file system holding ``path`` (or its nearest existing folder), and
    its size, in words."""
    path = Path(path)
    where = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    try:
        usage = shutil.disk_usage(where)
    except OSError:
        return "free space unknown"
    return f"{_size(usage.free)} free of {_size(usage.total)} there"


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# Below this a failed write is put down to the full disk even when the writer's error does not say so
# (torch.save: "unexpected pos ..."; h5py creating a dataset in parallel: ValueError "file write failed").
_NEARLY_FULL = 1 << 20


def out_of_space(err: BaseException, folder) -> bool:
    """Whether ``err``, raised while writing into ``folder``, means the file system is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, Exception) or isinstance(err, UserError):
        return False
    if "No space left on device" in str(err):
        return True
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


class BackendError(UserError):
    """The requested training backend cannot start here (not installed, wrong launcher, ranks that do
    not divide the batch)."""


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: a checkpoint was written (or nothing was left to do); the same command
    resumes. Ends the command with :data:`PREEMPTED_EXIT`."""
