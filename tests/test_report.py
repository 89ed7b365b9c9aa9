"""Stage 5: the tables in every format, the page's escaping, the atomic replace, the errors, the browser
check on a made-up run folder, and the whole pipeline end to end on the tiny preset, checked in
headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
import subprocess

import pytest

from helpers import ROOT, cli, env, serial
from hpcmorph import config
from hpcmorph.errors import StageError, UserError
from hpcmorph.report import browser, stage, tables

CHECK = ROOT / "scripts" / "check-report.sh"


def needs_chromium() -> None:
    """Skip without Chromium, except in CI, where the check must run (make test installs it)."""
    if browser.find_chromium() is None and os.environ.get("CI") != "true":
        pytest.skip("no chromium (scripts/apt-tool.sh chromium installs it)")


# ------------------------------------------------------------------------------------------ tables

TABLE1 = {"regular": {"y10": {"accuracy": [0.71234, 0.0213], "precision": [0.75, 0.01], "recall": [0.71, 0.02],
                              "f1": [0.7, 0.03]},
                      "y1": {"accuracy": [0.4, 0.05], "precision": [0.6, 0.0], "recall": [0.4, 0.05],
                             "f1": [float("nan"), 0.1]},
                      "seeds": [0, 1]}}
TABLE2 = {"regular": {"y10_y1": {"mean": 20.24, "std": 11.91, "n": 4},
                      "y10_attacked": {"mean": 0.81234, "std": 0.1, "n": 4}},
          "ratio_mmd_over_regular": {"y10_y1": None, "y10_attacked": None}}


def test_numbers_are_formatted_like_the_paper():
    assert [tables.number(x) for x in (20.2, 0.81234, 136, 1.5, 0)] == ["20.2", "0.812", "136", "1.50", "0.00"]
    assert tables.number(None) is None and tables.number(float("nan")) is None and tables.number("x") is None
    assert tables.mean_std(16.8, 5.0) == "16.8 ± 5.0"
    assert tables.mean_std(0.71234, 0.0213, 2) == "0.71 ± 0.02"
    assert tables.mean_std(20.24, 11.91, n=136) == "20.2 ± 11.9 (n=136)"
    assert tables.mean_std(None, 1.0) is None


def test_table1_in_markdown_latex_and_csv_with_a_missing_variant():
    from hpcmorph.train.metrics import METRICS

    assert tables.METRICS == METRICS
    t = tables.table1(TABLE1)
    md, tex, csv_text = tables.markdown(t), tables.latex(t), tables.to_csv(t)
    # Ours beside the paper's; the untrained mmd model and the NaN F1 are dashes.
    assert "| Regular training (2 seeds) | accuracy | 0.71 ± 0.02 | 0.72 | 0.40 ± 0.05 | 0.43 |" in md
    assert "| Domain adaptation (MMD) | accuracy | – | 0.82 | – | 0.66 |" in md
    assert "|  | f1 | 0.70 ± 0.03 | 0.72 | – | 0.36 |" in md
    assert r"0.71 $\pm$ 0.02 & 0.72" in tex and r"Domain adaptation (MMD) & accuracy & -- & 0.82" in tex
    assert tex.count(r"\\") == 1 + 8 and r"\begin{tabular}{lccccc}" in tex
    lines = csv_text.splitlines()
    assert lines[0] == "variant,domain,metric,mean,std,seeds,paper"
    assert "regular,y10,accuracy,0.71234,0.0213,2,0.72" in lines  # full precision in the CSV
    assert "mmd,y1,f1,,,,0.67" in lines and "regular,y1,f1,,0.1,2,0.36" in lines


def test_table2_with_null_ratio_and_missing_variant():
    t = tables.table2(TABLE2, pixels=1)
    md = tables.markdown(t)
    assert "| Y10 – Y1 | 20.2 ± 11.9 (n=4) | 20.2 ± 11.9 (n=136) | – | 29.7 ± 17.4 (n=136) | – | 1.47 |" in md
    assert ("| Y10 – one-pixel attacked | 0.812 ± 0.100 (n=4) | 16.8 ± 5.0 (n=136) | – | 38.1 ± 15.5 (n=136) | – "
            "| 2.27 |") in md
    assert "ratio_mmd_over_regular" not in t.header  # not a model
    assert "-- & 29.7 $\\pm$ 17.4 (n=136) & -- & 1.47" in tables.latex(t)
    assert "ratio_mmd_over_regular,y10_attacked,,,,2.267857" in tables.to_csv(t)  # null ratio: empty cells
    assert "pooled" not in t.caption
    pooled = tables.table2({**TABLE2, "seeds": [0, 1, 2], "bootstrap": {"level": 0.95}})
    assert "seeds 0, 1, 2 are pooled" in pooled.caption and "resampling seeds, then images" in pooled.caption
    # Nothing at all: every cell a dash, never a crash.
    empty = tables.table2(None, pixels=2)
    assert empty.rows[1][0] == "Y10 – 2-pixel attacked" and empty.rows[0][1] is None and empty.rows[0][2]
    assert tables.markdown(tables.table1({"mmd": {"y10": None}}))


def test_latex_and_html_escape_run_text():
    assert tables.latex_escape("a_b & 50% #1") == r"a\_b \& 50\% \#1"
    t = tables.text_table("x", "<caption>", ["<th>"], [["<b>&</b>"], [None]])
    out = tables.to_html(t)
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in out and "<b>" not in out and "<td>–</td>" in out


# -------------------------------------------------------------------------------- a made-up run

def _png_pdf(folder, stem):
    """A real (small) figure, PNG and PDF, written by the project's own plots.save."""
    import matplotlib.pyplot as plt

    from hpcmorph import plots

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [0, 1])
    ax.set_title(stem, fontsize=7)
    return plots.save(fig, folder / f"{stem}.png")[0]


@pytest.fixture(scope="module")
def figure_template(tmp_path_factory):
    folder = tmp_path_factory.mktemp("figure")
    return _png_pdf(folder, "template")


def make_run(root, figure, name="fake", provenance_config="run:\n  name: fake  # <script>alert(1)</script>\n"):
    """A run folder holding what stages 1 to 4 leave (small, made up); returns its Config."""
    cfg = config.load("tiny", [f"run.root={root}", f"run.name={name}"])
    run = root / name
    (run / "analysis").mkdir(parents=True)
    (run / "figures").mkdir()
    (run / "regular" / "seed0").mkdir(parents=True)

    def put(path):
        shutil.copyfile(figure, path)
        shutil.copyfile(figure.with_suffix(".pdf"), path.with_suffix(".pdf"))

    names = {"figure2": "figure2.png", "church_windows": "church_windows.png", "isomaps": "isomaps.png",
             "exposure": "exposure.png", "success_vs_k": "success_vs_k.png", "distances": "distances.png"}
    for rel in names.values():
        put(run / "analysis" / rel)
    for stem in ("generate_figure1", "generate_gm20", "attack_queries", "attack_success", "attack_success_vs_k"):
        put(run / "figures" / f"{stem}.png")
    shutil.copyfile(figure, run / "regular" / "seed0" / "curves.png")  # a PNG without a PDF
    (run / "figures" / "generate_class_counts.csv").write_text(
        "split,spiral,elliptical,merger,total\ntrain,10,8,9,27\nall,14,11,12,37\n")
    summary = {"mode": "targeted", "pixels": 1, "images": 5, "examined": 6, "skipped_misclassified": 1,
               "variants": {v: {"attacked": 5, "flipped": f, "attacks": 10, "successful_attacks": f,
                                "success_rate": f / 10, "median_queries_to_flip": 24.0 if f else None,
                                "mean_queries_to_flip": 30.5 if f else None, "queries_total": 500}
                            for v, f in (("regular", 4), ("mmd", 0))}}
    (run / "attack_summary.json").write_text(json.dumps({**summary, "digest": "abc"}))
    (run / "train_summary.json").write_text(json.dumps({"runs": [
        {"variant": "regular", "seed": 0, "best_epoch": 1, "epochs_run": 2, "best_val_loss": 1.05, "ranks": 1,
         "backend": "none", "y10": {"accuracy": 0.5}, "y1": {"accuracy": 0.3}}], "table1": TABLE1, "digest": "t"}))
    (run / "timings.json").write_text(json.dumps([{"stage": "generate", "seconds": 3.2, "ranks": 1,
                                                   "finished": "2024-01-01T00:00:00"}]))
    analysis = {
        "run": name, "digest": "d1", "provenance": {"stage": "analyze", "config": provenance_config,
                                                    "git_commit": "abc"},
        "table1": TABLE1, "table2": TABLE2,
        "exposure": {"fractions": [0.1, 1.0], "years": [1, 10],
                     "accuracy": {"regular": [0.4, 0.7], "mmd": [0.6, None]}},
        "success_vs_k": {"k": [1], "flipped_fraction": {"regular": [0.8], "mmd": [0.0]}, "missing_k": [2]},
        "triplet": {"index": 7, "label": 0, "label_name": "spiral",
                    "variants": {"regular": {"target": 1, "target_name": "elliptical", "pred_y1": "merger",
                                             "distance_y1": 3.21, "distance_attacked": 1.5}}},
        "attack": summary, "figures": {**names, "extra": None, "ghost": "ghost.png"},
    }
    (run / "analysis" / "analysis.json").write_text(json.dumps(analysis))
    return cfg


def test_report_writes_every_file_and_a_rerun_does_nothing(tmp_path, figure_template, caplog):
    cfg = make_run(tmp_path, figure_template)
    out = stage.run(cfg, serial())
    assert out == tmp_path / "fake" / "report"
    for name in ("index.html", "numbers.json", "table1.md", "table1.tex", "table1.csv", "table2.md", "table2.tex",
                 "table2.csv", "attack.csv", "exposure.csv", "success_vs_k.csv", "timings.csv"):
        assert (out / name).is_file(), name
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert "figure2.png" in figs and "figure2.pdf" in figs and "generate_gm20.pdf" in figs
    assert "curves_regular_seed0.png" in figs and "curves_regular_seed0.pdf" not in figs
    assert len([f for f in figs if f.endswith(".png")]) == 12
    page = (out / "index.html").read_text()
    # figure2 holds the church windows and isomaps: their own files are linked, not embedded again.
    assert page.count("data:image/png;base64,") == 10 and "http://" not in page and "https://" not in page
    assert 'id="table1"' in page and 'id="table2"' in page and "data-figures-loaded" in page
    assert '<a href="figures/church_windows.pdf">' in page and "ghost.png" in page  # a named figure not on disk
    nums = json.loads((out / "numbers.json").read_text())  # strict JSON: the NaN F1 became null
    assert nums["digest"] == stage.digest(cfg, {"digest": "d1"})
    assert nums["table1"]["ours"]["regular"]["y1"]["f1"][0] is None
    assert nums["attack"]["attack"]["variants"]["regular"]["flipped"] == 4
    assert '"seed ?, de, k=1, data",targeted,1,regular,5,4,10,4,0.4,24.0,30.5,500' in (out / "attack.csv").read_text()
    assert (out / "exposure.csv").read_text() == "fraction,years,regular,mmd\n0.1,1.0,0.4,0.6\n1.0,10.0,0.7,\n"
    assert not list(tmp_path.joinpath("fake").glob("report.*"))

    before = (out / "index.html").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="hpcmorph"):
        stage.run(cfg, serial())
    assert "report: up to date" in caplog.text and (out / "index.html").stat().st_mtime_ns == before


def test_attack_rows_of_a_three_seed_run_name_seed_method_k_and_range(tmp_path, figure_template):
    """A laptop-like run: three seeds x (k = 1, 2, 3 in the data's range, k = 1 in [0, 1]), two models:
    24 rows, every label unique, sorted by seed, method, k and range."""
    cfg = make_run(tmp_path, figure_template)
    run = tmp_path / "fake"
    (run / "attack_summary.json").unlink()
    for seed in (0, 1, 2):
        for k, suffix in ((1, ""), (2, "-k2"), (3, "-k3"), (1, "-r01")):
            stem = "attack" + ("" if seed == 0 else f"-s{seed}") + "-saliency" + suffix
            summary = {"method": "saliency", "mode": "targeted", "pixels": k, "model_seed": seed,
                       "variants": {v: {"attacked": 24, "flipped": 10 + seed + k} for v in ("regular", "mmd")}}
            if suffix != "-r01" or seed != 2:  # seed 2's [0, 1] summary as written before value_range was kept
                summary["value_range"] = "[0, 1]" if suffix == "-r01" else "data"
            (run / f"{stem}_summary.json").write_text(json.dumps(summary))
    out = stage.run(cfg, serial())
    with open(out / "attack.csv") as f:
        records = list(csv.DictReader(f))
    labels = [r["label"] for r in records]
    assert len(records) == 24 and len(set(zip(labels, (r["variant"] for r in records)))) == 24
    assert labels[::2] == [f"seed {s}, saliency, k={k}, {r}" for s in (0, 1, 2)
                           for k, r in ((1, "data"), (1, "[0, 1]"), (2, "data"), (3, "data"))]
    page = (out / "index.html").read_text()
    assert all(html.escape(label) in page for label in set(labels)) and "targeted, k=1<" not in page


def test_an_analysis_alone_is_enough(tmp_path):
    """Only analysis.json, with nothing optional in it: every section says so, nothing raises."""
    cfg = config.load("tiny", [f"run.root={tmp_path}"])
    path = tmp_path / "tiny" / "analysis" / "analysis.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"digest": "d", "table1": {}, "table2": {}, "exposure": None, "figures": {}}))
    out = stage.run(cfg, serial())
    page = (out / "index.html").read_text()
    assert "The analysis has no exposure curve." in page and "No timings.json" in page
    assert sorted(p.name for p in out.iterdir()) == ["attack.csv", "figures", "index.html", "numbers.json",
                                                     "table1.csv", "table1.md", "table1.tex", "table2.csv",
                                                     "table2.md", "table2.tex"]
    assert "| Regular training | accuracy | – | 0.72 | – | 0.43 |" in (out / "table1.md").read_text()


def test_config_and_title_are_escaped(tmp_path, figure_template):
    cfg = make_run(tmp_path, figure_template)
    cfg = cfg.updated({"report.title": "Run <b>&</b> co"})
    page = (stage.run(cfg, serial()) / "index.html").read_text()
    assert "<title>Run &lt;b&gt;&amp;&lt;/b&gt; co</title>" in page
    assert "# &lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert page.count("<script>") == 1  # only the load script


def test_force_rebuilds_an_up_to_date_report(tmp_path, figure_template):
    cfg = make_run(tmp_path, figure_template)
    out = stage.run(cfg, serial())
    built = (out / "index.html").stat().st_mtime_ns
    stage.run(cfg, serial())
    assert (out / "index.html").stat().st_mtime_ns == built, "an up-to-date report was rebuilt"
    stage.run(cfg, serial(), force=True)
    assert (out / "index.html").stat().st_mtime_ns != built, "--force left the report as it was"


def test_an_analysis_made_again_makes_the_report_again_with_each_effects_table(tmp_path, figure_template):
    """analyze --force keeps the analysis's config digest but not its numbers: an analysis.json written
    after the report makes it again. Each variant against regular and each other against MMD get a table."""
    cfg = make_run(tmp_path, figure_template)
    out = stage.run(cfg, serial())
    assert not (out / "effects.md").exists() and not (out / "effects_mmd.md").exists()
    path = tmp_path / "fake" / "analysis" / "analysis.json"
    analysis = json.loads(path.read_text())

    def row(flip, y1):
        est = {key: {"value": v, "lo": v - 0.05, "hi": v + 0.05, "n": 24, "std": None, "level": 0.95}
               for key, v in (("flip_rate", flip), ("y1_accuracy", y1))}
        return {**est, "robustness": "harder to flip", "y1_cost": "lower Y1 accuracy"}

    analysis["effects"] = {"baseline": "regular", "level": 0.95,
                           "variants": {"mmd": row(-0.25, 0.3), "adversarial": row(-0.375, 0.25)}}
    analysis["effects_mmd"] = {"baseline": "mmd", "level": 0.95, "variants": {"adversarial": row(-0.125, -0.0625)}}
    path.write_text(json.dumps(analysis))  # the same config digest, "d1"
    made = (out / "numbers.json").stat().st_mtime_ns
    os.utime(path, ns=(made + 1_000_000, made + 1_000_000))
    stage.run(cfg, serial())
    against_mmd = (out / "effects_mmd.md").read_text()
    assert "One-pixel flip rate minus Domain adaptation (MMD)'s" in against_mmd
    assert "| Adversarial training |" in against_mmd and "| Regular training |" not in against_mmd
    assert "| Adversarial training |" in (out / "effects.md").read_text()
    with open(out / "effects_mmd.csv") as f:
        records = list(csv.DictReader(f))
    assert [(r["variant"], r["difference"], float(r["value"])) for r in records] == [
        ("adversarial", "flip_rate", -0.125), ("adversarial", "y1_accuracy", -0.0625)]
    assert json.loads((out / "numbers.json").read_text())["effects_mmd"]["baseline"] == "mmd"


def test_a_failure_mid_write_leaves_the_previous_report(tmp_path, figure_template, monkeypatch):
    cfg = make_run(tmp_path, figure_template)
    out = stage.run(cfg, serial())
    old = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(stage.page, "document", broken)  # after the tables and figures are written
    with pytest.raises(RuntimeError, match="disk full"):
        stage.run(cfg.updated({"report.title": "another"}), serial())
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == old
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith("report")) == ["report"]


@pytest.mark.slow
def test_missing_or_broken_analysis_is_a_clear_error(tmp_path):
    res = cli(["report", "--config", "tiny", "--set", f"run.root={tmp_path}"], tmp_path, check=False, timeout=120)
    assert res.returncode == 2, res.stderr
    assert "analysis/analysis.json: no such file" in res.stderr and "hpcmorph analyze --config" in res.stderr
    assert "Traceback" not in res.stderr

    cfg = config.load("tiny", [f"run.root={tmp_path}"])
    path = tmp_path / "tiny" / "analysis" / "analysis.json"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(UserError, match="analysis.json: not valid JSON"):
        stage.run(cfg, serial())
    path.write_text(json.dumps({"digest": "x"}))
    with pytest.raises(StageError, match="missing table1, table2"):
        stage.run(cfg, serial())


# ----------------------------------------------------------------------------------------- browser

def test_dom_verification():
    ok = '<html><body data-figures-loaded="3" data-figures-total="3"><table id="table1"></table><table id="table2">'
    assert browser.verify_dom(ok) == (3, 3)
    for dom, message in ((ok.replace('loaded="3"', 'loaded="2"'), "only 2 of 3 figures loaded"),
                         (ok.replace(' data-figures-loaded="3"', ""), "load script did not run"),
                         (ok.replace('"3"', '"0"'), "no figures"),
                         (ok.replace('id="table2"', ""), "no element with id table2")):
        with pytest.raises(browser.CheckError, match=message):
            browser.verify_dom(dom)


@pytest.mark.slow
def test_browser_check_and_screenshot(tmp_path, figure_template):
    needs_chromium()
    cfg = make_run(tmp_path, figure_template).updated({"report.screenshot": True})
    out = stage.run(cfg, serial())
    assert (out / "screenshot.png").stat().st_size > 10_000

    shot = tmp_path / "check.png"
    res = subprocess.run(["bash", str(CHECK), str(out), str(shot)], capture_output=True, text=True, env=env(),
                         timeout=600)
    assert res.returncode == 0 and "10 of 10 figures loaded" in res.stdout, res.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A figure that does not decode fails the check, naming the count.
    page = (out / "index.html").read_text()
    (out / "index.html").write_text(page.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1))
    res = subprocess.run(["bash", str(CHECK), str(out)], capture_output=True, text=True, env=env(), timeout=600)
    assert res.returncode == 1 and "only 9 of 10 figures loaded" in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------ claims

CLAIM_ROWS = [
    {"id": "1", "claim": "Regular training loses accuracy from Y10 to Y1.", "measure": "regular: Y10 minus Y1",
     "variant": "regular", "range": None, "paper_text": "0.72 -> 0.43", "paper_value": 0.29, "no_effect": 0.0,
     "unit": "seeds", "estimate": {"value": 0.2533, "lo": 0.1801, "hi": 0.3265, "n": 3, "std": 0.0295, "level": 0.95,
                                   "method": "t"},
     "parts": {"regular Y1 accuracy": {"value": 0.57, "lo": None, "hi": None, "n": 3, "std": 0.03, "level": 0.95,
                                       "method": "none"}},
     "verdict": "reproduced", "paper_in_ci": True, "note": "paired t interval over 3 seeds"},
    {"id": "3", "claim": "One pixel flips most correctly classified images.", "measure": "flipped fraction",
     "variant": "mmd", "range": "[0, 1]", "paper_text": "136 of 150", "paper_value": 0.907, "no_effect": 0.5,
     "unit": "seeds", "estimate": None, "parts": {}, "verdict": "not measured", "paper_in_ci": None,
     "note": "no k = 1 attack in the [0, 1] value range for mmd"},
    {"id": "5b", "claim": "Attacked images sit farther from Y10 under MMD <b>", "measure": "scale-free ratio",
     "variant": None, "range": "data", "paper_text": "38.1 / 16.8", "paper_value": 2.27, "no_effect": 1.0,
     "unit": "images", "estimate": {"value": 0.91, "lo": 0.62, "hi": 1.31, "n": [14, 6], "std": None,
                                    "level": 0.95, "method": "bootstrap"},
     "parts": {}, "verdict": "not reproduced", "paper_in_ci": False, "note": ""},
]


def test_the_claims_table_opens_the_report_and_sits_beside_tables_1_and_2(tmp_path, figure_template):
    cfg = make_run(tmp_path, figure_template)
    path = tmp_path / "fake" / "analysis" / "analysis.json"
    analysis = json.loads(path.read_text())
    analysis["claims"] = CLAIM_ROWS
    t2 = analysis["table2"]
    t2["regular"]["mean_ci"] = {"y10_y1": [15.1, 25.3], "y10_attacked": [0.7, 0.9]}
    t2["regular"]["scale_free"] = {"y10_y1": {"value": 0.512, "lo": 0.401, "hi": 0.633, "n": 4, "std": 0.2,
                                              "level": 0.95, "method": "bootstrap"}}
    t2["ratio_mmd_over_regular"]["y10_y1"] = 1.4
    t2["ratios"] = {"raw": {"y10_y1": {"value": 1.4, "lo": 1.1, "hi": 1.9, "n": [4, 3]}}, "scale_free": {}}
    t2["bootstrap"] = {"level": 0.95, "n_boot": 4000, "seed": 0}
    path.write_text(json.dumps(analysis))
    out = stage.run(cfg, serial())

    page = (out / "index.html").read_text()
    assert page.index('id="claims"') < page.index('id="table1"')  # the claims first
    assert "NOT reproduced" in page and "not measured" in page and "&lt;b&gt;" in page and "MMD <b>" not in page
    md = (out / "claims.md").read_text()
    assert "| 1 | Regular training loses accuracy from Y10 to Y1. | regular: Y10 minus Y1 (regular) | 0.72 -> 0.43 " \
           "| 0.253 ± 0.0295 | [0.180, 0.327] | 3 seeds | reproduced |" in md
    assert "| 5b |" in md and "| 0.910 | [0.620, 1.31] | 14 + 6 images | NOT reproduced |" in md
    assert "| 3 | One pixel flips most correctly classified images. | flipped fraction (mmd, [0, 1] range) " \
           "| 136 of 150 " \
           "| – | – | – | not measured | no k = 1 attack" in md
    lines = (out / "claims.csv").read_text().splitlines()
    assert lines[0].startswith("id,claim,variant,range,measure,paper_text,paper_value,no_effect,value,lo,hi,std,n,")
    assert lines[1].startswith("1,Regular training loses accuracy from Y10 to Y1.,regular,,regular: Y10 minus Y1,"
                               "0.72 -> 0.43,0.29,0.0,0.2533,0.1801,0.3265,0.0295,3,seeds,0.95,t,reproduced,True")
    assert json.loads((out / "numbers.json").read_text())["claims"][2]["verdict"] == "not reproduced"
    # Table 2: the interval beside the raw mean, the ratio's interval, and a scale-free row (paper: none).
    t2md = (out / "table2.md").read_text()
    assert "| Y10 – Y1 | 20.2 ± 11.9 [15.1, 25.3] (n=4) | 20.2 ± 11.9 (n=136) |" in t2md
    assert "| – | 1.47 |" not in t2md and "| 1.40 [1.10, 1.90] | 1.47 |" in t2md
    assert "| Y10 – Y1, scale-free | 0.512 ± 0.200 [0.401, 0.633] (n=4) | – | – | – | – | – |" in t2md
    assert "regular,y10_y1,0.512,0.2,4.0,,,,scale_free,0.401,0.633" in (out / "table2.csv").read_text()


def test_no_claims_in_the_analysis_no_claims_in_the_report(tmp_path, figure_template):
    cfg = make_run(tmp_path, figure_template)
    out = stage.run(cfg, serial())
    assert not (out / "claims.md").exists() and not (out / "claims.csv").exists()
    page = (out / "index.html").read_text()
    assert 'id="claims' not in page and "scale-free" not in page
    assert json.loads((out / "numbers.json").read_text())["claims"] is None


def test_the_comparison_shows_every_variant_and_not_run_for_what_was_not(tmp_path, figure_template):
    """A third variant (coral) trained but not attacked: its row shows its accuracy and calibration,
    and "not run" in every attack column, never 0; the figures sit in the comparison's section."""
    cfg = make_run(tmp_path, figure_template)
    path = tmp_path / "fake" / "analysis" / "analysis.json"
    analysis = json.loads(path.read_text())

    def s(*values):
        return {"mean": sum(values) / len(values), "std": 0.01 if len(values) > 1 else None, "n": len(values),
                "values": list(values), "seeds": list(range(len(values)))}

    attacked = {"one_pixel": {"data": {"search": s(0.5, 0.6), "exact": s(0.6, 0.7), "exact_source": "certified"}},
                "success_k": {"2": s(0.8, 0.9), "3": None}, "within_budget": {"10": s(0.2, 0.3)},
                "distance_y10_y1": {"value": 0.31, "lo": 0.2, "hi": 0.4, "n": 9}, "distance_y10_attacked": None}
    common = {"accuracy_y10": s(0.9, 0.88), "accuracy_y1": s(0.5, 0.6), "ece_y10": s(0.05, 0.07),
              "ece_y1": s(0.2, 0.22), "brier_y10": s(0.2, 0.2), "brier_y1": s(0.7, 0.75)}
    analysis["comparison"] = {
        "variants": ["regular", "coral"], "seeds": [0, 1], "ranges": ["data"], "k": [2, 3], "budgets": [10],
        "calibration_bins": 15, "configured": {"method": "saliency", "range": "data", "pixels": 1},
        "rows": {"regular": {"name": "regular", "attacked": True, **common, **attacked},
                 "coral": {"name": "coral", "attacked": False, **common, "one_pixel": {"data": None},
                           "success_k": {"2": None, "3": None}, "within_budget": {"10": None},
                           "distance_y10_y1": None, "distance_y10_attacked": None}}}
    shutil.copyfile(figure_template, path.parent / "comparison.png")
    analysis["figures"]["comparison"] = "comparison.png"
    path.write_text(json.dumps(analysis))
    out = stage.run(cfg, serial())
    md = (out / "comparison.md").read_text()
    assert ("| Regular training | 2 | 0.890 ± 0.010 | 0.550 ± 0.010 | 0.060 ± 0.010 | 0.210 ± 0.010 | 0.200 ± 0.010 "
            "| 0.725 ± 0.010 | 0.550 ± 0.010 | 0.650 ± 0.010 (certified) | 0.850 ± 0.010 | not run | 0.250 ± 0.010 "
            "| 0.310 [0.200, 0.400] | no flipped image |") in md
    assert ("| Domain adaptation (CORAL) | 2 | 0.890 ± 0.010 | 0.550 ± 0.010 | 0.060 ± 0.010 | 0.210 ± 0.010 "
            "| 0.200 ± 0.010 | 0.725 ± 0.010 | not run | not run | not run | not run | not run | not run "
            "| not run |") in md
    assert "coral,success_k" not in (out / "comparison.csv").read_text()
    assert "coral,k2,,,,,," in (out / "comparison.csv").read_text()
    page = (out / "index.html").read_text()
    section = page[page.index('id="comparison-section"'):page.index('id="table1-section"')]
    assert 'id="comparison"' in section
    assert "data:image/png;base64," in section
    assert json.loads((out / "numbers.json").read_text())["comparison"]["variants"] == ["regular", "coral"]
