"""Data-parallel plumbing, kept thin: one small class per backend with the same five verbs.

``init(name)`` starts the backend and returns it; then ``wrap(model, optimizer)`` broadcasts rank
0's weights and makes the optimizer average gradients across ranks; ``allreduce_sum``,
``broadcast_object`` and ``barrier`` serve the training loop's bookkeeping (validation loss,
stop requests, checkpoints). Rank and size come from the backend itself, so the stage runs under
``mpirun``/``srun`` (every backend), ``horovodrun`` (horovod) or ``torchrun`` (ddp).
"""

from __future__ import annotations

import os

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

    def wrap(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        return model, optimizer

    def allreduce_sum(self, values) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def broadcast_object(self, obj):
        return obj

    def barrier(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


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

    def wrap(self, model, optimizer):
        hvd = self.hvd
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # No broadcast_optimizer_state: on a fresh Adam it takes a dummy step with zero gradients,
        # which weight decay turns into a real update (the weights then differ from DDP's). Every
        # rank builds the same fresh optimizer, or loads the same checkpoint, so there is nothing to send.
        return model, hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(), op=hvd.Average)

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
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29511")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.size)
        self.dist = dist

    def wrap(self, model, optimizer):
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank % torch.cuda.device_count()] if torch.cuda.is_available() else None
        # DDP broadcasts rank 0's parameters and buffers at construction.
        return DistributedDataParallel(model, device_ids=ids), optimizer

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
