"""``hpcmorph bench analyze``: the analyze stage's figures beside baselines measured in the same run.

On the benchmarks' freshly generated and trained tiny model (:func:`common.tiny_model`) and a small
attack on it (its inputs for analyze); (1) and (2) run in a one-rank worker process, as the stage does:

1. latent-embedding throughput in the stage's code path (``latents.sharded`` over fixed chunks of
   ``analyze.batch_size`` images, each through ``latents.embed``: asinh stretch of the raw images,
   forward pass, latents and classes back to NumPy; ``latents.concat``) beside bare batched
   inference of the same model on the same images, already stretched (``torch.no_grad``, same
   batch size), and their ratio (aim >= 0.9). The two alternate and each keeps its best pass;
2. the church window: the stage's batched grid classification (``church.window``: the whole
   221 x 221 grid of 256-d latents through the linear head as one float64 matrix product) beside a
   point-by-point loop over the head, in NumPy (the same float64 arithmetic, one point at a time)
   and through the model's ``nn.Linear`` head: the loops are timed on a subsample of grid rows and
   scaled to the whole grid, and their classes are checked against the grid's;
3. the stage end to end (``hpcmorph analyze``: inputs, latents of the test and attacked images,
   accuracy against exposure, Table 2, church window, isomap, the output files; figures off, as the
   other benchmarks' stages) under ``mpirun -n 1`` and ``-n 2``, one thread per rank: wall time
   (timed inside the process, between barriers: interpreter start-up and imports excluded; best of
   three runs each) and the scaling efficiency.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import TINY_PRESET, per_rank_count, sets, stage, tiny_model, tiny_settings, worker

# A small attack: analyze only needs an attack output to read (its success does not matter here).
ATTACK = ["attack.n_images=8", "attack.only_correct=false", "attack.population=20", "attack.generations=2",
          "attack.images_per_batch=8"]
# The stage run of (3): small chunks, so the 25 test images of the tiny run make several chunks for
# the ranks to share (chunking changes no number: analyze.batch_size is neutral).
STAGE_BATCH = 4
ANALYZE = ["analyze.figures=false", f"analyze.batch_size={STAGE_BATCH}"]
# (1): the test images tiled to 512, in the stage's default chunks of 256; 2 passes of each side.
EMBED = {"images": 512, "batch": 256, "repeats": 2}
CHURCH_ROW_STEP = 10                       # (2): the loops classify every 10th row of the grid
STAGE_RUNS = 3                             # (3): runs of each rank count (alternating); the best counts
# Modules the stage imports inside functions (torchvision alone takes ~2 s to import here).
_LAZY_IMPORTS = ("hpcmorph.train.stage", "hpcmorph.train.model", "sklearn.manifold")


def _settings(root: Path) -> list[str]:
    return tiny_settings(root, [*ATTACK, *ANALYZE])


def embedding(ctx, model, stretch, images: np.ndarray, batch: int) -> dict:
    """Images per second through the stage's chunked embedding vs bare batched inference."""
    import torch

    from ..analyze import latents

    device = torch.device("cpu")
    n = len(images)
    bounds = latents.chunks(n, batch)
    empty = {"z": np.zeros((0, model.latent_dim), np.float32), "pred": np.zeros(0, np.int8)}

    def stage_pass() -> dict:
        def work(c: int) -> dict:
            lo, hi = bounds[c]
            z, pred = latents.embed(model, images[lo:hi], device, stretch)
            return {"z": z, "pred": pred}

        return latents.concat(latents.sharded(ctx, len(bounds), work), empty)

    x = stretch(torch.from_numpy(images)).float()
    model.eval()

    def bare_pass() -> None:
        with torch.no_grad():
            for lo, hi in bounds:
                model(x[lo:hi])

    latents.embed(model, images[:batch], device, stretch)  # warm-up (one chunk each)
    with torch.no_grad():
        model(x[:batch])
    stage_s, bare_s = [], []
    # Alternate the two and keep each one's best: other work on the machine then slows both alike.
    for _ in range(EMBED["repeats"]):
        t0 = time.perf_counter()
        out = stage_pass()
        stage_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_pass()
        bare_s.append(time.perf_counter() - t0)
    with torch.no_grad():
        ref = model(x[:batch])[0].numpy()
    stage_rate, bare_rate = n / min(stage_s), n / min(bare_s)
    return {"images": n, "batch": batch, "stage_images_per_s": stage_rate, "bare_images_per_s": bare_rate,
            "ratio_stage_to_bare": stage_rate / bare_rate,
            "max_abs_latent_difference": float(np.abs(out["z"][:batch] - ref).max())}


def church_window(cfg, model, stretch) -> dict:
    """The stage's batched church window vs point-by-point loops over the head, on a real triplet:
    the first attacked image's Y10, Y1 and attacked latents."""
    import h5py
    import torch

    from ..analyze import church, latents
    from ..attack.stage import output_path as attack_path
    from ..generate import output_path

    a, device = cfg.analyze, torch.device("cpu")
    with h5py.File(attack_path(cfg), "r") as f:
        row, attacked = int(f["index"][0]), f["attacked"][:1]
    with h5py.File(output_path(cfg), "r") as f:
        y10, y1 = f["y10"][row:row + 1], f["y1"][row:row + 1]
    z0 = latents.embed(model, y10, device, stretch)[0][0]
    z1 = latents.embed(model, y1, device, stretch)[0][0]
    za = latents.embed(model, attacked, device)[0][0]
    w, b = model.head.weight.detach().numpy(), model.head.bias.detach().numpy()

    grid_s = []
    for _ in range(5):
        t0 = time.perf_counter()
        win = church.window(w, b, z0, z1, za, a.church_extent, a.church_step, a.church_orthogonal)
        grid_s.append(time.perf_counter() - t0)
    xs, ys, classes = win["xs"], win["ys"], win["classes"]
    adv, noise = church.directions(z0, z1, za, a.church_orthogonal)
    rows = np.arange(0, len(ys), CHURCH_ROW_STEP)
    w64, b64, z64 = w.astype(np.float64), b.astype(np.float64), z0.astype(np.float64)

    def numpy_loop() -> np.ndarray:
        out = np.empty((len(rows), len(xs)), np.int8)
        for i, r in enumerate(rows):
            for j, x in enumerate(xs):
                z = x * adv + z64 + ys[r] * noise  # the grid's order of additions
                out[i, j] = int(np.argmax(w64 @ z + b64))
        return out

    def torch_loop() -> np.ndarray:
        out = np.empty((len(rows), len(xs)), np.int8)
        with torch.no_grad():
            for i, r in enumerate(rows):
                for j, x in enumerate(xs):
                    z = torch.from_numpy(x * adv + z64 + ys[r] * noise).float()
                    out[i, j] = int(model.head(z).argmax())
        return out

    loops = {}
    for name, fn in (("numpy", numpy_loop), ("torch_head", torch_loop)):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            got = fn()
            best = min(best, time.perf_counter() - t0)
        loops[name] = {"sampled_seconds": best, "seconds_scaled": best * classes.size / got.size,
                       "agreement": float(np.mean(got == classes[rows]))}
    grid = min(grid_s)
    return {"grid": [len(ys), len(xs)], "points": int(classes.size), "latent_dim": int(len(z0)),
            "sampled_points": int(len(rows) * len(xs)), "grid_seconds": grid, "loops": loops,
            **{f"speedup_vs_{k}_loop": v["seconds_scaled"] / grid for k, v in loops.items()}}


def _measure(root: Path) -> dict:
    """(1) and (2), in a one-rank MPI job of their own (the stage's code path takes a communicator)."""
    import h5py
    import torch

    from .. import config, mpi
    from ..generate import output_path
    from ..train.saved import load_model

    ctx = mpi.world()
    cfg = config.load(TINY_PRESET, _settings(root))
    model, stretch = load_model(cfg, "regular", cfg.train.seeds[0], torch.device("cpu"))
    with h5py.File(output_path(cfg), "r") as f:
        images = f["y10"][np.flatnonzero(f["split"][...] == 2)]
    n = EMBED["images"]
    tiled = np.ascontiguousarray(np.concatenate([images] * (1 + n // len(images)))[:n], np.float32)
    return {"embedding": embedding(ctx, model, stretch, tiled, EMBED["batch"]),
            "church": church_window(cfg, model, stretch)}


def _stage_once(root: Path) -> dict:
    """Under mpirun: the analyze stage in-process, its wall time from rank 0."""
    from .. import config, mpi
    from ..analyze import run
    from ..analyze.stage import ATTACK_LATENTS, LATENTS, output_dir

    ctx = mpi.world()
    cfg = config.load(TINY_PRESET, _settings(root))
    for name in _LAZY_IMPORTS:  # out of the timing, as interpreter start-up is
        importlib.import_module(name)
    # force: every run analyses afresh (the previous run's output would be up to date).
    ctx.barrier()
    t0 = time.perf_counter()
    run(cfg, ctx, force=True)
    ctx.barrier()
    if not ctx.is_root:
        return {}
    import h5py

    with h5py.File(output_dir(cfg) / LATENTS, "r") as f, h5py.File(output_dir(cfg) / ATTACK_LATENTS, "r") as g:
        n, m = len(f["index"]), len(g["index"])
    return {"seconds": time.perf_counter() - t0, "ranks": ctx.size, "test_images": n, "attack_rows": m}


def _worker(argv: list[str]) -> None:
    res = {"measure": _measure, "stage": _stage_once}[argv[0]](Path(argv[1]))
    if res:
        print(json.dumps(res))


def bench_analyze(ranks: list[int]) -> dict:
    import torch

    threads = torch.get_num_threads()
    out: dict = {"threads": threads, "cores": os.cpu_count() or 1}
    with tempfile.TemporaryDirectory(prefix="hpcmorph-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cfg, _, _, _, _ = tiny_model(root, threads)
        stage(["attack", "--config", TINY_PRESET, *sets(_settings(root))], 1, threads, root)
        out["prepare_seconds"] = time.perf_counter() - t0
        out["image_size"] = cfg.generate.image_size
        out.update(worker(__name__, ["measure", str(root)], 1, threads, cwd=root))
        counts = sorted(set([1, *ranks]))
        times: dict[int, list[float]] = {k: [] for k in counts}
        for _ in range(STAGE_RUNS):
            for k in counts:
                res = worker(__name__, ["stage", str(root)], k, 1, cwd=root)
                times[k].append(res["seconds"])
                out["stage_test_images"], out["stage_attack_rows"] = res["test_images"], res["attack_rows"]
        for k in counts:
            out[f"stage_seconds_{k}_ranks"] = min(times[k])
            if k > 1:
                out[f"scaling_efficiency_{k}_ranks"] = min(times[1]) / (k * min(times[k]))
    return out


def main(args) -> int:
    show(bench_analyze(args.ranks))
    return 0


def show(res: dict) -> None:
    """Print the table of a ``bench_analyze`` result, then the result as JSON."""
    e, c = res["embedding"], res["church"]
    print(f"analyze benchmark: tiny model ({res['image_size']}x{res['image_size']} px, regular, trained here), "
          f"{res['threads']} threads, {res['cores']} cores (prepare: {res['prepare_seconds']:.0f} s)")
    print(f"  (1) latent embedding, {e['images']} test images (tiled), chunks of {e['batch']}")
    print(f"      bare batched inference        {e['bare_images_per_s']:8.1f} images/s (pre-stretched, no_grad)")
    print(f"      stage (sharded + embed)       {e['stage_images_per_s']:8.1f} images/s (stretch, forward, to NumPy)")
    print(f"      ratio stage / bare            {e['ratio_stage_to_bare']:8.2f}   (aim >= 0.9; latents agree "
          f"to {e['max_abs_latent_difference']:.1e})")
    print(f"  (2) church window, {c['grid'][0]} x {c['grid'][1]} = {c['points']} points, {c['latent_dim']}-d")
    print(f"      stage, one batched product    {c['grid_seconds'] * 1e3:8.1f} ms")
    for name, label in (("numpy", "loop, NumPy per point"), ("torch_head", "loop, torch head per point")):
        lp = c["loops"][name]
        print(f"      {label:29s} {lp['seconds_scaled'] * 1e3:8.1f} ms (timed on {c['sampled_points']} points, "
              f"every {CHURCH_ROW_STEP}th row, scaled; {lp['agreement']:.2%} same classes)   "
              f"speedup {c['speedup_vs_' + name + '_loop']:.1f}x")
    print(f"  (3) `hpcmorph analyze` end to end, {res['stage_test_images']} test images, {res['stage_attack_rows']} "
          f"attack rows, chunks of {STAGE_BATCH}, figures off, 1 thread per rank, best of "
          f"{STAGE_RUNS}")
    for k, value, eff in per_rank_count(res, "stage_seconds_"):
        extra = f"   efficiency {eff:.2f}" if eff is not None else ""
        print(f"      {k} rank(s)                     {value:8.2f} s{extra}")
    print(json.dumps(res))


if __name__ == "__main__" and sys.argv[1:2] == ["_worker"]:
    _worker(sys.argv[2:])
