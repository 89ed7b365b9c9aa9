#!/usr/bin/env python3
"""The data-parallel collectives of an image, on one rank: a sum over torch.distributed (NCCL on a
GPU, Gloo with ``--cpu``) and one over Horovod (its NCCL ops on a GPU when it was built with them),
each checked against the tensor summed. Run by ``scripts/gpu-check.sh --image`` inside the image;
writes OUT/collectives.json, exit 0 when both sums are right."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path


def torch_distributed(device: str) -> dict:
    import torch
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        x = torch.arange(1024, dtype=torch.float32, device=device)
        dist.all_reduce(x)
        ok = bool(torch.equal(x.cpu(), torch.arange(1024, dtype=torch.float32)))
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if backend == "nccl" else None
        return {"backend": backend, "ok": ok, "nccl_version": nccl}
    finally:
        dist.destroy_process_group()


def horovod(device: str) -> dict:
    import horovod.torch as hvd
    import torch

    hvd.init()
    try:
        x = torch.arange(1024, dtype=torch.float32, device=device)
        y = hvd.allreduce(x, op=hvd.Sum)
        ok = bool(torch.equal(y.cpu(), torch.arange(1024, dtype=torch.float32)))
        return {"ok": ok, "nccl_built": bool(hvd.nccl_built()), "mpi_built": bool(hvd.mpi_built()),
                "size": hvd.size()}
    finally:
        hvd.shutdown()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="CPU tensors and Gloo instead of the GPU")
    parser.add_argument("--out", default="gpu-check-out", help="folder for collectives.json")
    args = parser.parse_args(argv)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("gpu-collectives: error: no CUDA device (use --cpu)", file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else "cuda"
    report: dict = {"device": device, "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    for name, step in (("torch_distributed", torch_distributed), ("horovod", horovod)):
        t0 = time.perf_counter()
        try:
            report[name] = step(device)
        except Exception as exc:   # recorded, then the other step still runs
            report[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()[-2000:]}
        report[name]["seconds"] = round(time.perf_counter() - t0, 3)
    report["passed"] = all(report[n]["ok"] for n in ("torch_distributed", "horovod"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "collectives.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items()}, default=str)[:2000])
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
