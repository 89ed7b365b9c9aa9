"""Stage 4: the church-window grid, Table 2's selection, isomaps and re-observation on hand-built
inputs, then the stage end to end on the tiny preset (1 and 2 ranks, rerun, refusal, missing input)."""

from __future__ import annotations

import json
import shutil

import h5py
import matplotlib.image
import numpy as np
import pytest
import torch

from helpers import TINY_ANALYZE, TINY_ATTACK, assert_same_data, cli, datasets, flipped_images, workdir
from hpcmorph import config
from hpcmorph.analyze import church, distances, exposure, isomap, numbers, stage
from hpcmorph.analyze.inputs import AttackRows
from hpcmorph.attack.stage import load_model  # the attacked model: train.saved at attack.model_seed
from hpcmorph.generate.survey import bands


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------- church window

def _random_case(seed: int, dim: int = 16, k: int = 3):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(k, dim)), rng.normal(size=k)
    z0, z1, za = rng.normal(size=(3, dim))
    return w, b, z0, z1, za


@pytest.mark.parametrize("orthogonal", [False, True])
def test_church_grid_is_the_head_applied_point_by_point(orthogonal):
    w, b, z0, z1, za = _random_case(3)
    adv, noise = church.directions(z0, z1, za, orthogonal)
    xs = church.axis(1.1, 0.05)
    ys = church.axis(1.1, 0.05)[::-1][:30]  # a non-square, descending y axis: rows must follow ys
    grid = church.grid_classes(w, b, z0, adv, noise, xs, ys)
    assert grid.shape == (len(ys), len(xs)) and grid.dtype == np.int8
    reference = np.empty_like(grid)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            reference[i, j] = np.argmax(w @ (z0 + x * adv + y * noise) + b)
    np.testing.assert_array_equal(grid, reference)
    assert len(np.unique(grid)) > 1, "the random head should cut this window"
    # A torch head (the model's Linear) gives the same classes.
    head = torch.nn.Linear(16, 3).double()
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
        head.bias.copy_(torch.from_numpy(b))
        z = torch.from_numpy(z0 + xs[:, None] * adv)
        np.testing.assert_array_equal(head(z).argmax(1).numpy(),
                                      church.grid_classes(w, b, z0, adv, noise, xs, [0.0])[0])


def test_church_axis_and_markers():
    xs = church.axis(1.1, 0.01)
    assert len(xs) == 221 and xs[0] == -xs[-1] and np.isclose(xs[-1], 1.1) and 0.0 in xs
    w, b, z0, z1, za = _random_case(5)
    # The paper's raw directions: Y10 at the origin, attacked at (1, 0), Y1 at (0, 1).
    win = church.window(w, b, z0, z1, za, 1.1, 0.1)
    m = win["markers"]
    assert m["y10"] == (0.0, 0.0)
    np.testing.assert_allclose(m["attacked"], (1.0, 0.0), atol=1e-12)
    np.testing.assert_allclose(m["y1"], (0.0, 1.0), atol=1e-12)
    assert np.isclose(win["norm_noise"], np.linalg.norm(z1 - z0))
    # Orthogonalised: noise' is orthogonal to adv with |noise'| = |noise|, and the markers are where
    # the points are: z0 + x adv + y noise' gives back the attacked and the Y1 latents.
    adv, noise = church.directions(z0, z1, za, orthogonal=True)
    assert abs(adv @ noise) < 1e-10 and np.isclose(np.linalg.norm(noise), np.linalg.norm(z1 - z0))
    m = church.window(w, b, z0, z1, za, 1.1, 0.1, orthogonal=True)["markers"]
    for key, z in (("attacked", za), ("y1", z1)):
        x, y = m[key]
        np.testing.assert_allclose(z0 + x * adv + y * noise, z, atol=1e-10)
    cos = (z1 - z0) @ adv / (np.linalg.norm(z1 - z0) * np.linalg.norm(adv))
    np.testing.assert_allclose(m["y1"][1], np.sqrt(1 - cos ** 2), rtol=1e-10)
    with pytest.raises(ValueError, match="church window of"):
        church.grid_classes(w, b, z0, adv, noise, church.axis(100, 0.01), church.axis(100, 0.01))


# --------------------------------------------------------------------------------------- Table 2

def _attacks():
    """Three images attacked by two models. Model 0: image 5 flipped by both targets (target 2 with
    fewer queries), image 7 by both with equal queries (the lower target wins), image 9 not at all.
    Model 1: image 5 flipped by target 1 only."""
    rows = [  # variant, index, target, success, queries
        (0, 5, 1, True, 100), (0, 5, 2, True, 40),
        (0, 7, 0, True, 50), (0, 7, 2, True, 50),
        (0, 9, 0, False, 80), (0, 9, 1, False, 80),
        (1, 5, 1, True, 10), (1, 5, 2, False, 90),
        (1, 7, 0, False, 90), (1, 7, 2, False, 90),
    ]
    v, i, t, s, q = (np.array(c) for c in zip(*rows))
    return AttackRows(variant=v.astype(np.int8), index=i.astype(np.int64), label=np.zeros(len(rows), np.int8),
                      target=t.astype(np.int8), success=s.astype(bool), queries=q.astype(np.int64),
                      prob_after=np.tile([0.2, 0.3, 0.5], (len(rows), 1)).astype(np.float32))


def test_table2_takes_the_cheapest_successful_attack_and_population_std():
    att = _attacks()
    assert distances.chosen_attacks(att.variant, att.index, att.success, att.queries,
                                    att.target, 0).tolist() == [1, 2]
    assert distances.chosen_attacks(att.variant, att.index, att.success, att.queries,
                                    att.target, 1).tolist() == [6]
    # Latents in 2-d: every Y10 at the origin; attack row r's latent at distance 10 + r, so picking
    # another row would show; Y1 latents at distances 3 (image 5) and 5 (image 7).
    test_index = np.array([5, 7, 9])
    z_y10 = np.zeros((3, 2, 2))
    z_y1 = np.zeros((3, 2, 2))
    z_y1[0, :, 0], z_y1[1, :, 1] = 3.0, 5.0
    z_att = np.stack([[10.0 + r, 0.0] for r in range(len(att.index))])
    table, per_image = distances.table2(att, z_att, test_index, z_y10, z_y1, ["regular", "mmd"])
    assert per_image["regular"]["index"].tolist() == [5, 7] and per_image["mmd"]["index"].tolist() == [5]
    # regular: attacked distances 11 and 12 -> mean 11.5, population std 0.5; Y1 3 and 5 -> 4 +- 1.
    assert table["regular"]["y10_attacked"] == {"mean": 11.5, "std": 0.5, "n": 2}
    assert table["regular"]["y10_y1"] == {"mean": 4.0, "std": 1.0, "n": 2}
    assert table["mmd"]["y10_attacked"] == {"mean": 16.0, "std": 0.0, "n": 1}
    assert table["ratio_mmd_over_regular"] == {"y10_y1": 3.0 / 4.0, "y10_attacked": 16.0 / 11.5}
    # A model with nothing flipped: no mean, no ratio (and strict JSON).
    att.success[:] = False
    table, _ = distances.table2(att, z_att, test_index, z_y10, z_y1, ["regular", "mmd"])
    assert table["mmd"]["y10_y1"] == {"mean": None, "std": None, "n": 0}
    assert table["ratio_mmd_over_regular"] == {"y10_y1": None, "y10_attacked": None}
    json.dumps(table, allow_nan=False)
    assert "regular" in distances.format_table(table) and distances.PAPER["regular"]["y10_y1"]["mean"] == 20.2


def test_triplet_choice():
    att = _attacks()
    # Image 5 is flipped for both models; 7 for the first only.
    assert numbers.default_triplet(att, 2, y1_wrong=set()) == 5
    assert numbers.default_triplet(att, 2, y1_wrong={7}) == 5  # 7 is not flipped for every model
    att.success[6] = False  # now no image is flipped for both: the first flipped for any
    assert numbers.default_triplet(att, 2, y1_wrong=set()) == 5
    att.success[:] = False
    assert numbers.default_triplet(att, 2, y1_wrong=set()) == 5  # the first attacked
    att = _attacks()
    assert numbers.triplet_attack(att, 0, 5) == 1 and numbers.triplet_attack(att, 0, 7) == 2
    # Not flipped: the attack that came closest (highest target probability), ties to the lower target.
    att.prob_after[4] = [0.1, 0.1, 0.8]
    att.prob_after[5] = [0.1, 0.4, 0.5]
    assert numbers.triplet_attack(att, 0, 9) == 5
    assert numbers.triplet_attack(att, 1, 9) is None


# ---------------------------------------------------------------------------------------- isomap

def test_isomap_sample_and_fit_are_reproducible():
    rows = np.arange(100, 400, 3)
    a = isomap.sample(rows, 30, seed=4, include=None)
    assert len(a) == 30 and np.all(np.diff(a) > 0) and set(a) <= set(rows)
    assert np.array_equal(a, isomap.sample(rows, 30, seed=4))
    assert not np.array_equal(a, isomap.sample(rows, 30, seed=5))
    outside = int(next(r for r in rows if r not in a))
    b = isomap.sample(rows, 30, seed=4, include=outside)
    assert outside in b and len(b) == 30
    assert np.array_equal(isomap.sample(rows[:10], 30, seed=4), rows[:10])

    rng = np.random.default_rng(0)
    z10 = rng.normal(size=(120, 8))  # 240 points: scikit-learn's default solver would be ARPACK here
    z1 = z10 + 0.1 * rng.normal(size=z10.shape)
    first = isomap.fit(z10, z1, 5, extra=z10[:1] + 0.05)
    again = isomap.fit(z10, z1, 5, extra=z10[:1] + 0.05)
    assert first["y10"].shape == first["y1"].shape == (120, 2) and first["extra"].shape == (1, 2)
    for key in ("y10", "y1", "extra"):
        np.testing.assert_array_equal(first[key], again[key])
    small = isomap.fit(z10[:2], z1[:2], 5)
    assert small["n_neighbors"] == 3 and small["y10"].shape == (2, 2)


# ------------------------------------------------------------------------------------ exposure

def test_reobservation_is_reproducible_and_longer_exposures_are_less_noisy():
    yy, xx = np.mgrid[:24, :24]
    blob = 50.0 * np.exp(-((xx - 12) ** 2 + (yy - 12) ** 2) / 20.0)
    clean = np.stack([blob, 2 * blob, 3 * blob]).astype(np.float32)
    gri = bands(["g", "r", "i"])
    s = exposure.seeds(0, 17, 2, 3)
    assert len(set(s)) == 3 and all(1 <= x < 2 ** 31 - 1 for x in s)
    assert s == exposure.seeds(0, 17, 2, 3) and s != exposure.seeds(0, 18, 2, 3) and s != exposure.seeds(1, 17, 2, 3)
    one = exposure.reobserve(clean, gri, 0.2, 0.3, s)
    assert one.shape == clean.shape and one.dtype == np.float32
    np.testing.assert_array_equal(one, exposure.reobserve(clean, gri, 0.2, 0.3, s))
    assert not np.array_equal(one, exposure.reobserve(clean, gri, 0.2, 0.3, exposure.seeds(0, 17, 3, 3)))
    noise = {f: np.std(exposure.reobserve(clean, gri, 0.2, f, exposure.seeds(0, 17, j, 3)) - clean, axis=(1, 2))
             for j, f in enumerate([0.1, 1.0])}
    # Poisson noise in a rate falls as 1/sqrt(exposure): about sqrt(10) less at ten times the exposure.
    ratio = noise[0.1] / noise[1.0]
    assert np.all((ratio > 2.5) & (ratio < 4.0)), ratio
    assert exposure.has_clean(clean) and not exposure.has_clean(np.full((3, 4, 4), np.nan))


# ---------------------------------------------------------------------------------- end to end

# The session's tiny attack and analysis (helpers.TINY_ATTACK, TINY_ANALYZE): every targeted attack
# succeeds (threshold 0), so both models have flipped images for Table 2, whatever their weights.
ANALYZE = ["analyze", *TINY_ANALYZE]
TOP_KEYS = ["run", "digest", "seed", "provenance", "table1", "table2", "table2_by_range", "exposure", "success_vs_k",
            "triplet", "test_accuracy", "y1_class_change", "attack", "methods", "certification", "over_seeds", "claims",
            "calibration", "comparison", "effects", "effects_mmd", "figures"]


@pytest.fixture(scope="module")
def attacked(tiny_attacked):
    return tiny_attacked[0]


_workdir = workdir


@pytest.fixture(scope="module")
def serial(tiny_analyzed):
    run, stderr = tiny_analyzed
    return run / "analysis", stderr


def _flip_distances(att: dict, lat: dict, v: int) -> tuple[list, list]:
    """Model v's latent distances from Y10 of each flipped image's attacked image (its cheapest successful
    attack, the lower target among equals) and of its Y1 image, from attack_latents*.h5 and latents.h5."""
    d_att, d_y1 = [], []
    for image in np.unique(att["index"][(att["variant"] == v) & att["success"]]):
        rows = [r for r in range(len(att["index"]))
                if att["variant"][r] == v and att["index"][r] == image and att["success"][r]]
        row = min(rows, key=lambda r: (att["queries"][r], att["target"][r]))
        p = int(np.flatnonzero(lat["index"] == image)[0])
        z0 = lat["z_y10"][p, v].astype(np.float64)
        d_att.append(np.linalg.norm(att["z_attacked"][row] - z0))
        d_y1.append(np.linalg.norm(lat["z_y1"][p, v] - z0))
    return d_att, d_y1


def _numbers(out) -> dict:
    found = json.loads((out / "analysis.json").read_text())
    found.pop("provenance")
    return found


@pytest.mark.slow
def test_outputs_agree_with_the_inputs_and_each_other(serial, attacked):
    out, res = serial
    found = json.loads((out / "analysis.json").read_text())
    assert list(found) == TOP_KEYS and found["run"] == "tiny"
    lat, att = datasets(out / "latents.h5"), datasets(out / "attack_latents.h5")
    with h5py.File(attacked / "galaxies.h5", "r") as g:
        split, label, y10 = g["split"][...], g["label"][...], g["y10"][...]
    test = np.flatnonzero(split == 2)
    n = len(test)
    assert np.array_equal(lat["index"], test) and np.array_equal(lat["label"], label[test])
    assert lat["z_y10"].shape == lat["z_y1"].shape == (n, 2, 256) and lat["pred_y1"].shape == (n, 2)
    assert lat["pred_exposure"].shape == (n, 2, 6) and lat["pred_exposure"].min() >= 0
    with h5py.File(attacked / "attack.h5", "r") as a:
        attack = {k: a[k][...] for k in ("variant", "index", "target", "success", "queries", "pred_after")}
    for k in ("variant", "index", "target", "success", "queries"):
        assert np.array_equal(att[k], attack[k]), k
    assert att["z_attacked"].shape == (len(attack["index"]), 256)
    np.testing.assert_array_equal(att["pred_attacked"], attack["pred_after"])
    with h5py.File(out / "latents.h5", "r") as f:
        assert f.attrs["stage"] == "analyze" and f.attrs["variant_names"] == "regular,mmd"
        assert f.attrs["config_digest"] == found["digest"] and "doc" in f["z_y10"].attrs

    # The latents are the models' bottleneck outputs of the stretched images.
    cfg = config.load("tiny", [*(s for s in ANALYZE if "=" in s), f"run.root={out.parent.parent}"])
    for v, variant in enumerate(("regular", "mmd")):
        model, stretch = load_model(cfg, variant, torch.device("cpu"))
        with torch.no_grad():
            z, logits = model(stretch(torch.from_numpy(y10[test[:3]])))
        np.testing.assert_allclose(lat["z_y10"][:3, v], z.numpy(), rtol=1e-4, atol=1e-5)
        assert np.array_equal(lat["pred_y10"][:3, v], logits.argmax(1).numpy())

    # Table 2 recomputed from the h5 files, independently of distances.py.
    t2 = found["table2"]
    for v, variant in enumerate(("regular", "mmd")):
        d_att, d_y1 = _flip_distances(att, lat, v)
        assert len(d_att) > 0, f"{variant}: nothing flipped, though every targeted attack succeeds at threshold 0"
        assert t2[variant]["y10_attacked"]["n"] == len(d_att)
        np.testing.assert_allclose(t2[variant]["y10_attacked"]["mean"], np.mean(d_att), rtol=1e-6)
        np.testing.assert_allclose(t2[variant]["y10_attacked"]["std"], np.std(d_att), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(t2[variant]["y10_y1"]["mean"], np.mean(d_y1), rtol=1e-6)
    np.testing.assert_allclose(t2["ratio_mmd_over_regular"]["y10_attacked"],
                               t2["mmd"]["y10_attacked"]["mean"] / t2["regular"]["y10_attacked"]["mean"])
    assert t2["paper"]["regular"]["y10_attacked"] == {"mean": 16.8, "std": 5.0, "n": 136}

    # Exposure accuracy from the stored predictions; success against k from the attack summary.
    e = found["exposure"]
    assert e["fractions"] == [0.1, 0.2, 0.3, 0.5, 0.7, 1.0] and e["years"] == pytest.approx([1, 2, 3, 5, 7, 10])
    for v, variant in enumerate(("regular", "mmd")):
        correct = lat["pred_exposure"][:, v] == lat["label"][:, None]
        assert e["accuracy"][variant] == pytest.approx(list(correct.mean(0)))
    summary = found["attack"]["variants"]
    assert found["success_vs_k"] == {"k": [1], "missing_k": [], "flipped_fraction": {
        v: [summary[v]["flipped"] / summary[v]["attacked"]] for v in ("regular", "mmd")}}
    train = json.loads((attacked / "train_summary.json").read_text())
    assert found["table1"] == train["table1"]
    # One seed's models: their test accuracies are train's, and "over seeds" is that one seed.
    assert found["seed"] == 0 and found["over_seeds"]["seeds"] == [0]
    for v, variant in enumerate(("regular", "mmd")):
        run = next(r for r in train["runs"] if r["variant"] == variant and r["seed"] == 0)
        assert found["test_accuracy"][variant]["y10"] == pytest.approx(run["y10"]["accuracy"])
        assert found["test_accuracy"][variant]["y1"] == pytest.approx(run["y1"]["accuracy"])
        changed = np.mean(lat["pred_y1"][:, v] != lat["pred_y10"][:, v])
        assert found["y1_class_change"][variant] == pytest.approx(changed)
        over = found["over_seeds"]["models"][variant]["accuracy_y1"]
        assert over["values"] == [found["test_accuracy"][variant]["y1"]] and over["std"] is None
    # One seed cannot tell an effect from the noise between seeds: those claims are inconclusive.
    first = next(r for r in found["claims"] if r["id"] == "1")
    assert first["verdict"] == "inconclusive"

    # Success against queries: the one k = 1 attack here (DE, the data's range), from its rows.
    m = found["methods"]
    assert m["configured"] == {"method": "de", "range": "data", "pixels": 1} and list(m["ranges"]) == ["data"]
    assert m["ranges"]["data"]["files"] == {"de": "attack.h5"}
    for v, variant in enumerate(("regular", "mmd")):
        row = m["ranges"]["data"]["models"][variant]["de"]
        assert row["flipped"] == summary[variant]["flipped"] and row["oracle_flippable"] is None
        sel = (attack["variant"] == v) & attack["success"]
        first = [attack["queries"][sel & (attack["index"] == i)].min() for i in np.unique(attack["index"][sel])]
        assert row["curve"]["queries"] == sorted(set(int(q) for q in first))
        assert row["curve"]["flipped_fraction"][-1] == pytest.approx(row["flipped"] / row["attacked"])
        assert row["median_queries_to_flip"] == summary[variant]["median_queries_to_flip"]

    # The triplet: an attacked image, flipped for both models; its distances are the latents'.
    t = found["triplet"]
    p = int(np.flatnonzero(lat["index"] == t["index"])[0])
    for v, variant in enumerate(("regular", "mmd")):
        tv = t["variants"][variant]
        assert tv["flipped"] and att["index"][tv["attack_row"]] == t["index"]
        assert tv["target"] == att["target"][tv["attack_row"]] != t["label"]
        assert tv["pred_y1"] == lat["pred_y1"][p, v]
        np.testing.assert_allclose(tv["distance_attacked"], np.linalg.norm(
            att["z_attacked"][tv["attack_row"]].astype(np.float64) - lat["z_y10"][p, v]), rtol=1e-9)
        np.testing.assert_allclose(tv["markers"]["attacked"], [1, 0], atol=1e-6)

    # Figures: every one listed, PNG and PDF, not blank.
    assert set(found["figures"]) == {"figure2", "church_windows", "isomaps", "exposure", "success_vs_k", "distances",
                                     "success_vs_queries", "robustness", "calibration", "comparison"}
    for name in found["figures"].values():
        assert matplotlib.image.imread(out / name)[..., :3].std() > 0.02, name
        assert (out / name).with_suffix(".pdf").stat().st_size > 1000
    assert "Table 2" in res and "| Y10 - attacked | mmd |" in res
    assert not list(out.glob("*.tmp*"))


def _calibration_by_hand(model, z: np.ndarray, labels: np.ndarray, bins: int) -> tuple[float, float]:
    """(top-label ECE, multiclass Brier) of the model's head on latents z, written out bin by bin."""
    w, b = model.head.weight.detach().double().numpy(), model.head.bias.detach().double().numpy()
    logits = z.astype(np.float64) @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, right = p.max(1), p.argmax(1) == labels
    ece = 0.0
    for i in range(bins):
        inside = (conf > i / bins) & (conf <= (i + 1) / bins)
        if inside.any():
            ece += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    brier = np.mean([np.sum((p[j] - np.eye(p.shape[1])[labels[j]]) ** 2) for j in range(len(labels))])
    return ece, brier


def _check_comparison(found: dict, run, lat: dict, models: dict, attacked_variants: list[str]) -> None:
    """The comparison has a row per trained variant, in train.variants order; its accuracies are
    train_summary.json's, its calibration the head's on latents (``lat`` for the attacked models,
    ``models``' own forward pass otherwise), its one-pixel success the attack summary's."""
    train = json.loads((run / "train_summary.json").read_text())
    trained = list(dict.fromkeys(r["variant"] for r in train["runs"]))
    c = found["comparison"]
    assert c["variants"] == list(c["rows"]) == trained and c["seeds"] == [0] and c["k"] == [2, 3]
    summary = found["attack"]["variants"]
    bins = found["calibration"]["bins"]
    assert bins == c["calibration_bins"] == 15
    for variant in trained:
        row = c["rows"][variant]
        runs = sorted((r for r in train["runs"] if r["variant"] == variant), key=lambda r: r["seed"])
        assert row["train_images_per_s"]["values"] == [r["train_images_per_s"] for r in runs]
        regular = c["rows"]["regular"]["train_images_per_s"]["mean"]
        assert row["train_time_ratio"] == pytest.approx(regular / row["train_images_per_s"]["mean"])
        for d in ("y10", "y1"):
            runs = sorted((r for r in train["runs"] if r["variant"] == variant), key=lambda r: r["seed"])
            assert row[f"accuracy_{d}"]["values"] == [r[d]["accuracy"] for r in runs]
            model, stretch = models[variant]
            if variant in attacked_variants:
                z = lat[f"z_{d}"][:, attacked_variants.index(variant)]
            else:
                with torch.no_grad(), h5py.File(run / "galaxies.h5", "r") as g:
                    z = model(stretch(torch.from_numpy(g[d][lat["index"]])))[0].numpy()
            ece, brier = _calibration_by_hand(model, z, lat["label"].astype(int), bins)
            assert row[f"ece_{d}"]["values"] == [pytest.approx(ece, rel=1e-4, abs=1e-6)], (variant, d)
            assert row[f"brier_{d}"]["values"] == [pytest.approx(brier, rel=1e-4)], (variant, d)
            assert found["calibration"]["variants"][variant][d]["n"] == [len(lat["label"])]
        assert row["attacked"] == (variant in attacked_variants)
        if variant in attacked_variants:
            s = summary[variant]
            assert row["one_pixel"]["data"]["search"]["values"] == [s["flipped"] / s["attacked"]]
            # Not certified, no exhaustive search, k = 2 and 3 not swept: not run, never 0.
            assert row["one_pixel"]["data"]["exact"] is None and row["success_k"] == {"2": None, "3": None}
            t2 = found["table2"][variant]["scale_free"]["y10_attacked"]
            assert row["distance_y10_attacked"] == t2 and t2["n"] == s["flipped"]
        else:
            assert row["one_pixel"] == {"data": None} and row["distance_y10_y1"] is None
            assert set(row["success_k"].values()) == set(row["within_budget"].values()) == {None}


@pytest.mark.slow
def test_the_comparison_has_every_trained_variant_and_the_stages_numbers(serial, attacked):
    out = serial[0]
    found = json.loads((out / "analysis.json").read_text())
    cfg = config.load("tiny", [*(s for s in ANALYZE if "=" in s), f"run.root={out.parent.parent}"])
    models = {v: load_model(cfg, v, torch.device("cpu")) for v in ("regular", "mmd")}
    _check_comparison(found, attacked, datasets(out / "latents.h5"), models, ["regular", "mmd"])
    for name in ("calibration", "comparison"):
        assert found["figures"][name] == f"{name}.png"
        assert matplotlib.image.imread(out / f"{name}.png")[..., :3].std() > 0.02, name


@pytest.mark.slow
def test_each_variant_is_set_against_regular_image_by_image(serial, attacked):
    """effects: the paired differences equal what attack.h5 and latents.h5 say image by image, and
    the verdict is what the interval says."""
    effects = json.loads((serial[0] / "analysis.json").read_text())["effects"]
    assert effects["baseline"] == "regular" and list(effects["variants"]) == ["mmd"]
    row = effects["variants"]["mmd"]
    flipped = [flipped_images(attacked / "attack.h5")[v] for v in ("regular", "mmd")]
    both = sorted(set(flipped[0]) & set(flipped[1]))
    assert both and row["flip_rate"]["n"] == len(both)
    assert row["flip_rate"]["value"] == pytest.approx(np.mean([flipped[1][i] - flipped[0][i] for i in both]))
    lat = datasets(serial[0] / "latents.h5")
    right = lat["pred_y1"] == lat["label"][:, None]
    assert row["y1_accuracy"]["n"] == len(lat["label"])
    assert row["y1_accuracy"]["value"] == pytest.approx(right[:, 1].mean() - right[:, 0].mean())
    for key, verdict in (("flip_rate", "robustness"), ("y1_accuracy", "y1_cost")):
        e = row[key]
        if e["lo"] is None:
            assert row[verdict] == "no interval"
        else:
            assert e["lo"] <= e["value"] <= e["hi"]
            assert (row[verdict] == "no clear difference") == (e["lo"] <= 0 <= e["hi"]), (key, e, row[verdict])


@pytest.mark.slow
@pytest.mark.mpi
def test_two_ranks_give_the_same_outputs(serial, attacked, tmp_path):
    cwd = _workdir(tmp_path, attacked)
    cli(ANALYZE, cwd, ranks=2)
    out = cwd / "runs" / "tiny" / "analysis"
    for name in ("latents.h5", "attack_latents.h5"):
        assert_same_data(serial[0] / name, out / name)
    assert _numbers(out) == _numbers(serial[0])
    with h5py.File(out / "latents.h5", "r") as f:
        assert f.attrs["ranks"] == 2


@pytest.mark.slow
def test_rerun_is_a_no_op_and_other_settings_are_refused_unless_forced(serial, attacked, tmp_path):
    cwd = _workdir(tmp_path, attacked)
    shutil.copytree(serial[0], cwd / "runs" / "tiny" / "analysis")
    out = cwd / "runs" / "tiny" / "analysis"
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = cli(ANALYZE, cwd)
    assert "analyze: up to date" in res.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    # Another k_sweep is another analysis: refused, then made with --force; k = 2 was never
    # attacked, so it is reported missing (a warning), not an error.
    other = [*ANALYZE, "--set", "analyze.k_sweep=[1,2]", "--set", "analyze.exposure_fractions=[0.1,1.0]"]
    res = cli(other, cwd, check=False)
    assert res.returncode == 2 and "exists from a different config" in res.stderr, res.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    res = cli([*other, "--force", "--set", "analyze.figures=false"], cwd)
    assert "no current attack output for k=2" in res.stderr
    found = json.loads((out / "analysis.json").read_text())
    assert found["success_vs_k"]["k"] == [1] and found["success_vs_k"]["missing_k"] == [2]
    assert found["exposure"]["years"] == pytest.approx([1.0, 10.0])
    assert found["figures"] == dict.fromkeys(found["figures"])  # none drawn
    assert datasets(out / "latents.h5")["pred_exposure"].shape[-1] == 2
    # Settings that change no number are not part of the digest; the k = 2 attack appearing is.
    cfg = config.load("tiny", [*(s for s in other if "=" in s), f"run.root={cwd / 'runs'}"])
    assert found["digest"] == stage.digest(cfg)
    neutral = {"analyze.batch_size": 3, "analyze.figures": True, "analyze.threads": 2}
    assert stage.digest(cfg.updated(neutral)) == found["digest"]
    assert stage.digest(cfg.updated({"analyze.church_step": 0.02})) != found["digest"]
    shutil.copy(cwd / "runs" / "tiny" / "attack.h5", cwd / "runs" / "tiny" / "attack-k2.h5")
    assert stage.digest(cfg) == found["digest"], "a k=2 file from other settings is no attack of this config"


@pytest.mark.slow
def test_missing_attack_is_a_clear_error(attacked, tmp_path):
    cwd = _workdir(tmp_path, attacked)
    (cwd / "runs" / "tiny" / "attack.h5").unlink()
    res = cli(ANALYZE, cwd, check=False)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "attack.h5: no such file; run `hpcmorph attack --config" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (cwd / "runs" / "tiny" / "analysis" / "analysis.json").exists()


@pytest.mark.slow
def test_both_value_ranges_give_their_own_table2_and_claims(attacked, tmp_path):
    """analyze.compare_ranges: the run's k = 1 attack in [0, 1] (attack-r01.h5) beside the data range's
    gets its own latents, Table 2 and claims 3, 4, 5a and 5b rows, each from its own attack file."""
    cwd = _workdir(tmp_path, attacked)
    run = cwd / "runs" / "tiny"
    cli(["attack", *TINY_ATTACK, "--set", "attack.pixel_range=[0,1]", "--set", "attack.figures=false"], cwd)
    # Only what Table 2 and the claims need: no figures, two exposures, a small isomap.
    cli([*ANALYZE, "--set", "analyze.compare_ranges=true", "--set", "analyze.figures=false",
         "--set", "analyze.exposure_fractions=[0.1,1.0]", "--set", "analyze.isomap_images=20"], cwd)
    out = run / "analysis"
    found = json.loads((out / "analysis.json").read_text())
    by_range = found["table2_by_range"]
    assert list(by_range) == ["data", "[0, 1]"] and by_range["data"] == found["table2"]
    assert list(found["methods"]["ranges"]) == ["data", "[0, 1]"]
    lat = datasets(out / "latents.h5")
    claims = {(r["id"], r["range"], r["variant"]): r for r in found["claims"]}
    for name, suffix in (("data", ""), ("[0, 1]", "-r01")):
        att = datasets(out / f"attack_latents{suffix}.h5")
        with h5py.File(run / f"attack{suffix}.h5", "r") as a:
            attack = {k: a[k][...] for k in ("variant", "index", "target", "success", "queries", "pred_after")}
            assert a.attrs["pixel_range"] == "data range (data_range_<variant>)" if suffix == "" else \
                list(a.attrs["pixel_range"]) == [0.0, 1.0]
        for k in ("variant", "index", "target", "success", "queries"):
            assert np.array_equal(att[k], attack[k]), (name, k)
        np.testing.assert_array_equal(att["pred_attacked"], attack["pred_after"])
        t2, n = by_range[name], {}
        for v, variant in enumerate(("regular", "mmd")):
            d_att, d_y1 = _flip_distances(att, lat, v)
            n[variant] = len(d_att)
            assert n[variant] > 0, f"{name}, {variant}: nothing flipped at threshold 0"
            assert t2[variant]["y10_attacked"]["n"] == n[variant]
            np.testing.assert_allclose(t2[variant]["y10_attacked"]["mean"], np.mean(d_att), rtol=1e-6)
            np.testing.assert_allclose(t2[variant]["y10_y1"]["mean"], np.mean(d_y1), rtol=1e-6)
            flipped = len(np.unique(attack["index"][(attack["variant"] == v) & attack["success"]]))
            attacked_images = len(np.unique(attack["index"][attack["variant"] == v]))
            three = claims[("3", name, variant)]
            assert three["estimate"]["value"] == pytest.approx(flipped / attacked_images)
        # Claims 4, 5a, 5b have a row for each range, over that range's flipped images.
        for cid in ("4", "5a", "5b"):
            r = claims[(cid, name, None)]
            assert r["estimate"] is not None and f"{n['regular']} + {n['mmd']} flipped images" in r["note"]
        raw = claims[("5b", name, None)]["parts"]["raw distance ratio, MMD / regular (the paper's measure)"]
        assert raw["value"] == pytest.approx(t2["mmd"]["y10_attacked"]["mean"] / t2["regular"]["y10_attacked"]["mean"])
    # The two files attack the same images: the ranges differ in what a pixel may take, not where.
    with h5py.File(run / "attack.h5", "r") as a, h5py.File(run / "attack-r01.h5", "r") as b:
        assert np.array_equal(a["index"][...], b["index"][...]) and np.array_equal(a["target"][...], b["target"][...])
        assert not np.array_equal(a["pixel_values"][...], b["pixel_values"][...])
