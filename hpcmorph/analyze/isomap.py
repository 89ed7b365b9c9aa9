"""Isomaps: a 2-d picture of the latent space that keeps geodesic distances (Tenenbaum et al. 2000).

As the paper: scikit-learn's Isomap (n_neighbors 5, 2 components) fitted on the Y10 and Y1 latents
of 250 random test images together, so the two exposures share one map; the attacked image is
placed on it afterwards with ``Isomap.transform`` (it is not part of the fit).

The dense eigensolver is used: the default (ARPACK above 200 points) starts from a random vector
that scikit-learn does not let Isomap seed, which makes the map (its signs, at least) change from
run to run. A dense eigendecomposition of a few hundred points costs milliseconds.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..mpi import log

STREAM = 20  # SeedSequence stream of the image draw (attack uses 10 and 11)


def sample(test_rows: np.ndarray, n: int, seed: int, include: int | None = None) -> np.ndarray:
    """``n`` galaxy rows drawn without replacement from ``test_rows`` by ``SeedSequence([seed, STREAM])``,
    sorted; ``include`` (the triplet's row) replaces the last draw if it was not drawn. All rows when
    there are at most ``n``."""
    test_rows = np.asarray(test_rows, np.int64)
    if len(test_rows) <= n:
        return np.sort(test_rows)
    rows = np.random.default_rng([seed, STREAM]).choice(test_rows, size=n, replace=False)
    if include is not None and include not in rows:
        rows[-1] = include
    return np.sort(rows)


def fit(z_y10: np.ndarray, z_y1: np.ndarray, n_neighbors: int, extra: np.ndarray | None = None) -> dict:
    """Isomap of the latents z_y10 and z_y1 (n, D) together.

    Returns {"y10": (n, 2), "y1": (n, 2), "extra": (m, 2) or None (``extra`` (m, D) placed by
    transform), "n_neighbors": the neighbours used}. ``n_neighbors`` is lowered (with a warning) when
    there are too few points for it.
    """
    from sklearn.manifold import Isomap

    z = np.concatenate([z_y10, z_y1]).astype(np.float64)
    n = len(z_y10)
    k = min(n_neighbors, len(z) - 1)
    if k < n_neighbors:
        log.warning("analyze: only %d points for the isomap; n_neighbors lowered from %d to %d", len(z), n_neighbors, k)
    if k < 1:
        return {"y10": np.zeros((n, 2)), "y1": np.zeros((n, 2)), "extra": None if extra is None else
                np.zeros((len(extra), 2)), "n_neighbors": k}
    iso = Isomap(n_neighbors=k, n_components=2, eigen_solver="dense")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = iso.fit_transform(z)
    # scikit-learn joins a disconnected neighbour graph itself: worth one line, not two tracebacks.
    if any("connected components" in str(w.message) for w in caught):
        log.warning("analyze: the isomap's %d-neighbour graph of %d points is not connected; scikit-learn "
                    "joined its components (more analyze.isomap_neighbors avoids this)", k, len(z))
    placed = None if extra is None or len(extra) == 0 else iso.transform(np.asarray(extra, np.float64))
    return {"y10": emb[:n], "y1": emb[n:], "extra": placed, "n_neighbors": k}
