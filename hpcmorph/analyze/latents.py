"""Latent embeddings: each model's 256-d bottleneck output and predicted class, in fixed chunks.

A forward pass's floats can depend on which images share the batch (BLAS and cuDNN pick kernels
by shape), so images are always embedded in the same chunks: chunk c holds rows
``[c * chunk, (c + 1) * chunk)`` of the list being embedded, whatever the number of ranks. Ranks
take chunks round-robin and exchange the results, so the output is the same on any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from collections.abc import Callable

import h5py
import numpy as np
import torch

from .. import store
from ..attack.stage import columns as attack_layout
from ..config import Config
from ..layout import RunLayout
from ..mpi import Context
from . import exposure
from .inputs import ATTACK_SCALARS, TestSet


@dataclass(frozen=True)
class Latents:
    """latents.h5: the n test images' latents and classes under each of the V models (D dimensions,
    F exposure fractions)."""

    index: np.ndarray          # (n,) rows of the test images in galaxies.h5, increasing
    label: np.ndarray          # (n,) their classes
    z_y10: np.ndarray          # (n, V, D) latents of the Y10 images
    z_y1: np.ndarray           # (n, V, D) latents of the Y1 images
    pred_y10: np.ndarray       # (n, V) classes predicted for the Y10 images
    pred_y1: np.ndarray        # (n, V) for the Y1 images
    pred_exposure: np.ndarray  # (n, V, F) for the images observed again at each fraction; -1 not observed

    def data(self) -> dict[str, np.ndarray]:
        """The columns by name, as :func:`write` takes them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class AttackedLatents:
    """The latents of an attack output's N attacked images, each under the model it attacked."""

    z_attacked: np.ndarray     # (N, D)
    pred_attacked: np.ndarray  # (N,) the class that model predicts for it

    def data(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) bounds of the fixed chunks of ``size`` rows covering ``n`` rows."""
    return [(lo, min(n, lo + size)) for lo in range(0, n, size)]


def embed(model, images: np.ndarray | torch.Tensor, device: torch.device,
          stretch=None) -> tuple[np.ndarray, np.ndarray]:
    """(latents (n, latent_dim) float32, predicted classes (n,) int8) of ``images`` (n, C, H, W).

    ``stretch``: the model's ``AsinhStretch`` for raw images (e-/s per pixel); None for images
    already normalised (the attacked images of attack.h5). One forward pass: the caller picks the
    batch (see the module docstring).
    """
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images, np.float32))
    if stretch is not None:
        x = stretch(x)
    if len(x) == 0:
        return np.zeros((0, model.latent_dim), np.float32), np.zeros(0, np.int8)
    model.eval()  # no dropout: a latent is a function of the image alone
    with torch.no_grad():
        latent, logits = model(x.float().to(device))
    return latent.cpu().numpy().astype(np.float32), logits.argmax(1).cpu().numpy().astype(np.int8)


def sharded(ctx: Context, n_chunks: int, work: Callable[[int], dict[str, np.ndarray]], progress=None) -> list[dict]:
    """``work(c)`` for every chunk c, shared round-robin over the ranks; every rank gets every result,
    in chunk order. ``progress``: a tqdm-like bar updated once per chunk of this rank."""
    mine = {}
    for c in ctx.share(range(n_chunks)):
        mine[c] = work(c)
        if progress is not None:
            progress.update(1)
    merged: dict[int, dict] = {}
    for part in ctx.allgather(mine):
        merged.update(part)
    return [merged[c] for c in range(n_chunks)]


def concat(parts: list[dict], empty: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Join per-chunk results along rows; ``empty`` gives each column's (0, ...) array when there are none."""
    return {k: np.concatenate([p[k] for p in parts]) if parts else v for k, v in empty.items()}


# ---------------------------------------------------------------- the stage's latents and their files

def columns(n_variants: int, latent_dim: int, n_fractions: int) -> dict[str, store.Column]:
    """Layout of latents.h5: one row per Y10/Y1 test image pair (documented in the README)."""
    c = store.Column
    return {
        "index": c((), "i8", "row of the galaxy in galaxies.h5 (a test image)"),
        "label": c((), "i1", "true class (0 spiral, 1 elliptical, 2 merger)"),
        "z_y10": c((n_variants, latent_dim), "f4", "latent (bottleneck output) of the normalised Y10 image, per "
                   "model (axis 1: the file attribute variant_names)"),
        "z_y1": c((n_variants, latent_dim), "f4", "latent of the normalised Y1 image, per model"),
        "pred_y10": c((n_variants,), "i1", "class each model predicts for the Y10 image"),
        "pred_y1": c((n_variants,), "i1", "class each model predicts for the Y1 image"),
        "pred_exposure": c((n_variants, n_fractions), "i1", "class each model predicts for the noiseless image "
                           "observed again at each exposure fraction (attribute exposure_fractions); -1 when "
                           "the data has no noiseless images"),
    }


def attack_columns(latent_dim: int) -> dict[str, store.Column]:
    """Layout of attack_latents.h5: one row per row of the attack file, in its order (its scalar
    columns as attack.h5 defines them)."""
    c = store.Column
    scalars = attack_layout(1, 1, 1)
    return {
        **{name: scalars[name] for name in ATTACK_SCALARS},
        "z_attacked": c((latent_dim,), "f4", "latent of the attacked image under the attacked model"),
        "pred_attacked": c((), "i1", "class the attacked model predicts for the attacked image"),
    }


def compute_latents(cfg: Config, ctx: Context, models: dict, device, test_set: TestSet,
                    attack_file: Path) -> tuple[Latents, AttackedLatents]:
    """Latents of the test images and of the attacked images, every rank getting all of them."""
    a = cfg.analyze
    test, fractions = test_set.rows, test_set.fractions
    bands, pixel_scale = test_set.bands, test_set.pixel_scale
    variants = list(models)
    dim = next(iter(models.values()))[0].latent_dim
    n_v, n_f = len(variants), len(a.exposure_fractions)
    test_chunks = chunks(len(test), a.batch_size)
    with h5py.File(attack_file, "r") as fa:
        att_variant = fa["variant"][...]
    att_chunks = chunks(len(att_variant), a.batch_size)

    with h5py.File(RunLayout.of(cfg).galaxies, "r") as f, h5py.File(attack_file, "r") as fa:
        def test_chunk(c: int) -> dict[str, np.ndarray]:
            lo, hi = test_chunks[c]
            rows = test[lo:hi]  # increasing: what h5py's fancy reads need
            y10, y1 = f["y10"][rows], f["y1"][rows]
            out = {"z_y10": np.empty((hi - lo, n_v, dim), np.float32),
                   "z_y1": np.empty((hi - lo, n_v, dim), np.float32),
                   "pred_y10": np.empty((hi - lo, n_v), np.int8), "pred_y1": np.empty((hi - lo, n_v), np.int8),
                   "pred_exposure": np.full((hi - lo, n_v, n_f), -1, np.int8)}
            for v, (model, stretch) in enumerate(models.values()):
                out["z_y10"][:, v], out["pred_y10"][:, v] = embed(model, y10, device, stretch)
                out["z_y1"][:, v], out["pred_y1"][:, v] = embed(model, y1, device, stretch)
            if fractions:
                clean = f["clean"][rows]
                for j, frac in enumerate(fractions):
                    # One observation per galaxy and exposure, shown to every model (a paired comparison).
                    seen = np.stack([exposure.reobserve(clean[i], bands, pixel_scale, frac,
                                                        exposure.seeds(cfg.run.seed, row, j, len(bands)))
                                     for i, row in enumerate(rows)])
                    for v, (model, stretch) in enumerate(models.values()):
                        out["pred_exposure"][:, v, j] = embed(model, seen, device, stretch)[1]
            return out

        mine = len(ctx.share(range(len(test_chunks)))) + len(ctx.share(range(len(att_chunks))))
        with ctx.progress(total=mine, desc="analyze latents (rank 0 share)", unit="chunk",
                          enabled=cfg.run.progress) as bar:
            test_parts = sharded(ctx, len(test_chunks), test_chunk, bar)
            attacked = attack_latents(cfg, ctx, models, device, fa, bar)
    empty = {"z_y10": np.zeros((0, n_v, dim), np.float32), "z_y1": np.zeros((0, n_v, dim), np.float32),
             "pred_y10": np.zeros((0, n_v), np.int8), "pred_y1": np.zeros((0, n_v), np.int8),
             "pred_exposure": np.zeros((0, n_v, n_f), np.int8)}
    return Latents(index=test.astype(np.int64), label=test_set.labels.astype(np.int8),
                   **concat(test_parts, empty)), attacked


def test_latents(cfg: Config, ctx: Context, models: dict, device, test_set: TestSet) -> tuple[np.ndarray, np.ndarray]:
    """(z_y10, z_y1), each (n, V, D): the latents of the Y10 and Y1 test images under each of
    ``models`` ({variant: (model, stretch)}), in the fixed chunks of :func:`compute_latents` shared by
    the ranks (every rank gets all of them). For the models the analysis embeds for calibration only
    (trained, not attacked): no exposures, no file."""
    test, n_v = test_set.rows, len(models)
    dim = next(iter(models.values()))[0].latent_dim
    test_chunks = chunks(len(test), cfg.analyze.batch_size)
    with h5py.File(RunLayout.of(cfg).galaxies, "r") as f:
        def test_chunk(c: int) -> dict[str, np.ndarray]:
            lo, hi = test_chunks[c]
            rows = test[lo:hi]
            y10, y1 = f["y10"][rows], f["y1"][rows]
            out = {name: np.empty((hi - lo, n_v, dim), np.float32) for name in ("z_y10", "z_y1")}
            for v, (model, stretch) in enumerate(models.values()):
                out["z_y10"][:, v] = embed(model, y10, device, stretch)[0]
                out["z_y1"][:, v] = embed(model, y1, device, stretch)[0]
            return out

        parts = sharded(ctx, len(test_chunks), test_chunk)
    z = concat(parts, {"z_y10": np.zeros((0, n_v, dim), np.float32), "z_y1": np.zeros((0, n_v, dim), np.float32)})
    return z["z_y10"], z["z_y1"]


def attack_latents(cfg: Config, ctx: Context, models: dict, device, fa: h5py.File,
                   progress=None) -> AttackedLatents:
    """The latents of every attacked image of the open attack file ``fa``, under
    the model it attacked, in fixed chunks of analyze.batch_size rows shared by the ranks (every rank
    gets all of them)."""
    dim = next(iter(models.values()))[0].latent_dim
    att_variant = fa["variant"][...]
    att_chunks = chunks(len(att_variant), cfg.analyze.batch_size)

    def attack_chunk(c: int) -> dict[str, np.ndarray]:
        lo, hi = att_chunks[c]
        images, which = fa["attacked"][lo:hi], att_variant[lo:hi]
        out = {"z_attacked": np.empty((hi - lo, dim), np.float32), "pred_attacked": np.empty(hi - lo, np.int8)}
        for v, (model, _) in enumerate(models.values()):
            sel = which == v
            if sel.any():
                # The attacked images are the model's input as the attack built it: no stretch.
                out["z_attacked"][sel], out["pred_attacked"][sel] = embed(model, images[sel], device)
        return out

    parts = sharded(ctx, len(att_chunks), attack_chunk, progress)
    return AttackedLatents(**concat(parts, {"z_attacked": np.zeros((0, dim), np.float32),
                                            "pred_attacked": np.zeros(0, np.int8)}))


def write(path: Path, cols: dict[str, store.Column], data: dict[str, np.ndarray], attrs: dict, ctx: Context,
           io: str) -> None:
    n = len(next(iter(data.values())))

    def pieces(lo: int, hi: int):
        if hi > lo:  # an empty piece would skip a collective write (store._write_nothing handles "none")
            yield lo, hi, {name: data[name][lo:hi] for name in cols}

    store.write_table(path, cols, n, pieces, attrs, ctx, io)

