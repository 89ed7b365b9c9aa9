"""The errors a user can cause, and how the command line ends on them.

Everything a user can get wrong (a config field, an input file, an output in the way, a launcher
that does not fit the backend) is a :class:`UserError`: the ``hpcmorph`` command prints it as one
``hpcmorph: error: ...`` line and exits 2, on any number of ranks, never with a traceback. Each
message names the field or file and says what was expected and what came. Any other exception is a
bug or a failed machine: its traceback is shown and every rank stops with exit 1.
"""

from __future__ import annotations

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


class BackendError(UserError):
    """The requested training backend cannot start here (not installed, wrong launcher, ranks that do
    not divide the batch)."""


class Preempted(Exception):
    """SIGTERM/SIGUSR1 arrived: a checkpoint was written (or nothing was left to do); the same command
    resumes. Ends the command with :data:`PREEMPTED_EXIT`."""
