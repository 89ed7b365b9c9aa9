"""Certification: whether any single pixel set to a corner value reaches an attack's goal.

A query-efficient search (saliency, Sparse-RS) that fails on an image says little by itself: the
image may be out of one pixel's reach, or the search may have missed a needle (an image that only 2
of its 32,768 corner candidates flip). For every image a k = 1 attack failed on (no target
reached), the certifier classifies every single-pixel corner candidate of the image, H x W x 2^C of
them (:mod:`.exhaustive`'s candidates and scan order), each once for all the image's targets, and so
decides for each target whether a corner pixel reaches it. An image the search flipped needs no
scan. With both, a run knows exactly (for corner pixels) each model's vulnerable fraction, and the
search's coverage: images flipped / images one corner pixel can flip.

Per attack ("task"), :func:`certify` gives ``certified`` (1: a corner pixel reaches the goal, or
the search did; 0: no corner pixel does; -1: not decided, the image was flipped at another target
and not scanned), ``flips`` (the corner candidates that reach the goal, -1 unscanned) and ``first``
(the scan index of the first of them, -1 none).

Cost, and the screen (``precision``). Only the attack's own objective (the model in float32, as the
attack classifies its candidates) decides whether a candidate succeeds, but a cheaper screen picks
which candidates it has to classify: those whose screened goal margin (below) comes within the
tolerance of success. The screen's error is measured on every image: a strided sample of its
candidates (every ``SAMPLE_STRIDE``-th) goes through both, and the tolerance is the larger of
``tolerance`` (``FLOAT32_TOLERANCE`` for the float32 screen, ``attack.certify_tolerance`` for
bfloat16) and ``SAFETY`` times the largest error seen; every candidate classified again checks it
once more, and if any error exceeds half the tolerance the image is scanned again by the objective
throughout. A screened margin that is NaN (oneDNN's bfloat16 convolutions return garbage on some tiny
non-square maps) is classified by the objective and counts as an infinite error. The answer is exact
as long as the screen errs by less than the tolerance on every candidate, which the sample and the
checks measure but cannot prove.

- ``float32``: the model's own float32 arithmetic, recomputing per candidate only the activations the
  pixel reaches (:mod:`.local`; about 1.6x faster than whole forward passes on a CPU, agreeing with
  them to ~1e-6 of the logits' size), where the model has that layout; for any other model, no
  screen: every candidate is classified by the objective.
- ``bfloat16``: a bfloat16, channels-last copy of the model, batch norms folded into the convolutions
  (:func:`fold_batch_norms`), through :mod:`.local` where the model has that layout (on a 64 x 64
  laptop model the goal margins differ by 0.4-1.6 nats at most from float32's, so the tolerance is
  1.3-5 nats).
- ``auto``: ``bfloat16`` where the hardware computes it natively (:func:`hpcmorph.precision.native_bf16`:
  a CUDA device from Ampere on; a CPU with AMX or AVX512-BF16), else ``float32`` (emulated bfloat16
  is slower than float32).

The goal margin, in nats, positive exactly when the candidate succeeds (:mod:`hpcmorph.onepixel.goal`): for a
targeted attack at t, ``z_t - log sum_{j != t} exp z_j - logit(threshold)`` (p_t > threshold); for
an untargeted one (true class y), ``max_{j != y} z_j - z_y``. No random numbers: the result depends on
the model, the images and the settings alone.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from collections.abc import Sequence

import numpy as np
import torch

from .. import precision
from ..train import resnet
from ..onepixel import goal
from ..onepixel.corners import Box, scan as scan_order
from ..onepixel.pixels import PixelObjective, apply
from . import local

PRECISIONS = ("auto", "float32", "bfloat16")
#: Every SAMPLE_STRIDE-th candidate of an image is classified in both precisions to measure the screen's error.
SAMPLE_STRIDE = 64
#: The tolerance is at least SAFETY times the largest screening error of the sample.
SAFETY = 4.0
#: The least tolerance (nats) of the float32 screen, which agrees with the model to ~1e-6 of the logits.
FLOAT32_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Settings:
    """threshold: see :mod:`hpcmorph.onepixel.goal`. precision: ``float32`` or ``bfloat16`` (resolved, see
    :func:`resolve_precision`). tolerance: nats, the least screening tolerance of the goal margin
    (:func:`tolerance_for`).
    chunk: candidates per forward pass (changes no result)."""

    threshold: float = 0.5
    precision: str = "float32"
    tolerance: float = FLOAT32_TOLERANCE
    chunk: int = 1024

    def __post_init__(self):
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be float32 or bfloat16 (resolved), got {self.precision!r}")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance must be > 0 nats, got {self.tolerance}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")


@dataclass
class Cost:
    """What a certification did: images scanned, candidates screened and classified in float32,
    images scanned again in float32 (a screen error over half the tolerance), the largest screening
    error (nats) and tolerance used, the seconds spent, and images whose certificates were known
    (:mod:`.certificates`: not scanned again)."""

    images: int = 0
    candidates: int = 0
    float32: int = 0
    rescanned: int = 0
    max_error: float = 0.0
    max_tolerance: float = 0.0
    seconds: float = 0.0
    cached: int = 0

    def add(self, other: Cost) -> Cost:
        return Cost(self.images + other.images, self.candidates + other.candidates, self.float32 + other.float32,
                    self.rescanned + other.rescanned, max(self.max_error, other.max_error),
                    max(self.max_tolerance, other.max_tolerance), self.seconds + other.seconds,
                    self.cached + other.cached)

    def to_json(self) -> dict:
        return {"images": self.images, "candidates": self.candidates, "float32": self.float32,
                "rescanned": self.rescanned, "max_error": self.max_error, "max_tolerance": self.max_tolerance,
                "seconds": round(self.seconds, 3), "cached": self.cached}


@dataclass
class Certificates:
    """Per task (n,): certified (int8: 1, 0, -1), flips (int64, -1 unscanned), first (int64 scan index, -1 none)."""

    certified: np.ndarray
    flips: np.ndarray
    first: np.ndarray
    cost: Cost = field(default_factory=Cost)


def resolve_precision(setting: str, device: torch.device) -> str:
    """``attack.certify_precision`` as used on ``device``: ``auto`` becomes bfloat16 where the device
    computes it natively (:func:`hpcmorph.precision.native_bf16`), else float32."""
    if setting not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r} (one of {', '.join(PRECISIONS)})")
    if setting == "auto":
        return "bfloat16" if precision.native_bf16(device) else "float32"
    return setting


def tolerance_for(precision: str, bfloat16_tolerance: float) -> float:
    """The least tolerance of the screen of ``precision`` (resolved): ``FLOAT32_TOLERANCE``, or
    ``bfloat16_tolerance`` (``attack.certify_tolerance``)."""
    return bfloat16_tolerance if precision == "bfloat16" else FLOAT32_TOLERANCE


def screen_of(model: torch.nn.Module, precision: str):
    """The screen of ``precision``, or None (no screen: every candidate classified by the objective).

    Returns a function of one image (C, H, W) (normalised, on the model's device) that returns the
    screen of its candidates: pixel ``position`` (N,) (flat, ``y W + x``) set to ``values`` (N, C)
    -> logits (N, K) float32. ``float32``: the model's own arithmetic, recomputing only what the pixel
    reaches (:class:`.local.Local`) where the model has that layout, else no screen. ``bfloat16``: a
    bfloat16 channels-last copy of the model, batch norms folded (:func:`reduced_copy`), recomputing
    only what the pixel reaches where the model has that layout, else whole forward passes (any model
    answering logits, or ``(latent, logits)``).
    """
    if precision == "float32":
        if not local.supports(model):
            return None
        return lambda image: local.Local(model, image).logits
    fast = reduced_copy(model, torch.bfloat16)
    if local.supports(fast):
        return lambda image: local.Local(fast, image).logits
    return whole_passes(lambda x: fast(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)))


def whole_passes(model):
    """A screen as :func:`screen_of` returns one that classifies whole images: each candidate's image
    (the image with its pixel set) through ``model``, a function of images (N, C, H, W) float32 that
    answers logits or ``(latent, logits)``."""
    def of_image(image: torch.Tensor):
        def screen(position: np.ndarray, values: torch.Tensor) -> torch.Tensor:
            images = image[None].expand(len(position), -1, -1, -1).clone()
            width = image.shape[-1]
            xs = torch.as_tensor(np.asarray(position) % width, device=image.device)[:, None]
            ys = torch.as_tensor(np.asarray(position) // width, device=image.device)[:, None]
            apply(images, xs, ys, values[:, None].to(images.device, images.dtype))
            with torch.inference_mode():
                out = model(images)
            return (out[1] if isinstance(out, tuple) else out).float()
        return screen

    return of_image


def reduced_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of ``model`` (left as it is) in eval mode for reduced-precision inference: batch norms folded
    (:func:`fold_batch_norms`), weights in ``dtype`` (bfloat16 or float16), laid out channels-last (oneDNN's
    and the tensor cores' fast layout for reduced-precision convolutions). Feed it ``dtype`` channels-last
    images."""
    return fold_batch_norms(copy.deepcopy(model).eval()).to(dtype=dtype, memory_format=torch.channels_last)


def fold_batch_norms(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in eval mode) with each batch norm of a ResNet trunk (``features``: the stem
    and the basic blocks of layer1-4) folded into the convolution before it, in place; any other model
    as it is. In eval mode a batch norm is an affine map per channel, so the folded model computes the
    same function in one pass less per convolution (about 10-20 % of a bfloat16 screen's time on a
    CPU); in float32 the logits agree to rounding, in bfloat16 to the screen's own error, which the
    certifier measures on every image."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    f = getattr(model, "features", None)
    if f is None or not isinstance(getattr(f, "bn1", None), torch.nn.BatchNorm2d):
        return model
    f.conv1, f.bn1 = fuse_conv_bn_eval(f.conv1, f.bn1), torch.nn.Identity()
    for name in ("layer1", "layer2", "layer3", "layer4"):
        for block in getattr(f, name, ()):
            if not isinstance(block, resnet.BasicBlock):
                continue
            block.conv1, block.bn1 = fuse_conv_bn_eval(block.conv1, block.bn1), torch.nn.Identity()
            block.conv2, block.bn2 = fuse_conv_bn_eval(block.conv2, block.bn2), torch.nn.Identity()
            if block.downsample is not None:
                block.downsample = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
    return model


def goal_margin(logits: torch.Tensor, true: torch.Tensor, target: torch.Tensor, threshold: float) -> torch.Tensor:
    """(m, P) float64 goal margin (nats; module docstring) of logits (m, P, K) for tasks with ``true`` and
    ``target`` (m,) classes (target -1: untargeted). Positive exactly when the candidate succeeds."""
    z = logits.double()
    targeted = (target >= 0)[:, None]
    t = target.clamp(min=0)[:, None, None].expand(-1, z.shape[1], 1)
    own = z.gather(2, t).squeeze(2)
    rest = torch.logsumexp(z.scatter(2, t, float("-inf")), 2)
    if 0 < threshold < 1:
        offset = math.log(threshold) - math.log1p(-threshold)
    else:
        offset = -math.inf if threshold <= 0 else math.inf
    untargeted = -goal.margin_loss(z, true, torch.full_like(target, -1))
    return torch.where(targeted, own - rest - offset, untargeted)


def certify(model, objective: PixelObjective, box: Box, groups: Sequence[int], true: Sequence[int],
            target: Sequence[int], success: Sequence[bool], settings: Settings,
            known: tuple[np.ndarray, np.ndarray] | None = None) -> Certificates:
    """Certify the tasks of the images none of whose tasks succeeded; returns per-task :class:`Certificates`.

    model: the attacked model, for the screen (:func:`screen_of`); objective: the attack's objective
    (``logits=True``; its row i is task i's image), which alone decides; groups: (n,) tasks with equal
    values attack the same image; true, target: (n,) classes; success: (n,) the search's outcome;
    known: (flips, first) (n,) of certificates found before (:mod:`.certificates`; -1 unknown): an
    image whose tasks all have one is not scanned again.
    """
    n = len(groups)
    if not (len(true) == len(target) == len(success) == n):
        raise ValueError(f"certify: {n} groups but {len(true)} true classes, {len(target)} targets and "
                         f"{len(success)} outcomes")
    if box.pixels != 1:
        raise ValueError(f"certification is for one pixel (k = 1), got k = {box.pixels}")
    groups, success = np.asarray(groups), np.asarray(success, bool)
    certified = np.where(success, 1, -1).astype(np.int8)
    flips, first = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    cost = Cost()
    screen = screen_of(model, settings.precision)
    true_t = torch.as_tensor(np.asarray(true), dtype=torch.long)
    target_t = torch.as_tensor(np.asarray(target), dtype=torch.long)
    for g in np.unique(groups):
        tasks = np.flatnonzero(groups == g)
        if success[tasks].any():
            continue  # flipped: needs no scan
        if known is not None and (known[0][tasks] >= 0).all():
            flips[tasks], first[tasks] = known[0][tasks], known[1][tasks]
            certified[tasks] = (flips[tasks] > 0).astype(np.int8)
            cost = cost.add(Cost(cached=1))
            continue
        t0 = time.perf_counter()
        count, found, c = scan(objective, screen, box, tasks, true_t[tasks], target_t[tasks], settings)
        c.seconds = time.perf_counter() - t0
        cost = cost.add(c)
        flips[tasks], first[tasks] = count, found
        certified[tasks] = (count > 0).astype(np.int8)
    return Certificates(certified, flips, first, cost)


def scan(objective: PixelObjective, screen, box: Box, tasks: np.ndarray, true: torch.Tensor, target: torch.Tensor,
         settings: Settings) -> tuple[np.ndarray, np.ndarray, Cost]:
    """Every corner candidate of one image, for its tasks ``tasks`` (rows of ``objective``, same image);
    returns (successful candidates per task, scan index of the first per task or -1, :class:`Cost`)."""
    total = box.positions * box.n_corners
    if screen is not None:
        found = _screened(objective, screen(objective.base[int(tasks[0])]), box, tasks, true, target, settings)
        if found is not None:
            return found
    count, first, n32 = _exact(objective, box, tasks, true, target, settings, np.arange(total))
    return count, first, Cost(1, total, n32, int(screen is not None))


def _classify(objective: PixelObjective, box: Box, row: int, q: np.ndarray, chunk: int) -> torch.Tensor:
    """float64 logits (len(q), K) of the image of objective row ``row`` with candidates ``q`` (scan
    indices), classified by the objective (the attack's own arithmetic)."""
    out = []
    for s in range(0, len(q), chunk):
        position, corner = scan_order(q[s:s + chunk], box.n_corners)
        genome = torch.from_numpy(box.genomes(position[:, None], corner[:, None]))
        out.append(objective(torch.tensor([row]), genome[None])[0])
    return torch.cat(out) if out else torch.zeros((0, 0), dtype=torch.float64)


def _decide(logits: torch.Tensor, q: np.ndarray, true: torch.Tensor, target: torch.Tensor, threshold: float,
            count: np.ndarray, first: np.ndarray) -> None:
    """Count the successes among candidates ``q`` (increasing) with the objective's ``logits`` (len(q), K)."""
    m = len(true)
    _, ok, _ = goal.score(logits[None].expand(m, -1, -1), true, target, threshold)
    ok = ok.numpy()
    count += ok.sum(1)
    for j in range(m):
        hits = np.flatnonzero(ok[j])
        if len(hits) and (first[j] < 0 or q[hits[0]] < first[j]):
            first[j] = q[hits[0]]


def _exact(objective, box, tasks, true, target, settings, q) -> tuple[np.ndarray, np.ndarray, int]:
    """Classify candidates ``q`` by the objective and decide; returns (count, first, candidates classified)."""
    count, first = np.zeros(len(tasks), np.int64), np.full(len(tasks), -1, np.int64)
    for s in range(0, len(q), settings.chunk):
        part = q[s:s + settings.chunk]
        _decide(_classify(objective, box, int(tasks[0]), part, settings.chunk), part, true, target,
                settings.threshold, count, first)
    return count, first, len(q)


def _screen_margins(screen, box: Box, q: np.ndarray, true, target, threshold: float, chunk: int) -> torch.Tensor:
    """(tasks, len(q)) goal margins of candidates ``q`` by the screen, ``chunk`` candidates a pass."""
    table = torch.as_tensor(box.table(), dtype=torch.float32)
    out = []
    for s in range(0, len(q), chunk):
        position, corner = scan_order(q[s:s + chunk], box.n_corners)
        out.append(screen(position, table[corner]).double().cpu())
    logits = torch.cat(out)
    return goal_margin(logits[None].expand(len(true), -1, -1), true, target, threshold)


def _screened(objective, screen, box, tasks, true, target, settings) -> tuple | None:
    """The screened scan (module docstring); None when the screen's error exceeded half the tolerance."""
    total = box.positions * box.n_corners
    row = int(tasks[0])
    sample = np.arange(0, total, SAMPLE_STRIDE)
    exact = goal_margin(_classify(objective, box, row, sample, settings.chunk)[None].expand(len(tasks), -1, -1),
                        true, target, settings.threshold)
    error = _error(_screen_margins(screen, box, sample, true, target, settings.threshold, settings.chunk), exact)
    if not math.isfinite(error):
        return None
    tol = max(settings.tolerance, SAFETY * error)
    n32 = len(sample)
    count, first = np.zeros(len(tasks), np.int64), np.full(len(tasks), -1, np.int64)
    for s in range(0, total, settings.chunk):
        q = np.arange(s, min(total, s + settings.chunk))
        margin = _screen_margins(screen, box, q, true, target, settings.threshold, settings.chunk)
        near = ((margin > -tol) | torch.isnan(margin)).any(0).numpy()
        if not near.any():
            continue
        logits = _classify(objective, box, row, q[near], settings.chunk)
        n32 += int(near.sum())
        checked = goal_margin(logits[None].expand(len(tasks), -1, -1), true, target, settings.threshold)
        error = max(error, _error(margin[:, near], checked))
        if error > tol / 2:
            return None
        _decide(logits, q[near], true, target, settings.threshold, count, first)
    return count, first, Cost(1, total, n32, 0, error, tol)


def _error(fast: torch.Tensor, exact: torch.Tensor) -> float:
    """The largest |fast - exact| over the finite margins (nats); infinite where the screen gave NaN
    for a margin the objective computed."""
    if bool((torch.isnan(fast) & ~torch.isnan(exact)).any()):
        return math.inf
    both = torch.isfinite(fast) & torch.isfinite(exact)
    return float((fast[both] - exact[both]).abs().max()) if bool(both.any()) else 0.0
