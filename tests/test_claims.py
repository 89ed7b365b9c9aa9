"""The statistical core and the claims table: intervals that cover at their nominal rate, a seeded and
reproducible bootstrap, scale-free latent distances that do not see a model's latent scale, and
verdicts that follow the evidence (change an input, see the verdict change)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hpcmorph.analyze import claims, distances, stats
from hpcmorph.analyze.inputs import AttackRows
from hpcmorph.analyze.stats import Estimate

# ------------------------------------------------------------------------------------------ stats


def test_bootstrap_is_seeded_and_reproducible():
    x = np.random.default_rng(0).normal(5.0, 2.0, 40)
    a = stats.bootstrap_ci(x, seed=7, stream=3)
    assert a == stats.bootstrap_ci(x.copy(), seed=7, stream=3)  # same input and seed: the same interval
    assert a.value == pytest.approx(x.mean()) and a.n == 40 and a.lo < a.value < a.hi
    other_seed, other_stream = stats.bootstrap_ci(x, seed=8, stream=3), stats.bootstrap_ci(x, seed=7, stream=4)
    assert (other_seed.lo, other_seed.hi) != (a.lo, a.hi) and (other_stream.lo, other_stream.hi) != (a.lo, a.hi)
    # The stream of a named quantity is stable across processes (not Python's salted hash).
    assert stats.stream_of("table2", "regular", "y10_y1") == 3963760316
    r = stats.ratio_ci(x, 2 * x + 1, seed=7)
    assert r == stats.ratio_ci(x, 2 * x + 1, seed=7) and r != stats.ratio_ci(x, 2 * x + 1, seed=9)
    assert r.n == (40, 40) and r.value == pytest.approx((2 * x + 1).mean() / x.mean())


def test_empty_single_and_nan_inputs_are_explicit():
    e = stats.bootstrap_ci([])
    assert e.n == 0 and math.isnan(e.value) and not e.has_ci
    one = stats.bootstrap_ci([3.0])
    assert one.value == 3.0 and one.n == 1 and not one.has_ci  # one value shows no spread
    with pytest.raises(stats.StatsError, match="1 of 3 values are NaN"):
        stats.bootstrap_ci([1.0, np.nan, 2.0])
    kept = stats.bootstrap_ci([1.0, np.nan, 2.0, 4.0], nan="omit")
    assert kept.n == 3 and kept.value == pytest.approx(7 / 3)
    with pytest.raises(stats.StatsError, match="level"):
        stats.bootstrap_ci([1.0, 2.0], level=95)
    assert stats.ratio_ci([], [1.0, 2.0]).n == (0, 2) and math.isnan(stats.ratio_ci([], [1.0]).value)
    assert not stats.ratio_ci([0.0, 0.0], [1.0, 2.0]).has_ci  # a zero denominator: no honest interval
    assert stats.t_ci([0.5]).n == 1 and not stats.t_ci([0.5]).has_ci
    welch = stats.welch_ci([0.1, 0.2], [0.3])
    assert not welch.has_ci and welch.value == pytest.approx(0.15)
    # Strict JSON: NaN becomes null; the dict round-trips.
    text = json.dumps([e.to_json(), r := stats.ratio_ci([1.0, 2.0], [2.0, 5.0]).to_json()], allow_nan=False)
    assert json.loads(text)[0]["value"] is None and Estimate.from_json(r) == stats.ratio_ci([1.0, 2.0], [2.0, 5.0])


def test_mean_std_over_seeds_is_the_sample_std():
    e = stats.mean_std([0.7, 0.8, 0.9])
    assert e.value == pytest.approx(0.8) and e.std == pytest.approx(0.1) and e.n == 3  # ddof 1, not 0.0816
    assert math.isnan(stats.mean_std([0.7]).std) and stats.mean_std([]).n == 0
    t = stats.t_ci([0.7, 0.8, 0.9])
    assert (t.hi - t.value) == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)  # t_2 at 97.5 %


def _coverage(draw, make_ci, truth, reps):
    return np.mean([make_ci(draw(i)).covers(truth) for i in range(reps)])


def test_bootstrap_covers_the_true_mean_at_about_the_nominal_rate():
    """400 samples of 40 from a skewed distribution: the 95 % interval covers the mean 0.90-0.98 of
    the time, and a 50 % one about half the time (so the check can tell levels apart)."""
    rng = np.random.default_rng(123)
    samples = rng.gamma(2.0, 1.5, size=(400, 40))  # mean 3.0
    cov95 = _coverage(lambda i: samples[i], lambda x: stats.bootstrap_ci(x, n_boot=1000, seed=1), 3.0, 400)
    cov50 = _coverage(lambda i: samples[i], lambda x: stats.bootstrap_ci(x, level=0.5, n_boot=1000, seed=1), 3.0, 400)
    assert 0.90 <= cov95 <= 0.98, cov95
    assert 0.40 <= cov50 <= 0.60, cov50


def test_ratio_interval_covers_the_true_ratio():
    rng = np.random.default_rng(5)
    cov = _coverage(lambda i: (rng.exponential(2.0, 60), rng.exponential(3.0, 45)),
                    lambda ab: stats.ratio_ci(*ab, n_boot=1000, seed=2), 1.5, 300)
    assert 0.89 <= cov <= 0.98, cov


def test_t_intervals_over_three_seeds_cover_at_the_nominal_rate():
    rng = np.random.default_rng(9)
    cov_t = _coverage(lambda i: rng.normal(0.3, 0.1, 3), stats.t_ci, 0.3, 3000)
    assert 0.935 <= cov_t <= 0.965, cov_t
    cov_w = _coverage(lambda i: (rng.normal(0.4, 0.02, 3), rng.normal(0.6, 0.1, 4)),
                      lambda ab: stats.welch_ci(*ab), 0.2, 3000)
    assert 0.93 <= cov_w <= 0.985, cov_w


def test_two_stage_bootstrap_keeps_the_spread_between_seeds():
    """Three seeds whose images sit at different levels: pooled, the images look like 150 independent
    values and the interval is narrow; resampling seeds first shows how little three seeds pin down."""
    rng = np.random.default_rng(2)
    groups = [rng.normal(level, 0.5, 50) for level in (1.0, 2.0, 3.0)]
    flat, nested = stats.bootstrap_ci(np.concatenate(groups), seed=1), stats.bootstrap_ci(groups, seed=1)
    assert flat.value == pytest.approx(nested.value) and nested.n == 150
    assert nested.method.startswith("bootstrap (seeds") and (nested.hi - nested.lo) > 4 * (flat.hi - flat.lo)
    assert stats.bootstrap_ci([groups[0]], seed=1) == stats.bootstrap_ci(groups[0], seed=1)  # one seed: plain


# ---------------------------------------------------------------------------- scale-free distances

def test_latent_scale_is_the_median_pairwise_distance_and_scales_with_the_space():
    z = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])  # pairs 3, 4, 5
    assert distances.latent_scale(z) == 4.0
    assert distances.latent_scale(-2.5 * z + 7.0) == pytest.approx(10.0)  # |c| times; a shift does nothing
    assert math.isnan(distances.latent_scale(np.zeros((4, 3)))) and math.isnan(distances.latent_scale(z[:1]))
    big = np.random.default_rng(0).normal(size=(3000, 8))
    assert distances.latent_scale(big, max_points=500) == pytest.approx(distances.latent_scale(big[:2000]), rel=0.05)
    with pytest.raises(ValueError):
        distances.scale_free([1.0], -1.0)


def _scaled_copy(model, c: float):
    """The same classifier with its latent space multiplied by ``c``: the bottleneck's output times c,
    the head's weights divided by c, so every logit (and class) is unchanged."""
    import copy

    import torch

    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.bottleneck.weight.mul_(c)
        twin.bottleneck.bias.mul_(c)
        twin.head.weight.div_(c)
    return twin


def test_scale_free_distances_do_not_see_a_scaled_copy_of_a_model():
    """A real (untrained) GalaxyNet and its copy with the latent space scaled by 6.5: the same
    classes, raw distances 6.5 times larger, scale-free distances and their ratio unchanged."""
    import torch

    from hpcmorph.train.model import build_model

    torch.manual_seed(0)
    model = build_model(seed=3).eval()
    with torch.no_grad():
        model.bottleneck.weight.mul_(100.0)  # a fresh model's latents sit near the origin; spread them out
    c = 6.5
    twin = _scaled_copy(model, c).eval()
    rng = np.random.default_rng(4)
    y10 = rng.normal(size=(12, 3, 32, 32)).astype(np.float32)
    y1 = y10 + rng.normal(0.0, 0.8, y10.shape).astype(np.float32)
    attacked = y10.copy()
    attacked[np.arange(12), :, rng.integers(0, 32, 12), rng.integers(0, 32, 12)] = 5.0  # one pixel each
    with torch.no_grad():
        out = {name: [m(torch.from_numpy(x)) for x in (y10, y1, attacked)] for name, m in (("regular", model),
                                                                                          ("mmd", twin))}
    for (za, la), (zb, lb) in zip(out["regular"], out["mmd"]):
        assert torch.equal(la.argmax(1), lb.argmax(1)) and torch.allclose(zb, c * za, rtol=1e-4, atol=1e-4)

    # Every image attacked once per model, and flipped: rows 0..11 regular, 12..23 the scaled copy.
    index = np.tile(np.arange(12), 2)
    attacks = AttackRows(variant=np.repeat([0, 1], 12).astype(np.int8), index=index, label=np.zeros(24, np.int8),
                         target=np.zeros(24, np.int8), success=np.ones(24, bool), queries=np.full(24, 10),
                         prob_after=np.zeros((24, 3), np.float32))
    z_att = np.concatenate([out["regular"][2][0].numpy(), out["mmd"][2][0].numpy()])
    z_y10 = np.stack([out["regular"][0][0].numpy(), out["mmd"][0][0].numpy()], axis=1)
    z_y1 = np.stack([out["regular"][1][0].numpy(), out["mmd"][1][0].numpy()], axis=1)
    table, per = distances.table2(attacks, z_att, np.arange(12), z_y10, z_y1, ["regular", "mmd"], seed=1, n_boot=500)
    assert table["mmd"]["latent_scale"] == pytest.approx(c * table["regular"]["latent_scale"], rel=1e-4)
    for kind in distances.KINDS:
        np.testing.assert_allclose(per["mmd"][kind], c * per["regular"][kind], rtol=1e-4)
        np.testing.assert_allclose(per["mmd"][kind + "_scale_free"], per["regular"][kind + "_scale_free"], rtol=1e-4)
        assert table["ratio_mmd_over_regular"][kind] == pytest.approx(c, rel=1e-4)
        assert table["ratios"]["scale_free"][kind]["value"] == pytest.approx(1.0, rel=1e-4)
        sf_reg, sf_mmd = table["regular"]["scale_free"][kind], table["mmd"]["scale_free"][kind]
        assert sf_mmd["value"] == pytest.approx(sf_reg["value"], rel=1e-4)
        # One stream per (model, kind): the models' intervals come from different resamples, but
        # each model's raw and scale-free intervals are the same interval in two units.
        lo, hi = table["mmd"]["mean_ci"][kind]
        assert lo / table["mmd"]["latent_scale"] == pytest.approx(sf_mmd["lo"], rel=1e-9)
        assert hi / table["mmd"]["latent_scale"] == pytest.approx(sf_mmd["hi"], rel=1e-9)
    json.dumps(table, allow_nan=False)


def _seed_result(seed: int, rng, n: dict[str, int], scale: dict[str, float]) -> dict:
    """The part of one seed's analysis that seeds.table2 reads: its Table 2 and per-image distances."""
    per = {}
    for v in ("regular", "mmd"):
        d = {kind: rng.gamma(4.0, 5.0, n[v]) for kind in distances.KINDS}
        per[v] = {**d, **{kind + "_scale_free": d[kind] / scale[v] for kind in distances.KINDS},
                  "latent_scale": scale[v]}
    return {"seed": seed, "variants": ["regular", "mmd"], "table2": {"from": f"seed {seed}"},
            "_panels": {"distances": per}}


def test_table2_over_seeds_pools_every_seeds_flipped_images():
    from hpcmorph.analyze import seeds

    rng = np.random.default_rng(5)
    results = [_seed_result(0, rng, {"regular": 10, "mmd": 5}, {"regular": 30.0, "mmd": 8.0}),
               _seed_result(1, rng, {"regular": 9, "mmd": 7}, {"regular": 35.0, "mmd": 6.0}),
               _seed_result(2, rng, {"regular": 0, "mmd": 8}, {"regular": 33.0, "mmd": 7.0})]
    # One seed: that seed's own table.
    assert seeds.table2(results[:1]) == {"from": "seed 0", "seeds": [0]}

    table = seeds.table2(results, seed=3, n_boot=400)
    assert table["seeds"] == [0, 1, 2] and table["bootstrap"]["resamples"] == "seeds, then images"
    for v in ("regular", "mmd"):
        for kind in distances.KINDS:
            pooled = np.concatenate([r["_panels"]["distances"][v][kind] for r in results])
            assert table[v][kind]["n"] == len(pooled) == {"regular": 19, "mmd": 20}[v]
            assert table[v][kind]["mean"] == pytest.approx(pooled.mean())
            assert table[v][kind]["std"] == pytest.approx(pooled.std())
            lo, hi = table[v]["mean_ci"][kind]
            assert lo < pooled.mean() < hi
            # Scale-free: each seed's distances in its own model's scale, then pooled.
            free = np.concatenate([r["_panels"]["distances"][v][kind] / r["_panels"]["distances"][v]["latent_scale"]
                                   for r in results])
            assert table[v]["scale_free"][kind]["value"] == pytest.approx(free.mean())
            assert table[v]["scale_free"][kind]["method"] == "bootstrap (seeds, then images)"
        assert table[v]["latent_scale"] == [r["_panels"]["distances"][v]["latent_scale"] for r in results]
    ratio = table["mmd"]["y10_attacked"]["mean"] / table["regular"]["y10_attacked"]["mean"]
    assert table["ratio_mmd_over_regular"]["y10_attacked"] == pytest.approx(ratio)
    assert table["ratios"]["raw"]["y10_attacked"]["value"] == pytest.approx(ratio)
    assert table == seeds.table2(results, seed=3, n_boot=400)  # seeded
    json.dumps(table, allow_nan=False)


# ------------------------------------------------------------------------------------------ claims

def _evidence(regular_y1=(0.55, 0.58, 0.52), mmd_y1=(0.80, 0.82, 0.79), ranges=("data", "[0, 1]"), seeds=3,
              mmd_distance_factor=(2.0, 2.5), mmd_queries=3.0, mmd_scale=1.0):
    """Evidence shaped like a 3-seed laptop run where every claim of the paper holds clearly."""
    rng = np.random.default_rng(11)
    ev: dict = {"configured_range": "data"}
    for s in range(seeds):
        for name, acc10, acc1, change, flipped, q, f in (
                ("regular", (0.83, 0.85, 0.81)[s], regular_y1[s], (0.40, 0.45, 0.42)[s], (20, 21, 19)[s], 1.0,
                 (1.0, 1.0)),
                ("mmd", (0.86, 0.88, 0.85)[s], mmd_y1[s], (0.12, 0.10, 0.15)[s], (18, 19, 20)[s], mmd_queries,
                 mmd_distance_factor)):
            n = flipped
            claims.add_seed(ev, name, s, accuracy_y10=acc10, accuracy_y1=acc1, class_change_y1=change,
                            attacks={r: (24, flipped) for r in ranges},
                            queries_per_flip=rng.gamma(2.0, 150.0 * q, n),
                            distance_y10_y1=rng.gamma(4.0, 0.1 * f[0], n),
                            distance_y10_attacked=rng.gamma(4.0, 0.1 * f[1], n),
                            raw_distance_y10_y1=rng.gamma(4.0, 3.0 * f[0], n))
    return ev


def _by_id(rows):
    return {(r["id"], r["variant"], r["range"]): r for r in rows}


def test_clear_evidence_reproduces_every_claim():
    rows = claims.claims(_evidence(), seed=0, n_boot=1000)
    assert [r["id"] for r in rows] == ["1", "2", "3", "3", "3", "3", "4", "5a", "5b", "6"]
    assert {r["verdict"] for r in rows} == {"reproduced"}, [(r["id"], r["verdict"], r["note"]) for r in rows]
    rows_by = _by_id(rows)
    one = rows_by[("1", "regular", None)]
    assert one["estimate"]["value"] == pytest.approx(np.mean([0.83 - 0.55, 0.85 - 0.58, 0.81 - 0.52]))
    assert one["estimate"]["n"] == 3 and one["estimate"]["method"] == "t" and one["paper_value"] == pytest.approx(0.29)
    assert one["paper_in_ci"] is True and set(one["parts"]) == {"regular Y10 accuracy", "regular Y1 accuracy"}
    three = rows_by[("3", "mmd", "[0, 1]")]
    assert three["estimate"]["value"] == pytest.approx(19 / 24) and three["no_effect"] == 0.5
    assert "57 of 72 images" in three["note"]
    assert "raw distance ratio, MMD / regular (the paper's measure)" in rows_by[("5a", None, "data")]["parts"]
    json.dumps(rows, allow_nan=False)
    assert claims.summary(rows)["reproduced"] == 10
    assert claims.claims(_evidence(), seed=0, n_boot=1000) == rows  # seeded: the same table again


def test_regular_y1_as_good_as_y10_does_not_reproduce_claim_1():
    rows = _by_id(claims.claims(_evidence(regular_y1=(0.84, 0.84, 0.82)), n_boot=200))
    r = rows[("1", "regular", None)]
    assert r["verdict"] == "not reproduced" and r["estimate"]["hi"] < 0.29 and r["estimate"]["lo"] <= 0
    assert r["paper_in_ci"] is False


def test_noisy_seeds_make_claim_1_inconclusive():
    # The README's two machines: regular Y1 0.61 on one, 0.39 on another; a third in between.
    r = _by_id(claims.claims(_evidence(regular_y1=(0.84, 0.46, 0.70)), n_boot=200))[("1", "regular", None)]
    assert r["verdict"] == "inconclusive" and r["estimate"]["lo"] <= 0 <= 0.29 <= r["estimate"]["hi"]


def test_mmd_no_better_on_y1_does_not_reproduce_claim_2():
    r = _by_id(claims.claims(_evidence(mmd_y1=(0.54, 0.57, 0.53)), n_boot=200))[("2", None, None)]
    assert r["verdict"] == "not reproduced", r


def test_each_claim_follows_its_own_evidence():
    """Reverse one input per claim and only that claim's verdict changes."""
    base = _by_id(claims.claims(_evidence(), n_boot=300))
    ev = _evidence(mmd_queries=0.3)  # MMD flips with a tenth of the queries
    ev["variants"]["regular"]["class_change_y1"] = [0.05, 0.08, 0.06]  # regular's Y1 images keep their class
    ev["variants"]["regular"]["attacks"]["data"]["flipped"] = [5, 6, 4]  # one pixel flips a fifth
    rows = _by_id(claims.claims(ev, n_boot=300))
    changed = {key for key in rows if rows[key]["verdict"] != base[key]["verdict"]}
    assert changed == {("4", None, "data"), ("6", None, None), ("3", "regular", "data")}, changed
    assert rows[("4", None, "data")]["verdict"] == rows[("6", None, None)]["verdict"] == "not reproduced"
    assert rows[("3", "regular", "data")]["verdict"] == "not reproduced"


def test_scale_free_distances_decide_claim_5():
    """MMD's raw distances twice the regular model's, but only because its latent space is twice as
    large: the scale-free ratio is about 1, so claim 5 is not reproduced, and the raw ratio beside it
    shows what the paper's measure would have said."""
    ev = _evidence(mmd_distance_factor=(1.0, 1.0))
    rng = np.random.default_rng(3)
    for name, factor in (("regular", 1.0), ("mmd", 2.0)):
        ev["variants"][name]["raw_distance_y10_attacked"] = [factor * rng.gamma(4.0, 3.0, 300) for _ in range(3)]
        ev["variants"][name]["distance_y10_attacked"] = [rng.gamma(4.0, 0.1, 300) for _ in range(3)]
    r = _by_id(claims.claims(ev, n_boot=500))[("5b", None, "data")]
    raw = r["parts"]["raw distance ratio, MMD / regular (the paper's measure)"]
    assert raw["lo"] > 1.5 and r["estimate"]["lo"] < 1.0 < r["estimate"]["hi"] < 2.27
    assert r["verdict"] == "not reproduced"


def test_missing_evidence_is_not_measured_never_guessed():
    ev = _evidence(ranges=("data",))
    for key in ("queries_per_flip", "class_change_y1"):
        del ev["variants"]["mmd"][key]
    rows = _by_id(claims.claims(ev, n_boot=200))
    for m in ("regular", "mmd"):
        r = rows[("3", m, "[0, 1]")]
        assert r["verdict"] == "not measured" and r["estimate"] is None and "[0, 1]" in r["note"]
        assert rows[("3", m, "data")]["verdict"] == "reproduced"
    assert rows[("4", None, "data")]["verdict"] == "not measured" and "mmd" in rows[("4", None, "data")]["note"]
    assert rows[("6", None, None)]["verdict"] == "not measured"
    empty = claims.claims({"variants": {}})
    assert {r["verdict"] for r in empty} == {"not measured"}


def test_one_seed_gives_no_interval_over_seeds():
    rows = _by_id(claims.claims(_evidence(seeds=1), n_boot=200))
    r = rows[("1", "regular", None)]
    assert r["verdict"] == "inconclusive" and r["estimate"]["lo"] is None and "one training seed" in r["note"]
    assert rows[("5b", None, "data")]["verdict"] == "reproduced"  # images still give an interval


def test_a_missing_seed_value_is_left_out_and_said():
    ev = _evidence()
    ev["variants"]["regular"]["accuracy_y1"][1] = math.nan
    r = _by_id(claims.claims(ev, n_boot=200))[("1", "regular", None)]
    assert r["estimate"]["n"] == 2 and "1 of 3 seeds lack this number" in r["note"]


def test_malformed_evidence_is_an_error():
    ev = _evidence()
    ev["variants"]["mmd"]["class_change_y1"] = [0.1, 0.2]
    with pytest.raises(claims.EvidenceError, match="2 values for 3 seeds"):
        claims.claims(ev)
    with pytest.raises(claims.EvidenceError):
        claims.claims([])


def test_verdict_rule():
    def e(lo, hi):
        return Estimate((lo + hi) / 2, lo, hi, 3)

    v = claims.verdict
    assert v(e(0.1, 0.4), 0.0, 0.29) == "reproduced"
    assert v(e(0.4, 0.6), 0.0, 0.29) == "reproduced"  # a larger effect than the paper's is still the effect
    assert v(e(-0.1, 0.2), 0.0, 0.29) == "not reproduced"
    assert v(e(-0.1, 0.3), 0.0, 0.29) == "inconclusive"
    assert v(e(-0.3, -0.1), 0.0, 0.29) == "not reproduced"
    assert v(e(-0.1, 0.3), 0.0, None) == "inconclusive" and v(e(-0.3, 0.0), 0.0, None) == "not reproduced"
    assert v(e(-0.4, -0.1), 0.0, -0.29, direction=-1) == "reproduced"
    assert v(e(-0.2, 0.1), 0.0, -0.29, direction=-1) == "not reproduced"
    assert v(Estimate(0.3, math.nan, math.nan, 1), 0.0, 0.29) == "inconclusive"
    assert v(None, 0.0, 0.29) == "not measured" and v(Estimate(math.nan, math.nan, math.nan, 0), 0.0) == "not measured"


def test_add_seed_keeps_lists_aligned_with_seeds():
    ev: dict = {}
    claims.add_seed(ev, "regular", 0, accuracy_y10=0.8, attacks={"data": (10, 6)})
    claims.add_seed(ev, "regular", 1, accuracy_y10=0.7, attacks={"[0, 1]": (10, 9)}, queries_per_flip=[5, 7])
    v = ev["variants"]["regular"]
    assert v["seeds"] == [0, 1] and v["accuracy_y10"] == [0.8, 0.7] and math.isnan(v["accuracy_y1"][0])
    assert v["attacks"]["data"]["flipped"][0] == 6 and math.isnan(v["attacks"]["data"]["flipped"][1])
    assert math.isnan(v["attacks"]["[0, 1]"]["attacked"][0]) and v["attacks"]["[0, 1]"]["attacked"][1] == 10
    assert v["queries_per_flip"] == [[], [5.0, 7.0]]
    assert claims.class_change(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])) == 0.5


# ------------------------------------------------------------------------------------------ figure

def test_robustness_figure_from_small_arrays(tmp_path):
    from hpcmorph.analyze import figures, queries

    np.testing.assert_allclose(queries.within_budget([40, 10, 10], 5, [1, 10, 39, 40, 1000]), [0, 0.4, 0.4, 0.6, 0.6])
    assert np.isnan(queries.within_budget([], 0, [1])).all()
    by_k = {"regular": [{1: 0.6, 2: 0.8, 3: 0.9}, {1: 0.5, 2: 0.85}], "mmd": [{1: 0.3, 2: 0.5, 3: 0.7}]}
    by_budget = {"regular": [(np.array([10, 40, 400]), 5), (np.array([20]), 4)], "mmd": [(np.array([300, 900]), 5)]}
    path = figures.robustness(by_k, by_budget, tmp_path / "robustness.png", budget=1200)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.with_suffix(".pdf").stat().st_size > 1000
    mean, std, n = figures._over_seeds(np.array([[0.6, 0.8, 0.9], [0.5, 0.85, np.nan]]))
    np.testing.assert_allclose(mean, [0.55, 0.825, 0.9])
    np.testing.assert_allclose(std, [np.std([0.6, 0.5], ddof=1), np.std([0.8, 0.85], ddof=1), 0.0])
    assert n.tolist() == [2, 2, 1]
    # A model with nothing attacked (no k = 1 output of the configured method) draws nothing, and
    # the figure is still made (it once failed on its log axis: the Slurm chain's analysis).
    empty = figures.robustness({"regular": [{}]}, {"regular": [(np.array([]), 0)]}, tmp_path / "empty.png")
    assert empty.exists()
