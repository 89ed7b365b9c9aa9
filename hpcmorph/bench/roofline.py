"""How close a stage runs to what the machine can do: achieved FLOP/s against a measured peak.

The model's FLOPs per image come from ``torch.utils.flop_counter`` (convolutions and matrix
products; a multiply-add counts 2), for a forward pass (attack, analyze) or a training step
(forward and backward, about 3x the forward). The peak is a large square matrix product of the
same dtype on the same device, timed in the same run: what the machine's math units sustain when
nothing else limits them. ``fraction`` = achieved / peak; 1 is the roofline's ceiling, which
convolutions on small images with batch norms and activations between them never reach.
"""

from __future__ import annotations

import contextlib
import time

import torch

from .. import precision

#: The side of the square matrices of the peak measurement, per device type.
PEAK_SIZE = {"cpu": 2048, "cuda": 8192}


def flops_per_image(model: torch.nn.Module, image_size: int, *, training: bool, batch: int = 4,
                    channels: int = 3) -> float:
    """FLOPs of one image through ``model`` (a GalaxyNet): a forward pass, or forward and backward when
    ``training``. Counted on a float32 copy of the input on the model's device."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.randn(batch, channels, image_size, image_size, device=device)
    was_training = model.training
    model.train(training)
    counter = FlopCounterMode(display=False)
    with counter, (contextlib.nullcontext() if training else torch.no_grad()):
        _, logits = model(x)
        if training:
            logits.sum().backward()
    model.train(was_training)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def peak_flops(name: str, device: torch.device, seconds: float = 1.0) -> float:
    """FLOP/s of a square matrix product in precision ``name`` (fp32, tf32, bf16, fp16) on ``device``,
    the best of a few timed rounds of about ``seconds`` in all."""
    n = PEAK_SIZE.get(device.type, 2048)
    dtype = precision.DTYPES.get(name, torch.float32)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    with tf32(name == "tf32", device):
        a @ b  # warm-up: kernel choice, first-touch of the memory
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        once = max(time.perf_counter() - t0, 1e-6)
        reps = max(1, int(seconds / 3 / once))
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            best = min(best, (time.perf_counter() - t0) / reps)
    return 2.0 * n ** 3 / best


def row(name: str, images_per_s: float, flops_image: float, peak: float) -> dict:
    """One roofline row: images/s, achieved FLOP/s, the peak of the same precision and their ratio."""
    achieved = images_per_s * flops_image
    return {"precision": name, "images_per_s": images_per_s, "achieved_flops": achieved, "peak_flops": peak,
            "fraction": achieved / peak if peak else float("nan")}


def format_rows(rows: list[dict], what: str) -> list[str]:
    """The rows as aligned lines of text (GFLOP/s)."""
    out = [f"  {what:<28s} {'images/s':>9s} {'GFLOP/s':>9s} {'peak':>9s} {'of peak':>8s}"]
    for r in rows:
        out.append(f"  {r['precision']:<28s} {r['images_per_s']:9.1f} {r['achieved_flops'] / 1e9:9.1f} "
                   f"{r['peak_flops'] / 1e9:9.1f} {r['fraction']:8.1%}")
    return out


@contextlib.contextmanager
def tf32(on: bool, device: torch.device):
    """A context in which CUDA float32 products and convolutions use TF32 (10-bit mantissa) or not."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
