"""``hpcmorph bench generate``: (blocks of 8 galaxies, so the ranks get equal shares)

1. the stage's galaxies per second on one rank (everything: drawing, Y10/Y1 noise, Gini-M20,
   checkpoint blocks, the final HDF5 file) beside bare GalSim drawing of the same profiles
   (convolve and draw each band, nothing else), and their ratio;
2. the stage's throughput on 1 and N ranks under mpirun and the scaling efficiency.

Timings exclude interpreter start-up: each measured run is timed inside the process, between
barriers.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from .common import QUIET, per_rank_count, worker

PRESET = "laptop"
BLOCK = 8  # galaxies per checkpoint block


def bare_generate(cfg, n: int) -> float:
    """Seconds to draw ``n`` galaxies' noiseless images with GalSim alone, same profiles and PSFs."""
    from ..generate import galaxies
    from ..generate.sources import SyntheticSource, _seeds

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
    from .. import config, mpi
    from ..generate import run

    root, n = argv[0], int(argv[1])
    ctx = mpi.world()
    cfg = config.load(PRESET, [*QUIET, f"run.root={root}", f"generate.n_galaxies={n}", f"run.name=r{ctx.size}",
                               f"generate.block_size={BLOCK}"])
    # Warm GalSim's caches (Sersic tables, FFT sizes) as the bare side is: a long run amortises them.
    bare_generate(cfg, 4)
    ctx.barrier()
    t0 = time.perf_counter()
    run(cfg, ctx)
    ctx.barrier()
    if ctx.is_root:
        print(json.dumps({"seconds": time.perf_counter() - t0, "ranks": ctx.size}))


def bench_generate(n: int, ranks: list[int]) -> dict:
    from .. import config

    cfg = config.load(PRESET, QUIET)
    out: dict = {"galaxies": n, "image_size": cfg.generate.image_size, "bands": len(cfg.generate.bands),
                 "preset": PRESET, "block": BLOCK}
    with tempfile.TemporaryDirectory(prefix="hpcmorph-bench-") as tmp:
        bare_generate(cfg, 4)  # warm GalSim's caches (Sersic tables, FFT plans) for both sides
        bare = bare_generate(cfg, n)
        times = {k: worker(__name__, [tmp, str(n)], k, 1)["seconds"] for k in sorted(set([1, *ranks]))}
    out["bare_galsim_gal_per_s"] = n / bare
    out["stage_gal_per_s_per_rank"] = n / times[1]
    out["ratio_stage_to_bare"] = out["stage_gal_per_s_per_rank"] / out["bare_galsim_gal_per_s"]
    for k, seconds in times.items():
        out[f"stage_gal_per_s_{k}_ranks"] = n / seconds
        if k > 1:
            out[f"scaling_efficiency_{k}_ranks"] = times[1] / (k * seconds)
    return out


def main(args) -> int:
    res = bench_generate(args.galaxies, args.ranks)
    print(f"generate benchmark: {res['galaxies']} galaxies, {res['bands']} bands, "
          f"{res['image_size']}x{res['image_size']} px ({res['preset']} preset), blocks of {res['block']}")
    print(f"  bare GalSim drawing           {res['bare_galsim_gal_per_s']:8.1f} galaxies/s")
    print(f"  generate stage, 1 rank        {res['stage_gal_per_s_per_rank']:8.1f} galaxies/s per rank")
    print(f"  ratio stage / bare            {res['ratio_stage_to_bare']:8.2f}   (aim >= 0.85)")
    for k, value, eff in per_rank_count(res, "stage_gal_per_s_"):
        extra = f"   efficiency {eff:.2f} (aim >= 0.8)" if eff is not None else ""
        print(f"  stage on {k} rank(s)           {value:8.1f} galaxies/s{extra}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["_worker"]:
    _worker(sys.argv[2:])
