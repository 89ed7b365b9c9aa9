"""What the report reads from a run folder ``<run.root>/<run.name>/``, checked at this one boundary.

Required: ``analysis/analysis.json`` (stage 4; a clear :class:`StageError` otherwise). Everything else
is optional and shown when present: ``train_summary.json`` and ``<variant>/seed<k>/curves.png``,
``attack*_summary.json``, ``timings.json``, ``figures/`` (generate's and attack's figures and the class
counts CSV), and the provenance attributes of ``galaxies.h5`` and ``attack.h5``. An optional file that
exists but cannot be read is logged and left out: the report of a finished analysis never fails on it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import store
from ..config import Config
from ..errors import StageError
from ..layout import RunLayout
from ..mpi import log

# Keys of analysis.json the report cannot do without; the others are shown when present.
REQUIRED = ("digest", "table1", "table2")

# Analysis figures (analysis.json "figures", relative to analysis/): section and caption, in page order.
ANALYSIS_FIGURES = {
    "figure2": ("figure2", "Figure 2: church windows and isomaps of the regular and domain-adapted models."),
    "church_windows": ("figure2", "Church windows: the model's class over a plane through the Y10 image spanned by "
                                  "the attack direction (x) and the Y1 noise direction (y)."),
    "isomaps": ("figure2", "Isomaps of the latent space: Y10 (filled) and Y1 (open) test images by class."),
    "exposure": ("exposure", "Test accuracy against exposure (fraction of the ten-year depth)."),
    "success_vs_k": ("success_vs_k", "Fraction of attacked images flipped against the number of pixels changed k."),
    "robustness": ("success_vs_k", "Attack success against the number of pixels k and against the query budget, "
                                   "per model: mean over training seeds, error bars and bands the std over seeds."),
    "comparison": ("comparison", "One-pixel success against Y1 test accuracy, a point per variant and training seed "
                                 "(filled: the certified or exhaustive fraction; hollow: the search's own)."),
    "calibration": ("comparison", "Reliability diagram: accuracy against confidence in equal-width confidence bins, "
                                  "per variant, the analysed seeds' test images pooled; the diagonal is perfect "
                                  "calibration."),
    "distances": ("distances", "Latent distances Y10 -> Y1 and Y10 -> attacked over the flipped images."),
    "success_vs_queries": ("methods", "Fraction of the attacked images flipped against the model queries per attack, "
                                      "per method, model and value range; dashed: the exhaustive oracle."),
}
GENERATE_FIGURES = {
    "generate_figure1": "Figure 1: example galaxies of each class, Y10 beside Y1 (asinh RGB of i, r, g).",
    "generate_gm20": "The Gini-M20 plane with the Lotz et al. class boundaries.",
}
ATTACK_SUFFIXES = {
    "_queries": "Model queries each successful attack needed, per model.",
    "_success": "Attack success rate by true class (rows) and target (columns), per model.",
    "_examples": "Successful attacks, the changed pixel circled.",
    "_success_vs_k": "Attack success rate against the number of pixels k (from attack.h5 files).",
}


@dataclass
class Figure:
    """One figure to embed: ``key`` names it in report/figures/ (unique); ``pdf`` sits beside ``png``."""

    key: str
    section: str
    caption: str
    png: Path
    pdf: Path | None = None


@dataclass
class Inputs:
    folder: Path  # the run folder, <run.root>/<run.name>/
    analysis: dict
    train: dict | None = None
    attacks: dict[str, dict] = field(default_factory=dict)  # output stem -> its summary
    timings: list[dict] | None = None
    class_counts: list[list[str]] | None = None
    figures: list[Figure] = field(default_factory=list)
    missing_figures: list[str] = field(default_factory=list)  # named by analysis.json, not on disk
    provenance: dict[str, dict[str, str]] = field(default_factory=dict)  # stage -> attributes


def run_folder(cfg: Config) -> Path:
    """The run folder the report reads from, ``<run.root>/<run.name>/``."""
    return RunLayout.of(cfg).folder


def analysis_path(cfg: Config) -> Path:
    return RunLayout.of(cfg).analysis_json


def load_analysis(cfg: Config) -> dict:
    """analysis.json, or a StageError naming the file and the command that writes it."""
    path = analysis_path(cfg)
    again = "run `hpcmorph analyze --config ...` (with this command's --config and --set) first"
    data = store.read_json(path, again)
    if any(k not in data for k in REQUIRED):
        lacking = [k for k in REQUIRED if k not in data]
        raise StageError(f"{path}: not a complete analysis (missing {', '.join(lacking)}); {again}")
    return data


def _optional_json(path: Path, kind: type) -> Any:
    if not path.exists():
        return None
    try:
        return store.read_json(path, kind=kind)
    except store.StoreError as err:
        log.warning("report: %s; left out", err)
        return None


def _figure(key: str, section: str, caption: str, png: Path) -> Figure:
    pdf = png.with_suffix(".pdf")
    return Figure(key, section, caption, png, pdf if pdf.exists() else None)


def _h5_provenance(path: Path) -> dict[str, str] | None:
    """The scalar provenance attributes of an HDF5 output (not its config text or summaries)."""
    if not path.exists():
        return None
    try:
        import h5py

        with h5py.File(path, "r") as f:
            keep = ("stage", "config_digest", "git_commit", "ranks", "host", "started", "finished")
            return {k: str(v) for k, v in f.attrs.items() if k in keep or k.startswith("version_")}
    except OSError as err:
        log.warning("report: cannot read the attributes of %s (%s)", path, err)
        return None


def _attack_summaries(folder: Path, analysis: dict) -> dict[str, dict]:
    """Every ``attack*_summary.json`` of the run (the k = 1 one first); analysis.json's copy when none."""
    found = {}
    for path in sorted(folder.glob("attack*_summary.json"), key=lambda p: (p.name != "attack_summary.json", p.name)):
        data = _optional_json(path, dict)
        if data is not None:
            found[path.name[: -len("_summary.json")]] = data
    if not found and isinstance(analysis.get("attack"), dict):
        found["attack"] = analysis["attack"]
    return found


def gather(cfg: Config, analysis: dict) -> Inputs:
    """Everything the report shows, from the run folder of ``cfg``."""
    lay = RunLayout.of(cfg)
    folder = lay.folder
    out = Inputs(folder, analysis)
    out.train = _optional_json(lay.train_summary, dict)
    out.attacks = _attack_summaries(folder, analysis)
    timings = _optional_json(lay.timings, list)
    out.timings = [t for t in timings if isinstance(t, dict)] if timings is not None else None

    counts = lay.figures / "generate_class_counts.csv"
    if counts.exists():
        with open(counts, newline="") as fh:
            out.class_counts = [row for row in csv.reader(fh) if row]

    # Analysis figures: the known ones in page order, then any others it names.
    named = analysis.get("figures") if isinstance(analysis.get("figures"), dict) else {}
    for key in [*ANALYSIS_FIGURES, *(k for k in named if k not in ANALYSIS_FIGURES)]:
        rel = named.get(key)
        if not isinstance(rel, str):
            continue
        png = lay.analysis / rel
        section, caption = ANALYSIS_FIGURES.get(key, ("analysis", key.replace("_", " ")))
        if png.exists():
            out.figures.append(_figure(key, section, caption, png))
        else:
            out.missing_figures.append(str(png))

    for key, caption in GENERATE_FIGURES.items():
        png = lay.figures / f"{key}.png"
        if png.exists():
            out.figures.append(_figure(key, "data", caption, png))

    runs = out.train.get("runs") if out.train else None
    seen: set[tuple[str, int]] = set()
    for r in runs if isinstance(runs, list) else []:
        if not isinstance(r, dict) or (r.get("variant"), r.get("seed")) in seen:
            continue
        seen.add((r.get("variant"), r.get("seed")))
        png = lay.model_folder(str(r.get("variant")), r.get("seed")) / "curves.png"
        if png.exists():
            out.figures.append(_figure(f"curves_{r.get('variant')}_seed{r.get('seed')}", "training",
                                       f"Training curves: {r.get('variant')}, seed {r.get('seed')}.", png))

    for png in sorted(lay.figures.glob("attack*.png")):
        suffix = next((s for s in sorted(ATTACK_SUFFIXES, key=len, reverse=True) if png.stem.endswith(s)), None)
        caption = ATTACK_SUFFIXES.get(suffix, png.stem)
        stem = png.stem[: -len(suffix)] if suffix else png.stem
        out.figures.append(_figure(png.stem, "attack_figures", f"{stem}: {caption}", png))

    for stage, path in (("generate", lay.galaxies), ("attack", lay.attack("attack"))):
        attrs = _h5_provenance(path)
        if attrs:
            out.provenance[stage] = attrs
    if isinstance(analysis.get("provenance"), dict):
        out.provenance["analyze"] = {k: str(v) for k, v in analysis["provenance"].items() if k != "config"}
    return out


def config_text(cfg: Config, analysis: dict) -> str:
    """The YAML that made the numbers: analysis.json's provenance config, else this command's config."""
    text = (analysis.get("provenance") or {}).get("config") if isinstance(analysis.get("provenance"), dict) else None
    return text if isinstance(text, str) and text.strip() else cfg.to_yaml()
