"""The paper's numbers live in hpcmorph.paper alone; the analysis, the claims and the report read them there."""

import subprocess
import sys

from helpers import ROOT, env


def test_paper_module_imports_nothing_heavy():
    code = "import sys, hpcmorph.paper; print(sorted(m for m in ('torch', 'numpy', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_the_comparing_modules_take_the_paper_numbers_from_it():
    from hpcmorph import paper
    from hpcmorph.analyze import claims, distances
    from hpcmorph.report import tables

    assert tables.PAPER_TABLE1 is paper.TABLE1 and tables.PAPER_TABLE2 is paper.TABLE2
    assert tables.PAPER_FLIPPED is paper.FLIPPED and claims.PAPER_FLIPPED is paper.FLIPPED
    assert {v: distances.PAPER[v] for v in ("regular", "mmd")} == paper.TABLE2
    for variant, domains in claims.PAPER_ACCURACY.items():
        assert domains == {d: paper.TABLE1[variant][d]["accuracy"] for d in ("y10", "y1")}
    assert distances.PAPER["ratio_mmd_over_regular"]["y10_attacked"] == 38.1 / 16.8


def test_table2_counts_are_the_flipped_images():
    from hpcmorph import paper

    assert {cell["n"] for model in paper.TABLE2.values() for cell in model.values()} == {paper.FLIPPED[0]}
