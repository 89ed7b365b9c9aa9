"""Stage 3's other attack methods (exhaustive corner search, Sparse-RS, saliency) and DE's margin
fitness: on toy models whose answer is known, against a brute-force loop, with the model's own
count of the images it classified; then the stage end to end on a small tiny-preset run (each
method, 2 ranks, resume after SIGKILL)."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from helpers import THREADS, H, W, Bumps, Counted, assert_same_data, blocks_on_disk, cli, killed_at, workdir
from helpers import flat as _flat
from hpcmorph import config
from hpcmorph.attack import evolution, exhaustive, methods, stage
from hpcmorph.onepixel import corners, goal, pixels, saliency, sparse_rs
from hpcmorph.onepixel.outcome import Result


pytestmark = pytest.mark.usefixtures("one_thread")


def box(k=1, value_range=(0.0, 1.0), bands=3, height=H, width=W):
    return corners.Box.of(k, bands, height, width, value_range)


def objective(model, base, k=1, forward_batch=256, logits=True):
    return pixels.PixelObjective(model, base, k, forward_batch, logits=logits)


def same(a: Result, b: Result) -> bool:
    return (a.success == b.success and a.generations == b.generations and a.queries == b.queries
            and a.flips == b.flips and np.array_equal(a.genome, b.genome) and np.array_equal(a.probs, b.probs))


def seeds(ids, targets, run=0):
    return [np.random.SeedSequence([run, i, t + 1]) for i, t in zip(ids, targets)]


# ----------------------------------------------------------------------------------- corners, goal

def test_corner_table_scan_order_and_genomes():
    b = box(value_range=([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]))
    table = b.table()
    assert table.shape == (8, 3)
    np.testing.assert_array_equal(table[0], [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(table[7], [0.7, 0.8, 0.9])
    np.testing.assert_array_equal(table[2], [0.1, 0.8, 0.3])  # bit 1: band 1 high
    # Candidate q: position q // 8 (row-major), corner q % 8; genomes decode back to them.
    q = np.arange(exhaustive.candidates(b))
    position, corner = corners.scan(q, 8)
    x, y, v = pixels.decode(b.genomes(position[:, None], corner[:, None]), 1, H, W)
    np.testing.assert_array_equal(y[:, 0] * W + x[:, 0], q // 8)
    np.testing.assert_array_equal(v[:, 0], table[q % 8].astype(np.float32))
    assert (x[8, 0], y[8, 0]) == (1, 0) and (x[8 * W, 0], y[8 * W, 0]) == (0, 1)


def test_margin_loss_is_the_goal_logit_against_the_largest_other():
    logits = torch.tensor([[[1.0, 3.0, 0.5], [4.0, 2.0, 2.5]]], dtype=torch.float64).expand(3, -1, -1)
    true, target = torch.tensor([1, 1, 0]), torch.tensor([0, -1, 2])
    loss = goal.margin_loss(logits, true, target)
    np.testing.assert_allclose(loss[0], [3.0 - 1.0, 2.5 - 4.0])   # targeted at 0: best other minus z_0
    np.testing.assert_allclose(loss[1], [3.0 - 1.0, 2.0 - 4.0])   # untargeted, true 1: z_1 minus best other
    np.testing.assert_allclose(loss[2], [3.0 - 0.5, 4.0 - 2.5])
    _, ok, probs = goal.score(logits, true, target, 0.5)
    assert ok.tolist() == [[False, True], [False, True], [False, False]]
    np.testing.assert_allclose(probs.sum(2), 1.0)


# -------------------------------------------------------------------------------------- exhaustive

SPOT = (7, 3)
FIRST_HIT = (SPOT[1] * W + SPOT[0]) * 8 + 2  # corner 2: band 1 high, the others low


def test_exhaustive_finds_the_planted_pixel_and_nothing_where_there_is_none():
    # Only band 1 at its upper bound at SPOT flips Bumps (see tests/test_attack.py): 4 corners of the
    # 8 at that one position (bands 0 and 2 free), none anywhere else.
    model = Counted(Bumps([SPOT], need=0.3))
    b = box()
    full = exhaustive.search(objective(model, _flat(2)), b, [0, 0], [1, -1], [0, 1],
                             exhaustive.Settings(early_exit=False))
    assert model.images == 2 * exhaustive.candidates(b)  # two images, every candidate once
    for r in full:
        assert r.success and r.flips == 4 and r.queries == FIRST_HIT + 1 and r.generations == 0
        x, y, v = pixels.decode(r.genome, 1, H, W)
        assert (x[0], y[0]) == SPOT and v[0].tolist() == [0.0, 1.0, 0.0] and r.probs[1] > 0.5
    quick = exhaustive.search(objective(Counted(Bumps([SPOT], need=0.3)), _flat(2)), b, [0, 0], [1, -1], [0, 1],
                              exhaustive.Settings(early_exit=True, chunk=100))
    for r, q in zip(full, quick):
        assert q.flips == -1 and (q.success, q.queries) == (r.success, r.queries)
        assert np.array_equal(q.genome, r.genome) and np.array_equal(q.probs, r.probs)

    # need 0.7: one pixel reaches at most 0.5; and class 2 is never reachable.
    model = Counted(Bumps([SPOT], need=0.7))
    none = exhaustive.search(objective(model, _flat(1)), b, [0, 0], [1, 2], [0, 0], exhaustive.Settings())
    assert model.images == exhaustive.candidates(b)  # the two targets of one image share its candidates
    for r in none:
        assert not r.success and r.flips == 0 and r.queries == exhaustive.candidates(b)
    # On failure the best candidate: for target 1 the spot's band 1 high (ties: the first corner).
    x, y, v = pixels.decode(none[0].genome, 1, H, W)
    assert (x[0], y[0]) == SPOT and v[0, 1] == 1.0


def test_exhaustive_records_immediate_searched_and_impossible_attacks():
    # By construction (Bumps, need 0.3): target 0 is already the prediction, so the first candidate
    # reaches it; target 1 needs the one spot, band 1 high; class 2's logit is -10 whatever the image.
    b = box()
    res = exhaustive.search(objective(Bumps([SPOT], need=0.3), _flat(1)), b, [1, 0, 0], [0, 1, 2], [0, 0, 0],
                            exhaustive.Settings(early_exit=False, chunk=64))
    immediate, searched, impossible = res
    assert immediate.success and immediate.queries == 1 and immediate.flips == exhaustive.candidates(b) - 4
    assert searched.success and searched.queries == FIRST_HIT + 1 and searched.flips == 4
    assert not impossible.success and impossible.queries == exhaustive.candidates(b) and impossible.flips == 0


def test_exhaustive_agrees_with_a_brute_force_loop():
    h, w = 4, 5
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * h * w, 3)).eval()
    base = 0.3 + 0.4 * torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(4))
    b = box(value_range=(0.1, 0.9), height=h, width=w)
    table = torch.as_tensor(b.table(), dtype=torch.float32)

    def brute(image):
        """Logits of every candidate of ``image``, one forward pass each, in scan order."""
        out = []
        with torch.no_grad():
            for y in range(h):
                for x in range(w):
                    for c in range(8):
                        img = image.clone()
                        img[:, y, x] = table[c]
                        out.append(net(img[None])[0].double())
        return torch.stack(out)

    logits = [brute(base[0]), brute(base[1])]
    probs = [torch.softmax(lg, 1).numpy() for lg in logits]
    # Thresholds between two candidates' probabilities: 16 candidates flip target 1 of image 0, none
    # flips target 2 of image 1; untargeted attacks on image 0 as it comes.
    p01 = np.sort(probs[0][:, 1])
    cases = [(0, 0, 1, float(p01[-17] + p01[-16]) / 2), (1, 0, 2, float(probs[1][:, 2].max()) + 1e-4)]
    cases += [(0, t, -1, 0.5) for t in range(3)]
    for image, true, tgt, threshold in cases:
        got = exhaustive.search(objective(net, base[image:image + 1]), b, [true], [tgt], [0],
                                exhaustive.Settings(threshold=threshold, early_exit=False, chunk=7))[0]
        p = probs[image]
        hit = p[:, tgt] > threshold if tgt >= 0 else p.argmax(1) != true
        hits = np.flatnonzero(hit)
        assert got.flips == len(hits) and got.success == bool(len(hits))
        if len(hits):
            q = hits[0]
            assert got.queries == q + 1
        else:
            loss = goal.margin_loss(logits[image][None], torch.tensor([true]), torch.tensor([tgt]))[0].numpy()
            q = int(np.argmin(loss))
            assert got.queries == exhaustive.candidates(b)
        np.testing.assert_array_equal(got.genome, b.genomes(*[np.array([a]) for a in corners.scan(q, 8)]))
        np.testing.assert_allclose(got.probs, p[q], rtol=1e-5)
    assert (probs[0][:, 1] > cases[0][3]).sum() == 16


def test_exhaustive_refuses_more_than_one_pixel():
    with pytest.raises(ValueError, match="k = 1"):
        exhaustive.search(objective(Bumps([SPOT], 0.3), _flat(1), k=2), box(k=2), [0], [1], [0], exhaustive.Settings())
    with pytest.raises(config.ConfigError, match="'attack.pixels' is 2, but attack.method 'exhaustive'"):
        config.load("tiny", ["attack.method=exhaustive", "attack.pixels=2"])


# ------------------------------------------------------------------------------------- sparse-rs

def test_sparse_rs_schedule():
    s = sparse_rs.Settings(max_queries=10000, alpha_init=0.8)
    assert [sparse_rs.moved(i, 10, s) for i in (0, 1, 50, 51, 200, 201, 501, 1001, 2001, 4001, 6001, 8001)] == \
        [8, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    assert [sparse_rs.moved(i, 100, s) for i in (0, 1, 51, 201, 501, 1001, 2001, 4001, 6001, 8001)] == \
        [80, 40, 20, 16, 13, 10, 8, 6, 5, 4]
    # Rescaled to the budget: step 6 of 1,000 is step 60 of 10,000.
    assert sparse_rs.moved(6, 100, sparse_rs.Settings(max_queries=1000)) == 20
    assert sparse_rs.moved(5, 1, s) == 1


@pytest.mark.parametrize("proposals", [1, 8])
def test_sparse_rs_finds_the_flippable_pixel_in_most_seeds(proposals):
    # 4 of the 1,152 corner candidates flip it: about 290 queries on average by random search.
    model = Counted(Bumps([SPOT], need=0.3))
    budget = 2000
    res = sparse_rs.search(objective(model, _flat(10, noise=0.01)), box(), [0] * 10, [1] * 10,
                           seeds(range(10), [1] * 10), sparse_rs.Settings(max_queries=budget, proposals=proposals))
    assert sum(r.success for r in res) >= 9
    for r in res:
        assert r.queries <= budget
        if r.success:
            x, y, v = pixels.decode(r.genome, 1, H, W)
            assert (x[0], y[0]) == SPOT and v[0, 1] == 1.0 and r.probs[1] > 0.5
            assert r.generations == -(-(r.queries - 1) // proposals)  # steps after the start candidate
    assert model.images == sum(r.queries for r in res)


def test_sparse_rs_two_pixels_where_one_cannot_flip():
    # Two spots each worth 0.5 of the 0.7 needed: only both together flip it.
    model = Bumps([(2, 2), (9, 8)], need=0.7)
    res = sparse_rs.search(objective(model, _flat(3), k=2), box(k=2), [0] * 3, [1] * 3, seeds(range(3), [1] * 3),
                           sparse_rs.Settings(max_queries=6000))
    assert sum(r.success for r in res) >= 2
    for r in res:
        if r.success:
            x, y, v = pixels.decode(r.genome, 2, H, W)
            assert sorted(zip(x.tolist(), y.tolist())) == [(2, 2), (9, 8)] and np.all(v[:, 1] == 1.0)


# -------------------------------------------------------------------------------------- saliency

def test_saliency_gradient_comes_from_the_model_under_attack():
    # Two models whose margin gradient points at different pixels: each attack is led to its own.
    for spot in [(2, 9), (10, 1)]:
        model = Counted(Bumps([spot], need=0.3))
        obj = objective(model, _flat(2, noise=0.01, seed=1))
        grad = saliency.margin_gradient(obj.logits_fn, obj.base, [0, 0], [1, -1])
        assert model.gradient_images == 2 and model.images == 0  # one backward pass per attack, through it
        # d(z_1 - z_0)/dx = 20 w in band 1, 0 elsewhere (Bumps); untargeted (true 0): the same margin.
        np.testing.assert_allclose(grad[:, 1], np.broadcast_to(20 * model.model.w.numpy(), (2, H, W)), rtol=1e-5)
        assert np.all(grad[:, [0, 2]] == 0)
        res = saliency.search(obj, box(), [0, 0], [1, -1], seeds([0, 1], [1, -1]), saliency.Settings(max_queries=50))
        assert model.gradient_images == 4
        for r in res:
            # The first ranked candidate: the spot, band 1 high (bands 0 and 2 tie: the first corner).
            assert r.success and r.queries == saliency.GRADIENT_QUERIES + 1 and r.generations == 0
            x, y, v = pixels.decode(r.genome, 1, H, W)
            assert (x[0], y[0]) == spot and v[0].tolist() == [0.0, 1.0, 0.0]
        changed = (model.calls[0] != obj.base).any(1)
        assert changed.sum() == 2 and changed[:, spot[1], spot[0]].all()


def test_saliency_ranking_is_the_first_order_gain():
    b = box(value_range=(0.2, 0.9), bands=2, height=2, width=3)
    rng = np.random.default_rng(0)
    g, x = rng.normal(size=(2, 2, 3)), rng.uniform(0.2, 0.9, (2, 2, 3))
    order = saliency.ranking(g, x, b)
    table = b.table()
    gain = [sum(g[band, p // 3, p % 3] * (table[c, band] - x[band, p // 3, p % 3]) for band in range(2))
            for p in range(6) for c in range(4)]
    np.testing.assert_array_equal(order, np.argsort(-np.array(gain), kind="stable"))


def test_saliency_falls_back_to_random_search_when_the_ranking_misleads():
    # A decoy: the gradient at the clean image is largest at (2, 2) (50 against 20), but that pixel
    # saturates (tanh) and cannot flip the model; only (9, 8) can. The 4 top-ranked candidates (the
    # decoy's) fail, the random search finds it.
    class Decoy(torch.nn.Module):
        def forward(self, x):
            d = x[:, 1] - 0.5
            l1 = 20 * (0.05 * torch.tanh(50 * d[:, 2, 2]) + d[:, 8, 9] - 0.3)
            zero = torch.zeros_like(l1)
            return torch.stack([zero, l1, zero - 10], 1)

    model = Counted(Decoy())
    res = saliency.search(objective(model, _flat(6, noise=0.01)), box(), [0] * 6, [1] * 6, seeds(range(6), [1] * 6),
                          saliency.Settings(max_queries=2000, top=4, proposals=4))
    assert sum(r.success for r in res) >= 5
    for r in res:
        if r.success:
            assert r.generations > 0 and r.queries > saliency.GRADIENT_QUERIES + 4
            x, y, _ = pixels.decode(r.genome, 1, H, W)
            assert (x[0], y[0]) == (9, 8)
    assert model.images + saliency.GRADIENT_QUERIES * 6 == sum(r.queries for r in res)
    assert model.gradient_images == 6


# ------------------------------------------------------------------------------ every method, shared

def _run(method, model, base, true, target, ids, k=1, value_range=(0.0, 1.0), forward_batch=256, **kw):
    b = box(k, value_range, height=base.shape[2], width=base.shape[3])
    obj = objective(model, base, k, forward_batch, logits=method != "de" or kw.get("fitness") == "margin")
    if method == "exhaustive":
        return exhaustive.search(obj, b, true, target, ids, exhaustive.Settings(chunk=forward_batch, **kw))
    if method == "sparse-rs":
        return sparse_rs.search(obj, b, true, target, seeds(ids, target), sparse_rs.Settings(**kw))
    if method == "saliency":
        return saliency.search(obj, b, true, target, seeds(ids, target), saliency.Settings(**kw))
    lo, hi, pos = pixels.bounds(k, 3, base.shape[2], base.shape[3], value_range)
    return evolution.evolve(obj, lo, hi, true, target, seeds(ids, target), evolution.Settings(**kw), resample=pos)


CASES = [("exhaustive", {"early_exit": True}), ("exhaustive", {"early_exit": False}),
         ("sparse-rs", {"max_queries": 300, "proposals": 3}), ("saliency", {"max_queries": 120, "top": 20}),
         ("de", {"population": 12, "generations": 6, "fitness": "margin"})]


@pytest.mark.parametrize("method,kw", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_batched_equals_one_at_a_time(method, kw):
    toy = Bumps([SPOT], need=0.3)
    base = _flat(4, noise=0.05, seed=2)
    true, target = [0, 0, 0, 1], [1, 1, 2, -1]
    together = _run(method, toy, base, true, target, range(4), forward_batch=37, **kw)
    for i in range(4):
        alone = _run(method, toy, base[i:i + 1], [true[i]], [target[i]], [i], forward_batch=1024, **kw)
        assert same(together[i], alone[0]), f"{method}: task {i} changed when batched"
    assert {r.success for r in together} == {True, False}, "the batch should mix successes and failures"


@pytest.mark.parametrize("method,kw", [("exhaustive", {"early_exit": False}), ("sparse-rs", {"max_queries": 60}),
                                       ("sparse-rs", {"max_queries": 60, "proposals": 7}),
                                       ("saliency", {"max_queries": 60, "top": 10, "proposals": 4}),
                                       ("de", {"population": 10, "generations": 3, "fitness": "margin"})])
@pytest.mark.parametrize("k", [1, 2])
def test_candidates_stay_in_the_box_and_queries_are_the_images_classified(method, kw, k):
    if method == "exhaustive" and k == 2:
        pytest.skip("the exhaustive search is for k = 1")
    lo, hi = 0.3, 0.7  # values capped: the spot reaches 0.2 of the 0.3 needed, every attack fails
    base = _flat(3, noise=0.005)
    model = Counted(Bumps([SPOT], need=0.3), base, k, np.float32(lo), np.float32(hi))
    res = _run(method, model, base, [0, 0, 0], [1, 2, -1], range(3), k=k, value_range=(lo, hi), **kw)
    for r in res:
        assert not r.success
        x, y, v = pixels.decode(r.genome, k, H, W)
        assert x.min() >= 0 and x.max() < W and y.min() >= 0 and y.max() < H
        assert v.min() >= np.float32(lo) and v.max() <= np.float32(hi)
        assert r.queries == methods.budget(_Attack(method, kw), box(k))
    gradient = saliency.GRADIENT_QUERIES * 3 if method == "saliency" else 0
    assert model.images + gradient == sum(r.queries for r in res)
    assert model.gradient_images == (3 if method == "saliency" else 0)


class _Attack:
    """Stands in for cfg.attack in methods.budget."""

    def __init__(self, method, kw):
        self.method = method
        self.population, self.generations = kw.get("population", 0), kw.get("generations", 0)
        self.max_queries = kw.get("max_queries", 0)


def test_de_margin_fitness_finds_the_pixel_and_the_default_is_the_probability():
    assert evolution.Settings().fitness == "probability" and config.load("tiny").attack.fitness == "probability"
    res = _run("de", Bumps([SPOT], need=0.3), _flat(3), [0] * 3, [1] * 3, range(3), population=40, generations=60,
               fitness="margin")
    for r in res:
        assert r.success and r.queries == 40 * (r.generations + 1)
        x, y, v = pixels.decode(r.genome, 1, H, W)
        assert (x[0], y[0]) == SPOT and v[0, 1] > 0.8
    with pytest.raises(ValueError, match="fitness"):
        evolution.Settings(fitness="logit")


def test_config_methods_validation_and_digest():
    cfg = config.load("tiny")
    assert cfg.attack.method == "de" and cfg.attack.early_exit and cfg.attack.proposals == 1
    with pytest.raises(config.ConfigError, match="'attack.method': 'cornersearch' is not one of"):
        config.load("tiny", ["attack.method=cornersearch"])
    with pytest.raises(config.ConfigError, match="'attack.max_queries' is 3, but attack.method 'saliency'"):
        config.load("tiny", ["attack.method=saliency", "attack.max_queries=3"])
    with pytest.raises(config.ConfigError, match=r"'attack.rs_alpha': 0.0 is out of range"):
        config.load("tiny", ["attack.rs_alpha=0"])
    # A method's own settings enter the digest; another method's do not.
    de = stage.digest(cfg)
    assert stage.digest(config.load("tiny", ["attack.max_queries=50"])) == de
    assert stage.digest(config.load("tiny", ["attack.fitness=margin"])) != de
    rs = stage.digest(config.load("tiny", ["attack.method=sparse-rs"]))
    assert rs != de and stage.digest(config.load("tiny", ["attack.method=sparse-rs", "attack.population=8"])) == rs
    assert stage.digest(config.load("tiny", ["attack.method=sparse-rs", "attack.max_queries=50"])) != rs
    # Every method writes its own file.
    assert stage.output_path(cfg).name == "attack.h5"
    assert stage.output_path(config.load("tiny", ["attack.method=sparse-rs", "attack.pixels=2"])).name == \
        "attack-sparse-rs-k2.h5"


# ---------------------------------------------------------------------------------- end to end

# 16 x 16 stamps: the exhaustive search classifies 16 x 16 x 8 = 2,048 candidates per image. The
# checks hold whatever the barely trained model makes of the images (which attacks succeed, and
# when); tests above build the immediate, searched and impossible cases by construction.
GEN = ["--config", "tiny", "--set", "generate.n_galaxies=40", "--set", "generate.image_size=16"]
TRAIN = [*GEN, "--set", "train.epochs=2", "--set", "train.batch_size=8", "--set", "train.lr=0.001",
         "--set", f"train.threads={THREADS}"]
ATTACK = ["attack", *TRAIN, "--set", "attack.n_images=5", "--set", "attack.images_per_batch=2",
          "--set", "attack.threshold=0.25", "--set", f"attack.threads={THREADS}",
          "--set", "attack.figures=false"]
METHOD = {"exhaustive": ["--set", "attack.method=exhaustive", "--set", "attack.early_exit=false"],
          "sparse-rs": ["--set", "attack.method=sparse-rs", "--set", "attack.max_queries=200",
                        "--set", "attack.proposals=8"],
          "saliency": ["--set", "attack.method=saliency", "--set", "attack.max_queries=200",
                       "--set", "attack.proposals=8", "--set", "attack.saliency_top=40"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("trained16")
    cli(["generate", *GEN], cwd)
    cli(["train", *TRAIN], cwd)
    return cwd / "runs" / "tiny"


@pytest.fixture(scope="module")
def outputs(trained, tmp_path_factory):
    """Each new method's attack.h5 on the same run (each writes its own file)."""
    cwd = workdir(tmp_path_factory.mktemp("methods"), trained)
    return {m: (cli([*ATTACK, *METHOD[m]], cwd), cwd / "runs" / "tiny" / f"attack-{m}.h5") for m in METHOD}


def _read(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][...] for name in f}, dict(f.attrs)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHOD))
def test_stage_runs_each_method(outputs, trained, method):
    res, out = outputs[method]
    d, attrs = _read(out)
    assert attrs["method"] == method and f"method {method}" in res.stderr
    assert attrs["budget"] == (16 * 16 * 8 if method == "exhaustive" else 200)
    assert attrs["gradient_queries"] == (3 if method == "saliency" else 0)
    assert json.loads(attrs["summary"])["method"] == method
    n = len(d["index"])
    assert n > 0 and d["flips"].shape == (n,)
    p_target = d["prob_after"][np.arange(n), d["target"]]
    assert np.array_equal(d["success"], p_target > 0.25)
    # In reduced precision (attack.precision auto) the float32 re-classifications are queries too.
    searched = d["queries"] - d["checked"]
    assert np.all(searched <= attrs["budget"]) and np.all(searched[~d["success"]] == attrs["budget"])
    assert np.all(d["rejected"] <= d["checked"]) and (attrs["precision"] != "fp32" or not d["checked"].any())
    # The pixel is set at a corner of the value box (the data range by default).
    for v, variant in enumerate(("regular", "mmd")):
        lo, hi = attrs[f"data_range_{variant}"]
        vals = d["pixel_values"][d["variant"] == v]
        assert np.all(np.isclose(vals, min(lo), atol=1e-6) | np.isclose(vals, max(hi), atol=1e-6))
    cfg = config.load("tiny", [*(a for a in [*ATTACK[1:], *METHOD[method]] if "=" in a),
                               f"run.root={out.parent.parent}"])
    model, stretch = stage.load_model(cfg, "regular", torch.device("cpu"))
    rows = np.flatnonzero(d["variant"] == 0)
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(d["attacked"][rows]))[1], 1).numpy()
    np.testing.assert_allclose(probs, d["prob_after"][rows], atol=2e-6)
    if method == "exhaustive":
        assert np.all(d["flips"] >= 0) and np.array_equal(d["success"], d["flips"] > 0)
    else:
        assert np.all(d["flips"] == -1)
        # Every corner attack that succeeds is one the oracle finds: same model, image, candidates.
        oracle, _ = _read(outputs["exhaustive"][1])
        assert np.array_equal(oracle["index"], d["index"]) and np.array_equal(oracle["target"], d["target"])
        # The oracle classified each candidate in another forward pass (another batch): on some CPUs
        # its last bits differ, so a success the oracle missed may only sit at the threshold itself.
        missed = d["success"] & ~oracle["success"]
        assert np.all(np.abs(p_target[missed] - 0.25) < 1e-5), "a success the oracle says is impossible"


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("method,ranks", [("exhaustive", 2), ("saliency", 4)])
def test_more_ranks_give_the_same_file(outputs, trained, tmp_path, method, ranks):
    """The 1-rank files of ``outputs`` again on 2 or 4 ranks (4 oversubscribed on 2 cores; Sparse-RS and
    the saliency search on 2 ranks: the resume test below)."""
    cwd = workdir(tmp_path, trained)
    cli([*ATTACK, *METHOD[method]], cwd, ranks=ranks)
    assert_same_data(outputs[method][1], cwd / "runs" / "tiny" / f"attack-{method}.h5")


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("method", ["sparse-rs", "saliency"])
def test_resume_after_a_kill_gives_the_same_file(outputs, trained, tmp_path, method):
    # Each of 2 ranks is killed as it starts its second block. The blocks are those of the 1-rank
    # run (two images each), so the resumed run computes each remaining block exactly as that run
    # did, and the file is the same bit for bit.
    args = [*ATTACK, *METHOD[method]]
    cwd = workdir(tmp_path, trained)
    run = cwd / "runs" / "tiny"
    ref_file = outputs[method][1]
    killed_at("hpcmorph.store", "Blocks.write", 1, args, cwd, ranks=2)
    done_before = blocks_on_disk(run, f"attack-{method}.h5")
    n_blocks = 2 * -(-len(np.unique(h5py.File(ref_file, "r")["index"][...])) // 2)
    assert 1 <= done_before < n_blocks, "the kill should land mid-run"
    assert not (run / f"attack-{method}.h5").exists()
    res = cli(args, cwd, ranks=2)
    assert f"{done_before} already on disk" in res.stderr
    assert_same_data(ref_file, run / f"attack-{method}.h5")


# ---------------------------------------------------------------------------- certification, end to end

# Certification (attack/certify.py; its unit tests: test_certify.py) on the 16 x 16 run, against the
# exhaustive search without early exit (the oracle), beside a saliency search too short to find every flippable image.
SALIENCY = ["--set", "attack.method=saliency", "--set", "attack.max_queries=12", "--set", "attack.proposals=4",
            "--set", "attack.saliency_top=4", "--set", "attack.certify=true",
            "--set", "attack.certify_precision=bfloat16"]


def _columns(path):
    with h5py.File(path, "r") as f:
        cols = {k: f[k][...] for k in ("variant", "index", "target", "success", "certified", "certified_flips",
                                       "certified_first", "flips", "queries")}
        return cols, json.loads(f.attrs["summary"]), bool(f.attrs["certified"])


@pytest.mark.slow
def test_stage_certifies_what_the_search_missed_as_the_exhaustive_search_counts(outputs, trained, tmp_path):
    """Which images the search misses depends on the barely trained model: whatever they are, every
    scanned image's counts are the oracle's. The next test scans every image by construction."""
    _, oracle_path = outputs["exhaustive"]
    cwd = workdir(tmp_path, trained)
    res = cli([*ATTACK, *SALIENCY], cwd)
    got, summary, certified = _columns(cwd / "runs" / "tiny" / "attack-saliency.h5")
    oracle, _, oracle_certified = _columns(oracle_path)
    assert certified and oracle_certified  # the exhaustive search is its own certificate
    for k in ("variant", "index", "target"):
        assert np.array_equal(got[k], oracle[k])
    np.testing.assert_array_equal(oracle["certified"], (oracle["flips"] > 0).astype(np.int8))
    # Per image: flipped by the search (no scan), or scanned, and then counted as the oracle counts.
    keys = np.stack([got["variant"], got["index"]], 1)
    flipped = {tuple(k) for k, s in zip(keys, got["success"]) if s}
    scanned = np.array([tuple(k) not in flipped for k in keys])
    np.testing.assert_array_equal(got["certified_flips"][scanned], oracle["flips"][scanned])
    np.testing.assert_array_equal(got["certified"][scanned], (oracle["flips"][scanned] > 0).astype(np.int8))
    hit = scanned & oracle["success"]
    np.testing.assert_array_equal(got["certified_first"][hit], oracle["queries"][hit] - 1)
    assert (got["certified"][got["success"]] == 1).all() and (got["certified_flips"][~scanned] == -1).all()
    # The summary: flippable = the oracle's flipped images, coverage = the search's share of them.
    for v, variant in enumerate(("regular", "mmd")):
        c = summary["certification"]["variants"][variant]
        mine = got["variant"] == v
        assert c["flippable"] == len(np.unique(oracle["index"][mine & oracle["success"]]))
        assert c["flipped"] == len(np.unique(got["index"][mine & got["success"]])) and c["undecided"] == 0
        assert c["flipped"] + len(c["missed_rows"]) == c["flippable"]
    assert summary["certification"]["precision"] == "bfloat16"
    assert ("certified in" in res.stderr) == bool(scanned.any())


@pytest.mark.slow
def test_stage_certifies_every_image_resumes_from_its_certificates_and_deals_alike(trained, tmp_path):
    """At threshold 1 no targeted attack can succeed (a probability never exceeds 1): every image is
    scanned and certified out of reach, whatever the model."""
    cwd = workdir(tmp_path, trained)
    run = cwd / "runs" / "tiny"
    # Three images (two blocks per model; the last a single image), scanned in full three times over.
    never = [*SALIENCY, "--set", "attack.threshold=1", "--set", "attack.n_images=3"]
    res = cli([*ATTACK, *never], cwd)
    got, summary, _ = _columns(run / "attack-saliency.h5")
    n = len(got["index"])
    assert n > 0 and not got["success"].any()
    assert got["certified"].tolist() == [0] * n and got["certified_flips"].tolist() == [0] * n
    assert got["certified_first"].tolist() == [-1] * n and "certified in" in res.stderr
    images = {v: len(np.unique(got["index"][got["variant"] == i])) for i, v in enumerate(("regular", "mmd"))}
    for variant, c in summary["certification"]["variants"].items():
        assert (c["attacked"], c["flippable"], c["safe"], c["coverage"]) == (images[variant], 0, images[variant], None)
        assert c["vulnerable_fraction"] == 0.0
        assert summary["certification"]["cost"][variant]["images"] == images[variant]
    # The scans are kept (attack/certificates.py): the same attack again scans nothing, and says so.
    again = cli([*ATTACK, *never, "--force"], cwd)
    redo, summary2, _ = _columns(run / "attack-saliency.h5")
    for k in ("certified", "certified_flips", "certified_first"):
        np.testing.assert_array_equal(redo[k], got[k])
    for variant in ("regular", "mmd"):
        cost = summary2["certification"]["cost"][variant]
        assert cost["images"] == 0 and cost["cached"] == images[variant]
    assert "known from before" in again.stderr and any((run / "certificates").glob("regular-*.h5"))
    # Two ranks deal the blocks differently and write the same file.
    other = tmp_path / "two"
    shutil.copytree(run, other / "runs" / "tiny", ignore=shutil.ignore_patterns("attack*", "*.lock", "certificates"))
    cli([*ATTACK, *never], other, ranks=2)
    assert_same_data(run / "attack-saliency.h5", other / "runs" / "tiny" / "attack-saliency.h5")
