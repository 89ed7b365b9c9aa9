"""Run configuration: YAML presets, ``--set key=value`` overrides, one validation at load.

A configuration is a two-level mapping (``section.key``, and ``section.sub.key`` for a few grouped
settings). Every leaf is declared once in :data:`SCHEMA` with its type, default, allowed range and a
sentence of documentation; :func:`load` merges preset, user file and overrides, validates the result
against the schema and returns a read-only :class:`Config`. Past this boundary the stages trust it.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml


from .errors import ConfigError  # noqa: F401 - raised here, defined with the other user errors


@dataclass(frozen=True)
class Field:
    """One configuration leaf.

    ``kind`` is the Python type of the value (``float`` also accepts ints). ``item`` is the element
    type of a list, ``length`` its required length. ``low``/``high`` bound numbers (and every element
    of a numeric list); ``choices`` enumerates allowed values.
    """

    default: Any
    kind: type
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    item: type | None = None
    length: int | None = None
    nullable: bool = False


# The training variants (hpcmorph/train/variants.py describes each; a test keeps the two lists alike).
TRAIN_VARIANTS = ("regular", "mmd", "coral", "dann", "sinkhorn", "adversarial", "adversarial+mmd")


def _range(low, high, doc, default):
    """A [min, max] pair of floats, e.g. a uniform distribution's bounds."""
    return Field(default, list, doc, low=low, high=high, item=float, length=2)


SCHEMA: dict[str, Any] = {
    "run": {
        "name": Field(None, str, "Name of the run; outputs go to <root>/<name>/. Default: the preset or file name.", nullable=True),
        "root": Field("runs", str, "Directory holding all runs (relative to the working directory)."),
        "seed": Field(0, int, "Master seed. Every random draw derives from (seed, item index), never from the rank.", low=0),
        "io": Field("auto", str, "HDF5 output path: 'mpio' (one file, collective writes; needs h5py built with MPI), "
                    "'shards' (one file per rank, joined by rank 0), or 'auto' (mpio when available).",
                    choices=("auto", "mpio", "shards")),
        "progress": Field(True, bool, "Show progress bars (rank 0 only)."),
    },
    "generate": {
        "source": Field("synthetic", str, "Where galaxies come from: 'synthetic' (GalSim profiles drawn here), "
                        "'cutouts' (noiseless images from a FITS or HDF5 cube, observed here), or 'observed' "
                        "(already-observed .npy arrays in the authors' released layout).",
                        choices=("synthetic", "cutouts", "observed")),
        "n_galaxies": Field(300, int, "Number of parent galaxies to draw (synthetic source), before merger augmentation.", low=1),
        "image_size": Field(100, int, "Stamp size, pixels (square).", low=16, high=1024),
        "pixel_scale": Field(0.2, float, "Pixel scale, arcsec/pixel (LSST: 0.2).", low=0.01, high=5.0),
        "bands": Field(["g", "r", "i"], list, "LSST bands, in channel order.", item=str, choices=("g", "r", "i")),
        "y1_fraction": Field(0.1, float, "Y1 exposure as a fraction of the Y10 (ten-year) exposure.", low=1e-4, high=1.0),
        "psf_fwhm_scatter": Field(0.0, float, "Relative per-galaxy scatter of the atmospheric FWHM (0 = survey median seeing).", low=0.0, high=0.5),
        "label_band": Field("r", str, "Band whose noiseless image Gini and M20 are measured on.", choices=("g", "r", "i")),
        "class_fractions": Field([0.4, 0.35, 0.25], list, "Intended spiral, elliptical, merger fractions of the synthetic draw.",
                                 item=float, length=3, low=0.0, high=1.0),
        "augment_mergers": Field(True, bool, "Augment mergers by up/down flip, 90 and 180 degree rotation, as the paper does, "
                                 "towards the count of the largest other class (at most 3 copies per merger)."),
        "split": Field([0.7, 0.1, 0.2], list, "Train, validation, test fractions (stratified by label, per parent galaxy).",
                       item=float, length=3, low=0.0, high=1.0),
        "block_size": Field(32, int, "Galaxies per checkpoint block; a killed run resumes at block granularity.", low=1),
        "keep_parts": Field(False, bool, "Keep the per-block checkpoint files after the output is complete."),
        "figures": Field(True, bool, "Write the Figure-1 mosaic, the G-M20 plane and the class table next to the output."),
        "spiral": {
            "mag_r": _range(10, 30, "r-band AB magnitude range (uniform).", [16.5, 19.0]),
            "hlr": _range(0.1, 20, "Disk half-light radius range, arcsec (log-uniform).", [1.2, 3.5]),
            "q": _range(0.05, 1, "Disk axis ratio range (uniform).", [0.35, 1.0]),
            "bulge_fraction": _range(0, 1, "Bulge share of r-band flux (uniform).", [0.03, 0.2]),
            "arm_fraction": _range(0, 1, "Spiral-arm share of r-band flux (uniform).", [0.15, 0.35]),
            "knot_fraction": _range(0, 1, "Star-forming-knot share of r-band flux (uniform).", [0.05, 0.15]),
        },
        "elliptical": {
            "mag_r": _range(10, 30, "r-band AB magnitude range (uniform).", [16.0, 18.5]),
            "hlr": _range(0.1, 20, "Half-light radius range, arcsec (log-uniform).", [0.8, 2.5]),
            "q": _range(0.05, 1, "Axis ratio range (uniform).", [0.55, 1.0]),
            "sersic_n": _range(0.5, 6.2, "Sersic index range (uniform, rounded to 0.25).", [3.0, 4.5]),
        },
        "merger": {
            "mag_r": _range(10, 30, "Total r-band AB magnitude range (uniform).", [16.0, 18.5]),
            "hlr": _range(0.1, 20, "Half-light radius range of the primary progenitor, arcsec (log-uniform).", [0.5, 1.5]),
            "separation": _range(0, 20, "Projected separation of the two nuclei, arcsec (uniform).", [2.0, 5.0]),
            "flux_ratio": _range(1, 100, "Primary-to-secondary flux ratio (uniform).", [1.0, 2.5]),
            "tidal_fraction": _range(0, 1, "Tidal-tail share of r-band flux (uniform).", [0.1, 0.3]),
        },
        "cutouts": {
            "path": Field(None, str, "FITS (primary HDU) or HDF5 file holding noiseless cutouts (N, bands, H, W).", nullable=True),
            "dataset": Field("images", str, "HDF5 dataset name inside 'path'."),
            "units": Field("e-/s", str, "Pixel units of the cutouts: 'e-/s' (LSST count rate per pixel) or 'nanomaggies' (AB, per pixel).",
                           choices=("e-/s", "nanomaggies")),
            "pixel_scale": Field(0.2, float, "Pixel scale of the cutouts, arcsec/pixel (resampled to generate.pixel_scale).", low=0.001, high=10.0),
        },
        "observed": {
            "y10": Field(None, str, "Path of the Y10 .npy array (N, 3, H, W).", nullable=True),
            "y1": Field(None, str, "Path of the Y1 .npy array (N, 3, H, W).", nullable=True),
            "labels": Field(None, str, "Path of the labels .npy array: one-hot (N, 3), columns spiral, elliptical, merger; "
                            "or integer class indices (N,), 0 spiral, 1 elliptical, 2 merger.", nullable=True),
        },
    },
    "train": {
        "variants": Field(["regular", "mmd"], list, "Models to train: 'regular' (cross-entropy on Y10); 'mmd', 'coral', "
                          "'dann', 'sinkhorn' (plus a domain term between the Y10 and Y1 latents, each weighed by its "
                          "train.*_lambda; Y1 labels are never read). docs/train.md 'Variants'.",
                          item=str, choices=TRAIN_VARIANTS),
        "arch": Field("resnet18", str, "Classifier: 'resnet18' (the paper's) or 'convnet' (the extended paper's "
                      "three-convolution CNN); both end in the same 256-d latent and linear head.",
                      choices=("resnet18", "convnet")),
        "seeds": Field([0], list, "Training seeds; each variant is trained once per seed (for error bars).", item=int, low=0),
        "backend": Field("auto", str, "Data-parallel backend: 'none' (one process), 'horovod', 'ddp' (torch "
                         "DistributedDataParallel), or 'auto' (none on one rank, else horovod if importable, else ddp).",
                         choices=("auto", "none", "horovod", "ddp")),
        "epochs": Field(100, int, "Maximum epochs.", low=1),
        "patience": Field(10, int, "Early stopping: epochs without a lower validation loss before stopping.", low=1),
        "batch_size": Field(128, int, "Global batch size, split evenly across ranks.", low=1),
        "lr": Field(1e-5, float, "Adam learning rate (the peak rate under a schedule).", low=0.0, high=1.0),
        "schedule": Field("constant", str, "Learning rate over the run: 'constant' (the paper) or 'cosine' (from "
                          "train.lr down to 0 at the end of train.epochs, step by step: the late epochs take "
                          "small steps, so the validation loss settles and early stopping keeps a typical epoch).",
                          choices=("constant", "cosine")),
        "betas": Field([0.7, 0.8], list, "Adam betas.", item=float, length=2, low=0.0, high=0.9999),
        "weight_decay": Field(1e-3, float, "Adam weight decay of the regular model.", low=0.0),
        "weight_decay_mmd": Field(1e-4, float, "Adam weight decay of the domain-adapted models (mmd, coral, dann, "
                                  "sinkhorn: the authors' MMD value).", low=0.0),
        "mmd_lambda": Field(0.05, float, "Weight of the MMD term (the paper: 0.05; the authors' code: 0.01).", low=0.0),
        "mmd_bandwidth": Field("batch", str, "MMD kernel widths: 'batch' (5 Gaussians scaled from the batch) or "
                               "'fixed' (the authors' 19 fixed widths).", choices=("batch", "fixed")),
        "coral_lambda": Field(1.0, float, "Weight of the CORAL term (Sun & Saenko 2016: |C_Y10 - C_Y1|_F^2 / (4 d^2) "
                              "of the latent covariances).", low=0.0),
        "dann_lambda": Field(1.0, float, "Weight of DANN's domain-classifier loss (Ganin et al. 2016); the gradient "
                             "reversal ramps from 0 to 1 over training as 2 / (1 + exp(-10 p)) - 1.", low=0.0),
        "sinkhorn_lambda": Field(1.0, float, "Weight of the Sinkhorn divergence between the Y10 and Y1 latents.",
                                 low=0.0),
        "sinkhorn_blur": Field(0.05, float, "Sinkhorn's blur, latent units: the entropic regularisation is "
                               "epsilon = blur^2 with the cost |x - y|^2 / 2 (geomloss's convention).",
                               low=1e-4, high=100.0),
        "dropout": Field(0.5, float, "Dropout on the last feature map.", low=0.0, high=0.99),
        "eval_batch_size": Field(256, int, "Batch size for validation and test inference, per rank.", low=1),
        "normalize_per_band": Field(False, bool, "Fit the asinh stretch's percentiles per band (default: over all "
                                    "bands together, as the authors)."),
        "max_train_images": Field(0, int, "Use at most this many training images (0 = all): for quick runs.", low=0),
        "threads": Field(0, int, "torch CPU threads per rank (0 = torch's default).", low=0),
        "precision": Field("fp32", str, "Arithmetic of the training steps' forward and backward passes: 'fp32', "
                           "'bf16' (autocast to bfloat16), 'fp16' (autocast to float16 with loss scaling) or 'auto' "
                           "(bf16 where the device computes it natively: GPUs from Ampere on, CPUs with AMX or "
                           "AVX512-BF16; fp16 on older GPUs; else fp32). Weights, losses, validation and test stay "
                           "float32. docs/train.md 'Precision'.", choices=("auto", "fp32", "bf16", "fp16")),
        "compression": Field("none", str, "Precision of the gradients the ranks exchange: 'none' (float32), 'fp16' "
                             "(Horovod's compression or DDP's fp16 hook) or 'bf16' (DDP's hook only).",
                             choices=("none", "fp16", "bf16")),
        "adversarial_fraction": Field(0.5, float, "Adversarial training: the chance that each image of a training "
                                      "batch is drawn for a one-pixel attack against the current weights (drawn "
                                      "from the seed, epoch, step and the image alone; a drawn image the model "
                                      "misclassifies stays as it is). docs/train.md 'Adversarial training'.",
                                      low=0.0, high=1.0),
        "adversarial_queries": Field(64, int, "Adversarial training: the saliency search's query budget per attacked "
                                     "image, its gradient counted as 3 queries (so at least 4).", low=4),
    },
    "attack": {
        "variants": Field(["regular", "mmd"], list, "Trained models to attack (the same images for each).",
                          item=str, choices=TRAIN_VARIANTS),
        "model_seed": Field(None, int, "Training seed of the models to attack (default: the first of train.seeds; "
                            "analyze.all_seeds makes `hpcmorph run` attack every seed's).", low=0, nullable=True),
        "n_images": Field(150, int, "Test images to attack, drawn reproducibly (from run.seed) from the Y10 test split.", low=1),
        "only_correct": Field(True, bool, "Attack only images every attacked model classifies correctly (the others are "
                              "skipped and counted): flipping a wrong answer means nothing."),
        "mode": Field("targeted", str, "'targeted': attack each other class in turn (success when its probability "
                      "exceeds attack.threshold), as the authors; 'untargeted': success when the prediction changes.",
                      choices=("targeted", "untargeted")),
        "pixels": Field(1, int, "Pixels changed per candidate (k): 1 is the one-pixel attack.", low=1, high=64),
        "method": Field("de", str, "Attack method: 'de' (Su et al.'s differential evolution, the paper's), "
                        "'exhaustive' (every single-pixel candidate at a corner of the value box, each band at its "
                        "lower or upper bound: ground truth for k = 1), 'sparse-rs' (random search over corner "
                        "pixels, Croce et al. 2022) or 'saliency' (the attacked model's gradient ranks the corner "
                        "candidates, then random search).", choices=("de", "exhaustive", "sparse-rs", "saliency")),
        "population": Field(400, int, "Differential-evolution population per attack (Su et al.: 400).", low=4),
        "generations": Field(80, int, "DE generations after the initial population (the authors: 80); an attack "
                             "costs at most population x (generations + 1) model queries.", low=0),
        "mutation": Field(0.5, float, "DE differential weight F (Su et al.: 0.5).", low=0.0, high=2.0),
        "crossover": Field(1.0, float, "Binomial crossover probability; 1.0 takes every gene from the mutant, i.e. "
                           "no crossover, as Su et al.",
                           low=0.0, high=1.0),
        "fitness": Field("probability", str, "DE fitness: 'probability' (the authors': the target's probability, which "
                         "saturates far from success) or 'margin' (the target's logit minus the largest other).",
                         choices=("probability", "margin")),
        "max_queries": Field(2100, int, "Model queries per attack at most, for 'sparse-rs' and 'saliency' (whose "
                             "gradient counts as 3 queries). 'de' costs population x (generations + 1), 'exhaustive' "
                             "H x W x 2^bands candidates per image.", low=1),
        "early_exit": Field(True, bool, "Exhaustive search: stop an attack at its first success; false scans every "
                            "candidate and counts those that succeed (column flips)."),
        "certify": Field(False, bool, "At k = 1: for every image the attack failed on, classify every single-pixel "
                         "corner candidate (the exhaustive search's) and store whether any reaches each target "
                         "(columns certified*): the exact one-pixel (corner) vulnerability and the search's "
                         "coverage. The exhaustive method is its own certificate."),
        "certify_precision": Field("auto", str, "Certification's screen, which picks the candidates the model "
                                   "classifies (only the model in float32 decides): 'float32' (the model's own "
                                   "arithmetic, recomputing only what the pixel reaches), 'bfloat16' (a bfloat16 copy "
                                   "of the model) or 'auto' (bfloat16 where the device computes it natively, else "
                                   "float32).", choices=("auto", "float32", "bfloat16")),
        "certify_tolerance": Field(0.5, float, "Certification with the bfloat16 screen: candidates whose screened "
                                   "goal margin (nats) comes within this of success are classified by the model (at "
                                   "least 4x the screen's error measured on each image; the float32 screen's is 1e-3 "
                                   "nats).", low=1e-9),
        "rs_alpha": Field(0.8, float, "Sparse-RS (and saliency's refinement): fraction of the k pixels moved per step "
                          "at the start of the paper's schedule (alpha_init; the authors' code: 0.8).",
                          low=0.001, high=1.0),
        "proposals": Field(1, int, "Sparse-RS and saliency: candidates each attack puts to the model per step, all "
                           "counted as queries. 1 is the paper's random search; more fill the forward passes (a pass "
                           "of a few images costs nearly what one of a hundred does) for a few queries more per flip.",
                           low=1),
        "saliency_top": Field(500, int, "Saliency: gradient-ranked candidates classified at most before the "
                              "refinement (saliency_radius) takes the rest of the budget.", low=1),
        "saliency_radius": Field(0, int, "Saliency at k = 1: after the ranked candidates, a best-first search "
                                 "around the best candidates classified so far, shared by the targets of an image "
                                 "(the other corners of their pixel and their corner at the 8 pixels around, then "
                                 "rings 1 pixel wider around a candidate that stays the best, up to this many "
                                 "pixels); 0: random search (Sparse-RS) instead.", low=0, high=16),
        "pixel_range": Field(None, list, "Bounds [min, max] of the values a candidate sets, in normalised (model input) "
                             "units, every band. Default (null): the range of the normalised data, i.e. the attacked "
                             "model's asinh stretch of its clip limits (about [0.46, 0.886]); [0, 1] is the authors' "
                             "range.", item=float, length=2, nullable=True),
        "threshold": Field(0.5, float, "A targeted attack succeeds when the target's probability exceeds this.",
                           low=0.0, high=1.0),
        "precision": Field("auto", str, "Arithmetic of the search's forward passes: 'fp32', 'bf16' or 'fp16' (a "
                           "copy of the model in that precision, batch norms folded; a candidate near its goal is "
                           "classified again in float32, which alone decides a success, a query of the attack) or "
                           "'auto' (bf16 where the device computes it natively, fp16 on older GPUs, else fp32). The "
                           "exhaustive search, the ground truth, stays fp32. docs/attack.md 'Precision'.", choices=("auto", "fp32", "bf16", "fp16")),
        "images_per_batch": Field(8, int, "Images attacked together (all their targets) in one batched DE run; "
                                  "also the checkpoint block. Part of the output's digest: on some CPUs the last bits of a "
                                  "forward pass depend on which images share it.", low=1),
        "forward_batch": Field(1024, int, "Most candidate images per forward pass (memory bound; raise on GPUs). "
                               "Part of the output's digest, like images_per_batch.", low=2),
        "threads": Field(0, int, "torch CPU threads per rank (0 = torch's default).", low=0),
        "figures": Field(True, bool, "Write the query histogram, success-by-class and example figures."),
        "keep_parts": Field(False, bool, "Keep the per-block checkpoint files after the output is complete."),
    },
    "analyze": {
        "k_sweep": Field([1], list, "Pixel counts k of the attacks whose success is plotted against k; `hpcmorph run` "
                         "runs the attack once per k (attack.pixels set to k). Table 2 and the church windows use "
                         "the attack with k = attack.pixels.", item=int, low=1, high=64),
        "compare_methods": Field(None, list, "Attack methods also run at k = 1 on the same images, to compare methods "
                                 "(success against queries): e.g. [exhaustive] adds the ground truth of what one "
                                 "pixel can do. `hpcmorph run` runs them; analyze reads every current k = 1 attack "
                                 "of this config it finds, whichever method and range.", item=str,
                                 choices=("de", "exhaustive", "sparse-rs", "saliency"), nullable=True),
        "all_seeds": Field(False, bool, "Attack and analyse the models of every seed of train.seeds, not only "
                           "attack.model_seed's: `hpcmorph run` runs each seed's attacks of analyze.k_sweep and "
                           "analyze.compare_ranges (attack-s<seed>*.h5), and the analysis gives each number as a "
                           "mean and spread over seeds."),
        "compare_ranges": Field(False, bool, "Also attack at k = 1 (attack.method and each of "
                                "analyze.compare_methods) in the other value range: [0, 1], the authors', when "
                                "attack.pixel_range is the data's, else the data's."),
        "exposure_fractions": Field([0.1, 0.2, 0.3, 0.5, 0.7, 1.0], list, "Exposures, as fractions of the ten-year "
                                    "(Y10) exposure, at which the test galaxies' noiseless images are observed "
                                    "again for the accuracy-against-exposure curve (0.1 = Y1, 1.0 = Y10).",
                                    item=float, low=1e-4, high=1.0),
        "triplet": Field(None, int, "Test-image row (in galaxies.h5) of the (Y10, Y1, attacked) triplet drawn in the "
                         "church windows and isomaps. Default (null): the first image flipped for both variants, "
                         "preferring one whose Y1 image the regular model gets wrong (as in the paper's Figure 2).",
                         low=0, nullable=True),
        "church_extent": Field(1.1, float, "Church windows span [-extent, extent] along both directions (the paper: 1.1).",
                               low=0.01, high=100.0),
        "church_step": Field(0.01, float, "Church-window grid step (the paper: 0.01).", low=1e-4, high=1.0),
        "church_orthogonal": Field(False, bool, "Orthogonalise the noise direction against the attack direction "
                                   "(the traditional church window) instead of the paper's raw directions."),
        "isomap_images": Field(250, int, "Random test images in each isomap (the paper: 250).", low=10),
        "isomap_neighbors": Field(5, int, "Isomap n_neighbors (the paper: 5).", low=2),
        "calibration_bins": Field(15, int, "Equal-width confidence bins over [0, 1] of the expected calibration error "
                                  "(top-label ECE) and the reliability diagram.", low=1, high=1000),
        "batch_size": Field(256, int, "Images per forward pass when computing latents, per rank.", low=1),
        "threads": Field(0, int, "torch CPU threads per rank (0 = torch's default).", low=0),
        "figures": Field(True, bool, "Write the church windows, isomaps, exposure and k figures."),
    },
    "report": {
        "title": Field(None, str, "Title of the report page. Default: 'hpcmorph report: <run.name>'.", nullable=True),
        "screenshot": Field(False, bool, "Also take a PNG screenshot of the page with headless Chromium "
                            "(Debian's chromium package) and check that every figure loaded."),
    },
}


def _leaves(schema: Mapping, prefix: str = ""):
    for key, node in schema.items():
        path = f"{prefix}{key}"
        if isinstance(node, Field):
            yield path, node
        else:
            yield from _leaves(node, path + ".")


FIELDS: dict[str, Field] = dict(_leaves(SCHEMA))


def defaults() -> dict:
    """The schema's defaults as a nested dict."""
    out: dict = {}
    for path, field in FIELDS.items():
        _set(out, path, copy.deepcopy(field.default))
    return out


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and path not in FIELDS:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def _nearest(path: str) -> str:
    close = difflib.get_close_matches(path, FIELDS, n=1, cutoff=0.0)
    return close[0] if close else ""


def _check(path: str, value: Any, source: str) -> Any:
    """Validate one leaf; return it normalised (ints promoted to floats where floats are expected)."""
    field = FIELDS.get(path)
    if field is None:
        raise ConfigError(f"{source}: unknown key '{path}'; did you mean '{_nearest(path)}'?")
    where = f"{source}: '{path}'"
    if value is None:
        if field.nullable:
            return None
        raise ConfigError(f"{where} must be set ({field.doc})")

    def scalar(v, kind, what):
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if kind is float and isinstance(v, str):
            # YAML 1.1 reads 1e-4 (no dot) as a string.
            try:
                v = float(v)
            except ValueError:
                pass
        if kind is int and isinstance(v, bool) or not isinstance(v, kind):
            raise ConfigError(f"{where}: expected {what} of type {kind.__name__}, got {v!r} ({type(v).__name__})")
        if kind in (int, float):
            if v != v:  # NaN
                raise ConfigError(f"{where}: expected a number, got NaN")
            if field.low is not None and v < field.low or field.high is not None and v > field.high:
                raise ConfigError(f"{where}: {v!r} is out of range [{field.low}, {field.high}]")
        if field.choices is not None and v not in field.choices:
            raise ConfigError(f"{where}: {v!r} is not one of {', '.join(map(repr, field.choices))}")
        return v

    if field.kind is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list of {field.item.__name__}, got {value!r}")
        if field.length is not None and len(value) != field.length:
            raise ConfigError(f"{where}: expected {field.length} values, got {len(value)} ({value!r})")
        if not value:
            raise ConfigError(f"{where}: expected a non-empty list")
        return [scalar(v, field.item, "each element") for v in value]
    return scalar(value, field.kind, "a value")


def _check_relations(flat: dict[str, Any], source: str) -> None:
    """Constraints that involve more than one field."""
    for path, field in FIELDS.items():
        if field.length == 2 and field.item is float and flat[path] is not None and flat[path][0] > flat[path][1]:
            raise ConfigError(f"{source}: '{path}' must be [min, max] with min <= max, got {flat[path]}")
    for path in ("generate.split", "generate.class_fractions"):
        if abs(sum(flat[path]) - 1.0) > 1e-6:
            raise ConfigError(f"{source}: '{path}' must sum to 1, got {flat[path]} (sum {sum(flat[path]):g})")
    if flat["generate.label_band"] not in flat["generate.bands"]:
        raise ConfigError(f"{source}: 'generate.label_band' {flat['generate.label_band']!r} is not one of "
                          f"generate.bands {flat['generate.bands']}")
    method, k = flat["attack.method"], flat["attack.pixels"]
    if method == "exhaustive" and k != 1:
        raise ConfigError(f"{source}: 'attack.pixels' is {k}, but attack.method 'exhaustive' searches single pixels: "
                          f"set attack.pixels=1 or choose another attack.method (de, sparse-rs, saliency)")
    if method == "saliency" and flat["attack.max_queries"] <= 3:
        raise ConfigError(f"{source}: 'attack.max_queries' is {flat['attack.max_queries']}, but attack.method "
                          f"'saliency' counts its gradient as 3 queries: set at least 4")
    src = flat["generate.source"]
    need = {"cutouts": ["generate.cutouts.path"],
            "observed": ["generate.observed.y10", "generate.observed.y1", "generate.observed.labels"]}.get(src, [])
    for path in need:
        if flat[path] is None:
            raise ConfigError(f"{source}: generate.source is {src!r} but '{path}' is not set")


class Config:
    """A validated, read-only configuration. ``cfg.generate.spiral.hlr`` or ``cfg['generate.n_galaxies']``."""

    def __init__(self, tree: Mapping, name: str = "config"):
        self._tree = copy.deepcopy(dict(tree))
        self.name = name

    def __getattr__(self, key: str):
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            node = self._tree[key]
        except KeyError:
            raise AttributeError(f"config has no section or key {key!r}") from None
        return Config(node, self.name) if isinstance(node, Mapping) else copy.deepcopy(node)

    def __getitem__(self, path: str):
        node: Any = self._tree
        for part in path.split("."):
            node = node[part]
        return copy.deepcopy(node)

    def to_dict(self) -> dict:
        return copy.deepcopy(self._tree)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self._tree, sort_keys=False)

    def updated(self, values: Mapping[str, Any]) -> Config:
        """A copy with some ``section.key`` paths set (validated like ``--set``), e.g. ``{"attack.pixels": 2}``."""
        tree = self.to_dict()
        for key, value in values.items():
            _set(tree, key, _check(key, value, "updated config"))
        _check_relations(_flatten(tree), "updated config")
        return Config(tree, name=self.name)

    def digest(self, *sections: str) -> str:
        """Stable hash of the named sections (or paths), used to tell whether an output is current."""
        parts = {s: self[s] for s in (sections or tuple(self._tree))}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


PRESETS = ("laptop", "paper", "tiny", "zoo")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _preset_text(name: str) -> Path:
    return Path(str(resources.files("hpcmorph") / "configs" / f"{name}.yaml"))


def _resolve(ref: str, seen: tuple = ()) -> tuple[dict, str]:
    """Read a preset name or a YAML path, following ``extends:`` chains."""
    path = Path(ref)
    if not path.suffix and not path.exists():
        if ref not in PRESETS:
            close = difflib.get_close_matches(ref, PRESETS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown preset '{ref}' (presets: {', '.join(PRESETS)}; or give a .yaml path){hint}")
        path = _preset_text(ref)
    if str(path.resolve()) in seen:
        raise ConfigError(f"{path}: 'extends' loops back on itself")
    data = _read_yaml(path)
    base = data.pop("extends", None)
    tree = defaults()
    if base is not None:
        base_ref = base if base in PRESETS else str(path.parent / base)
        tree, _ = _resolve(base_ref, seen + (str(path.resolve()),))
    for key, value in _flatten(data).items():
        _set(tree, key, _check(key, value, str(path)))
    return tree, path.stem


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key=value``; the value is read as YAML (``3``, ``0.5``, ``[1, 2]``, ``true``, ``null``)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load(ref: str = "laptop", overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a preset name or YAML path, apply ``key=value`` overrides, validate, return a Config."""
    tree, stem = _resolve(ref)
    for text in overrides:
        key, value = parse_override(text)
        _set(tree, key, _check(key, value, "--set"))
    flat = _flatten(tree)
    _check_relations(flat, ref)
    if tree["run"]["name"] is None:
        tree["run"]["name"] = stem
    return Config(tree, name=tree["run"]["name"])


def from_yaml_text(text: str) -> Config:
    """Rebuild a Config from the YAML stored in an output file's attributes (validated again)."""
    tree = defaults()
    for key, value in _flatten(yaml.safe_load(text) or {}).items():
        _set(tree, key, _check(key, value, "stored config"))
    _check_relations(_flatten(tree), "stored config")
    return Config(tree, name=tree["run"]["name"])
