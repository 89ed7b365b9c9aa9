"""``hpcmorph bench train``: the training images per second of the stage (steps only, from its own
metrics) beside a bare PyTorch loop on the same model, batch and data in the same run; the extra
cost of the MMD variant; and 2-rank throughput for each backend."""

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


def bare_train(cfg, steps: int) -> float:
    """Images per second of a plain Adam loop on the stage's model, batch and (normalised) data."""
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..generate import output_path
    from ..train.model import build_model
    from ..train.normalize import AsinhStretch

    with h5py.File(output_path(cfg), "r") as f:
        rows = np.flatnonzero(f["split"][...] == 0)[: cfg.train.batch_size * steps]
        stretch = AsinhStretch.fit(f["y10"], rows=rows)
        x = stretch(torch.from_numpy(f["y10"][rows]))
        y = torch.from_numpy(f["label"][rows].astype(np.int64))
    model = build_model(0, dropout=cfg.train.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    model.train()
    b = cfg.train.batch_size
    t0 = time.perf_counter()
    for i in range(0, len(y), b):
        _, logits = model(x[i:i + b])
        loss = F.cross_entropy(logits, y[i:i + b])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(y) / (time.perf_counter() - t0)


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
        bare_train(cfg, 1)  # warm-up
        out["bare_images_per_s"] = bare_train(cfg, steps)
        out["stage_images_per_s"] = stage_rate([f"train.threads={threads}"], 1)
        out["ratio_stage_to_bare"] = out["stage_images_per_s"] / out["bare_images_per_s"]
        out["stage_mmd_images_per_s"] = stage_rate([f"train.threads={threads}", "train.variants=[mmd]"], 1, "mmd")
        out["mmd_cost"] = out["stage_images_per_s"] / out["stage_mmd_images_per_s"]
        for backend in ("ddp", "horovod"):
            try:
                out[f"{backend}_2_ranks_images_per_s"] = stage_rate([f"train.backend={backend}"], 2)
            except RuntimeError as err:
                out[f"{backend}_2_ranks_images_per_s"] = float("nan")
                print(f"  ({backend} on 2 ranks failed: {str(err).splitlines()[-1]})")
    return out


def main(args) -> int:
    res = bench_train(args.galaxies * 2)
    print(f"train benchmark: ResNet18, {res['image_size']}x{res['image_size']} px, batch {res['batch']}, "
          f"{res['threads_per_process']} threads")
    print(f"  bare PyTorch loop             {res['bare_images_per_s']:8.1f} images/s")
    print(f"  train stage (regular, 1 rank) {res['stage_images_per_s']:8.1f} images/s")
    print(f"  ratio stage / bare            {res['ratio_stage_to_bare']:8.2f}   (aim >= 0.9)")
    print(f"  train stage (mmd, 1 rank)     {res['stage_mmd_images_per_s']:8.1f} labelled images/s "
          f"(MMD costs {res['mmd_cost']:.2f}x: it also runs the Y1 batch)")
    for backend in ("ddp", "horovod"):
        print(f"  {backend:8s} 2 ranks              {res[backend + '_2_ranks_images_per_s']:8.1f} images/s "
              f"(1 thread per rank)")
    print(json.dumps(res))
    return 0
