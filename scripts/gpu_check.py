#!/usr/bin/env python3
"""The GPU path of train, attack and analyze, proven in one short call (run by scripts/gpu-check.sh).

On one CUDA device (``--cpu``: the same steps on the CPU at small sizes, so that CI keeps this
script working), in this order, each step timed and recorded in ``OUT/gpu-check.json`` as soon as
it ends (a run cut short keeps what it measured):

1. ``generate``: a tiny dataset (48 x 48 px) drawn on the CPU, as the stage always does;
2. ``train``: both variants (regular, MMD) for a few epochs on the device, one rank, by the stage
   itself; it must learn: the last epoch's training loss (history.csv) under 0.9 x the first's.
   Also recorded: the saved (best-epoch) model's cross-entropy on the training set beside the same
   model untrained, in eval mode (after a few steps BatchNorm's running statistics lag, so this
   one is not the check);
3. ``attack_cuda_vs_cpu``: the stage's block function (``attack_images``) on the trained regular
   model, the same images, targets and seeds, once on the device and once on the CPU. cuDNN and
   the CPU's kernels differ in the last bits, and DE keeps a trial only when it is strictly
   better, so a near-tie can send one attack down another path. Allowed (the check passes):
   probabilities of the unattacked images within 1e-4; the same success for at least 90% of the
   attacks; among attacks that succeed on both, queries within one population (one generation)
   for at least 90%. Exact agreement is recorded beside it;
4. ``stages``: ``hpcmorph attack`` and ``hpcmorph analyze`` run by their drivers on the device,
   and analyze's Y10 latents checked against the same images embedded on the CPU (relative
   difference under 1e-3);
5. ``attack_throughput``: candidates per second inside the DE loop (draws, mutation, building the
   candidate images, the forward passes) beside bare batched inference of batches of the same size,
   same model, same device, alternated twice (best of each); the ratio (aim >= 0.9);
6. ``precision``: the model's training steps and inference passes per second in fp32, TF32, bf16
   and fp16 (on the CPU: fp32 and bf16), each beside the device's matmul peak of that precision
   (the roofline, hpcmorph/bench/roofline.py), and the speed-up of each over fp32;
7. ``certify_screens``: the certifier's screens at 64 x 64 px (hpcmorph/bench/certify.py), 32,768
   candidates (a whole scan), each beside whole float32 passes: whether a GPU certifies ``make
   run``'s ~130 scans in minutes; the float32 windows must agree with the whole passes;
8. ``paper_budget``: the paper's attack (150 images x 2 targets, population 400, 80 generations,
   k = 1, both models, 100 x 100 px) by the stage's block function with a threshold no candidate
   reaches, so every attack spends its whole budget of 32,400 queries: an upper bound. Untrained
   models: speed does not depend on the weights. Run whole when a first measurement says it fits
   the time left, else extrapolated linearly from the rounds, images and models measured (every
   round evaluates the same number of candidates). Goal: under 60 s on one H200-class GPU.

Exit 0 when every check passed, 1 when one failed or a step raised, 2 when the machine cannot run
the check (no CUDA device without ``--cpu``, a missing package: see gpu-check.sh --list-wheels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PAPER = {"images": 150, "targets": 2, "population": 400, "generations": 80, "pixels": 1, "models": 2,
         "image_size": 100}
GOAL_PAPER_S = 60.0
SIZES = {
    "gpu": {"galaxies": 240, "epochs": 12, "batch": 32, "compare_images": 8, "compare_population": 40,
            "compare_generations": 10, "stage_images": 8, "stage_population": 40, "stage_generations": 5,
            "throughput_tasks": 16, "throughput_population": 400, "throughput_rounds": 3,
            "throughput_size": 100, "paper_images": 150, "paper_size": 100, "paper_forward_batch": 8192,
            "paper_full_if_under_s": 150.0, "certify_size": 64, "certify_candidates": 32768},
    "cpu": {"galaxies": 48, "epochs": 4, "batch": 16, "compare_images": 2, "compare_population": 12,
            "compare_generations": 4, "stage_images": 2, "stage_population": 12, "stage_generations": 2,
            "throughput_tasks": 2, "throughput_population": 32, "throughput_rounds": 2,
            "throughput_size": 32, "paper_images": 1, "paper_size": 32, "paper_forward_batch": 1024,
            "paper_full_if_under_s": 0.0, "certify_size": 32, "certify_candidates": 1024},
}
TOLERANCE = {"prob_before_abs": 1e-4, "success_agreement": 0.9, "queries_within_population": 0.9,
             "latent_rel": 1e-3, "learned_loss_ratio": 0.9}


class Report:
    """The JSON of every figure, rewritten after each step."""

    def __init__(self, path: Path, mode: str, budget_s: float):
        self.path, self.t0, self.budget_s = path, time.monotonic(), budget_s
        self.data = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "mode": mode,
                     "python": platform.python_version(), "tolerance": TOLERANCE, "steps": {}, "checks": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def step(self, name: str, fn, *args):
        print(f"gpu-check: {name} ({self.left():.0f} s left)", flush=True)
        t0 = time.perf_counter()
        try:
            figures = fn(*args) or {}
            figures["ok"] = True
        except Exception as err:  # noqa: BLE001 - a failed step is recorded, the others still run
            figures = {"ok": False, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()[-4000:]}
            print(figures["traceback"], file=sys.stderr, flush=True)
        figures["seconds"] = round(time.perf_counter() - t0, 3)
        self.data["steps"][name] = figures
        for check, ok in figures.pop("_checks", {}).items():
            self.data["checks"][check] = bool(ok)
        self.save()
        print(f"gpu-check: {name}: {'ok' if figures['ok'] else 'FAILED'} in {figures['seconds']:.1f} s "
              + json.dumps({k: v for k, v in figures.items() if not isinstance(v, (dict, list)) and k != "traceback"}),
              flush=True)
        return figures

    def save(self) -> None:
        steps = self.data["steps"].values()
        self.data["passed"] = all(s.get("ok") for s in steps) and all(self.data["checks"].values())
        self.data["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=float))
        os.replace(tmp, self.path)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_model(cfg, variant, device):
    """The trained ``variant`` at the attack's model seed, on ``device``."""
    from hpcmorph.attack.stage import model_seed
    from hpcmorph.train.saved import load_model as load

    return load(cfg, variant, model_seed(cfg), device)


def attack_images(*args):
    from hpcmorph.attack.stage import attack_images as block

    return block(*args)


# ------------------------------------------------------------------------------------------ steps

def environment(mode: str) -> dict:
    import torch

    out = {"python": sys.executable, "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
           "cuda": torch.version.cuda, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update({"device_name": props.name, "device_memory_gib": round(props.total_memory / 2 ** 30, 1),
                    "capability": f"{props.major}.{props.minor}", "cudnn": torch.backends.cudnn.version()})
    return out


def make_config(out: Path, sizes: dict, extra=()):
    from hpcmorph import config

    return config.load("tiny", [
        f"run.root={out / 'runs'}", "run.name=gpu-check", "run.progress=false",
        f"generate.n_galaxies={sizes['galaxies']}", "generate.figures=false",
        f"train.epochs={sizes['epochs']}", f"train.patience={sizes['epochs']}", f"train.batch_size={sizes['batch']}",
        "train.lr=0.002", f"attack.n_images={sizes['stage_images']}", f"attack.population={sizes['stage_population']}",
        f"attack.generations={sizes['stage_generations']}", "attack.images_per_batch=4", "attack.figures=false",
        "analyze.k_sweep=[1]", "analyze.isomap_images=20", "analyze.figures=false", *extra])


def step_generate(cfg, ctx) -> dict:
    import h5py

    from hpcmorph import generate

    path = generate.run(cfg, ctx, force=True)
    with h5py.File(path, "r") as f:
        split = f["split"][...]
    return {"galaxies": cfg.generate.n_galaxies, "rows": int(len(split)), "image_size": cfg.generate.image_size,
            "test_rows": int((split == 2).sum())}


def _train_loss(model, stretch, images, labels, device) -> float:
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        logits = model(stretch(torch.from_numpy(images)).to(device))[1]
        return float(F.cross_entropy(logits, torch.from_numpy(labels).to(device)))


def step_train(cfg, ctx, device) -> dict:
    import h5py
    import numpy as np
    import torch

    from hpcmorph import train
    from hpcmorph.generate import output_path
    from hpcmorph.layout import RunLayout
    from hpcmorph.train.model import for_config

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train.run(cfg, ctx)
    seconds = time.perf_counter() - t0
    out = {"seconds_stage": round(seconds, 2), "variants": {}, "_checks": {}}
    if device.type == "cuda":
        out["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        out["_checks"]["train_used_the_gpu"] = out["peak_gpu_memory_mib"] > 0
    with h5py.File(output_path(cfg), "r") as f:
        rows = np.flatnonzero((f["split"][...] == 0) & (f["label"][...] >= 0))
        images, labels = f["y10"][rows], f["label"][rows].astype(np.int64)
    lay = RunLayout.of(cfg)
    for variant in cfg.train.variants:
        metrics = json.loads((lay.model_folder(variant, 0) / "metrics.json").read_text())
        model, stretch = load_model(cfg, variant, device)
        after = _train_loss(model, stretch, images, labels, device)
        fresh = for_config(cfg, 0).to(device)
        before = _train_loss(fresh, stretch, images, labels, device)
        out["variants"][variant] = {"train_loss_untrained": before, "train_loss_trained": after,
                                    "loss_ratio": after / before, "best_epoch": metrics["best_epoch"],
                                    "epochs_run": metrics["epochs_run"],
                                    "train_images_per_s": metrics["train_images_per_s"],
                                    "test_accuracy_y10": metrics["y10"].get("accuracy"),
                                    "test_accuracy_y1": metrics["y1"].get("accuracy")}
        history = [line.split(",") for line in (lay.model_folder(variant, 0) / "history.csv").read_text().split()[1:]]
        first, last = float(history[0][1]), float(history[-1][1])
        out["variants"][variant].update({"train_loss_first_epoch": first, "train_loss_last_epoch": last})
        out["_checks"][f"train_{variant}_learns"] = last < TOLERANCE["learned_loss_ratio"] * first
    return out


def _pick_threshold(probs, labels) -> float:
    """A threshold some attacks reach at once and others not at all: just above the median target
    probability of the unattacked images (a barely trained model is rarely confident)."""
    import numpy as np

    p = [probs[i, t] for i, label in enumerate(labels) for t in range(3) if t != label]
    return float(np.clip(np.median(p) + 0.02, 0.05, 0.5))


def step_compare(cfg, device, sizes: dict) -> dict:
    import h5py
    import numpy as np
    import torch

    from hpcmorph.onepixel import pixels
    from hpcmorph.generate import output_path

    cpu = torch.device("cpu")
    with h5py.File(output_path(cfg), "r") as f:
        rows = np.flatnonzero((f["split"][...] == 2) & (f["label"][...] >= 0))[:sizes["compare_images"]]
        images, labels = f["y10"][rows], f["label"][rows].astype(np.int64)
    results, probs = {}, {}
    models = {"cpu": load_model(cfg, "regular", cpu), "device": load_model(cfg, "regular", device)}
    for name, (model, stretch) in models.items():
        dev = cpu if name == "cpu" else device
        with torch.inference_mode():
            probs[name] = pixels.forward_probs(lambda x: model(x)[1], stretch(torch.from_numpy(images)).to(dev))
            probs[name] = probs[name].cpu().numpy()
    threshold = _pick_threshold(probs["cpu"], labels)
    c = cfg.updated({"attack.population": sizes["compare_population"],
                     "attack.generations": sizes["compare_generations"], "attack.threshold": threshold})
    timing = {}
    for name, (model, stretch) in models.items():
        dev = cpu if name == "cpu" else device
        t0 = time.perf_counter()
        results[name] = attack_images(model, stretch, images, rows, labels, probs[name], c, dev)
        _sync(dev)
        timing[name] = time.perf_counter() - t0
    a, b = results["cpu"], results["device"]
    same_success = a["success"] == b["success"]
    both = a["success"] & b["success"]
    dq = np.abs(a["queries"] - b["queries"])
    out = {"device_a": "cpu", "device_b": str(device), "images": int(len(rows)), "attacks": int(len(a["success"])),
           "population": c.attack.population, "generations": c.attack.generations, "threshold": threshold,
           "prob_before_max_abs_diff": float(np.abs(probs["cpu"] - probs["device"]).max()),
           "prob_after_max_abs_diff": float(np.abs(a["prob_after"] - b["prob_after"]).max()),
           "success_cpu": int(a["success"].sum()), "success_device": int(b["success"].sum()),
           "success_agreement": float(same_success.mean()),
           "flipped_images_cpu": int(len(np.unique(a["index"][a["success"]]))),
           "flipped_images_device": int(len(np.unique(b["index"][b["success"]]))),
           "queries_equal": float(np.mean(dq == 0)), "queries_max_abs_diff": int(dq.max()),
           "queries_within_population_of_joint_successes": float(np.mean(dq[both] <= c.attack.population))
           if both.any() else None,
           "same_pixels": float(np.mean(np.all(a["pixel_xy"] == b["pixel_xy"], axis=(1, 2)))),
           "seconds_cpu": round(timing["cpu"], 3), "seconds_device": round(timing["device"], 3)}
    within = out["queries_within_population_of_joint_successes"]
    out["_checks"] = {
        "attack_prob_before_within_tolerance": out["prob_before_max_abs_diff"] <= TOLERANCE["prob_before_abs"],
        "attack_same_flips": out["success_agreement"] >= TOLERANCE["success_agreement"],
        "attack_queries_within_tolerance": within is None or within >= TOLERANCE["queries_within_population"]}
    return out


def step_stages(cfg, ctx, device) -> dict:
    import h5py
    import numpy as np
    import torch

    from hpcmorph import analyze, attack
    from hpcmorph.analyze import latents

    out = {"_checks": {}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    path = attack.run(cfg, ctx, force=True)
    out["attack_seconds"] = round(time.perf_counter() - t0, 2)
    with h5py.File(path, "r") as f:
        out["attack_rows"], out["attack_successes"] = int(len(f["success"])), int(f["success"][...].sum())
    t0 = time.perf_counter()
    folder = analyze.run(cfg, ctx, force=True)
    out["analyze_seconds"] = round(time.perf_counter() - t0, 2)
    if device.type == "cuda":
        out["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
        out["_checks"]["stages_used_the_gpu"] = out["peak_gpu_memory_mib"] > 0
    with h5py.File(folder / "latents.h5", "r") as f:
        index, z = f["index"][:4], f["z_y10"][:4]
        variants = str(f.attrs["variant_names"]).split(",")
    from hpcmorph.generate import output_path

    with h5py.File(output_path(cfg), "r") as f:
        images = f["y10"][np.sort(index)]
    worst = 0.0
    for v, name in enumerate(variants):
        model, stretch = load_model(cfg, name, torch.device("cpu"))
        ref, _ = latents.embed(model, images, torch.device("cpu"), stretch)
        worst = max(worst, float(np.abs(ref - z[:, v]).max() / max(np.abs(ref).max(), 1e-12)))
    out["latent_max_rel_diff_vs_cpu"] = worst
    out["_checks"]["analyze_latents_match_cpu"] = worst <= TOLERANCE["latent_rel"]
    return out


def _random_images(n: int, size: int, device, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.386 * torch.rand((n, 3, size, size), generator=g) ** 4).to(device)


def step_throughput(device, sizes: dict) -> dict:
    import numpy as np
    import torch

    from hpcmorph.attack import evolution
    from hpcmorph.onepixel import pixels
    from hpcmorph.train.model import build_model

    model = build_model(0).to(device).eval()
    tasks, p, rounds, size = (sizes["throughput_tasks"], sizes["throughput_population"], sizes["throughput_rounds"],
                              sizes["throughput_size"])
    per_pass = tasks * p
    base = _random_images(tasks, size, device)
    lo, hi, pos = pixels.bounds(1, 3, size, size, (0.5, 0.886))
    seeds = [np.random.SeedSequence([0, i]) for i in range(tasks)]
    settings = evolution.Settings(p, rounds - 1, threshold=2.0)  # never reached: fixed work
    batch = base.repeat_interleave(p, 0).contiguous()
    logits = lambda x: model(x)[1]  # noqa: E731
    attack_s, bare_s, share = [], [], []
    with torch.inference_mode():
        pixels.forward_probs(logits, batch)  # warm-up (cuDNN plans, allocator)
        _sync(device)
        for _ in range(2):
            obj = pixels.PixelObjective(logits, base, 1, forward_batch=per_pass)
            t0 = time.perf_counter()
            evolution.evolve(obj, lo, hi, [0] * tasks, [1] * tasks, seeds, settings, resample=pos)
            _sync(device)
            attack_s.append(time.perf_counter() - t0)
            share.append(obj.forward_seconds / attack_s[-1])
            t0 = time.perf_counter()
            for _ in range(rounds):
                pixels.forward_probs(logits, batch).cpu()
            _sync(device)
            bare_s.append(time.perf_counter() - t0)
    attack_rate, bare_rate = per_pass * rounds / min(attack_s), per_pass * rounds / min(bare_s)
    return {"image_size": size, "batch": per_pass, "rounds": rounds, "attack_candidates_per_s": attack_rate,
            "bare_images_per_s": bare_rate, "ratio_attack_to_bare": attack_rate / bare_rate,
            "model_share_of_attack_time": share[int(np.argmin(attack_s))], "aim_ratio": 0.9}


def step_precision(device, sizes: dict) -> dict:
    """Training steps and inference (the attack's forward passes) per second of the study's model in fp32,
    TF32, bf16 and fp16 (CUDA; on the CPU fp32 and bf16), each with its achieved FLOP/s against the
    device's matmul peak of that precision (hpcmorph.bench.roofline), and each speed-up over fp32."""
    from hpcmorph.bench import roofline

    names = ("fp32", "tf32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")
    size, batch = sizes["throughput_size"], sizes["batch"] * 4
    out: dict = {"image_size": size, "train_batch": batch, "infer_batch": sizes["paper_forward_batch"] // 8}
    for name in names:
        out[name] = roofline.step_rates(name, device, size, batch, out["infer_batch"],
                                        seconds=2.0 if device.type == "cuda" else 0.5)
    for name in names[1:]:
        for what in ("train", "infer"):
            out[f"{what}_speedup_{name}"] = out[name][what]["images_per_s"] / out["fp32"][what]["images_per_s"]
    for name in names:
        for line in roofline.format_rows([out[name]["train"], out[name]["infer"]], f"{name}"):
            print(line, flush=True)
    return out


def step_certify(device, sizes: dict) -> dict:
    """The certifier's screens (hpcmorph.bench.certify) at the laptop's 64 x 64 px: candidates/s of each
    beside whole float32 passes, and what one 32,768-candidate scan costs (make run's ~130 scans take
    45 min on 2 CPU cores). Checks that the float32 windows agree with whole passes."""
    from hpcmorph.bench.certify import format_screens, screens

    res = screens(image_size=sizes["certify_size"], candidates=sizes["certify_candidates"], device=device)
    for line in format_screens(res):
        print(line, flush=True)
    windows = next(r for r in res["rows"] if r["screen"] == "float32 windows")
    # TF32 convolutions (cuDNN's default) round at 2^-11: the windows and the whole passes differ more.
    res["_checks"] = {"certify_windows_agree": windows["max_logit_difference"] <= 1e-2 * windows["logit_scale"]}
    return res


def step_paper(device, sizes: dict, seconds_left: float) -> dict:
    import numpy as np

    from hpcmorph import config
    from hpcmorph.train.model import build_model
    from hpcmorph.train.normalize import AsinhStretch

    size, n = sizes["paper_size"], sizes["paper_images"]
    stretch = AsinhStretch(low=(0.0,), high=(1.0,))
    raw = np.random.default_rng(0).gamma(0.5, 0.2, (n, 3, size, size)).astype(np.float32)
    labels = np.zeros(n, np.int64)
    rows = np.arange(n)
    prob = np.full((n, 3), 1 / 3, np.float32)
    models = [build_model(seed).to(device).eval() for seed in range(PAPER["models"])]

    def cfg_for(generations: int):
        # A threshold of 1: no probability exceeds it, so every attack spends its whole budget.
        return config.load("paper", ["attack.threshold=1.0", f"attack.generations={generations}",
                                     f"attack.forward_batch={sizes['paper_forward_batch']}",
                                     f"attack.images_per_batch={n}"])

    def timed(model, generations: int) -> float:
        t0 = time.perf_counter()
        attack_images(model, stretch, raw, rows, labels, prob, cfg_for(generations), device)
        _sync(device)
        return time.perf_counter() - t0

    timed(models[0], 0)  # warm-up
    rounds = 2
    first = timed(models[0], rounds - 1)
    per_round = first / rounds
    scale_images = PAPER["images"] / n
    projected = per_round * (PAPER["generations"] + 1) * scale_images * PAPER["models"]
    out = {"image_size": size, "images_measured": n, "targets": PAPER["targets"], "population": PAPER["population"],
           "generations": PAPER["generations"], "models": PAPER["models"],
           "queries_at_most": PAPER["models"] * PAPER["images"] * PAPER["targets"] * PAPER["population"] *
           (PAPER["generations"] + 1), "measured_rounds": rounds, "measured_seconds": first,
           "seconds_per_round_per_model": per_round * scale_images, "goal_seconds": GOAL_PAPER_S}
    full = size == PAPER["image_size"] and n == PAPER["images"] and \
        projected <= min(sizes["paper_full_if_under_s"], seconds_left - 30)
    if full:
        total = sum(timed(m, PAPER["generations"]) for m in models)
        out.update({"budget_seconds": total, "how": "measured: the whole budget, both models"})
    else:
        out.update({"budget_seconds": projected, "how": f"extrapolated from {rounds} rounds of {n} images on one model "
                    f"at {size}x{size} px (every round evaluates the same candidates)"})
    out["queries_per_s"] = out["queries_at_most"] / out["budget_seconds"]
    out["meets_goal"] = out["budget_seconds"] < GOAL_PAPER_S
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the same steps on the CPU at small sizes")
    parser.add_argument("--out", default="gpu-check-out", help="folder for the run and gpu-check.json")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds this script may take")
    args = parser.parse_args(argv)
    mode = "cpu" if args.cpu else "gpu"
    sizes = SIZES[mode]
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        import torch

        from hpcmorph import mpi
    except ImportError as err:
        print(f"gpu-check: error: {err}; see scripts/gpu-check.sh --list-wheels", file=sys.stderr)
        return 2
    if mode == "gpu" and not torch.cuda.is_available():
        print("gpu-check: error: no CUDA device (torch.cuda.is_available() is False); --cpu runs the same on the CPU",
              file=sys.stderr)
        return 2
    device = torch.device("cuda", 0) if mode == "gpu" else torch.device("cpu")
    report = Report(out / "gpu-check.json", mode, args.budget)
    report.data["sizes"] = sizes
    report.step("environment", environment, mode)
    ctx = mpi.world()
    mpi.setup_logging(ctx)
    cfg = make_config(out, sizes)
    generated = report.step("generate", step_generate, cfg, ctx)
    trained = generated["ok"] and report.step("train", step_train, cfg, ctx, device)["ok"]
    if trained:
        compared = report.step("attack_cuda_vs_cpu", step_compare, cfg, device, sizes)
        stage_cfg = cfg.updated({"attack.threshold": compared.get("threshold", cfg.attack.threshold)})
        report.step("stages", step_stages, stage_cfg, ctx, device)
    report.step("attack_throughput", step_throughput, device, sizes)
    report.step("precision", step_precision, device, sizes)
    report.step("certify_screens", step_certify, device, sizes)
    report.step("paper_budget", lambda: step_paper(device, sizes, report.left()))
    report.save()
    print(f"gpu-check: {'PASSED' if report.data['passed'] else 'FAILED'}; figures in {report.path}", flush=True)
    return 0 if report.data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
