"""Per-rank throughputs measured here: a short run of each stage's inner loop, for ``hpcmorph plan``.

Each figure is the loop a stage spends its time in, at the config's sizes, on one rank, with the
threads the stage would set (``train.threads``, ``attack.threads``, ``analyze.threads``; 0 leaves
torch's default, recorded as measured):

=============  ========================================================  ======================
figure         loop                                                       unit
=============  ========================================================  ======================
generate       ``source.draw(i)`` then Gini-M20 of the label band          galaxies/s
train_regular  forward, cross-entropy, backward, Adam, at the rank's batch  images/s
               (in ``train.precision`` as the stage resolves it: recorded)
train_mmd      the same on Y10 and Y1 batches together plus the MMD term    labelled images/s
infer          eval-mode forward at ``train.eval_batch_size``               images/s
embed          the same at ``analyze.batch_size`` (analyze's latents)       images/s
attack         batched DE (``evolution.evolve`` + ``PixelObjective``)       candidates/s
certify        the certifying scan's screen (``attack.certify_precision``   candidates/s
               as the stage resolves it) on single-pixel candidates
reobserve      ``exposure.reobserve`` of one noiseless image, every band    observations/s
write          an HDF5 file under the run root, written and flushed         MB/s
=============  ========================================================  ======================

The model is an untrained GalaxyNet on random images in the normalised range: its speed does not
depend on its weights. The attack's candidates never succeed (threshold above 1), so every round
evaluates its whole population. Each figure runs for at least ``seconds`` after one warm-up
iteration; the whole calibration takes a few seconds on the tiny preset, about a minute for the
paper's sizes on a 2-core CPU. The result (with the machine, the date and the settings measured
at) is stored as ``<run.root>/<run.name>/calibration-<device>.json``.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from pathlib import Path

import numpy as np

from . import store
from .config import Config
from .errors import UserError
from .layout import RunLayout

DEVICES = ("cpu", "cuda")


class CalibrationError(UserError):
    """The calibration cannot run here as asked (no CUDA device, a source file missing)."""


def path_for(cfg: Config, device: str) -> Path:
    return RunLayout.of(cfg).calibration(device)


def load(cfg: Config, device: str) -> dict | None:
    """The stored calibration for ``device``, or None when there is none (or it is unreadable)."""
    path = path_for(cfg, device)
    if not path.exists():
        return None
    try:
        found = store.read_json(path)
    except UserError:
        return None
    return found if isinstance(found.get("rates"), dict) else None


def timed(step, seconds: float, sync=lambda: None, min_reps: int = 2) -> tuple[float, int]:
    """(seconds, repetitions) of ``step()`` run at least ``min_reps`` times and ``seconds`` long,
    after one warm-up call."""
    step()
    sync()
    reps, t0 = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - t0 < seconds:
        step()
        reps += 1
    sync()
    return time.perf_counter() - t0, reps


def _threads(n: int):
    """Set torch's CPU threads as a stage does (0: leave the default); returns the count in use."""
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _images(n: int, bands: int, size: int, device, seed: int = 0):
    """Random images in the normalised range of the asinh stretch ([0.5, 0.886], sky near 0.5)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.386 * torch.rand((n, bands, size, size), generator=g) ** 4).to(device)


def generate_rate(cfg: Config, seconds: float) -> dict:
    from .generate import morphology
    from .generate.sources import open_source
    from .errors import SourceError

    g = cfg.generate
    try:
        source = open_source(cfg)
    except SourceError as err:
        raise CalibrationError(f"calibrate generate: {err}") from None
    band = g.bands.index(g.label_band)
    count = [0]

    def draw():
        i = count[0] % len(source)
        d = source.draw(i)
        clean = d.clean if np.all(np.isfinite(d.clean)) else d.y10
        morphology.measure(clean[band])
        count[0] += 1

    spent, reps = timed(draw, seconds)
    return {"per_s": reps / spent, "unit": "galaxies/s", "image_size": g.image_size, "source": g.source,
            "samples": reps}


def train_rates(cfg: Config, device, ranks: int, seconds: float) -> dict:
    import torch
    import torch.nn.functional as F

    from . import precision
    from .train.mmd import mmd2
    from .train.model import for_config

    t = cfg.train
    threads = _threads(t.threads)
    bands, size = len(cfg.generate.bands), cfg.generate.image_size
    batch = max(1, t.batch_size // ranks)
    # The stage's arithmetic (train/stage.py: losses): passes under autocast, losses in float32.
    arithmetic = precision.resolve(t.precision, device)
    out = {}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for variant in ("regular", "mmd"):
        model = for_config(cfg, 0).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=t.lr, betas=tuple(t.betas))
        scaler = precision.grad_scaler(arithmetic, device)
        x, x1 = _images(batch, bands, size, device, 1), _images(batch, bands, size, device, 2)
        y = torch.arange(batch, device=device) % 3

        def step():
            with precision.autocast(arithmetic, device):
                latent, logits = model(torch.cat([x, x1]) if variant == "mmd" else x)
            loss = F.cross_entropy(logits[:batch].float(), y)
            if variant == "mmd":
                loss = loss + t.mmd_lambda * mmd2(latent[:batch].float(), latent[batch:].float(),
                                                  bandwidth=t.mmd_bandwidth)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        spent, reps = timed(step, seconds, sync)
        out[f"train_{variant}"] = {"per_s": reps * batch / spent, "unit": "images/s" if variant == "regular"
                                   else "labelled images/s", "image_size": size, "batch": batch,
                                   "threads": threads, "samples": reps, "precision": arithmetic}
    model = for_config(cfg, 0).to(device).eval()
    x = _images(t.eval_batch_size, bands, size, device, 3)

    def infer():
        with torch.no_grad():
            model(x)

    spent, reps = timed(infer, seconds, sync)
    out["infer"] = {"per_s": reps * t.eval_batch_size / spent, "unit": "images/s", "image_size": size,
                    "batch": t.eval_batch_size, "threads": threads, "samples": reps}
    return out


def embed_rate(cfg: Config, device, seconds: float, infer: dict) -> dict:
    """Analyze's latents: eval-mode forward at ``analyze.batch_size`` with ``analyze.threads`` (the
    train figure ``infer`` again when both settings are the same)."""
    import torch

    from .train.model import for_config

    a = cfg.analyze
    threads = _threads(a.threads)
    if (a.batch_size, threads) == (infer["batch"], infer["threads"]):
        return {"embed": dict(infer)}
    model = for_config(cfg, 0).to(device).eval()
    x = _images(a.batch_size, len(cfg.generate.bands), cfg.generate.image_size, device, 5)

    def embed():
        with torch.no_grad():
            model(x)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    spent, reps = timed(embed, seconds, sync)
    return {"embed": {"per_s": reps * a.batch_size / spent, "unit": "images/s", "image_size": x.shape[-1],
                      "batch": a.batch_size, "threads": threads, "samples": reps}}


def attack_rate(cfg: Config, device, seconds: float) -> dict:
    """Candidates per second through the stage's batched DE, one block of the config's size (fewer
    tasks when one round of the block would pass forward_batch several times: the rate is then
    that of full forward passes either way)."""
    import torch

    from .attack import evolution
    from .onepixel import pixels
    from .onepixel.goal import UNTARGETED
    from .train.model import for_config

    a = cfg.attack
    threads = _threads(a.threads)
    bands, size = len(cfg.generate.bands), cfg.generate.image_size
    targets = 2 if a.mode == "targeted" else 1
    tasks = min(a.images_per_batch, a.n_images) * targets
    tasks = max(1, min(tasks, -(-a.forward_batch // a.population)))
    model = for_config(cfg, 0).to(device).eval()
    base = _images(tasks, bands, size, device, 4)
    lower, upper, is_position = pixels.bounds(a.pixels, bands, size, size, [0.5, 0.886])
    seeds = [np.random.SeedSequence([0, i]) for i in range(tasks)]
    true, target = [0] * tasks, [1] * tasks if targets == 2 else [UNTARGETED] * tasks
    # A threshold above 1 never succeeds: every round evaluates the whole population.
    rounds = 2
    settings = evolution.Settings(a.population, rounds - 1, a.mutation, a.crossover, threshold=2.0)

    def attack():
        objective = pixels.PixelObjective(lambda x: model(x)[1], base, a.pixels, a.forward_batch)
        evolution.evolve(objective, lower, upper, true, target, seeds, settings, resample=is_position)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    spent, reps = timed(attack, seconds, sync, min_reps=1)
    return {"attack": {"per_s": reps * tasks * a.population * rounds / spent, "unit": "candidates/s",
                       "image_size": size, "batch": min(a.forward_batch, tasks * a.population), "tasks": tasks,
                       "population": a.population, "threads": threads, "samples": reps}}


def certify_rate(cfg: Config, device, seconds: float) -> dict:
    """Candidates per second through the certifying scan's screen (:func:`.attack.certify.screen_of`, in
    ``attack.certify_precision`` as resolved on ``device``): single-pixel corner candidates of one image,
    a pass of the certifier's chunk at a time; whole forward passes where the model has no screen."""
    import torch

    from .attack import certify
    from .train.model import for_config

    a = cfg.attack
    threads = _threads(a.threads)
    bands, size = len(cfg.generate.bands), cfg.generate.image_size
    model = for_config(cfg, 0).to(device).eval()
    arithmetic = certify.resolve_precision(a.certify_precision, device)
    image = _images(1, bands, size, device, 5)[0]
    chunk = certify.Settings().chunk
    # Positions spread over the image (a prime stride), at the corners of the normalised range.
    position = (np.arange(chunk) * 7919) % (size * size)
    corner = np.random.default_rng(0).integers(0, 2, (chunk, bands))
    values = torch.from_numpy((0.5 + 0.386 * corner).astype(np.float32)).to(device)
    of_image = (certify.screen_of(model, arithmetic) or certify.whole_passes(model))(image)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    spent, reps = timed(lambda: of_image(position, values), seconds, sync)
    return {"certify": {"per_s": reps * chunk / spent, "unit": "candidates/s", "image_size": size,
                        "precision": arithmetic, "batch": chunk, "threads": threads, "samples": reps}}


def reobserve_rate(cfg: Config, seconds: float) -> dict:
    from .analyze import exposure
    from .generate.survey import bands as survey_bands

    g = cfg.generate
    bands = survey_bands(g.bands)
    clean = np.random.default_rng(0).gamma(1.0, 2.0, (len(bands), g.image_size, g.image_size)).astype(np.float32)
    seeds = [11 + k for k in range(len(bands))]
    spent, reps = timed(lambda: exposure.reobserve(clean, bands, g.pixel_scale, 0.5, seeds), seconds)
    return {"reobserve": {"per_s": reps / spent, "unit": "observations/s", "image_size": g.image_size,
                          "samples": reps}}


def write_rate(cfg: Config, seconds: float, megabytes: int = 64) -> dict:
    """MB/s of one HDF5 file written (and flushed to the OS) under the run root, then removed."""
    import h5py

    folder = RunLayout.of(cfg).folder
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".calibration-write.h5"
    data = np.random.default_rng(0).random(megabytes * 2 ** 20 // 4, dtype=np.float32)
    total, spent = 0, 0.0
    try:
        while total == 0 or spent < seconds / 2:
            t0 = time.perf_counter()
            with h5py.File(path, "w") as f:
                f.create_dataset("x", data=data)
                f.flush()
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            spent += time.perf_counter() - t0
            total += data.nbytes
    finally:
        path.unlink(missing_ok=True)
    return {"write": {"per_s": total / 2 ** 20 / spent, "unit": "MB/s", "samples": total // data.nbytes}}


def calibrate(cfg: Config, device: str, ranks: int = 1, seconds: float = 1.0) -> dict:
    """Measure every figure here on ``device`` ('cpu' or 'cuda'); store and return the record."""
    import torch

    from . import __version__

    if device not in DEVICES:
        raise CalibrationError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise CalibrationError("--calibrate --device cuda: this machine has no CUDA device "
                               "(torch.cuda.is_available() is False); calibrate on a GPU node")
    dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
    default_threads = torch.get_num_threads()
    rates: dict = {}
    try:
        rates.update({"generate": generate_rate(cfg, seconds)})
        rates.update(train_rates(cfg, dev, ranks, seconds))
        torch.set_num_threads(default_threads)
        rates.update(attack_rate(cfg, dev, seconds))
        torch.set_num_threads(default_threads)
        rates.update(certify_rate(cfg, dev, seconds))
        torch.set_num_threads(default_threads)
        rates.update(embed_rate(cfg, dev, seconds, rates["infer"]))
        torch.set_num_threads(default_threads)
        rates.update(reobserve_rate(cfg, seconds))
        rates.update(write_rate(cfg, seconds))
    finally:
        torch.set_num_threads(default_threads)
    record = {"host": socket.gethostname(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": device,
              "device_name": torch.cuda.get_device_name(dev) if device == "cuda" else platform.processor()
              or platform.machine(), "cpus": os.cpu_count(), "ranks": ranks, "torch": torch.__version__,
              "hpcmorph": __version__, "config": cfg.name, "rates": rates}
    store.write_json(path_for(cfg, device), record)
    return record
