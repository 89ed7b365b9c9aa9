"""Stage 3: the batched differential evolution on toy models whose answer is known, then the stage
end to end on the tiny preset (1, 2 and 4 ranks, resume after SIGKILL, errors)."""

from __future__ import annotations

import json
import shutil

import h5py
import matplotlib.image
import numpy as np
import pytest
import scipy.stats
import torch

from helpers import H, TINY_ATTACK, W, Bumps, assert_same_data, blocks_on_disk, cli, killed_at, workdir
from helpers import flat as _flat
from hpcmorph import config, store
from hpcmorph.attack import evolution, stage
from hpcmorph.onepixel import pixels
from hpcmorph.onepixel.outcome import Result
from hpcmorph.train.model import build_model



pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ toy models

def _attack(model, base, true, target, settings, k=1, value_range=(0.0, 1.0), forward_batch=256, ids=None):
    """Attack images ``base`` (n, 3, H, W); attack i's seed comes from ``ids[i]`` (default i).
    Returns (results, objective)."""
    obj = pixels.PixelObjective(model, base, k, forward_batch)
    lo, hi, pos = pixels.bounds(k, base.shape[1], base.shape[2], base.shape[3], value_range)
    ids = range(len(target)) if ids is None else ids
    seeds = [np.random.SeedSequence([0, i, t + 1]) for i, t in zip(ids, target)]
    return evolution.evolve(obj, lo, hi, true, target, seeds, settings, resample=pos), obj


def _same(a: Result, b: Result) -> bool:
    return (a.success == b.success and a.generations == b.generations and a.queries == b.queries
            and np.array_equal(a.genome, b.genome) and np.array_equal(a.probs, b.probs))


# ------------------------------------------------------------------------------------ DE, unit

@pytest.mark.parametrize("p", [4, 5, 60])
def test_three_distinct_members_other_than_self(p):
    rng = np.random.default_rng(1)
    seen = np.zeros((p, p), int)
    for _ in range(200):
        r = evolution.three_distinct(rng, p)
        assert r.shape == (p, 3) and r.min() >= 0 and r.max() < p
        full = np.concatenate([np.arange(p)[:, None], r], 1)
        assert all(len(set(row)) == 4 for row in full.tolist())
        np.add.at(seen, (np.repeat(np.arange(p), 3), r.ravel()), 1)
    assert np.all(np.diag(seen) == 0)
    # Every other member is picked equally often: a chi-square test of each row's 600 draws over its
    # p - 1 others, pooled (a draw that favoured low indices, say, fails it by many sigma).
    off = seen[~np.eye(p, dtype=bool)].reshape(p, p - 1)
    expected = 200 * 3 / (p - 1)
    chi2 = float(((off - expected) ** 2 / expected).sum())
    assert scipy.stats.chi2.sf(chi2, p * (p - 2)) > 1e-4, f"chi2 {chi2:.1f} on {p * (p - 2)} dof"


def test_finds_the_only_pixel_that_flips_the_toy_model():
    model = Bumps([(7, 3)], need=0.3)
    settings = evolution.Settings(population=40, generations=60)
    results, obj = _attack(model, _flat(3), [0, 0, 0], [1, 1, 1], settings)
    for r in results:
        assert r.success and 0 <= r.generations < 60
        x, y, v = pixels.decode(r.genome, 1, H, W)
        assert (x[0], y[0]) == (7, 3)
        assert v[0, 1] > 0.8 and r.probs[1] > 0.5
        assert r.queries == 40 * (r.generations + 1)
    assert obj.queries == sum(r.queries for r in results)
    # Probabilities reported are the model's for the image the genome describes.
    img = pixels.apply(_flat(1), *[torch.as_tensor(a)[None] for a in pixels.decode(results[0].genome, 1, H, W)])
    np.testing.assert_allclose(torch.softmax(model(img), 1)[0].numpy(), results[0].probs, rtol=1e-6)


def test_each_attack_stops_the_generation_it_succeeds():
    model = Bumps([(7, 3)], need=0.3)
    settings = evolution.Settings(population=30, generations=25)
    calls = []

    obj = pixels.PixelObjective(model, _flat(3), 1)

    def evaluate(tasks, genomes):
        calls.append(tasks.tolist())
        return obj(tasks, genomes)

    lo, hi, pos = pixels.bounds(1, 3, H, W, (0.0, 1.0))
    # Task 0 succeeds at once (its target, class 0, is already the prediction); task 1 must find the
    # pixel; task 2 never succeeds (class 2's logit is -10 whatever the image).
    seeds = [np.random.SeedSequence([4, i]) for i in range(3)]
    res = evolution.evolve(evaluate, lo, hi, [1, 0, 0], [0, 1, 2], seeds, settings, resample=pos)
    assert res[0].success and res[0].generations == 0 and res[0].queries == 30
    assert res[1].success and 0 < res[1].generations < 25
    assert not res[2].success and res[2].generations == 25 and res[2].queries == 30 * 26
    assert calls[0] == [0, 1, 2] and all(0 not in c for c in calls[1:])
    assert sum(1 in c for c in calls) == res[1].generations + 1
    assert sum(len(c) for c in calls) * 30 == sum(r.queries for r in res) == obj.queries


def test_batching_does_not_change_any_attack():
    """A batch only stacks independent attacks: each result equals the attack run alone, with any
    forward-pass split, on the toy model and on a real (untrained) GalaxyNet."""
    settings = evolution.Settings(population=16, generations=8, crossover=0.7)
    toy = Bumps([(7, 3)], need=0.3)
    base = _flat(4, noise=0.05, seed=2)
    true, target = [0, 0, 0, 1], [1, 1, 2, -1]
    together, _ = _attack(toy, base, true, target, settings, forward_batch=37)
    for i in range(4):
        alone, _ = _attack(toy, base[i:i + 1], [true[i]], [target[i]], settings, forward_batch=1024, ids=[i])
        assert _same(together[i], alone[0]), f"task {i} changed when batched"
    assert {r.success for r in together} == {True, False}, "the batch should mix early stops and failures"

    net = build_model(0, dropout=0.0).eval()
    imgs = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.4 + 0.5
    with torch.no_grad():
        pred = net(imgs)[1].argmax(1).tolist()
    settings = evolution.Settings(population=8, generations=3, threshold=0.34)

    def run(sel, forward_batch):
        obj = pixels.PixelObjective(lambda x: net(x)[1], imgs[sel], 1, forward_batch)
        lo, hi, pos = pixels.bounds(1, 3, 32, 32, (0.0, 1.0))
        tgt = [(pred[i] + 1) % 3 for i in sel]
        return evolution.evolve(obj, lo, hi, [pred[i] for i in sel], tgt,
                                [np.random.SeedSequence([5, i]) for i in sel], settings, resample=pos)

    together = run([0, 1, 2], forward_batch=5)
    for i in range(3):
        assert _same(together[i], run([i], forward_batch=1024)[0]), f"GalaxyNet attack {i} changed when batched"


def test_two_pixels_where_one_cannot_flip():
    # Two spots, each worth at most 0.5 of the 0.7 needed: no single pixel flips the model.
    model = Bumps([(2, 2), (9, 8)], need=0.7)
    one, _ = _attack(model, _flat(1), [0], [1], evolution.Settings(population=40, generations=20), k=1)
    assert not one[0].success and one[0].probs[1] < 0.5 and one[0].queries == 40 * 21
    two, _ = _attack(model, _flat(2), [0, 0], [1, 1], evolution.Settings(population=60, generations=120), k=2)
    for r in two:
        assert r.success and r.probs[1] > 0.5
        x, y, v = pixels.decode(r.genome, 2, H, W)
        assert sorted(zip(x.tolist(), y.tolist())) == [(2, 2), (9, 8)]
        assert np.all(v[:, 1] > 0.85)


def test_untargeted_success_means_the_prediction_changed():
    model = Bumps([(5, 5)], need=0.3)
    res, _ = _attack(model, _flat(2), [0, 0], [-1, -1], evolution.Settings(population=40, generations=60))
    for r in res:
        assert r.success and int(np.argmax(r.probs)) != 0


def test_candidates_stay_in_the_image_and_the_value_range():
    model = Bumps([(7, 3)], need=0.3)
    # Values capped at 0.7: the spot can reach 0.2 of the 0.3 needed, so the attack must fail,
    # and every candidate it returns must respect the bounds.
    res, _ = _attack(model, _flat(4, noise=0.02), [0] * 4, [1] * 4, evolution.Settings(population=20, generations=10),
                     k=2, value_range=(0.3, 0.7))
    for r in res:
        assert not r.success
        x, y, v = pixels.decode(r.genome, 2, H, W)
        assert x.min() >= 0 and x.max() < W and y.min() >= 0 and y.max() < H
        assert v.min() >= 0.3 and v.max() <= 0.7


def test_config_section_defaults_and_validation():
    a = config.load("tiny").attack
    assert (a.population, a.generations, a.mutation, a.n_images, a.pixels) == (400, 80, 0.5, 150, 1)
    assert a.mode == "targeted" and a.pixel_range is None and a.variants == ["regular", "mmd"]
    with pytest.raises(config.ConfigError, match="'attack.mode': 'both' is not one of"):
        config.load("tiny", ["attack.mode=both"])
    with pytest.raises(config.ConfigError, match=r"'attack.pixel_range' must be \[min, max\]"):
        config.load("tiny", ["attack.pixel_range=[1, 0]"])
    # Batching settings enter the digest (they can change the last bits of a forward pass), threads and
    # figures do not; the budget does.
    base = stage.digest(config.load("tiny"))
    assert stage.digest(config.load("tiny", ["attack.images_per_batch=3"])) != base
    assert stage.digest(config.load("tiny", ["attack.threads=1", "attack.figures=false"])) == base
    assert stage.digest(config.load("tiny", ["attack.population=40"])) != base
    assert stage.output_path(config.load("tiny", ["attack.pixels=2"])).name == "attack-k2.h5"


# ---------------------------------------------------------------------------------- end to end

# The session's tiny attack (helpers.TINY_ATTACK): every check below holds whatever the trained
# weights make of the images (which attacks succeed, and when).
POP, GENS, THRESHOLD = 12, 6, 0.0
ATTACK = ["attack", *TINY_ATTACK]


@pytest.fixture(scope="module")
def trained(tiny_trained):
    return tiny_trained


_workdir = workdir


@pytest.fixture(scope="module")
def serial(tiny_attacked):
    run, stderr = tiny_attacked
    return run / "attack.h5", stderr


@pytest.mark.slow
def test_output_rows_agree_with_the_data_and_the_model(serial, trained):
    out, res = serial
    cfg = config.load("tiny", [*(a for a in ATTACK[1:] if "=" in a), f"run.root={out.parent.parent}"])
    with h5py.File(out, "r") as f:
        d = {name: f[name][...] for name in f}
        attrs = dict(f.attrs)
    n = len(d["index"])
    assert attrs["stage"] == "attack" and attrs["variant_names"] == "regular,mmd"
    assert d["attacked"].shape == (n, 3, 48, 48) and d["pixel_xy"].shape == (n, 1, 2)
    assert d["prob_before"].shape == d["prob_after"].shape == (n, 3)
    # Both models, the same images, every other class as a target.
    images = d["index"][d["variant"] == 0]
    assert n == 2 * len(images) and np.array_equal(images, d["index"][d["variant"] == 1])
    assert len(np.unique(images)) == attrs["n_images"] <= 5
    assert attrs["examined"] == attrs["n_images"] + attrs["skipped_misclassified"]
    assert np.all(d["target"] != d["label"]) and np.all(d["target"] >= 0)
    with h5py.File(trained / "galaxies.h5", "r") as g:
        assert np.all(g["split"][...][d["index"]] == 2) and np.array_equal(g["label"][...][d["index"]], d["label"])
        y10 = g["y10"][...]
    # Only images every model got right; the stored probabilities say so.
    assert np.array_equal(d["pred_before"], d["label"]) and np.array_equal(d["prob_before"].argmax(1), d["label"])
    # Success, query accounting and early stopping.
    p_target = d["prob_after"][np.arange(n), d["target"]]
    assert np.array_equal(d["success"], p_target > THRESHOLD)
    # attack.precision auto: bf16 where the CPU has it, each float32 re-classification a query too.
    assert attrs["precision"] in ("fp32", "bf16") and np.all((d["rejected"] >= 0) & (d["rejected"] <= d["checked"]))
    assert np.array_equal(d["queries"] - d["checked"], POP * (d["generations"] + 1))
    assert np.all(d["generations"][~d["success"]] == GENS) and np.all(d["generations"] <= GENS)
    assert np.array_equal(d["pred_after"], d["prob_after"].argmax(1))
    # The attacked image is the normalised Y10 image with the one pixel replaced, and the model
    # gives it the stored probabilities.
    for v, variant in enumerate(("regular", "mmd")):
        model, stretch = stage.load_model(cfg, variant, torch.device("cpu"))
        rows = np.flatnonzero(d["variant"] == v)
        clean = stretch(torch.from_numpy(y10[d["index"][rows]])).numpy()
        # By default candidates stay within the range of the normalised data.
        lo, hi = min(stage.data_range(stretch)[0]), max(stage.data_range(stretch)[1])
        assert 0.4 < lo < 0.5 and 0.85 < hi < 0.9
        assert np.allclose(attrs[f"data_range_{variant}"], stage.data_range(stretch))
        for j, r in enumerate(rows):
            x, y = d["pixel_xy"][r, 0]
            changed = d["attacked"][r] != clean[j]
            assert not np.any(np.delete(changed.reshape(3, -1), y * 48 + x, axis=1))
            np.testing.assert_array_equal(d["attacked"][r][:, y, x], d["pixel_values"][r, 0])
            np.testing.assert_array_equal(clean[j][:, y, x], d["original_values"][r, 0])
            assert np.all((lo <= d["pixel_values"][r]) & (d["pixel_values"][r] <= hi))
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(d["attacked"][rows]))[1], 1).numpy()
        np.testing.assert_allclose(probs, d["prob_after"][rows], atol=2e-6)
    # The summary counts what the rows say.
    summary = json.loads(attrs["summary"])
    assert json.loads((out.parent / "attack_summary.json").read_text())["variants"] == summary["variants"]
    for v, variant in enumerate(("regular", "mmd")):
        s, sel = summary["variants"][variant], d["variant"] == v
        assert s["attacks"] == sel.sum() and s["successful_attacks"] == d["success"][sel].sum()
        assert s["flipped"] == len(np.unique(d["index"][sel & d["success"]]))
        assert (s["checked"], s["rejected"]) == (d["checked"][sel].sum(), d["rejected"][sel].sum())
        tried = sum(t for row in s["success_by_class_and_target"].values() for _, t in row.values())
        assert tried == sel.sum()
    assert "| regular |" in res and "skipped (misclassified" in res
    figures = out.parent / "figures"
    for name in ("attack_queries.png", "attack_success.png", "attack_success_vs_k.png"):
        assert matplotlib.image.imread(figures / name)[..., :3].std() > 0.02, name
    assert not list(out.parent.glob("attack.h5.parts-*")), "checkpoint blocks not cleaned up"


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [4])  # 2 ranks: the resume test below
def test_same_file_on_any_number_of_ranks(serial, trained, tmp_path, ranks):
    cwd = _workdir(tmp_path, trained)
    cli(ATTACK, cwd, ranks=ranks)
    out = cwd / "runs" / "tiny" / "attack.h5"
    assert_same_data(serial[0], out)
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == ranks


@pytest.mark.slow
@pytest.mark.mpi
def test_resume_after_a_kill_gives_the_same_file(serial, trained, tmp_path):
    # Each rank is killed as it starts its second block: one block each on disk. The blocks are
    # those of the serial run (two images each), so the resumed run computes every remaining block
    # exactly as the serial run did: the same file, bit for bit.
    cwd = _workdir(tmp_path, trained)
    run = cwd / "runs" / "tiny"
    killed_at("hpcmorph.store", "Blocks.write", 1, ATTACK, cwd, ranks=2)
    done_before = blocks_on_disk(run, "attack.h5")
    n_blocks = 2 * -(-len(np.unique(h5py.File(serial[0], "r")["index"][...])) // 2)
    assert 1 <= done_before < n_blocks, "the kill should land mid-run"
    assert not (run / "attack.h5").exists()

    res = cli(ATTACK, cwd, ranks=2)
    assert f"{done_before} already on disk" in res.stderr
    assert_same_data(serial[0], run / "attack.h5")


@pytest.mark.slow
def test_rerun_is_a_no_op_and_another_config_is_refused(serial, trained, tmp_path):
    cwd = _workdir(tmp_path, trained)
    shutil.copy(serial[0], cwd / "runs" / "tiny" / "attack.h5")
    out = cwd / "runs" / "tiny" / "attack.h5"
    mtime = out.stat().st_mtime_ns
    # The output alone, without its completion marker: only the finishing steps run (summary, figures).
    res = cli(ATTACK, cwd)
    assert "finishing what a stopped run left undone" in res.stderr and out.stat().st_mtime_ns == mtime
    assert (cwd / "runs" / "tiny" / "attack_summary.json").exists() and store.marker(out).exists()
    res = cli(ATTACK, cwd)
    assert "up to date" in res.stderr and out.stat().st_mtime_ns == mtime
    res = cli([*ATTACK, "--set", "attack.population=8"], cwd, check=False)
    assert res.returncode == 2 and "exists from a different config" in res.stderr
    assert out.stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_missing_model_is_a_clear_error(trained, tmp_path):
    cwd = _workdir(tmp_path, trained)
    shutil.rmtree(cwd / "runs" / "tiny" / "mmd")
    res = cli(ATTACK, cwd, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "mmd/seed0/model.pt: no such file; run `hpcmorph train`" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (cwd / "runs" / "tiny" / "attack.h5").exists()
