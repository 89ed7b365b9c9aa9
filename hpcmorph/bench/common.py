"""What the benchmarks share: launching a stage (under ``mpirun``) with a fixed thread count, the
rank-scaling lines, and the tiny model the attack and analyze benchmarks measure on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

# Every benchmark's stage runs: no progress bars, no figures (not what is measured).
QUIET = ["run.progress=false", "generate.figures=false"]

# The tiny trained model of the attack and analyze benchmarks (48 x 48 px, regular variant, 30
# epochs: about 40 s to make; shorter training leaves a model whose probabilities one pixel barely
# moves). One training thread: the model is then the same whatever the machine's core count.
TINY_PRESET = "tiny"
TINY_SETTINGS = [*QUIET, "run.name=bench", "generate.n_galaxies=96", "train.variants=[regular]", "train.epochs=30",
                 "train.patience=30", "train.batch_size=16", "train.lr=0.002", "train.threads=1",
                 "attack.variants=[regular]", "attack.figures=false"]


def sets(settings: list[str]) -> list[str]:
    """``--set`` flags for ``key=value`` settings."""
    return [a for kv in settings for a in ("--set", kv)]


def launch(cmd: list[str], ranks: int, threads: int, cwd: Path | None = None) -> str:
    """Run ``cmd`` (under ``mpirun -n ranks`` when ranks > 1) with ``threads`` per rank; its stdout."""
    if ranks > 1:
        mpirun = shutil.which("mpirun") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
        cmd = [mpirun, "-n", str(ranks), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMPI_ALLOW_RUN_AS_ROOT": "1",
           "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, cwd=cwd)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[-8:])} on {ranks} ranks failed:\n{res.stderr[-3000:]}")
    return res.stdout


def worker(module: str, args: list[str], ranks: int, threads: int, cwd: Path | None = None) -> dict:
    """Run ``python -m MODULE _worker ARGS`` (under mpirun for ranks > 1); the JSON line it printed last."""
    out = launch([sys.executable, "-m", module, "_worker", *args], ranks, threads, cwd=cwd)
    return json.loads(out.strip().splitlines()[-1])


def stage(args: list[str], ranks: int, threads: int, cwd: Path) -> str:
    """Run ``hpcmorph ARGS``."""
    return launch([sys.executable, "-m", "hpcmorph", *args], ranks, threads, cwd=cwd)


def per_rank_count(res: dict, prefix: str):
    """(ranks, figure, scaling efficiency or None) of every ``<prefix><ranks>_ranks`` entry of ``res``."""
    for key, value in res.items():
        if key.startswith(prefix) and key.endswith("_ranks") and key[len(prefix):-len("_ranks")].isdigit():
            k = key[len(prefix):-len("_ranks")]
            yield k, value, res.get(f"scaling_efficiency_{k}_ranks")


def tiny_settings(root: Path, extra=()) -> list[str]:
    return [*TINY_SETTINGS, f"run.root={root}", *extra]


def tiny_model(root: Path, threads: int):
    """Generate and train the benchmarks' tiny model under ``root``; return (cfg, model, stretch,
    correctly classified test images (N, C, H, W) in e-/s, their labels)."""
    import h5py
    import torch

    from .. import config
    from ..generate import output_path
    from ..train.saved import load_model

    for cmd in ("generate", "train"):
        stage([cmd, "--config", TINY_PRESET, *sets(tiny_settings(root))], 1, threads, root)
    cfg = config.load(TINY_PRESET, tiny_settings(root))
    model, stretch = load_model(cfg, "regular", cfg.train.seeds[0], torch.device("cpu"))
    with h5py.File(output_path(cfg), "r") as f:
        rows = np.flatnonzero(f["split"][...] == 2)
        images, labels = f["y10"][rows], f["label"][rows].astype(np.int64)
    with torch.inference_mode():
        pred = model(stretch(torch.from_numpy(images)))[1].argmax(1).numpy()
    keep = pred == labels
    return cfg, model, stretch, images[keep], labels[keep]
