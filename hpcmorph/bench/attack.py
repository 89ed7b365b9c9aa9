"""``hpcmorph bench attack``: the attack stage's figures beside baselines measured in the same run.

On the benchmarks' freshly generated and trained tiny model (:func:`common.tiny_model`):

1. model throughput inside the attack (candidate images classified per second over the whole DE
   loop: draws, mutation, building the images, the forward passes) beside bare batched inference
   of the same model on batches of the same size, and their ratio (aim >= 0.85);
2. the same targeted one-pixel attacks, same budget, same images, by this stage's batched DE and by
   ``scipy.optimize.differential_evolution(vectorized=True)`` (DE/rand/1, F = 0.5, no crossover,
   random init; each attack stopped the generation it flips): success rate, median queries of a
   successful attack, queries spent per flip, wall time; on the model's test images and on a toy
   model with a known answer (64 attacks in a second or two: rates with some weight);
3. the stage end to end (``hpcmorph attack``: loading, choosing images, attacking, writing) under
   ``mpirun -n 1`` and ``-n 2``, one thread per rank: images attacked per second and the scaling
   efficiency. Timed inside the process (interpreter start-up excluded), between barriers;
4. the attack methods side by side in both value ranges (:mod:`.attack_methods`), printed before (3);
5. the roofline per precision (float32, and ``attack.precision`` auto where it is not float32): bare
   batched inference and the laptop preset's saliency search (:data:`ROOFLINE`) in that precision,
   candidates per second (float32 re-classifications included) and the achieved FLOP/s (the model's
   forward FLOPs per image x images/s) against the peak of the same precision measured in the same
   run (:mod:`.roofline`); the two precisions alternate, twice, best of each, and the search's
   successes are set side by side;
6. the certifier's screens at the laptop's 64 x 64 px (:mod:`.certify`): candidates/s of float32 and
   bfloat16 windows and bfloat16 whole passes beside whole float32 passes, and what a scan costs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .attack_methods import compare_methods, print_methods
from .certify import format_screens, screens
from .roofline import format_rows
from .common import TINY_PRESET, per_rank_count, tiny_model, tiny_settings, worker

THROUGHPUT = {"images": 4, "population": 128, "generations": 1}    # 4 x 2 targets x 128 = 1024 per pass
COMPARE = {"images": 6, "population": 40, "generations": 10,        # scipy: popsize 8 x 5 genes = 40
           "toy_attacks": 64}
#: (5): the laptop preset's search (saliency, 200 queries, 32 ranked, radius 2, 32 proposals per step)
#: on every correctly classified test image, both targets, in passes of up to 1024 candidates.
ROOFLINE = {"method": "saliency", "max_queries": 200, "saliency_top": 32, "saliency_radius": 2, "proposals": 32,
            "forward_batch": 1024}
# (3): every test image, right or wrong (more images than the model gets right), in blocks of one image.
STAGE = {"n_images": 8, "only_correct": False, "population": 40, "generations": 10, "images_per_batch": 1}


def _tasks(labels: np.ndarray, n: int):
    """(image index, true, target) of the targeted attacks on the first n images."""
    out = [(i, int(labels[i]), t) for i in range(min(n, len(labels))) for t in range(3) if t != labels[i]]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def throughput(model, stretch, images, labels) -> dict:
    """Candidates per second inside the DE loop vs bare inference of batches of the same size."""
    import torch

    from ..attack import evolution
    from ..onepixel import pixels

    n = THROUGHPUT["images"]
    images = np.concatenate([images] * (1 + n // max(len(images), 1)))[:n]
    labels = np.concatenate([labels] * (1 + n // max(len(labels), 1)))[:n]
    which, true, target = _tasks(labels, n)
    base = stretch(torch.from_numpy(images)).float()[which]
    p, g = THROUGHPUT["population"], THROUGHPUT["generations"]
    per_pass = len(which) * p
    # threshold 1: never reached, so every attack runs the full budget and the work is fixed.
    settings = evolution.Settings(p, g, threshold=1.0)
    lo, hi, pos = pixels.bounds(1, base.shape[1], base.shape[2], base.shape[3], (0.0, 1.0))
    seeds = [np.random.SeedSequence([0, i, t]) for i, t in zip(which, target)]
    batch = base.repeat_interleave(p, 0)[:per_pass].contiguous()
    attack_s, bare_s, forward_s = [], [], []
    with torch.inference_mode():
        pixels.forward_probs(lambda x: model(x)[1], batch)  # warm-up
        # Alternate the two, twice, and keep each one's best: other work on the machine then
        # slows both alike instead of whichever ran second.
        for _ in range(2):
            obj = pixels.PixelObjective(lambda x: model(x)[1], base, 1, forward_batch=per_pass)
            t0 = time.perf_counter()
            evolution.evolve(obj, lo, hi, true, target, seeds, settings, resample=pos)
            attack_s.append(time.perf_counter() - t0)
            forward_s.append(obj.forward_seconds)
            t0 = time.perf_counter()
            for _ in range(g + 1):
                pixels.forward_probs(lambda x: model(x)[1], batch)
            bare_s.append(time.perf_counter() - t0)
    best = int(np.argmin(attack_s))
    attack_rate, bare_rate = obj.queries / attack_s[best], per_pass * (g + 1) / min(bare_s)
    return {"batch": per_pass, "queries": obj.queries, "attack_queries_per_s": attack_rate,
            "bare_images_per_s": bare_rate, "ratio_attack_to_bare": attack_rate / bare_rate,
            "model_share_of_attack_time": forward_s[best] / attack_s[best]}


class _Flipped(Exception):
    pass


class Needle:
    """A toy "model" whose one-pixel answer is known: class 1 wins iff band 1 of pixel (x, y) =
    (7, 3) of a 24 x 24 image is set above ~0.8 (a Gaussian of 0.7 px around it gives DE a slope).
    At a budget of 440 queries about half the attacks find it: a rate that can tell two DEs apart."""

    size = 24

    def __init__(self):
        import torch

        yy, xx = np.mgrid[:self.size, :self.size]
        self.w = torch.tensor(np.exp(-((xx - 7) ** 2 + (yy - 3) ** 2) / (2 * 0.7 ** 2)), dtype=torch.float32)

    def __call__(self, x):
        import torch

        l1 = 20 * (((x[:, 1] - 0.5) * self.w).sum((1, 2)) - 0.3)
        return torch.stack([torch.zeros_like(l1), l1, torch.full_like(l1, -10.0)], 1)


def _compare(logits_fn, base, true, target, seeds, settings) -> dict:
    """The attacks on images ``base`` by this stage's batched DE and by scipy's vectorised DE."""
    import torch
    from scipy.optimize import differential_evolution

    from ..attack import evolution
    from ..onepixel import pixels

    c, h, w = base.shape[1:]
    lo, hi, pos = pixels.bounds(1, c, h, w, (0.0, 1.0))
    with torch.inference_mode():
        t0 = time.perf_counter()
        obj = pixels.PixelObjective(logits_fn, base, 1)
        ours = evolution.evolve(obj, lo, hi, true, target, seeds, settings, resample=pos)
        ours_s = time.perf_counter() - t0

        theirs = []
        t0 = time.perf_counter()
        for k in range(len(base)):
            one = pixels.PixelObjective(logits_fn, base[k:k + 1], 1)
            state = {"success": False}

            def fitness(x, k=k, one=one, state=state):
                probs = one(torch.zeros(1, dtype=torch.long), torch.from_numpy(np.ascontiguousarray(x.T))[None])[0]
                if bool((probs[:, target[k]] > settings.threshold).any()):
                    state["success"] = True
                    raise _Flipped  # stop the generation it flips, as the stage does
                return (1.0 - probs[:, target[k]]).numpy()

            try:
                differential_evolution(fitness, list(zip(lo, hi)), strategy="rand1bin", maxiter=settings.generations,
                                       popsize=settings.population // len(lo), mutation=settings.mutation,
                                       recombination=settings.crossover, init="random", tol=0.0, atol=0.0,
                                       polish=False, vectorized=True, updating="deferred",
                                       rng=np.random.default_rng(seeds[k]))
            except _Flipped:
                pass
            theirs.append((state["success"], one.queries))
        scipy_s = time.perf_counter() - t0

    def stats(success, queries, seconds):
        success, queries = np.asarray(success), np.asarray(queries)
        return {"attacks": len(success), "success_rate": float(success.mean()),
                "median_queries_to_flip": float(np.median(queries[success])) if success.any() else float("nan"),
                "queries_per_flip": float(queries.sum() / success.sum()) if success.any() else float("nan"),
                "queries": int(queries.sum()), "seconds": seconds}

    return {"stage": stats([r.success for r in ours], [r.queries for r in ours], ours_s),
            "scipy": stats([s for s, _ in theirs], [q for _, q in theirs], scipy_s)}


def compare_scipy(model, stretch, images, labels) -> dict:
    """Same attacks, same budget, by this stage's DE and scipy's: on the model's test images, and on
    the toy ``Needle`` (many attacks in a second, so the success rates carry some weight)."""
    import torch

    from ..attack import evolution

    p, g = COMPARE["population"], COMPARE["generations"]
    settings = evolution.Settings(p, g, mutation=0.5, crossover=1.0, threshold=0.5)
    which, true, target = _tasks(labels, COMPARE["images"])
    base = stretch(torch.from_numpy(images)).float()[which]
    seeds = [np.random.SeedSequence([0, i, t]) for i, t in zip(which, target)]
    out = {"population": p, "generations": g, "images": len(set(which)),
           "model": _compare(lambda x: model(x)[1], base, true, target, seeds, settings)}
    n = COMPARE["toy_attacks"]
    noise = torch.randn(n, 3, Needle.size, Needle.size, generator=torch.Generator().manual_seed(0))
    toy = (0.5 + 0.02 * noise).float()
    out["toy"] = _compare(Needle(), toy, [0] * n, [1] * n, [np.random.SeedSequence([1, i]) for i in range(n)],
                          settings)
    return out


def _reduced_attack(cfg, model, base, which, true, target, seeds, box, reduced_fn) -> tuple[list, float, int]:
    """(results, seconds, model queries) of the :data:`ROOFLINE` search, in ``reduced_fn``'s precision
    (None: float32)."""
    import torch

    from ..attack import methods

    a = cfg.updated({f"attack.{k}": v for k, v in ROOFLINE.items()}).attack
    t0 = time.perf_counter()
    with torch.inference_mode():
        results, objective = methods.attack(a, lambda x: model(x)[1], base, which, true, target, seeds, box,
                                            reduced_fn)
    return results, time.perf_counter() - t0, objective.queries


def precision_roofline(cfg, model, stretch, images, labels) -> dict:
    """Per precision (fp32, auto's): bare inference and the search's candidates/s against the peak (module
    docstring, 5.)."""
    import torch

    from ..attack import mixed
    from ..attack.stage import attack_seed, pixel_range
    from ..onepixel import pixels
    from ..onepixel.corners import Box
    from . import roofline as rl
    from .train import precisions

    cpu = torch.device("cpu")
    which, true, target = _tasks(labels, len(labels))
    seeds = [attack_seed(cfg.run.seed, i, t) for i, t in zip(which, target)]
    base = stretch(torch.from_numpy(np.ascontiguousarray(images, np.float32))).float()[which]
    a = cfg.updated({f"attack.{k}": v for k, v in ROOFLINE.items()}).attack
    box = Box.of(1, base.shape[1], base.shape[2], base.shape[3], pixel_range(a, stretch))
    flops = rl.flops_per_image(model, int(base.shape[-1]), training=False)
    names = precisions()
    reduced = {p: mixed.reduced(model, p) for p in names}
    fns = {p: reduced[p] or (lambda x: model(x)[1]) for p in names}
    batch = base.repeat((ROOFLINE["forward_batch"] + len(base) - 1) // len(base), 1, 1, 1)[:ROOFLINE["forward_batch"]]
    bare = {p: [] for p in names}
    search = {p: [] for p in names}
    results = {}
    with torch.inference_mode():
        for p in names:
            pixels.forward_logits(fns[p], batch)  # warm-up: oneDNN picks its kernels for this precision
    # Alternate the precisions, twice, best of each: other work on the machine slows both alike.
    for _ in range(2):
        for p in names:
            with torch.inference_mode():
                t0 = time.perf_counter()
                pixels.forward_logits(fns[p], batch)
                bare[p].append(len(batch) / (time.perf_counter() - t0))
            res, seconds, queries = _reduced_attack(cfg, model, base, which, true, target, seeds, box, reduced[p])
            search[p].append(queries / seconds)
            results[p] = res
    out = {"attacks": len(which), "images": len(set(which)), "flops_per_image": flops, "precisions": names,
           "rows": []}
    for p in names:
        peak = rl.peak_flops(p, cpu)
        out["rows"].append(rl.row(f"{p} bare inference", max(bare[p]), flops, peak))
        out["rows"].append(rl.row(f"{p} attack (saliency)", max(search[p]), flops, peak))
        out[f"candidates_per_s_{p}"] = max(search[p])
        out[f"successes_{p}"] = int(sum(r.success for r in results[p]))
    auto = names[-1]
    out["auto_precision"] = auto
    out["ratio_auto_to_fp32"] = out[f"candidates_per_s_{auto}"] / out["candidates_per_s_fp32"]
    out["same_successes"] = [r.success for r in results["fp32"]] == [r.success for r in results[auto]]
    return out


def _worker(argv: list[str]) -> None:
    """Under mpirun: run the attack stage in-process and print its wall time from rank 0."""
    from .. import config, mpi
    from ..attack import output_path, run

    root = argv[0]
    ctx = mpi.world()
    cfg = config.load(TINY_PRESET, tiny_settings(Path(root), [f"attack.{k}={v}" for k, v in STAGE.items()]))
    # force: every rank count attacks afresh (the previous count's output would be up to date).
    ctx.barrier()
    t0 = time.perf_counter()
    run(cfg, ctx, force=True)
    ctx.barrier()
    if ctx.is_root:
        import h5py

        with h5py.File(output_path(cfg), "r") as f:
            n = len(np.unique(f["index"][...]))
        print(json.dumps({"seconds": time.perf_counter() - t0, "ranks": ctx.size, "images": n}))


def bench_attack(ranks: list[int]) -> dict:
    import torch

    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    out: dict = {"threads": threads, "cores": cores}
    with tempfile.TemporaryDirectory(prefix="hpcmorph-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        cfg, model, stretch, images, labels = tiny_model(root, threads)
        out["prepare_seconds"] = time.perf_counter() - t0
        out["correct_test_images"] = len(labels)
        out["image_size"] = int(images.shape[-1])
        out["throughput"] = throughput(model, stretch, images, labels)
        out["compare"] = compare_scipy(model, stretch, images, labels)
        out["methods"] = compare_methods(cfg, model, stretch, images, labels)
        out["roofline"] = precision_roofline(cfg, model, stretch, images, labels)
        out["certify"] = screens()
        stage_times = {}
        for k in sorted(set([1, *ranks])):
            # One thread per rank: the 1-rank run then uses one core, and the efficiency is per core.
            res = worker(__name__, [str(root)], k, 1, cwd=root)
            stage_times[k] = res["seconds"]
            out[f"stage_images_per_s_{k}_ranks"] = res["images"] / res["seconds"]
            out["stage_images"] = res["images"]
        for k, s in stage_times.items():
            if k > 1:
                out[f"scaling_efficiency_{k}_ranks"] = stage_times[1] / (k * s)
    return out


def main(args) -> int:
    res = bench_attack(args.ranks)
    t, c = res["throughput"], res["compare"]
    print(f"attack benchmark: tiny model ({res['image_size']}x{res['image_size']} px, regular, trained here), "
          f"{res['threads']} threads, {res['correct_test_images']} correctly classified test images")
    print(f"  (1) model throughput, batches of {t['batch']} candidates ({t['queries']} queries)")
    print(f"      bare batched inference        {t['bare_images_per_s']:8.1f} images/s")
    print(f"      inside the attack (DE loop)   {t['attack_queries_per_s']:8.1f} candidates/s "
          f"({t['model_share_of_attack_time']:.0%} of the loop in the model)")
    print(f"      ratio attack / bare           {t['ratio_attack_to_bare']:8.2f}   (aim >= 0.85)")
    print(f"  (2) targeted one-pixel attacks, population {c['population']}, {c['generations']} generations "
          f"(budget {c['population'] * (c['generations'] + 1)} queries per attack), same attacks, same seeds")
    for what, title in (("model", f"{c['images']} test images x 2 targets ({c['model']['stage']['attacks']} attacks)"),
                        ("toy", f"toy 'needle' model, {c['toy']['stage']['attacks']} attacks with a known answer")):
        print(f"      {title}")
        for name in ("stage", "scipy"):
            s = c[what][name]
            label = "this stage (batched DE)" if name == "stage" else "scipy DE (vectorized=True)"
            print(f"        {label:28s} success {s['success_rate']:5.0%}, median queries to flip "
                  f"{s['median_queries_to_flip']:6.0f}, queries per flip {s['queries_per_flip']:7.0f}, "
                  f"{s['seconds']:6.1f} s")
    print_methods(res["methods"])
    print(f"  (3) the stage end to end, {res['stage_images']} test images x 2 targets, population "
          f"{STAGE['population']}, {STAGE['generations']} generations, 1 thread per rank")
    for k, value, eff in per_rank_count(res, "stage_images_per_s_"):
        extra = f"   efficiency {eff:.2f}" if eff is not None else ""
        print(f"      {k} rank(s)                     {value:8.3f} images/s{extra}")
    r = res["roofline"]
    print(f"  (5) roofline per precision: {r['attacks']} attacks ({r['images']} test images x 2 targets), the laptop "
          f"preset's saliency search; {r['flops_per_image'] / 1e6:.0f} MFLOP per image (forward)")
    print("\n".join(format_rows(r["rows"], "precision, what")))
    print(f"      search in {r['auto_precision']}: {r['ratio_auto_to_fp32']:.2f}x the float32 candidates/s "
          f"(aim >= 1.3); successes {r['successes_' + r['auto_precision']]} against float32's "
          f"{r['successes_fp32']}, {'the same attacks' if r['same_successes'] else 'not the same attacks'}")
    sc = res["certify"]
    print(f"  (6) the certifier's screens: a {sc['image_size']} x {sc['image_size']} px ResNet18, {sc['candidates']} "
          f"candidates in passes of {sc['chunk']}, ratio to whole float32 passes; a scan is every corner candidate")
    print("\n".join(format_screens(sc)))
    print(json.dumps(res))
    return 0


if __name__ == "__main__" and sys.argv[1:2] == ["_worker"]:
    _worker(sys.argv[2:])
