"""One writer per output: an exclusive lock file beside a stage's output, held for the stage's whole run.

``<output>.lock`` (``galaxies.h5.lock``, ``analysis.lock``, ...) names its holder: host, pid, the
batch job (``SLURM_JOB_ID`` / ``PBS_JOBID``) and when it started. It is written under a temporary
name and hard-linked to its final name, which fails if the lock exists: the step is atomic on a
local disk and on the shared file systems of clusters (NFS, Lustre, GPFS), and the lock appears with
its holder already in it. Rank 0 takes it and tells the other ranks the outcome, so every rank of a
refused run raises the same :class:`~hpcmorph.errors.OutputLocked` (one line, exit 2) and the run
writes nothing.

A lock whose holder is gone is taken over, with a warning, when that can be known for sure:

- the holder ran on this host and its process is gone (or the pid now belongs to another process,
  or the host rebooted since);
- the holder is an earlier run of this same batch job: the scheduler runs one attempt of a job at a
  time, keeps its id across a requeue or rerun, and tells the attempts apart (Slurm:
  ``SLURM_RESTART_COUNT``; PBS: ``PBS_JOBCOOKIE``, where the site's PBS draws a new one for each run;
  where it does not, such a lock is reported like any other).

A lock held from another host is otherwise only reported: this host cannot see that host's
processes, and breaking a live lock would let two runs write one output. The message says how to
check and what to remove. One host name is taken to mean one process table: true of Apptainer
(the host's) and of Docker and Kubernetes containers (each has its own host name).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable, Sequence

from .errors import DiskFull, OutputLocked, StageError, UserError, out_of_space
from .mpi import log

SUFFIX = ".lock"
_CLAIM_WAIT = 0.05  # seconds to wait while another run takes a dead lock over (a few file operations)
_ATTEMPTS = 5  # acquire rounds: each either takes the lock, takes over a dead one, or reports


def lock_path(output: Path) -> Path:
    """The lock file of ``output`` (a file or a folder): beside it, named after it."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def _job() -> tuple[str | None, str | None]:
    """(batch job id, which attempt of that job this is) of this process; Nones outside a batch job."""
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"], f"restart {env.get('SLURM_RESTART_COUNT') or 0}"
    if env.get("PBS_JOBID"):
        return env["PBS_JOBID"], env.get("PBS_JOBCOOKIE") or None
    return None, None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _stat(pid: int) -> list[str] | None:
    """Fields 3 on of /proc/PID/stat (state, ppid, ...), or None without such a process or /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return stat.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22), or None."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def _pid_exists(pid: int) -> bool:
    """Whether ``pid`` is a running process. A killed rank can stay a zombie until someone reaps it:
    it holds nothing, so it counts as gone."""
    if Path("/proc/self/stat").exists():
        fields = _stat(pid)
        return fields is not None and fields[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass(frozen=True)
class Holder:
    """Who holds a lock. ``token`` tells this holder's lock file from any later one."""

    host: str
    pid: int
    started: str
    job: str | None = None
    attempt: str | None = None
    boot: str | None = None
    process_start: int | None = None
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def me(cls) -> Holder:
        job, attempt = _job()
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), job=job, attempt=attempt,
                   boot=_boot_id(), process_start=_process_start(os.getpid()))

    @classmethod
    def from_json(cls, text: str) -> Holder:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, found {type(data).__name__}")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        # A lock written by hand or by another tool has no token: its text stands for it.
        known.setdefault("token", hashlib.sha256(text.encode()).hexdigest()[:32])
        holder = cls(**known)
        if not isinstance(holder.host, str) or not isinstance(holder.pid, int):
            raise ValueError("no host and pid in it")
        return holder

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    def describe(self) -> str:
        job = f", job {self.job}" if self.job else ""
        return f"host {self.host}, pid {self.pid}{job}, since {self.started}"

    def gone(self, me: Holder) -> str | None:
        """Why this holder has certainly ended (a sentence), or None when it may still be running."""
        if self.host == me.host:
            if self.boot and me.boot and self.boot != me.boot:
                return "this host has rebooted since"
            if self.pid == me.pid and self.process_start == me.process_start:
                return None  # this very process: a second lock on one output within one run
            if not _pid_exists(self.pid):
                return f"process {self.pid} is gone"
            if self.process_start is not None and _process_start(self.pid) not in (None, self.process_start):
                return f"pid {self.pid} now belongs to another process"
            return None
        if self.job and self.job == me.job and self.attempt and me.attempt and self.attempt != me.attempt:
            return f"job {self.job} runs again ({me.attempt}): its earlier run ({self.attempt}) has ended"
        return None


def _link_new(lock: Path, holder: Holder) -> bool:
    """Create ``lock`` holding ``holder``, complete, if no lock exists: True if this call made it."""
    new = lock.with_name(f"{lock.name}.{holder.token}.new")
    try:
        try:
            new.write_text(holder.to_json())
        except OSError as err:
            if out_of_space(err, lock.parent):
                raise DiskFull.writing(lock) from err
            raise
        try:
            os.link(new, lock)
            return True
        except FileExistsError:
            return False
        except OSError:
            pass  # no hard links on this file system: an exclusive create instead
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(holder.to_json())
        return True
    finally:
        new.unlink(missing_ok=True)


def _read(lock: Path) -> Holder | str | None:
    """The holder in ``lock``; None when it has just been removed; a message when it cannot be read."""
    problem = ""
    for _ in range(5):
        try:
            return Holder.from_json(lock.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as err:
            # The exclusive-create fallback writes after creating: give a writer a moment.
            problem = str(err) or type(err).__name__
            time.sleep(0.1)
    return problem


def _claim_path(lock: Path, stale: Holder) -> Path:
    return lock.with_name(f"{lock.name}.{stale.token}.takeover")


def _take_over(lock: Path, stale: Holder, me: Holder) -> bool | None:
    """Remove ``lock`` if it still holds ``stale``: True if this call removed it, False if it holds
    another lock by now, None if another run is taking it over at this moment.

    One taker per stale lock: takers race to create ``<lock>.<stale token>.takeover`` (atomically, as
    the lock itself), and only its creator looks at the lock again and removes it. As no one else may
    remove the stale lock and a removed lock never comes back (its token is unique), the stale lock the
    claim's holder reads is still there when it removes it: a live lock is never removed. (Moving the
    lock aside to look at it would not do: a third run could make a new lock meanwhile, and putting
    the moved one back would then fail, losing a live lock.)
    """
    claim = _claim_path(lock, stale)
    if not _link_new(claim, me):
        return None
    try:
        found = _read(lock)
        if isinstance(found, Holder) and found.token == stale.token:
            lock.unlink(missing_ok=True)
            return True
        return False
    finally:
        claim.unlink(missing_ok=True)


def _prepare(folder: Path, subfolders: Sequence[str]) -> None:
    """Make the run folder; refuse, naming the path, a file where it or a subfolder must be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        in_way = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()), folder)
        raise StageError(f"{in_way}: is a file, but the run's outputs go in the folder {folder} "
                         "(run.root/run.name); move the file away or choose another run.root or run.name") from None
    except PermissionError as err:
        raise StageError(f"{folder}: cannot create the run folder ({err.strerror})") from None
    for name in subfolders:
        sub = folder / name
        if sub.exists() and not sub.is_dir():
            raise StageError(f"{sub}: is a file, but this stage writes into a folder of that name; move it away")


def acquire(output: Path, subfolders: Sequence[str] = ()) -> Holder:
    """Take the lock of ``output`` for this process, or raise :class:`OutputLocked` naming its holder."""
    output = Path(output)
    lock = lock_path(output)
    _prepare(output.parent, subfolders)
    me = Holder.me()
    busy = None
    for _ in range(_ATTEMPTS):
        if _link_new(lock, me):
            log.debug("locked %s (%s)", output, lock)
            return me
        found = _read(lock)
        if found is None:
            continue  # released between our attempt and our look: try again
        if isinstance(found, str):
            raise OutputLocked(f"{lock}: a lock file that cannot be read ({found}); if no other run is writing "
                               f"{output}, remove {lock} and run again")
        why = found.gone(me)
        if why is None:
            raise OutputLocked(_message(output, lock, found, me))
        taken = _take_over(lock, found, me)
        if taken:
            log.warning("%s: took over the lock of a run that has ended (%s: %s)", output, found.describe(), why)
        elif taken is None:
            busy = _claim_path(lock, found)
            time.sleep(_CLAIM_WAIT)  # another run is taking the dead lock over: look again when it is done
    if busy is not None and busy.exists():
        raise OutputLocked(f"{busy}: a takeover of {lock} (left by a run that has ended) was interrupted; if no other "
                           f"run is writing {output}, remove {busy} and {lock} and run again")
    raise OutputLocked(f"{output}: could not take {lock} in {_ATTEMPTS} tries: other runs keep taking it")


def _message(output: Path, lock: Path, holder: Holder, me: Holder) -> str:
    if holder.host == me.host:
        if holder.pid == me.pid:
            return f"{output} is already locked by this process ({lock})"
        return (f"{output} is being written by another run ({holder.describe()}); let it finish or stop it, "
                "then run this command again")
    check = f" (e.g. `squeue -j {holder.job}` or `qstat {holder.job}` shows nothing)" if holder.job else ""
    return (f"{output} is locked by a run on another host ({holder.describe()}), which this host ({me.host}) cannot "
            f"check; if that run has ended{check}, remove {lock} and run this command again")


def release(output: Path, holder: Holder) -> None:
    """Remove the lock of ``output`` if it is still ``holder``'s."""
    lock = lock_path(output)
    found = _read(lock)
    if isinstance(found, Holder) and found.token == holder.token:
        lock.unlink(missing_ok=True)
        log.debug("unlocked %s", output)
    elif found is not None:
        log.warning("%s: the lock is no longer this run's (%s); left in place", output,
                    found.describe() if isinstance(found, Holder) else found)


def _rank(ctx: Any) -> int:
    return 0 if ctx is None else int(ctx.rank)


def _bcast(ctx: Any, obj: Any) -> Any:
    if ctx is None:
        return obj
    return ctx.bcast(obj) if hasattr(ctx, "bcast") else ctx.broadcast_object(obj)


class output_lock:  # noqa: N801 - used like contextlib's lower-case context managers
    """``with output_lock(path, ctx):`` holds the lock of ``path`` for the block, for all ranks.

    ctx: an :class:`hpcmorph.mpi.Context`, a training backend (``rank``, ``broadcast_object``,
    ``barrier``), or None for one process. Rank 0 takes the lock and broadcasts the outcome: if
    another run holds it, every rank raises the same :class:`OutputLocked`. Rank 0 releases it when
    the block ends, also on an exception (after a normal end, once every rank is through).
    subfolders: folders the stage writes into beside ``path`` (``figures``): a file there is
    refused before anything is written.

    For a stage body that cannot sit in a ``with`` block: ``held = output_lock(...).acquire()`` and
    ``held.release()`` in a ``finally``.
    """

    def __init__(self, path: Path, ctx: Any = None, subfolders: Sequence[str] = ()):
        self.path, self.ctx, self.subfolders = Path(path), ctx, tuple(subfolders)
        self.holder: Holder | None = None

    def acquire(self) -> output_lock:
        outcome: tuple[Holder | None, str | None, type | None] = (None, None, None)
        if _rank(self.ctx) == 0:
            try:
                outcome = (acquire(self.path, self.subfolders), None, None)
            except UserError as err:
                outcome = (None, str(err), type(err))
        holder, error, kind = outcome
        _, error, kind = _bcast(self.ctx, (None, error, kind))
        if error is not None:
            raise kind(error)
        self.holder = holder
        return self

    def release(self) -> None:
        if self.holder is not None:
            release(self.path, self.holder)
            self.holder = None

    def __enter__(self) -> output_lock:
        return self.acquire()

    def __exit__(self, kind, value, tb) -> None:
        if kind is None and self.ctx is not None:
            self.ctx.barrier()
        self.release()


def locked(output: Callable[[Any], Path], subfolders: Sequence[str] = ()) -> Callable:
    """Decorate a stage's ``run(cfg, ctx, ...)`` so that it runs holding the lock of ``output(cfg)``.

    The lock is taken before the stage looks at its output, so its up-to-date check and everything
    after it see no other writer.
    """
    def decorate(run: Callable) -> Callable:
        @functools.wraps(run)
        def run_locked(cfg, ctx=None, *args, **kwargs):
            with output_lock(output(cfg), ctx, subfolders):
                return run(cfg, ctx, *args, **kwargs)

        return run_locked

    return decorate
