"""HDF5 outputs: one file per stage, written in parallel, appearing under its final name only when done.

Two write paths, chosen by ``run.io``:

- ``mpio``: every rank opens the same file with the MPI-IO driver; datasets and attributes are
  created collectively and each rank writes its contiguous block of rows with collective writes.
- ``shards``: (h5py without MPI) each rank writes its rows to ``<tmp>.shard<rank>``; rank 0 copies
  them into the output in row order and removes them.

Either way the file is written as ``<name>.tmp`` and renamed by rank 0 after every rank has closed
it, so a killed job never leaves a half-written file under the final name. Every output carries
the resolved config and the software that made it (:func:`provenance`).
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterator, Mapping

import h5py
import numpy as np

from . import __version__
from .config import Config
from .errors import DiskFull, StoreError, out_of_space
from .mpi import Context, log




@contextmanager
def atomic(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary name beside ``path`` to write to: renamed to ``path`` when the block ends, removed if
    it raises, so a file never appears half-written under its final name. ``suffix`` keeps a file type
    for writers that go by the name (``".tmp.png"``)."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix) if suffix == ".tmp" else path.with_name(path.stem + suffix)
    try:
        yield tmp
    except BaseException as err:
        full = out_of_space(err, tmp.parent)  # judged before the partial file frees its space
        tmp.unlink(missing_ok=True)
        if full:
            raise DiskFull.writing(path) from err
        raise
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`atomic`)."""
    with atomic(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def strict(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so that it is strict JSON."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as strict JSON (NaN and infinities become null), atomically."""
    return write_text(path, json.dumps(strict(obj), indent=2, allow_nan=False))


def read_json(path: Path, hint: str = "", kind: type = dict) -> Any:
    """The JSON value in ``path`` (of type ``kind``), or a StoreError naming the file and what is wrong,
    followed by ``hint`` (what to run to make it)."""
    path = Path(path)
    tail = f"; {hint}" if hint else ""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"{path}: no such file{tail}") from None
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: not valid JSON ({err}){tail}") from None
    if not isinstance(data, kind):
        raise StoreError(f"{path}: expected a JSON {kind.__name__}, found {type(data).__name__}{tail}")
    return data


class Blocks:
    """A stage's checkpoint folder: one small HDF5 file per finished block of work.

    A block is written under a temporary name and renamed when complete, so after a kill the folder
    holds only whole blocks and the same command redoes just the missing ones. The folder's name
    carries the config digest, so blocks of another config are never mixed in.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, b: int) -> Path:
        return self.folder / f"block-{b:06d}.h5"

    def create(self, ctx: Context) -> None:
        if ctx.is_root:
            self.folder.mkdir(parents=True, exist_ok=True)
        ctx.barrier()

    def done(self, ctx: Context) -> set[int]:
        """Blocks already on disk. Rank 0 looks and tells the others: a rank looking later could see
        blocks written since."""
        found = {int(p.stem.split("-")[1]) for p in self.folder.glob("block-*.h5")} if ctx.is_root else None
        return ctx.bcast(found)

    def todo(self, n_blocks: int, ctx: Context) -> tuple[list[int], int]:
        """(this rank's share of the blocks not yet on disk, dealt round-robin; how many are done)."""
        done = self.done(ctx)
        return ctx.share(b for b in range(n_blocks) if b not in done), len(done)

    def write(self, b: int, data: Mapping[str, np.ndarray], attrs: Mapping | None = None) -> None:
        with atomic(self.path(b)) as tmp, h5py.File(tmp, "w") as f:
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for name, arr in data.items():
                f.create_dataset(name, data=arr)

    def open(self, b: int) -> h5py.File:
        return h5py.File(self.path(b), "r")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def remove_leftovers(output: Path, figures: Path | None = None, prefix: str = "") -> None:
    """Remove what killed runs of the stage writing ``output`` left: its checkpoint folders
    (``<output>.parts-*``), its temporary file, and temporary figure files starting with ``prefix``."""
    output = Path(output)
    for parts in output.parent.glob(f"{output.name}.parts-*"):
        shutil.rmtree(parts, ignore_errors=True)
    output.with_name(output.name + ".tmp").unlink(missing_ok=True)
    if figures is not None and figures.is_dir():
        for tmp in figures.glob(f"{prefix}*.tmp"):
            tmp.unlink(missing_ok=True)


def h5py_has_mpi() -> bool:
    return bool(h5py.get_config().mpi)


def resolve_io(cfg: Config) -> str:
    io = cfg.run.io
    if io == "auto":
        return "mpio" if h5py_has_mpi() else "shards"
    if io == "mpio" and not h5py_has_mpi():
        raise StoreError("run.io is 'mpio' but this h5py was built without MPI (h5py.get_config().mpi is False); "
                         "use run.io=shards or rebuild h5py (scripts/setup.sh)")
    return io


def _installed(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers in an output."""
    import mpi4py

    # From the installed distributions' metadata: importing GalSim and SciPy to read their
    # __version__ cost a stage that uses neither about a second of CPU per rank.
    out = {"hpcmorph": __version__, "python": platform.python_version(), "numpy": np.__version__,
           "scipy": _installed("scipy"), "h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version,
           "h5py_mpi": str(h5py_has_mpi()), "mpi4py": mpi4py.__version__, "galsim": _installed("galsim")}
    try:
        from mpi4py import MPI

        out["mpi"] = MPI.Get_library_version().replace("\x00", "").splitlines()[0].strip()
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        out["mpi"] = "unknown"
    # Frameworks only the later stages load: recorded when the stage imported them.
    for mod in ("torch", "torchvision", "sklearn", "horovod"):
        if mod in sys.modules:
            out[mod] = str(getattr(sys.modules[mod], "__version__", "unknown"))
    if "torch" in sys.modules:
        # The last bits of a network's output depend on these, and so does a trained model.
        torch = sys.modules["torch"]
        out["torch_threads"] = str(torch.get_num_threads())
        out["cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    return out


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        res = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        if res.returncode == 0:
            return res.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def provenance(cfg: Config, ctx: Context, stage: str, digest: str, started: str) -> dict[str, str | int]:
    """Attributes every output carries. Built on rank 0 and broadcast: collective attribute writes
    must see identical values on every rank."""
    attrs = None
    if ctx.is_root:
        attrs = {"stage": stage, "config": cfg.to_yaml(), "config_digest": digest, "git_commit": git_commit(),
                 "ranks": ctx.size, "host": socket.gethostname(), "started": started, "finished": now(),
                 **{f"version_{k}": v for k, v in versions().items()}}
    return ctx.bcast(attrs)


@dataclass(frozen=True)
class Column:
    """One dataset of a row-oriented output: row shape (after the leading N axis) and dtype."""

    shape: tuple[int, ...]
    dtype: str
    doc: str
    chunk_rows: int | None = None  # rows per chunk; images use 1 so a single image reads one chunk

    def chunks(self, n_rows: int) -> tuple[int, ...] | None:
        if self.chunk_rows is None or n_rows == 0:
            return None
        return (min(self.chunk_rows, n_rows),) + self.shape


def row_range(n_rows: int, ctx: Context) -> tuple[int, int]:
    """This rank's contiguous block of rows (the first ``n_rows % size`` ranks get one extra)."""
    return rows_of(ctx.rank, ctx.size, n_rows)


def rows_of(rank: int, size: int, n_rows: int) -> tuple[int, int]:
    """Rank ``rank`` of ``size``'s rows ``[lo, hi)`` of ``n_rows`` (see :func:`row_range`)."""
    base, extra = divmod(n_rows, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


RowBlocks = Callable[[int, int], Iterator[tuple[int, int, Mapping[str, np.ndarray]]]]


def write_table(path: Path, columns: Mapping[str, Column], n_rows: int, blocks: RowBlocks, attrs: Mapping,
                ctx: Context, io: str, dataset_attrs: Mapping[str, Mapping] | None = None) -> None:
    """Write ``n_rows`` rows of ``columns`` to ``path``, all ranks together.

    ``blocks(lo, hi)`` yields ``(start, stop, {column: array})`` pieces covering this rank's rows
    ``[lo, hi)`` in order. The file appears under ``path`` only once complete.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    lo, hi = row_range(n_rows, ctx)
    if ctx.is_root:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in (tmp, *tmp.parent.glob(f"{glob.escape(tmp.name)}.shard*")):  # a killed run's partial files
            old.unlink(missing_ok=True)
    ctx.barrier()

    def create(f: h5py.File) -> None:
        for name, col in columns.items():
            ds = f.create_dataset(name, shape=(n_rows,) + col.shape, dtype=col.dtype, chunks=col.chunks(n_rows))
            ds.attrs["doc"] = col.doc
            for key, value in (dataset_attrs or {}).get(name, {}).items():
                ds.attrs[key] = value
        for key, value in attrs.items():
            f.attrs[key] = value

    try:
        _write_rows(tmp, columns, blocks, lo, hi, create, ctx, io)
    except Exception as err:  # noqa: BLE001 - only a full disk is handled here; the rest is raised
        if not out_of_space(err, tmp.parent):
            raise
        # Whichever rank meets the full disk removes the partial output (and its own shard): the
        # space comes back at once, not on the next run.
        for partial in (tmp, tmp.with_name(f"{tmp.name}.shard{ctx.rank}")):
            partial.unlink(missing_ok=True)
        raise DiskFull.writing(path) from err
    hosts = ctx.hosts()
    ctx.barrier()
    if ctx.is_root:
        os.replace(tmp, path)
        log.info("wrote %s (%d rows, io=%s, %d ranks%s)", path, n_rows, io, ctx.size, _writers(n_rows, ctx, hosts))
    ctx.barrier()


def _writers(n_rows: int, ctx: Context, hosts: list[str]) -> str:
    """Which host's ranks wrote which rows, when the ranks span several hosts (`` on 2 hosts: node1
    rows 0-19, node2 rows 20-39``): on a cluster, that every node's ranks wrote into the one file on
    the shared file system."""
    if len(set(hosts)) < 2:
        return ""
    spans: dict[str, list[list[int]]] = {}
    for rank, host in enumerate(hosts):
        lo, hi = rows_of(rank, ctx.size, n_rows)
        mine = spans.setdefault(host, [])
        if hi <= lo:
            continue
        if mine and mine[-1][1] == lo:
            mine[-1][1] = hi  # the next rank's rows on the same host: one span
        else:
            mine.append([lo, hi])
    text = ", ".join(f"{host} rows " + " ".join(f"{lo}-{hi - 1}" for lo, hi in ranges) if ranges else f"{host} no rows"
                     for host, ranges in spans.items())
    return f" on {len(spans)} hosts: {text}"


def _write_rows(tmp: Path, columns: Mapping[str, Column], blocks: RowBlocks, lo: int, hi: int,
                create: Callable[[h5py.File], None], ctx: Context, io: str) -> None:
    """Fill ``tmp`` (made by ``create``) with every rank's rows, by MPI-IO or through per-rank shards."""
    if io == "mpio":
        # No `with`: closing an mpio file is collective, so unwinding after an error on one rank
        # would block it in H5Fclose while the others wait elsewhere. Left open, the error reaches
        # mpi.abort_on_error, which aborts every rank.
        f = h5py.File(tmp, "w", driver="mpio", comm=ctx.comm)
        create(f)
        pieces = iter(blocks(lo, hi))
        while True:
            piece = next(pieces, None)
            # Collective writes need the same number of calls on every rank: a rank out of rows
            # keeps joining with empty selections until every rank is.
            if not ctx.allreduce_max(piece is not None):
                break
            for name in columns:
                ds = f[name]
                with ds.collective:
                    if piece is not None:
                        start, stop, data = piece
                        ds[start:stop] = data[name]
                    else:
                        _write_nothing(ds)
        f.close()
    else:
        shard = tmp.with_name(f"{tmp.name}.shard{ctx.rank}")
        with h5py.File(shard, "w") as f:
            f.attrs["lo"], f.attrs["hi"] = lo, hi
            for name, col in columns.items():
                f.create_dataset(name, shape=(hi - lo,) + col.shape, dtype=col.dtype)
            for start, stop, data in blocks(lo, hi):
                for name in columns:
                    f[name][start - lo:stop - lo] = data[name]
        ctx.barrier()
        if ctx.is_root:
            with h5py.File(tmp, "w") as f:
                create(f)
                for r in range(ctx.size):
                    part = tmp.with_name(f"{tmp.name}.shard{r}")
                    with h5py.File(part, "r") as s:
                        a, b = int(s.attrs["lo"]), int(s.attrs["hi"])
                        for name in columns:
                            if b > a:
                                f[name][a:b] = s[name][...]
                    part.unlink()


def _write_nothing(ds: h5py.Dataset) -> None:
    """Take part in a collective write with an empty selection (h5py skips empty slices entirely,
    which would leave the other ranks waiting)."""
    buf = np.empty((1,) + ds.shape[1:], ds.dtype)
    mspace = h5py.h5s.create_simple(buf.shape)
    mspace.select_none()
    fspace = ds.id.get_space()
    fspace.select_none()
    ds.id.write(mspace, fspace, buf, dxpl=ds._dxpl)


def open_checked(path: Path, stage: str) -> h5py.File:
    """Open a stage output for reading, with errors that say which file and what is wrong."""
    path = Path(path)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        hint = " (a .tmp file exists: the stage that writes it did not finish; rerun it)" if tmp.exists() else ""
        raise StoreError(f"{path}: no such file; run `hpcmorph {stage}` first{hint}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise StoreError(f"{path}: not a readable HDF5 file ({err})") from None
    found = f.attrs.get("stage")
    if found != stage:
        f.close()
        raise StoreError(f"{path}: expected the output of '{stage}', found stage={found!r}")
    return f


def is_current(path: Path, digest: str, force: bool = False) -> bool:
    """Whether ``path`` is an output of this config (digest): then its main work need not be redone.

    An output from another config is never replaced silently: that is an error unless ``force``.
    """
    existing = output_digest(path)
    if existing == digest and not force:
        return True
    if existing is not None and existing != digest and not force:
        raise StoreError(f"{path} exists from a different config (digest {existing}, this one {digest}); "
                         "choose another run.name or pass --force to replace it")
    return False


def marker(path: Path) -> Path:
    """The completion marker of a stage output: ``<output>.complete``."""
    return Path(path).with_name(Path(path).name + ".complete")


def is_complete(path: Path, digest: str) -> bool:
    """Whether the whole stage that writes ``path`` finished for this config: its marker names the
    digest and every file the stage wrote after the output (figures, summaries; named relative to
    the output's folder) is there."""
    try:
        found = read_json(marker(path))
    except StoreError:
        return False
    here = Path(path).parent
    return found.get("digest") == digest and all((here / f).exists() for f in found.get("files", []))


def produce(path: Path, digest: str, ctx: Context, force: bool, make: Callable[[], None],
            finish: Callable[[], list[Path]]) -> Path:
    """The common shape of a stage that writes one output: ``make()`` it unless it is current, then
    ``finish()`` (rank 0: figures, summaries, removing checkpoints; returns the files it wrote), then
    mark the whole stage complete. A kill anywhere before the marker makes the next run redo only
    what is missing: the output if it is not there, else the finishing steps."""
    path = Path(path)
    current = is_current(path, digest, force)
    if current and ctx.bcast(is_complete(path, digest) if ctx.is_root else None):
        log.info("%s is up to date (config digest %s); nothing to do", path, digest)
        return path
    if current:
        log.info("%s is current; finishing what a stopped run left undone (figures, summaries)", path)
    else:
        if ctx.is_root:
            marker(path).unlink(missing_ok=True)
        ctx.barrier()
        make()
    if ctx.is_root:
        # Named relative to the output's folder: a run folder stays complete when moved.
        files = [os.path.relpath(Path(f).resolve(), path.parent.resolve()) for f in finish()]
        write_json(marker(path), {"digest": digest, "files": files, "finished": now()})
    ctx.barrier()
    return path


def output_digest(path: Path) -> str | None:
    """The config digest recorded in a complete output, or None if there is no usable file."""
    try:
        with h5py.File(path, "r") as f:
            return str(f.attrs.get("config_digest"))
    except (OSError, FileNotFoundError):
        return None
