"""``hpcmorph run``: every stage in order, each skipped once its output is current for the config."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import ROOT, SMALL_RUN, cli, env, sets
from hpcmorph import attack, config
from hpcmorph.stages import NAMES
from test_report import needs_chromium

SMALL = ["--config", "tiny", *sets(SMALL_RUN)]
# Two seeds, each attacked in both value ranges: the analysis over seeds and the claims table.
SEEDS = sets(["train.seeds=[0, 1]", "analyze.all_seeds=true", "analyze.compare_ranges=true"])


def test_attack_configs_put_attack_pixels_first_and_run_each_k_once():
    cfg = config.load("tiny", ["analyze.k_sweep=[3, 1, 2, 3]"])
    assert [c.attack.pixels for c in attack.configs(cfg)] == [1, 3, 2]
    assert attack.configs(cfg)[0] is cfg
    cfg = config.load("tiny", ["attack.pixels=2", "analyze.k_sweep=[1]"])
    assert [c.attack.pixels for c in attack.configs(cfg)] == [2, 1]


def test_updated_config_is_validated_like_set():
    cfg = config.load("tiny")
    assert cfg.updated({"attack.pixels": 4}).attack.pixels == 4 and cfg.attack.pixels == 1
    with pytest.raises(config.ConfigError, match="attack.pixels"):
        cfg.updated({"attack.pixels": 0})
    with pytest.raises(config.ConfigError, match="did you mean 'attack.pixels'"):
        cfg.updated({"attack.pixel": 2})


def _outputs(run):
    return {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")
            if p.is_file() and p.name != "timings.json"}


@pytest.mark.slow
def test_run_chains_every_stage_and_a_rerun_redoes_nothing(tmp_path):
    run = tmp_path / "runs" / "tiny"
    cli(["run", *SMALL, *SEEDS, "--until", "train"], tmp_path)
    assert (run / "galaxies.h5").exists() and (run / "mmd" / "seed1" / "model.pt").exists()
    assert not (run / "attack.h5").exists()
    trained = _outputs(run)

    # The rest on two ranks: generate and train are current, so they are skipped, not redone.
    res = cli(["run", *SMALL, *SEEDS], tmp_path, ranks=2, timeout=600)
    after = _outputs(run)
    redone = [str(p) for p, t in trained.items() if after[p] != t]
    assert not redone, f"a finished stage was redone: {redone}"
    for name in ("attack.h5", "attack-k2.h5", "attack-r01.h5", "attack-s1.h5", "attack-s1-k2.h5", "attack-s1-r01.h5",
                 "analysis/analysis.json", "analysis/seed1/latents.h5", "analysis/robustness.png",
                 "report/index.html", "report/claims.md"):
        assert (run / name).exists(), f"{name} missing after hpcmorph run\n{res.stderr[-3000:]}"
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert analysis["over_seeds"]["seeds"] == [0, 1]
    over = analysis["over_seeds"]["models"]["regular"]
    assert over["accuracy_y10"]["n"] == 2 and set(over["flipped"]) == {"data", "[0, 1]"}
    assert over["accuracy_y10"]["values"][0] == analysis["test_accuracy"]["regular"]["y10"]
    # The comparison over both seeds: k = 2 was swept, k = 3 not; both value ranges at k = 1.
    comp = analysis["comparison"]
    assert comp["variants"] == ["regular", "mmd"] and comp["seeds"] == [0, 1] and comp["ranges"] == ["data", "[0, 1]"]
    for v, row in comp["rows"].items():
        by_k = analysis["over_seeds"]["models"][v]["success_vs_k"]
        assert row["success_k"]["2"]["values"] == by_k["flipped_fraction"][by_k["k"].index(2)]["values"]
        assert row["success_k"]["3"] is None and row["ece_y1"]["n"] == 2 and row["ece_y1"]["std"] is not None
        assert row["one_pixel"]["[0, 1]"]["search"]["values"] == \
            analysis["over_seeds"]["models"][v]["flipped"]["[0, 1]"]["fraction"]["values"]
    assert (run / "report" / "comparison.md").exists() and (run / "analysis" / "comparison.png").exists()
    verdicts = {r["verdict"] for r in analysis["claims"]}
    assert len(analysis["claims"]) >= 8 and verdicts <= {"reproduced", "not reproduced", "inconclusive",
                                                         "not measured"}
    timings = json.loads((run / "timings.json").read_text())
    assert [t["stage"] for t in timings] == ["generate", "train", *NAMES]
    assert [t["ranks"] for t in timings] == [1, 1, 2, 2, 2, 2, 2]

    res = cli(["run", *SMALL, *SEEDS], tmp_path)
    assert _outputs(run) == after, "a rerun rewrote an output"
    assert res.stderr.count("up to date") >= 4, res.stderr[-3000:]

    # The report in headless Chromium: every figure loads, the tables are there (screenshot kept in
    # the test's folder).
    needs_chromium()
    out = run / "report"
    nums = json.loads((out / "numbers.json").read_text())
    assert set(nums["table1"]["ours"]) == {"regular", "mmd"}
    shot = tmp_path / "report-screenshot.png"
    res = subprocess.run(["bash", str(ROOT / "scripts" / "check-report.sh"), str(out), str(shot)],
                         capture_output=True, text=True, env=env(), timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert shot.stat().st_size > 10_000
