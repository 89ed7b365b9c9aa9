"""The k = 1 comparison attacks (methods, value ranges) and the success-against-queries curves."""

from __future__ import annotations

import numpy as np
import pytest

from hpcmorph import attack, config
from hpcmorph.analyze import queries
from hpcmorph.attack import compare, stage


def test_each_value_range_and_method_writes_its_own_file():
    names = {stage.output_path(config.load("tiny", sets)).name for sets in (
        [], ["attack.pixel_range=[0, 1]"], ["attack.method=saliency"], ["attack.method=saliency",
                                                                         "attack.pixel_range=[0, 1]"],
        ["attack.pixel_range=[0.2, 0.9]"], ["attack.pixels=2", "attack.pixel_range=[0, 1]"])}
    assert names == {"attack.h5", "attack-r01.h5", "attack-saliency.h5", "attack-saliency-r01.h5",
                     "attack-r0.2_0.9.h5", "attack-k2-r01.h5"}


def test_attack_configs_add_the_k1_comparisons_once():
    cfg = config.load("tiny", ["attack.method=saliency", "analyze.k_sweep=[1, 2]",
                               "analyze.compare_methods=[exhaustive, saliency]", "analyze.compare_ranges=true"])
    got = [(c.attack.method, c.attack.pixel_range, c.attack.pixels) for c in attack.configs(cfg)]
    assert got == [("saliency", None, 1), ("saliency", None, 2), ("exhaustive", None, 1),
                   ("saliency", [0.0, 1.0], 1), ("exhaustive", [0.0, 1.0], 1)]
    assert attack.configs(cfg)[0] is cfg
    # Only what the settings change: the other attack settings are the run's.
    assert all(c.attack.max_queries == cfg.attack.max_queries for c in attack.configs(cfg))
    # Without comparisons, the run's attacks are today's; from [0, 1], the other range is the data's.
    assert len(attack.configs(config.load("tiny", ["analyze.k_sweep=[1, 2]"]))) == 2
    r01 = config.load("tiny", ["attack.pixel_range=[0, 1]", "analyze.compare_ranges=true"])
    assert [c.attack.pixel_range for c in attack.configs(r01)] == [[0.0, 1.0], None]
    with pytest.raises(config.ConfigError, match="compare_methods"):
        config.load("tiny", ["analyze.compare_methods=[cma]"])


def test_all_seeds_attacks_every_seed_without_the_methods_comparison():
    cfg = config.load("tiny", ["train.seeds=[3, 5]", "analyze.k_sweep=[1, 2]", "analyze.all_seeds=true",
                               "analyze.compare_ranges=true", "analyze.compare_methods=[exhaustive]"])
    names = [stage.output_path(c).name for c in attack.configs(cfg)]
    assert names == ["attack.h5", "attack-k2.h5", "attack-exhaustive.h5", "attack-r01.h5", "attack-exhaustive-r01.h5",
                     "attack-s5.h5", "attack-s5-k2.h5", "attack-s5-r01.h5"]
    # null and the first seed spelled out are one attack: one file, one digest.
    first = cfg.updated({"attack.model_seed": 3})
    assert stage.output_path(first) == stage.output_path(cfg) and stage.digest(first) == stage.digest(cfg)
    assert stage.digest(cfg.updated({"attack.model_seed": 5})) != stage.digest(cfg)
    assert len(attack.configs(cfg.updated({"analyze.all_seeds": False}))) == 5


def test_all_k1_configs_cover_every_method_in_both_ranges():
    found = {stage.output_path(c).name for c in compare.all_k1_configs(config.load("tiny", ["attack.pixels=2"]))}
    assert len(found) == 8 and {"attack.h5", "attack-exhaustive-r01.h5"} <= found


def test_success_curve_from_a_hand_made_attack_table():
    # Three images, two targets each: image 10 flips at 30 queries (its cheaper target), image 20 at
    # 500, image 30 never (its 7-query attack failed: a failure's queries do not count).
    cols = {"variant": np.array([0, 0, 0, 0, 0, 0, 1, 1]),
            "index": np.array([10, 10, 20, 20, 30, 30, 10, 10]),
            "success": np.array([True, True, False, True, False, False, True, False]),
            "queries": np.array([90, 30, 2100, 500, 7, 2100, 4, 2100])}
    row = queries.method_row(cols, 0, 12.5, 2100)
    assert row["curve"] == {"queries": [30, 500], "flipped_fraction": [pytest.approx(1 / 3), pytest.approx(2 / 3)]}
    assert (row["attacked"], row["flipped"], row["successful_attacks"]) == (3, 2, 3)
    assert row["median_queries_to_flip"] == 90 and row["mean_queries_to_flip"] == pytest.approx(620 / 3)
    assert row["wall_seconds"] == 12.5 and row["flipped_rows"] == [10, 20]
    assert queries.fraction_at(row["curve"], 29) == 0 and queries.fraction_at(row["curve"], 499) == pytest.approx(1 / 3)
    assert queries.fraction_at(row["curve"], 10 ** 6) == pytest.approx(2 / 3)
    other = queries.method_row(cols, 1, None, 2100)
    assert other["curve"] == {"queries": [4], "flipped_fraction": [1.0]}


def test_methods_table_shows_each_range_model_and_method():
    from hpcmorph.report import tables

    row = {"attacked": 3, "flipped": 2, "median_queries_to_flip": 90.0, "mean_queries_to_flip": 206.7,
           "budget": 2100, "wall_seconds": 12.5, "oracle_flippable": 2, "flipped_of_oracle": 2}
    methods = {"configured": {"method": "saliency", "range": "data", "pixels": 1},
               "ranges": {"data": {"models": {"regular": {"saliency": row, "exhaustive": {**row, "budget": 8192}}}},
                          "[0, 1]": {"models": {"mmd": {"saliency": {**row, "oracle_flippable": None,
                                                                     "flipped_of_oracle": None}}}}}}
    t = tables.methods_table(methods)
    assert [r[:5] for r in t.rows] == [["data", "Regular training", "saliency", "2 / 3", "2 / 2"],
                                       ["data", "Regular training", "exhaustive", "2 / 3", "2 / 2"],
                                       ["[0, 1]", "Domain adaptation (MMD)", "saliency", "2 / 3", None]]
    assert t.rows[0][5:] == ["90.0", "207", "2100", "12.5"] and t.records[1]["budget"] == 8192
    assert tables.methods_table(None).rows == []
