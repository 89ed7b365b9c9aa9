"""The rows of ``galaxies.h5`` the plan counts with: read when the file of this config exists, else
estimated from the config."""

from __future__ import annotations

from dataclasses import dataclass

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
    from ..generate.sources import open_source

    return len(open_source(cfg))


def dataset(cfg) -> Dataset:
    """The dataset's rows: read from ``galaxies.h5`` when it is this config's, else estimated: the
    intended class fractions stand for the G-M20 labels, mergers are augmented towards the largest
    other class (at most 3 copies each) and the split fractions cut the rows."""
    import h5py
    import numpy as np

    from .. import store
    from ..generate import output_path
    from ..generate.stage import digest

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
