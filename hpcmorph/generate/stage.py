"""Stage 1 driver: parents drawn block by block on every rank, then one dataset file written together.

1. The parent galaxies are cut into blocks of ``generate.block_size``. Ranks take the blocks not yet
   on disk round-robin; each block (images, G, M20, labels) lands as its own small HDF5 file in
   ``<output>.parts-<digest>/``, written then renamed, so a killed job loses at most one block per
   rank and the same command resumes where it stopped.
2. Rank 0 reads the blocks' labels and broadcasts them; every rank computes the same merger
   augmentation plan and split, then all ranks write their rows of the output together
   (``store.write_table``).
3. Rank 0 draws the figures and removes the blocks; ``galaxies.h5.complete`` marks the whole stage
   done (``store.produce``): a run killed after the output but before the marker only redoes step 3.
"""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import numpy as np

from .. import layout, store
from ..config import Config
from ..layout import RunLayout
from ..lock import locked
from ..mpi import Context, log
from . import dataset, morphology, survey
from .sources import SourceError, open_source

OUTPUT_NAME = layout.GALAXIES
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
        "y1": store.Column(image, "f4", "one-year (Y1) observation of the same galaxy, e-/s per pixel, "
                           "sky-subtracted", 1),
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
    return RunLayout.of(cfg).galaxies


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


def _labels(meta: dict[str, np.ndarray], source_name: str) -> np.ndarray:
    if source_name == "observed":
        return meta["given_label"].astype(np.int8)
    label = np.asarray(morphology.lotz_class(meta["gini"], meta["m20"]), dtype=np.int8)
    return np.where(meta["morph_flag"] == 0, label, -1).astype(np.int8)


@locked(output_path, subfolders=("figures",))
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Generate the dataset described by ``cfg.generate``; returns the output path."""
    out, key = output_path(cfg), digest(cfg)
    return store.produce(out, key, ctx, force, make=lambda: make(cfg, ctx, out, key),
                         finish=lambda: finish(cfg, out))


def make(cfg: Config, ctx: Context, out: Path, key: str) -> None:
    """Draw every parent (resumably, in blocks), then write the rows of ``galaxies.h5`` together."""
    started = store.now()
    io = store.resolve_io(cfg)
    source = open_source(cfg)
    blocks = store.Blocks(out.with_name(f"{out.name}.parts-{key}"))
    draw_parents(cfg, ctx, source, blocks, io)
    meta = read_parents(cfg, ctx, blocks, len(source))
    labels = _labels(meta, cfg.generate.source)
    rows = plan_rows(cfg, meta, labels)
    for name in dataset.empty_splits(rows["split"]) if ctx.is_root else []:
        log.warning("generate: the %s split is empty (%d usable of %d galaxies, generate.split=%s): train will refuse "
                    "this dataset; generate more galaxies", name, int(np.sum(labels >= 0)), len(labels),
                    list(cfg.generate.split))
    attrs = {
        **store.provenance(cfg, ctx, STAGE, key, started),
        **survey.survey_attrs(cfg.generate.bands, cfg.generate.pixel_scale, cfg.generate.y1_fraction),
        "bands": ",".join(cfg.generate.bands), "source": cfg.generate.source, "units": source.units,
        "class_names": ",".join(morphology.CLASS_NAMES), "split_names": ",".join(dataset.SPLIT_NAMES),
        "augmentation_names": ",".join(dataset.AUGMENTATIONS), "n_parents": len(source),
        "label_band": cfg.generate.label_band, **_agreement(meta["intended"], labels),
    }
    write_rows(cfg, ctx, out, blocks, rows, attrs, io)


def draw_parents(cfg: Config, ctx: Context, source, blocks: store.Blocks, io: str) -> None:
    """Draw the parents not yet on disk, ``generate.block_size`` at a time, blocks dealt round-robin."""
    g = cfg.generate
    n = len(source)
    n_blocks = -(-n // g.block_size)
    blocks.create(ctx)
    mine, n_done = blocks.todo(n_blocks, ctx)
    n_mine = sum(len(_block_rows(g, n, b)) for b in mine)
    log.info("generate: %d galaxies (%s), %d blocks of %d, %d already on disk, %d ranks, io=%s",
             n, g.source, n_blocks, g.block_size, n_done, ctx.size, io)
    if ctx.size > n_blocks and ctx.is_root:
        log.warning("generate: %d ranks for %d block(s) of generate.block_size=%d galaxies: %d rank(s) draw nothing; "
                    "the output is the same on fewer ranks", ctx.size, n_blocks, g.block_size, ctx.size - n_blocks)
    label_band = g.bands.index(g.label_band)
    t0 = time.perf_counter()
    with ctx.progress(total=n_mine, desc="generate (rank 0 share)", unit="gal", enabled=cfg.run.progress) as bar:
        for b in mine:
            idx = _block_rows(g, n, b)
            blocks.write(b, _draw_block(source, idx, label_band), {"first": idx.start})
            bar.update(len(idx))
    elapsed = time.perf_counter() - t0
    ctx.barrier()
    log.info("generate: drew %d galaxies in %.1f s on %d ranks", ctx.comm.allreduce(n_mine), elapsed, ctx.size)


def _block_rows(g, n: int, b: int) -> range:
    return range(b * g.block_size, min(n, (b + 1) * g.block_size))


def read_parents(cfg: Config, ctx: Context, blocks: store.Blocks, n: int) -> dict[str, np.ndarray]:
    """The per-parent scalars of every block (rank 0 reads, every rank gets them)."""
    meta = None
    if ctx.is_root:
        meta = {name: [] for name in _SCALARS}
        for b in range(-(-n // cfg.generate.block_size)):
            with blocks.open(b) as f:
                for name in _SCALARS:
                    meta[name].append(f[name][...])
        meta = {name: np.concatenate(v) for name, v in meta.items()}
    return ctx.bcast(meta)


def plan_rows(cfg: Config, meta: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every output row's parent, augmentation, label, split and scalars from the parents' ``labels``
    (the same on every rank)."""
    parent, aug = dataset.augmentation_plan(labels, cfg.generate.augment_mergers)
    split_of_parent = dataset.split_parents(labels, cfg.generate.split, cfg.run.seed)
    split_of_parent[labels < 0] = -1
    return {
        "parent": parent, "augmentation": aug.astype(np.int8), "label": labels[parent],
        "split": split_of_parent[parent],
        "merger_statistic": morphology.merger_statistic(meta["gini"], meta["m20"])[parent],
        "bulge_statistic": morphology.bulge_statistic(meta["gini"], meta["m20"])[parent],
        **{name: meta[name][parent] for name in _SCALARS},
    }


def write_rows(cfg: Config, ctx: Context, out: Path, blocks: store.Blocks, rows: dict[str, np.ndarray],
               attrs: dict, io: str) -> None:
    """Every rank writes its rows: images copied (augmented) from the blocks, scalars from ``rows``."""
    g = cfg.generate
    parent, aug = rows["parent"], rows["augmentation"]

    def pieces(lo: int, hi: int, step: int = 64):
        handles: dict[int, h5py.File] = {}
        try:
            for start in range(lo, hi, step):
                stop = min(hi, start + step)
                data = {name: rows[name][start:stop] for name in rows}
                for name in ("clean", "y10", "y1"):
                    data[name] = np.empty((stop - start, len(g.bands), g.image_size, g.image_size), np.float32)
                for j, r in enumerate(range(start, stop)):
                    b, off = divmod(int(parent[r]), g.block_size)
                    if b not in handles:
                        handles[b] = blocks.open(b)
                    for name in ("clean", "y10", "y1"):
                        data[name][j] = dataset.augment(handles[b][name][off], int(aug[r]))
                yield start, stop, data
        finally:
            for f in handles.values():
                f.close()

    store.write_table(out, columns(len(g.bands), g.image_size), len(parent), pieces, attrs, ctx, io)


def finish(cfg: Config, out: Path) -> list[Path]:
    """Rank 0, after the output: figures, then the checkpoint blocks are removed."""
    figures = out.parent / "figures"
    written = []
    if cfg.generate.figures:
        from .figures import write_figures

        written = write_figures(out)
    if not cfg.generate.keep_parts:
        store.remove_leftovers(out, figures, "generate_")
    return written


def _agreement(intended: np.ndarray, labels: np.ndarray) -> dict:
    """How often the G-M20 label matches the class the generator intended (synthetic data only)."""
    known = (intended >= 0) & (labels >= 0)
    if not known.any():
        return {}
    confusion = np.zeros((3, 3), dtype=np.int64)
    np.add.at(confusion, (intended[known], labels[known]), 1)
    return {"label_agreement": float(np.mean(intended[known] == labels[known])),
            "label_confusion_intended_by_gm20": confusion}
