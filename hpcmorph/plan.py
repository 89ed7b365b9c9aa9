"""``hpcmorph plan``: the work of every stage, the throughput it assumes, the wall time it predicts.

    hpcmorph plan --config paper --ranks 8 --device cuda
    hpcmorph plan --config laptop --calibrate            # measure the figures on this machine first
    hpcmorph plan --config tiny --json

For each stage the work is counted as the stage does it (from ``galaxies.h5`` and the attack outputs
when they exist under ``<run.root>/<run.name>/``, else estimated from the config):

- generate: parent galaxies, drawn in blocks of ``generate.block_size`` dealt round-robin to the
  ranks; the rows written after merger augmentation;
- train: per variant and seed, at most ``train.epochs`` epochs (early stopping may end it sooner)
  of the rank's shard of the training rows (MMD: and as many Y1 images), a validation pass per
  epoch and the Y10 and Y1 test sets;
- attack (once per k: ``attack.pixels`` then the rest of ``analyze.k_sweep``; with ``attack.certify``
  the k = 1 attacks' certifying scan too, at most every image x H x W x 2^bands): at most images x
  targets x population x (generations + 1) model queries per model, in blocks of
  ``attack.images_per_batch`` images dealt round-robin; the expected queries from the
  success-against-queries curve of an existing attack output of the run, where one exists;
- analyze: latents of the Y10 and Y1 test images and the attacked images, the test images observed
  again at every exposure fraction and classified;
- report: a fixed cost.

Each term is work / (per-rank throughput x ranks sharing it); a figure is either measured here by
``--calibrate`` (``hpcmorph/calibrate.py``, stored as ``calibration-<device>.json`` under the run)
or taken from :data:`ASSUMED`, a stated table per device type, and every line says which. Several
ranks are assumed to scale with the stated efficiencies of :data:`EFFICIENCY` (assumed too).

``hpcmorph submit`` asks for :func:`limit_seconds` of each job's predicted time as its wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import UserError
from .stages import GPU_STAGES
from .stages import NAMES as STAGES
from .stages import STAGES as STAGE_TABLE

DEVICES = ("cpu", "cuda")

# Per-rank figures when nothing was measured here, each at a reference image size and scaled by
# the pixel count to the config's. cpu: one rank with 2 threads of this project's 2-core x86 test
# machine, from the README's benchmarks (generate 21.6 galaxies/s; training 63 images/s at 100 x 100
# -> ~150 at 64 x 64; inference ~450 images/s and the attack at 0.94 of it; MMD costs 2x).
# cuda: NOT measured (no GPU has run this code yet): order-of-magnitude guesses for one
# A100/H200-class GPU per rank, fp32, deterministic cuDNN. Replace either with --calibrate.
ASSUMED = {
    "cpu": {"reference_size": 64, "generate": 21.6, "train_regular": 150.0, "train_mmd": 75.0, "infer": 450.0,
            "embed": 450.0, "attack": 420.0, "reobserve": 300.0, "write": 200.0},
    "cuda": {"reference_size": 100, "train_regular": 2500.0, "train_mmd": 1250.0, "infer": 15000.0,
             "embed": 15000.0, "attack": 13500.0},
}
# Figures of loops that run on the CPU whatever the device (GalSim, HDF5).
CPU_FIGURES = ("generate", "reobserve", "write")
UNITS = {"generate": "galaxies/s", "train_regular": "images/s", "train_mmd": "labelled images/s",
         "infer": "images/s", "embed": "images/s", "attack": "candidates/s", "reobserve": "observations/s",
         "write": "MB/s"}
# Figures that do not scale with the image size (MB/s).
_UNSCALED = ("write",)
# Assumed per stage (the table says where from): fixed seconds, and parallel efficiency beyond one rank.
FIXED = {s.name: s.fixed_s for s in STAGE_TABLE}
EFFICIENCY = {s.name: s.efficiency for s in STAGE_TABLE}
# The wall time asked for a job: factor x predicted + fixed, rounded up to ROUND seconds. The
# factor is larger when any figure of the stage is assumed rather than measured here.
MARGIN = {"calibrated": 1.5, "assumed": 3.0}
MARGIN_FIXED_S = 600
ROUND_S = 300


class PlanError(UserError):
    """A plan that cannot be made as asked (bad --ranks, unknown device): one line, exit 2."""


# ------------------------------------------------------------------------------------ figures

@dataclass(frozen=True)
class Rate:
    """A per-rank throughput: ``per_s`` units per second; ``source`` says where it comes from."""

    name: str
    per_s: float
    unit: str
    assumed: bool
    source: str

    def describe(self) -> str:
        return f"{_num(self.per_s)} {self.unit} per rank [{self.source}]"


class Figures:
    """The per-rank throughputs of one device type for a config: measured here or assumed."""

    def __init__(self, cfg, device: str, calibration: dict | None = None):
        self.cfg, self.device, self.calibration = cfg, device, calibration
        self.size = cfg.generate.image_size

    def __call__(self, name: str) -> Rate:
        # The CPU-side loops run on the CPU whatever the ranks' device: a GPU node's calibration
        # measured them on that node's CPU.
        device = "cpu" if name in CPU_FIGURES else self.device
        cal = self.calibration
        found = (cal or {}).get("rates", {}).get(name)
        if found and found.get("per_s", 0) > 0:
            measured_at = found.get("image_size", self.size)
            scale = 1.0 if name in _UNSCALED else (measured_at / self.size) ** 2
            where = f"calibrated on {cal.get('host', '?')} {str(cal.get('date', '?'))[:10]}"
            if scale != 1.0:
                where += f", scaled from {measured_at}x{measured_at}"
            return Rate(name, found["per_s"] * scale, found.get("unit", UNITS[name]), False, where)
        table = ASSUMED[device]
        ref = table["reference_size"]
        scale = 1.0 if name in _UNSCALED else (ref / self.size) ** 2
        note = f"assumed: {device} table" + ("" if scale == 1.0 else f", scaled from {ref}x{ref}")
        return Rate(name, table[name] * scale, UNITS[name], True, note)


# --------------------------------------------------------------------------------------- work

@dataclass
class Term:
    """One part of a stage's time: ``work`` units per rank at ``rate`` (or fixed ``seconds``)."""

    what: str
    work: float
    rate: Rate | None
    seconds: float
    expected_seconds: float | None = None

    def as_dict(self) -> dict:
        d = {"what": self.what, "work_per_rank": self.work, "seconds": self.seconds}
        if self.expected_seconds is not None:
            d["expected_seconds"] = self.expected_seconds
        if self.rate is not None:
            d["rate"] = asdict(self.rate)
        return d


@dataclass
class StagePlan:
    stage: str
    ranks: int
    device: str
    gpus_per_rank: int
    work: dict
    terms: list[Term]
    notes: list[str] = field(default_factory=list)

    @property
    def efficiency(self) -> float:
        return 1.0 if self.ranks == 1 else EFFICIENCY[self.stage]

    @property
    def seconds(self) -> float:
        """Predicted wall time, at most (every attack runs its whole budget unless a curve says
        otherwise in ``expected_seconds``; training runs every epoch)."""
        fixed = sum(t.seconds for t in self.terms if t.rate is None)
        return fixed + sum(t.seconds for t in self.terms if t.rate is not None) / self.efficiency

    @property
    def expected_seconds(self) -> float:
        fixed = sum(t.seconds for t in self.terms if t.rate is None)
        varying = sum(t.seconds if t.expected_seconds is None else t.expected_seconds
                      for t in self.terms if t.rate is not None)
        return fixed + varying / self.efficiency

    @property
    def assumed(self) -> list[str]:
        out = [f"fixed {self.stage} cost"] + [f"{t.rate.name} ({t.rate.source})" for t in self.terms
                                              if t.rate is not None and t.rate.assumed]
        if self.ranks > 1:
            out.append(f"{self.stage} parallel efficiency {EFFICIENCY[self.stage]:.2f}")
        return out

    @property
    def calibrated(self) -> bool:
        """Whether every throughput of the stage was measured here (its fixed costs are assumed)."""
        rated = [t for t in self.terms if t.rate is not None]
        return bool(rated) and not any(t.rate.assumed for t in rated)

    def hours(self, ranks_per_node: int) -> dict:
        wall_h = self.seconds / 3600
        nodes = math.ceil(self.ranks / max(1, ranks_per_node))
        gpus = self.ranks * self.gpus_per_rank if self.device == "cuda" else 0
        return {"nodes": nodes, "node_hours": nodes * wall_h, "gpu_hours": gpus * wall_h,
                "rank_hours": self.ranks * wall_h}

    def as_dict(self, ranks_per_node: int) -> dict:
        return {"stage": self.stage, "ranks": self.ranks, "device": self.device, "gpus_per_rank": self.gpus_per_rank,
                "work": self.work, "predicted_seconds": self.seconds, "expected_seconds": self.expected_seconds,
                "parallel_efficiency": self.efficiency, **self.hours(ranks_per_node),
                "terms": [t.as_dict() for t in self.terms], "assumed": self.assumed, "notes": self.notes}


def _term(what: str, work: float, rate: Rate, expected_work: float | None = None) -> Term:
    return Term(what, work, rate, work / rate.per_s,
                None if expected_work is None else expected_work / rate.per_s)


def _bytes_per_image(cfg) -> int:
    return len(cfg.generate.bands) * cfg.generate.image_size ** 2 * 4


@dataclass
class Dataset:
    """Rows of galaxies.h5 per split (exact when the file of this config exists, else estimated)."""

    parents: int
    rows: int
    train: int
    validation: int
    test: int
    exact: bool
    has_clean: bool = True

    def describe(self) -> str:
        how = "from galaxies.h5" if self.exact else "estimated from the config's class fractions"
        return (f"{self.rows:,} rows ({self.train:,} train, {self.validation:,} validation, {self.test:,} test; "
                f"{how})")


def count_parents(cfg) -> int:
    if cfg.generate.source == "synthetic":
        return cfg.generate.n_galaxies
    from .generate.sources import open_source

    return len(open_source(cfg))


def dataset(cfg) -> Dataset:
    """The dataset's rows: read from ``galaxies.h5`` when it is this config's, else estimated: the
    intended class fractions stand for the G-M20 labels, mergers are augmented towards the largest
    other class (at most 3 copies each) and the split fractions cut the rows."""
    import h5py
    import numpy as np

    from . import store
    from .generate import output_path
    from .generate.stage import digest

    path = output_path(cfg)
    if path.exists() and store.output_digest(path) == digest(cfg):
        with h5py.File(path, "r") as f:
            split, label = f["split"][...], f["label"][...]
            parents = int(f.attrs.get("n_parents", len(set(f["parent"][...].tolist()))))
            clean = f["clean"][0] if len(split) else None
        ok = label >= 0
        return Dataset(parents, len(split), int(np.sum((split == 0) & ok)), int(np.sum((split == 1) & ok)),
                       int(np.sum((split == 2) & ok)), True, clean is None or bool(np.all(np.isfinite(clean))))
    g = cfg.generate
    parents = count_parents(cfg)
    spiral, elliptical, merger = g.class_fractions
    extra = min(max(spiral, elliptical) - merger, 3 * merger) if g.augment_mergers else 0.0
    rows = round(parents * (1 + max(0.0, extra)))
    train, val, test = (round(rows * f) for f in g.split)
    return Dataset(parents, rows, train, val, test, False, g.source != "observed")


# --------------------------------------------------------------------------------------- stages

def plan_generate(cfg, ranks: int, figures: Figures, data: Dataset) -> StagePlan:
    g = cfg.generate
    n_blocks = -(-data.parents // g.block_size)
    sizes = [min(g.block_size, data.parents - b * g.block_size) for b in range(n_blocks)]
    per_rank = max((sum(sizes[r::ranks]) for r in range(min(ranks, n_blocks))), default=0)
    megabytes = data.rows * 3 * _bytes_per_image(cfg) / 2 ** 20
    terms = [_term(f"draw {per_rank:,} galaxies (the busiest rank's blocks)", per_rank, figures("generate")),
             # Rank 0 reads the blocks back and the ranks write the rows together: counted once, unshared.
             _term(f"write {megabytes:,.0f} MB (clean, Y10, Y1 of every row)", megabytes, figures("write")),
             Term("fixed: labels, split, figures", 0, None, FIXED["generate"])]
    work = {"galaxies": data.parents, "blocks": n_blocks, "block_size": g.block_size, "rows": data.rows,
            "rows_exact": data.exact, "megabytes_written": round(megabytes, 1)}
    notes = [] if ranks <= n_blocks else [f"only {n_blocks} blocks: {ranks - n_blocks} ranks idle"]
    return StagePlan("generate", ranks, "cpu", 0, work, terms, notes)


def plan_train(cfg, ranks: int, device: str, gpus: int, figures: Figures, data: Dataset) -> StagePlan:
    t = cfg.train
    n_train = min(data.train, t.max_train_images) if t.max_train_images else data.train
    shard = n_train // ranks
    local_batch = max(1, t.batch_size // ranks)
    steps = -(-shard // local_batch)
    val, test = -(-data.validation // ranks), -(-data.test // ranks)
    runs = [(v, s) for v in t.variants for s in t.seeds]
    terms, notes = [], []
    infer = figures("infer")
    for variant in dict.fromkeys(t.variants):
        n_runs = sum(1 for v, _ in runs if v == variant)
        rate = figures(f"train_{variant}")
        measured = ((figures.calibration or {}).get("rates", {}).get(f"train_{variant}") or {}).get("batch")
        if not rate.assumed and measured and measured != local_batch:
            notes.append(f"train_{variant} was calibrated at a batch of {measured} per rank, this plan's is "
                         f"{local_batch} ({ranks} ranks): calibrate with --ranks {ranks}")
        terms.append(_term(f"{variant}: {n_runs} seed(s) x at most {t.epochs} epochs x {shard:,} images "
                           f"({steps} steps of {local_batch})", n_runs * t.epochs * shard, rate))
    terms.append(_term(f"validation: {len(runs)} run(s) x {t.epochs} epochs x {val:,} images; test: 2 x {test:,}",
                       len(runs) * (t.epochs * val + 2 * test), infer))
    terms.append(Term(f"fixed: {len(runs)} x (data, model, outputs)", 0, None, FIXED["train"] * len(runs)))
    if shard == 0:
        notes.append(f"{n_train} training images cannot be shared by {ranks} ranks (train fails)")
    if t.batch_size % ranks:
        notes.append(f"train.batch_size {t.batch_size} is not divisible by {ranks} ranks (train fails)")
    work = {"variants": list(t.variants), "seeds": list(t.seeds), "training_images": n_train,
            "images_per_rank_per_epoch": shard, "epochs_at_most": t.epochs, "patience": t.patience,
            "steps_per_epoch": steps, "local_batch": local_batch,
            "image_epochs_at_most": len(runs) * t.epochs * n_train, "rows_exact": data.exact}
    notes.append(f"at most: early stopping (patience {t.patience}) may end a run before epoch {t.epochs}")
    return StagePlan("train", ranks, device, gpus if device == "cuda" else 0, work, terms, notes)


def _attack_file(cfg, k_cfg):
    """An existing attack output of the run for this k (else any of the same mode), or None."""
    from .attack.stage import output_path

    exact = output_path(k_cfg)
    if exact.exists():
        return exact
    folder = exact.parent
    for path in sorted(folder.glob("attack*.h5")):
        if ("untargeted" in path.name) == (k_cfg.attack.mode == "untargeted"):
            return path
    return None


def query_curve(path: Path, population: int, generations: int) -> dict | None:
    """Expected queries per attack for a budget of population x (generations + 1), per model, from
    an attack output: a success within the budget costs its queries, anything else the whole
    budget. A curve made with another population is read in generations (rounds). Also the
    success-against-queries curve itself ([queries, fraction succeeded] at each count) and the
    fraction of the test images examined that qualified for the attack (attack.only_correct)."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            variant, success, queries = f["variant"][...], f["success"][...], f["queries"][...]
            names = str(f.attrs["variant_names"]).split(",")
            pop0 = int(f.attrs["population"])
            qualified = int(f.attrs["n_images"]) / max(1, int(f.attrs["examined"]))
    except (OSError, KeyError, ValueError):
        return None
    if len(queries) == 0:
        return None
    budget = population * (generations + 1)
    out = {"file": path.name, "budget": budget, "qualified": qualified, "per_attack": {}, "curve": {}}
    for v, name in enumerate(names):
        sel = variant == v
        if not sel.any():
            continue
        q = queries[sel] * (population / pop0)
        ok = success[sel] & (q <= budget)
        cost = np.where(ok, q, budget)
        out["per_attack"][name] = float(cost.mean())
        steps = np.unique(q[ok])
        out["curve"][name] = [[float(s), float(np.mean(ok & (q <= s)))] for s in steps]
    return out


def _busiest(images: int, per_batch: int, targets: int, n_variants: int, ranks: int) -> tuple[int, int]:
    """(attacks on the busiest rank, blocks): blocks of ``per_batch`` images of one model (all their
    targets), dealt round-robin to the ranks as the stage deals them."""
    blocks = [min(per_batch, images - s) * targets for _ in range(n_variants) for s in range(0, images, per_batch)]
    return max((sum(blocks[r::ranks]) for r in range(min(ranks, len(blocks)))), default=0), len(blocks)


def plan_attack(cfg, ranks: int, device: str, gpus: int, figures: Figures, data: Dataset) -> StagePlan:
    from .attack import configs as attack_configs
    from .attack import output_path as attack_output
    from .attack.corners import Box
    from .attack.methods import budget as method_budget
    from .attack.methods import certifies

    terms, notes, work_k = [], [], []
    rate = figures("attack")
    infer = figures("infer")
    runs = attack_configs(cfg)
    # Several attacks of one k (methods, value ranges compared at k = 1) tell apart by their output's name.
    by_name = len({c.attack.pixels for c in runs}) < len(runs)
    for k_cfg in runs:
        a = k_cfg.attack
        label = f"{attack_output(k_cfg).stem} (k={a.pixels})" if by_name else f"k={a.pixels}"
        variants = list(dict.fromkeys(a.variants))
        images = min(a.n_images, data.test)
        targets = 2 if a.mode == "targeted" else 1
        size = cfg.generate.image_size
        budget = method_budget(a, Box.of(a.pixels, len(cfg.generate.bands), size, size, (0.0, 1.0)))
        busiest, n_blocks = _busiest(images, a.images_per_batch, targets, len(variants), ranks)
        found = _attack_file(cfg, k_cfg)
        # The query curve rescales DE's populations; another method's past run is not rescaled.
        curve = query_curve(found, a.population, a.generations) if found and a.method == "de" else None
        expected, expected_images = None, images
        if curve and all(v in curve["per_attack"] for v in variants):
            # As many images as qualified in that run (attack.only_correct), each attack at its mean cost.
            expected_images = min(images, round(data.test * curve["qualified"])) if a.only_correct else images
            mean = sum(curve["per_attack"][v] for v in variants) / len(variants)
            expected = _busiest(expected_images, a.images_per_batch, targets, len(variants), ranks)[0] * mean
        terms.append(_term(f"{label}: at most {busiest} attacks x {budget:,} queries on the busiest rank "
                           f"({n_blocks} blocks of up to {a.images_per_batch} images)", busiest * budget, rate,
                           expected))
        scan = 0
        if certifies(a):
            # The certifying scan: every corner candidate of each image the attack fails on, at most all.
            scan = size * size * 2 ** len(cfg.generate.bands)
            terms.append(_term(f"{label}: certifying scan, at most {busiest // targets} images x {scan:,} corner "
                               "candidates on the busiest rank (only the images the attack fails on)",
                               busiest // targets * scan, rate))
        terms.append(_term(f"{label}: choosing the images (at most {data.test:,} test images classified)",
                           data.test * len(variants) / ranks, infer,
                           None if expected is None else min(data.test, 1.5 * images) * len(variants) / ranks))
        terms.append(Term(f"fixed {label}: models, output, figures", 0, None, FIXED["attack"]))
        work_k.append({"k": a.pixels, "method": a.method, "output": attack_output(k_cfg).name,
                       "images_at_most": images, "images_expected": expected_images,
                       "targets": targets, "variants": variants, "population": a.population,
                       "certify_candidates_at_most": len(variants) * images * scan,
                       "generations": a.generations, "queries_per_attack_at_most": budget,
                       "queries_at_most": len(variants) * images * targets * budget,
                       "queries_expected": None if expected is None else
                       round(sum(curve["per_attack"][v] for v in variants) * expected_images * targets),
                       "curve_from": None if not curve else curve["file"],
                       "success_curve": None if not curve else curve["curve"]})
        if n_blocks < ranks:
            notes.append(f"{label}: only {n_blocks} blocks for {ranks} ranks")
    notes.append("queries at most: every attack runs its whole budget; expected: from the run's existing "
                 "attack output (success against queries, images qualified) where there is one")
    if not data.exact:
        notes.append("test images estimated; attack.only_correct may leave fewer")
    return StagePlan("attack", ranks, device, gpus if device == "cuda" else 0, {"attacks": work_k}, terms, notes)


def plan_analyze(cfg, ranks: int, device: str, gpus: int, figures: Figures, data: Dataset) -> StagePlan:
    from .attack.stage import seed_configs

    a, at = cfg.analyze, cfg.attack
    variants = list(dict.fromkeys(at.variants))
    seeds = len(seed_configs(cfg))  # each analysed seed's models embed every image again
    fractions = len(a.exposure_fractions) if data.has_clean else 0
    targets = 2 if at.mode == "targeted" else 1
    attack_rows = len(variants) * min(at.n_images, data.test) * targets
    chunks = -(-data.test // a.batch_size) + -(-attack_rows // a.batch_size)
    share = min(ranks, max(1, chunks))
    latents = seeds * (data.test * len(variants) * (2 + fractions) + attack_rows) / share
    observed = seeds * data.test * fractions / share
    terms = [_term(f"latents: {seeds} seed(s) x ({data.test:,} test images x {len(variants)} models x (Y10, Y1 + "
                   f"{fractions} exposures) + {attack_rows:,} attacked images)", latents, figures("embed")),
             _term(f"{seeds} seed(s) x {data.test:,} test galaxies observed again at {fractions} exposures", observed,
                   figures("reobserve")),
             Term("fixed: Table 2, church windows, isomaps, claims, figures", 0, None, FIXED["analyze"] * seeds)]
    work = {"seeds": seeds, "test_images": data.test, "attack_rows": attack_rows, "exposures": fractions,
            "chunks": chunks, "forward_passes": seeds * (data.test * len(variants) * (2 + fractions) + attack_rows),
            "observations": seeds * data.test * fractions}
    return StagePlan("analyze", ranks, device, gpus if device == "cuda" else 0, work, terms,
                     [] if share == ranks else [f"only {chunks} chunks for {ranks} ranks"])


def plan_report(cfg) -> StagePlan:
    return StagePlan("report", 1, "cpu", 0, {}, [Term("fixed: gather, tables, HTML", 0, None, FIXED["report"])])


@dataclass
class Plan:
    config: str
    device: str
    gpus_per_rank: int
    ranks_per_node: int
    calibration: dict | None
    dataset: Dataset
    stages: list[StagePlan]

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    def assumed(self) -> list[str]:
        return list(dict.fromkeys(a for s in self.stages for a in s.assumed))

    def as_dict(self) -> dict:
        cal = None if not self.calibration else {k: self.calibration.get(k) for k in
                                                 ("host", "date", "device", "device_name", "path")}
        return {"config": self.config, "device": self.device, "gpus_per_rank": self.gpus_per_rank,
                "ranks_per_node": self.ranks_per_node, "calibration": cal, "dataset": asdict(self.dataset),
                "stages": [s.as_dict(self.ranks_per_node) for s in self.stages],
                "predicted_seconds": self.seconds, "assumed": self.assumed(),
                "margin": {"calibrated_factor": MARGIN["calibrated"], "assumed_factor": MARGIN["assumed"],
                           "plus_seconds": MARGIN_FIXED_S, "rounded_to_seconds": ROUND_S}}


def make(cfg, ranks: int | dict = 1, device: str = "cpu", gpus_per_rank: int = 1, ranks_per_node: int | None = None,
         calibration: dict | None = None, stages=STAGES, devices: dict | None = None) -> Plan:
    """The plan of ``stages`` for ``cfg``: ``ranks`` for every stage but report (one rank), or a
    dict per stage; GPU stages on ``device`` (or ``devices[stage]``), the others on CPUs."""
    if device not in DEVICES:
        raise PlanError(f"unknown device {device!r}; choose from {', '.join(DEVICES)}")
    from . import calibrate

    if calibration is None:
        calibration = calibrate.load(cfg, device)
    per_stage = ranks if isinstance(ranks, dict) else {s: ranks for s in STAGES}
    for stage, n in per_stage.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise PlanError(f"ranks for {stage} must be a positive integer, got {n!r}")
    figures = {device: Figures(cfg, device, calibration)}
    data = dataset(cfg)
    out = []
    for stage in stages:
        dev = (devices or {}).get(stage, device if stage in GPU_STAGES else "cpu")
        if dev not in figures:
            figures[dev] = Figures(cfg, dev, calibrate.load(cfg, dev))
        stage_figures = figures[dev]
        n = per_stage.get(stage, 1)
        if stage == "generate":
            out.append(plan_generate(cfg, n, stage_figures, data))
        elif stage == "train":
            out.append(plan_train(cfg, n, dev, gpus_per_rank, stage_figures, data))
        elif stage == "attack":
            out.append(plan_attack(cfg, n, dev, gpus_per_rank, stage_figures, data))
        elif stage == "analyze":
            out.append(plan_analyze(cfg, n, dev, gpus_per_rank, stage_figures, data))
        elif stage == "report":
            out.append(plan_report(cfg))
    rpn = ranks_per_node or (4 if device == "cuda" else 32)
    return Plan(cfg.name, device, gpus_per_rank, rpn, calibration, data, out)


def limit_seconds(stage: StagePlan) -> int:
    """The wall time to ask for: factor x predicted + MARGIN_FIXED_S, rounded up to ROUND_S; the
    attack's expected time where a query curve gave one (a resumable job requeues at its limit)."""
    predicted = stage.expected_seconds if stage.stage == "attack" else stage.seconds
    factor = MARGIN["calibrated" if stage.calibrated else "assumed"]
    return int(math.ceil((factor * predicted + MARGIN_FIXED_S) / ROUND_S) * ROUND_S)


def margin_text(stage: StagePlan | None = None) -> str:
    """How the limit follows from the prediction: for ``stage``, or in general."""
    if stage is not None:
        factor = f"{MARGIN['calibrated' if stage.calibrated else 'assumed']:g} x"
    else:
        factor = f"{MARGIN['calibrated']:g} x (with assumed figures {MARGIN['assumed']:g} x)"
    return f"{factor} predicted + {MARGIN_FIXED_S // 60} min, rounded up to {ROUND_S // 60} min"


# ------------------------------------------------------------------------------------------ CLI

def hms(seconds: float) -> str:
    s = int(math.ceil(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def format_plan(plan: Plan) -> str:
    lines = [f"hpcmorph plan: config {plan.config}; device {plan.device}"
             + (f" ({plan.gpus_per_rank} GPU per rank)" if plan.device == "cuda" else "")
             + f"; {plan.ranks_per_node} ranks per node; {plan.dataset.describe()}"]
    cal = plan.calibration
    lines.append(f"figures: calibrated on {cal.get('host')} ({cal.get('device_name')}) {cal.get('date')}"
                 if cal else "figures: none calibrated here: every throughput below is ASSUMED "
                 "(run `hpcmorph plan --calibrate` on the machine that will run the job)")
    lines.append("")
    lines.append(f"{'stage':<9} {'ranks':>5} {'device':<6} {'predicted':>10} {'expected':>10} {'limit':>9} "
                 f"{'nodes':>5} {'node-h':>8} {'GPU-h':>8}")
    for s in plan.stages:
        h = s.hours(plan.ranks_per_node)
        lines.append(f"{s.stage:<9} {s.ranks:>5} {s.device:<6} {hms(s.seconds):>10} {hms(s.expected_seconds):>10} "
                     f"{hms(limit_seconds(s)):>9} {h['nodes']:>5} {h['node_hours']:>8.3f} {h['gpu_hours']:>8.3f}")
    lines.append(f"{'total':<9} {'':>5} {'':<6} {hms(plan.seconds):>10} "
                 f"{hms(sum(s.expected_seconds for s in plan.stages)):>10}")
    lines.append(f"(predicted: at most; expected: with the attack's query curve where there is one; "
                 f"limit: what `hpcmorph submit` asks for, {margin_text()})")
    for s in plan.stages:
        lines.append("")
        lines.append(f"{s.stage}:")
        for t in s.terms:
            rate = f"  at {t.rate.describe()}" if t.rate else " [assumed]"
            exp = "" if t.expected_seconds is None else f" (expected {t.expected_seconds:,.1f} s)"
            lines.append(f"  {t.what}: {t.seconds:,.1f} s{exp}{rate}")
        if s.ranks > 1:
            lines.append(f"  parallel efficiency {s.efficiency:.2f} [assumed]")
        for note in s.notes:
            lines.append(f"  note: {note}")
    assumed = plan.assumed()
    lines.append("")
    lines.append("assumed figures: " + ("; ".join(assumed) if assumed else "none"))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Count every stage's work for a config, the per-rank throughput it assumes (measured "
                     "here with --calibrate, or a stated table) and the predicted wall time and node/GPU-hours.")
    p.add_argument("--config", "-c", default="laptop", metavar="PRESET|YAML",
                   help="preset name (laptop, paper, tiny) or YAML file (default: laptop)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field (repeatable)")
    p.add_argument("--ranks", default="1", metavar="N", help="MPI ranks of generate, train, attack, analyze "
                   "(report: 1); default 1")
    p.add_argument("--gpus-per-rank", default=None, metavar="G", help="GPUs per rank with --device cuda (default 1)")
    p.add_argument("--ranks-per-node", default=None, metavar="R",
                   help="ranks per node, for node-hours (default: the --site's nodes, else 4 with cuda, 32 with cpu)")
    p.add_argument("--site", default=None, metavar="NAME",
                   help="size nodes as this facility's (hpcmorph/sites.py: polaris, frontier, perlmutter): one "
                   "rank per GPU with cuda, one per usable core with cpu, as hpcmorph submit --site runs them")
    p.add_argument("--device", default=None, metavar="cpu|cuda",
                   help="device of train, attack and analyze (default: cuda where this machine has one, else cpu)")
    p.add_argument("--calibrate", action="store_true",
                   help="first measure the figures on this machine (a few seconds to a minute) and store them as "
                   "<run.root>/<run.name>/calibration-<device>.json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # Every mistake on this command line is one line and exit 2, as a bad config is.
    p.error = types.MethodType(_argparse_error, p)


def _argparse_error(parser: argparse.ArgumentParser, message: str):
    print(f"hpcmorph: error: plan: {message}", file=sys.stderr)
    sys.exit(2)


def _positive(text: str | None, flag: str, default: int, zero_ok: bool = False) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise PlanError(f"{flag} {text!r}: expected a whole number") from None
    if value < (0 if zero_ok else 1):
        raise PlanError(f"{flag} {value}: expected {'0 or more' if zero_ok else 'at least 1'}")
    return value


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def run(args: argparse.Namespace) -> int:
    from . import config as config_mod

    try:
        ranks = _positive(args.ranks, "--ranks", 1)
        device = args.device or _default_device()
        if device not in DEVICES:
            raise PlanError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
        gpus = _positive(args.gpus_per_rank, "--gpus-per-rank", 1 if device == "cuda" else 0, zero_ok=True)
        default_rpn = 4 if device == "cuda" else 32
        if args.site:
            from . import sites

            default_rpn = sites.ranks_per_node(sites.get(args.site), device == "cuda") or default_rpn
        rpn = _positive(args.ranks_per_node, "--ranks-per-node", default_rpn)
        cfg = config_mod.load(args.config, args.overrides)
        calibration = None
        if args.calibrate:
            from . import calibrate

            calibration = calibrate.calibrate(cfg, device, ranks)
            calibration["path"] = str(calibrate.path_for(cfg, device))
            if not args.json:
                print(f"calibrated: {calibration['path']}", file=sys.stderr)
        plan = make(cfg, ranks, device, gpus, rpn, calibration)
    except UserError as err:
        print(f"hpcmorph: error: plan: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0
