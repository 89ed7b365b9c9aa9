"""Stage 1 end to end, through the real CLI and a real mpirun, on the tiny preset."""


import h5py
import matplotlib.image
import numpy as np
import pytest

from helpers import assert_same_data, blocks_on_disk, cli, killed_at
from hpcmorph.generate import stage

TINY = ["--config", "tiny"]


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory):
    """One uninterrupted single-rank run: the reference the others must reproduce."""
    cwd = tmp_path_factory.mktemp("serial")
    cli(["generate", *TINY], cwd)
    return cwd / "runs" / "tiny" / "galaxies.h5"


@pytest.mark.slow
def test_layout_labels_and_provenance(serial_run):
    with h5py.File(serial_run, "r") as f:
        n = f["y10"].shape[0]
        assert f["y10"].shape == f["y1"].shape == f["clean"].shape == (n, 3, 48, 48)
        assert f["y10"].dtype == np.float32 and f["y10"].chunks == (1, 3, 48, 48)
        for name in ("label", "split", "parent", "augmentation", "gini", "m20", "intended",
                     "merger_statistic", "bulge_statistic"):
            assert f[name].shape == (n,), name
        parents = f["augmentation"][...] == 0
        assert parents.sum() == f.attrs["n_parents"] == 24
        # Labels follow the Lotz lines from the stored G and M20.
        s, b, label = f["merger_statistic"][...], f["bulge_statistic"][...], f["label"][...]
        expected = np.where(s > 0, 2, np.where(b > 0, 1, 0))
        np.testing.assert_array_equal(label, expected)
        # Copies show their parent's pixels, transformed.
        copies = np.flatnonzero(f["augmentation"][...] == 1)
        for r in copies[:2]:
            p = f["parent"][r]
            np.testing.assert_array_equal(f["y10"][r], f["y10"][p][:, ::-1, :])
            assert f["split"][r] == f["split"][p]
        assert set(np.unique(f["split"][...])) <= {0, 1, 2}
        assert f.attrs["stage"] == "generate" and "n_galaxies: 24" in f.attrs["config"]
        assert f.attrs["version_galsim"] and f.attrs["r_zeropoint_mag"] == pytest.approx(28.10)
        assert f.attrs["units"].startswith("e-/s")
        # The noise: Y1 residuals are several times larger than Y10's.
        y10, y1, clean = f["y10"][:5], f["y1"][:5], f["clean"][:5]
        assert np.std(y1 - clean) > 2.5 * np.std(y10 - clean)
    assert not list(serial_run.parent.glob("galaxies.h5.parts-*")), "checkpoint blocks not cleaned up"


@pytest.mark.slow
def test_figures_exist_and_show_something(serial_run):
    figures = serial_run.parent / "figures"
    for name in ("generate_figure1.png", "generate_gm20.png"):
        img = matplotlib.image.imread(figures / name)
        assert img.shape[0] > 100 and img.shape[1] > 200
        assert img[..., :3].std() > 0.05, f"{name} is blank"
    rows = (figures / "generate_class_counts.csv").read_text().splitlines()
    assert rows[0] == "split,spiral,elliptical,merger,total" and rows[-1].startswith("all,")


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("ranks", [2, 4])
def test_same_file_on_any_number_of_ranks(serial_run, tmp_path, ranks):
    cli(["generate", *TINY], tmp_path, ranks=ranks)
    out = tmp_path / "runs" / "tiny" / "galaxies.h5"
    assert_same_data(serial_run, out)
    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == ranks


@pytest.mark.slow
@pytest.mark.mpi
def test_serial_h5py_path_gives_the_same_file(serial_run, tmp_path):
    cli(["generate", *TINY, "--set", "run.io=shards"], tmp_path, ranks=2)
    assert_same_data(serial_run, tmp_path / "runs" / "tiny" / "galaxies.h5")


@pytest.mark.slow
@pytest.mark.mpi
def test_resume_after_a_kill_gives_the_same_file(serial_run, tmp_path):
    # One galaxy per block; each of 2 ranks is killed as it starts its third block.
    args = ["generate", *TINY, "--set", "generate.block_size=1"]
    parts = tmp_path / "runs" / "tiny"
    killed_at("hpcmorph.store", "Blocks.write", 2, args, tmp_path, ranks=2)
    done_before = blocks_on_disk(parts, "galaxies.h5")
    assert 2 <= done_before < 24, "the kill should land mid-run"
    assert not (parts / "galaxies.h5").exists()

    res = cli(args, tmp_path, ranks=2)
    assert f"{done_before} already on disk" in res.stderr
    out = parts / "galaxies.h5"
    assert_same_data(serial_run, out)


@pytest.mark.slow
def test_rerun_is_a_no_op_and_another_config_is_refused(serial_run, tmp_path):
    cli(["generate", *TINY], tmp_path)
    out = tmp_path / "runs" / "tiny" / "galaxies.h5"
    mtime = out.stat().st_mtime_ns
    res = cli(["generate", *TINY], tmp_path)
    assert "up to date" in res.stderr and out.stat().st_mtime_ns == mtime
    res = cli(["generate", *TINY, "--set", "generate.n_galaxies=8"], tmp_path, check=False)
    assert res.returncode == 2 and "exists from a different config" in res.stderr
    assert out.stat().st_mtime_ns == mtime
    cli(["generate", *TINY, "--set", "generate.n_galaxies=8", "--force"], tmp_path)
    with h5py.File(out, "r") as f:
        assert f.attrs["n_parents"] == 8


@pytest.mark.slow
def test_config_error_exits_2_naming_the_field(tmp_path):
    res = cli(["generate", *TINY, "--set", "generate.image_sise=64"], tmp_path, check=False)
    assert res.returncode == 2
    assert "unknown key 'generate.image_sise'; did you mean 'generate.image_size'" in res.stderr
    assert "Traceback" not in res.stderr


def _cube(n=6, size=40):
    """Noiseless two-band-plus blobs of different concentration, in e-/s per pixel."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(xx, yy)
    cube = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        profile = np.exp(-(r / (1.5 + i)) ** (0.5 + 0.2 * i))
        cube[i] = profile / profile.sum() * 1e4 * np.array([0.8, 1.0, 1.1])[:, None, None]
    return cube


@pytest.mark.slow
def test_cutouts_from_hdf5_and_fits_are_observed(tmp_path):
    from astropy.io import fits

    cube = _cube()
    with h5py.File(tmp_path / "cut.h5", "w") as f:
        f["images"] = cube
    fits.PrimaryHDU(cube).writeto(tmp_path / "cut.fits")
    outs = []
    for name in ("cut.h5", "cut.fits"):
        run = name.replace(".", "_")
        cli(["generate", *TINY, "--set", "generate.source=cutouts", "--set", f"generate.cutouts.path={name}",
             "--set", "generate.cutouts.pixel_scale=0.2", "--set", f"run.name={run}"], tmp_path)
        outs.append(tmp_path / "runs" / run / "galaxies.h5")
    assert_same_data(*outs)
    with h5py.File(outs[0], "r") as f:
        assert f.attrs["n_parents"] == 6
        # Flux is conserved through resampling and the PSF (the stamp keeps almost all of it).
        np.testing.assert_allclose(f["clean"][0].sum(axis=(1, 2)), cube[0].sum(axis=(1, 2)), rtol=0.03)
        assert np.all(f["intended"][...] == -1)


@pytest.mark.slow
def test_bad_cutout_files_are_clear_errors(tmp_path):
    base = [*TINY, "--set", "generate.source=cutouts"]
    res = cli(["generate", *base, "--set", "generate.cutouts.path=nope.h5"], tmp_path, check=False)
    assert res.returncode == 2 and "nope.h5: no such file" in res.stderr
    (tmp_path / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n garbage")
    res = cli(["generate", *base, "--set", "generate.cutouts.path=corrupt.h5"], tmp_path, check=False)
    assert res.returncode == 2 and "corrupt.h5: cannot read" in res.stderr
    cube = _cube()
    cube[2, 1, 5, 5] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["images"] = cube
    res = cli(["generate", *base, "--set", "generate.cutouts.path=nan.h5"], tmp_path, check=False)
    assert res.returncode == 2 and "cutout 2 has non-finite pixels" in res.stderr
    assert not list((tmp_path / "runs").rglob("galaxies.h5"))


@pytest.mark.slow
def test_observed_arrays_in_the_authors_layout(tmp_path):
    rng = np.random.default_rng(0)
    y10 = rng.normal(0, 1, (10, 3, 48, 48)).astype(np.float32)
    y10[:, :, 20:28, 20:28] += 50
    y1 = y10 + rng.normal(0, 3, y10.shape).astype(np.float32)
    labels = np.eye(3)[rng.integers(0, 3, 10)]
    for name, arr in (("y10", y10), ("y1", y1), ("labels", labels)):
        np.save(tmp_path / f"{name}.npy", arr)
    cli(["generate", *TINY, "--set", "generate.source=observed", "--set", "generate.observed.y10=y10.npy",
         "--set", "generate.observed.y1=y1.npy", "--set", "generate.observed.labels=labels.npy"], tmp_path)
    with h5py.File(tmp_path / "runs" / "tiny" / "galaxies.h5", "r") as f:
        first = f["augmentation"][...] == 0
        np.testing.assert_array_equal(f["label"][...][first], labels.argmax(1))
        np.testing.assert_array_equal(f["y1"][...][first], y1)
        assert np.isnan(f["clean"][0]).all()
    np.save(tmp_path / "labels.npy", labels[:5])
    res = cli(["generate", *TINY, "--set", "generate.source=observed", "--set", "generate.observed.y10=y10.npy",
               "--set", "generate.observed.y1=y1.npy", "--set", "generate.observed.labels=labels.npy",
               "--set", "run.name=bad"], tmp_path, check=False)
    assert res.returncode == 2 and "observed arrays disagree" in res.stderr


def test_columns_are_documented():
    for name, col in stage.columns(3, 100).items():
        assert col.doc, name
