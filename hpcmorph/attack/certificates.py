"""Certificates kept between attacks: what the certifying scan found, reused instead of scanned again.

Whether one corner pixel reaches an attack's goal is a fact about the model, the image, the target,
the value box and the success rule; it does not depend on the search that failed on the image. So
every scan's result is kept in ``<run>/certificates/<variant>-<key>.h5`` (one row per attack: galaxy
row ``index``, ``target``, ``flips``, ``first``; see :mod:`.certify`) and a later attack of the same
models on the same image (another search, another budget, a resumed run) takes it from there.

The key is a digest of what a certificate depends on: ``run.seed`` and the ``generate`` section, the
train digest and the model seed, and the attack's ``pixel_range``, ``threshold``, ``mode`` and
``forward_batch`` (the batches the model classifies candidates in: on some CPUs their last bits
depend on it). Rank 0 reads the file when an attack starts and adds the attack's new scans when its
output is complete (written whole under a temporary name, then renamed: a killed update leaves the
old file). Two attacks finishing at once on one run may each keep only their own scans; nothing is
lost but the time to scan again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np

from .. import store
from ..config import Config
from ..layout import RunLayout


def key(cfg: Config, model_seed: int) -> str:
    """What a certificate of this config's attacks depends on (module docstring)."""
    from ..train.stage import digest as train_digest

    parts = {"config": cfg.digest("run.seed", "generate", "attack.pixel_range", "attack.threshold", "attack.mode",
                                  "attack.forward_batch"),
             "train": train_digest(cfg), "model_seed": int(model_seed)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def path(cfg: Config, variant: str, model_seed: int) -> Path:
    return RunLayout.of(cfg).certificates / f"{variant}-{key(cfg, model_seed)}.h5"


def read(file: Path) -> dict[tuple[int, int], tuple[int, int]]:
    """{(galaxy row, target): (flips, first)} of a certificates file ({} when there is none)."""
    if not file.exists():
        return {}
    with h5py.File(file, "r") as f:
        cols = [f[name][...] for name in ("index", "target", "flips", "first")]
    return {(int(i), int(t)): (int(n), int(q)) for i, t, n, q in zip(*cols)}


def lookup(known: dict, rows, targets) -> tuple[np.ndarray, np.ndarray]:
    """(flips, first) (n,) of attacks on galaxy ``rows`` at ``targets`` (n,); -1 where not known."""
    found = [known.get((int(r), int(t)), (-1, -1)) for r, t in zip(rows, targets)]
    flips = np.array([f[0] for f in found], np.int64).reshape(-1)
    return flips, np.array([f[1] for f in found], np.int64).reshape(-1)


def add(file: Path, rows, targets, flips, first) -> int:
    """Keep the scans (``flips`` >= 0) of attacks on galaxy ``rows`` at ``targets`` in ``file`` with
    what it holds; returns how many certificates it holds."""
    known = read(file)
    for r, t, n, q in zip(rows, targets, flips, first):
        if n >= 0:
            known[(int(r), int(t))] = (int(n), int(q))
    items = sorted(known.items())
    file.parent.mkdir(parents=True, exist_ok=True)
    with store.atomic(file) as tmp, h5py.File(tmp, "w") as f:
        f["index"] = np.array([k[0] for k, _ in items], np.int64)
        f["target"] = np.array([k[1] for k, _ in items], np.int8)
        f["flips"] = np.array([v[0] for _, v in items], np.int64)
        f["first"] = np.array([v[1] for _, v in items], np.int64)
        f.attrs["doc"] = ("certificates of single-pixel corner attacks (hpcmorph.attack.certificates): per galaxy "
                          "row and target, the corner candidates that reach the goal and the scan index of the first")
    return len(items)
