"""scripts/setup.sh's decision whether a venv is up to date: the stamp alone is not enough (a venv copied
into an image or another checkout carries it, with its python link and #! lines pointing at the place
it was made). `setup.sh --check` makes the decision and stops; the venvs here are real but tiny."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from helpers import ROOT, env

SETUP = ROOT / "scripts" / "setup.sh"


def setup_stamp(checkout: Path = ROOT) -> str:
    """The stamp name scripts/setup.sh writes into a venv it has set up from ``checkout``."""
    inputs = ("scripts/setup.sh", "pyproject.toml", "requirements/constraints.txt")
    parts = [(checkout / p).read_bytes() for p in inputs]
    return ".setup-" + hashlib.sha256(b"".join(parts) + b"HPCMORPH_MPI=auto\n").hexdigest()[:16]


def set_up_venv(path: Path) -> Path:
    """A venv as setup.sh leaves it: its stamp, and an hpcmorph script that starts its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (path / "bin" / "hpcmorph").write_text(f"#!{path}/bin/python\nimport sys\n")
    (path / setup_stamp()).touch()
    return path


def setup(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SETUP), *args], capture_output=True, text=True, timeout=60,
                          env={**env(), "VENV": str(venv), "HPCMORPH_MPI": "auto"})


def test_a_venv_set_up_in_place_is_up_to_date(tmp_path):
    res = setup(set_up_venv(tmp_path / "venv"), "--check")
    assert res.returncode == 0 and res.stdout == f"setup: environment up to date ({tmp_path / 'venv'})\n", res


def test_a_copied_venv_is_not_trusted_for_its_stamp(tmp_path):
    set_up_venv(tmp_path / "made-here")
    subprocess.run(["cp", "-a", str(tmp_path / "made-here"), str(tmp_path / "copy")], check=True)
    res = setup(tmp_path / "copy", "--check")
    assert res.returncode == 1
    assert res.stdout == (f"setup: {tmp_path / 'copy'} must be rebuilt: bin/hpcmorph starts "
                          f"{tmp_path / 'made-here'}/bin/python, not this venv's python\n")


def test_a_venv_whose_python_is_gone_is_not_trusted(tmp_path):
    venv = set_up_venv(tmp_path / "venv")
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to("/nonexistent/python3.11")
    res = setup(venv, "--check")
    assert res.returncode == 1
    assert res.stdout.startswith(f"setup: {venv} must be rebuilt: its python does not run here (")
    assert "No such file or directory" in res.stdout


def test_a_broken_folder_that_is_no_venv_is_never_removed(tmp_path):
    """VENV pointed at the wrong folder: set-up stops before touching it."""
    folder = tmp_path / "not-a-venv"
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").symlink_to("/nonexistent/python")
    (folder / "data.txt").write_text("precious")
    res = setup(folder)
    assert res.returncode == 1 and "has no pyvenv.cfg: not removing it" in res.stderr, res
    assert (folder / "data.txt").read_text() == "precious"
