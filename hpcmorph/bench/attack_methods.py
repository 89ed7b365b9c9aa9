"""``hpcmorph bench attack``, section (4): the attack methods side by side on the same images.

On the benchmark's tiny model, the first ``METHODS["images"]`` correctly classified test images, all
their targets, for each method (exhaustive, de, sparse-rs, saliency) and each value range (the
data's, [0, 1]): images flipped, the images the exhaustive oracle can flip and how many of those
the method found, median queries per successful attack, queries per second over the whole attack,
and both that rate (attack/bare) and the method's model throughput (queries per second of
forward-pass time: forward/bare) beside bare batched inference of the same model on batches of
``forward_batch`` images, measured in the same run. attack/bare below forward/bare is time spent
outside the model (drawing, ranking, building images); forward/bare below 1 is passes smaller than
``forward_batch`` (a few live attacks left).
"""

from __future__ import annotations

import time

import numpy as np

METHOD_NAMES = ("exhaustive", "de", "sparse-rs", "saliency")
#: The settings of the comparison: the issue's budget (DE 100 x 21 = 2,100 queries, and 2,100 for
#: sparse-rs and saliency), 32 proposals per step as the laptop preset.
METHODS = {"images": 2, "population": 100, "generations": 20, "max_queries": 2100, "proposals": 32,
           "forward_batch": 512}
RANGES = {"data": None, "[0, 1]": [0.0, 1.0]}


def bare_rate(model, base, batch: int) -> float:
    """Images per second of bare batched inference (batches of ``batch`` copies of the images), best of 2."""
    import torch

    from ..onepixel import pixels

    x = base.repeat((batch + len(base) - 1) // len(base), 1, 1, 1)[:batch].contiguous()
    best = float("inf")
    with torch.inference_mode():
        pixels.forward_probs(lambda t: model(t)[1], x)  # warm-up
        for _ in range(2):
            t0 = time.perf_counter()
            pixels.forward_probs(lambda t: model(t)[1], x)
            best = min(best, time.perf_counter() - t0)
    return batch / best


def run_method(cfg, model, stretch, images, labels, method: str, pixel_range) -> dict:
    """One method in one value range on the images: its results per attack and its timings."""
    import torch

    from ..attack import methods
    from ..attack.stage import attack_seed, pixel_range as value_range, targets_of
    from ..onepixel.corners import Box

    a = cfg.updated({"attack.method": method, "attack.pixel_range": pixel_range, "attack.pixels": 1,
                     **{f"attack.{k}": v for k, v in METHODS.items() if k != "images"}}).attack
    which, true, target, seeds = [], [], [], []
    for i, label in enumerate(labels):
        for t in targets_of(int(label), a.mode):
            which += [i]
            true += [int(label)]
            target += [t]
            seeds += [attack_seed(cfg.run.seed, i, t)]
    base = stretch(torch.from_numpy(np.ascontiguousarray(images, np.float32))).float()
    box = Box.of(1, base.shape[1], base.shape[2], base.shape[3], value_range(a, stretch))
    t0 = time.perf_counter()
    results, objective = methods.attack(a, lambda x: model(x)[1], base[torch.tensor(which)], which, true, target,
                                        seeds, box)
    seconds = time.perf_counter() - t0
    success = np.array([r.success for r in results])
    queries = np.array([r.queries for r in results])
    flipped = sorted({which[j] for j in np.flatnonzero(success)})
    return {"budget": methods.budget(a, box), "attacks": len(results), "flipped_images": flipped,
            "successful_attacks": int(success.sum()),
            "median_queries_to_flip": float(np.median(queries[success])) if success.any() else None,
            "seconds": seconds, "model_queries": objective.queries, "forward_seconds": objective.forward_seconds,
            "queries_per_s": objective.queries / seconds,
            "forward_queries_per_s": objective.queries / max(objective.forward_seconds, 1e-9)}


def compare_methods(cfg, model, stretch, images, labels) -> dict:
    """Every method in both value ranges on the same images; the exhaustive search is the oracle."""
    import torch

    n = min(METHODS["images"], len(labels))
    images, labels = images[:n], labels[:n]
    base = stretch(torch.from_numpy(np.ascontiguousarray(images, np.float32))).float()
    out = {"settings": dict(METHODS, images=n), "bare_images_per_s": bare_rate(model, base, METHODS["forward_batch"]),
           "ranges": {}}
    for name, rng in RANGES.items():
        rows = {m: run_method(cfg, model, stretch, images, labels, m, rng) for m in METHOD_NAMES}
        oracle = set(rows["exhaustive"]["flipped_images"])
        for r in rows.values():
            r["flipped"] = len(r["flipped_images"])
            r["oracle_flippable"] = len(oracle)
            r["found_of_oracle"] = len(oracle & set(r.pop("flipped_images")))
            r["ratio_forward_to_bare"] = r["forward_queries_per_s"] / out["bare_images_per_s"]
            r["ratio_attack_to_bare"] = r["queries_per_s"] / out["bare_images_per_s"]
        out["ranges"][name] = rows
    return out


def print_methods(m: dict) -> None:
    s = m["settings"]
    print(f"  (4) methods side by side, k = 1, the same {s['images']} test images x 2 targets: DE population "
          f"{s['population']} x {s['generations'] + 1} generations, sparse-rs and saliency at most "
          f"{s['max_queries']} queries ({s['proposals']} proposals per step), forward passes of up to "
          f"{s['forward_batch']}; bare batched inference {m['bare_images_per_s']:.1f} images/s")
    for name, rows in m["ranges"].items():
        print(f"      values in the {name} range" if name == "data" else f"      values in {name}")
        print("        method       flipped  oracle-found  median q/flip   queries/s  attack/bare  forward/bare"
              "   seconds")
        for method, r in rows.items():
            med = "-" if r["median_queries_to_flip"] is None else f"{r['median_queries_to_flip']:.0f}"
            print(f"        {method:11s} {r['flipped']:4d}/{s['images']:<3d} {r['found_of_oracle']:4d}/"
                  f"{r['oracle_flippable']:<6d} {med:>12s}  {r['queries_per_s']:10.1f}"
                  f"  {r['ratio_attack_to_bare']:10.2f}"
                  f"  {r['ratio_forward_to_bare']:11.2f}"
                  f"  {r['seconds']:8.1f}")
