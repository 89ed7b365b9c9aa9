"""Stage 2 driver: train each (variant, seed), reading top to bottom like a Horovod example.

init the backend -> read this rank's shard -> fit the normalisation on the training split ->
build the model -> wrap the optimizer (broadcast, average gradients) -> train with early stopping
-> evaluate the best model on the Y10 and Y1 test sets.

Outputs, per run, in ``<run.root>/<run.name>/<variant>/seed<k>/``: ``model.pt`` (best weights,
normalisation, config), ``history.csv``, ``curves.png``, ``metrics.json``; while training,
``checkpoint.pt`` holds everything needed to resume at the next step. Across runs:
``train_summary.json`` (Table 1 with mean and std over seeds).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import store
from ..config import Config
from ..errors import PREEMPTED_EXIT, BackendError, Preempted, StageError
from ..generate import output_path as galaxies_path
from ..generate.dataset import TEST, VALIDATION
from ..generate.morphology import CLASS_NAMES
from ..lock import output_lock
from ..mpi import device_for, log
from . import data, distributed, metrics
from .mmd import mmd2
from .model import build_model
from .normalize import AsinhStretch

STAGE = "train"
# Settings that change a trained model (backend and threads do not: the weights are the same).
_MODEL_KEYS = ("epochs", "patience", "batch_size", "lr", "betas", "weight_decay", "weight_decay_mmd", "mmd_lambda",
               "mmd_bandwidth", "dropout", "normalize_per_band", "max_train_images")




def run_dir(cfg: Config, variant: str, seed: int) -> Path:
    return Path(cfg.run.root) / cfg.run.name / variant / f"seed{seed}"


def digest(cfg: Config) -> str:
    return cfg.digest("run.seed", "generate", *(f"train.{k}" for k in _MODEL_KEYS))


class _StopFlag:
    """Set by SIGTERM or SIGUSR1 (what Slurm sends ahead of the wall-time kill)."""

    def __init__(self):
        self.raised = False
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def _handle(self, signum, frame):
        self.raised = True

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def _atomic_torch_save(obj, path: Path) -> None:
    with store.atomic(path) as tmp:
        torch.save(obj, tmp)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


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


def _evaluate(model, images: np.ndarray, labels: np.ndarray, stretch, device, batch: int, weight) -> tuple[float, float, np.ndarray]:
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


def train_one(cfg: Config, backend: distributed.Single, variant: str, seed: int) -> dict:
    t = cfg.train
    out = run_dir(cfg, variant, seed)
    device = device_for(backend.local_rank)
    mmd = variant == "mmd"

    with data.open_galaxies(galaxies_path(cfg)) as f:
        rows = data.training_rows(f, seed, t.max_train_images)
        weight = torch.tensor(data.class_weights(f["label"][rows]), dtype=torch.float32, device=device)
        stretch = AsinhStretch.fit(f["y10"], rows=rows, per_band=t.normalize_per_band, seed=seed)
        mine = data.shard_rows(rows, seed, backend.rank, backend.size)
        y10, labels = f["y10"][mine], f["label"][mine].astype(np.int64)
        if mmd:
            pool = data.shard_rows(data.training_rows(f, seed), seed, backend.rank, backend.size, data.Y1_SHARD_STREAM)
            y1 = f["y1"][pool]  # images only: the labels of these rows are never read
        val_rows = data.split_rows(f)[VALIDATION][backend.rank::backend.size]
        val_y10, val_labels = f["y10"][val_rows], f["label"][val_rows].astype(np.int64)

    if t.batch_size % backend.size:
        raise BackendError(f"train.batch_size {t.batch_size} is not divisible by the {backend.size} ranks")
    local_batch = t.batch_size // backend.size
    torch.manual_seed(seed)
    model = build_model(seed, dropout=t.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, betas=tuple(t.betas),
                                 weight_decay=t.weight_decay_mmd if mmd else t.weight_decay)

    state = {"epoch": 0, "step": 0, "best_loss": float("inf"), "best_epoch": -1, "bad_epochs": 0, "history": []}
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if ckpt["digest"] != digest(cfg):
            raise StageError(f"{ckpt_path} was written by a different config; remove it to start over")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        log.info("%s seed %d: resuming at epoch %d step %d", variant, seed, state["epoch"], state["step"])
    model, optimizer = backend.wrap(model, optimizer)

    def checkpoint() -> None:
        if backend.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            _atomic_torch_save({"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                "state": state, "digest": digest(cfg)}, ckpt_path)
        backend.barrier()

    stop = _StopFlag()
    try:
        n_steps = len(data.batches(len(labels), local_batch, seed, 0, data.Y10_STREAM))
        epochs = range(state["epoch"], t.epochs)
        for epoch in epochs:
            model.train()
            y10_batches = data.batches(len(labels), local_batch, seed, epoch, data.Y10_STREAM)
            y1_batches = data.batches(len(y1), local_batch, seed, epoch, data.Y1_STREAM) if mmd else None
            sums = np.zeros(3)  # loss, mmd, images
            t0 = time.perf_counter()
            bar = _progress(backend, n_steps, state["step"], f"{variant} seed {seed} epoch {epoch + 1}/{t.epochs}",
                            cfg.run.progress)
            for step in range(state["step"], n_steps):
                if backend.allreduce_sum([stop.raised])[0] > 0:
                    state["step"] = step
                    checkpoint()
                    raise Preempted(f"{variant} seed {seed}: stopped at epoch {epoch} step {step}; checkpoint "
                                    f"{ckpt_path} written; run the same command again to resume")
                torch.manual_seed(_step_seed(seed, backend.rank, epoch, step))
                idx = y10_batches[step]
                x = stretch(torch.from_numpy(y10[idx])).to(device)
                y = torch.from_numpy(labels[idx]).to(device)
                if mmd:
                    # The Y1 pool is at least as large as the Y10 shard, so it has a batch for every step.
                    x1 = stretch(torch.from_numpy(y1[y1_batches[step % len(y1_batches)]])).to(device)
                    # One forward pass over both exposures, as the authors: BatchNorm sees both.
                    latent, logits = model(torch.cat([x, x1]))
                    logits, z10, z1 = logits[:len(idx)], latent[:len(idx)], latent[len(idx):]
                    ce = F.cross_entropy(logits, y, weight=weight)
                    discrepancy = mmd2(z10, z1, bandwidth=t.mmd_bandwidth)
                    loss = ce + t.mmd_lambda * discrepancy
                else:
                    _, logits = model(x)
                    loss = F.cross_entropy(logits, y, weight=weight)
                    discrepancy = torch.zeros(())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{variant} seed {seed}: loss is {float(loss)} at epoch {epoch} step {step}")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                sums += (float(loss.detach()) * len(idx), float(discrepancy.detach()) * len(idx), len(idx))
                bar.update(1)
            bar.close()
            train_seconds = time.perf_counter() - t0
            state["step"] = 0
            totals = backend.allreduce_sum(sums)
            v_loss, v_norm, v_conf = _evaluate(model, val_y10, val_labels, stretch, device, t.eval_batch_size, weight)
            v = backend.allreduce_sum([v_loss, v_norm, *v_conf.ravel()])
            val_loss, val_acc = v[0] / max(v[1], 1e-12), np.trace(v[2:].reshape(3, 3)) / max(v[2:].sum(), 1)
            state["history"].append({"epoch": epoch + 1, "train_loss": totals[0] / totals[2],
                                     "train_mmd": totals[1] / totals[2], "val_loss": val_loss, "val_accuracy": val_acc,
                                     "train_seconds": train_seconds, "images": int(totals[2])})
            log.info("%s seed %d epoch %d: train loss %.4f, val loss %.4f, val acc %.3f", variant, seed, epoch + 1,
                     totals[0] / totals[2], val_loss, val_acc)
            if val_loss < state["best_loss"]:
                state.update(best_loss=val_loss, best_epoch=epoch + 1, bad_epochs=0)
                if backend.rank == 0:
                    out.mkdir(parents=True, exist_ok=True)
                    _atomic_torch_save(_unwrap(model).state_dict(), out / "best.pt")
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch + 1
            checkpoint()
            if state["bad_epochs"] >= t.patience:
                log.info("%s seed %d: early stop after epoch %d (best epoch %d)", variant, seed, epoch + 1,
                         state["best_epoch"])
                break
    finally:
        stop.restore()

    # Data parallelism must leave every rank with the same weights: check rather than trust.
    mine_fp = _fingerprint(_unwrap(model))
    identical = backend.allreduce_sum([mine_fp != backend.broadcast_object(mine_fp)])[0] == 0
    if not identical:
        log.warning("%s seed %d: ranks ended training with different weights", variant, seed)
    backend.barrier()
    best = torch.load(out / "best.pt", map_location=device, weights_only=True)
    _unwrap(model).load_state_dict(best)
    results = {"variant": variant, "seed": seed, "best_epoch": state["best_epoch"], "epochs_run": state["epoch"],
               "best_val_loss": state["best_loss"], "train_images": len(rows), "ranks": backend.size,
               "backend": backend.name, "weights_identical_across_ranks": bool(identical),
               "train_images_per_s": _throughput(state["history"]),
               "weights_sha256": mine_fp}
    with store.open_checked(galaxies_path(cfg), "generate") as f:
        test_rows = data.split_rows(f)[TEST][backend.rank::backend.size]
        labels = f["label"][test_rows].astype(np.int64)
        for domain in ("y10", "y1"):
            _, _, conf = _evaluate(model, f[domain][test_rows], labels, stretch, device, t.eval_batch_size, weight)
            conf = backend.allreduce_sum(conf.ravel()).reshape(3, 3).astype(np.int64)
            results[domain] = metrics.from_confusion(conf)
    if backend.rank == 0:
        _write_outputs(cfg, out, _unwrap(model), stretch, state["history"], results)
    backend.barrier()
    return results


def _progress(backend, total: int, done: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, unit="step", disable=backend.rank != 0 or not enabled,
                dynamic_ncols=True, leave=False)


def _write_outputs(cfg: Config, out: Path, model, stretch, history: list[dict], results: dict) -> None:
    from .figures import training_curves

    _atomic_torch_save({"model": model.state_dict(), "normalization": stretch.to_dict(), "config": cfg.to_yaml(),
                        "digest": digest(cfg), "class_names": CLASS_NAMES, "latent_dim": model.latent_dim,
                        "dropout": cfg.train.dropout, "versions": store.versions(), "git_commit": store.git_commit()},
                       out / "model.pt")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    _atomic_text(out / "history.csv", buf.getvalue())
    training_curves(history, out / "curves.png", title=f"{results['variant']} seed {results['seed']}")
    _atomic_text(out / "metrics.json", json.dumps({**results, "digest": digest(cfg)}, indent=2))
    (out / "checkpoint.pt").unlink(missing_ok=True)


def _atomic_text(path: Path, text: str) -> None:
    store.write_text(path, text)


def _finished(cfg: Config, variant: str, seed: int) -> dict | None:
    path = run_dir(cfg, variant, seed) / "metrics.json"
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # The results as train_one returns them (metrics.json adds the digest).
    return {k: v for k, v in found.items() if k != "digest"} if found.get("digest") == digest(cfg) else None


def run(cfg: Config, ctx=None) -> Path:
    """Train every variant and seed of ``cfg.train``; returns the summary path."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    backend = distributed.init(cfg.train.backend)
    if backend.rank != 0:
        # Under torchrun or horovodrun --gloo there is no MPI world to tell the ranks apart for the
        # logger: the backend does.
        log.setLevel(logging.WARNING)
    log.info("train: backend %s, %d rank(s), device %s", backend.name, backend.size, device_for(backend.local_rank))
    results = []
    held = output_lock(Path(cfg.run.root) / cfg.run.name / "train_summary.json", backend)
    try:
        held.acquire()
        for variant in cfg.train.variants:
            for seed in cfg.train.seeds:
                done = _finished(cfg, variant, seed)
                if done is not None:
                    log.info("%s seed %d is up to date; skipping", variant, seed)
                    results.append(done)
                    continue
                results.append(train_one(cfg, backend, variant, seed))
        summary = Path(cfg.run.root) / cfg.run.name / "train_summary.json"
        if backend.rank == 0:
            table = metrics.summarize(results)
            text = json.dumps({"runs": results, "table1": table, "digest": digest(cfg)}, indent=2)
            # Rewritten only when it changes: a rerun with nothing to train leaves every output as it was.
            if not summary.exists() or summary.read_text() != text:
                _atomic_text(summary, text)
            log.info("Table 1 (mean +- std over seeds):\n%s", metrics.format_table(table))
        backend.barrier()
    finally:
        held.release()
        backend.shutdown()
    return summary
