"""The arithmetic of a stage's forward passes: float32, or bfloat16 / float16 under autocast.

Names, as ``train.precision`` takes them:

- ``fp32``: every operation in float32 (the paper's; on Ampere and later GPUs PyTorch's default
  keeps convolutions in float32 too, TF32 being off for them unless asked).
- ``bf16``: ``torch.autocast`` to bfloat16 for convolutions and matrix products, reductions and
  losses in float32 (autocast's own lists). bfloat16 has float32's range, so no loss scaling.
- ``fp16``: autocast to float16 with a gradient scaler (float16's range is 6e-5 .. 65504: small
  gradients underflow unless the loss is scaled up first and the gradients down after).
- ``auto``: ``bf16`` where the device computes it natively (a CUDA device from Ampere on; a CPU
  with AMX or AVX512-BF16), ``fp16`` on a CUDA device without bfloat16 (Volta, Turing), else
  ``fp32`` (emulated bfloat16 is slower than float32).

The weights, the optimizer and every decision (validation loss, test metrics, an attack's success)
stay in float32: reduced precision is only ever the arithmetic of a forward or backward pass.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (so that bfloat16 is faster than float32 there)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:  # private helpers, present in torch >= 2.1; a torch without them gets float32
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:
        return False


def resolve(precision: str, device: torch.device) -> str:
    """``precision`` as used on ``device``: ``auto`` becomes ``bf16``, ``fp16`` or ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if native_bf16(device):
        return "bf16"
    return "fp16" if device.type == "cuda" else "fp32"


def bf16_training_sound(device: torch.device, arch: str, image_size: int) -> bool:
    """Whether bfloat16 training gets the right weight gradients here. On a CPU, PyTorch 2.14's
    bfloat16 convolution (oneDNN 3.12) returns garbage for the weight gradient of a stride-2 3 x 3
    convolution whose input map is 1 x 1 px: the 8 taps that see only padding, whose gradient is 0,
    come back as whatever the buffer held (up to 4e23, at times inf or NaN, different on every
    call; float32 and float16 give 0). ResNet18's stride-2 blocks see maps ceil(size / 4, / 8, / 16)
    px wide, so images of <= 16 px hit it in layer4; the convnet's convolutions are stride 1."""
    return device.type != "cpu" or arch != "resnet18" or image_size > 16


def autocast(precision: str, device: torch.device):
    """A context in which forward passes run in ``precision`` (resolved); float32 is a no-op."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler of ``precision`` (resolved): active for ``fp16`` only, a pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def channels_last(precision: str) -> bool:
    """Whether inference passes in ``precision`` (resolved) should take channels-last tensors: oneDNN's
    bfloat16 and the tensor cores' reduced-precision convolutions run faster so; float32 keeps the
    default. (Training stays contiguous: Horovod allreduces contiguous tensors only.)"""
    return precision != "fp32"
