"""Certification of the k = 1 attacks (hpcmorph/attack/certify.py): on toy models whose corner
candidates that flip are known, against the exhaustive search's count, with the model's own count of
what it classified; the bfloat16 screen against float32, including a screen that errs; the stage's
summary and columns; the certificates kept; the best-first refinement. The stage end to end, against
the exhaustive search: test_attack_methods.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import H, W, Bumps, Counted
from helpers import flat as _flat
from hpcmorph import config
from hpcmorph.attack import certificates, certify, exhaustive, local, methods, stage
from hpcmorph.onepixel import corners, goal, pixels
from hpcmorph.onepixel.outcome import Result

SPOT = (7, 3)
# Bumps([SPOT], need=0.3) reaches class 1 only with band 1 at its upper bound at SPOT: the 4 corners
# with bit 1 set, at scan indices (3 W + 7) 8 + {2, 3, 6, 7}.
HITS = [(SPOT[1] * W + SPOT[0]) * 8 + c for c in (2, 3, 6, 7)]


pytestmark = pytest.mark.usefixtures("one_thread")


def box(value_range=(0.0, 1.0)):
    return corners.Box.of(1, 3, H, W, value_range)


def objective(model, base):
    return pixels.PixelObjective(model, base, 1, 256, logits=True)


def test_goal_margin_is_positive_exactly_when_the_goal_is_reached():
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(0.0, 3.0, (4, 2000, 3)))
    true, target = torch.tensor([0, 1, 2, 1]), torch.tensor([1, 2, -1, 0])
    for threshold in (0.5, 0.3, 0.8):
        margin = certify.goal_margin(logits, true, target, threshold)
        reached = goal.reached(torch.softmax(logits, 2), true, target, threshold)
        assert torch.equal(margin > 0, reached)
        assert margin.dtype == torch.float64 and bool((margin > 0).any()) and bool((margin < 0).any())


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_certify_counts_the_corner_pixels_that_flip_and_skips_flipped_images(precision):
    base = _flat(3, noise=0.01, seed=4)
    # Image 0: both targets (only class 1 is reachable); image 1: the search flipped it already;
    # image 2: untargeted.
    groups, true, target, success = [0, 0, 1, 2], [0, 0, 0, 0], [1, 2, 1, -1], [False, False, True, False]
    model = Counted(Bumps([SPOT], need=0.3))
    rows = torch.tensor(groups)
    found = certify.certify(model, objective(model, base[rows]), box(), groups, true, target, success,
                            certify.Settings(precision=precision, tolerance=0.5, chunk=200))
    reference = exhaustive.search(objective(Bumps([SPOT], need=0.3), base[rows]), box(), true, target, groups,
                                  exhaustive.Settings(early_exit=False))
    assert found.certified.tolist() == [1, 0, 1, 1]
    assert found.flips.tolist() == [4, 0, -1, 4] == [r.flips if i != 2 else -1 for i, r in enumerate(reference)]
    assert found.first.tolist() == [HITS[0], -1, -1, HITS[0]]
    n = exhaustive.candidates(box())
    assert found.cost.images == 2 and found.cost.candidates == 2 * n
    if precision == "float32":
        # Every candidate of the two unflipped images, once for all their targets; none of image 1's.
        assert model.images == found.cost.float32 == 2 * n
    else:
        # The screen (a bfloat16 copy) saw every candidate; float32 only the sample and those near success.
        sample = len(range(0, n, certify.SAMPLE_STRIDE))
        assert model.images == found.cost.float32 and 2 * (sample + 4) <= model.images < 2 * (sample + 40)
        assert 0 < found.cost.max_error < found.cost.max_tolerance / certify.SAFETY + 1e-12
        assert found.cost.max_tolerance == 0.5 and found.cost.rescanned == 0


def _galaxynet(seed=0):
    """A GalaxyNet with random weights and batch-norm statistics, and a head large enough for the
    class probabilities to move with one pixel."""
    from hpcmorph.train.model import build_model

    model = build_model(seed).eval()
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)
    torch.nn.init.normal_(model.bottleneck.weight, 0.0, 0.1, generator=g)
    torch.nn.init.normal_(model.head.weight, 0.0, 0.5, generator=g)
    return model


def _every_pixel(model, dtype=torch.float32, height=20, width=16):
    """(image, positions, values, whole-pass logits): every position of a ``height`` x ``width`` image
    (20 x 16, not square: rows and columns cannot be mixed up), corners and borders included, at
    random values, through ``model`` in ``dtype``."""
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(1))
    position = np.arange(height * width)
    values = torch.rand(len(position), 3, generator=torch.Generator().manual_seed(2))
    images = image.expand(len(position), -1, -1, -1).clone()
    images[torch.arange(len(position)), :, torch.as_tensor(position // width),
           torch.as_tensor(position % width)] = values
    with torch.inference_mode():
        whole = model(images.to(dtype))[1].float()
    return image, position, values, whole


def test_local_logits_are_the_whole_forward_pass():
    """The windows recomputed agree with whole forward passes, also through a copy whose batch norms are
    folded into the convolutions (their biases)."""
    model = _galaxynet()
    image, position, values, whole = _every_pixel(model)
    scale = float(whole.abs().max())
    assert scale > 1.0 and float((whole - whole[:1]).abs().max()) > 1e-3 * scale  # pixels move the logits
    torch.testing.assert_close(local.Local(model, image).logits(position, values), whole, rtol=0, atol=1e-5 * scale)
    folded = certify.fold_batch_norms(copy.deepcopy(model))
    assert folded.features.conv1.bias is not None and local.supports(folded)
    torch.testing.assert_close(local.Local(folded, image).logits(position, values), whole, rtol=0,
                               atol=1e-5 * scale)
    assert local.supports(model) and not local.supports(Bumps([SPOT], 0.3))


def test_local_logits_of_a_bfloat16_copy_are_its_whole_forward_pass():
    """The bfloat16 screen's copy (folded, channels-last) through the windows: its logits, in float32,
    are its own whole forward pass's to bfloat16 rounding (on random weights the copy itself is far
    from the float32 model: the certifier measures that error, not this test). Square: on a 20 x 16
    image oneDNN's bfloat16 stride-2 convolution of layer3's 3 x 2 map returns garbage."""
    fast = certify.reduced_copy(_galaxynet(4), torch.bfloat16)
    image, position, values, whole = _every_pixel(fast, torch.bfloat16, 24, 24)
    windows = local.Local(fast, image.to(torch.bfloat16)).logits(position, values)
    assert windows.dtype == torch.float32 and bool(torch.isfinite(windows).all())
    moved = float((whole - whole[:1]).abs().max())
    error = float((windows - whole).abs().max())
    # bfloat16 keeps 8 bits: both passes err by about 2^-8 of the logits' size, and not alike.
    assert error < 0.05 * float(whole.abs().max()) and error < moved / 2


def test_folded_batch_norms_compute_the_same_function():
    model = _galaxynet(2)
    images = torch.rand(6, 3, 24, 20, generator=torch.Generator().manual_seed(3))
    folded = certify.fold_batch_norms(copy.deepcopy(model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20  # the original is kept
    with torch.inference_mode():
        whole, fast = model(images)[1], folded(images)[1]
    assert float(whole.std()) > 0.1  # the batch norms' statistics matter: random, not the identity
    torch.testing.assert_close(fast, whole, rtol=0, atol=1e-5 * float(whole.abs().max()))
    toy = Bumps([SPOT], 0.3)
    assert certify.fold_batch_norms(toy) is toy


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_screens_on_a_resnet_count_what_the_exhaustive_search_counts(precision):
    model = _galaxynet(3)
    base = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    b = corners.Box.of(1, 3, 16, 16, (0.0, 1.0))
    logits_fn = lambda x: model(x)[1]  # noqa: E731
    obj = pixels.PixelObjective(logits_fn, base, 1, 256, logits=True)
    # A threshold in a wide gap between the target probabilities of the candidates: a dozen succeed.
    probs = torch.softmax(certify._classify(obj, b, 0, np.arange(exhaustive.candidates(b)), 512), 1)[:, 1]
    top = np.sort(probs.numpy())[::-1][:40]
    gap = int(np.argmax(top[4:-1] - top[5:])) + 4
    threshold = float(top[gap] + top[gap + 1]) / 2
    assert 0.0 < threshold < 1.0
    reference = exhaustive.search(obj, b, [0], [1], [0], exhaustive.Settings(threshold=threshold, early_exit=False))
    tolerance = certify.FLOAT32_TOLERANCE if precision == "float32" else 0.5
    found = certify.certify(model, obj, b, [0], [0], [1], [False], certify.Settings(threshold, precision, tolerance))
    assert found.flips.tolist() == [reference[0].flips] == [gap + 1]
    assert found.first.tolist() == [reference[0].queries - 1]
    # The screen spared the model all but the sample and the candidates near success.
    n = exhaustive.candidates(b)
    sample = len(range(0, n, certify.SAMPLE_STRIDE))
    if precision == "float32":
        assert found.cost.float32 < sample + 100
        assert found.cost.max_error < 1e-4 and found.cost.max_tolerance == certify.FLOAT32_TOLERANCE
    else:
        # (On this random-weight model most margins lie within the bfloat16 tolerance of the threshold:
        # what the screen spares depends on the model; the answer must not.)
        assert sample < found.cost.float32 <= sample + n and found.cost.rescanned == 0
        assert 0 < found.cost.max_error <= found.cost.max_tolerance / 2  # else the image is scanned again


class Lying(torch.nn.Module):
    """Bumps([SPOT], need=0.3), whose bfloat16 copy is off: by ``everywhere`` nats on class 1's logit on
    every image, and by ``bright`` more (NaN if ``nan``) where band 1 at SPOT is bright (the candidates
    near success)."""

    def __init__(self, everywhere: float = 0.0, bright: float = 0.0, nan: bool = False):
        super().__init__()
        self.bumps = Bumps([SPOT], need=0.3)
        self.everywhere, self.bright, self.nan = everywhere, bright, nan

    def forward(self, x):
        out = self.bumps(x.float())
        if x.dtype == torch.bfloat16:
            lit = (x[:, 1, SPOT[1], SPOT[0]].float() > 0.9).float()
            off = self.everywhere + (torch.where(lit > 0, torch.nan, 0.0) if self.nan else self.bright * lit)
            out = out + torch.stack([torch.zeros_like(lit), -off, torch.zeros_like(lit)], 1)
        return out.to(x.dtype)


def test_a_screen_that_errs_widens_the_tolerance_or_falls_back_to_float32():
    base = _flat(1)
    n = exhaustive.candidates(box())
    # Off by 2 nats everywhere: the sample sees it, the tolerance becomes 4 x 2 nats, and the answer stands.
    model = Lying(everywhere=2.0)
    found = certify.certify(model, objective(model, base), box(), [0], [0], [1], [False],
                            certify.Settings(precision="bfloat16", tolerance=0.5))
    assert found.flips.tolist() == [4] and found.first.tolist() == [HITS[0]]
    assert found.cost.max_tolerance >= certify.SAFETY * 2.0 - 0.1 and found.cost.rescanned == 0
    # Off by 1 nat only near success, where the strided sample does not look: the candidates
    # classified again show it, and the image is scanned again in float32 throughout.
    model = Counted(Lying(bright=1.0))
    found = certify.certify(model, objective(model, base), box(), [0], [0], [1], [False],
                            certify.Settings(precision="bfloat16", tolerance=0.5))
    assert found.flips.tolist() == [4] and found.cost.rescanned == 1 and model.images >= n
    # NaN there (what oneDNN's bfloat16 convolutions give on some tiny maps): never read as a failure.
    model = Lying(nan=True)
    found = certify.certify(model, objective(model, base), box(), [0], [0], [1], [False],
                            certify.Settings(precision="bfloat16", tolerance=0.5))
    assert found.flips.tolist() == [4] and found.first.tolist() == [HITS[0]] and found.cost.rescanned == 1


def test_precision_auto_and_validation():
    assert certify.resolve_precision("float32", torch.device("cpu")) == "float32"
    assert certify.resolve_precision("auto", torch.device("cpu")) in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="unknown precision"):
        certify.resolve_precision("half", torch.device("cpu"))
    with pytest.raises(ValueError, match="k = 1"):
        certify.certify(Bumps([SPOT], 0.3), objective(Bumps([SPOT], 0.3), _flat(1)), corners.Box.of(2, 3, H, W, (0, 1)),
                        [0], [0], [1], [False], certify.Settings())
    with pytest.raises(config.ConfigError, match="certify_precision"):
        config.load("tiny", ["attack.certify_precision=half"])


def _results(success, flips=None, queries=None):
    flips, queries = flips or [-1] * len(success), queries or [5] * len(success)
    return [Result(bool(s), 0, int(q), np.zeros(5), np.zeros(3), int(f)) for s, f, q in zip(success, flips, queries)]


def test_which_attacks_certify_and_what_enters_the_digest():
    cfg = config.load("tiny", ["attack.method=saliency", "attack.certify=true"])
    assert methods.certifies(cfg.attack) and methods.certified(cfg.attack)
    for change in ({"attack.pixels": 2}, {"attack.certify": False}):
        assert not methods.certifies(cfg.updated(change).attack)
    # The exhaustive search is its own certificate: certified from its results, nothing scanned.
    ex = config.load("tiny", ["attack.method=exhaustive", "attack.certify=true"]).attack
    assert not methods.certifies(ex) and methods.certified(ex)
    got = methods.certify(ex, None, None, [0, 0], [0, 0], [1, 2], _results([True, False], [-1, 0], [347, 1152]),
                          box(), torch.device("cpu"))
    assert got.certified.tolist() == [1, 0] and got.first.tolist() == [346, -1] and got.cost.images == 0
    # Certification settings change the digest only where a scan runs, the precision and tolerance never.
    base = config.load("tiny", ["attack.method=saliency"])
    on = base.updated({"attack.certify": True})
    assert stage.digest(on) != stage.digest(base)
    assert stage.digest(on.updated({"attack.certify_precision": "float32", "attack.certify_tolerance": 2.0})) == \
        stage.digest(on)
    assert stage.digest(base.updated({"attack.pixels": 2})) == stage.digest(on.updated({"attack.pixels": 2}))
    # Compared methods are not certified: the run's own method is.
    from hpcmorph.attack.compare import variant
    assert not variant(on, "de", None).attack.certify and variant(on, "saliency", [0.0, 1.0]).attack.certify


def test_summary_counts_flippable_safe_and_undecided_images():
    # Rows: (variant, image, success, certified) for two targets per image.
    rows = [(0, 10, True, 1), (0, 10, False, -1),   # flipped by the search, other target not scanned
            (0, 11, False, 1), (0, 11, False, 0),   # missed: one pixel flips it at one target
            (0, 12, False, 0), (0, 12, False, 0),   # certified safe
            (1, 10, False, -1), (1, 10, False, -1)]  # undecided (not certified)
    cols = {k: np.array(v) for k, v in zip(("variant", "index", "success", "certified"), zip(*rows))}
    got = stage.certification(cols, ["regular", "mmd"])["variants"]
    assert got["regular"] == {"attacked": 3, "flipped": 1, "flippable": 2, "safe": 1, "undecided": 0,
                              "vulnerable_fraction": 2 / 3, "coverage": 0.5, "missed_rows": [11]}
    assert got["mmd"]["undecided"] == 1 and got["mmd"]["coverage"] is None
    assert got["mmd"]["vulnerable_fraction"] is None


def test_certificates_are_kept_by_what_they_depend_on(tmp_path):
    cfg = config.load("tiny", [f"run.root={tmp_path}", "attack.method=saliency", "attack.certify=true"])
    file = certificates.path(cfg, "regular", 0)
    assert certificates.read(file) == {}
    assert certificates.add(file, [7, 7, 9], [1, 2, 0], [0, 3, -1], [-1, 17, -1]) == 2  # -1: not scanned
    assert certificates.add(file, [9, 7], [0, 1], [0, 0], [-1, -1]) == 3
    known = certificates.read(file)
    assert known == {(7, 1): (0, -1), (7, 2): (3, 17), (9, 0): (0, -1)}
    flips, first = certificates.lookup(known, [7, 9, 8], [2, 0, 1])
    assert flips.tolist() == [3, 0, -1] and first.tolist() == [17, -1, -1]
    # Another search, budget or screen: the same certificates; another model seed, value range or
    # success rule: other ones.
    for change in ({"attack.method": "sparse-rs"}, {"attack.max_queries": 50}, {"attack.certify_precision": "float32"}):
        assert certificates.path(cfg.updated(change), "regular", 0) == file
    assert certificates.path(cfg, "regular", 1) != file
    for change in ({"attack.pixel_range": [0.0, 1.0]}, {"attack.threshold": 0.6}, {"attack.mode": "untargeted"}):
        assert certificates.path(cfg.updated(change), "regular", 0) != file


# ------------------------------------------------------------------------------------------ search

class Hidden(torch.nn.Module):
    """Class 1 needs band 1 bright at SPOT through a unit that is off at the clean image (its gradient
    is 0 there: the first-order ranking cannot see it); the pixels around it pull a little, linearly,
    so their true margins point at it. Nothing else moves the logits."""

    def forward(self, x):
        d = x[:, 1] - 0.5
        y, xx = SPOT[1], SPOT[0]
        ring = d[:, y - 1:y + 2, xx - 1:xx + 2].sum((1, 2)) - d[:, y, xx]
        l1 = 20 * (0.02 * ring + torch.relu(d[:, y, xx] - 0.2) - 0.2)
        zero = torch.zeros_like(l1)
        return torch.stack([zero, l1, zero - 10], 1)


def test_best_first_refinement_finds_what_the_gradient_cannot_see():
    from hpcmorph.onepixel import saliency

    base = _flat(3, noise=0.002, seed=7)
    settings = dict(max_queries=60, top=8, proposals=4)
    model = Counted(Hidden())
    ranked_only = saliency.search(objective(model, base), box(), [0] * 3, [1] * 3,
                                  [np.random.SeedSequence([0, i]) for i in range(3)],
                                  saliency.Settings(**settings, radius=0))
    model = Counted(Hidden())
    found = saliency.search(objective(model, base), box(), [0] * 3, [1] * 3,
                            [np.random.SeedSequence([0, i]) for i in range(3)], saliency.Settings(**settings, radius=1))
    assert all(r.success for r in found)
    for r in found:
        x, y, v = pixels.decode(r.genome, 1, H, W)
        assert (x[0], y[0]) == SPOT and v[0, 1] == 1.0 and r.generations >= 1
        assert r.queries <= saliency.GRADIENT_QUERIES + 8 + 4 * r.generations
    assert model.images + saliency.GRADIENT_QUERIES * 3 == sum(r.queries for r in found)
    # The random search, from the same ranked candidates, needs luck: 4 of 1,152 candidates flip it.
    assert sum(r.success for r in ranked_only) < 3
    # Batched equals one at a time.
    for i in range(3):
        alone = saliency.search(objective(Hidden(), base[i:i + 1]), box(), [0], [1], [np.random.SeedSequence([0, i])],
                                saliency.Settings(**settings, radius=1))[0]
        assert (alone.success, alone.queries, alone.generations) == (found[i].success, found[i].queries,
                                                                     found[i].generations)
        assert np.array_equal(alone.genome, found[i].genome)


DECOY = (10, 10)


class Decoyed(torch.nn.Module):
    """Class 1 needs band 1 bright at SPOT through a unit off at the clean image, as :class:`Hidden`,
    but its margin points elsewhere: a small pull at DECOY, far from SPOT. Class 2 is out of reach
    (at most -9), but its margin points at SPOT: the pixels around it raise its logit."""

    def forward(self, x):
        d = x[:, 1] - 0.5
        y, xx = SPOT[1], SPOT[0]
        ring = d[:, y - 1:y + 2, xx - 1:xx + 2].sum((1, 2)) - d[:, y, xx]
        l1 = 20 * (torch.relu(d[:, y, xx] - 0.2) - 0.2) + 2 * d[:, DECOY[1], DECOY[0]]
        return torch.stack([torch.zeros_like(l1), l1, 2 * ring - 10], 1)


def test_the_targets_of_an_image_share_what_they_classify():
    """Target 1's own ranking and margins lead to DECOY; target 2's lead next to SPOT, where its
    refinement classifies the candidate that reaches class 1. Shared (one image, groups equal),
    target 1 takes it from there; alone, it spends its budget around DECOY."""
    from hpcmorph.onepixel import saliency

    base = _flat(1, noise=0.002, seed=7)
    settings = saliency.Settings(max_queries=60, top=8, proposals=4, radius=2)
    seeds = [np.random.SeedSequence([0, t]) for t in (1, 2)]

    def run(images, true, target, seeds, groups):
        model = Counted(Decoyed())
        res = saliency.search(objective(model, images), box(), true, target, seeds, settings, groups)
        assert model.images + saliency.GRADIENT_QUERIES * len(res) == sum(r.queries for r in res)
        return res

    alone = run(base.expand(2, -1, -1, -1), [0, 0], [1, 2], seeds, None)
    shared = run(base.expand(2, -1, -1, -1), [0, 0], [1, 2], seeds, [0, 0])
    assert not alone[0].success and not alone[1].success and not shared[1].success
    assert shared[0].success and shared[0].queries < settings.max_queries
    x, y, v = pixels.decode(shared[0].genome, 1, H, W)
    assert (x[0], y[0]) == SPOT and v[0, 1] == 1.0
    # Another image in the batch (its own group) changes nothing of this one's attacks.
    other = _flat(1, noise=0.002, seed=8)
    batched = run(torch.cat([other, other, base, base]), [0, 0, 0, 0], [1, 2, 1, 2],
                  [np.random.SeedSequence([1, t]) for t in (1, 2)] + seeds, [5, 5, 3, 3])
    for a, b in zip(batched[2:], shared):
        assert (a.success, a.queries, a.generations) == (b.success, b.queries, b.generations)
        assert np.array_equal(a.genome, b.genome)


def test_refinement_rings_widen_around_the_best_candidate():
    from hpcmorph.onepixel import saliency

    b = box()
    q = (3 * W + 7) * 8 + 2
    one, two = saliency.ring(q, b, 1), saliency.ring(q, b, 2)
    assert one[:7] == [(3 * W + 7) * 8 + c for c in range(8) if c != 2]
    for r, found in ((1, one[7:]), (2, two)):
        pos = [divmod(n // 8, W) for n in found]
        assert all(n % 8 == 2 for n in found) and len(found) == 8 * r
        assert all(max(abs(y - 3), abs(x - 7)) == r for y, x in pos)
    assert saliency.neighbours(q, b, 2) == one + two
    # At the border the rings are cut.
    assert len(saliency.ring(2, b, 1)) == 7 + 3 and len(saliency.ring(2, b, 2)) == 5


def test_the_benchmarks_screens_classify_the_same_candidates():
    """``hpcmorph bench attack``'s (6): every screen against whole float32 passes of the same candidates."""
    from hpcmorph.bench.certify import format_screens, screens

    res = screens(image_size=16, candidates=96, chunk=40)
    rows = {r["screen"]: r for r in res["rows"]}
    assert rows["float32 whole passes"]["ratio"] == 1.0 and rows["float32 whole passes"]["max_logit_difference"] == 0
    assert rows["float32 windows"]["max_logit_difference"] < 1e-5 * rows["float32 windows"]["logit_scale"]
    assert all(r["candidates_per_s"] > 0 for r in res["rows"]) and len(format_screens(res)) == len(rows) + 1
    windows = rows["float32 windows"]["candidates_per_s"]
    assert res["scan_seconds"]["float32 windows"] == pytest.approx(16 * 16 * 8 / windows)
