"""Stage 1 driver: parents drawn block by block on every rank, then one dataset file written together.

1. The parent galaxies are cut into blocks of ``generate.block_size``. Ranks take the blocks not yet
   on disk round-robin; each block (images, G, M20, labels) lands as its own small HDF5 file in
   ``<output>.parts-<digest>/``, written then renamed, so a killed job loses at most one block per
   rank and the same command resumes where it stopped.
2. Rank 0 reads the blocks' labels and broadcasts them; every rank computes the same merger
   augmentation plan and split, then all ranks write their rows of the output together
   (``store.write_table``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import h5py
import numpy as np

from .. import store
from ..config import Config
from ..errors import StageError
from ..lock import locked
from ..mpi import Context, log
from . import dataset, morphology, survey
from .sources import SourceError, open_source

OUTPUT_NAME = "galaxies.h5"
STAGE = "generate"

# Per-parent scalars kept in block files and carried to every row of that parent.
_SCALARS = {
    "intended": ("i1", "class the generator intended (0 spiral, 1 elliptical, 2 merger; -1 unknown)"),
    "given_label": ("i1", "label supplied with observed data (-1 when none)"),
    "gini": ("f4", "Gini coefficient of the noiseless label-band image (statmorph definition)"),
    "m20": ("f4", "M20 of the noiseless label-band image (statmorph definition)"),
    "r_petro": ("f4", "Petrosian radius used for the Gini segmentation map, pixels"),
    "morph_flag": ("i1", "0 = G and M20 measured; 1 = degenerate image, G and M20 are NaN"),
    "mag_r": ("f4", "total r-band AB magnitude of a synthetic galaxy (NaN otherwise)"),
    "hlr": ("f4", "main half-light radius of a synthetic galaxy, arcsec (NaN otherwise)"),
}


def columns(n_bands: int, size: int) -> dict[str, store.Column]:
    """The output layout (documented in the README)."""
    image = (n_bands, size, size)
    cols = {
        "y10": store.Column(image, "f4", "ten-year (Y10) observation, e-/s per pixel, sky-subtracted", 1),
        "y1": store.Column(image, "f4", "one-year (Y1) observation of the same galaxy, e-/s per pixel, sky-subtracted", 1),
        "clean": store.Column(image, "f4", "noiseless PSF-convolved image, e-/s per pixel (NaN for observed data)", 1),
        "label": store.Column((), "i1", "class from the Lotz G-M20 lines (0 spiral, 1 elliptical, 2 merger; "
                              "observed data: the given label; -1 unusable)"),
        "split": store.Column((), "i1", "0 train, 1 validation, 2 test (per parent, stratified); -1 unusable"),
        "parent": store.Column((), "i8", "index of the parent galaxy this row shows"),
        "augmentation": store.Column((), "i1", "0 none, 1 up/down flip, 2 rotation 90, 3 rotation 180"),
        "merger_statistic": store.Column((), "f4", "S = 0.139 M20 + 0.990 G - 0.327 (merger if S > 0)"),
        "bulge_statistic": store.Column((), "f4", "F = -0.693 M20 + 4.95 G - 3.96 (elliptical if F > 0)"),
    }
    cols.update({name: store.Column((), dtype, doc) for name, (dtype, doc) in _SCALARS.items()})
    return cols


def output_path(cfg: Config) -> Path:
    return Path(cfg.run.root) / cfg.run.name / OUTPUT_NAME


def digest(cfg: Config) -> str:
    return cfg.digest("run.seed", "generate")




def _draw_block(source, indices: range, label_band: int) -> dict[str, np.ndarray]:
    drawn = []
    for i in indices:
        try:
            drawn.append(source.draw(i))
        except SourceError:
            raise
        except Exception as err:
            raise RuntimeError(f"drawing galaxy {i} failed: {err}") from err
    out = {name: np.stack([getattr(d, name) for d in drawn]) for name in ("clean", "y10", "y1")}
    for name in ("intended", "given_label", "mag_r", "hlr"):
        out[name] = np.array([getattr(d, name) for d in drawn])
    # Observed data has no noiseless image: measure the Y10 one instead.
    measured = out["clean"] if np.all(np.isfinite(out["clean"])) else out["y10"]
    morph = [morphology.measure(img[label_band]) for img in measured]
    for name in ("gini", "m20", "r_petro"):
        out[name] = np.array([getattr(m, name) for m in morph])
    out["morph_flag"] = np.array([m.flag for m in morph])
    return out


def _write_block(path: Path, data: dict[str, np.ndarray], first: int) -> None:
    with store.atomic(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["first"] = first
        for name, arr in data.items():
            f.create_dataset(name, data=arr)


def _block_path(parts: Path, b: int) -> Path:
    return parts / f"block-{b:06d}.h5"


def _labels(meta: dict[str, np.ndarray], source_name: str) -> np.ndarray:
    if source_name == "observed":
        return meta["given_label"].astype(np.int8)
    label = np.asarray(morphology.lotz_class(meta["gini"], meta["m20"]), dtype=np.int8)
    return np.where(meta["morph_flag"] == 0, label, -1).astype(np.int8)


@locked(output_path, subfolders=("figures",))
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Generate the dataset described by ``cfg.generate``; returns the output path."""
    g = cfg.generate
    out, key = output_path(cfg), digest(cfg)
    if store.is_current(out, key, force):
        return out
    started = store.now()
    io = store.resolve_io(cfg)
    source = open_source(cfg)
    n = len(source)
    size = g.image_size
    label_band = g.bands.index(g.label_band)

    parts = out.with_name(f"{out.name}.parts-{key}")
    n_blocks = -(-n // g.block_size)
    if ctx.is_root:
        parts.mkdir(parents=True, exist_ok=True)
    done = ctx.bcast({int(p.stem.split("-")[1]) for p in parts.glob("block-*.h5")} if ctx.is_root else None)
    todo = [b for b in range(n_blocks) if b not in done]
    mine = ctx.share(todo)

    def indices(b: int) -> range:
        return range(b * g.block_size, min(n, (b + 1) * g.block_size))

    n_mine = sum(len(indices(b)) for b in mine)
    if ctx.size > n_blocks and ctx.is_root:
        log.warning("generate: %d ranks for %d block(s) of generate.block_size=%d galaxies: %d rank(s) draw nothing; "
                    "the output is the same on fewer ranks", ctx.size, n_blocks, g.block_size, ctx.size - n_blocks)
    log.info("generate: %d galaxies (%s), %d blocks of %d, %d already on disk, %d ranks, io=%s",
             n, g.source, n_blocks, g.block_size, len(done), ctx.size, io)
    t0 = time.perf_counter()
    with ctx.progress(total=n_mine, desc="generate (rank 0 share)", unit="gal", enabled=cfg.run.progress) as bar:
        for b in mine:
            idx = indices(b)
            _write_block(_block_path(parts, b), _draw_block(source, idx, label_band), idx.start)
            bar.update(len(idx))
    elapsed = time.perf_counter() - t0
    ctx.barrier()

    meta = None
    if ctx.is_root:
        meta = {name: [] for name in _SCALARS}
        for b in range(n_blocks):
            with h5py.File(_block_path(parts, b), "r") as f:
                for name in _SCALARS:
                    meta[name].append(f[name][...])
        meta = {name: np.concatenate(v) for name, v in meta.items()}
    meta = ctx.bcast(meta)
    labels = _labels(meta, g.source)
    parent, aug = dataset.augmentation_plan(labels, g.augment_mergers)
    split_of_parent = dataset.split_parents(labels, g.split, cfg.run.seed)
    split_of_parent[labels < 0] = -1
    for name in dataset.empty_splits(split_of_parent) if ctx.is_root else []:
        log.warning("generate: the %s split is empty (%d usable of %d galaxies, generate.split=%s): train will refuse "
                    "this dataset; generate more galaxies", name, int(np.sum(labels >= 0)), n, list(g.split))
    rows = {
        "parent": parent, "augmentation": aug.astype(np.int8), "label": labels[parent],
        "split": split_of_parent[parent],
        "merger_statistic": morphology.merger_statistic(meta["gini"], meta["m20"])[parent],
        "bulge_statistic": morphology.bulge_statistic(meta["gini"], meta["m20"])[parent],
        **{name: meta[name][parent] for name in _SCALARS},
    }

    def pieces(lo: int, hi: int, step: int = 64):
        handles: dict[int, h5py.File] = {}
        try:
            for start in range(lo, hi, step):
                stop = min(hi, start + step)
                data = {name: rows[name][start:stop] for name in rows}
                for name in ("clean", "y10", "y1"):
                    data[name] = np.empty((stop - start, len(g.bands), size, size), np.float32)
                for j, r in enumerate(range(start, stop)):
                    b, off = divmod(int(parent[r]), g.block_size)
                    if b not in handles:
                        handles[b] = h5py.File(_block_path(parts, b), "r")
                    for name in ("clean", "y10", "y1"):
                        data[name][j] = dataset.augment(handles[b][name][off], int(aug[r]))
                yield start, stop, data
        finally:
            for f in handles.values():
                f.close()

    attrs = {
        **store.provenance(cfg, ctx, STAGE, key, started),
        **survey.survey_attrs(g.bands, g.pixel_scale, g.y1_fraction),
        "bands": ",".join(g.bands), "source": g.source, "units": source.units,
        "class_names": ",".join(morphology.CLASS_NAMES), "split_names": ",".join(dataset.SPLIT_NAMES),
        "augmentation_names": ",".join(dataset.AUGMENTATIONS), "n_parents": n, "label_band": g.label_band,
        **_agreement(meta["intended"], labels),
    }
    store.write_table(out, columns(len(g.bands), size), len(parent), pieces, attrs, ctx, io)
    log.info("generate: drew %d galaxies in %.1f s on %d ranks", ctx.comm.allreduce(n_mine), elapsed, ctx.size)
    if ctx.is_root:
        if g.figures:
            from .figures import write_figures

            write_figures(out)
        if not g.keep_parts:
            shutil.rmtree(parts, ignore_errors=True)
    ctx.barrier()
    return out


def _agreement(intended: np.ndarray, labels: np.ndarray) -> dict:
    """How often the G-M20 label matches the class the generator intended (synthetic data only)."""
    known = (intended >= 0) & (labels >= 0)
    if not known.any():
        return {}
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (intended[known], labels[known]), 1)
    return {"label_agreement": float(np.mean(intended[known] == labels[known])),
            "label_confusion_intended_by_gm20": confusion}
