"""Data-parallel plumbing, kept thin: one small class per backend with the same five verbs.

``init(name)`` starts the backend and returns it; then ``wrap(model, optimizer)`` broadcasts rank
0's weights and makes the optimizer average gradients across ranks; ``allreduce_sum``,
``broadcast_object`` and ``barrier`` serve the training loop's bookkeeping (validation loss,
stop requests, checkpoints). Rank and size come from the backend itself, so the stage runs under
``mpirun``/``srun`` (every backend), ``horovodrun`` (horovod) or ``torchrun`` (ddp).
"""

from __future__ import annotations

import os
import socket

import numpy as np
import torch

from ..errors import BackendError
from ..mpi import launcher_local_rank

# Launchers' variables for (rank, size), in the order tried by the DDP backend; the node-local rank
# comes from mpi.launcher_local_rank.
_LAUNCHERS = (
    ("RANK", "WORLD_SIZE"),                             # torchrun
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),   # Open MPI
    ("PMI_RANK", "PMI_SIZE"),                           # MPICH, Intel MPI
    ("PMIX_RANK", "SLURM_NTASKS"),                      # srun --mpi=pmix
    ("SLURM_PROCID", "SLURM_NTASKS"),                   # srun
)




class Single:
    """One process, no communication."""

    name = "none"
    rank, size, local_rank = 0, 1, 0

    def describe(self) -> str:
        """The backend and how its ranks talk, for the log."""
        return self.name

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, compression: str = "none"):
        """(model, optimizer) that train together across the ranks; ``compression`` (``none``, ``fp16``,
        ``bf16``) is the precision of the gradients on the wire (one rank sends nothing)."""
        return model, optimizer

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        """Apply the averaged gradients: unscaled first where ``scaler`` is active (fp16), and skipped
        when they overflowed."""
        scaler.step(optimizer)
        scaler.update()

    def evaluating(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to run evaluation passes through: its forward starts no collective, so ranks
        holding different numbers of images (3 validation images on 4 ranks) do not wait on each
        other. Collective itself: every rank calls it."""
        return getattr(model, "module", model)

    def allreduce_sum(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def broadcast_object(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def rendezvous(size: int) -> tuple[str, str]:
    """Where DDP's ranks meet rank 0 (MASTER_ADDR, MASTER_PORT).

    The launcher's values where it set them (torchrun). Under an MPI launcher (mpirun, srun
    --mpi=pmix) rank 0 tells every rank its own: 127.0.0.1 when every rank is on rank 0's host, else
    the address rank 0's host name resolves to (on another node, 127.0.0.1 would be that node's own);
    and a port free on rank 0's host, so two jobs sharing a node do not meet in each other's store.
    Without either, one host is assumed: 127.0.0.1:29511.
    """
    given = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if all(given):
        return given[0], given[1]
    from ..mpi import world

    ctx = world()
    if ctx.size != size or size == 1:
        return given[0] or "127.0.0.1", given[1] or "29511"
    hosts = ctx.hosts()  # collective: every rank
    found: tuple[str, str, str | None] = ("", "", None)
    if ctx.is_root:
        found = _rank0_address(given[0], given[1], hosts)
    addr, port, error = ctx.bcast(found)
    if error:
        raise BackendError(error)
    return addr, port


def _rank0_address(addr: str | None, port: str | None, hosts: list[str]) -> tuple[str, str, str | None]:
    """(address, port, error) for :func:`rendezvous`, worked out on rank 0."""
    if not addr:
        if len(set(hosts)) == 1:
            addr = "127.0.0.1"
        else:
            try:
                addr = socket.gethostbyname(hosts[0])
            except OSError as err:
                return "", "", (f"train.backend ddp: rank 0's host name {hosts[0]!r} does not resolve ({err}), and "
                                "the ranks on the other hosts must reach it: set MASTER_ADDR to an address of rank 0's "
                                "host")
            if addr.startswith("127."):
                return "", "", (f"train.backend ddp: rank 0's host name {hosts[0]!r} resolves to {addr}, a loopback "
                                f"address the ranks on {', '.join(sorted(set(hosts) - {hosts[0]}))} cannot reach: set "
                                "MASTER_ADDR to an address of rank 0's host")
    if not port:
        with socket.socket() as s:
            s.bind(("", 0))
            port = str(s.getsockname()[1])
    return addr, port, None


class Horovod(Single):
    """Horovod over MPI or Gloo (NCCL on GPU builds)."""

    name = "horovod"

    def __init__(self):
        try:
            import horovod.torch as hvd
        except ImportError as err:
            raise BackendError(f"train.backend is 'horovod' but horovod.torch cannot be imported ({err}); "
                               "build it with `make horovod` or choose train.backend=ddp") from None
        hvd.init()
        self.hvd = hvd
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def describe(self) -> str:
        hvd = self.hvd
        controller = "MPI" if hvd.mpi_enabled() else "Gloo" if hvd.gloo_enabled() else "?"
        ops = "NCCL" if torch.cuda.is_available() and hvd.nccl_built() else controller
        return f"horovod ({controller} controller, {ops} allreduce)"

    def wrap(self, model, optimizer, compression="none"):
        hvd = self.hvd
        if compression not in ("none", "fp16"):
            raise BackendError(f"train.compression {compression!r}: Horovod compresses gradients to fp16 only; "
                               "choose none or fp16, or train.backend=ddp for bf16")
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # No broadcast_optimizer_state: on a fresh Adam it takes a dummy step with zero gradients,
        # which weight decay turns into a real update (the weights then differ from DDP's). Every
        # rank builds the same fresh optimizer, or loads the same checkpoint, so there is nothing to send.
        wrapped = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average,
                                           compression=hvd.Compression.fp16 if compression == "fp16"
                                           else hvd.Compression.none)
        # DistributedOptimizer is a new optimizer over the same parameters, with no state: a resumed
        # run's Adam moments, loaded from its checkpoint into `optimizer`, were dropped, and the run
        # went on as if freshly started (seen: a 4-rank run resumed at epoch 4 ended with other
        # weights than the uninterrupted one).
        if optimizer.state:
            wrapped.load_state_dict(optimizer.state_dict())
        return model, wrapped

    def step(self, optimizer, scaler):
        if not scaler.is_enabled():
            optimizer.step()
            return
        # The gradients are averaged by step(); the scaler must unscale (and look for overflow in) the
        # averaged ones, so every rank skips the same steps: Horovod's recipe for GradScaler.
        optimizer.synchronize()
        scaler.unscale_(optimizer)
        with optimizer.skip_synchronize():
            scaler.step(optimizer)
        scaler.update()

    def evaluating(self, model):
        # Each rank's BatchNorm running statistics follow its own batches; the checkpoint and
        # best.pt keep rank 0's. Evaluating with rank 0's on every rank (as DDP does) scores the
        # weights that are saved, and leaves every rank as a resumed run starts.
        module = getattr(model, "module", model)
        self.hvd.broadcast_parameters(list(module.named_buffers()), root_rank=0)
        return module

    def allreduce_sum(self, values) -> np.ndarray:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        return self.hvd.allreduce(t, op=self.hvd.Sum, name=None).numpy()

    def broadcast_object(self, obj):
        return self.hvd.broadcast_object(obj, root_rank=0)

    def barrier(self) -> None:
        self.hvd.allreduce(torch.zeros(1), op=self.hvd.Sum)

    def shutdown(self) -> None:
        self.hvd.shutdown()


class DDP(Single):
    """torch.distributed with DistributedDataParallel: NCCL on GPUs, Gloo on CPUs."""

    name = "ddp"

    def __init__(self):
        import torch.distributed as dist

        for rank_var, size_var in _LAUNCHERS:
            if rank_var in os.environ and size_var in os.environ:
                self.rank, self.size = int(os.environ[rank_var]), int(os.environ[size_var])
                self.local_rank = launcher_local_rank() or 0
                break
        else:
            self.rank, self.size, self.local_rank = 0, 1, 0
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = rendezvous(self.size)
        self.transport = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(self.transport, rank=self.rank, world_size=self.size)
        self.dist = dist

    def describe(self) -> str:
        return f"ddp ({self.transport}, rank 0 at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']})"

    def wrap(self, model, optimizer, compression="none"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank % torch.cuda.device_count()] if torch.cuda.is_available() else None
        # DDP broadcasts rank 0's parameters and buffers at construction.
        wrapped = DistributedDataParallel(model, device_ids=ids)
        hooks = {"fp16": default_hooks.fp16_compress_hook, "bf16": default_hooks.bf16_compress_hook}
        if compression in hooks:
            wrapped.register_comm_hook(None, hooks[compression])
        return wrapped, optimizer

    def evaluating(self, model):
        # DDP's forward broadcasts rank 0's buffers (BatchNorm's running statistics) before every
        # pass: a collective per batch, which left a rank with fewer batches to evaluate than the
        # others (or none) in a different collective: the job hung at its first validation (seen
        # with 3 validation images on 4 ranks). Broadcast them once, then evaluate the bare module:
        # the same numbers, and no collective per batch.
        module = getattr(model, "module", model)
        for buffer in module.buffers():
            self.dist.broadcast(buffer, src=0)
        return module

    def allreduce_sum(self, values) -> np.ndarray:
        t = torch.as_tensor(np.asarray(values, dtype=np.float64))
        if torch.cuda.is_available():
            t = t.cuda()
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def broadcast_object(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.dist.barrier()

    def shutdown(self) -> None:
        self.dist.destroy_process_group()


def _launched_size() -> int:
    for _, size_var in _LAUNCHERS:
        if size_var in os.environ:
            return int(os.environ[size_var])
    return 1


def resolve(name: str) -> str:
    """The backend 'auto' stands for: none on one rank, else horovod if importable, else ddp."""
    if name != "auto":
        return name
    if _launched_size() == 1:
        return "none"
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return "ddp"
    return "horovod"


def init(name: str) -> Single:
    name = resolve(name)
    if name == "none":
        if _launched_size() > 1:
            raise BackendError(f"train.backend is 'none' but the job has {_launched_size()} ranks; "
                               "choose horovod or ddp, or run one process")
        return Single()
    return {"horovod": Horovod, "ddp": DDP}[name]()
