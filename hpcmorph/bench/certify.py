"""The certifier's screens (:mod:`hpcmorph.attack.certify`) beside whole float32 forward passes.

A certifying scan classifies every corner candidate of an image: 32,768 at the laptop's 64 x 64
px. Its cost is the screen's candidates per second. On a ResNet18 (GalaxyNet) of ``image_size``
px with random weights (the speed does not depend on them), one image and ``candidates`` single-pixel
candidates spread over it at corner values, each screen classifies the same candidates, in batches of
``chunk`` (the certifier's): whole float32 passes (the bare baseline: what the exhaustive search and
the certifier's float32 checks do), float32 windows (:mod:`hpcmorph.attack.local`), and where the
device computes bfloat16 natively (:func:`hpcmorph.precision.native_bf16`) the bfloat16 copy
(:func:`hpcmorph.attack.certify.reduced_copy`) in whole passes and in windows. The screens alternate,
twice, best of each: other work on the machine slows them alike. Each row gives candidates/s, the
ratio to whole float32 passes and the largest logit difference from them.
"""

from __future__ import annotations

import time

import numpy as np
import torch


def _rates(screens: dict, position: np.ndarray, values: torch.Tensor, chunk: int, device) -> tuple[dict, dict]:
    """(best candidates/s, logits) of each screen, alternating, twice."""
    rate = {name: 0.0 for name in screens}
    logits = {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
    for fn in screens.values():  # warm-up: oneDNN and cuDNN pick their kernels per shape and dtype
        fn(position[:chunk], values[:chunk])
    for _ in range(2):
        for name, fn in screens.items():
            sync(device)
            t0 = time.perf_counter()
            out = torch.cat([fn(position[s:s + chunk], values[s:s + chunk]) for s in range(0, len(position), chunk)])
            sync(device)
            rate[name] = max(rate[name], len(position) / (time.perf_counter() - t0))
            logits[name] = out
    return rate, logits


def screens(image_size: int = 64, candidates: int = 4096, chunk: int = 1024, seed: int = 0,
            device: torch.device | None = None) -> dict:
    """Candidates/s of each screen on ``device`` (default the CPU; module docstring)."""
    from .. import precision
    from ..attack import certify, mixed
    from ..train.model import build_model

    device = device or torch.device("cpu")
    model = build_model(seed).eval().to(device)
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, image_size, image_size, generator=g).to(device)
    position = torch.randperm(image_size * image_size, generator=g)[:candidates].numpy()
    position = np.resize(position, candidates)
    values = torch.randint(0, 2, (candidates, 3), generator=g).float().to(device)

    fns = {"float32 whole passes": certify.whole_passes(model)(image),
           "float32 windows": certify.screen_of(model, "float32")(image)}
    if precision.native_bf16(device):
        fns["bfloat16 whole passes"] = certify.whole_passes(mixed.reduced(model, "bf16"))(image)
        fns["bfloat16 windows"] = certify.screen_of(model, "bfloat16")(image)
    rate, logits = _rates(fns, position, values, chunk, device)
    base = "float32 whole passes"
    scale = float(logits[base].abs().max())
    rows = [{"screen": name, "candidates_per_s": rate[name], "ratio": rate[name] / rate[base],
             "max_logit_difference": float((logits[name] - logits[base]).abs().max()), "logit_scale": scale}
            for name in fns]
    return {"image_size": image_size, "candidates": candidates, "chunk": chunk, "device": str(device),
            "threads": torch.get_num_threads(),
            "rows": rows, "scan_seconds": {r["screen"]: image_size ** 2 * 8 / r["candidates_per_s"] for r in rows}}


def format_screens(res: dict) -> list[str]:
    """The rows as aligned lines of text."""
    n = res["image_size"]
    out = [f"      {'screen':<24s} {'cand./s':>9s} {'ratio':>7s} {'scan of ' + str(n * n * 8):>14s} "
           f"{'max |dlogit|':>13s}"]
    for r in res["rows"]:
        out.append(f"      {r['screen']:<24s} {r['candidates_per_s']:9.0f} {r['ratio']:7.2f} "
                   f"{res['scan_seconds'][r['screen']]:12.1f} s {r['max_logit_difference']:13.2e}")
    return out
