"""The analysis's inputs, checked at the boundary: the attack outputs, Table 1 from train.

A missing or stale input is a :class:`~hpcmorph.errors.StageError` naming the file and the command
that makes it (exit 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import store
from ..attack.stage import config_for_k
from ..attack.stage import digest as attack_digest
from ..attack.stage import output_path as attack_path
from ..config import Config
from ..errors import StageError
from ..generate.dataset import TEST
from ..generate.survey import bands as survey_bands
from ..layout import RunLayout
from ..mpi import log
from .exposure import has_clean

ATTACK_SCALARS = ("variant", "index", "label", "target", "success", "queries")


@dataclass(frozen=True)
class AttackRows:
    """The columns of an attack output (:func:`hpcmorph.attack.columns`) the analysis reads: one row
    per (model, image, target), N rows."""

    variant: np.ndarray     # (N,) the attacked model: index into the file's variant_names
    index: np.ndarray       # (N,) row of the attacked image in galaxies.h5
    label: np.ndarray       # (N,) its true class
    target: np.ndarray      # (N,) the target class; -1 for an untargeted attack
    success: np.ndarray     # (N,) the attack reached its goal
    queries: np.ndarray     # (N,) model queries until it did, or until the budget ran out
    prob_after: np.ndarray  # (N, classes) the attacked model's probabilities for the attacked image

    def scalars(self) -> dict[str, np.ndarray]:
        """The scalar columns, as attack_latents.h5 keeps them beside the attacked images' latents."""
        return {name: getattr(self, name) for name in ATTACK_SCALARS}


def attack_state(cfg: Config, k: int) -> tuple[Path, bool]:
    """(path of the k-pixel attack, whether it is a complete output of this config)."""
    ck = config_for_k(cfg, k)
    path = attack_path(ck)
    return path, path.exists() and store.output_digest(path) == attack_digest(ck)


def attack_ks(cfg: Config) -> list[int]:
    return sorted(set(cfg.analyze.k_sweep) | {cfg.attack.pixels})


def attack_command(k: int) -> str:
    return "hpcmorph attack --config ..." + ("" if k == 1 else f" --set attack.pixels={k}")


def require_attack(cfg: Config) -> Path:
    """The k = attack.pixels attack output, complete and made by this config; StageError otherwise."""
    k = cfg.attack.pixels
    path, current = attack_state(cfg, k)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        hint = " (a .tmp file exists: the attack did not finish; rerun it)" if tmp.exists() else ""
        raise StageError(f"{path}: no such file; run `{attack_command(k)}` with this config first "
                         f"(analyze reads the k={k} attack, attack.pixels){hint}")
    if not current:
        raise StageError(f"{path} was made with other settings (digest {store.output_digest(path)}, this config "
                         f"{attack_digest(cfg)}); run `{attack_command(k)}` with this config first")
    return path


def other_range_attack(cfg: Config) -> tuple[str, Path, str] | None:
    """(value range name, path, file-name suffix) of the run's own k = 1 attack in the other value range
    (``analyze.compare_ranges``), when Table 2 is of k = 1 attacks and that output is current; else None
    (a warning when it should be there)."""
    from ..attack.compare import other_range, variant
    from ..attack.stage import range_name, range_suffix

    if cfg.attack.pixels != 1 or not cfg.analyze.compare_ranges:
        return None
    c = variant(cfg, cfg.attack.method, other_range(cfg.attack.pixel_range))
    path = attack_path(c)
    if not (path.exists() and store.output_digest(path) == attack_digest(c)):
        log.warning("analyze: no current %s (the k = 1 attack in the %s value range); Table 2 has that range only "
                    "after `hpcmorph run` (or `hpcmorph attack --set attack.pixel_range=...`) makes it", path.name,
                    range_name(c.attack.pixel_range))
        return None
    return range_name(c.attack.pixel_range), path, range_suffix(c.attack.pixel_range)


def read_train_summary(cfg: Config) -> dict:
    """``train_summary.json`` of this config: {"runs": [per variant and seed: {"variant", "seed", "y10",
    "y1", ...}], "table1": {variant: {"y10"|"y1": {metric: [mean, std]}, "seeds"}}, "digest"}."""
    from ..train.stage import digest as train_digest

    path = RunLayout.of(cfg).train_summary
    found = store.read_json(path, "run `hpcmorph train` with this config first")
    if found.get("digest") != train_digest(cfg) or "table1" not in found or not isinstance(found.get("runs"), list):
        raise StageError(f"{path} is from other train settings (digest {found.get('digest')}, this config "
                         f"{train_digest(cfg)}); run `hpcmorph train` with this config first")
    return found



def read_attack(path: Path, variants: list[str]) -> tuple[AttackRows, dict]:
    """(its rows, summary) of the attack output; its variants must be ours."""
    with store.open_checked(path, "attack") as f:
        cols = AttackRows(**{name: f[name][...] for name in (*ATTACK_SCALARS, "prob_after")})
        found = str(f.attrs["variant_names"]).split(",")
        summary = json.loads(f.attrs["summary"])
    if found != variants:
        raise StageError(f"{path}: attacked models {found}, but attack.variants is {variants}")
    summary_file = path.with_name(f"{path.stem}_summary.json")
    try:
        summary = store.read_json(summary_file)
    except store.StoreError:
        pass  # the attribute holds the same numbers
    return cols, summary


@dataclass
class TestSet:
    """The test images the analysis embeds, and what galaxies.h5 says of their observation."""

    rows: np.ndarray          # rows of the labelled test images in galaxies.h5, increasing
    labels: np.ndarray        # their classes
    bands: list               # the survey bands (generate.survey.Band), for re-observing
    pixel_scale: float        # arcsec per pixel
    y1_fraction: float        # Y1 exposure / Y10 exposure
    fractions: list[float]    # exposure fractions to re-observe at; [] when there are no noiseless images


def read_test_set(cfg: Config, attacks: AttackRows, attack_file: Path) -> TestSet:
    """The labelled Y10 test split of galaxies.h5; checks ``analyze.triplet`` against the attacked images."""
    a = cfg.analyze
    with store.open_checked(RunLayout.of(cfg).galaxies, "generate") as f:
        split, label = f["split"][...], f["label"][...]
        rows = np.flatnonzero((split == TEST) & (label >= 0))
        bands = survey_bands(str(f.attrs["bands"]).split(","))
        pixel_scale, y1_fraction = float(f.attrs["pixel_scale_arcsec"]), float(f.attrs["y1_fraction"])
        clean_ok = len(rows) > 0 and has_clean(f["clean"][int(rows[0])])
    if a.triplet is not None and a.triplet not in set(attacks.index.tolist()):
        shown = ", ".join(map(str, np.unique(attacks.index)[:20]))
        raise StageError(f"analyze.triplet={a.triplet} is not an attacked image of {attack_file} "
                         f"(attacked rows: {shown})")
    if not clean_ok:
        log.info("analyze: galaxies.h5 has no noiseless images (generate.source=%s): accuracy against exposure "
                 "skipped", cfg.generate.source)
    return TestSet(rows, label[rows], bands, pixel_scale, y1_fraction, list(a.exposure_fractions) if clean_ok else [])

