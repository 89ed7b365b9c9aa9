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


def step_rates(name: str, device: torch.device, image_size: int, train_batch: int, infer_batch: int,
               seconds: float = 2.0) -> dict:
    """One GalaxyNet's training steps and inference passes per second in precision ``name`` (fp32, tf32,
    bf16, fp16) on ``device`` as the stages run them (autocast, float32 losses, a loss scaler for fp16;
    inference channels-last where :func:`hpcmorph.precision.channels_last`), each beside its roofline.
    Random images: the speed does not depend on the data."""
    import torch.nn.functional as F

    from ..train.model import build_model

    arithmetic = "fp32" if name == "tf32" else name
    model = build_model(0).to(device)
    flops_train = flops_per_image(model, image_size, training=True)
    flops_infer = flops_per_image(model, image_size, training=False)
    x = torch.randn(train_batch, 3, image_size, image_size, device=device)
    y = torch.arange(train_batch, device=device) % 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = precision.grad_scaler(arithmetic, device)

    def train_step():
        with precision.autocast(arithmetic, device):
            _, logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    frozen = build_model(0).to(device).eval()
    xi = torch.randn(infer_batch, 3, image_size, image_size, device=device)
    if precision.channels_last(arithmetic):
        frozen, xi = frozen.to(memory_format=torch.channels_last), xi.contiguous(memory_format=torch.channels_last)

    def infer():
        with torch.no_grad(), precision.autocast(arithmetic, device):
            frozen(xi)

    with tf32(name == "tf32", device):
        model.train()
        train_s = _per_call(train_step, seconds, device)
        infer_s = _per_call(infer, seconds, device)
        peak = peak_flops(name, device, seconds=seconds / 2)
    return {"train": row(f"{name} train", train_batch / train_s, flops_train, peak),
            "infer": row(f"{name} inference", infer_batch / infer_s, flops_infer, peak),
            "flops_per_image": {"train": flops_train, "infer": flops_infer}}


def _per_call(fn, seconds: float, device: torch.device) -> float:
    """Seconds per call of ``fn``, timed as ``hpcmorph plan --calibrate`` times its figures, after one more
    warm-up call (the first chooses oneDNN's or cuDNN's kernels)."""
    from ..calibrate import timed

    fn()
    spent, calls = timed(fn, seconds, lambda: _sync(device), min_reps=3)
    return spent / calls
