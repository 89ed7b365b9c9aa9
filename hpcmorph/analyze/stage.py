"""Stage 4 driver: latents of every test and attacked image, then the paper's tables and figures.

1. Check the inputs (``inputs.py``): galaxies.h5, the trained models of ``attack.variants`` (at the
   attack's model seed), ``train_summary.json`` and the attack with k = ``attack.pixels``, each
   current for this config (a missing or stale one is exit 2, naming the file and the command that
   makes it).
2. Latents (``latents.py``): every Y10 and Y1 test image (asinh-stretched as the models were
   trained) and every attacked image of the attack file (already normalised: used as stored) goes
   through each model once, in fixed chunks of ``analyze.batch_size`` images dealt round-robin to
   the ranks (one GPU per rank where there are GPUs). The test galaxies' noiseless images are also
   observed again at each of ``analyze.exposure_fractions`` and classified (``exposure.py``).
   All ranks write ``latents.h5`` and ``attack_latents.h5`` together (``store.write_table``). A
   trained variant that was not attacked has its test images embedded too, for calibration alone.
3. Rank 0 computes (``numbers.py``) Table 2 (``distances.py``), the church windows (``church.py``) and isomaps
   (``isomap.py``) of one (Y10, Y1, attacked) triplet, accuracy against exposure, attack success
   against k, calibration (``calibration.py``), reads Table 1 over seeds, puts every trained variant
   in one table (``comparison.py``), sets each variant against regular training image by image
   (``effects.py``: what it buys in robustness, what it costs on Y1), draws the figures (``figures.py``) and writes
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

from .. import layout, store
from ..attack.stage import config_for_k, model_seed, seed_configs
from ..attack.stage import digest as attack_digest
from ..config import Config
from ..errors import StageError
from ..generate.classes import CLASS_NAMES
from ..layout import RunLayout
from ..lock import locked
from ..mpi import Context, device_for, log
from ..train import saved
from . import calibration, church, claims, comparison, distances, effects, latents, numbers, queries, seeds
from .inputs import (AttackRows, TestSet, attack_ks, attack_state, other_range_attack, read_attack,
                     read_test_set, read_train_summary, require_attack)

STAGE = "analyze"
OUTPUT_DIR = layout.ANALYSIS
JSON_NAME = layout.ANALYSIS_JSON
LATENTS, ATTACK_LATENTS = "latents.h5", "attack_latents.h5"
FIGURES = ("figure2", "church_windows", "isomaps", "exposure", "success_vs_k", "distances", "success_vs_queries",
           "robustness", "calibration", "comparison")
# Settings that change no number (batching is fixed per chunk; figures are drawn from the numbers).
_NEUTRAL = ("batch_size", "threads", "figures")


def output_dir(cfg: Config) -> Path:
    return RunLayout.of(cfg).analysis


def digest(cfg: Config) -> str:
    """What the analysis depends on: run.seed, the data, the models, the attacks it reads (for each
    analysed seed, those of ``analyze.k_sweep`` that are on disk and current, and k = attack.pixels)
    and the analyze settings."""
    from ..train.stage import digest as train_digest

    keys = [f"analyze.{k}" for k in cfg.analyze.to_dict() if k not in _NEUTRAL]
    attacks, compared = {}, {}
    for c in seed_configs(cfg):
        s = model_seed(c)
        for k in attack_ks(c):
            _, current = attack_state(c, k)
            attacks[f"s{s}-k{k}"] = attack_digest(config_for_k(c, k)) if current else "missing"
        # The k = 1 attacks of the methods comparison: a new one on disk makes the analysis stale.
        compared.update({path.name: store.output_digest(path) for _, path in queries.outputs(c)})
    parts = {"config": cfg.digest("run.seed", "generate", *keys), "train": train_digest(cfg),
             "model_seed": model_seed(cfg), "attack": attacks, "compared": compared}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def seed_dir(cfg: Config, seed_cfg: Config) -> Path:
    """Where one analysed seed's latents go: the analysis folder for attack.model_seed's models, a
    ``seed<s>`` folder inside it for the other seeds of analyze.all_seeds."""
    out = output_dir(cfg)
    return out if model_seed(seed_cfg) == model_seed(cfg) else out / f"seed{model_seed(seed_cfg)}"


def _state(out: Path, key: str, force: bool) -> tuple[bool, str | None]:
    """(whether ``out`` holds a complete analysis of this config, the error when it holds one of another
    config), as ``store.is_current`` for one file: an analysis from another config is never replaced
    silently. Complete: analysis.json, both h5 files and every figure it lists."""
    try:
        found = store.read_json(out / JSON_NAME)
    except store.StoreError:
        return False, None
    existing = found.get("digest")
    if existing != key and not force:
        return False, (f"{out / JSON_NAME} exists from a different config (digest {existing}, this one {key}); "
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


# ------------------------------------------------------------------------------------------ run

@locked(output_dir)
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Analyse the run as ``cfg.analyze`` says; returns the output directory."""
    out, seeds = output_dir(cfg), seed_configs(cfg)
    attack_files = [require_attack(c) for c in seeds]
    _check_church_grid(cfg)
    key = digest(cfg)
    if _is_current(ctx, out, key, force):
        return out
    started = store.now()
    if cfg.analyze.threads:
        torch.set_num_threads(cfg.analyze.threads)
    device = device_for(ctx.local_rank)
    train_summary = read_train_summary(cfg)
    _clear(ctx, out)
    results = [analyse_seed(c, ctx, device, seed_dir(cfg, c), f, key, started) for c, f in zip(seeds, attack_files)]
    if ctx.is_root:
        conclude(cfg, out, key, results, train_summary)
    ctx.barrier()
    return out


def analyse_seed(cfg: Config, ctx: Context, device, out: Path, attack_file: Path, key: str,
                 started: str) -> dict | None:
    """Every rank: the latents of one seed's models (``cfg``'s attack.model_seed) in ``out``; rank 0
    returns that seed's numbers (:func:`.numbers.analyse`, its attack summary and methods table)."""
    variants = list(dict.fromkeys(cfg.attack.variants))
    seed = model_seed(cfg)
    models = {v: saved.load_model(cfg, v, seed, device) for v in variants}
    attacks, attack_summary = read_attack(attack_file, variants)
    test = read_test_set(cfg, attacks, attack_file)
    log.info("analyze: seed %d: %d test images, %d attack rows (k=%d), %d exposures, models %s, %d ranks, device %s",
             seed, len(test.rows), len(attacks.index), cfg.attack.pixels, len(test.fractions), ",".join(variants),
             ctx.size, device)
    lat, att, attrs = embed(cfg, ctx, models, device, test, attacks, attack_file, out, key, started)
    # The trained variants that were not attacked: their test latents too, for calibration only.
    unattacked = {v: saved.load_model(cfg, v, seed, device) for v in dict.fromkeys(cfg.train.variants)
                  if v not in models}
    z_unattacked = latents.test_latents(cfg, ctx, unattacked, device, test) if unattacked else None
    others = {}
    other = other_range_attack(cfg)
    if other is not None:
        name, path, suffix = other
        others[name] = embed_attack(cfg, ctx, models, device, path, variants, out / attack_latents_name(suffix), attrs)
    if not ctx.is_root:
        return None
    mismatch = int(np.sum(att.pred_attacked != _pred_after(attack_file)))
    if mismatch:
        log.warning("analyze: %d attacked images get another class here than in %s (near-ties in the "
                    "last bits)", mismatch, attack_file.name)
    result = numbers.analyse(cfg, models, lat, attacks, att, test, others)
    bins = cfg.analyze.calibration_bins
    cal = {v: calibration.of_model(models[v][0], lat.z_y10[:, i], lat.z_y1[:, i], lat.label, bins)
           for i, v in enumerate(variants)}
    y1_correct = {v: lat.pred_y1[:, i] == lat.label for i, v in enumerate(variants)}
    for i, (v, (model, _)) in enumerate(unattacked.items()):
        cal[v] = calibration.of_model(model, z_unattacked[0][:, i], z_unattacked[1][:, i], lat.label, bins)
        y1_correct[v] = calibration.logits(model, z_unattacked[1][:, i]).argmax(1) == lat.label
    order = dict.fromkeys([*cfg.train.variants, *variants])
    return {**result, "seed": seed, "variants": variants, "provenance": attrs_json(attrs), "attack": attack_summary,
            "methods": queries.compare(cfg, variants), "calibration": {v: cal[v] for v in order if v in cal},
            "effects": effects.evidence(attacks, variants, {v: y1_correct[v] for v in order if v in y1_correct})}


def _check_church_grid(cfg: Config) -> None:
    a = cfg.analyze
    n_axis = len(church.axis(a.church_extent, a.church_step))
    if n_axis ** 2 > church.MAX_POINTS:
        raise StageError(f"analyze.church_extent / analyze.church_step give a {n_axis} x {n_axis} church window, "
                         f"over {church.MAX_POINTS} points: raise analyze.church_step")


def _clear(ctx: Context, out: Path) -> None:
    """Rank 0: the completeness mark goes first, so a run killed from here on leaves no analysis.json.
    Old figures go too: none may outlive the numbers they show."""
    if ctx.is_root:
        (out / JSON_NAME).unlink(missing_ok=True)
        for name in FIGURES:
            for suffix in (".png", ".pdf"):
                (out / name).with_suffix(suffix).unlink(missing_ok=True)


def embed(cfg: Config, ctx: Context, models: dict, device, test: TestSet, attacks: AttackRows, attack_file: Path,
          out: Path, key: str, started: str) -> tuple[latents.Latents, latents.AttackedLatents, dict]:
    """Every rank: latents of the test and attacked images, written to latents.h5 and
    attack_latents.h5; returns (the test images', the attacked images', their files' attributes)."""
    a, variants = cfg.analyze, list(models)
    lat, att = latents.compute_latents(cfg, ctx, models, device, test, attack_file)
    dim = lat.z_y10.shape[-1]
    attrs = {**store.provenance(cfg, ctx, STAGE, key, started), "variant_names": ",".join(variants),
             "class_names": ",".join(CLASS_NAMES), "model_seed": model_seed(cfg), "attack_file": attack_file.name,
             "exposure_fractions": np.asarray(a.exposure_fractions, np.float64),
             "exposure_observed": bool(test.fractions)}
    io = store.resolve_io(cfg)
    layout = latents.columns(len(variants), dim, len(a.exposure_fractions))
    latents.write(out / LATENTS, layout, lat.data(), attrs, ctx, io)
    latents.write(out / ATTACK_LATENTS, latents.attack_columns(dim), {**attacks.scalars(), **att.data()}, attrs,
                  ctx, io)
    return lat, att, attrs


def attack_latents_name(suffix: str) -> str:
    """``attack_latents<suffix>.h5``: the latents of an attack in another value range (``-r01``)."""
    return ATTACK_LATENTS.replace(".h5", f"{suffix}.h5")


def embed_attack(cfg: Config, ctx: Context, models: dict, device, attack_file: Path, variants: list[str], path: Path,
                 attrs: dict) -> tuple[AttackRows, latents.AttackedLatents]:
    """Every rank: the latents of another attack output's attacked images (the other value range's),
    written to ``path``; returns (its scalar columns, its latents)."""
    attacks, _ = read_attack(attack_file, variants)
    with h5py.File(attack_file, "r") as fa:
        att = latents.attack_latents(cfg, ctx, models, device, fa)
    dim = next(iter(models.values()))[0].latent_dim
    latents.write(path, latents.attack_columns(dim), {**attacks.scalars(), **att.data()},
                  {**attrs, "attack_file": attack_file.name}, ctx, store.resolve_io(cfg))
    return attacks, att


def conclude(cfg: Config, out: Path, key: str, results: list[dict], train_summary: dict) -> None:
    """Rank 0: the numbers over seeds, the figures, and analysis.json last (the mark of a complete
    analysis). Table 2 pools the flipped images of every analysed seed; the first seed's numbers are
    the paper's single-model figures (church windows, isomaps, the triplet). The comparison has a
    row per trained variant (``train_summary``: train_summary.json)."""
    result = dict(results[0])
    variants = result.pop("variants")
    result.pop("calibration")
    result.pop("effects")
    evidence = seeds.evidence(results)
    ranges = [name for name in results[0]["table2_by_range"] if all(name in r["table2_by_range"] for r in results)]
    result = {"run": cfg.run.name, "digest": key, "table1": train_summary["table1"], **result,
              "table2": seeds.table2(results, seed=cfg.run.seed),
              "table2_by_range": {name: seeds.table2(results, seed=cfg.run.seed, value_range=name) for name in ranges},
              "over_seeds": seeds.over_seeds(results), "certification": seeds.certification(results),
              "claims": claims.claims(evidence, seed=cfg.run.seed),
              "calibration": seeds.calibration(results, cfg.analyze.calibration_bins)}
    ks = sorted({2, 3} | {k for k in cfg.analyze.k_sweep if k > 1})
    result["comparison"] = comparison.table(list(cfg.train.variants), results, train_summary["runs"], result["table2"],
                                            ks, cfg.analyze.calibration_bins)
    per_seed_effects = [r["effects"] for r in results]
    result["effects"] = effects.against_baseline(per_seed_effects, seed=cfg.run.seed)
    # Against the paper's adapted model, every other variant (regular against mmd is the row above, negated).
    result["effects_mmd"] = effects.against_baseline(per_seed_effects, seed=cfg.run.seed, baseline=effects.ADAPTED,
                                                     skip=(effects.BASELINE,))
    panels = result.pop("_panels")
    figures = _draw(cfg, out, variants, panels, result, seeds.robustness(results)) if cfg.analyze.figures else {}
    result["figures"] = {name: figures.get(name) for name in FIGURES}
    order = ("run", "digest", "seed", "provenance", "table1", "table2", "table2_by_range", "exposure", "success_vs_k",
             "triplet", "test_accuracy", "y1_class_change", "attack", "methods", "certification", "over_seeds",
             "claims", "calibration", "comparison", "effects", "effects_mmd", "figures")
    store.write_json(out / JSON_NAME, {k: result[k] for k in order})
    log.info("analyze: Table 2 (latent distances over the flipped images):\n%s",
             distances.format_table(result["table2"]))
    log.info("analyze: the paper's claims over seeds %s: %s", result["over_seeds"]["seeds"],
             claims.summary(result["claims"]))
    if result["exposure"] is not None:
        log.info("analyze: accuracy against exposure (years %s): %s", result["exposure"]["years"],
                 {v: [round(x, 3) for x in acc] for v, acc in result["exposure"]["accuracy"].items()})
    log.info("analyze: wrote %s", out)


def _pred_after(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["pred_after"][...]


def attrs_json(attrs: dict) -> dict:
    """Provenance attributes as JSON values."""
    return {k: v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v
            for k, v in attrs.items()}


def _draw(cfg: Config, out: Path, variants: list[str], panels: dict, result: dict,
          robustness: tuple) -> dict[str, str]:
    from . import figures

    drawn = {
        "figure2": figures.figure2(variants, panels["church"], panels["isomap"], out / "figure2.png"),
        "church_windows": figures.side_by_side(variants, panels["church"], figures.church_panel,
                                               out / "church_windows.png"),
        "isomaps": figures.side_by_side(variants, panels["isomap"], figures.isomap_panel, out / "isomaps.png"),
        "distances": figures.distances(panels["distances"], out / "distances.png"),
        "success_vs_k": figures.success_vs_k(result["success_vs_k"], out / "success_vs_k.png"),
        "success_vs_queries": figures.success_vs_queries(result["methods"], out / "success_vs_queries.png"),
        "robustness": figures.robustness(*robustness[:2], out / "robustness.png", budget=robustness[2]),
        "calibration": figures.reliability(result["calibration"], out / "calibration.png"),
        "comparison": figures.robustness_vs_accuracy(result["comparison"], out / "comparison.png"),
    }
    if result["exposure"] is not None:
        e = result["exposure"]
        drawn["exposure"] = figures.exposure(e, e["test_accuracy_y1_y10"], e["y1_years"], out / "exposure.png",
                                             result["over_seeds"])
    return {name: path.name for name, path in drawn.items()}
