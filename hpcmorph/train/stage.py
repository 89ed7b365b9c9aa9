"""Stage 2 driver: train each (variant, seed), reading top to bottom like a Horovod example.

:func:`train_one` is the recipe: read this rank's shard (fitting the normalisation on the training
split) -> build the model and optimizer -> resume from a checkpoint -> wrap the optimizer (broadcast
rank 0's weights, average gradients) -> train epochs with early stopping -> test the best model on
the Y10 and Y1 test sets -> write the outputs. Each step is one short function below it.

SIGTERM and SIGUSR1 (what Slurm sends ahead of the wall-time kill) are honoured from the start of
:func:`run` to its end: inside an epoch the ranks stop at the next step and checkpoint; between
epochs or runs they stop at the next boundary; after the last run they report that nothing is left
to do. Each ends the command with exit 75 (:class:`~hpcmorph.errors.Preempted`), and the same
command resumes; a finished (variant, seed) is never trained again.

Outputs, per run, in ``<run.root>/<run.name>/<variant>/seed<k>/``: ``model.pt`` (best weights,
normalisation, config), ``history.csv``, ``curves.png``, ``metrics.json``; while training,
``checkpoint.pt`` holds everything needed to resume at the next step. Across runs:
``train_summary.json`` (Table 1 with mean and std over seeds).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import json
import logging
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import layout, precision, store
from ..config import FIELDS, Config
from ..errors import PREEMPTED_EXIT, BackendError, Preempted, StageError  # noqa: F401 - PREEMPTED_EXIT re-exported
from ..generate.dataset import TEST, VALIDATION
from ..generate.classes import CLASS_NAMES
from ..layout import RunLayout
from ..lock import output_lock
from ..mpi import device_for, log
from . import data, distributed, metrics, variants
from .adversarial import attack_batch
from .coral import coral
from .dann import WithCritic, build_critic, domain_loss, reversal_schedule
from .mmd import mmd2
from .model import for_config
from .normalize import AsinhStretch
from .sinkhorn import sinkhorn_divergence
from .variants import Variant

STAGE = "train"
# Settings that change a trained model (backend and threads do not: the weights are the same).
_MODEL_KEYS = ("epochs", "patience", "batch_size", "lr", "schedule", "betas", "weight_decay", "weight_decay_mmd",
               "mmd_lambda", "mmd_bandwidth", "dropout", "normalize_per_band", "max_train_images", "precision",
               "compression", "arch", "coral_lambda", "dann_lambda", "sinkhorn_lambda", "sinkhorn_blur",
               "adversarial_fraction", "adversarial_queries")
# Settings added after models were trained without them enter the digest only when they differ from the
# value those models were trained with, so such models stay current: fp32, uncompressed gradients, a
# ResNet18, and the new variants' weights at their defaults (which a regular or MMD model never read).
_DIGESTED_UNLESS = {"precision": "fp32", "compression": "none",
                    **{k: FIELDS[f"train.{k}"].default
                       for k in ("arch", "coral_lambda", "dann_lambda", "sinkhorn_lambda", "sinkhorn_blur",
                                 "adversarial_fraction", "adversarial_queries")}}


def model_dir(cfg: Config, variant: str, seed: int) -> Path:
    """The folder of one trained model (variant, seed)."""
    return RunLayout.of(cfg).model_folder(variant, seed)


def digest(cfg: Config) -> str:
    keys = [k for k in _MODEL_KEYS if k not in _DIGESTED_UNLESS or cfg.train[k] != _DIGESTED_UNLESS[k]]
    return cfg.digest("run.seed", "generate", *(f"train.{k}" for k in keys))


class StopFlag:
    """Set by SIGTERM or SIGUSR1 while installed (a context manager): the run stops at the next
    step or boundary instead of dying with its work unsaved."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.raised = False
        self._old: dict = {}

    def __enter__(self) -> StopFlag:
        self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)

    def _handle(self, signum, frame):
        self.raised = True

    def any_rank(self, backend) -> bool:
        """Whether any rank was signalled (a collective: every rank calls it at the same point)."""
        return backend.allreduce_sum([self.raised])[0] > 0


def _atomic_torch_save(obj, path: Path) -> None:
    with store.atomic(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _classifier(model: torch.nn.Module) -> torch.nn.Module:
    """The classifier later stages load (model.pt): the trained module without a DANN critic."""
    m = _unwrap(model)
    return m.net if isinstance(m, WithCritic) else m


def _step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    # Dropout draws are reseeded every step, so a resumed run replays them exactly.
    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(1)[0])


def _throughput(history: list[dict]) -> float:
    """Labelled images per second over all ranks, training steps only (no validation)."""
    seconds = sum(h["train_seconds"] for h in history)
    return sum(h["images"] for h in history) / seconds if seconds else float("nan")


def _fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _evaluate(model, images: np.ndarray, labels: np.ndarray, stretch, device, batch: int,
              weight) -> tuple[float, float, np.ndarray]:
    """(sum of weighted CE, sum of weights, confusion counts) of this rank's images."""
    model.eval()
    loss, norm = 0.0, 0.0
    confusion = np.zeros((3, 3), dtype=np.int64)
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            x = stretch(torch.from_numpy(images[i:i + batch])).to(device)
            y = torch.from_numpy(labels[i:i + batch]).to(device)
            _, logits = model(x)
            loss += float(F.cross_entropy(logits, y, weight=weight, reduction="sum"))
            norm += float(weight[y].sum())
            np.add.at(confusion, (labels[i:i + batch], logits.argmax(1).cpu().numpy()), 1)
    return loss, norm, confusion


@dataclass
class Shard:
    """This rank's share of one (variant, seed) run's data, images in e-/s per pixel."""

    n_train: int            # labelled training images over all ranks
    weight: torch.Tensor    # class weights of the weighted cross-entropy, on the device
    stretch: AsinhStretch   # the normalisation, fitted on the training split
    y10: np.ndarray         # this rank's labelled Y10 training images, their labels and rows in galaxies.h5
    labels: np.ndarray
    rows: np.ndarray
    y1: np.ndarray | None   # this rank's unlabelled Y1 pool (domain-adapted variants only)
    val_y10: np.ndarray     # this rank's validation images and labels
    val_labels: np.ndarray


@dataclass
class Progress:
    """Where a run stands: what a checkpoint keeps so that the same command resumes at the next step."""

    epoch: int = 0                      # epochs finished
    step: int = 0                       # steps finished within the current epoch
    best_loss: float = float("inf")     # lowest validation loss so far, and its epoch (1-based)
    best_epoch: int = -1
    bad_epochs: int = 0                 # epochs since the best
    history: list = field(default_factory=list)  # one dict per finished epoch (history.csv)
    finished: bool = False


@dataclass
class TrainRun:
    """One (variant, seed) run in progress: what every step of :func:`train_one` reads."""

    cfg: Config
    backend: distributed.Single
    variant: str
    seed: int
    out: Path                           # the model's folder
    device: torch.device
    precision: str                      # resolved: fp32, bf16 or fp16 (see hpcmorph.precision)
    shard: Shard
    model: torch.nn.Module              # wrapped by the backend
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler        # active for fp16 only
    progress: Progress

    @property
    def name(self) -> str:
        return f"{self.variant} seed {self.seed}"

    @property
    def spec(self) -> Variant:
        """What the variant adds to the cross-entropy (:mod:`.variants`)."""
        return variants.of(self.variant)

    def save(self) -> None:
        """Write ``checkpoint.pt`` (rank 0) with everything needed to resume at the next step."""
        if self.backend.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            _atomic_torch_save({"model": _unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                                "scaler": self.scaler.state_dict(), "state": asdict(self.progress),
                                "precision": self.precision, "digest": digest(self.cfg)},
                               self.out / "checkpoint.pt")
        self.backend.barrier()


def train_one(cfg: Config, backend: distributed.Single, variant: str, seed: int, stop: StopFlag,
              force: bool = False) -> dict:
    """Train one (variant, seed) to its best validation epoch and test it; returns its results."""
    if not force and (done := _finished(cfg, variant, seed)) is not None:
        log.info("%s seed %d is up to date; skipping", variant, seed)
        return done
    out, device = model_dir(cfg, variant, seed), device_for(backend.local_rank)
    shard = read_shard(cfg, backend, variant, seed, device)
    arithmetic = _arithmetic(cfg, device, shard.y10.shape[-1])
    model, optimizer = build(cfg, variant, seed, device)
    scaler = precision.grad_scaler(arithmetic, device)
    progress = resume(cfg, out, model, optimizer, scaler, arithmetic, force, f"{variant} seed {seed}")
    model, optimizer = backend.wrap(model, optimizer, cfg.train.compression)
    run = TrainRun(cfg, backend, variant, seed, out, device, arithmetic, shard, model, optimizer, scaler, progress)
    while not progress.finished:
        stats = train_epoch(run, stop)
        end_epoch(run, stats)
        run.save()
        if stop.any_rank(backend) and not progress.finished:
            raise Preempted(f"{run.name}: stopped after epoch {progress.epoch}; checkpoint "
                            f"{out / 'checkpoint.pt'} written; run the same command again to resume")
    results = test(run)
    if backend.rank == 0:
        _write_outputs(cfg, out, _classifier(model), shard.stretch, progress.history, results)
    backend.barrier()
    return results


def read_shard(cfg: Config, backend: distributed.Single, variant: str, seed: int, device) -> Shard:
    """Read this rank's training, Y1 and validation images; fit the normalisation on the training split."""
    t = cfg.train
    with data.open_galaxies(RunLayout.of(cfg).galaxies) as f:
        rows = data.training_rows(f, seed, t.max_train_images)
        weight = torch.tensor(data.class_weights(f["label"][rows]), dtype=torch.float32, device=device)
        stretch = AsinhStretch.fit(f["y10"], rows=rows, per_band=t.normalize_per_band, seed=seed)
        mine = data.shard_rows(rows, seed, backend.rank, backend.size)
        y1 = None
        if variants.of(variant).uses_y1:
            pool = data.shard_rows(data.training_rows(f, seed), seed, backend.rank, backend.size, data.Y1_SHARD_STREAM)
            y1 = f["y1"][pool]  # images only: the labels of these rows are never read
        val_rows = data.split_rows(f)[VALIDATION][backend.rank::backend.size]
        return Shard(len(rows), weight, stretch, f["y10"][mine], f["label"][mine].astype(np.int64), mine, y1,
                     f["y10"][val_rows], f["label"][val_rows].astype(np.int64))


def build(cfg: Config, variant: str, seed: int, device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model (initialised from ``seed``; with DANN's critic beside it) and its Adam optimizer."""
    t, spec = cfg.train, variants.of(variant)
    torch.manual_seed(seed)
    model = for_config(cfg, seed)
    if spec.critic:
        model = WithCritic(model, build_critic(seed, model.latent_dim))
    # Contiguous (not channels-last) even in bf16: Horovod allreduces contiguous tensors only, and
    # channels-last added 4 % to a bf16 step on the CPU (1.66x against 1.59x fp32, issue 23).
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=tuple(t.betas), weight_decay=t[spec.weight_decay])
    return model, optimizer


def _arithmetic(cfg: Config, device: torch.device, image_size: int) -> str:
    """train.precision as this device runs it: ``auto`` falls back to fp32 where bfloat16 training
    would be wrong (:func:`hpcmorph.precision.bf16_training_sound`); bf16 asked for there is exit 2."""
    arithmetic = precision.resolve(cfg.train.precision, device)
    if arithmetic != "bf16" or precision.bf16_training_sound(device, cfg.train.arch, image_size):
        return arithmetic
    if cfg.train.precision == "auto":
        log.info("train: precision auto is fp32 here: bfloat16 weight gradients are wrong on this CPU for "
                 "%d px images (hpcmorph.precision.bf16_training_sound)", image_size)
        return "fp32"
    raise StageError(f"train.precision=bf16: on a CPU, PyTorch's bfloat16 convolution gives wrong weight gradients "
                     f"for ResNet18 on images of <= 16 px (these are {image_size} px; layer4 sees 1 x 1 maps): "
                     f"set train.precision=fp32 or auto")


def resume(cfg: Config, out: Path, model, optimizer, scaler, arithmetic: str, force: bool, name: str) -> Progress:
    """Where the run stands: fresh, or loaded (with the weights, optimizer and loss scale) from ``checkpoint.pt``."""
    path = out / "checkpoint.pt"
    if not path.exists() or force:
        return Progress()
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("digest") != digest(cfg):
        raise StageError(f"{path} was written by a different config (train digest {ckpt.get('digest')}, this "
                         f"config {digest(cfg)}); remove it or pass --force to start over")
    written = ckpt.get("precision", "fp32")
    if written != arithmetic:
        raise StageError(f"{path} was trained in {written} and train.precision={cfg.train.precision} is {arithmetic} "
                         f"here: set train.precision={written} to resume it, or pass --force to start over")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    log.info("%s: resuming at epoch %d step %d", name, ckpt["state"]["epoch"], ckpt["state"]["step"])
    state = ckpt["state"]
    # Epochs recorded before the domain term's column had its general name.
    state["history"] = [{("train_discrepancy" if k == "train_mmd" else k): v for k, v in h.items()}
                        for h in state["history"]]
    return Progress(**state)


def progress_of(t, epoch: int, step: int, steps: int) -> float:
    """The fraction of ``train.epochs`` done at ``step`` (of ``steps`` per epoch) of ``epoch``, in [0, 1)."""
    return (epoch * steps + step) / max(1, t.epochs * steps)


def learning_rate(t, epoch: int, step: int, steps: int) -> float:
    """The rate of ``step`` (of ``steps`` per epoch) in ``epoch`` under ``train.schedule``: a function of
    the position alone, so a resumed run needs no scheduler state."""
    if t.schedule == "constant":
        return t.lr
    return 0.5 * t.lr * (1.0 + math.cos(math.pi * progress_of(t, epoch, step, steps)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _batch(run: TrainRun, images: np.ndarray) -> torch.Tensor:
    """Images (B, C, H, W) in e-/s, normalised, on the device."""
    return run.shard.stretch(torch.from_numpy(images)).to(run.device)


def losses(run: TrainRun, x: torch.Tensor, y: torch.Tensor, x1: torch.Tensor | None, reversal: float = 0.0):
    """(loss, domain term) of one step: the weighted cross-entropy of the Y10 batch ``x`` (labels ``y``),
    plus weight x the variant's domain term between the Y10 and Y1 (``x1``) latents (:mod:`.variants`).
    ``reversal``: DANN's gradient-reversal coefficient at this step. With ``x1`` None, or a batch
    smaller than the term is defined on (the last of an epoch), the term is zero.

    The forward pass runs in the run's precision; the losses in float32. The MMD's squared distances
    are differences of large sums (|a|^2 + |b|^2 - 2 a.b), which bfloat16's 8-bit mantissa would leave
    mostly rounding, as it would the covariances and transport costs: the latents are taken to float32
    first, outside autocast.
    """
    t, n, spec = run.cfg.train, len(y), run.spec
    with precision.autocast(run.precision, run.device):
        # One forward pass over both exposures, as the authors: BatchNorm sees both.
        out = run.model(x if x1 is None else torch.cat([x, x1]), **({"reversal": reversal} if spec.critic else {}))
    latent, logits = out[0], out[1]
    ce = F.cross_entropy(logits[:n].float(), y, weight=run.shard.weight)
    if x1 is None or min(n, len(x1)) < spec.min_batch:
        return ce, torch.zeros(())
    z10, z1 = latent[:n].float(), latent[n:].float()
    if spec.term == "mmd":
        term = mmd2(z10, z1, bandwidth=t.mmd_bandwidth)
    elif spec.term == "coral":
        term = coral(z10, z1)
    elif spec.term == "sinkhorn":
        term = sinkhorn_divergence(z10, z1, blur=t.sinkhorn_blur)
    elif spec.term == "dann":
        term = domain_loss(out[2], n)
    else:
        raise ValueError(f"{run.name}: no domain term {spec.term!r}")
    return ce + t[spec.weight] * term, term


def train_epoch(run: TrainRun, stop: StopFlag) -> dict:
    """One epoch of steps from ``run.progress.step``; returns its training statistics. A signal checkpoints
    at the next step and raises Preempted."""
    t, backend, shard, seed, epoch = run.cfg.train, run.backend, run.shard, run.seed, run.progress.epoch
    adapted = shard.y1 is not None
    local_batch = t.batch_size // backend.size
    y10_batches = data.batches(len(shard.labels), local_batch, seed, epoch, data.Y10_STREAM)
    y1_batches = data.batches(len(shard.y1), local_batch, seed, epoch, data.Y1_STREAM) if adapted else None
    run.model.train()
    sums = np.zeros(5)  # loss, domain term, images, attacked images, flipped images
    t0 = time.perf_counter()
    bar = _progress(backend, len(y10_batches), run.progress.step, f"{run.name} epoch {epoch + 1}/{t.epochs}",
                    run.cfg.run.progress)
    for step in range(run.progress.step, len(y10_batches)):
        if stop.any_rank(backend):
            run.progress.step = step
            run.save()
            raise Preempted(f"{run.name}: stopped at epoch {epoch} step {step}; checkpoint "
                            f"{run.out / 'checkpoint.pt'} written; run the same command again to resume")
        torch.manual_seed(_step_seed(seed, backend.rank, epoch, step))
        idx = y10_batches[step]
        y, attacked, flipped = torch.from_numpy(shard.labels[idx]).to(run.device), 0, 0
        if run.spec.adversarial:
            hard = attack_batch(run.model, shard.y10[idx], shard.labels[idx], shard.stretch, shard.rows[idx],
                                seed=seed, epoch=epoch, step=step, fraction=t.adversarial_fraction,
                                queries=t.adversarial_queries)
            x, attacked, flipped = hard.images, int(hard.attacked.sum()), int(hard.flipped.sum())
        else:
            x = _batch(run, shard.y10[idx])
        # The Y1 pool is at least as large as the Y10 shard, so it has a batch for every step.
        x1 = _batch(run, shard.y1[y1_batches[step % len(y1_batches)]]) if adapted else None
        reversal = reversal_schedule(progress_of(t, epoch, step, len(y10_batches))) if run.spec.critic else 0.0
        loss, discrepancy = losses(run, x, y, x1, reversal)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{run.name}: loss is {float(loss)} at epoch {epoch} step {step}")
        run.optimizer.zero_grad()
        run.scaler.scale(loss).backward()
        set_lr(run.optimizer, learning_rate(t, epoch, step, len(y10_batches)))
        backend.step(run.optimizer, run.scaler)
        sums += (float(loss.detach()) * len(idx), float(discrepancy.detach()) * len(idx), len(idx), attacked, flipped)
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    totals = backend.allreduce_sum(sums)
    run.progress.step = 0
    stats = {"train_loss": totals[0] / totals[2], "train_discrepancy": totals[1] / totals[2], "train_seconds": seconds,
             "images": int(totals[2])}
    if run.spec.adversarial:
        # How often the search still flips what it attacks: the model hardening, epoch by epoch.
        stats.update(attacked_images=int(totals[3]), flipped_images=int(totals[4]))
    return stats


def end_epoch(run: TrainRun, stats: dict) -> None:
    """Validate, record the epoch, keep the best weights (``best.pt``), and decide whether training is
    finished (early stopping after ``train.patience`` epochs without a better validation loss)."""
    t, backend, shard, p = run.cfg.train, run.backend, run.shard, run.progress
    epoch = p.epoch
    v_loss, v_norm, v_conf = _evaluate(backend.evaluating(run.model), shard.val_y10, shard.val_labels, shard.stretch,
                                       run.device, t.eval_batch_size, shard.weight)
    v = backend.allreduce_sum([v_loss, v_norm, *v_conf.ravel()])
    val_loss, val_acc = v[0] / max(v[1], 1e-12), np.trace(v[2:].reshape(3, 3)) / max(v[2:].sum(), 1)
    p.history.append({"epoch": epoch + 1, "train_loss": stats["train_loss"],
                      "train_discrepancy": stats["train_discrepancy"],
                      "val_loss": val_loss, "val_accuracy": val_acc, "train_seconds": stats["train_seconds"],
                      "images": stats["images"],
                      **{k: stats[k] for k in ("attacked_images", "flipped_images") if k in stats}})
    log.info("%s epoch %d: train loss %.4f, val loss %.4f, val acc %.3f", run.name, epoch + 1,
             stats["train_loss"], val_loss, val_acc)
    if val_loss < p.best_loss:
        p.best_loss, p.best_epoch, p.bad_epochs = val_loss, epoch + 1, 0
        if backend.rank == 0:
            run.out.mkdir(parents=True, exist_ok=True)
            _atomic_torch_save(_unwrap(run.model).state_dict(), run.out / "best.pt")
    else:
        p.bad_epochs += 1
    p.epoch = epoch + 1
    if p.bad_epochs >= t.patience:
        log.info("%s: early stop after epoch %d (best epoch %d)", run.name, epoch + 1, p.best_epoch)
    p.finished = p.bad_epochs >= t.patience or p.epoch >= t.epochs


def test(run: TrainRun) -> dict:
    """Load the best weights and evaluate them, in float32, on the Y10 and Y1 test sets (Table 1's numbers)."""
    backend, p = run.backend, run.progress
    # Data parallelism must leave every rank with the same weights: check rather than trust.
    mine_fp = _fingerprint(_unwrap(run.model))
    identical = backend.allreduce_sum([mine_fp != backend.broadcast_object(mine_fp)])[0] == 0
    if not identical:
        log.warning("%s: ranks ended training with different weights", run.name)
    backend.barrier()
    best = torch.load(run.out / "best.pt", map_location=run.device, weights_only=True)
    _unwrap(run.model).load_state_dict(best)
    results = {"variant": run.variant, "seed": run.seed, "best_epoch": p.best_epoch, "epochs_run": p.epoch,
               "best_val_loss": p.best_loss, "train_images": run.shard.n_train, "ranks": backend.size,
               "backend": backend.name, "precision": run.precision, "weights_identical_across_ranks": bool(identical),
               "train_images_per_s": _throughput(p.history), "weights_sha256": mine_fp}
    with store.open_checked(RunLayout.of(run.cfg).galaxies, "generate") as f:
        test_rows = data.split_rows(f)[TEST][backend.rank::backend.size]
        labels = f["label"][test_rows].astype(np.int64)
        evaluated = backend.evaluating(run.model)
        for domain in ("y10", "y1"):
            _, _, conf = _evaluate(evaluated, f[domain][test_rows], labels, run.shard.stretch, run.device,
                                   run.cfg.train.eval_batch_size, run.shard.weight)
            conf = backend.allreduce_sum(conf.ravel()).reshape(3, 3).astype(np.int64)
            results[domain] = metrics.from_confusion(conf)
    return results


def _progress(backend, total: int, done: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="step", disable=backend.rank != 0 or not enabled,
                dynamic_ncols=True, leave=False)


def _write_outputs(cfg: Config, out: Path, model, stretch, history: list[dict], results: dict) -> None:
    from .figures import training_curves

    _atomic_torch_save({"model": model.state_dict(), "normalization": stretch.to_dict(), "config": cfg.to_yaml(),
                        "digest": digest(cfg), "class_names": CLASS_NAMES, "latent_dim": model.latent_dim,
                        "dropout": cfg.train.dropout, "arch": cfg.train.arch, "image_size": cfg.generate.image_size,
                        "versions": store.versions(), "git_commit": store.git_commit()},
                       out / layout.MODEL)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    store.write_text(out / "history.csv", buf.getvalue())
    training_curves(history, out / "curves.png", title=f"{results['variant']} seed {results['seed']}",
                    term=variants.of(results["variant"]).term)
    # metrics.json last: it marks the run as finished.
    store.write_json(out / "metrics.json", {**results, "digest": digest(cfg)})
    (out / "checkpoint.pt").unlink(missing_ok=True)


def _finished(cfg: Config, variant: str, seed: int) -> dict | None:
    """The results of a finished run of this config (metrics.json), or None."""
    try:
        found = store.read_json(model_dir(cfg, variant, seed) / "metrics.json")
    except store.StoreError:
        return None
    # The results as train_one returns them (metrics.json adds the digest).
    return {k: v for k, v in found.items() if k != "digest"} if found.get("digest") == digest(cfg) else None


def init_backend(cfg: Config) -> distributed.Single:
    """Start the data-parallel backend; check that its ranks divide the batch."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    backend = distributed.init(cfg.train.backend)
    if backend.rank != 0:
        # Under torchrun or horovodrun --gloo there is no MPI world to tell the ranks apart for the
        # logger: the backend does.
        log.setLevel(logging.WARNING)
    if cfg.train.batch_size % backend.size:
        # Every rank gets here: wait for all before closing, or a rank still building its Gloo pairs
        # sees the connection drop and dies with a traceback instead of this line.
        backend.barrier()
        backend.shutdown()
        raise BackendError(f"train.batch_size {cfg.train.batch_size} is not divisible by the {backend.size} ranks; "
                           "choose a batch size that is a multiple of the rank count")
    log.info("train: backend %s, %d rank(s), device %s", backend.describe(), backend.size,
             device_for(backend.local_rank))
    return backend


def write_summary(cfg: Config, backend, results: list[dict]) -> Path:
    """``train_summary.json``: every run's results and Table 1 over seeds (rank 0)."""
    path = RunLayout.of(cfg).train_summary
    if backend.rank == 0:
        table = metrics.summarize(results)
        text = json.dumps(store.strict({"runs": results, "table1": table, "digest": digest(cfg)}), indent=2,
                          allow_nan=False)
        # Rewritten only when it changes: a rerun with nothing to train leaves every output as it was.
        if not path.exists() or path.read_text() != text:
            store.write_text(path, text)
        log.info("Table 1 (mean +- std over seeds):\n%s", metrics.format_table(table))
    backend.barrier()
    return path


def run(cfg: Config, ctx, force: bool = False) -> Path:
    """Train every variant and seed of ``cfg.train``; returns ``train_summary.json``.

    ``ctx`` is accepted for the common stage signature: the ranks are the backend's own (Horovod,
    DDP), which also runs under launchers without MPI (torchrun). ``force`` retrains every run.
    """
    with StopFlag() as stop:
        backend = init_backend(cfg)
        held = output_lock(RunLayout.of(cfg).train_summary, backend)
        try:
            held.acquire()
            results = []
            for variant in cfg.train.variants:
                for seed in cfg.train.seeds:
                    if results and stop.any_rank(backend):
                        done = results[-1]
                        raise Preempted(f"stopped after {done['variant']} seed {done['seed']} had finished; run the "
                                        f"same command again to go on with {variant} seed {seed}")
                    results.append(train_one(cfg, backend, variant, seed, stop, force))
            summary = write_summary(cfg, backend, results)
            signalled = stop.any_rank(backend)
        finally:
            held.release()
            backend.shutdown()
    if signalled:
        raise Preempted(f"signalled after the last run had finished; nothing is left to do ({summary} written): "
                        "the same command exits 0")
    return summary
