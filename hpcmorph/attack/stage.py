"""Stage 3 driver: one-pixel (k-pixel) attacks on the trained models, sharded over MPI ranks.

1. Load the trained model of each variant in ``attack.variants`` (``<variant>/seed<s>/model.pt``,
   s = ``attack.model_seed`` or the first of ``train.seeds``) with its fitted normalisation.
2. Pick the images: walk the Y10 test split in an order drawn from ``run.seed`` and keep the first
   ``attack.n_images`` that every model classifies correctly (``attack.only_correct``; the others are
   counted as skipped). Both variants are attacked on the same images. The choice is saved in the
   checkpoint folder, so a resumed run attacks the same images.
3. Attacks are (variant, image, target) triples; blocks of ``attack.images_per_batch`` images of one
   variant (all their targets) are one batched DE run (``evolution.evolve``) and one checkpoint
   file in ``<output>.parts-<digest>-b<images_per_batch>/`` (written, then renamed). Ranks take
   the blocks not yet on disk round-robin.
4. All ranks write the output together (``store.write_table``); rank 0 writes the summary and the
   figures.

Every attack's random numbers come from ``SeedSequence([run.seed, stream, galaxy row, target + 1])``,
never from the rank or the batch, and an attack's result does not depend on the other attacks in its
batch, so the output is the same on any number of ranks and after a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from .. import store
from ..config import Config
from ..generate import output_path as galaxies_path
from ..generate.dataset import TEST
from ..generate.morphology import CLASS_NAMES
from ..errors import StageError
from ..lock import locked
from ..mpi import Context, device_for, log
from . import evolution, pixels

STAGE = "attack"
VARIANTS = ("regular", "mmd")
SELECT_STREAM, ATTACK_STREAM = 10, 11
SELECT_CHUNK = 32  # test images per classification pass while choosing images (fixed: see _classify)
# Attack settings that do not change any result (batching is checked not to), left out of the digest.
_NEUTRAL = ("images_per_batch", "forward_batch", "threads", "figures", "keep_parts")


def output_stem(cfg: Config) -> str:
    """``attack`` for the paper's targeted one-pixel attack; other modes and k get their own file."""
    a = cfg.attack
    return "attack" + ("" if a.mode == "targeted" else "-untargeted") + ("" if a.pixels == 1 else f"-k{a.pixels}")


def output_path(cfg: Config) -> Path:
    return Path(cfg.run.root) / cfg.run.name / f"{output_stem(cfg)}.h5"


def model_seed(cfg: Config) -> int:
    seed = cfg.attack.model_seed
    return cfg.train.seeds[0] if seed is None else seed


def digest(cfg: Config) -> str:
    """What the output depends on: run.seed, the data, the trained model and the attack settings."""
    from ..train.stage import digest as train_digest

    keys = [f"attack.{k}" for k in cfg.attack.to_dict() if k not in _NEUTRAL]
    parts = {"config": cfg.digest("run.seed", "generate", *keys), "train": train_digest(cfg),
             "model_seed": model_seed(cfg)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def model_path(cfg: Config, variant: str) -> Path:
    return Path(cfg.run.root) / cfg.run.name / variant / f"seed{model_seed(cfg)}" / "model.pt"


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
        "generations": c((), "i4", "DE generations run before stopping (0: the initial population succeeded)"),
        "queries": c((), "i8", "model evaluations used by this attack: population x (generations + 1)"),
        "pixel_xy": c((pixels_k, 2), "i4", "attacked pixels (column x, row y), counted from the image's "
                      "first column and row"),
        "pixel_values": c((pixels_k, bands), "f4", "values set at those pixels, per band, normalised "
                          "(model input) units"),
        "original_values": c((pixels_k, bands), "f4", "values the pixels had before, normalised units"),
        "prob_before": c((n_classes,), "f4", "class probabilities of the unattacked (normalised Y10) image"),
        "prob_after": c((n_classes,), "f4", "class probabilities of the attacked image (on failure: of the "
                        "best candidate found)"),
        "pred_before": c((), "i1", "predicted class before the attack"),
        "pred_after": c((), "i1", "predicted class after the attack"),
        "attacked": c((bands, size, size), "f4", "the attacked image: the normalised Y10 image with the pixels "
                      "replaced, as the model saw it (on failure: the best candidate)", 1),
    }


def load_model(cfg: Config, variant: str, device: torch.device):
    """(model in eval mode on ``device``, AsinhStretch) of the trained ``variant``; StageError if unusable."""
    from ..train.model import build_model
    from ..train.normalize import AsinhStretch
    from ..train.stage import digest as train_digest

    path = model_path(cfg, variant)
    if not path.exists():
        raise StageError(f"{path}: no such file; run `hpcmorph train` first (attack.variants includes "
                         f"'{variant}', seed {model_seed(cfg)})")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = saved["model"]
        in_channels = state["features.conv1.weight"].shape[1]
        model = build_model(0, dropout=float(saved["dropout"]), latent_dim=int(saved["latent_dim"]),
                            n_classes=len(saved["class_names"]), in_channels=in_channels)
        model.load_state_dict(state)
        stretch = AsinhStretch.from_dict(saved["normalization"])
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint is the same user error
        raise StageError(f"{path}: not a usable trained model ({type(err).__name__}: {err})") from None
    if saved.get("digest") != train_digest(cfg):
        raise StageError(f"{path} was trained with different settings (train digest {saved.get('digest')}, this "
                         f"config {train_digest(cfg)}); run `hpcmorph train` with this config first")
    return model.to(device).eval(), stretch


def pixel_range(a, stretch) -> list[float]:
    """The values a candidate may set: ``attack.pixel_range``, or by default the data's own range."""
    if a.pixel_range is not None:
        return a.pixel_range
    lo, hi = data_range(stretch)
    return [min(lo), max(hi)]


def data_range(stretch) -> tuple[list[float], list[float]]:
    """The range of normalised pixels: the stretch of its clip limits, per fitted band."""
    lo = stretch(np.asarray(stretch.low, np.float64).reshape(1, -1, 1, 1)).ravel()
    hi = stretch(np.asarray(stretch.high, np.float64).reshape(1, -1, 1, 1)).ravel()
    return [float(v) for v in lo], [float(v) for v in hi]


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
    with store.open_checked(galaxies_path(cfg), "generate") as f:
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
    return [t for t in range(n_classes) if t != label] if mode == "targeted" else [evolution.UNTARGETED]


def attack_seed(run_seed: int, row: int, target: int) -> np.random.SeedSequence:
    # Not the variant: both models face the same initial population and draws (a paired comparison).
    return np.random.SeedSequence([run_seed, ATTACK_STREAM, int(row), int(target) + 1])


def attack_images(model, stretch, images: np.ndarray, rows, labels, prob_before: np.ndarray, cfg: Config,
                  device) -> dict[str, np.ndarray]:
    """Attack the raw Y10 ``images`` (n, C, H, W, e-/s per pixel) at galaxy rows ``rows``: every target
    of each, in one batched DE run; returns the output columns of the n x targets rows."""
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
    objective = pixels.PixelObjective(lambda x: model(x)[1], task_images.to(device), a.pixels, a.forward_batch)
    lower, upper, is_position = pixels.bounds(a.pixels, c, h, w, pixel_range(a, stretch))
    settings = evolution.Settings(a.population, a.generations, a.mutation, a.crossover, a.threshold)
    results = evolution.evolve(objective, lower, upper, true, target, seeds, settings, resample=is_position)

    genomes = np.stack([r.genome for r in results])
    x, y, values = pixels.decode(torch.from_numpy(genomes), a.pixels, h, w)
    idx = torch.arange(len(results))[:, None]
    original = task_images.permute(0, 2, 3, 1)[idx, y, x]  # (m, k, C)
    attacked = pixels.apply(task_images.clone(), x, y, values)
    prob_after = np.stack([r.probs for r in results]).astype(np.float32)
    before = prob_before[which]
    return {"index": np.asarray(rows, np.int64)[which], "label": np.array(true, np.int8),
            "target": np.array(target, np.int8), "success": np.array([r.success for r in results], bool),
            "generations": np.array([r.generations for r in results], np.int32),
            "queries": np.array([r.queries for r in results], np.int64),
            "pixel_xy": torch.stack([x, y], 2).numpy().astype(np.int32),
            "pixel_values": values.numpy().astype(np.float32), "original_values": original.numpy().astype(np.float32),
            "prob_before": before.astype(np.float32), "prob_after": prob_after,
            "pred_before": before.argmax(1).astype(np.int8), "pred_after": prob_after.argmax(1).astype(np.int8),
            "attacked": attacked.numpy().astype(np.float32),
            "_forward_seconds": np.array(objective.forward_seconds), "_queries": np.array(objective.queries)}


def _write_block(path: Path, data: dict[str, np.ndarray]) -> None:
    with store.atomic(path) as tmp, h5py.File(tmp, "w") as f:
        for name, arr in data.items():
            f.create_dataset(name, data=arr)


def _block_path(parts: Path, b: int) -> Path:
    return parts / f"block-{b:06d}.h5"


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
            for t in (range(len(CLASS_NAMES)) if mode == "targeted" else [evolution.UNTARGETED]):
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
                        "queries_total": int(queries.sum()), "success_by_class_and_target": by}
    return out


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
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- run

@locked(output_path, subfolders=("figures",))
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Attack the trained models as ``cfg.attack`` says; returns the output path."""
    a = cfg.attack
    out, key = output_path(cfg), digest(cfg)
    if store.is_current(out, key, force):
        return out
    started = store.now()
    io = store.resolve_io(cfg)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = device_for(ctx.local_rank)
    variants = list(dict.fromkeys(a.variants))
    models = {v: load_model(cfg, v, device) for v in variants}
    with store.open_checked(galaxies_path(cfg), "generate") as f:
        n_bands, size = f["y10"].shape[1], f["y10"].shape[-1]
    for v, (_, stretch) in models.items():
        lo, hi = data_range(stretch)
        log.info("attack: %s model: normalised pixels span [%.3f, %.3f]; candidates take values in %s",
                 v, min(lo), max(hi), pixel_range(a, stretch))

    parts = out.with_name(f"{out.name}.parts-{key}-b{a.images_per_batch}")
    if ctx.is_root:
        parts.mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    choice_file = parts / "images.h5"
    # Rank 0 decides for all: a rank looking later could see the file rank 0 has just written.
    if ctx.bcast(choice_file.exists() if ctx.is_root else None):
        choice = ctx.bcast(_load_choice(choice_file) if ctx.is_root else None)
    else:
        choice = choose_images(cfg, ctx, models, device)
        if ctx.is_root:
            _save_choice(choice_file, choice)
    rows, labels = choice["rows"], choice["labels"]
    if len(rows) < a.n_images and ctx.is_root:
        log.warning("attack: only %d of the %d test images qualify (attack.n_images=%d)", len(rows),
                    choice["test_images"], a.n_images)
    log.info("attack: %d images (%d examined, %d skipped as misclassified: %s), %s, k=%d, population %d, "
             "%d generations, %d ranks, device %s", len(rows), choice["examined"], choice["skipped"],
             choice["misclassified"], a.mode, a.pixels, a.population, a.generations, ctx.size, device)

    per = a.images_per_batch
    n_targets = len(targets_of(0, a.mode))
    blocks = [(v, s, min(len(rows), s + per)) for v in range(len(variants)) for s in range(0, len(rows), per)]
    block_rows = np.cumsum([0] + [(hi - lo) * n_targets for _, lo, hi in blocks])
    done = ctx.bcast({int(p.stem.split("-")[1]) for p in parts.glob("block-*.h5")} if ctx.is_root else None)
    todo = [b for b in range(len(blocks)) if b not in done]
    mine = ctx.share(todo)
    log.info("attack: %d blocks of up to %d images, %d already on disk", len(blocks), per, len(done))

    t0 = time.perf_counter()
    queries, forward_s = 0, 0.0
    with h5py.File(galaxies_path(cfg), "r") as f, \
            ctx.progress(total=len(mine), desc="attack (rank 0 share)", unit="block", enabled=cfg.run.progress) as bar:
        for b in mine:
            v, lo, hi = blocks[b]
            model, stretch = models[variants[v]]
            data = attack_images(model, stretch, f["y10"][rows[lo:hi]], rows[lo:hi], labels[lo:hi],
                                 choice["probs"][variants[v]][lo:hi], cfg, device)
            queries += int(data.pop("_queries"))
            forward_s += float(data.pop("_forward_seconds"))
            data["variant"] = np.full(len(data["index"]), v, np.int8)
            _write_block(_block_path(parts, b), data)
            bar.update(1)
    elapsed = time.perf_counter() - t0
    ctx.barrier()
    total_q = ctx.comm.allreduce(queries)
    log.info("attack: %d model queries in %.1f s on %d ranks (%.0f queries/s; this rank: %.0f%% of its time in "
             "the model)", total_q, elapsed, ctx.size, total_q / max(elapsed, 1e-9),
             100 * forward_s / max(elapsed, 1e-9))

    summary = None
    if ctx.is_root:
        scal = {name: [] for name in ("variant", "index", "label", "target", "success", "queries")}
        for b in range(len(blocks)):
            with h5py.File(_block_path(parts, b), "r") as bf:
                for name in scal:
                    scal[name].append(bf[name][...])
        kinds = columns(a.pixels, 1, 1)
        scal = {k: np.concatenate(v) if v else np.zeros(0, kinds[k].dtype) for k, v in scal.items()}
        summary = {"mode": a.mode, "pixels": a.pixels, "population": a.population, "generations": a.generations,
                   "threshold": a.threshold, "model_seed": model_seed(cfg), "images": int(len(rows)),
                   "examined": int(choice["examined"]), "skipped_misclassified": int(choice["skipped"]),
                   "misclassified_by_model": {k: int(v) for k, v in choice["misclassified"].items()},
                   "variants": summarize(scal, variants, a.mode)}
    summary = ctx.bcast(summary)

    cols = columns(a.pixels, n_bands, size)

    def pieces(lo: int, hi: int):
        for b in range(len(blocks)):
            a0, a1 = int(block_rows[b]), int(block_rows[b + 1])
            s, e = max(lo, a0), min(hi, a1)
            if s >= e:
                continue
            with h5py.File(_block_path(parts, b), "r") as bf:
                yield s, e, {name: bf[name][s - a0:e - a0] for name in cols}

    ranges = {v: data_range(models[v][1]) for v in variants}
    attrs = {
        **store.provenance(cfg, ctx, STAGE, key, started),
        "mode": a.mode, "pixels": a.pixels, "population": a.population, "generations": a.generations,
        "mutation": a.mutation, "crossover": a.crossover, "threshold": a.threshold,
        "pixel_range": "data range (data_range_<variant>)" if a.pixel_range is None else
        np.asarray(a.pixel_range, np.float64), "model_seed": model_seed(cfg),
        "class_names": ",".join(CLASS_NAMES), "variant_names": ",".join(variants),
        "n_images": len(rows), "examined": choice["examined"], "skipped_misclassified": choice["skipped"],
        **{f"data_range_{v}": np.array(r, np.float64) for v, r in ranges.items()},
        "summary": json.dumps(summary),
    }
    store.write_table(out, cols, int(block_rows[-1]), pieces, attrs, ctx, io)
    if ctx.is_root:
        text = json.dumps({**summary, "digest": key}, indent=2)
        summary_path = out.with_name(f"{output_stem(cfg)}_summary.json")
        tmp = summary_path.with_name(summary_path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, summary_path)
        log.info("attack summary (%s, k=%d):\n%s", a.mode, a.pixels, format_summary(summary))
        if a.figures:
            from .figures import write_figures

            write_figures(out)
        if not a.keep_parts:
            shutil.rmtree(parts, ignore_errors=True)
    ctx.barrier()
    return out
