"""Single-pixel candidates through a ResNet, recomputing only what the pixel can reach.

A one-pixel change of an H x W image reaches few activations of a ResNet's first layers: through the
stem (7x7 stride-2 convolution, batch norm, ReLU, 3x3 stride-2 max pool) it changes at most a 3 x 3
window of the H/4 x W/4 map, and each 3x3 convolution of layer1 widens the window by one pixel on
every side (5, 7, 9, 11). :class:`Local` computes an image's own activations once, and for each
candidate only those windows, on patches cut from the image's own maps with the candidate's window
pasted in; layer2 onwards, where the window covers the map, run whole. On a 64 x 64 ResNet18 the
stem and layer1 are about 60 % of a forward pass's time on a CPU; the windows are about a tenth of
them.

The arithmetic is the model's own, in its dtype (float32, or a reduced-precision copy with its batch
norms folded into the convolutions: :func:`.certify.reduced_copy`), in other batches and shapes, so
the logits agree with a whole forward pass of the same model to rounding, not bit for bit: the
certifier (:mod:`.certify`) uses it as a screen whose candidates near success are classified again by
the attacked model itself.

It needs a :class:`~hpcmorph.train.model.GalaxyNet` with torchvision's ResNet stem and layer1 (stride
1, no downsampling): :func:`supports` says whether a model has them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Padding around every cached map: the largest patch (layer1's last, 13 x 13 around a window that may
# sit at the border) reaches 6 pixels beyond the map; the stem's input patch 19 pixels beyond.
PAD = 8
STEM_PAD = 24
# The changed window's side after the stem and after each convolution of layer1's two blocks.
SIDES = (3, 5, 7, 9, 11)


def supports(model: nn.Module) -> bool:
    """Whether ``model`` has the layout :class:`Local` computes: ``features`` with a 7x7 stride-2 stem
    convolution, a 3x3 stride-2 max pool and a layer1 of stride-1 basic blocks without downsampling,
    then ``dropout``, ``pool``, ``bottleneck`` and ``head``. Batch norms may be folded into the
    convolutions (their biases then carry the shift)."""
    f = getattr(model, "features", None)
    try:
        c, p = f.conv1, f.maxpool
        ok = (c.kernel_size == (7, 7) and c.stride == (2, 2) and c.padding == (3, 3)
              and p.kernel_size == 3 and p.stride == 2 and p.padding == 1 and p.dilation == 1 and not p.ceil_mode)
        for block in f.layer1:
            ok &= (block.downsample is None and block.conv1.stride == (1, 1) and block.conv2.stride == (1, 1)
                   and block.conv1.kernel_size == (3, 3) and block.conv1.padding == (1, 1)
                   and block.conv2.kernel_size == (3, 3) and block.conv2.padding == (1, 1))
        ok &= len(f.layer1) == 2 and all(hasattr(model, n) for n in ("dropout", "pool", "bottleneck", "head"))
        return bool(ok)
    except (AttributeError, TypeError):
        return False


def _cut(maps: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Patches (N, C, size, size) of the padded maps (1 or N, C, H', W') whose top-left corners are
    (top, left) (N,) in padded coordinates."""
    steps = torch.arange(size, device=maps.device)
    rows, cols = top[:, None] + steps, left[:, None] + steps               # (N, size)
    which = torch.arange(len(top), device=maps.device) if maps.shape[0] > 1 else torch.zeros_like(top)
    out = maps[which[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (N, size, size, C)
    return out.permute(0, 3, 1, 2)


def _paste(patch: torch.Tensor, window: torch.Tensor, offset: int) -> torch.Tensor:
    """``patch`` (N, C, S, S) with ``window`` (N, C, s, s) written at (offset, offset)."""
    s = window.shape[-1]
    patch[:, :, offset:offset + s, offset:offset + s] = window
    return patch


def _inside(top: torch.Tensor, left: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    """(N, 1, size, size) bool: which cells of windows at (top, left) (unpadded map coordinates) lie
    inside an height x width map."""
    steps = torch.arange(size, device=top.device)
    rows, cols = top[:, None] + steps, left[:, None] + steps
    ok_r = (rows >= 0) & (rows < height)
    ok_c = (cols >= 0) & (cols < width)
    return (ok_r[:, :, None] & ok_c[:, None, :])[:, None]


class Local:
    """The logits of single-pixel candidates of one image (module docstring).

    model: a model :func:`supports` accepts, in eval mode; image: (C, H, W) the normalised image, on
    the model's device (computed in the model's dtype).
    """

    def __init__(self, model: nn.Module, image: torch.Tensor):
        if not supports(model):
            raise ValueError("Local needs a GalaxyNet-like model with torchvision's ResNet stem and layer1")
        self.model, self.f = model, model.features
        self.image = image
        dtype = self.f.conv1.weight.dtype
        # Reduced-precision copies are laid out channels-last (their fast layout); float32 as it is.
        self.layout = torch.contiguous_format if dtype == torch.float32 else torch.channels_last
        with torch.inference_mode():
            x = image[None].to(dtype)
            stem = self.f.relu(self.f.bn1(self.f.conv1(x)))
            pooled = self.f.maxpool(stem)
            b1, b2 = self.f.layer1
            a1 = b1.relu(b1.bn1(b1.conv1(pooled)))
            o1 = b1.relu(b1.bn2(b1.conv2(a1)) + pooled)
            a2 = b2.relu(b2.bn1(b2.conv1(o1)))
            o2 = b2.relu(b2.bn2(b2.conv2(a2)) + o1)
        self.height, self.width = pooled.shape[-2:]
        self.stem_size = stem.shape[-2:]
        pad = (PAD, PAD, PAD, PAD)
        self.maps = [F.pad(m, pad) for m in (pooled, a1, o1, a2, o2)]
        self.padded_image = F.pad(x, (STEM_PAD,) * 4)

    @torch.inference_mode()
    def logits(self, position: np.ndarray, values: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) float32 of the image with pixel ``position`` (N,) (flat, ``y W + x``) set to
        ``values`` (N, C)."""
        dev = self.image.device
        width = self.image.shape[-1]
        py = torch.as_tensor(np.asarray(position) // width, device=dev)
        px = torch.as_tensor(np.asarray(position) % width, device=dev)
        # The stem: conv rows i with 2i - 3 <= py <= 2i + 3 change, i_lo = ceil((py - 3) / 2); pool rows
        # r with [2r - 1, 2r + 1] meeting them: r0 = ceil((i_lo - 1) / 2), three rows r0 .. r0 + 2.
        r0 = -((1 - -((3 - py) // 2)) // 2)
        c0 = -((1 - -((3 - px) // 2)) // 2)
        # Pool rows r0 .. r0 + 2 read conv rows 2 r0 - 1 .. 2 r0 + 5, which read input rows 4 r0 - 5 .. 4 r0 + 13.
        top, left = 4 * r0 - 5, 4 * c0 - 5
        patch = _cut(self.padded_image, top + STEM_PAD, left + STEM_PAD, 19)
        rows = torch.arange(len(py), device=dev)
        patch[rows, :, py - top, px - left] = values.to(patch.device, patch.dtype)
        stem = self.f.conv1
        conv = self.f.relu(self.f.bn1(F.conv2d(patch, stem.weight, stem.bias, stride=2)))   # (N, 64, 7, 7)
        h2, w2 = self.stem_size
        conv = conv.masked_fill(~_inside(2 * r0 - 1, 2 * c0 - 1, 7, h2, w2), float("-inf"))
        window = F.max_pool2d(conv, 3, 2)                                                 # (N, 64, 3, 3)
        window = window.masked_fill(~_inside(r0, c0, 3, self.height, self.width), 0.0)
        # layer1: each window's output from a patch of the map before it, with that map's window pasted in.
        b1, b2 = self.f.layer1
        steps = ((b1.conv1, b1.bn1, None), (b1.conv2, b1.bn2, 0), (b2.conv1, b2.bn1, None), (b2.conv2, b2.bn2, 2))
        windows = [window]
        for k, (conv_k, bn_k, residual) in enumerate(steps):
            side = SIDES[k + 1]
            wtop, wleft = r0 - k - 1, c0 - k - 1                     # the new window, map coordinates
            src = _paste(_cut(self.maps[k], wtop - 1 + PAD, wleft - 1 + PAD, side + 2), windows[k], 2)
            out = bn_k(F.conv2d(src, conv_k.weight, conv_k.bias))
            if residual is not None:  # the block's input: the map before the block, its window pasted
                out = out + _paste(_cut(self.maps[residual], wtop + PAD, wleft + PAD, side), windows[residual], 2)
            out = F.relu(out).masked_fill(~_inside(wtop, wleft, side, self.height, self.width), 0.0)
            windows.append(out)
        full = self.maps[4].expand(len(py), -1, -1, -1).clone()
        side = SIDES[-1]
        steps_ = torch.arange(side, device=dev)
        rr = (r0 - 4 + PAD)[:, None] + steps_
        cc = (c0 - 4 + PAD)[:, None] + steps_
        full[rows[:, None, None], :, rr[:, :, None], cc[:, None, :]] = windows[-1].permute(0, 2, 3, 1)
        h = full[:, :, PAD:PAD + self.height, PAD:PAD + self.width]
        f = self.f
        h = f.layer4(f.layer3(f.layer2(h.contiguous(memory_format=self.layout))))
        return self.model.head(self.model.bottleneck(self.model.pool(self.model.dropout(h)).flatten(1))).float()
