"""Every user mistake of issue 15 ends in one ``hpcmorph: error:`` line and exit 2, naming the file or
field and what was expected, on one rank and on two; nothing is written under a final name."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from helpers import THREADS, assert_same_data, cli

TINY = ["--config", "tiny"]
# Train stops at its input check; were it to start, one short epoch.
TRAIN = ["train", *TINY, "--set", "train.epochs=1", "--set", f"train.threads={THREADS}",
         "--set", "train.batch_size=8"]


def refused(res, *words: str) -> str:
    """The one error line of a run that must have been refused; ``words`` must all be in it."""
    errors = [line for line in res.stderr.splitlines() if line.startswith("hpcmorph: error")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, \
        f"exit {res.returncode}\n{res.stderr[-4000:]}"
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def sets(**kv) -> list[str]:
    return [a for k, v in kv.items() for a in ("--set", f"{k.replace('__', '.')}={v}")]


# --------------------------------------------------------------------------------------- cutouts

def _cube(n: int = 6) -> np.ndarray:
    """Small positive noiseless galaxies (N, 3, 32, 32), e-/s per pixel."""
    y, x = np.mgrid[:32, :32] - 15.5
    r = np.hypot(x, y)
    cube = np.empty((n, 3, 32, 32), np.float32)
    for i in range(n):
        profile = np.exp(-r / (1.5 + 0.3 * i))
        cube[i] = profile / profile.sum() * 1e4 * np.array([0.8, 1.0, 1.1])[:, None, None]
    return cube


def _cutouts(tmp_path, cube: np.ndarray, name: str) -> list[str]:
    with h5py.File(tmp_path / name, "w") as f:
        f["images"] = cube
    return ["generate", *TINY, *sets(generate__source="cutouts", generate__cutouts__path=name,
                                     generate__cutouts__pixel_scale=0.2, run__name=name.split(".")[0])]


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.mpi)])
def test_cutouts_that_are_all_zero(tmp_path, ranks):
    res = cli(_cutouts(tmp_path, np.zeros((6, 3, 32, 32), np.float32), "zero.h5"), tmp_path, ranks, check=False)
    refused(res, "zero.h5", "cutout 0", "no positive flux in band g")
    assert not list(tmp_path.rglob("galaxies.h5*"))


def test_one_all_zero_cutout_among_good_ones(tmp_path):
    cube = _cube()
    cube[4] = 0.0
    refused(cli(_cutouts(tmp_path, cube, "one.h5"), tmp_path, check=False), "one.h5", "cutout 4", "positive flux")
    cube = _cube()
    cube[2, 1] = -cube[2, 1]  # a band with negative total flux
    refused(cli(_cutouts(tmp_path, cube, "neg.h5"), tmp_path, check=False), "neg.h5", "cutout 2", "band r")
    assert not list(tmp_path.rglob("galaxies.h5*"))


def test_an_empty_cutout_cube(tmp_path):
    refused(cli(_cutouts(tmp_path, np.zeros((0, 3, 32, 32), np.float32), "empty.h5"), tmp_path, check=False),
            "empty.h5", "no cutouts", "(0, 3, 32, 32)")


# ------------------------------------------------------------------------------ observed arrays

def _observed(tmp_path, labels, name: str = "obs") -> list[str]:
    rng = np.random.default_rng(0)
    n = len(labels)
    y10 = rng.normal(0, 1, (n, 3, 48, 48)).astype(np.float32)
    y10[:, :, 20:28, 20:28] += 50
    y1 = y10 + rng.normal(0, 3, y10.shape).astype(np.float32)
    np.save(tmp_path / "y10.npy", y10)
    np.save(tmp_path / "y1.npy", y1)
    np.save(tmp_path / f"{name}.npy", np.asarray(labels))
    return ["generate", *TINY, *sets(generate__source="observed", generate__observed__y10="y10.npy",
                                     generate__observed__y1="y1.npy", generate__observed__labels=f"{name}.npy",
                                     run__name=name)]


GOOD = np.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1, 2, 0]]
NOT_ONE_HOT = {"none": [0, 0, 0], "two": [1, 1, 0], "soft": [.2, .3, .5], "negative": [-1, 0, 0],
               "index_in_every_column": [2, 2, 2]}


@pytest.mark.parametrize("kind", NOT_ONE_HOT)
def test_observed_labels_that_are_not_one_hot(tmp_path, kind):
    labels = GOOD.copy()
    labels[3] = NOT_ONE_HOT[kind]
    if kind == "index_in_every_column":  # class indices stored as (N, 3) by repeating them
        labels = np.repeat(np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])[:, None], 3, axis=1)
        labels[3] = NOT_ONE_HOT[kind]
    row = 0 if kind == "index_in_every_column" else 3
    line = refused(cli(_observed(tmp_path, labels, kind), tmp_path, check=False), f"{kind}.npy", f"row {row}",
                   "not one-hot")
    assert "class indices" in line  # says what else is accepted
    assert not list(tmp_path.rglob("galaxies.h5*"))


@pytest.mark.mpi
def test_observed_labels_not_one_hot_on_two_ranks(tmp_path):
    labels = GOOD.copy()
    labels[7] = [.2, .3, .5]
    refused(cli(_observed(tmp_path, labels, "soft"), tmp_path, ranks=2, check=False),
            "soft.npy", "row 7", "not one-hot")


def test_observed_class_indices_are_accepted_when_integer_and_in_range(tmp_path):
    indices = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0], np.int64)
    cli(_observed(tmp_path, indices, "indices"), tmp_path)
    with h5py.File(tmp_path / "runs" / "indices" / "galaxies.h5", "r") as f:
        first = f["augmentation"][...] == 0
        np.testing.assert_array_equal(f["label"][...][first], indices)
    refused(cli(_observed(tmp_path, indices.astype(np.float32), "floats"), tmp_path, check=False),
            "floats.npy", "must be integers")
    bad = indices.copy()
    bad[5] = 3
    refused(cli(_observed(tmp_path, bad, "three"), tmp_path, check=False), "three.npy", "label 5 is 3")


# ----------------------------------------------------------------------------- the run's folders

@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.mpi)])
def test_run_root_or_run_folder_being_a_file(tmp_path, ranks):
    (tmp_path / "afile").write_text("not a folder")
    refused(cli(["generate", *TINY, *sets(run__root="afile")], tmp_path, ranks, check=False), "afile: is a file",
            "run.root")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").write_text("not a folder")
    refused(cli(["generate", *TINY], tmp_path, ranks, check=False), "runs/tiny: is a file")
    refused(cli(TRAIN, tmp_path, check=False), "runs/tiny: is a file")
    assert (tmp_path / "runs" / "tiny").read_text() == "not a folder"


@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.mpi)])
def test_figures_folder_being_a_file(tmp_path, ranks):
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "figures").write_text("not a folder")
    refused(cli(["generate", *TINY], tmp_path, ranks, check=False), "runs/tiny/figures: is a file")
    # Refused before any work: no output to be found "up to date" without its figures on the rerun.
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["figures"]


# ---------------------------------------------------------------------------- train's galaxies.h5

@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("galaxies")
    cli(["generate", *TINY, *sets(generate__figures="false")], cwd)
    return cwd / "runs" / "tiny" / "galaxies.h5"


def _altered(galaxies, tmp_path, change) -> None:
    """A copy of galaxies.h5 at tmp_path/runs/tiny/, changed by ``change(h5py.File)``."""
    target = tmp_path / "runs" / "tiny" / "galaxies.h5"
    target.parent.mkdir(parents=True)
    shutil.copyfile(galaxies, target)
    with h5py.File(target, "r+") as f:
        change(f)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["label", "y1"])
def test_a_dataset_missing_from_galaxies_h5(galaxies, tmp_path, name):
    def drop(f):
        del f[name]

    _altered(galaxies, tmp_path, drop)
    refused(cli(TRAIN, tmp_path, check=False), "runs/tiny/galaxies.h5", f"no dataset '{name}'")
    assert not (tmp_path / "runs" / "tiny" / "regular").exists()


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_an_empty_split(galaxies, tmp_path, split):
    code = ("train", "validation", "test").index(split)

    def empty(f):
        s = f["split"][...]
        s[s == code] = (code + 1) % 3
        f["split"][...] = s

    _altered(galaxies, tmp_path, empty)
    refused(cli(TRAIN, tmp_path, check=False), "runs/tiny/galaxies.h5", f"the {split} split is empty")
    assert not (tmp_path / "runs" / "tiny" / "train_summary.json").exists()
    assert not (tmp_path / "runs" / "tiny" / "regular").exists()


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, pytest.param(2, marks=pytest.mark.mpi)])
def test_bf16_training_where_the_cpus_bf16_gradients_are_wrong(tmp_path, ranks):
    """ResNet18 on 16 px images in bf16 on a CPU (hpcmorph.precision.bf16_training_sound): refused
    before a step, naming the setting; nothing trained."""
    small = sets(generate__n_galaxies=40, generate__image_size=16, generate__figures="false")
    cli(["generate", *TINY, *small], tmp_path)
    res = cli([*TRAIN, *small, *sets(train__precision="bf16")], tmp_path, ranks, check=False)
    refused(res, "train.precision=bf16", "these are 16 px", "set train.precision=fp32 or auto")
    assert not list((tmp_path / "runs" / "tiny").rglob("model.pt"))
    assert not (tmp_path / "runs" / "tiny" / "train_summary.json").exists()


# ------------------------------------------------------------------------------ more ranks than work

@pytest.mark.mpi
@pytest.mark.slow
def test_more_ranks_than_galaxies_warns_and_gives_the_same_file(tmp_path):
    two = sets(generate__n_galaxies=2, generate__figures="false")
    cli(["generate", *TINY, *two, "--set", "run.root=one"], tmp_path)
    res = cli(["generate", *TINY, *two, "--set", "run.root=four"], tmp_path, ranks=4)
    warned = [line for line in res.stderr.splitlines() if "WARNING" in line]
    assert any("4 ranks for 1 block(s)" in w and "3 rank(s) draw nothing" in w for w in warned), res.stderr[-3000:]
    assert any("split is empty" in w for w in warned), res.stderr[-3000:]
    assert_same_data(tmp_path / "one" / "tiny" / "galaxies.h5", tmp_path / "four" / "tiny" / "galaxies.h5")
