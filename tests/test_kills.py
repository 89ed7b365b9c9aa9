"""A kill after a stage's output appeared under its final name but before the stage finished (its
figures, summary, checkpoint clean-up): the rerun finishes what is missing, redoes nothing else,
and only then marks the stage complete (``<output>.complete``)."""

from __future__ import annotations

import pytest

from helpers import cli, killed_at, sets
from hpcmorph import store

pytestmark = pytest.mark.slow

GENERATE = ["generate", "--config", "tiny", *sets(["generate.n_galaxies=16", "generate.block_size=4"])]


@pytest.mark.parametrize("module, name, after", [
    ("hpcmorph.generate.stage", "finish", 0),          # right after the rename, before any figure
    ("hpcmorph.plots", "save", 1),                      # between two figures
    ("hpcmorph.store", "remove_leftovers", 0),          # figures drawn, blocks not yet removed
])
def test_kill_after_the_output_then_rerun_finishes_the_stage(module, name, after, tmp_path):
    res = killed_at(module, name, after, GENERATE, tmp_path)
    assert res.returncode == -9, res.stderr[-3000:]
    run = tmp_path / "runs" / "tiny"
    out = run / "galaxies.h5"
    assert out.exists() and not store.marker(out).exists()
    made = out.stat().st_mtime_ns

    res = cli(GENERATE, tmp_path)
    assert "finishing what a stopped run left undone" in res.stderr
    assert out.stat().st_mtime_ns == made, "the output was redone"
    assert store.is_complete(out, store.read_json(store.marker(out))["digest"])
    for figure in ("generate_figure1.png", "generate_gm20.png", "generate_class_counts.csv"):
        assert (run / "figures" / figure).stat().st_size > 0
    assert not list(run.glob("galaxies.h5.parts-*")) and not list((run / "figures").glob("*.tmp"))

    res = cli(GENERATE, tmp_path)
    assert "up to date" in res.stderr


def test_a_marker_whose_files_went_missing_is_not_complete(tmp_path):
    cli(GENERATE, tmp_path)
    run = tmp_path / "runs" / "tiny"
    (run / "figures" / "generate_gm20.png").unlink()
    res = cli(GENERATE, tmp_path)
    assert "finishing what a stopped run left undone" in res.stderr
    assert (run / "figures" / "generate_gm20.png").exists()
