"""Reduced precision in training: what ``auto`` picks, that only the passes change precision, the loss
scaler of fp16, a checkpoint refused by a run of another precision, and the MMD kept in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcmorph import config, precision
from hpcmorph.errors import StageError
from hpcmorph.train import distributed, stage
from hpcmorph.train.mmd import mmd2
from hpcmorph.train.normalize import AsinhStretch

CPU = torch.device("cpu")


def test_auto_is_bf16_exactly_where_the_cpu_computes_it_natively():
    assert precision.resolve("auto", CPU) == ("bf16" if precision.native_bf16(CPU) else "fp32")
    for name in ("fp32", "bf16", "fp16"):
        assert precision.resolve(name, CPU) == name
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        precision.resolve("half", CPU)


@pytest.mark.parametrize("name, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_runs_products_in_the_precision_and_the_scaler_is_fp16s_alone(name, dtype):
    a = torch.randn(8, 8)
    with precision.autocast(name, CPU):
        assert (a @ a).dtype == dtype
    assert precision.grad_scaler(name, CPU).is_enabled() == (name == "fp16")


def _run(tmp_path, arithmetic: str, variant: str = "mmd", size: int = 32, n: int = 16,
         configured: str | None = None) -> stage.TrainRun:
    """A TrainRun on random images, one process, built the way train_one builds it; ``arithmetic`` is what
    ``train.precision`` (``configured``, default the same) resolved to."""
    cfg = config.load("tiny", [f"run.root={tmp_path}", "train.batch_size=8",
                               f"train.precision={configured or arithmetic}"])
    rng = np.random.default_rng(0)
    y10 = rng.gamma(2.0, 50.0, (n, 3, size, size)).astype(np.float32)
    y1 = rng.gamma(2.0, 50.0, (n, 3, size, size)).astype(np.float32)
    labels = np.arange(n) % 3
    shard = stage.Shard(n, torch.ones(3), AsinhStretch.fit(y10), y10, labels, np.arange(n),
                        y1 if variant == "mmd" else None, y10[:4], labels[:4])
    model, optimizer = stage.build(cfg, variant, 0, CPU)
    scaler = precision.grad_scaler(arithmetic, CPU)
    return stage.TrainRun(cfg, distributed.Single(), variant, 0, tmp_path / "m", CPU, arithmetic, shard, model,
                          optimizer, scaler, stage.Progress())


@pytest.mark.parametrize("arithmetic", ["fp32", "bf16", "fp16"])
def test_an_epoch_in_each_precision_moves_float32_weights_and_finite_losses(arithmetic, tmp_path):
    run = _run(tmp_path, arithmetic)
    before = [p.detach().clone() for p in run.model.parameters()]
    with stage.StopFlag() as stop:
        stats = stage.train_epoch(run, stop)
    assert np.isfinite(stats["train_loss"]) and stats["train_discrepancy"] >= 0 and stats["images"] == 16
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))
    assert run.scaler.is_enabled() == (arithmetic == "fp16")
    if arithmetic == "fp16":
        assert run.scaler.get_scale() > 0


def test_the_mmd_term_is_computed_from_float32_latents_under_autocast(tmp_path):
    run = _run(tmp_path, "bf16")
    x = run.shard.stretch(torch.from_numpy(run.shard.y10[:8]))
    x1 = run.shard.stretch(torch.from_numpy(run.shard.y1[:8]))
    run.model.eval()
    torch.manual_seed(0)
    _, discrepancy = stage.losses(run, x, torch.from_numpy(run.shard.labels[:8]), x1)
    with torch.no_grad(), precision.autocast("bf16", CPU):
        latent, _ = run.model(torch.cat([x, x1]))
    assert latent.dtype == torch.bfloat16
    in_float32 = mmd2(latent[:8].float(), latent[8:].float())
    assert torch.allclose(discrepancy, in_float32, rtol=1e-5, atol=1e-7)


def test_a_checkpoint_is_resumed_only_in_the_precision_it_was_trained_in(tmp_path):
    # train.precision=auto was fp32 where the checkpoint was written, bf16 where it is resumed.
    run = _run(tmp_path, "fp32", configured="auto")
    run.save()
    model, optimizer = stage.build(run.cfg, "mmd", 0, CPU)
    with pytest.raises(StageError, match=r"trained in fp32 and train.precision=auto is bf16 here: set "
                                         r"train.precision=fp32"):
        stage.resume(run.cfg, run.out, model, optimizer, precision.grad_scaler("bf16", CPU), "bf16", False, "mmd")
    resumed = stage.resume(run.cfg, run.out, model, optimizer, precision.grad_scaler("fp32", CPU), "fp32", False,
                           "mmd")
    assert resumed == run.progress


def test_the_precision_is_part_of_the_train_digest():
    digests = {stage.digest(config.load("tiny", [f"train.precision={p}"])) for p in precision.PRECISIONS}
    assert len(digests) == len(precision.PRECISIONS)


def test_fp32_without_compression_keeps_the_digest_models_had_before_the_settings():
    cfg = config.load("tiny", ["train.precision=fp32", "train.compression=none"])
    before = cfg.digest("run.seed", "generate", *(f"train.{k}" for k in stage._MODEL_KEYS
                                                  if k not in stage._DIGESTED_UNLESS))
    assert stage.digest(cfg) == before
    assert stage.digest(config.load("tiny", ["train.precision=fp32", "train.compression=fp16"])) != before


def test_bf16_training_falls_back_or_is_refused_where_the_cpus_bf16_gradients_are_wrong():
    """ResNet18 at <= 16 px puts a 1 x 1 map into layer4's stride-2 convolution, whose bfloat16 weight
    gradient the CPU gets wrong (hpcmorph.precision.bf16_training_sound): auto trains in fp32 there,
    bf16 asked for is a user error naming the setting; elsewhere nothing changes."""
    assert not precision.bf16_training_sound(CPU, "resnet18", 16)
    assert precision.bf16_training_sound(CPU, "resnet18", 17) and precision.bf16_training_sound(CPU, "convnet", 16)
    assert precision.bf16_training_sound(torch.device("cuda"), "resnet18", 16)
    for configured in ("auto", "fp32"):
        cfg = config.load("tiny", [f"train.precision={configured}"])
        assert stage._arithmetic(cfg, CPU, 16) == "fp32"
    cfg = config.load("tiny", ["train.precision=bf16"])
    with pytest.raises(StageError, match=r"train.precision=bf16: .* images of <= 16 px \(these are 16 px"):
        stage._arithmetic(cfg, CPU, 16)
    assert stage._arithmetic(cfg, CPU, 32) == "bf16"
    assert stage._arithmetic(config.load("tiny", ["train.precision=bf16", "train.arch=convnet"]), CPU, 16) == "bf16"
