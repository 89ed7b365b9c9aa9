"""The HDF5 store under a real mpirun: both write paths, uneven rows, atomic rename, provenance."""

import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from helpers import env, mpirun
from hpcmorph import store

DRIVER = textwrap.dedent("""
    import sys
    import numpy as np
    from hpcmorph import config, mpi, store

    out, io, n_rows, fail = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "fail"
    ctx = mpi.world()
    cfg = config.load("tiny")
    cols = {"image": store.Column((2, 3), "f4", "test image", 1), "index": store.Column((), "i8", "row")}

    def blocks(lo, hi):
        # Uneven pieces on purpose: ranks make different numbers of write calls.
        for start in range(lo, hi, 1 + ctx.rank):
            stop = min(hi, start + 1 + ctx.rank)
            idx = np.arange(start, stop)
            if fail and ctx.rank == ctx.size - 1:
                raise RuntimeError("injected failure")
            yield start, stop, {"image": np.broadcast_to(idx[:, None, None], (len(idx), 2, 3)).astype("f4"),
                                "index": idx}

    attrs = store.provenance(cfg, ctx, "test", cfg.digest(), store.now())
    with mpi.abort_on_error(ctx):
        store.write_table(out, cols, n_rows, blocks, attrs, ctx, io)
""")


def _run(tmp_path, ranks, io, n_rows, fail=False):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / f"out-{io}-{ranks}-{n_rows}.h5"
    cmd = [sys.executable, str(script), str(out), io, str(n_rows), "fail" if fail else "ok"]
    if ranks > 1:
        cmd = [mpirun(), "-n", str(ranks), *cmd]
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    return out, res


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("io", ["mpio", "shards"])
@pytest.mark.parametrize("ranks, n_rows", [(1, 7), (2, 7), (4, 3), (4, 10)])
def test_every_row_lands_once_in_order(tmp_path, io, ranks, n_rows):
    if io == "mpio" and not store.h5py_has_mpi():
        pytest.skip("h5py built without MPI")
    out, res = _run(tmp_path, ranks, io, n_rows)
    assert res.returncode == 0, res.stderr
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["index"][...], np.arange(n_rows))
        np.testing.assert_array_equal(f["image"][:, 1, 2], np.arange(n_rows, dtype="f4"))
        assert f["image"].chunks == (1, 2, 3)
        assert f.attrs["ranks"] == ranks and f.attrs["stage"] == "test"
        assert "generate:" in f.attrs["config"] and f.attrs["version_h5py"] == h5py.__version__
    assert not list(tmp_path.glob("*.tmp*")), "temporary files left behind"


@pytest.mark.slow
@pytest.mark.mpi
@pytest.mark.parametrize("io", ["mpio", "shards"])
def test_a_failing_rank_aborts_all_and_leaves_no_final_file(tmp_path, io):
    if io == "mpio" and not store.h5py_has_mpi():
        pytest.skip("h5py built without MPI")
    out, res = _run(tmp_path, 2, io, 8, fail=True)
    assert res.returncode != 0
    assert "injected failure" in res.stderr and "rank 1 of 2 failed" in res.stderr
    assert not out.exists()


def test_open_checked_names_the_file_and_the_problem(tmp_path):
    missing = tmp_path / "galaxies.h5"
    with pytest.raises(store.StoreError, match=r"galaxies.h5: no such file; run `hpcmorph generate` first"):
        store.open_checked(missing, "generate")
    (tmp_path / "galaxies.h5.tmp").write_bytes(b"")
    with pytest.raises(store.StoreError, match="did not finish"):
        store.open_checked(missing, "generate")
    missing.write_bytes(b"not hdf5 at all")
    with pytest.raises(store.StoreError, match="not a readable HDF5 file"):
        store.open_checked(missing, "generate")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["stage"] = "train"
    with pytest.raises(store.StoreError, match="expected the output of 'generate', found stage='train'"):
        store.open_checked(tmp_path / "other.h5", "generate")


def test_row_ranges_tile_the_rows():
    class Fake:
        def __init__(self, rank, size):
            self.rank, self.size = rank, size

    for n in (0, 1, 5, 17):
        for size in (1, 2, 3, 4):
            ranges = [store.row_range(n, Fake(r, size)) for r in range(size)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
