"""Stage 2 end to end on the tiny preset: outputs, backends, preemption, and Y1 labels never read."""

import csv
import json
import signal
import subprocess
import sys
import time

import h5py
import matplotlib.image
import numpy as np
import pytest
import torch

from helpers import (TINY_ANALYZE, TINY_TRAIN, cli, command, datasets, env, flipped_images, killed_at, mpirun, sets,
                     workdir)
from hpcmorph import config
from hpcmorph.train import data
from hpcmorph.train.saved import load_model

TRAIN = TINY_TRAIN


@pytest.fixture(scope="module")
def galaxies(tiny_galaxies):
    return tiny_galaxies / "galaxies.h5"


def _workdir(tmp_path, galaxies, name="w"):
    """A fresh run directory holding a copy of the generated data (``galaxies``' run folder)."""
    return workdir(tmp_path, galaxies.parent, name)


def _metrics(cwd, variant="regular", seed=0):
    return json.loads((cwd / "runs" / "tiny" / variant / f"seed{seed}" / "metrics.json").read_text())


@pytest.mark.slow
def test_both_variants_end_to_end(tmp_path, tiny_trained):
    run = tiny_trained  # the session's tiny run, trained with TRAIN
    with h5py.File(run / "galaxies.h5", "r") as f:
        n_test = int(np.sum(f["split"][...] == 2))
    for variant in ("regular", "mmd"):
        out = run / variant / "seed0"
        saved = torch.load(out / "model.pt", weights_only=False)
        assert set(saved["normalization"]) == {"low", "high", "softening"}
        assert "train:" in saved["config"] and saved["class_names"] == ("spiral", "elliptical", "merger")
        history = (out / "history.csv").read_text().splitlines()
        assert history[0].startswith("epoch,train_loss,train_discrepancy,val_loss") and len(history) == 3
        assert matplotlib.image.imread(out / "curves.png")[..., :3].std() > 0.05
        m = json.loads((out / "metrics.json").read_text())
        for domain in ("y10", "y1"):
            assert 0.0 <= m[domain]["accuracy"] <= 1.0
            assert np.sum(m[domain]["confusion"]) == m[domain]["n"] == n_test
        assert m["weights_identical_across_ranks"] is True
        assert not (out / "checkpoint.pt").exists()
    mmd_history = (run / "mmd" / "seed0" / "history.csv").read_text().splitlines()[1]
    assert float(mmd_history.split(",")[2]) > 0, "the MMD variant must report its MMD term"
    summary = json.loads((run / "train_summary.json").read_text())
    assert set(summary["table1"]) == {"regular", "mmd"}
    # A rerun finds every run complete.
    res = cli(["train", *TRAIN], workdir(tmp_path, run))
    assert res.stderr.count("up to date; skipping") == 2


@pytest.mark.slow
@pytest.mark.mpi
def test_horovod_and_ddp_give_the_same_weights_on_every_rank(tmp_path, galaxies):
    pytest.importorskip("horovod.torch")
    args = ["train", *TRAIN, "--set", "train.variants=[regular]", "--set", "train.epochs=1"]
    fingerprints = []
    for backend in ("ddp", "horovod"):
        cwd = _workdir(tmp_path, galaxies, backend)
        cli([*args, "--set", f"train.backend={backend}"], cwd, ranks=2)
        m = _metrics(cwd)
        assert m["backend"] == backend and m["ranks"] == 2 and m["weights_identical_across_ranks"] is True
        fingerprints.append(m["weights_sha256"])
    assert fingerprints[0] == fingerprints[1]


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("backend, compression", [("horovod", "fp16"), ("ddp", "bf16")])
def test_compressed_gradients_keep_every_rank_alike(backend, compression, tmp_path, galaxies):
    """16-bit gradients on the wire: the ranks end with the same float32 weights, and the outputs say which
    precision ran."""
    if backend == "horovod":
        pytest.importorskip("horovod.torch")
    cwd = _workdir(tmp_path, galaxies, backend)
    cli(["train", *TRAIN, *sets(["train.variants=[mmd]", "train.epochs=1", f"train.backend={backend}",
                                 f"train.compression={compression}"])], cwd, ranks=2)
    out = cwd / "runs" / "tiny" / "mmd" / "seed0"
    m = json.loads((out / "metrics.json").read_text())
    assert m["precision"] == "fp32"
    assert m["ranks"] == 2 and m["weights_identical_across_ranks"] is True
    weights = torch.load(out / "model.pt", weights_only=False)["model"]
    assert all(w.dtype in (torch.float32, torch.int64) and torch.isfinite(w.float()).all() for w in weights.values())


# fp16 with its loss scaler under Horovod, on a model small enough for the CPU's emulated float16: the
# gradients one rank overflows at step 1 reach every rank through the average, and every rank skips it.
HOROVOD_FP16 = """
import torch
from hpcmorph import precision
from hpcmorph.train import distributed
cpu = torch.device("cpu")
b = distributed.Horovod()
torch.manual_seed(0)
model = torch.nn.Linear(4, 3)
model, opt = b.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), "fp16")
# Loss scaling as precision.grad_scaler's, from a scale at which these gradients fit float16 (the
# default, 65536, overflows them at first: the scaler's own calibration, every rank alike).
scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
assert precision.grad_scaler("fp16", cpu).is_enabled()
x = torch.randn(8, 4) + b.rank
for step in range(3):
    with precision.autocast("fp16", cpu):
        out = model(x)
    loss = out.float().pow(2).mean() * (float("inf") if step == 1 and b.rank == 1 else 1.0)
    opt.zero_grad()
    scaler.scale(loss).backward()
    before = [p.detach().clone() for p in model.parameters()]
    b.step(opt, scaler)
    moved = any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    ranks = int(b.allreduce_sum([moved])[0])
    if b.rank == 0:
        print("step", step, "moved on", ranks, "ranks")
w = torch.cat([p.detach().flatten() for p in model.parameters()])
same = int(b.allreduce_sum([torch.equal(w, torch.tensor(b.broadcast_object(w.tolist())))])[0])
if b.rank == 0:
    print("same on", same, "ranks")
b.shutdown()
"""


@pytest.mark.mpi
def test_fp16_loss_scaling_under_horovod_skips_an_overflowed_step_on_every_rank(tmp_path):
    pytest.importorskip("horovod.torch")
    res = subprocess.run([mpirun(), "-n", "2", sys.executable, "-c", HOROVOD_FP16], cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    assert lines == ["step 0 moved on 2 ranks", "step 1 moved on 0 ranks", "step 2 moved on 2 ranks",
                     "same on 2 ranks"], res.stdout


@pytest.mark.slow
def test_preemption_checkpoints_and_resumes_to_the_same_weights(tmp_path, galaxies):
    args = ["train", *TRAIN, "--set", "train.variants=[regular]", "--set", "train.epochs=3",
            "--set", "train.batch_size=2"]
    reference = _workdir(tmp_path, galaxies, "reference")
    cli(args, reference)

    cwd = _workdir(tmp_path, galaxies, "preempted")
    ckpt = cwd / "runs" / "tiny" / "regular" / "seed0" / "checkpoint.pt"
    proc = subprocess.Popen(command(args), cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGUSR1)  # what Slurm sends ahead of the wall-time kill
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-3000:]
    assert "run the same command again to resume" in err
    state = torch.load(ckpt, weights_only=False)["state"]
    assert state["epoch"] >= 1 and not (ckpt.parent / "metrics.json").exists()

    res = cli(args, cwd)
    assert "resuming at epoch" in res.stderr
    assert _metrics(cwd)["weights_sha256"] == _metrics(reference)["weights_sha256"]


def _permute_labels(path, rows, seed=0):
    """Shuffle the `label` values among ``rows`` of a galaxies.h5 file in place."""
    with h5py.File(path, "r+") as f:
        labels = f["label"][...]
        labels[rows] = labels[rows][np.random.default_rng(seed).permutation(len(rows))]
        f["label"][...] = labels


@pytest.mark.slow
def test_y1_labels_are_never_read(tmp_path, galaxies):
    # Few labels, many unlabelled Y1 images: labelled Y10 rows are a subsample of the training set;
    # the Y1 pool is every training row. Shuffling the labels of the rows that only enter as
    # unlabelled Y1 images must change nothing; shuffling the labelled ones must change the model.
    args = ["train", *TRAIN, "--set", "train.variants=[mmd]", "--set", "train.epochs=1",
            "--set", "train.max_train_images=12"]
    with h5py.File(galaxies, "r") as f:
        labelled = data.training_rows(f, seed=0, max_images=12)
        train = data.training_rows(f, seed=0)
        label = f["label"][...]
    unlabelled = np.setdiff1d(train, labelled)
    assert len(np.unique(label[unlabelled])) > 1 and len(np.unique(label[labelled])) > 1

    runs = {}
    for name, rows in (("as_is", None), ("y1_only_shuffled", unlabelled), ("labelled_shuffled", labelled)):
        cwd = _workdir(tmp_path, galaxies, name)
        if rows is not None:
            _permute_labels(cwd / "runs" / "tiny" / "galaxies.h5", rows, seed=3)
        cli(args, cwd)
        runs[name] = _metrics(cwd, "mmd")["weights_sha256"]
    assert runs["y1_only_shuffled"] == runs["as_is"]
    assert runs["labelled_shuffled"] != runs["as_is"]


@pytest.mark.slow
@pytest.mark.mpi
def test_backend_none_on_two_ranks_is_a_clear_error(tmp_path, galaxies):
    cwd = _workdir(tmp_path, galaxies)
    res = cli(["train", *TRAIN, "--set", "train.backend=none"], cwd, ranks=2, check=False)
    assert res.returncode == 2 and "train.backend is 'none' but the job has 2 ranks" in res.stderr


@pytest.mark.slow
def test_missing_generate_output_is_a_clear_error(tmp_path):
    res = cli(["train", *TRAIN], tmp_path, check=False)
    assert res.returncode == 2 and "no such file; run `hpcmorph generate` first" in res.stderr


@pytest.mark.slow
def test_force_retrains_a_finished_run_to_the_same_weights(tmp_path, tiny_trained):
    # The session's trained run: its regular model was trained with these settings.
    args = ["train", *TRAIN, "--set", "train.variants=[regular]"]
    cwd = workdir(tmp_path, tiny_trained)
    model = cwd / "runs" / "tiny" / "regular" / "seed0" / "model.pt"
    first, made = _metrics(cwd)["weights_sha256"], model.stat().st_mtime_ns
    res = cli(args, cwd)
    assert "up to date; skipping" in res.stderr and model.stat().st_mtime_ns == made
    res = cli([*args, "--force"], cwd)
    assert "epoch 1:" in res.stderr and model.stat().st_mtime_ns != made
    assert _metrics(cwd)["weights_sha256"] == first


@pytest.mark.mpi
@pytest.mark.slow
def test_a_batch_the_ranks_do_not_divide_is_one_line_and_exit_2(tmp_path, galaxies):
    res = cli(["train", *TRAIN, "--set", "train.backend=ddp", "--set", "train.batch_size=7"],
              _workdir(tmp_path, galaxies), ranks=2, check=False)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "train.batch_size 7 is not divisible by the 2 ranks" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_one_line_and_exit_2(tmp_path, galaxies):
    cwd = _workdir(tmp_path, galaxies)
    folder = cwd / "runs" / "tiny" / "regular" / "seed0"
    folder.mkdir(parents=True)
    torch.save({"digest": "0123456789abcdef", "model": {}, "optimizer": {}, "state": {}}, folder / "checkpoint.pt")
    args = ["train", *TRAIN, "--set", "train.variants=[regular]"]
    res = cli(args, cwd, check=False)
    assert res.returncode == 2 and "written by a different config" in res.stderr, res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "--force" in res.stderr
    cli([*args, "--force"], cwd)
    assert (folder / "metrics.json").exists() and not (folder / "checkpoint.pt").exists()



NEW_VARIANTS = ("coral", "dann", "sinkhorn")


@pytest.mark.slow
@pytest.mark.mpi
def test_the_new_variants_train_on_two_ranks_and_resume_exactly(tmp_path, galaxies):
    """CORAL, DANN and Sinkhorn in one call on 2 DDP ranks: every output, each domain term reported,
    DANN's critic kept out of model.pt. DANN again on 2 Horovod ranks, killed in its second epoch (its
    critic and Adam state then only in checkpoint.pt): the same command resumes to DDP's weights."""
    args = ["train", *TRAIN, *sets([f"train.variants=[{','.join(NEW_VARIANTS)}]", "train.backend=ddp"])]
    reference = _workdir(tmp_path, galaxies, "reference")
    cli(args, reference, ranks=2)
    for variant in NEW_VARIANTS:
        out = reference / "runs" / "tiny" / variant / "seed0"
        m = _metrics(reference, variant)
        assert m["backend"] == "ddp" and m["ranks"] == 2 and m["weights_identical_across_ranks"] is True
        saved = torch.load(out / "model.pt", weights_only=True)
        assert saved["arch"] == "resnet18" and not any(k.startswith(("critic.", "net.")) for k in saved["model"])
        rows = (out / "history.csv").read_text().splitlines()
        assert len(rows) == 3 and all(float(r.split(",")[2]) > 0 for r in rows[1:]), f"{variant}: no domain term"
        assert not (out / "checkpoint.pt").exists()
    summary = json.loads((reference / "runs" / "tiny" / "train_summary.json").read_text())
    assert set(summary["table1"]) == set(NEW_VARIANTS)

    try:
        import horovod.torch  # noqa: F401
        backend = "horovod"
    except ImportError:
        backend = "ddp"
    args = ["train", *TRAIN, *sets(["train.variants=[dann]", f"train.backend={backend}"])]
    cwd = _workdir(tmp_path, galaxies, backend)
    killed_at("hpcmorph.train.stage", "end_epoch", 1, args, cwd, ranks=2)  # in epoch 2's validation
    checkpoint = torch.load(cwd / "runs" / "tiny" / "dann" / "seed0" / "checkpoint.pt", weights_only=False)
    assert checkpoint["state"]["epoch"] == 1 and any(k.startswith("critic.") for k in checkpoint["model"])
    res = cli(args, cwd, ranks=2)
    assert "dann seed 0: resuming at epoch 1 step 0" in res.stderr
    assert _metrics(cwd, "dann")["weights_sha256"] == _metrics(reference, "dann")["weights_sha256"]


@pytest.mark.slow
def test_a_convnet_trains_every_variant_and_attack_and_analyze_load_it(tmp_path, galaxies):
    """One rank, the small CNN: every variant trains (the adversarial ones with a search on every step's
    drawn images); attack and analyze load its models by their arch, and the analysis sets each variant
    against regular training."""
    cwd = _workdir(tmp_path, galaxies)
    attacked = ["regular", "mmd", "adversarial"]
    every = ("regular", "mmd", *NEW_VARIANTS, "adversarial", "adversarial+mmd")
    args = [*TINY_ANALYZE, *sets(["train.arch=convnet", "train.epochs=1", "attack.only_correct=false",
                                  "attack.figures=false", "analyze.figures=false", "analyze.isomap_images=20",
                                  f"train.variants=[{','.join(every)}]", "train.adversarial_queries=8",
                                  f"attack.variants=[{','.join(attacked)}]"])]
    for stage in ("train", "attack", "analyze"):
        cli([stage, *args], cwd)
    run = cwd / "runs" / "tiny"
    for variant in every:
        saved = torch.load(run / variant / "seed0" / "model.pt", weights_only=True)
        assert saved["arch"] == "convnet" and saved["image_size"] == 48, variant
        assert saved["model"]["bottleneck.weight"].shape == (256, 32 * 6 * 6)
    for variant in ("adversarial", "adversarial+mmd"):
        with open(run / variant / "seed0" / "history.csv") as f:
            (epoch,) = list(csv.DictReader(f))
        assert 0 < int(epoch["attacked_images"]) <= int(epoch["images"]), variant
        assert 0 <= int(epoch["flipped_images"]) <= int(epoch["attacked_images"]), variant
        assert (float(epoch["train_discrepancy"]) > 0) == (variant == "adversarial+mmd")
    with h5py.File(run / "attack.h5", "r") as f:
        assert len(f["index"]) > 0 and f.attrs["variant_names"] == ",".join(attacked)
    found = json.loads((run / "analysis" / "analysis.json").read_text())
    assert found["comparison"]["variants"] == list(every)
    effects = found["effects"]["variants"]
    assert list(effects) == list(every[1:])
    assert all((effects[v]["flip_rate"] is None) == (v not in attacked) for v in effects)
    lat = datasets(run / "analysis" / "latents.h5")
    assert all(effects[v]["y1_accuracy"]["n"] == len(lat["label"]) for v in effects)
    # Against the MMD model: every variant but regular and mmd, each difference the images' own.
    against_mmd = found["effects_mmd"]
    assert against_mmd["baseline"] == "mmd" and list(against_mmd["variants"]) == list(every[2:])
    assert all((against_mmd["variants"][v]["flip_rate"] is None) == (v not in attacked) for v in every[2:])
    flipped = flipped_images(run / "attack.h5")
    rows = sorted(flipped["mmd"])
    assert against_mmd["variants"]["adversarial"]["flip_rate"]["value"] == pytest.approx(
        np.mean([float(flipped["adversarial"][i]) - float(flipped["mmd"][i]) for i in rows]))
    right = lat["pred_y1"] == lat["label"][:, None]
    assert against_mmd["variants"]["adversarial"]["y1_accuracy"]["value"] == pytest.approx(
        right[:, attacked.index("adversarial")].mean() - right[:, attacked.index("mmd")].mean())
    # A variant trained but not attacked is embedded for its calibration alone: its Y1 accuracy there is
    # its own forward pass over the test images, and its attack columns are not run.
    cfg = config.load("tiny", [*(a for a in args if "=" in a), f"run.root={run.parent}"])
    model, stretch = load_model(cfg, "dann", 0, torch.device("cpu"))
    with torch.no_grad(), h5py.File(run / "galaxies.h5", "r") as g:
        pred = model(stretch(torch.from_numpy(g["y1"][lat["index"]])))[1].argmax(1).numpy()
    cal = found["calibration"]["variants"]["dann"]["y1"]
    assert cal["accuracy"]["values"] == [pytest.approx(float(np.mean(pred == lat["label"])))]
    row = found["comparison"]["rows"]["dann"]
    assert row["attacked"] is False and set(row["one_pixel"].values()) == {None}
    assert (run / "analysis").is_dir() and any((run / "analysis").iterdir())
