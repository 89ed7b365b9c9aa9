"""Stage 3 driver: one-pixel (k-pixel) attacks on the trained models, sharded over MPI ranks.

1. Load the trained model of each variant in ``attack.variants`` (``<variant>/seed<s>/model.pt``,
   s = ``attack.model_seed`` or the first of ``train.seeds``) with its fitted normalisation.
2. Pick the images: walk the Y10 test split in an order drawn from ``run.seed`` and keep the first
   ``attack.n_images`` that every model classifies correctly (``attack.only_correct``; the others are
   counted as skipped). Both variants are attacked on the same images. The choice is saved in the
   checkpoint folder, so a resumed run attacks the same images.
3. Attacks are (variant, image, target) triples; blocks of ``attack.images_per_batch`` images of one
   variant (all their targets) are one batched run of ``attack.method`` (``methods.attack``: DE,
   the exhaustive corner search, Sparse-RS or the saliency-ranked search) and one checkpoint
   file in ``<output>.parts-<digest>/`` (written, then renamed). Ranks take
   the blocks not yet on disk round-robin.
4. All ranks write the output together (``store.write_table``); rank 0 writes the summary and the
   figures, removes the checkpoint folder, and ``<output>.complete`` marks the whole stage done
   (``store.produce``).

Every attack's random numbers come from ``SeedSequence([run.seed, stream, galaxy row, target + 1])``,
never from the rank or the batch, and an attack's result does not depend on the other attacks in its
batch, so the output is the same on any number of ranks and after a resume.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import precision, store
from ..config import Config
from ..generate.dataset import TEST
from ..generate.classes import CLASS_NAMES
from ..layout import RunLayout
from ..lock import locked
from ..mpi import Context, device_for, log
from ..train import saved
from . import certificates as kept
from ..onepixel import pixels
from ..onepixel.corners import Box, data_range, default_range
from ..onepixel.goal import UNTARGETED
from . import certify, methods, mixed

STAGE = "attack"
VARIANTS = ("regular", "mmd")
SELECT_STREAM, ATTACK_STREAM = 10, 11
SELECT_CHUNK = 32  # test images per classification pass while choosing images (fixed: see _classify)
# Attack settings that change no number, left out of the digest. The batching settings
# (images_per_batch, forward_batch) are not among them: they decide which candidates share a forward
# pass, and on some CPUs the last bits of a network's output depend on the batch it is computed in.
_NEUTRAL = ("threads", "figures", "keep_parts")


def output_stem(cfg: Config) -> str:
    """``attack`` for the paper's targeted one-pixel attack by DE in the data's value range on the
    first seed's models; other methods, modes, k, value ranges (``-r01`` for the authors' [0, 1]) and
    model seeds (``-s<seed>``) get their own file."""
    a, seed = cfg.attack, model_seed(cfg)
    return ("attack" + ("" if seed == cfg.train.seeds[0] else f"-s{seed}")
            + ("" if a.method == "de" else f"-{a.method}") + ("" if a.mode == "targeted" else "-untargeted")
            + ("" if a.pixels == 1 else f"-k{a.pixels}") + range_suffix(a.pixel_range))


def range_suffix(pixel_range) -> str:
    """File-name suffix of a value range: none for the data's range (the default), ``-r01`` for
    [0, 1], ``-r<min>_<max>`` for any other."""
    if pixel_range is None:
        return ""
    lo, hi = (float(v) for v in pixel_range)
    return "-r01" if (lo, hi) == (0.0, 1.0) else f"-r{lo:g}_{hi:g}"


def range_name(pixel_range) -> str:
    """``data`` for the data's value range (attack.pixel_range null), ``[lo, hi]`` otherwise."""
    return "data" if pixel_range is None else f"[{pixel_range[0]:g}, {pixel_range[1]:g}]"


def output_path(cfg: Config) -> Path:
    return RunLayout.of(cfg).attack(output_stem(cfg))


def config_for_k(cfg: Config, k: int) -> Config:
    """The config of the k-pixel attack (``cfg`` itself when k = attack.pixels)."""
    return cfg if k == cfg.attack.pixels else cfg.updated({"attack.pixels": k})


def configs(cfg: Config) -> list[Config]:
    """One config per attack a whole run makes: k = attack.pixels first, then the other k of
    analyze.k_sweep, then the k = 1 comparisons of analyze.compare_methods / compare_ranges
    (:mod:`.compare`); with analyze.all_seeds the same for every other seed's models (without the
    methods comparison, which needs one seed); each output file once."""
    from .compare import extra_configs

    found = {}
    for seed_cfg in seed_configs(cfg):
        first = seed_cfg is cfg
        ks = [config_for_k(seed_cfg, k) for k in dict.fromkeys([cfg.attack.pixels, *cfg.analyze.k_sweep])]
        for c in ks + extra_configs(seed_cfg, with_methods=first):
            found.setdefault(output_path(c), c)
    return list(found.values())


def seed_configs(cfg: Config) -> list[Config]:
    """``cfg`` (attack.model_seed's models), then, with analyze.all_seeds, the config of every other
    seed of train.seeds."""
    if not cfg.analyze.all_seeds:
        return [cfg]
    others = [s for s in dict.fromkeys(cfg.train.seeds) if s != model_seed(cfg)]
    return [cfg] + [cfg.updated({"attack.model_seed": s}) for s in others]


def model_seed(cfg: Config) -> int:
    seed = cfg.attack.model_seed
    return cfg.train.seeds[0] if seed is None else seed


def digest(cfg: Config) -> str:
    """What the output depends on: run.seed, the data, the trained model and the attack settings."""
    from ..train.stage import digest as train_digest

    # model_seed enters resolved (null means the first seed), so both spellings give one file.
    skip = (*_NEUTRAL, "model_seed", *methods.unused(cfg.attack.method), *methods.certify_unused(cfg.attack))
    keys = [f"attack.{k}" for k in cfg.attack.to_dict() if k not in skip]
    parts = {"config": cfg.digest("run.seed", "generate", *keys), "train": train_digest(cfg),
             "model_seed": model_seed(cfg)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def columns(pixels_k: int, bands: int, size: int, n_classes: int = 3) -> dict[str, store.Column]:
    """The output layout (documented in the README): one row per (variant, image, target)."""
    c = store.Column
    return {
        "variant": c((), "i1", "attacked model: index into the file attribute variant_names (0 regular, 1 mmd)"),
        "index": c((), "i8", "row of the attacked image in galaxies.h5 (a Y10 test image)"),
        "label": c((), "i1", "true class (0 spiral, 1 elliptical, 2 merger)"),
        "target": c((), "i1", "target class of a targeted attack; -1 for an untargeted one"),
        "success": c((), "?", "targeted: the target's probability exceeded attack.threshold; "
                     "untargeted: the predicted class is no longer the true one"),
        "generations": c((), "i4", "steps run before stopping: DE generations (0: the initial population "
                         "succeeded), random-search steps after the first candidate (sparse-rs), refinement steps "
                         "after the ranked candidates (saliency: best-first or random); 0 for the exhaustive search"),
        "queries": c((), "i8", "model queries this attack used until it succeeded, or until its budget ran out (file "
                     "attribute budget): de, population x (generations + 1); sparse-rs, one per candidate; saliency, "
                     "3 for the gradient plus one per candidate; exhaustive, the scan position of the first success "
                     "(H x W x 2^bands without one); in reduced precision (file attribute precision) plus the "
                     "float32 re-classifications (column checked)"),
        "checked": c((), "i8", "candidates of this attack classified again in float32 because the reduced precision "
                     "put them near or at its goal (included in queries); 0 in float32"),
        "rejected": c((), "i8", "of those, reduced-precision successes that float32 rejected (not recorded as "
                      "successes); 0 in float32"),
        "flips": c((), "i8", "exhaustive search without early exit: single-pixel corner candidates that reach the "
                   "goal; -1 where not counted (other methods, or the scan stopped at the first success)"),
        "certified": c((), "i1", "attack.certify (k = 1): 1 one pixel reaches the goal (the attack succeeded, or a "
                       "corner candidate of the certifying scan does), 0 no single-pixel corner candidate does "
                       "(scanned), -1 not decided (certification off, or the image was flipped at another target and "
                       "not scanned)"),
        "certified_flips": c((), "i8", "attack.certify: corner candidates of the certifying scan that reach the goal; "
                             "-1 where the image was not scanned"),
        "certified_first": c((), "i8", "attack.certify: scan index (position y W + x, times 2^bands, plus the corner) "
                             "of the first corner candidate reaching the goal; -1 none or not scanned"),
        "pixel_xy": c((pixels_k, 2), "i4", "attacked pixels (column x, row y), counted from the image's "
                      "first column and row"),
        "pixel_values": c((pixels_k, bands), "f4", "values set at those pixels, per band, normalised "
                          "(model input) units"),
        "original_values": c((pixels_k, bands), "f4", "values the pixels had before, normalised units"),
        "prob_before": c((n_classes,), "f4", "class probabilities of the unattacked (normalised Y10) image"),
        "prob_after": c((n_classes,), "f4", "class probabilities of the attacked image, float32's (on failure: "
                        "of the best candidate found, in the attack's precision)"),
        "pred_before": c((), "i1", "predicted class before the attack"),
        "pred_after": c((), "i1", "predicted class after the attack"),
        "attacked": c((bands, size, size), "f4", "the attacked image: the normalised Y10 image with the pixels "
                      "replaced, as the model saw it (on failure: the best candidate)", 1),
    }


def arithmetic(cfg: Config, device: torch.device) -> str:
    """``attack.precision`` resolved on ``device``: fp32, bf16 or fp16 (:mod:`hpcmorph.precision`); fp32
    for the exhaustive search, the ground truth, which a reduced precision could make miss a candidate
    (:mod:`.mixed`; the certifier's screen is its fast exact path)."""
    if cfg.attack.method == "exhaustive":
        return "fp32"
    return precision.resolve(cfg.attack.precision, device)


def load_model(cfg: Config, variant: str, device: torch.device):
    """(model in eval mode on ``device``, AsinhStretch) of the attacked ``variant`` (at attack's model seed)."""
    return saved.load_model(cfg, variant, model_seed(cfg), device)


def pixel_range(a, stretch) -> list[float]:
    """The values a candidate may set: ``attack.pixel_range``, or by default the data's own range."""
    return a.pixel_range if a.pixel_range is not None else default_range(stretch)


# ------------------------------------------------------------------------------------------ choice

def _classify(models: dict, f: h5py.File, rows: np.ndarray, device) -> dict[str, np.ndarray]:
    """Probabilities (len(rows), K) of each model for the Y10 images ``rows``, float32."""
    order = np.argsort(rows)
    images = np.empty((len(rows),) + f["y10"].shape[1:], np.float32)
    images[order] = f["y10"][rows[order]]  # h5py reads increasing rows
    out = {}
    with torch.inference_mode():
        for variant, (model, stretch) in models.items():
            x = stretch(torch.from_numpy(images)).to(device)
            out[variant] = pixels.forward_probs(lambda t: model(t)[1], x).cpu().numpy()
    return out


def choose_images(cfg: Config, ctx: Context, models: dict, device) -> dict:
    """The attacked images: rows (sorted), labels, each model's probabilities, and what was skipped.

    The test split is walked in an order drawn from ``run.seed``, in chunks of SELECT_CHUNK images
    that are dealt to the ranks: a chunk is always classified in one forward pass of the same
    images, so the choice does not depend on the number of ranks.
    """
    a = cfg.attack
    with store.open_checked(RunLayout.of(cfg).galaxies, "generate") as f:
        split, label = f["split"][...], f["label"][...]
        test = np.flatnonzero((split == TEST) & (label >= 0))
        order = test[np.random.default_rng([cfg.run.seed, SELECT_STREAM]).permutation(len(test))]
        accepted, wrong, examined = [], {v: 0 for v in models}, 0
        probs_of: dict[int, dict[str, np.ndarray]] = {}
        pos = 0
        while len(accepted) < a.n_images and pos < len(order):
            chunks = [order[s:s + SELECT_CHUNK] for s in range(pos, min(len(order), pos + SELECT_CHUNK * ctx.size),
                                                               SELECT_CHUNK)]
            mine = {k: _classify(models, f, chunks[k], device) for k in range(ctx.rank, len(chunks), ctx.size)}
            merged = {}
            for part in ctx.allgather(mine):
                merged.update(part)
            for k, chunk in enumerate(chunks):
                for j, row in enumerate(chunk):
                    if len(accepted) == a.n_images:
                        break
                    examined += 1
                    probs = {v: merged[k][v][j] for v in models}
                    correct = {v: int(np.argmax(p)) == int(label[row]) for v, p in probs.items()}
                    for v, ok in correct.items():
                        wrong[v] += not ok
                    if all(correct.values()) or not a.only_correct:
                        accepted.append(int(row))
                        probs_of[int(row)] = probs
            pos += sum(len(c) for c in chunks)
    rows = np.sort(np.array(accepted, dtype=np.int64))
    return {"rows": rows, "labels": label[rows].astype(np.int64),
            "probs": {v: np.stack([probs_of[int(r)][v] for r in rows]) if len(rows) else np.zeros((0, 3), np.float32)
                      for v in models},
            "examined": examined, "skipped": examined - len(rows), "misclassified": wrong, "test_images": len(test)}


def _save_choice(path: Path, choice: dict) -> None:
    with store.atomic(path) as tmp, h5py.File(tmp, "w") as f:
        f["rows"], f["labels"] = choice["rows"], choice["labels"]
        for v, p in choice["probs"].items():
            f[f"probs/{v}"] = p
        f.attrs["json"] = json.dumps({k: choice[k] for k in ("examined", "skipped", "misclassified", "test_images")})


def _load_choice(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {"rows": f["rows"][...], "labels": f["labels"][...],
               "probs": {v: f[f"probs/{v}"][...] for v in f["probs"]} if "probs" in f else {}}
        out.update(json.loads(f.attrs["json"]))
    return out


# ----------------------------------------------------------------------------------------- attacks

def targets_of(label: int, mode: str, n_classes: int = 3) -> list[int]:
    """Targeted: every other class in turn; untargeted: one attack with target -1."""
    return [t for t in range(n_classes) if t != label] if mode == "targeted" else [UNTARGETED]


def attack_seed(run_seed: int, row: int, target: int) -> np.random.SeedSequence:
    # Not the variant: both models face the same initial population and draws (a paired comparison).
    return np.random.SeedSequence([run_seed, ATTACK_STREAM, int(row), int(target) + 1])


def attack_images(model, stretch, images: np.ndarray, rows, labels, prob_before: np.ndarray, cfg: Config,
                  device, known: dict | None = None, reduced_fn=None) -> dict[str, np.ndarray]:
    """Attack the raw Y10 ``images`` (n, C, H, W, e-/s per pixel) at galaxy rows ``rows``: every target
    of each, in one batched run of ``attack.method``; returns the output columns of the n x targets rows.
    known: the attacked model's certificates found before (:func:`.certificates.read`); reduced_fn: the
    model in the attack's reduced precision (:func:`.mixed.reduced`), None in float32."""
    a = cfg.attack
    base = stretch(torch.from_numpy(np.ascontiguousarray(images, np.float32))).float()
    n, c, h, w = base.shape
    which, true, target, seeds = [], [], [], []
    for i, (row, label) in enumerate(zip(rows, labels)):
        for t in targets_of(int(label), a.mode):
            which.append(i)
            true.append(int(label))
            target.append(t)
            seeds.append(attack_seed(cfg.run.seed, int(row), t))
    which_t = torch.tensor(which, dtype=torch.long)
    task_images = base[which_t]
    box = Box.of(a.pixels, c, h, w, pixel_range(a, stretch))
    results, objective = methods.attack(a, lambda x: model(x)[1], task_images.to(device), which, true, target, seeds,
                                        box, reduced_fn)
    task_rows = np.asarray(rows, np.int64)[which]
    certificates = methods.certify(a, model, task_images.to(device), which, true, target, results, box, device,
                                   kept.lookup(known or {}, task_rows, target))

    genomes = np.stack([r.genome for r in results])
    x, y, values = pixels.decode(torch.from_numpy(genomes), a.pixels, h, w)
    idx = torch.arange(len(results))[:, None]
    original = task_images.permute(0, 2, 3, 1)[idx, y, x]  # (m, k, C)
    attacked = pixels.apply(task_images.clone(), x, y, values)
    prob_after = np.stack([r.probs for r in results]).astype(np.float32)
    before = prob_before[which]
    return {"index": np.asarray(rows, np.int64)[which], "label": np.array(true, np.int8),
            "target": np.array(target, np.int8), **methods.as_arrays(results),
            "pixel_xy": torch.stack([x, y], 2).numpy().astype(np.int32),
            "pixel_values": values.numpy().astype(np.float32), "original_values": original.numpy().astype(np.float32),
            "prob_before": before.astype(np.float32), "prob_after": prob_after,
            "pred_before": before.argmax(1).astype(np.int8), "pred_after": prob_after.argmax(1).astype(np.int8),
            "attacked": attacked.numpy().astype(np.float32),
            "certified": certificates.certified, "certified_flips": certificates.flips,
            "certified_first": certificates.first, "_certify": certificates.cost,
            **mixed.counts(objective),
            "_forward_seconds": np.array(objective.forward_seconds), "_queries": np.array(objective.queries)}


def _method_settings(a) -> str:
    return ", ".join(f"{k} {getattr(a, k)}" for k in methods.SETTINGS[a.method])


# ----------------------------------------------------------------------------------------- summary

def summarize(cols: dict[str, np.ndarray], variants: list[str], mode: str) -> dict:
    """Per variant: images attacked, images flipped (any target), attacks and their success rate,
    median and mean queries of the successful attacks (None when there is none: the summary stays
    strict JSON), and [successes, attacks] by true class and target."""
    out = {}
    for v_index, variant in enumerate(variants):
        sel = cols["variant"] == v_index
        index, success, queries = cols["index"][sel], cols["success"][sel], cols["queries"][sel]
        label, target = cols["label"][sel], cols["target"][sel]
        images = np.unique(index)
        flipped = np.unique(index[success])
        by = {}
        for cls in range(len(CLASS_NAMES)):
            row = {}
            for t in (range(len(CLASS_NAMES)) if mode == "targeted" else [UNTARGETED]):
                m = (label == cls) & (target == t)
                if t != cls and m.any():
                    row[CLASS_NAMES[t] if t >= 0 else "any"] = [int(success[m].sum()), int(m.sum())]
            if row:
                by[CLASS_NAMES[cls]] = row
        good = queries[success]
        out[variant] = {"attacked": int(len(images)), "flipped": int(len(flipped)), "attacks": int(sel.sum()),
                        "successful_attacks": int(success.sum()),
                        "success_rate": float(success.mean()) if sel.any() else None,
                        "median_queries_to_flip": float(np.median(good)) if len(good) else None,
                        "mean_queries_to_flip": float(good.mean()) if len(good) else None,
                        "queries_total": int(queries.sum()), "success_by_class_and_target": by,
                        "checked": int(cols["checked"][sel].sum()), "rejected": int(cols["rejected"][sel].sum())}
    return out


def certification(cols: dict[str, np.ndarray], variants: list[str]) -> dict:
    """Per variant, from the columns ``variant, index, success, certified``: images attacked, flipped by the
    attack, flippable by one corner pixel (the attack flipped them or the scan found a corner
    candidate), certified out of one pixel's reach (every target scanned, none reached), undecided,
    and the attack's coverage (flipped / flippable; None without a flippable image or while some
    image is undecided)."""
    out = {}
    for v_index, variant in enumerate(variants):
        sel = cols["variant"] == v_index
        index, success, cert = cols["index"][sel], cols["success"][sel], cols["certified"][sel]
        images = np.unique(index)
        pos = np.searchsorted(images, index)
        flipped = np.zeros(len(images), bool)
        flippable = np.zeros(len(images), bool)
        safe = np.ones(len(images), bool)
        np.logical_or.at(flipped, pos, success)
        np.logical_or.at(flippable, pos, (cert == 1) | success)
        np.logical_and.at(safe, pos, cert == 0)
        undecided = int((~flippable & ~safe).sum())
        n_flippable = int(flippable.sum())
        out[variant] = {"attacked": int(len(images)), "flipped": int(flipped.sum()), "flippable": n_flippable,
                        "safe": int(safe.sum()), "undecided": undecided,
                        "vulnerable_fraction": (n_flippable / len(images) if len(images) and not undecided else None),
                        "coverage": (int(flipped.sum()) / n_flippable if n_flippable and not undecided else None),
                        "missed_rows": [int(r) for r in images[flippable & ~flipped]]}
    return {"variants": out}


def format_summary(summary: dict) -> str:
    lines = ["| model | attacked | flipped | attacks | successful | median queries to flip |",
             "|---|---|---|---|---|---|"]
    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    for variant, s in summary["variants"].items():
        lines.append(f"| {variant} | {s['attacked']} | {s['flipped']} | {s['attacks']} | {s['successful_attacks']} "
                     f"({num(s['success_rate'], '.0%')}) | {num(s['median_queries_to_flip'], '.0f')} |")
    lines.append(f"skipped (misclassified by a model before any attack): {summary['skipped_misclassified']} of "
                 f"{summary['examined']} test images examined")
    if summary.get("precision", "fp32") != "fp32":
        lines.append(f"precision {summary['precision']}, decisions in float32: " + "; ".join(
            f"{v} {s['checked']} candidates classified again, {s['rejected']} {summary['precision']} successes rejected"
            for v, s in summary["variants"].items()))
    cert = summary.get("certification")
    for variant, c in ((cert or {}).get("variants") or {}).items():
        spent = (cert.get("cost") or {}).get(variant) or {}
        lines.append(f"certified ({variant}): {c['flippable']} of {c['attacked']} images flippable by one corner "
                     f"pixel, {c['safe']} not, {c['undecided']} undecided; the attack flipped {c['flipped']} (coverage "
                     f"{num(c['coverage'], '.2f')}); scan: {spent.get('images', 0)} images "
                     f"({spent.get('cached', 0)} more known from before), {spent.get('candidates', 0)} candidates, "
                     f"{spent.get('float32', 0)} classified by the model, {spent.get('seconds', 0):.1f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- run

@locked(output_path, subfolders=("figures",))
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Attack the trained models as ``cfg.attack`` says; returns the output path."""
    out, key = output_path(cfg), digest(cfg)
    return store.produce(out, key, ctx, force, make=lambda: make(cfg, ctx, out, key),
                         finish=lambda: finish(cfg, out, key))


def make(cfg: Config, ctx: Context, out: Path, key: str) -> None:
    """Load the models, choose the images, attack them block by block (resumably), write the output."""
    a = cfg.attack
    started, t0 = store.now(), time.perf_counter()
    io = store.resolve_io(cfg)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = device_for(ctx.local_rank)
    variants = list(dict.fromkeys(a.variants))
    models = {v: load_model(cfg, v, device) for v in variants}
    reduced = {v: mixed.reduced(model, arithmetic(cfg, device)) for v, (model, _) in models.items()}
    for v, (_, stretch) in models.items():
        lo, hi = data_range(stretch)
        log.info("attack: %s model: normalised pixels span [%.3f, %.3f]; candidates take values in %s",
                 v, min(lo), max(hi), pixel_range(a, stretch))
    with store.open_checked(RunLayout.of(cfg).galaxies, "generate") as f:
        n_bands, size = f["y10"].shape[1], f["y10"].shape[-1]
    box = Box.of(a.pixels, n_bands, size, size, (0.0, 1.0))  # for the budget: the values do not matter
    blocks = store.Blocks(out.with_name(f"{out.name}.parts-{key}"))
    blocks.create(ctx)
    choice = images(cfg, ctx, models, device, blocks.folder / "images.h5")
    log.info("attack: method %s (%s), budget %d queries per attack, precision %s", a.method, _method_settings(a),
             methods.budget(a, box), arithmetic(cfg, device))
    # Rank 0 reads the certificates found before and tells the others: all ranks certify alike.
    known = ctx.bcast({v: kept.read(kept.path(cfg, v, model_seed(cfg))) for v in variants}
                      if ctx.is_root and methods.certifies(a) else {})
    plan = attack_blocks(cfg, ctx, models, variants, choice, blocks, device, known, reduced)
    summary = summarize_blocks(cfg, ctx, variants, choice, blocks, plan, methods.budget(a, box))
    # Rank 0's clock, after attack_blocks' barrier: the slowest rank's. A resumed attack counts only
    # its last session (the blocks already on disk cost nothing here).
    summary = {**summary, "ranks": ctx.size, "wall_seconds": ctx.bcast(round(time.perf_counter() - t0, 2)
                                                                        if ctx.is_root else None)}
    cols = columns(a.pixels, n_bands, size)
    block_rows = np.cumsum([0] + [(hi - lo) * len(targets_of(0, a.mode)) for _, lo, hi in plan])

    def pieces(lo: int, hi: int):
        for b in range(len(plan)):
            a0, a1 = int(block_rows[b]), int(block_rows[b + 1])
            s, e = max(lo, a0), min(hi, a1)
            if s < e:
                with blocks.open(b) as bf:
                    yield s, e, {name: bf[name][s - a0:e - a0] for name in cols}

    attrs = {
        **store.provenance(cfg, ctx, STAGE, key, started),
        "mode": a.mode, "pixels": a.pixels, "population": a.population, "generations": a.generations,
        "mutation": a.mutation, "crossover": a.crossover, "threshold": a.threshold,
        "method": a.method, "budget": methods.budget(a, box), "gradient_queries": methods.gradient_queries(a.method),
        "certified": methods.certified(a), "precision": arithmetic(cfg, device),
        **{k: getattr(a, k) for k in methods.SETTINGS[a.method] if k not in ("population", "generations", "mutation",
                                                                              "crossover")},
        "pixel_range": "data range (data_range_<variant>)" if a.pixel_range is None else
        np.asarray(a.pixel_range, np.float64), "model_seed": model_seed(cfg),
        "class_names": ",".join(CLASS_NAMES), "variant_names": ",".join(variants),
        "n_images": len(choice["rows"]), "examined": choice["examined"], "skipped_misclassified": choice["skipped"],
        **{f"data_range_{v}": np.array(data_range(models[v][1]), np.float64) for v in variants},
        "summary": json.dumps(summary),
    }
    store.write_table(out, cols, int(block_rows[-1]), pieces, attrs, ctx, io)


def images(cfg: Config, ctx: Context, models: dict, device, path: Path) -> dict:
    """The attacked images: chosen once (:func:`choose_images`) and saved in the checkpoint folder, so
    that a resumed run attacks the same ones."""
    a = cfg.attack
    # Rank 0 decides for all: a rank looking later could see the file rank 0 has just written.
    if ctx.bcast(path.exists() if ctx.is_root else None):
        choice = ctx.bcast(_load_choice(path) if ctx.is_root else None)
    else:
        choice = choose_images(cfg, ctx, models, device)
        if ctx.is_root:
            _save_choice(path, choice)
    if len(choice["rows"]) < a.n_images and ctx.is_root:
        log.warning("attack: only %d of the %d test images qualify (attack.n_images=%d)", len(choice["rows"]),
                    choice["test_images"], a.n_images)
    log.info("attack: %d images (%d examined, %d skipped as misclassified: %s), %s, k=%d, %d ranks",
             len(choice["rows"]), choice["examined"], choice["skipped"], choice["misclassified"], a.mode, a.pixels,
             ctx.size)
    return choice


def attack_blocks(cfg: Config, ctx: Context, models: dict, variants: list[str], choice: dict,
                  blocks: store.Blocks, device, known: dict | None = None,
                  reduced: dict | None = None) -> list[tuple[int, int, int]]:
    """Attack the blocks not yet on disk (``attack.images_per_batch`` images of one variant each, dealt
    round-robin); returns every block as (variant index, first image, end image). known: {variant:
    certificates found before}; reduced: {variant: the model in reduced precision, or None}."""
    a = cfg.attack
    rows, labels = choice["rows"], choice["labels"]
    per = a.images_per_batch
    plan = [(v, s, min(len(rows), s + per)) for v in range(len(variants)) for s in range(0, len(rows), per)]
    mine, n_done = blocks.todo(len(plan), ctx)
    log.info("attack: %d blocks of up to %d images, %d already on disk, device %s", len(plan), per, n_done, device)
    t0 = time.perf_counter()
    queries, forward_s = 0, 0.0
    with h5py.File(RunLayout.of(cfg).galaxies, "r") as f, \
            ctx.progress(total=len(mine), desc="attack (rank 0 share)", unit="block", enabled=cfg.run.progress) as bar:
        for b in mine:
            v, lo, hi = plan[b]
            model, stretch = models[variants[v]]
            data = attack_images(model, stretch, f["y10"][rows[lo:hi]], rows[lo:hi], labels[lo:hi],
                                 choice["probs"][variants[v]][lo:hi], cfg, device, (known or {}).get(variants[v]),
                                 (reduced or {}).get(variants[v]))
            queries += int(data.pop("_queries"))
            forward_s += float(data.pop("_forward_seconds"))
            cost = data.pop("_certify")
            if cost.images or cost.cached:
                log.info("attack: block %d: %d images certified in %.1f s (%d candidates screened, %d classified by "
                         "the model%s), %d known from before", b, cost.images, cost.seconds, cost.candidates,
                         cost.float32,
                         f", {cost.rescanned} scanned again in float32" if cost.rescanned else "", cost.cached)
            data["variant"] = np.full(len(data["index"]), v, np.int8)
            blocks.write(b, data, {"certify": json.dumps(cost.to_json())})
            bar.update(1)
    elapsed = time.perf_counter() - t0
    ctx.barrier()
    total_q = ctx.comm.allreduce(queries)
    log.info("attack: %d model queries in %.1f s on %d ranks (%.0f queries/s; this rank: %.0f%% of its time in "
             "the model)", total_q, elapsed, ctx.size, total_q / max(elapsed, 1e-9),
             100 * forward_s / max(elapsed, 1e-9))
    return plan


def summarize_blocks(cfg: Config, ctx: Context, variants: list[str], choice: dict, blocks: store.Blocks,
                     plan: list, budget: int) -> dict:
    """The attack summary (:func:`summarize` of every block's scalar columns), on every rank."""
    a = cfg.attack
    summary = None
    if ctx.is_root:
        scal = {name: [] for name in ("variant", "index", "label", "target", "success", "queries", "certified",
                                      "checked", "rejected")}
        cost = {v: certify.Cost() for v in range(len(variants))}
        for b in range(len(plan)):
            with blocks.open(b) as bf:
                for name in scal:
                    scal[name].append(bf[name][...])
                cost[plan[b][0]] = cost[plan[b][0]].add(certify.Cost(**json.loads(bf.attrs["certify"])))
        kinds = columns(a.pixels, 1, 1)
        scal = {k: np.concatenate(v) if v else np.zeros(0, kinds[k].dtype) for k, v in scal.items()}
        summary = {"method": a.method, "budget": budget, "mode": a.mode, "pixels": a.pixels,
                   "precision": arithmetic(cfg, device_for(ctx.local_rank)),
                   "value_range": range_name(a.pixel_range), "population": a.population, "generations": a.generations,
                   "threshold": a.threshold, "model_seed": model_seed(cfg), "images": int(len(choice["rows"])),
                   "examined": int(choice["examined"]), "skipped_misclassified": int(choice["skipped"]),
                   "misclassified_by_model": {k: int(v) for k, v in choice["misclassified"].items()},
                   "variants": summarize(scal, variants, a.mode)}
        if methods.certified(a):
            summary["certification"] = {
                "precision": certify.resolve_precision(a.certify_precision, device_for(ctx.local_rank))
                if methods.certifies(a) else None, **certification(scal, variants),
                "cost": {variants[v]: c.to_json() for v, c in cost.items()}}
    return ctx.bcast(summary)


def summary_path(cfg: Config) -> Path:
    return RunLayout.of(cfg).attack_summary(output_stem(cfg))


def keep_certificates(cfg: Config, out: Path) -> None:
    """Add the certifying scans of the output ``out`` to the run's certificates (:mod:`.certificates`)."""
    with h5py.File(out, "r") as f:
        cols = {k: f[k][...] for k in ("variant", "index", "target", "certified_flips", "certified_first")}
        variants = str(f.attrs["variant_names"]).split(",")
    for v, variant in enumerate(variants):
        sel = cols["variant"] == v
        file = kept.path(cfg, variant, model_seed(cfg))
        held = kept.add(file, cols["index"][sel], cols["target"][sel], cols["certified_flips"][sel],
                        cols["certified_first"][sel])
        log.info("attack: %s holds %d certificates", file, held)


def finish(cfg: Config, out: Path, key: str) -> list[Path]:
    """Rank 0, after the output: the summary JSON and the figures; then the checkpoint blocks go."""
    with store.open_checked(out, STAGE) as f:
        summary = json.loads(f.attrs["summary"])
    written = [store.write_json(summary_path(cfg), {**summary, "digest": key})]
    log.info("attack summary (%s, k=%d):\n%s", cfg.attack.mode, cfg.attack.pixels, format_summary(summary))
    if methods.certifies(cfg.attack):
        keep_certificates(cfg, out)
    if cfg.attack.figures:
        from .figures import write_figures

        written += write_figures(out)
    if not cfg.attack.keep_parts:
        store.remove_leftovers(out, out.parent / "figures", output_stem(cfg) + "_")
    return written
