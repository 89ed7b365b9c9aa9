"""``hpcmorph bench train``: the training images per second of the stage (steps only, from its own
metrics) beside a bare PyTorch loop on the same model, batch and data in the same run; the extra
cost of the MMD variant; 2-rank throughput for each backend; and, per precision (fp32, and bf16 /
fp16 where the device has them), the bare loop's and the stage's images/s, their achieved FLOP/s
and the device's peak of that precision measured in the same run (:mod:`.roofline`)."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from .common import QUIET, sets, stage

PRESET = "laptop"
SETTINGS = ["generate.image_size=100", "train.epochs=2", "train.patience=5", "train.batch_size=32",
            "train.variants=[regular]", "train.seeds=[0]"]


def _settings(root: Path, n: int, extra=()) -> list[str]:
    return [*QUIET, f"run.root={root}", "run.name=bench", f"generate.n_galaxies={n}", *SETTINGS, *extra]


def bare_train(cfg, steps: int, arithmetic: str = "fp32") -> float:
    """Images per second of a plain Adam loop on the stage's model, batch and (normalised) data, its passes
    in ``arithmetic`` (resolved; autocast and a loss scaler as the stage uses them)."""
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .. import precision
    from ..generate import output_path
    from ..train.model import for_config
    from ..train.normalize import AsinhStretch

    with h5py.File(output_path(cfg), "r") as f:
        rows = np.flatnonzero(f["split"][...] == 0)[: cfg.train.batch_size * steps]
        stretch = AsinhStretch.fit(f["y10"], rows=rows)
        x = stretch(torch.from_numpy(f["y10"][rows]))
        y = torch.from_numpy(f["label"][rows].astype(np.int64))
    cpu = torch.device("cpu")
    model = for_config(cfg, 0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    scaler = precision.grad_scaler(arithmetic, cpu)
    model.train()
    b = cfg.train.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(y), b):
        with precision.autocast(arithmetic, cpu):
            _, logits = model(x[i:i + b])
        loss = F.cross_entropy(logits.float(), y[i:i + b])
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return len(y) / (time.perf_counter() - t0)


def precisions() -> list[str]:
    """The precisions worth measuring here: fp32, and those the CPU computes natively."""
    import torch

    from .. import precision

    auto = precision.resolve("auto", torch.device("cpu"))
    return ["fp32"] + ([auto] if auto != "fp32" else [])


def roofline(cfg, steps: int, stage_rates: dict) -> list[dict]:
    """Per precision: the bare loop and the stage (``stage_rates``) against the peak of that precision."""
    import torch

    from ..train.model import for_config
    from . import roofline as rl

    cpu = torch.device("cpu")
    flops = rl.flops_per_image(for_config(cfg, 0), cfg.generate.image_size, training=True,
                               channels=len(cfg.generate.bands))
    rows = []
    for arithmetic in precisions():
        bare_train(cfg, 1, arithmetic)  # warm-up: oneDNN picks its kernels for this precision
        peak = rl.peak_flops(arithmetic, cpu)
        bare = max(bare_train(cfg, steps, arithmetic) for _ in range(2))
        rows.append(rl.row(f"{arithmetic} bare loop", bare, flops, peak))
        rows.append(rl.row(f"{arithmetic} train stage", stage_rates[arithmetic], flops, peak))
    return rows


def bench_train(n: int) -> dict:
    import torch

    from .. import config

    threads = torch.get_num_threads()
    out: dict = {"threads_per_process": threads}
    with tempfile.TemporaryDirectory(prefix="hpcmorph-bench-") as tmp:
        root = Path(tmp)
        stage(["generate", "--config", PRESET, *sets(_settings(root, n))], 1, threads, root)
        cfg = config.load(PRESET, _settings(root, n))
        out.update(image_size=cfg.generate.image_size, batch=cfg.train.batch_size)
        metrics_path = root / "bench"

        def stage_rate(extra: list[str], ranks: int, variant: str = "regular") -> float:
            shutil.rmtree(metrics_path / variant, ignore_errors=True)
            stage(["train", "--config", PRESET, *sets(_settings(root, n, extra))], ranks,
                  max(1, threads // ranks), root)
            return json.loads((metrics_path / variant / "seed0" / "metrics.json").read_text())["train_images_per_s"]

        steps = max(1, n // 2 // cfg.train.batch_size)
        # Best of two after a warm-up: a first short loop ran at half the speed of later ones (2026-12-05).
        bare_train(cfg, 1)
        out["bare_images_per_s"] = max(bare_train(cfg, steps) for _ in range(2))
        out["stage_images_per_s"] = stage_rate([f"train.threads={threads}", "train.precision=fp32"], 1)
        rates = {"fp32": out["stage_images_per_s"]}
        for arithmetic in precisions()[1:]:
            rates[arithmetic] = stage_rate([f"train.threads={threads}", f"train.precision={arithmetic}"], 1)
        out["stage_auto_images_per_s"] = rates[precisions()[-1]]
        out["auto_precision"] = precisions()[-1]
        out["ratio_auto_to_fp32"] = out["stage_auto_images_per_s"] / out["stage_images_per_s"]
        out["roofline"] = roofline(cfg, steps, rates)
        out["ratio_stage_to_bare"] = out["stage_images_per_s"] / out["bare_images_per_s"]
        out["stage_mmd_images_per_s"] = stage_rate([f"train.threads={threads}", "train.variants=[mmd]",
                                                    "train.precision=fp32"], 1, "mmd")
        out["mmd_cost"] = out["stage_images_per_s"] / out["stage_mmd_images_per_s"]
        for backend in ("ddp", "horovod"):
            try:
                out[f"{backend}_2_ranks_images_per_s"] = stage_rate([f"train.backend={backend}",
                                                                     "train.precision=fp32"], 2)
            except RuntimeError as err:
                out[f"{backend}_2_ranks_images_per_s"] = float("nan")
                print(f"  ({backend} on 2 ranks failed: {str(err).splitlines()[-1]})")
    return out


def main(args) -> int:
    from .roofline import format_rows

    res = bench_train(args.galaxies * 2)
    print(f"train benchmark: ResNet18, {res['image_size']}x{res['image_size']} px, batch {res['batch']}, "
          f"{res['threads_per_process']} threads")
    print(f"  bare PyTorch loop             {res['bare_images_per_s']:8.1f} images/s")
    print(f"  train stage (regular, 1 rank) {res['stage_images_per_s']:8.1f} images/s")
    print(f"  ratio stage / bare            {res['ratio_stage_to_bare']:8.2f}   (aim >= 0.9)")
    print(f"  train stage, precision auto   {res['stage_auto_images_per_s']:8.1f} images/s "
          f"({res['auto_precision']}: {res['ratio_auto_to_fp32']:.2f}x fp32; aim >= 1.5 where the CPU has bf16)")
    print(f"  train stage (mmd, 1 rank)     {res['stage_mmd_images_per_s']:8.1f} labelled images/s "
          f"(MMD costs {res['mmd_cost']:.2f}x: it also runs the Y1 batch)")
    for backend in ("ddp", "horovod"):
        print(f"  {backend:8s} 2 ranks              {res[backend + '_2_ranks_images_per_s']:8.1f} images/s "
              f"(1 thread per rank)")
    print("\n".join(format_rows(res["roofline"], "roofline (forward + backward)")))
    print(json.dumps(res))
    return 0
