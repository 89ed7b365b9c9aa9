"""A full disk, for real: a small tmpfs as run.root. The stage ends with one line naming the file and
the free space (exit 2), its partial file is gone, the previous complete output is still readable,
and once there is room the same command resumes to the file a clean run makes."""

from __future__ import annotations

import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from helpers import assert_same_data, cli, env
from hpcmorph import store
from hpcmorph.errors import DiskFull

TINY = ["generate", "--config", "tiny", "--set", "generate.figures=false"]


def _mount(folder, kib: int, remount: bool = False) -> None:
    opts = f"remount,size={kib}k" if remount else f"size={kib}k"
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); needs root or CAP_SYS_ADMIN")


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kib) -> a folder on a tmpfs of that size; resize with small_disk.grow(folder, kib)."""
    mounted = []

    def make(kib: int):
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        _mount(folder, kib)
        mounted.append(folder)
        return folder

    make.grow = lambda folder, kib: _mount(folder, kib, remount=True)
    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def sizes(tmp_path_factory):
    """Bytes of one block and of the outputs of 4 and 12 galaxies, and those outputs, from clean runs."""
    cwd = tmp_path_factory.mktemp("clean")
    cli([*TINY, "--set", "generate.n_galaxies=12", "--set", "generate.keep_parts=true", "--set", "run.name=n12"], cwd)
    cli([*TINY, "--set", "generate.n_galaxies=4", "--set", "run.name=n4"], cwd)
    n12 = cwd / "runs" / "n12" / "galaxies.h5"
    blocks = sorted(n12.parent.glob("galaxies.h5.parts-*/block-*.h5"))
    assert len(blocks) == 3
    return {"block": blocks[0].stat().st_size, "n12": n12, "n4": cwd / "runs" / "n4" / "galaxies.h5"}


def _error_line(res) -> str:
    errors = [line for line in res.stderr.splitlines() if line.startswith("hpcmorph: error")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, \
        f"exit {res.returncode}\n{res.stderr[-4000:]}"
    return errors[0]


def _partial_files(folder) -> list[str]:
    return [str(p) for p in folder.rglob("*") if ".tmp" in p.name or ".shard" in p.name or p.name.endswith(".new")]


@pytest.mark.slow
def test_a_block_that_does_not_fit(tmp_path, small_disk, sizes):
    disk = small_disk(int(sizes["block"] * 1.5) // 1024)  # one block fits, the second does not
    run = ["--set", "generate.n_galaxies=12", "--set", f"run.root={disk}"]
    line = _error_line(cli([*TINY, *run], tmp_path, check=False))
    assert "block-000001.h5: no space left on the device" in line and " free of " in line, line
    assert _partial_files(disk) == []
    blocks = list(disk.rglob("block-*.h5"))
    assert [b.name for b in blocks] == ["block-000000.h5"]
    with h5py.File(blocks[0], "r") as f:  # the block that fitted is whole
        assert f["y10"].shape[0] == 4 and np.isfinite(f["y10"][...]).all()
    small_disk.grow(disk, 8192)
    res = cli([*TINY, *run], tmp_path)
    assert "1 already on disk" in res.stderr
    assert_same_data(disk / "tiny" / "galaxies.h5", sizes["n12"])


@pytest.mark.mpi
@pytest.mark.slow
def test_an_output_that_does_not_fit_leaves_the_previous_one(tmp_path, small_disk, sizes):
    old, new = sizes["n4"].stat().st_size, sizes["n12"].stat().st_size
    disk = small_disk((old + 3 * sizes["block"] + new // 2) // 1024)  # the blocks fit, the new output does not
    cli([*TINY, "--set", "generate.n_galaxies=4", "--set", f"run.root={disk}"], tmp_path)
    bigger = [*TINY, "--set", "generate.n_galaxies=12", "--set", f"run.root={disk}", "--force"]
    line = _error_line(cli(bigger, tmp_path, ranks=2, check=False))
    assert f"{disk}/tiny/galaxies.h5: no space left on the device" in line and " free of " in line, line
    assert _partial_files(disk) == []
    assert_same_data(disk / "tiny" / "galaxies.h5", sizes["n4"])  # the previous output, whole and readable
    small_disk.grow(disk, 8192)
    cli(bigger, tmp_path, ranks=2)
    assert_same_data(disk / "tiny" / "galaxies.h5", sizes["n12"])


def _torch_save(tmp):
    import torch

    torch.save({"w": torch.zeros(400_000)}, tmp)


def _hdf5(tmp):
    with h5py.File(tmp, "w") as f:
        f["x"] = np.ones((600, 1000), np.float32)


def _figure(tmp):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(20, 20))
    ax.imshow(np.random.default_rng(0).random((1000, 1000)))
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


@pytest.mark.parametrize("writer", [
    lambda tmp: tmp.write_text("x" * 2_000_000),
    _hdf5,
    _torch_save,
    _figure,
], ids=["text", "hdf5", "torch", "png"])
def test_every_atomic_writer_on_a_full_disk(small_disk, writer):
    """store.atomic (blocks, JSON, checkpoints, models, figures): DiskFull names the final file, the
    temporary is gone and the file that was there before is unchanged."""
    disk = small_disk(1024)
    target = disk / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(DiskFull, match=f"{target}: no space left on the device .* free of 1.0 MiB there"):
        with store.atomic(target) as tmp:
            writer(tmp)
    assert sorted(p.name for p in disk.iterdir()) == ["out.bin"]
    assert target.read_bytes() == b"previous"
    assert shutil.disk_usage(disk).free > 1000 * 1024  # the space is back


def test_a_full_disk_anywhere_else_is_a_user_error(small_disk, tmp_path):
    """A writer outside store.atomic (a plain open and write) still ends in one line and exit 2."""
    disk = small_disk(256)
    script = ("import sys\nfrom hpcmorph import mpi\nfrom hpcmorph.errors import UserError\n"
              "ctx = mpi.world()\nwith mpi.abort_on_error(ctx, (UserError,)):\n"
              "    with open(sys.argv[1], 'w') as fh:\n        fh.write('x' * 1_000_000)\n")
    res = subprocess.run([sys.executable, "-c", script, str(disk / "notes.txt")], cwd=disk, env=env(),
                         capture_output=True, text=True, timeout=120)
    line = _error_line(res)
    assert "no space left on the device" in line and "free of 256.0 KiB there" in line, line
