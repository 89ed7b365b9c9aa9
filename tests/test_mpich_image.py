"""The MPICH-ABI image (apptainer/hpcmorph-mpich.def) and the leadership facilities' hybrid model,
rehearsed: the host's own MPICH (Debian's mpiexec.mpich, outside the image) starts the ranks, each in
the image under Charliecloud's ch-run, and the image's libmpi.so.12 is replaced at run time by the
host's (a folder with the host's library bound in and first on LD_LIBRARY_PATH, as cray-mpich-abi and
podman-hpc --mpi do at the sites; scripts/hybrid-mpich.sh).

The static checks of the def run everywhere. The rest is marked ``mpich`` (as root; `make test-mpich`,
left out of `make test`: a cold build of the image alone takes longer than the suite's budget,
docs/testing.md): the image built for real, then each rank's loaded MPI library, and the tiny chain
in the image under the host's MPICH equal to the same chain outside it (the host venv's Open MPI).
Both with two libraries in the image's place: the host's own (Debian's MPICH 4.0, as the image's)
and MPICH 3.4.3's from PyPI's mpich wheel, the MPICH whose ABI Cray MPICH 8 offers (OLCF: "MPICH
3.4.2 is ABI compatible with the cray-mpich-abi module"), which an image built against MPICH 4 must
also run on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, SMALL_RUN, cli, env, kill_session, sets
from test_apptainer import parse, steps
from test_container import build, csv_data, drop_provenance, h5_contents, need_root

MPICH_DEF = ROOT / "apptainer" / "hpcmorph-mpich.def"
HYBRID = ROOT / "scripts" / "hybrid-mpich.sh"
# The image's own library (Debian's MPICH, renamed libmpi.so.12 by scripts/mpich-abi.sh) and the
# host's in its place, where scripts/hybrid-mpich.sh binds it.
IMAGE_LIB = "/usr/lib/x86_64-linux-gnu/libmpich.so.12.2.2"
HOST_LIB = "/mnt/host-mpi/libmpi.so.12"


# --- the def, statically ------------------------------------------------------------------------

def test_the_mpich_def_is_the_cpu_def_with_mpich_in_place_of_open_mpi():
    _, cpu = parse(ROOT / "apptainer" / "hpcmorph-cpu.def")
    header, mpich = parse(MPICH_DEF)
    assert header == {"Bootstrap": "debootstrap", "OSVersion": "bookworm", "MirrorURL": "http://deb.debian.org/debian"}
    for name in ("setup", "environment", "runscript"):
        assert steps(mpich[name]) == steps(cpu[name]), f"%{name} differs from the CPU def"
    post = steps(mpich["post"])
    assert not any("openmpi" in s for s in post), post
    apt = next(s for s in post if s.startswith("apt-get install"))
    assert {"mpich", "libmpich-dev", "libhdf5-mpich-dev", "patchelf"} <= set(apt.split())
    # The order that makes the image swappable: built against MPICH, renamed to the ABI's name,
    # then the development files (and their unversioned libmpi.so) gone; the same install script.
    order = ["PYTHON=python3.11 VENV=/opt/hpcmorph/.venv bash scripts/setup.sh", "make horovod ",
             "bash scripts/mpich-abi.sh ", "apt-get purge -y -qq libmpich-dev libhdf5-mpich-dev"]
    at = [next(i for i, s in enumerate(post) if s.startswith(o)) for o in order]
    assert at == sorted(at), post
    assert "mkdir -p /mnt/out /mnt/host-mpi" in post
    # UCX (under Debian's MPICH) between ranks in user namespaces of their own: no CMA, no /proc links.
    assert "printf 'UCX_TLS=^cma\\nUCX_POSIX_USE_PROC_LINK=n\\n' >/etc/ucx/ucx.conf" in post, post
    check = "bash /opt/hpcmorph/scripts/mpich-abi.sh --check /usr/lib /usr/bin /opt/hpcmorph/.venv"
    assert check in steps(mpich["test"])


# --- the image, built and run ---------------------------------------------------------------------

class Image:
    def __init__(self, path: Path, log: str):
        self.path, self.log = path, log


@pytest.fixture(scope="session")
def mpich_image(tmp_path_factory):
    """The MPICH image built once from this checkout (its h5py and Horovod wheels, built against
    MPICH, come from $HPCMORPH_CACHE when an earlier build on this machine left them)."""
    need_root()
    out = tmp_path_factory.mktemp("mpich-image")
    path = out / "hpcmorph-mpich.sqfs"
    res = build(MPICH_DEF, path, ROOT, out / "build.log")
    assert res.returncode == 0, f"the MPICH image build failed:\n{res.stdout[-6000:]}"
    yield Image(path, res.stdout)
    path.unlink()


@pytest.fixture(scope="session")
def mpich_343(tmp_path_factory) -> Path:
    """The lib/ folder of PyPI's mpich 3.4.3 wheel (libmpi.so.12 and what it needs beside it), kept
    in $HPCMORPH_CACHE."""
    cache = Path(os.environ.get("HPCMORPH_CACHE", "/var/cache/hpcmorph")) / "mpich-3.4.3"
    lib = cache / "mpich-3.4.3.data" / "data" / "lib"
    if not (lib / "libmpi.so.12").is_file():
        download = tmp_path_factory.mktemp("mpich-wheel")
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                              "mpich==3.4.3", "-d", str(download)], capture_output=True, text=True, timeout=300)
        wheels = list(download.glob("mpich-3.4.3-*.whl"))
        if res.returncode != 0 or not wheels:
            pytest.skip(f"PyPI's mpich 3.4.3 wheel could not be had here: {res.stderr.strip()[-300:]}")
        zipfile.ZipFile(wheels[0]).extractall(cache)
    return lib


# Where the library in the image's place comes from: the host's MPICH (copied into a folder under
# the ABI's name by scripts/hybrid-mpich.sh), or a folder given with HPCMORPH_HOST_MPI.
HOSTS = {"debian-4.0.2": None, "pypi-3.4.3": "mpich_343"}


def host_mpi(request, host: str) -> str | None:
    return None if HOSTS[host] is None else str(request.getfixturevalue(HOSTS[host]))


def hybrid(image: Image, ranks: int, outdir: Path, *command: str, swap: bool = True, host_dir: str | None = None,
           timeout: float = 900):
    """``scripts/hybrid-mpich.sh IMAGE RANKS OUTDIR COMMAND``: never hangs past ``timeout``."""
    e = env()
    e.pop("PYTHONPATH", None)  # the image runs its own copy
    e.pop("LD_LIBRARY_PATH", None)
    if not swap:
        e["HPCMORPH_NO_SWAP"] = "1"
    if host_dir:
        e["HPCMORPH_HOST_MPI"] = host_dir
    proc = subprocess.Popen(["bash", str(HYBRID), str(image.path), str(ranks), str(outdir), *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"hybrid run of {' '.join(command)} did not end within {timeout} s\n{err[-3000:]}")
    assert proc.returncode == 0, f"hybrid {' '.join(command)} exited {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}"
    return out, err


@pytest.mark.mpich
@pytest.mark.timeout(3600)
def test_the_image_runs_on_its_own_mpich_under_the_abi_name(mpich_image):
    assert "build-image: %test passed" in mpich_image.log
    assert "mpich-abi: ok: nothing needs libmpich.so.12" in mpich_image.log
    e = env()
    e.pop("PYTHONPATH", None)
    e.update({"USER": "root", "MPLCONFIGDIR": "/tmp/hpcmorph-mpl"})
    res = subprocess.run(["ch-run", str(mpich_image.path), "--", "hpcmorph", "info", "--json"], capture_output=True,
                         text=True, env=e, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout)
    assert info["mpi"].startswith("MPICH Version:") and "4.0" in info["mpi"], info["mpi"]
    assert info["h5py_mpi"] is True and info["mpi_library"] == IMAGE_LIB, info


# Each rank: its rank and size, the MPI library files it mapped, Horovod on MPI, a parallel HDF5 file
# written collectively and a 32 MB allreduce (the size that hung between ch-run ranks of Open MPI).
PROBE = r"""
import json, numpy as np
from mpi4py import MPI
import h5py, horovod.torch as hvd, torch
from hpcmorph.mpi import library_files
comm = MPI.COMM_WORLD
hvd.init()
with h5py.File("probe.h5", "w", driver="mpio", comm=comm) as f:
    d = f.create_dataset("rank", (comm.size,), dtype="i8")
    with d.collective:
        d[comm.rank] = comm.rank
total = comm.allreduce(np.ones(4_000_000))[0]
summed = hvd.allreduce(torch.ones(3), op=hvd.Sum).tolist()
print(json.dumps({"rank": comm.rank, "size": comm.size, "files": library_files(), "allreduce": total,
                  "horovod": [hvd.rank(), hvd.size(), hvd.mpi_enabled(), summed],
                  "version": MPI.Get_library_version().splitlines()[0]}), flush=True)
"""


def probe(image: Image, outdir: Path, swap: bool, host_dir: str | None = None) -> list[dict]:
    out, _ = hybrid(image, 2, outdir, "/opt/hpcmorph/.venv/bin/python", "-c", PROBE, swap=swap, host_dir=host_dir,
                    timeout=300)
    found = sorted((json.loads(line) for line in out.splitlines() if line.startswith("{")), key=lambda r: r["rank"])
    assert [r["rank"] for r in found] == [0, 1] and all(r["size"] == 2 for r in found), out
    with __import__("h5py").File(outdir / "probe.h5", "r") as f:
        assert f["rank"][...].tolist() == [0, 1]
    for r in found:
        assert r["allreduce"] == 2.0 and r["horovod"] == [r["rank"], 2, True, [2.0, 2.0, 2.0]], r
    return found


@pytest.mark.mpich
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("host", HOSTS)
def test_each_rank_loads_the_hosts_libmpi_in_place_of_the_images(mpich_image, tmp_path, request, host):
    """Under the host's mpiexec.mpich: with the host's folder bound and first on LD_LIBRARY_PATH every
    rank maps the host's library and not the image's (mpi4py, parallel HDF5 and Horovod on it);
    without it, the image's own."""
    host_dir = host_mpi(request, host)
    swapped = probe(mpich_image, tmp_path, swap=True, host_dir=host_dir)
    assert all(r["files"] == [HOST_LIB] for r in swapped), swapped
    version = host.split("-")[1]
    assert all(r["version"] == f"MPICH Version:\t{version}" for r in swapped), swapped
    if host_dir is None:
        own = probe(mpich_image, tmp_path, swap=False)
        assert all(r["files"] == [IMAGE_LIB] for r in own), own
        # The folder holds the host's own library, byte for byte (the image's copy was renamed).
        host_lib = Path(subprocess.run(["ldconfig", "-p"], capture_output=True, text=True).stdout.split(
            "libmpich.so.12 (libc6,x86-64) => ")[1].split()[0]).resolve()
        cache = Path(os.environ.get("HPCMORPH_CACHE", "/var/cache/hpcmorph")) / "host-mpich-abi" / "libmpi.so.12"
        assert cache.read_bytes() == host_lib.read_bytes()


# The suite's small run with one data-parallel backend on both sides (DDP: the host venv's Horovod is
# built against Open MPI, the image's against MPICH).
TINY_RUN = ["run", "--config", "tiny", *sets(SMALL_RUN), "--set", "train.backend=ddp"]


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """The small run outside the image: the host venv, Open MPI's mpirun, 2 ranks."""
    d = tmp_path_factory.mktemp("outside")
    cli(TINY_RUN, d, ranks=2, timeout=900)
    return d


@pytest.mark.mpich
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("host", HOSTS)
def test_tiny_chain_in_the_image_under_the_hosts_mpich_equals_the_run_outside(mpich_image, outside, tmp_path,
                                                                               request, host):
    inside = tmp_path / "inside"
    inside.mkdir()
    hybrid(mpich_image, 2, inside, "hpcmorph", *TINY_RUN, host_dir=host_mpi(request, host))

    a, b = outside / "runs" / "tiny", inside / "runs" / "tiny"
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    compared = {".h5": 0, ".pt": 0, ".json": 0, ".csv": 0}
    for rel in files:
        if rel.suffix == ".h5":
            da, db = h5_contents(a / rel), h5_contents(b / rel)
            assert sorted(da) == sorted(db), rel
            for name in da:
                np.testing.assert_array_equal(da[name], db[name], err_msg=f"{rel}:{name} differs in the hybrid run")
        elif rel.suffix == ".pt":
            import torch

            wa, wb = (torch.load(d / rel, map_location="cpu", weights_only=False) for d in (a, b))
            wa, wb = wa.get("model", wa), wb.get("model", wb)
            assert list(wa) == list(wb), rel
            for key in wa:
                assert torch.equal(wa[key], wb[key]), f"{rel}: {key} differs in the hybrid run"
        elif rel.suffix == ".json":
            assert drop_provenance(json.loads((a / rel).read_text())) == \
                drop_provenance(json.loads((b / rel).read_text())), f"{rel} differs in the hybrid run"
        elif rel.suffix == ".csv":
            assert csv_data(a / rel) == csv_data(b / rel), f"{rel} differs in the hybrid run"
        else:
            continue
        compared[rel.suffix] += 1
    assert compared[".h5"] >= 5 and compared[".pt"] >= 4 and compared[".json"] >= 5, compared
    # Each run recorded the MPI it ran on: the swapped-in MPICH inside, the venv's Open MPI outside.
    import h5py

    with h5py.File(b / "galaxies.h5", "r") as f, h5py.File(a / "galaxies.h5", "r") as g:
        assert str(f.attrs["version_mpi"]) == f"MPICH Version:\t{host.split('-')[1]}", f.attrs["version_mpi"]
        assert str(g.attrs["version_mpi"]).startswith("Open MPI"), g.attrs["version_mpi"]
