"""Each stage's work, counted as the stage does it, and its terms (see the package's docstring)."""

from __future__ import annotations

from pathlib import Path

from ..train import variants
from .data import Dataset, _bytes_per_image
from .figures import Figures, Rate
from .terms import FIXED, StagePlan, Term, _term


def plan_generate(cfg, ranks: int, figures: Figures, data: Dataset) -> StagePlan:
    g = cfg.generate
    n_blocks = -(-data.parents // g.block_size)
    sizes = [min(g.block_size, data.parents - b * g.block_size) for b in range(n_blocks)]
    per_rank = max((sum(sizes[r::ranks]) for r in range(min(ranks, n_blocks))), default=0)
    megabytes = data.rows * 3 * _bytes_per_image(cfg) / 2 ** 20
    terms = [_term(f"draw {per_rank:,} galaxies (the busiest rank's blocks)", per_rank, figures("generate")),
             # Rank 0 reads the blocks back and the ranks write the rows together: counted once, unshared.
             _term(f"write {megabytes:,.0f} MB (clean, Y10, Y1 of every row)", megabytes, figures("write")),
             Term("fixed: labels, split, figures", 0, None, FIXED["generate"])]
    work = {"galaxies": data.parents, "blocks": n_blocks, "block_size": g.block_size, "rows": data.rows,
            "rows_exact": data.exact, "megabytes_written": round(megabytes, 1)}
    notes = [] if ranks <= n_blocks else [f"only {n_blocks} blocks: {ranks - n_blocks} ranks idle"]
    return StagePlan("generate", ranks, "cpu", 0, work, terms, notes)


def adversarial_rate(rate: Rate, fraction: float, queries: int) -> Rate:
    """The training rate with a search on ``fraction`` of the images: each costs ``queries`` forward
    passes of one image (its gradient counted as 3) beside the ~3 (forward and backward) of training
    it, at most (only the images the model classifies right are attacked). At 64 x 64 on 2 cores this
    predicted 2.0x and 4.9x a plain epoch where 2.6x and 5.2x were measured (16 and 64 queries, an
    epoch in which 19 % of the images were attacked): an estimate, not a calibration."""
    factor = 1.0 + fraction * queries / 3.0
    return Rate(rate.name, rate.per_s / factor, rate.unit, rate.assumed,
                f"{rate.source}; / {factor:.1f} for the search on {fraction:g} of the images, {queries} queries")


def plan_train(cfg, ranks: int, device: str, gpus: int, figures: Figures, data: Dataset) -> StagePlan:
    t = cfg.train
    n_train = min(data.train, t.max_train_images) if t.max_train_images else data.train
    shard = n_train // ranks
    local_batch = max(1, t.batch_size // ranks)
    steps = -(-shard // local_batch)
    val, test = -(-data.validation // ranks), -(-data.test // ranks)
    runs = [(v, s) for v in t.variants for s in t.seeds]
    terms, notes = [], []
    infer = figures("infer")
    for variant in dict.fromkeys(t.variants):
        n_runs = sum(1 for v, _ in runs if v == variant)
        spec = variants.of(variant)
        # Calibrated: a plain step, and one that also reads the Y1 pool; the domain terms are a few
        # per cent of a step (MMD's figure stands for every one of them).
        figure = "train_mmd" if spec.uses_y1 else "train_regular"
        rate = figures(figure)
        measured = ((figures.calibration or {}).get("rates", {}).get(figure) or {}).get("batch")
        if not rate.assumed and measured and measured != local_batch:
            notes.append(f"{figure} was calibrated at a batch of {measured} per rank, this plan's is "
                         f"{local_batch} ({ranks} ranks): calibrate with --ranks {ranks}")
        if spec.adversarial:
            rate = adversarial_rate(rate, t.adversarial_fraction, t.adversarial_queries)
        terms.append(_term(f"{variant}: {n_runs} seed(s) x at most {t.epochs} epochs x {shard:,} images "
                           f"({steps} steps of {local_batch})", n_runs * t.epochs * shard, rate))
    terms.append(_term(f"validation: {len(runs)} run(s) x {t.epochs} epochs x {val:,} images; test: 2 x {test:,}",
                       len(runs) * (t.epochs * val + 2 * test), infer))
    terms.append(Term(f"fixed: {len(runs)} x (data, model, outputs)", 0, None, FIXED["train"] * len(runs)))
    if shard == 0:
        notes.append(f"{n_train} training images cannot be shared by {ranks} ranks (train fails)")
    if t.batch_size % ranks:
        notes.append(f"train.batch_size {t.batch_size} is not divisible by {ranks} ranks (train fails)")
    work = {"variants": list(t.variants), "seeds": list(t.seeds), "training_images": n_train,
            "images_per_rank_per_epoch": shard, "epochs_at_most": t.epochs, "patience": t.patience,
            "steps_per_epoch": steps, "local_batch": local_batch,
            "image_epochs_at_most": len(runs) * t.epochs * n_train, "rows_exact": data.exact}
    notes.append(f"at most: early stopping (patience {t.patience}) may end a run before epoch {t.epochs}")
    return StagePlan("train", ranks, device, gpus if device == "cuda" else 0, work, terms, notes)


def _attack_file(cfg, k_cfg):
    """An existing attack output of the run for this k (else any of the same mode), or None."""
    from ..attack.stage import output_path

    exact = output_path(k_cfg)
    if exact.exists():
        return exact
    folder = exact.parent
    for path in sorted(folder.glob("attack*.h5")):
        if ("untargeted" in path.name) == (k_cfg.attack.mode == "untargeted"):
            return path
    return None


def query_curve(path: Path, population: int, generations: int) -> dict | None:
    """Expected queries per attack for a budget of population x (generations + 1), per model, from
    an attack output: a success within the budget costs its queries, anything else the whole
    budget. A curve made with another population is read in generations (rounds). Also the
    success-against-queries curve itself ([queries, fraction succeeded] at each count) and the
    fraction of the test images examined that qualified for the attack (attack.only_correct)."""
    import h5py
    import numpy as np

    try:
        with h5py.File(path, "r") as f:
            variant, success, queries = f["variant"][...], f["success"][...], f["queries"][...]
            names = str(f.attrs["variant_names"]).split(",")
            pop0 = int(f.attrs["population"])
            qualified = int(f.attrs["n_images"]) / max(1, int(f.attrs["examined"]))
    except (OSError, KeyError, ValueError):
        return None
    if len(queries) == 0:
        return None
    budget = population * (generations + 1)
    out = {"file": path.name, "budget": budget, "qualified": qualified, "per_attack": {}, "curve": {}}
    for v, name in enumerate(names):
        sel = variant == v
        if not sel.any():
            continue
        q = queries[sel] * (population / pop0)
        ok = success[sel] & (q <= budget)
        cost = np.where(ok, q, budget)
        out["per_attack"][name] = float(cost.mean())
        steps = np.unique(q[ok])
        out["curve"][name] = [[float(s), float(np.mean(ok & (q <= s)))] for s in steps]
    return out


def scanned_images(path: Path) -> int | None:
    """Images (model, image) whose corner candidates an attack output's certification scanned (a
    ``certified_flips`` >= 0 on any of their rows), or None without a readable certified output."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            variant, index, flips = f["variant"][...], f["index"][...], f["certified_flips"][...]
    except (OSError, KeyError, ValueError):
        return None
    scanned = flips >= 0
    return len(set(zip(variant[scanned].tolist(), index[scanned].tolist())))


def _busiest(images: int, per_batch: int, targets: int, n_variants: int, ranks: int) -> tuple[int, int]:
    """(attacks on the busiest rank, blocks): blocks of ``per_batch`` images of one model (all their
    targets), dealt round-robin to the ranks as the stage deals them."""
    blocks = [min(per_batch, images - s) * targets for _ in range(n_variants) for s in range(0, images, per_batch)]
    return max((sum(blocks[r::ranks]) for r in range(min(ranks, len(blocks)))), default=0), len(blocks)


def plan_attack(cfg, ranks: int, device: str, gpus: int, figures: Figures, data: Dataset) -> StagePlan:
    from ..attack import configs as attack_configs
    from ..attack import output_path as attack_output
    from ..onepixel.corners import Box
    from ..attack.methods import budget as method_budget
    from ..attack.methods import certifies
    from ..attack.certify import SAMPLE_STRIDE

    terms, notes, work_k = [], [], []
    rate = figures("attack")
    infer = figures("infer")
    runs = attack_configs(cfg)
    # Several attacks of one k (methods, value ranges compared at k = 1) tell apart by their output's name.
    by_name = len({c.attack.pixels for c in runs}) < len(runs)
    for k_cfg in runs:
        a = k_cfg.attack
        label = f"{attack_output(k_cfg).stem} (k={a.pixels})" if by_name else f"k={a.pixels}"
        variants = list(dict.fromkeys(a.variants))
        images = min(a.n_images, data.test)
        targets = 2 if a.mode == "targeted" else 1
        size = cfg.generate.image_size
        budget = method_budget(a, Box.of(a.pixels, len(cfg.generate.bands), size, size, (0.0, 1.0)))
        busiest, n_blocks = _busiest(images, a.images_per_batch, targets, len(variants), ranks)
        found = _attack_file(cfg, k_cfg)
        # The query curve rescales DE's populations; another method's past run is not rescaled.
        curve = query_curve(found, a.population, a.generations) if found and a.method == "de" else None
        expected, expected_images = None, images
        if curve and all(v in curve["per_attack"] for v in variants):
            # As many images as qualified in that run (attack.only_correct), each attack at its mean cost.
            expected_images = min(images, round(data.test * curve["qualified"])) if a.only_correct else images
            mean = sum(curve["per_attack"][v] for v in variants) / len(variants)
            expected = _busiest(expected_images, a.images_per_batch, targets, len(variants), ranks)[0] * mean
        terms.append(_term(f"{label}: at most {busiest} attacks x {budget:,} queries on the busiest rank "
                           f"({n_blocks} blocks of up to {a.images_per_batch} images)", busiest * budget, rate,
                           expected))
        scan = 0
        if certifies(a):
            # The certifying scan: every corner candidate of each image the attack fails on, at most all,
            # through the screen; a sample of them (1 in SAMPLE_STRIDE) classified by the attack's objective.
            scan = size * size * 2 ** len(cfg.generate.bands)
            scanned = busiest // targets
            # Expected: as many images as this k's own output scanned (the same models fail alike).
            done = scanned_images(attack_output(k_cfg))
            once = None if done is None else -(-done // ranks) * scan
            terms.append(_term(f"{label}: certifying scan, at most {scanned} images x {scan:,} corner "
                               "candidates on the busiest rank (only the images the attack fails on"
                               + ("" if done is None else f"; {done} in the run's output") + ")",
                               scanned * scan, figures("certify"), once))
            terms.append(_term(f"{label}: the scan's float32 checks, 1 in {SAMPLE_STRIDE} candidates (and "
                               "those near success, a few %)", scanned * scan / SAMPLE_STRIDE, rate,
                               None if once is None else once / SAMPLE_STRIDE))
        terms.append(_term(f"{label}: choosing the images (at most {data.test:,} test images classified)",
                           data.test * len(variants) / ranks, infer,
                           None if expected is None else min(data.test, 1.5 * images) * len(variants) / ranks))
        terms.append(Term(f"fixed {label}: models, output, figures", 0, None, FIXED["attack"]))
        work_k.append({"k": a.pixels, "method": a.method, "output": attack_output(k_cfg).name,
                       "images_at_most": images, "images_expected": expected_images,
                       "targets": targets, "variants": variants, "population": a.population,
                       "certify_candidates_at_most": len(variants) * images * scan,
                       "generations": a.generations, "queries_per_attack_at_most": budget,
                       "queries_at_most": len(variants) * images * targets * budget,
                       "queries_expected": None if expected is None else
                       round(sum(curve["per_attack"][v] for v in variants) * expected_images * targets),
                       "curve_from": None if not curve else curve["file"],
                       "success_curve": None if not curve else curve["curve"]})
        if n_blocks < ranks:
            notes.append(f"{label}: only {n_blocks} blocks for {ranks} ranks")
    notes.append("queries at most: every attack runs its whole budget; expected: from the run's existing "
                 "attack output (success against queries, images qualified) where there is one")
    if not data.exact:
        notes.append("test images estimated; attack.only_correct may leave fewer")
    return StagePlan("attack", ranks, device, gpus if device == "cuda" else 0, {"attacks": work_k}, terms, notes)


def plan_analyze(cfg, ranks: int, device: str, gpus: int, figures: Figures, data: Dataset) -> StagePlan:
    from ..attack.stage import seed_configs

    a, at = cfg.analyze, cfg.attack
    variants = list(dict.fromkeys(at.variants))
    seeds = len(seed_configs(cfg))  # each analysed seed's models embed every image again
    fractions = len(a.exposure_fractions) if data.has_clean else 0
    targets = 2 if at.mode == "targeted" else 1
    attack_rows = len(variants) * min(at.n_images, data.test) * targets
    chunks = -(-data.test // a.batch_size) + -(-attack_rows // a.batch_size)
    share = min(ranks, max(1, chunks))
    latents = seeds * (data.test * len(variants) * (2 + fractions) + attack_rows) / share
    observed = seeds * data.test * fractions / share
    terms = [_term(f"latents: {seeds} seed(s) x ({data.test:,} test images x {len(variants)} models x (Y10, Y1 + "
                   f"{fractions} exposures) + {attack_rows:,} attacked images)", latents, figures("embed")),
             _term(f"{seeds} seed(s) x {data.test:,} test galaxies observed again at {fractions} exposures", observed,
                   figures("reobserve")),
             Term("fixed: Table 2, church windows, isomaps, claims, figures", 0, None, FIXED["analyze"] * seeds)]
    work = {"seeds": seeds, "test_images": data.test, "attack_rows": attack_rows, "exposures": fractions,
            "chunks": chunks, "forward_passes": seeds * (data.test * len(variants) * (2 + fractions) + attack_rows),
            "observations": seeds * data.test * fractions}
    return StagePlan("analyze", ranks, device, gpus if device == "cuda" else 0, work, terms,
                     [] if share == ranks else [f"only {chunks} chunks for {ranks} ranks"])


def plan_report(cfg) -> StagePlan:
    return StagePlan("report", 1, "cpu", 0, {}, [Term("fixed: gather, tables, HTML", 0, None, FIXED["report"])])
