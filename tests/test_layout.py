"""The run layout: every path a run writes, under ``<run.root>/<run.name>/``, with the documented names."""

from pathlib import Path

import pytest

from hpcmorph import config
from hpcmorph.layout import RunLayout


@pytest.fixture
def cfg(tmp_path):
    return config.load("tiny", [f"run.root={tmp_path / 'runs'}", "run.name=house"])


def every_path(lay: RunLayout) -> dict[str, Path]:
    return {"galaxies": lay.galaxies, "model_folder": lay.model_folder("regular", 3), "model": lay.model("regular", 3),
            "train_summary": lay.train_summary, "attack": lay.attack("attack-k3"),
            "attack_summary": lay.attack_summary("attack-k3"), "figures": lay.figures,
            "certificates": lay.certificates, "analysis": lay.analysis, "analysis_json": lay.analysis_json,
            "report": lay.report, "timings": lay.timings, "job_script": lay.job_script("train", "polaris", ".pbs"),
            "calibration": lay.calibration("cuda")}


def test_run_folder_is_root_then_name(cfg, tmp_path):
    assert RunLayout.of(cfg).folder == tmp_path / "runs" / "house"
    other = config.load("tiny", [f"run.root={tmp_path / 'elsewhere'}", "run.name=other"])
    assert RunLayout.of(other).folder == tmp_path / "elsewhere" / "other"


def test_every_path_lies_under_the_run_folder(cfg):
    lay = RunLayout.of(cfg)
    for name, path in every_path(lay).items():
        assert path.is_relative_to(lay.folder), name
        assert path != lay.folder, name


def test_names_as_documented(cfg):
    lay = RunLayout.of(cfg)
    rel = {name: path.relative_to(lay.folder).as_posix() for name, path in every_path(lay).items()}
    assert rel == {"galaxies": "galaxies.h5", "model_folder": "regular/seed3", "model": "regular/seed3/model.pt",
                   "train_summary": "train_summary.json", "attack": "attack-k3.h5",
                   "attack_summary": "attack-k3_summary.json", "figures": "figures", "certificates": "certificates",
                   "analysis": "analysis", "analysis_json": "analysis/analysis.json", "report": "report",
                   "timings": "timings.json", "job_script": "jobs/train.polaris.pbs",
                   "calibration": "calibration-cuda.json"}


def test_stages_ask_the_layout(cfg):
    from hpcmorph import calibrate
    from hpcmorph.analyze.stage import output_dir as analysis_dir
    from hpcmorph.attack import certificates
    from hpcmorph.attack.stage import output_path as attack_path
    from hpcmorph.attack.stage import output_stem, summary_path
    from hpcmorph.generate import output_path as galaxies_path
    from hpcmorph.report.inputs import analysis_path, run_folder
    from hpcmorph.report.stage import output_dir as report_dir
    from hpcmorph.train.saved import model_path
    from hpcmorph.train.stage import model_dir

    lay = RunLayout.of(cfg)
    assert galaxies_path(cfg) == lay.galaxies
    assert model_dir(cfg, "regular", 1) == lay.model_folder("regular", 1)
    assert model_path(cfg, "regular", 1) == lay.model("regular", 1)
    assert attack_path(cfg) == lay.attack(output_stem(cfg)) == lay.folder / "attack.h5"
    assert summary_path(cfg) == lay.attack_summary("attack")
    assert certificates.path(cfg, "regular", 0).parent == lay.certificates
    assert analysis_dir(cfg) == lay.analysis
    assert analysis_path(cfg) == lay.analysis_json
    assert run_folder(cfg) == lay.folder
    assert report_dir(cfg) == lay.report
    assert calibrate.path_for(cfg, "cpu") == lay.calibration("cpu")


def test_layout_is_frozen(cfg):
    with pytest.raises(AttributeError):
        RunLayout.of(cfg).folder = Path("elsewhere")
