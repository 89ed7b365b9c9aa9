"""Stage 4 driver: latents of every test and attacked image, then the paper's tables and figures.

1. Check the inputs: galaxies.h5, the trained models of ``attack.variants`` (at the attack's model
   seed), ``train_summary.json`` and the attack with k = ``attack.pixels``, each current for this
   config (a missing or stale one is exit 2, naming the file and the command that makes it).
2. Latents (``latents.py``): every Y10 and Y1 test image (asinh-stretched as the models were
   trained) and every attacked image of the attack file (already normalised: used as stored) goes
   through each model once, in fixed chunks of ``analyze.batch_size`` images dealt round-robin to
   the ranks (one GPU per rank where there are GPUs). The test galaxies' noiseless images are also
   observed again at each of ``analyze.exposure_fractions`` and classified (``exposure.py``).
   All ranks write ``latents.h5`` and ``attack_latents.h5`` together (``store.write_table``).
3. Rank 0 computes Table 2 (``distances.py``), the church windows (``church.py``) and isomaps
   (``isomap.py``) of one (Y10, Y1, attacked) triplet, accuracy against exposure, attack success
   against k, reads Table 1 over seeds, draws the figures (``figures.py``) and writes
   ``analysis.json`` last: the file the report reads, and the mark of a complete analysis.

Nothing depends on the rank: chunks are fixed, and every random draw comes from ``run.seed`` and
the galaxy row, so the outputs are the same on any number of ranks.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import store
from ..attack.stage import columns as attack_layout
from ..attack.stage import load_model, model_seed
from ..attack.stage import digest as attack_digest
from ..attack.stage import output_path as attack_path
from ..config import Config
from ..generate import output_path as galaxies_path
from ..generate.dataset import TEST
from ..generate.morphology import CLASS_NAMES
from ..errors import StageError
from ..lock import locked
from ..generate.survey import bands as survey_bands
from ..mpi import Context, device_for, log
from . import church, distances, exposure, isomap, latents

STAGE = "analyze"
OUTPUT_DIR = "analysis"
JSON_NAME = "analysis.json"
LATENTS, ATTACK_LATENTS = "latents.h5", "attack_latents.h5"
FIGURES = ("figure2", "church_windows", "isomaps", "exposure", "success_vs_k", "distances")
# Settings that change no number (batching is fixed per chunk; figures are drawn from the numbers).
_NEUTRAL = ("batch_size", "threads", "figures")
_ATTACK_SCALARS = ("variant", "index", "label", "target", "success", "queries")


def output_dir(cfg: Config) -> Path:
    return Path(cfg.run.root) / cfg.run.name / OUTPUT_DIR


def attack_config(cfg: Config, k: int) -> Config:
    """The config of the k-pixel attack (its output: ``attack.stage.output_path`` of it)."""
    return cfg if k == cfg.attack.pixels else cfg.updated({"attack.pixels": k})


def _attack_state(cfg: Config, k: int) -> tuple[Path, bool]:
    """(path of the k-pixel attack, whether it is a complete output of this config)."""
    ck = attack_config(cfg, k)
    path = attack_path(ck)
    return path, path.exists() and store.output_digest(path) == attack_digest(ck)


def _attack_ks(cfg: Config) -> list[int]:
    return sorted(set(cfg.analyze.k_sweep) | {cfg.attack.pixels})


def digest(cfg: Config) -> str:
    """What the analysis depends on: run.seed, the data, the models, the attacks it reads (those of
    ``analyze.k_sweep`` that are on disk and current, and k = attack.pixels) and the analyze settings."""
    from ..train.stage import digest as train_digest

    keys = [f"analyze.{k}" for k in cfg.analyze.to_dict() if k not in _NEUTRAL]
    attacks = {}
    for k in _attack_ks(cfg):
        _, current = _attack_state(cfg, k)
        attacks[str(k)] = attack_digest(attack_config(cfg, k)) if current else "missing"
    parts = {"config": cfg.digest("run.seed", "generate", *keys), "train": train_digest(cfg),
             "model_seed": model_seed(cfg), "attack": attacks}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- inputs

def _attack_command(k: int) -> str:
    return "hpcmorph attack --config ..." + ("" if k == 1 else f" --set attack.pixels={k}")


def require_attack(cfg: Config) -> Path:
    """The k = attack.pixels attack output, complete and made by this config; StageError otherwise."""
    k = cfg.attack.pixels
    path, current = _attack_state(cfg, k)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        hint = " (a .tmp file exists: the attack did not finish; rerun it)" if tmp.exists() else ""
        raise StageError(f"{path}: no such file; run `{_attack_command(k)}` with this config first "
                         f"(analyze reads the k={k} attack, attack.pixels){hint}")
    if not current:
        raise StageError(f"{path} was made with other settings (digest {store.output_digest(path)}, this config "
                         f"{attack_digest(cfg)}); run `{_attack_command(k)}` with this config first")
    return path


def read_table1(cfg: Config) -> dict:
    """Table 1 over seeds from ``train_summary.json`` ({variant: {"y10"|"y1": {metric: [mean, std]}, "seeds"}})."""
    from ..train.stage import digest as train_digest

    path = Path(cfg.run.root) / cfg.run.name / "train_summary.json"
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: no such file; run `hpcmorph train` with this config first") from None
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not a readable train summary ({err})") from None
    if found.get("digest") != train_digest(cfg) or "table1" not in found:
        raise StageError(f"{path} is from other train settings (digest {found.get('digest')}, this config "
                         f"{train_digest(cfg)}); run `hpcmorph train` with this config first")
    return found["table1"]


def _read_attack(path: Path, variants: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """(scalar columns with ``prob_after``, summary) of the attack output; its variants must be ours."""
    with store.open_checked(path, "attack") as f:
        cols = {name: f[name][...] for name in (*_ATTACK_SCALARS, "prob_after")}
        found = str(f.attrs["variant_names"]).split(",")
        summary = json.loads(f.attrs["summary"])
    if found != variants:
        raise StageError(f"{path}: attacked models {found}, but attack.variants is {variants}")
    summary_file = path.with_name(f"{path.stem}_summary.json")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        pass  # the attribute holds the same numbers
    return cols, summary


def _state(out: Path, key: str, force: bool) -> tuple[bool, str | None]:
    """(whether ``out`` holds a complete analysis of this config, the error when it holds one of another
    config), as ``store.is_current`` for one file: an analysis from another config is never replaced
    silently. Complete: analysis.json, both h5 files and every figure it lists."""
    path = out / JSON_NAME
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return False, None
    existing = found.get("digest")
    if existing != key and not force:
        return False, (f"{path} exists from a different config (digest {existing}, this one {key}); "
                       "choose another run.name or pass --force to replace it")
    files = [out / LATENTS, out / ATTACK_LATENTS]
    for name in (found.get("figures") or {}).values():
        if name:
            files += [out / name, (out / name).with_suffix(".pdf")]
    return existing == key and not force and all(p.exists() for p in files), None


def _is_current(ctx: Context, out: Path, key: str, force: bool) -> bool:
    # Rank 0 decides for all: a rank looking later could find the files rank 0 has begun to replace.
    current, error = ctx.bcast(_state(out, key, force) if ctx.is_root else None)
    if error:
        raise store.StoreError(error)
    if current:
        log.info("analyze: up to date (%s, config digest %s); nothing to do", out, key)
    return current


# -------------------------------------------------------------------------------------- columns

def columns(n_variants: int, latent_dim: int, n_fractions: int) -> dict[str, store.Column]:
    """Layout of latents.h5: one row per Y10/Y1 test image pair (documented in the README)."""
    c = store.Column
    return {
        "index": c((), "i8", "row of the galaxy in galaxies.h5 (a test image)"),
        "label": c((), "i1", "true class (0 spiral, 1 elliptical, 2 merger)"),
        "z_y10": c((n_variants, latent_dim), "f4", "latent (bottleneck output) of the normalised Y10 image, per "
                   "model (axis 1: the file attribute variant_names)"),
        "z_y1": c((n_variants, latent_dim), "f4", "latent of the normalised Y1 image, per model"),
        "pred_y10": c((n_variants,), "i1", "class each model predicts for the Y10 image"),
        "pred_y1": c((n_variants,), "i1", "class each model predicts for the Y1 image"),
        "pred_exposure": c((n_variants, n_fractions), "i1", "class each model predicts for the noiseless image "
                           "observed again at each exposure fraction (attribute exposure_fractions); -1 when "
                           "the data has no noiseless images"),
    }


def attack_columns(latent_dim: int) -> dict[str, store.Column]:
    """Layout of attack_latents.h5: one row per row of the attack file, in its order (its scalar
    columns as attack.h5 defines them)."""
    c = store.Column
    scalars = attack_layout(1, 1, 1)
    return {
        **{name: scalars[name] for name in _ATTACK_SCALARS},
        "z_attacked": c((latent_dim,), "f4", "latent of the attacked image under the attacked model"),
        "pred_attacked": c((), "i1", "class the attacked model predicts for the attacked image"),
    }


# ------------------------------------------------------------------------------------- latents

def compute_latents(cfg: Config, ctx: Context, models: dict, device, test: np.ndarray, attack_file: Path,
                    fractions: list[float], bands, pixel_scale: float) -> tuple[dict, dict]:
    """Latents of the test images and of the attacked images, every rank getting all of them.

    Returns (test columns of latents.h5 without index/label, {"z_attacked", "pred_attacked"}).
    """
    a = cfg.analyze
    variants = list(models)
    dim = next(iter(models.values()))[0].latent_dim
    n_v, n_f = len(variants), len(a.exposure_fractions)
    test_chunks = latents.chunks(len(test), a.batch_size)
    with h5py.File(attack_file, "r") as fa:
        att_variant = fa["variant"][...]
    att_chunks = latents.chunks(len(att_variant), a.batch_size)

    with h5py.File(galaxies_path(cfg), "r") as f, h5py.File(attack_file, "r") as fa:
        def test_chunk(c: int) -> dict[str, np.ndarray]:
            lo, hi = test_chunks[c]
            rows = test[lo:hi]  # increasing: what h5py's fancy reads need
            y10, y1 = f["y10"][rows], f["y1"][rows]
            out = {"z_y10": np.empty((hi - lo, n_v, dim), np.float32), "z_y1": np.empty((hi - lo, n_v, dim), np.float32),
                   "pred_y10": np.empty((hi - lo, n_v), np.int8), "pred_y1": np.empty((hi - lo, n_v), np.int8),
                   "pred_exposure": np.full((hi - lo, n_v, n_f), -1, np.int8)}
            for v, (model, stretch) in enumerate(models.values()):
                out["z_y10"][:, v], out["pred_y10"][:, v] = latents.embed(model, y10, device, stretch)
                out["z_y1"][:, v], out["pred_y1"][:, v] = latents.embed(model, y1, device, stretch)
            if fractions:
                clean = f["clean"][rows]
                for j, frac in enumerate(fractions):
                    # One observation per galaxy and exposure, shown to every model (a paired comparison).
                    seen = np.stack([exposure.reobserve(clean[i], bands, pixel_scale, frac,
                                                        exposure.seeds(cfg.run.seed, row, j, len(bands)))
                                     for i, row in enumerate(rows)])
                    for v, (model, stretch) in enumerate(models.values()):
                        out["pred_exposure"][:, v, j] = latents.embed(model, seen, device, stretch)[1]
            return out

        def attack_chunk(c: int) -> dict[str, np.ndarray]:
            lo, hi = att_chunks[c]
            images, which = fa["attacked"][lo:hi], att_variant[lo:hi]
            out = {"z_attacked": np.empty((hi - lo, dim), np.float32), "pred_attacked": np.empty(hi - lo, np.int8)}
            for v, (model, _) in enumerate(models.values()):
                sel = which == v
                if sel.any():
                    # The attacked images are the model's input as the attack built it: no stretch.
                    out["z_attacked"][sel], out["pred_attacked"][sel] = latents.embed(model, images[sel], device)
            return out

        mine = len(ctx.share(range(len(test_chunks)))) + len(ctx.share(range(len(att_chunks))))
        with ctx.progress(total=mine, desc="analyze latents (rank 0 share)", unit="chunk",
                          enabled=cfg.run.progress) as bar:
            test_parts = latents.sharded(ctx, len(test_chunks), test_chunk, bar)
            att_parts = latents.sharded(ctx, len(att_chunks), attack_chunk, bar)
    empty = {"z_y10": np.zeros((0, n_v, dim), np.float32), "z_y1": np.zeros((0, n_v, dim), np.float32),
             "pred_y10": np.zeros((0, n_v), np.int8), "pred_y1": np.zeros((0, n_v), np.int8),
             "pred_exposure": np.zeros((0, n_v, n_f), np.int8)}
    return (latents.concat(test_parts, empty),
            latents.concat(att_parts, {"z_attacked": np.zeros((0, dim), np.float32),
                                       "pred_attacked": np.zeros(0, np.int8)}))


def _write(path: Path, cols: dict[str, store.Column], data: dict[str, np.ndarray], attrs: dict, ctx: Context,
           io: str) -> None:
    n = len(next(iter(data.values())))

    def pieces(lo: int, hi: int):
        if hi > lo:  # an empty piece would skip a collective write (store._write_nothing handles "none")
            yield lo, hi, {name: data[name][lo:hi] for name in cols}

    store.write_table(path, cols, n, pieces, attrs, ctx, io)


# ------------------------------------------------------------------------------------- triplet

def triplet_attack(attacks: dict[str, np.ndarray], v: int, image: int) -> int | None:
    """Row of model ``v``'s attack on ``image`` shown with the triplet: the successful attack with the
    fewest queries (ties: lowest target), else the one that came closest (highest target probability)."""
    rows = np.flatnonzero((attacks["variant"] == v) & (attacks["index"] == image))
    if len(rows) == 0:
        return None
    good = rows[attacks["success"][rows]]
    if len(good):
        return int(good[np.lexsort((attacks["target"][good], attacks["queries"][good]))][0])
    target = attacks["target"][rows]
    p = attacks["prob_after"][rows, np.maximum(target, 0)]
    return int(rows[np.lexsort((target, -p))][0])


def default_triplet(attacks: dict[str, np.ndarray], n_variants: int, y1_wrong: set[int]) -> int | None:
    """The first image (by galaxy row) flipped for every model, preferring one whose Y1 image the
    first model (regular) gets wrong; else the first flipped for any model; else the first attacked."""
    images = np.unique(attacks["index"])
    flipped = [set(attacks["index"][(attacks["variant"] == v) & attacks["success"]].tolist()) for v in range(n_variants)]
    for_all = [int(i) for i in images if all(i in s for s in flipped)]
    preferred = [i for i in for_all if i in y1_wrong]
    for choice in (preferred, for_all, [int(i) for i in images if any(i in s for s in flipped)], images.tolist()):
        if choice:
            return int(choice[0])
    return None


# ------------------------------------------------------------------------------------------ run

@locked(output_dir)
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Analyse the run as ``cfg.analyze`` says; returns the output directory."""
    a = cfg.analyze
    out = output_dir(cfg)
    attack_file = require_attack(cfg)
    n_axis = len(church.axis(a.church_extent, a.church_step))
    if n_axis ** 2 > church.MAX_POINTS:
        raise StageError(f"analyze.church_extent / analyze.church_step give a {n_axis} x {n_axis} church window, "
                         f"over {church.MAX_POINTS} points: raise analyze.church_step")
    key = digest(cfg)
    if _is_current(ctx, out, key, force):
        return out
    started = store.now()
    io = store.resolve_io(cfg)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = device_for(ctx.local_rank)
    variants = list(dict.fromkeys(cfg.attack.variants))
    models = {v: load_model(cfg, v, device) for v in variants}
    table1 = read_table1(cfg)
    attacks, attack_summary = _read_attack(attack_file, variants)
    with store.open_checked(galaxies_path(cfg), "generate") as f:
        split, label = f["split"][...], f["label"][...]
        test = np.flatnonzero((split == TEST) & (label >= 0))
        bands = survey_bands(str(f.attrs["bands"]).split(","))
        pixel_scale, y1_fraction = float(f.attrs["pixel_scale_arcsec"]), float(f.attrs["y1_fraction"])
        clean_ok = len(test) > 0 and exposure.has_clean(f["clean"][int(test[0])])
    if a.triplet is not None and a.triplet not in set(attacks["index"].tolist()):
        shown = ", ".join(map(str, np.unique(attacks["index"])[:20]))
        raise StageError(f"analyze.triplet={a.triplet} is not an attacked image of {attack_file} (attacked rows: {shown})")
    fractions = list(a.exposure_fractions) if clean_ok else []
    if not clean_ok:
        log.info("analyze: galaxies.h5 has no noiseless images (generate.source=%s): accuracy against exposure "
                 "skipped", cfg.generate.source)
    if ctx.is_root:
        # The completeness mark goes first: a run killed from here on leaves no analysis.json. Old
        # figures go too: none may outlive the numbers they show.
        (out / JSON_NAME).unlink(missing_ok=True)
        for name in FIGURES:
            for suffix in (".png", ".pdf"):
                (out / name).with_suffix(suffix).unlink(missing_ok=True)
    log.info("analyze: %d test images, %d attack rows (k=%d), %d exposures, models %s, %d ranks, device %s",
             len(test), len(attacks["index"]), cfg.attack.pixels, len(fractions), ",".join(variants), ctx.size, device)

    lat, att = compute_latents(cfg, ctx, models, device, test, attack_file, fractions, bands, pixel_scale)
    dim = lat["z_y10"].shape[-1]
    attrs = {**store.provenance(cfg, ctx, STAGE, key, started), "variant_names": ",".join(variants),
             "class_names": ",".join(CLASS_NAMES), "model_seed": model_seed(cfg), "attack_file": attack_file.name,
             "exposure_fractions": np.asarray(a.exposure_fractions, np.float64), "exposure_observed": bool(fractions)}
    lat_data = {"index": test.astype(np.int64), "label": label[test].astype(np.int8), **lat}
    _write(out / LATENTS, columns(len(variants), dim, len(a.exposure_fractions)), lat_data, attrs, ctx, io)
    att_data = {name: attacks[name] for name in _ATTACK_SCALARS}
    att_data.update(att)
    _write(out / ATTACK_LATENTS, attack_columns(dim), att_data, attrs, ctx, io)

    if ctx.is_root:
        mismatch = int(np.sum(att["pred_attacked"] != _pred_after(attack_file)))
        if mismatch:
            log.warning("analyze: %d attacked images get another class here than in %s (near-ties in the "
                        "last bits)", mismatch, attack_file.name)
        result = analyse(cfg, models, variants, lat_data, attacks, att, fractions, y1_fraction)
        result = {"run": cfg.run.name, "digest": key, "provenance": attrs_json(attrs), "table1": table1,
                  **result, "attack": attack_summary}
        figures = _draw(cfg, out, variants, result.pop("_panels"), result) if a.figures else {}
        result["figures"] = {name: figures.get(name) for name in FIGURES}
        order = ("run", "digest", "provenance", "table1", "table2", "exposure", "success_vs_k", "triplet",
                 "attack", "figures")
        _atomic_json(out / JSON_NAME, {k: result[k] for k in order})
        log.info("analyze: Table 2 (latent distances over the flipped images):\n%s",
                 distances.format_table(result["table2"]))
        if result["exposure"] is not None:
            log.info("analyze: accuracy against exposure (years %s): %s", result["exposure"]["years"],
                     {v: [round(x, 3) for x in acc] for v, acc in result["exposure"]["accuracy"].items()})
        log.info("analyze: wrote %s", out)
    ctx.barrier()
    return out


def _pred_after(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["pred_after"][...]


def attrs_json(attrs: dict) -> dict:
    """Provenance attributes as JSON values."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v
            for k, v in attrs.items()}


def _strict(obj):
    """``obj`` with NaN and infinities as None: analysis.json stays strict JSON (Table 1 of an empty
    test set holds NaN)."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _atomic_json(path: Path, obj) -> None:
    store.write_text(path, json.dumps(_strict(obj), indent=2, allow_nan=False))


def analyse(cfg: Config, models: dict, variants: list[str], lat: dict, attacks: dict, att: dict,
            fractions: list[float], y1_fraction: float) -> dict:
    """The numbers of analysis.json (table2, exposure, success_vs_k, triplet) and "_panels", what the
    figures draw. Rank 0 only."""
    a = cfg.analyze
    test, labels = lat["index"], lat["label"]
    where = {int(r): i for i, r in enumerate(test)}
    table2, per_image = distances.table2(attacks, att["z_attacked"], test, lat["z_y10"], lat["z_y1"], variants)
    table2["paper"] = distances.PAPER

    # The triplet of Figure 2.
    first = 0 if "regular" not in variants else variants.index("regular")
    y1_wrong = {int(r) for r, p, t in zip(test, lat["pred_y1"][:, first], labels) if p != t}
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
            z0, z1, za = lat["z_y10"][t, v], lat["z_y1"][t, v], att["z_attacked"][row]
            head = models[name][0].head
            win = church.window(head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy(), z0, z1, za,
                                a.church_extent, a.church_step, a.church_orthogonal)
            target = int(attacks["target"][row])
            church_panels[name] = {"window": win, "label": int(labels[t]), "target": target,
                                   "flipped": bool(attacks["success"][row])}
            pred_y1 = int(lat["pred_y1"][t, v])
            triplet["variants"][name] = {
                "target": target, "target_name": CLASS_NAMES[target] if target >= 0 else "any",
                "pred_y1": pred_y1, "pred_y1_name": CLASS_NAMES[pred_y1],
                "pred_attacked": int(att["pred_attacked"][row]), "flipped": bool(attacks["success"][row]),
                "attack_row": int(row), "queries": int(attacks["queries"][row]),
                "distance_y1": float(distances.distance(z1, z0)), "distance_attacked": float(distances.distance(za, z0)),
                "markers": {k: list(xy) for k, xy in win["markers"].items()}}
            extra = za[None]
        iso = isomap.fit(lat["z_y10"][pos, v], lat["z_y1"][pos, v], a.isomap_neighbors, extra)
        tpos = None if image is None else int(np.searchsorted(sample, image))
        iso_panels[name] = {"isomap": iso, "labels": labels[pos].astype(int), "triplet_pos": tpos}

    # Accuracy against exposure.
    exposure_result = None
    if fractions:
        acc = {name: [float(np.mean(lat["pred_exposure"][:, v, j] == labels)) if len(labels) else None
                      for j in range(len(fractions))] for v, name in enumerate(variants)}
        exposure_result = {"fractions": fractions, "years": [exposure.YEARS * f for f in fractions], "accuracy": acc,
                           "y1_years": exposure.YEARS * y1_fraction,
                           "test_accuracy_y1_y10": {name: [_acc(lat["pred_y1"][:, v], labels),
                                                           _acc(lat["pred_y10"][:, v], labels)]
                                                    for v, name in enumerate(variants)}}

    return {"table2": table2, "exposure": exposure_result, "success_vs_k": success_vs_k(cfg, variants),
            "triplet": triplet,
            "_panels": {"church": church_panels, "isomap": iso_panels, "distances": per_image}}


def _acc(pred: np.ndarray, labels: np.ndarray) -> float | None:
    return float(np.mean(pred == labels)) if len(labels) else None


def success_vs_k(cfg: Config, variants: list[str]) -> dict:
    """Fraction of the attacked images flipped, per model, for each k of analyze.k_sweep with a current
    attack output; the others are listed as missing (a warning, not an error)."""
    out = {"k": [], "flipped_fraction": {v: [] for v in variants}, "missing_k": []}
    for k in sorted(set(cfg.analyze.k_sweep)):
        path, current = _attack_state(cfg, k)
        if not current:
            log.warning("analyze: no current attack output for k=%d (%s %s); run `%s` to add it to the success "
                        "curve", k, path, "is from other settings" if path.exists() else "is missing", _attack_command(k))
            out["missing_k"].append(k)
            continue
        with h5py.File(path, "r") as f:
            summary = json.loads(f.attrs["summary"])["variants"]
        out["k"].append(k)
        for v in variants:
            s = summary.get(v)
            out["flipped_fraction"][v].append(s["flipped"] / s["attacked"] if s and s["attacked"] else None)
    return out


def _draw(cfg: Config, out: Path, variants: list[str], panels: dict, result: dict) -> dict[str, str]:
    from . import figures

    drawn = {
        "figure2": figures.figure2(variants, panels["church"], panels["isomap"], out / "figure2.png"),
        "church_windows": figures.side_by_side(variants, panels["church"], figures.church_panel,
                                               out / "church_windows.png"),
        "isomaps": figures.side_by_side(variants, panels["isomap"], figures.isomap_panel, out / "isomaps.png"),
        "distances": figures.distances(panels["distances"], out / "distances.png"),
        "success_vs_k": figures.success_vs_k(result["success_vs_k"], out / "success_vs_k.png"),
    }
    if result["exposure"] is not None:
        e = result["exposure"]
        drawn["exposure"] = figures.exposure(e, e["test_accuracy_y1_y10"], e["y1_years"], out / "exposure.png")
    return {name: path.name for name, path in drawn.items()}
