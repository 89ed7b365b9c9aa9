"""Fixtures: one tiny run per session, made stage by stage and shared as a ladder
(``tiny_galaxies -> tiny_trained -> tiny_attacked -> tiny_analyzed``; each test works on a copy,
see ``helpers.workdir``), one thread for in-process forward passes, and one real Slurm per session.
Everything else the tests share is in helpers.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import (SLURM_LOCAL, THREADS, TINY_ANALYZE, TINY_ATTACK, TINY_GEN, TINY_TRAIN, Slurm, cli,
                     slurm_installed, workdir)


# Tests that share one expensive thing of a session (a Slurm cluster, the image) run in one xdist
# worker (`pytest -n 2 --dist loadgroup`, make test): one cluster, one image build.
GROUPS = ("slurm", "container", "multinode", "images")


# The whole suite's temporary folders peaked at ~10 GB (2026-12-05, make test). Below this it would
# fail half-way with messages that do not say why (Open MPI's PMIx: OUT-OF-RESOURCE, once in CI).
MIN_FREE_GB = 6


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller has checked
    where = Path(config.option.basetemp or tempfile.gettempdir())
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free / 1e9
    if free < MIN_FREE_GB and not config.option.collectonly:
        pytest.exit(f"only {free:.1f} GB free under {where}: the suite writes up to ~10 GB of temporary runs, "
                    f"images and Slurm spools there (at least {MIN_FREE_GB} GB needed); free some space", returncode=2)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    for item in items:
        for group in GROUPS:
            if item.get_closest_marker(group):
                item.add_marker(pytest.mark.xdist_group(group))
                break


@pytest.fixture(scope="session")
def tiny_galaxies(tmp_path_factory) -> Path:
    """``runs/tiny`` holding ``galaxies.h5`` of the tiny run."""
    cwd = tmp_path_factory.mktemp("tiny-galaxies")
    cli(["generate", *TINY_GEN], cwd)
    return cwd / "runs" / "tiny"


@pytest.fixture(scope="session")
def tiny_trained(tiny_galaxies, tmp_path_factory) -> Path:
    """``runs/tiny`` holding the tiny run's data and both trained models."""
    cwd = workdir(tmp_path_factory.mktemp("tiny-trained"), tiny_galaxies, "")
    cli(["train", *TINY_TRAIN], cwd)
    return cwd / "runs" / "tiny"


@pytest.fixture(scope="session")
def tiny_attacked(tiny_trained, tmp_path_factory):
    """(``runs/tiny`` with ``attack.h5`` of ``helpers.TINY_ATTACK`` added, the attack's stderr)."""
    cwd = workdir(tmp_path_factory.mktemp("tiny-attacked"), tiny_trained, "")
    res = cli(["attack", *TINY_ATTACK], cwd)
    return cwd / "runs" / "tiny", res.stderr


@pytest.fixture(scope="session")
def tiny_analyzed(tiny_attacked, tmp_path_factory):
    """(``runs/tiny`` with ``analysis/`` of the tiny attack added, the analysis's stderr)."""
    cwd = workdir(tmp_path_factory.mktemp("tiny-analyzed"), tiny_attacked[0], "")
    res = cli(["analyze", *TINY_ANALYZE], cwd)
    return cwd / "runs" / "tiny", res.stderr


@pytest.fixture(scope="module")
def one_thread():
    """In-process forward passes on helpers.THREADS threads (1 unless the run asks for more): with two
    threads on a busy two-core machine every layer waits for a descheduled OpenMP worker (0.8 s per
    tiny forward pass instead of 10 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real one-node Slurm (scripts/slurm-local.sh), started once for every test that submits jobs."""
    if os.geteuid() != 0 and not slurm_installed():
        pytest.skip("Slurm and munge are not installed and only root can install them "
                    "(as root, scripts/slurm-local.sh runs apt-get install slurm-wlm munge)")
    root = tmp_path_factory.mktemp("slurm")
    # Unix sockets (munge's, slurmstepd's) live under it and their paths may not exceed 107 bytes.
    own = len(str(root)) > 48
    if own:
        root = Path(tempfile.mkdtemp(prefix="hpcmorph-slurm-"))
    # The first start on a fresh machine installs the packages with apt: minutes, not seconds.
    res = subprocess.run(["bash", str(SLURM_LOCAL), "start", str(root)], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        subprocess.run(["bash", str(SLURM_LOCAL), "stop", str(root)], capture_output=True, timeout=120)
        pytest.fail(f"slurm-local.sh start exited {res.returncode}\n{res.stdout}\n{res.stderr}")
    m = re.search(r"^export SLURM_CONF=(\S+)$", res.stdout, re.M)
    assert m, f"no export line in start's output:\n{res.stdout}\n{res.stderr}"
    yield Slurm(root, m.group(1))
    res = subprocess.run(["bash", str(SLURM_LOCAL), "stop", str(root)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    if own:
        shutil.rmtree(root, ignore_errors=True)
