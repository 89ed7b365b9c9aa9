"""Benchmarks: each stage's figure beside a bare baseline measured in the same run.

``hpcmorph bench generate`` prints
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
                                 f"run.name=r{ctx.size}"])
    ctx.barrier()
    t0 = time.perf_counter()
    run(cfg, ctx)
    ctx.barrier()
    if ctx.is_root:
        print(json.dumps({"seconds": time.perf_counter() - t0, "ranks": ctx.size}))


def _mpirun_stage(root: Path, n: int, ranks: int) -> float:
    mpirun = shutil.which("mpirun") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    cmd = [sys.executable, "-m", "hpcmorph.bench", "_generate_worker", str(root), str(n)]
    if ranks > 1:
        cmd = [mpirun, "-n", str(ranks), *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark run on {ranks} ranks failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["seconds"]


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


def main(args) -> int:
    if args.stage == "generate":
        res = bench_generate(args.galaxies, args.ranks)
        print(f"generate benchmark: {res['galaxies']} galaxies, {res['bands']} bands, "
              f"{res['image_size']}x{res['image_size']} px (laptop preset)")
        print(f"  bare GalSim drawing           {res['bare_galsim_gal_per_s']:8.1f} galaxies/s")
        print(f"  generate stage, 1 rank        {res['stage_gal_per_s_per_rank']:8.1f} galaxies/s per rank")
        print(f"  ratio stage / bare            {res['ratio_stage_to_bare']:8.2f}   (aim >= 0.85)")
        for key, value in res.items():
            if key.startswith("stage_gal_per_s_") and key.endswith("_ranks"):
                k = key.split("_")[-2]
                eff = res.get(f"scaling_efficiency_{k}_ranks")
                extra = f"   efficiency {eff:.2f} (aim >= 0.8)" if eff is not None else ""
                print(f"  stage on {k} rank(s)           {value:8.1f} galaxies/s{extra}")
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_generate_worker":
        _worker(sys.argv[2:])
