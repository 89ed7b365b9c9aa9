"""The numbers of ``analysis.json``: Table 2, the Figure 2 triplet with its church windows and
isomaps, accuracy against exposure, and attack success against k. Rank 0 only, from the latents."""

from __future__ import annotations

import json

import h5py
import numpy as np

from ..config import Config
from ..generate.classes import CLASS_NAMES
from ..attack.stage import range_name
from ..mpi import log
from . import church, claims, distances, exposure, isomap
from .inputs import AttackRows, TestSet, attack_command, attack_state
from .latents import AttackedLatents, Latents


def triplet_attack(attacks: AttackRows, v: int, image: int) -> int | None:
    """Row of model ``v``'s attack on ``image`` shown with the triplet: the successful attack with the
    fewest queries (ties: lowest target), else the one that came closest (highest target probability)."""
    rows = np.flatnonzero((attacks.variant == v) & (attacks.index == image))
    if len(rows) == 0:
        return None
    good = rows[attacks.success[rows]]
    if len(good):
        return int(good[np.lexsort((attacks.target[good], attacks.queries[good]))][0])
    target = attacks.target[rows]
    p = attacks.prob_after[rows, np.maximum(target, 0)]
    return int(rows[np.lexsort((target, -p))][0])


def default_triplet(attacks: AttackRows, n_variants: int, y1_wrong: set[int]) -> int | None:
    """The first image (by galaxy row) flipped for every model, preferring one whose Y1 image the
    first model (regular) gets wrong; else the first flipped for any model; else the first attacked."""
    images = np.unique(attacks.index)
    flipped = [set(attacks.index[(attacks.variant == v) & attacks.success].tolist())
               for v in range(n_variants)]
    for_all = [int(i) for i in images if all(i in s for s in flipped)]
    preferred = [i for i in for_all if i in y1_wrong]
    for choice in (preferred, for_all, [int(i) for i in images if any(i in s for s in flipped)], images.tolist()):
        if choice:
            return int(choice[0])
    return None


def analyse(cfg: Config, models: dict, lat: Latents, attacks: AttackRows, att: AttackedLatents, test_set: TestSet,
            others: dict[str, tuple[AttackRows, AttackedLatents]] | None = None) -> dict:
    """The numbers of analysis.json (table2, exposure, success_vs_k, triplet) and "_panels", what the
    figures draw, of one seed's models (``models``: {variant: (model, stretch)}, in attack.variants
    order) on its test images and attack. Rank 0 only.

    others: {value range name: (rows, latents)} of the run's attacks in other value ranges
    (:func:`.inputs.other_range_attack`): Table 2 once more for each ("table2_by_range", with the
    configured range's, and the panels' "distances_by_range").
    """
    a = cfg.analyze
    variants = list(models)
    fractions, y1_fraction = test_set.fractions, test_set.y1_fraction
    test, labels = lat.index, lat.label
    where = {int(r): i for i, r in enumerate(test)}

    def table2_of(rows: AttackRows, z_attacked: np.ndarray) -> tuple[dict, dict]:
        """Table 2 (with the paper's) and its per-image panels, each flip's queries included, of one attack."""
        t, p = distances.table2(rows, z_attacked, test, lat.z_y10, lat.z_y1, variants, seed=cfg.run.seed)
        t["paper"] = distances.PAPER
        for v in variants:
            p[v]["queries"] = rows.queries[p[v]["attack_row"]]
        return t, p

    table2, per_image = table2_of(attacks, att.z_attacked)
    configured = range_name(cfg.attack.pixel_range)
    by_range, images_by_range = {configured: table2}, {configured: per_image}
    for name, (cols, z) in (others or {}).items():
        by_range[name], images_by_range[name] = table2_of(cols, z.z_attacked)

    # The triplet of Figure 2.
    first = 0 if "regular" not in variants else variants.index("regular")
    y1_wrong = {int(r) for r, p, t in zip(test, lat.pred_y1[:, first], labels) if p != t}
    image = a.triplet if a.triplet is not None else default_triplet(attacks, len(variants), y1_wrong)
    church_panels, iso_panels, triplet = {}, {}, None
    sample = isomap.sample(test, a.isomap_images, cfg.run.seed, include=image)
    pos = np.array([where[int(r)] for r in sample], np.int64)
    if image is not None:
        t = where[int(image)]
        triplet = {"index": int(image), "label": int(labels[t]), "label_name": CLASS_NAMES[int(labels[t])],
                   "variants": {}}
    for v, name in enumerate(variants):
        row = None if image is None else triplet_attack(attacks, v, int(image))
        extra = None
        if row is not None:
            t = where[int(image)]
            z0, z1, za = lat.z_y10[t, v], lat.z_y1[t, v], att.z_attacked[row]
            head = models[name][0].head
            win = church.window(head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy(), z0, z1, za,
                                a.church_extent, a.church_step, a.church_orthogonal)
            target = int(attacks.target[row])
            church_panels[name] = {"window": win, "label": int(labels[t]), "target": target,
                                   "flipped": bool(attacks.success[row])}
            pred_y1 = int(lat.pred_y1[t, v])
            triplet["variants"][name] = {
                "target": target, "target_name": CLASS_NAMES[target] if target >= 0 else "any",
                "pred_y1": pred_y1, "pred_y1_name": CLASS_NAMES[pred_y1],
                "pred_attacked": int(att.pred_attacked[row]), "flipped": bool(attacks.success[row]),
                "attack_row": int(row), "queries": int(attacks.queries[row]),
                "distance_y1": float(distances.distance(z1, z0)),
                "distance_attacked": float(distances.distance(za, z0)),
                "markers": {k: list(xy) for k, xy in win["markers"].items()}}
            extra = za[None]
        iso = isomap.fit(lat.z_y10[pos, v], lat.z_y1[pos, v], a.isomap_neighbors, extra)
        tpos = None if image is None else int(np.searchsorted(sample, image))
        iso_panels[name] = {"isomap": iso, "labels": labels[pos].astype(int), "triplet_pos": tpos}

    accuracy = {name: {"y10": _acc(lat.pred_y10[:, v], labels), "y1": _acc(lat.pred_y1[:, v], labels)}
                for v, name in enumerate(variants)}

    # Accuracy against exposure.
    exposure_result = None
    if fractions:
        acc = {name: [float(np.mean(lat.pred_exposure[:, v, j] == labels)) if len(labels) else None
                      for j in range(len(fractions))] for v, name in enumerate(variants)}
        exposure_result = {"fractions": fractions, "years": [exposure.YEARS * f for f in fractions], "accuracy": acc,
                           "y1_years": exposure.YEARS * y1_fraction,
                           "test_accuracy_y1_y10": {name: [a["y1"], a["y10"]] for name, a in accuracy.items()}}

    # The isomaps' and church windows' "Y1 falls into another class region", counted over every test
    # image: the share whose Y1 image the model puts in another class than its Y10 image.
    moved = {}
    for v, name in enumerate(variants):
        moved[name] = claims.class_change(lat.pred_y10[:, v], lat.pred_y1[:, v])
    return {"table2": table2, "table2_by_range": by_range, "exposure": exposure_result,
            "success_vs_k": success_vs_k(cfg, variants), "triplet": triplet, "test_accuracy": accuracy,
            "y1_class_change": moved,
            "_panels": {"church": church_panels, "isomap": iso_panels, "distances": per_image,
                        "distances_by_range": images_by_range}}


def _acc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    return float(np.mean(pred == labels)) if len(labels) else None


def success_vs_k(cfg: Config, variants: list[str]) -> dict:
    """Fraction of the attacked images flipped, per model, for each k of analyze.k_sweep with a current
    attack output; the others are listed as missing (a warning, not an error)."""
    out = {"k": [], "flipped_fraction": {v: [] for v in variants}, "missing_k": []}
    for k in sorted(set(cfg.analyze.k_sweep)):
        path, current = attack_state(cfg, k)
        if not current:
            log.warning("analyze: no current attack output for k=%d (%s %s); run `%s` to add it to the success "
                        "curve", k, path, "is from other settings" if path.exists() else "is missing",
                        attack_command(k))
            out["missing_k"].append(k)
            continue
        with h5py.File(path, "r") as f:
            summary = json.loads(f.attrs["summary"])["variants"]
        out["k"].append(k)
        for v in variants:
            s = summary.get(v)
            out["flipped_fraction"][v].append(s["flipped"] / s["attacked"] if s and s["attacked"] else None)
    return out

