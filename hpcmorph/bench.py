"""Benchmarks: each stage's figure beside a bare baseline measured in the same run.

``hpcmorph bench train`` prints the training images per second of the stage (steps only, from
its own metrics) beside a bare PyTorch loop on the same model, batch and data in the same run, the
extra cost of the MMD variant, and 1 vs 2 rank throughput for each backend.

``hpcmorph bench generate`` prints (blocks of 8 galaxies, so the ranks get equal shares)
  1. the stage's galaxies per second on one rank (everything: drawing, Y10/Y1 noise, Gini-M20,
     checkpoint blocks, the final HDF5 file) beside bare GalSim drawing of the same profiles
     (convolve and draw each band, nothing else), and their ratio;
  2. the stage's throughput on 1 and N ranks under mpirun and the scaling efficiency.
Timings exclude interpreter start-up: each measured run is timed inside the process, between
barriers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_SETTINGS = ["run.progress=false", "generate.figures=false"]


def _bare_generate(cfg, n: int) -> float:
    """Seconds to draw ``n`` galaxies' noiseless images with GalSim alone, same profiles and PSFs."""
    from .generate import galaxies
    from .generate.sources import SyntheticSource, _seeds

    src = SyntheticSource(cfg)
    t0 = time.perf_counter()
    for i in range(n):
        rng, seeds = _seeds(cfg.run.seed, i)
        kind = int(rng.choice(3, p=src.fractions))
        galaxy = galaxies.draw(kind, rng, cfg.generate, knot_seed=seeds[6])
        for band, psf in zip(src.observer.bands, src.psfs):
            src.observer.render(galaxy.profile(band), psf)
    return time.perf_counter() - t0


def _worker(argv: list[str]) -> None:
    """Under mpirun: run the generate stage in-process and print its wall time from rank 0."""
    from . import config, mpi
    from .generate import run

    root, n = argv[0], int(argv[1])
    ctx = mpi.world()
    cfg = config.load("laptop", [*BENCH_SETTINGS, f"run.root={root}", f"generate.n_galaxies={n}",
                                 f"run.name=r{ctx.size}", "generate.block_size=8"])
    # Warm GalSim's caches (Sersic tables, FFT sizes) as the bare side is: a long run amortises them.
    _bare_generate(cfg, 4)
    ctx.barrier()
    t0 = time.perf_counter()
    run(cfg, ctx)
    ctx.barrier()
    if ctx.is_root:
        print(json.dumps({"seconds": time.perf_counter() - t0, "ranks": ctx.size}))


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


def per_rank_count(res: dict, prefix: str):
    """(ranks, figure, scaling efficiency or None) of every ``<prefix><ranks>_ranks`` entry of ``res``."""
    for key, value in res.items():
        if key.startswith(prefix) and key.endswith("_ranks") and key[len(prefix):-len("_ranks")].isdigit():
            k = key[len(prefix):-len("_ranks")]
            yield k, value, res.get(f"scaling_efficiency_{k}_ranks")


def _mpirun_stage(root: Path, n: int, ranks: int) -> float:
    out = launch([sys.executable, "-m", "hpcmorph.bench", "_generate_worker", str(root), str(n)], ranks, 1)
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def bench_generate(n: int, ranks: list[int]) -> dict:
    from . import config

    cfg = config.load("laptop", BENCH_SETTINGS)
    out: dict = {"galaxies": n, "image_size": cfg.generate.image_size, "bands": len(cfg.generate.bands)}
    with tempfile.TemporaryDirectory(prefix="hpcmorph-bench-") as tmp:
        _bare_generate(cfg, 4)  # warm GalSim's caches (Sersic tables, FFT plans) for both sides
        bare = _bare_generate(cfg, n)
        times = {k: _mpirun_stage(Path(tmp), n, k) for k in sorted(set([1, *ranks]))}
    out["bare_galsim_gal_per_s"] = n / bare
    out["stage_gal_per_s_per_rank"] = n / times[1]
    out["ratio_stage_to_bare"] = out["stage_gal_per_s_per_rank"] / out["bare_galsim_gal_per_s"]
    for k, seconds in times.items():
        out[f"stage_gal_per_s_{k}_ranks"] = n / seconds
        if k > 1:
            out[f"scaling_efficiency_{k}_ranks"] = times[1] / (k * seconds)
    return out


TRAIN_BENCH = ["generate.image_size=100", "train.epochs=2", "train.patience=5", "train.batch_size=32",
               "train.variants=[regular]", "train.seeds=[0]"]


def _train_settings(root: Path, n: int, extra=()) -> list[str]:
    return [*BENCH_SETTINGS, f"run.root={root}", "run.name=bench", f"generate.n_galaxies={n}", *TRAIN_BENCH, *extra]


def _bare_train(cfg, steps: int) -> float:
    """Images per second of a plain Adam loop on the stage's model, batch and (normalised) data."""
    import h5py
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .generate import output_path
    from .train.model import build_model
    from .train.normalize import AsinhStretch

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


def _stage(root: Path, args: list[str], ranks: int, threads: int) -> str:
    return launch([sys.executable, "-m", "hpcmorph", *args], ranks, threads, cwd=root)


def bench_train(n: int) -> dict:
    import torch

    from . import config

    threads = torch.get_num_threads()
    out: dict = {"threads_per_process": threads}
    with tempfile.TemporaryDirectory(prefix="hpcmorph-bench-") as tmp:
        root = Path(tmp)
        _stage(root, ["generate", "--config", "laptop", *sum((["--set", s] for s in _train_settings(root, n)), [])],
               1, threads)
        cfg = config.load("laptop", _train_settings(root, n))
        metrics_path = root / "bench"

        def stage_rate(extra: list[str], ranks: int, variant: str = "regular") -> float:
            sets = _train_settings(root, n, extra)
            shutil.rmtree(metrics_path / variant, ignore_errors=True)
            _stage(root, ["train", "--config", "laptop", *sum((["--set", s] for s in sets), [])], ranks,
                   max(1, threads // ranks))
            return json.loads((metrics_path / variant / "seed0" / "metrics.json").read_text())["train_images_per_s"]

        steps = max(1, n // 2 // cfg.train.batch_size)
        _bare_train(cfg, 1)  # warm-up
        out["bare_images_per_s"] = _bare_train(cfg, steps)
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
    if args.stage == "attack":
        from .attack.bench import main as attack_main

        return attack_main(args)
    if args.stage == "analyze":
        from .analyze.bench import main as analyze_main

        return analyze_main(args)
    if args.stage == "train":
        res = bench_train(args.galaxies * 2)
        print(f"train benchmark: ResNet18, 100x100 px, batch 32, {res['threads_per_process']} threads")
        print(f"  bare PyTorch loop             {res['bare_images_per_s']:8.1f} images/s")
        print(f"  train stage (regular, 1 rank) {res['stage_images_per_s']:8.1f} images/s")
        print(f"  ratio stage / bare            {res['ratio_stage_to_bare']:8.2f}   (aim >= 0.9)")
        print(f"  train stage (mmd, 1 rank)     {res['stage_mmd_images_per_s']:8.1f} labelled images/s "
              f"(MMD costs {res['mmd_cost']:.2f}x: it also runs the Y1 batch)")
        for backend in ("ddp", "horovod"):
            print(f"  {backend:8s} 2 ranks              {res[backend + '_2_ranks_images_per_s']:8.1f} images/s "
                  f"(1 thread per rank)")
        print(json.dumps(res))
    if args.stage == "generate":
        res = bench_generate(args.galaxies, args.ranks)
        print(f"generate benchmark: {res['galaxies']} galaxies, {res['bands']} bands, "
              f"{res['image_size']}x{res['image_size']} px (laptop preset)")
        print(f"  bare GalSim drawing           {res['bare_galsim_gal_per_s']:8.1f} galaxies/s")
        print(f"  generate stage, 1 rank        {res['stage_gal_per_s_per_rank']:8.1f} galaxies/s per rank")
        print(f"  ratio stage / bare            {res['ratio_stage_to_bare']:8.2f}   (aim >= 0.85)")
        for k, value, eff in per_rank_count(res, "stage_gal_per_s_"):
            extra = f"   efficiency {eff:.2f} (aim >= 0.8)" if eff is not None else ""
            print(f"  stage on {k} rank(s)           {value:8.1f} galaxies/s{extra}")
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_generate_worker":
        _worker(sys.argv[2:])
