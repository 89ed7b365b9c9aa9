"""Where a run's files lie: every path under the run folder ``<run.root>/<run.name>/``, named once.

The only place that joins ``run.root`` and ``run.name``: every name lives here, so that a reader
finds the whole layout on one page and a rename cannot miss a reader. The
stages keep their public path functions (``generate.stage.output_path``, ``attack.stage.output_path``
...), which delegate to this class. Nothing here touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Config

GALAXIES = "galaxies.h5"
TRAIN_SUMMARY = "train_summary.json"
MODEL = "model.pt"
TIMINGS = "timings.json"
FIGURES = "figures"
CERTIFICATES = "certificates"
ANALYSIS = "analysis"
ANALYSIS_JSON = "analysis.json"
REPORT = "report"
JOBS = "jobs"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run, all under :attr:`folder`."""

    folder: Path  # <run.root>/<run.name>/: every output of the run, nothing else

    @classmethod
    def of(cls, cfg: Config) -> RunLayout:
        return cls(Path(cfg.run.root) / cfg.run.name)

    @property
    def galaxies(self) -> Path:
        """Stage 1's output: the mock (or observed) galaxies, images and labels, one HDF5 file."""
        return self.folder / GALAXIES

    def model_folder(self, variant: str, seed: int) -> Path:
        """One trained model's folder: model.pt, best.pt, checkpoint.pt, metrics.json, history.csv, curves.png."""
        return self.folder / variant / f"seed{seed}"

    def model(self, variant: str, seed: int) -> Path:
        """The best weights of one trained model, as later stages load them."""
        return self.model_folder(variant, seed) / MODEL

    @property
    def train_summary(self) -> Path:
        """Every trained model's results and Table 1 over seeds."""
        return self.folder / TRAIN_SUMMARY

    def attack(self, stem: str) -> Path:
        """One attack's output (``stem`` from ``attack.stage.output_stem``): one row per (model, image,
        target); its summary sits beside it and its figures in :attr:`figures`, both
        named by the same stem."""
        return self.folder / f"{stem}.h5"

    def attack_summary(self, stem: str) -> Path:
        """One attack's summary (success rates, queries, timings), which analyze and the report read."""
        return self.folder / f"{stem}_summary.json"

    @property
    def figures(self) -> Path:
        """Generate's and attack's figures (and generate's class counts); the report links them."""
        return self.folder / FIGURES

    @property
    def certificates(self) -> Path:
        """The certifying scans kept for reuse (:mod:`hpcmorph.attack.certificates`), a file per model and key."""
        return self.folder / CERTIFICATES

    @property
    def analysis(self) -> Path:
        """Stage 4's folder: analysis.json, latents and figures."""
        return self.folder / ANALYSIS

    @property
    def analysis_json(self) -> Path:
        """Stage 4's numbers, which the report reads."""
        return self.analysis / ANALYSIS_JSON

    @property
    def report(self) -> Path:
        """Stage 5's folder: index.html and what it links to."""
        return self.folder / REPORT

    @property
    def timings(self) -> Path:
        """Wall time of each stage that ``hpcmorph run`` ran, appended per stage."""
        return self.folder / TIMINGS

    def job_script(self, stage: str, site: str, ext: str) -> Path:
        """A batch script that ``hpcmorph submit`` wrote for ``stage`` at ``site``."""
        return self.folder / JOBS / f"{stage}.{site}{ext}"

    def calibration(self, device: str) -> Path:
        """The measured rates of this machine's ``device`` (cpu or cuda), which the plan uses."""
        return self.folder / f"calibration-{device}.json"
