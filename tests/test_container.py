"""The CPU image built for real from apptainer/hpcmorph-cpu.def by scripts/build-image.sh (debootstrap,
%post in a chroot, SquashFS), and run under a real HPC container runtime, Charliecloud's ch-run, with
the host's mpirun launching one container per rank (the hybrid model). The image is built once per
session; marked `container` (needs root; the first build on a machine takes minutes: docs/hpc.md)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import ROOT, SMALL_RUN, cli, env, kill_session, mpirun, sets
from test_setup import setup_stamp

pytestmark = [pytest.mark.container, pytest.mark.timeout(3000)]

BUILD = ROOT / "scripts" / "build-image.sh"
CPU_DEF = ROOT / "apptainer" / "hpcmorph-cpu.def"
# The seconds a build may take: ~11 min on a busy 2-core machine where `make setup` left no h5py wheel
# (docs/hpc.md), 4 min with it.
BUILD_TIMEOUT = 2400


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("building an image needs root (debootstrap, chroot, mounts), as apptainer build does")


def build(def_file: Path, image: Path, cwd: Path, log: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """scripts/build-image.sh DEF IMAGE, its output kept in ``log`` (a cold build writes thousands of lines)."""
    with open(log, "w") as out:
        res = subprocess.run(["bash", str(BUILD), str(def_file), str(image)], cwd=cwd, stdout=out,
                             stderr=subprocess.STDOUT, env={**env(), **extra_env}, timeout=BUILD_TIMEOUT)
    res.stdout = log.read_text(errors="replace")
    return res


@pytest.fixture(scope="session")
def checkout(tmp_path_factory) -> Path:
    """A clone of this checkout holding its tracked files as they are now (uncommitted edits too),
    and beside them what a used checkout holds: a venv set up elsewhere (its python link and its
    scripts' #! lines are this host's, its stamp says "up to date": what broke the image when the
    build context was the working directory), runs/, .cache/ and an untracked file."""
    need_root()
    d = tmp_path_factory.mktemp("checkout") / "hpcmorph"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(d)], check=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    files = [f for f in tracked.decode().split("\0") if f and (ROOT / f).exists()]
    for f in files:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, d / f)
    subprocess.run(["git", "add", "--", *files], cwd=d, check=True)

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d / ".venv")], check=True)
    (d / ".venv" / "bin" / "hpcmorph").write_text(f"#!{d}/.venv/bin/python\n# decoy: the host's venv\n")
    (d / ".venv" / setup_stamp(d)).touch()
    (d / "runs" / "tiny").mkdir(parents=True)
    (d / "runs" / "tiny" / "galaxies.h5").write_text("decoy")
    (d / ".cache" / "wheels").mkdir(parents=True)
    (d / ".cache" / "wheels" / "decoy.whl").write_text("decoy")
    (d / "notes.txt").write_text("untracked")
    return d


class Image:
    def __init__(self, path: Path, log: str):
        self.path, self.log = path, log


@pytest.fixture(scope="session")
def image(checkout, tmp_path_factory):
    """The CPU image, built once from ``checkout`` (the debootstrap result and pip's cache come from
    $HPCMORPH_CACHE when an earlier build on this machine left them)."""
    out = tmp_path_factory.mktemp("image")
    path = out / "hpcmorph-cpu.sqfs"
    res = build(Path("apptainer/hpcmorph-cpu.def"), path, checkout, out / "build.log")
    assert res.returncode == 0, f"the image build failed:\n{res.stdout[-6000:]}"
    assert path.is_file()
    yield Image(path, res.stdout)
    path.unlink()   # 3.5 GB: pytest keeps the temporary folders of the last three sessions


def ch_env() -> dict[str, str]:
    """The environment ch-run passes into the container: this test's, without the checkout on
    PYTHONPATH (the image must run its own copy), with the $USER ch-run wants and a writable
    matplotlib config folder (the image is read-only)."""
    e = env()
    e.pop("PYTHONPATH", None)
    e.setdefault("USER", "root")
    e["MPLCONFIGDIR"] = "/tmp/hpcmorph-mpl"
    return e


def ch_run(image: Image, *args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(["ch-run", str(image.path), "--", *args], capture_output=True, text=True,
                         env=ch_env(), timeout=timeout, **kw)
    assert res.returncode == 0, \
        f"ch-run {' '.join(args)} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def listing(image: Image) -> dict[str, tuple[str, int]]:
    """Every path in the image (no leading /) with its type letter (d, -, l, ...) and size, from unsquashfs."""
    out = subprocess.run(["unsquashfs", "-lls", "-d", "", str(image.path)], capture_output=True, text=True,
                         check=True).stdout
    paths = {}
    for line in out.splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[0][:1] in "-dlcbps" and fields[2].isdigit():
            paths[fields[5].split(" -> ")[0].lstrip("/")] = (fields[0][0], int(fields[2]))
    return paths


def test_image_holds_the_tracked_source_only_and_passes_its_test(image, checkout):
    assert "build-image: %test passed" in image.log
    paths = listing(image)
    tracked = set(subprocess.run(["git", "ls-files"], cwd=checkout, capture_output=True, text=True,
                                 check=True).stdout.split())
    prefix = "opt/hpcmorph/"
    source = {p[len(prefix):]: t for p, (t, _) in paths.items() if p.startswith(prefix)}
    for name in (".cache", "runs", "notes.txt"):
        assert not any(p == name or p.startswith(name + "/") for p in source), f"{name} went into the image"
    assert tracked <= set(source), f"tracked files missing from the image: {sorted(tracked - set(source))[:10]}"
    # Beyond the tracked files, only what %post made: the venv and the editable install's metadata.
    made = {p for p, t in source.items() if t != "d" and p not in tracked and not p.startswith(".venv/")
            and ".egg-info/" not in p and "__pycache__/" not in p}
    assert not made, f"files in the image that are neither tracked nor made by %post: {sorted(made)[:10]}"

    # The venv is the one %post built in the image, not the checkout's.
    stamps = [p for p in source if p.startswith(".venv/.setup-")]
    assert stamps == [f".venv/{setup_stamp(checkout)}"]
    assert ch_run(image, "/opt/hpcmorph/.venv/bin/python", "-c", "import sys; print(sys.prefix)").stdout.strip() \
        == "/opt/hpcmorph/.venv"
    assert ch_run(image, "head", "-n1", "/opt/hpcmorph/.venv/bin/hpcmorph").stdout.strip() \
        == "#!/opt/hpcmorph/.venv/bin/python"

    # The build host's settings reached %post only: no pip config, CA copy or resolver in the image.
    for leak in (".hpcmorph-build", "etc/pip.conf", "etc/xdg/pip", "root/.cache/pip"):
        assert leak not in paths, f"/{leak} is in the image"
    assert paths["etc/resolv.conf"] == ("-", 0), "the build host's resolv.conf is in the image"
    # Apptainer's layout: the runscript, %environment and the labels.
    assert {".singularity.d/runscript", ".singularity.d/env/90-environment.sh", ".singularity.d/test",
            ".singularity.d/labels.json", "mnt/out", "usr/local/bin/hpcmorph"} <= set(paths)


def test_hpcmorph_info_under_ch_run(image):
    info = ch_run(image, "hpcmorph", "info").stdout
    fields = dict(line.split(None, 1) for line in info.splitlines() if line.strip())
    assert fields["h5py_mpi"].strip() == "True"
    assert fields["mpi"].startswith("Open MPI v4.1")
    assert fields["python"].startswith("3.11.")
    # %environment, through the actions a runtime that does not read it can call (ch-run keeps the
    # host's environment: without OMP_NUM_THREADS here, the image's default must show).
    e = ch_env()
    e.pop("OMP_NUM_THREADS")
    out = subprocess.run(["ch-run", str(image.path), "--", "/.singularity.d/actions/exec", "sh", "-c",
                          "echo $OMP_NUM_THREADS; command -v python"],
                         capture_output=True, text=True, env=e, timeout=60)
    assert out.stdout.split() == ["1", "/opt/hpcmorph/.venv/bin/python"], out.stdout + out.stderr
    assert "generate" in ch_run(image, "/.singularity.d/actions/run", "--help").stdout


# The suite's small run (every stage in about a minute: `--config tiny` as it is spends 6 min in the
# attack on 2 busy cores), with one data-parallel backend on both sides: the image has no Horovod
# (the GPU image builds it), a host venv set up by `make test` has.
TINY_RUN = ["run", "--config", "tiny", *sets(SMALL_RUN), "--set", "train.backend=ddp"]


def test_tiny_pipeline_in_the_image_under_mpirun_equals_the_same_run_outside(image, tmp_path):
    outside, inside = tmp_path / "outside", tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    cli(TINY_RUN, outside, ranks=2, timeout=900)
    # The host's mpirun starts one ch-run per rank; each rank's MPI library is the image's, talking to
    # the host's mpirun (the same Open MPI 4.1 on both sides). The output folder is bind-mounted.
    cmd = [mpirun(), "-n", "2", "ch-run", "-b", f"{inside}:/mnt/out", "-c", "/mnt/out", str(image.path), "--",
           "hpcmorph", *TINY_RUN]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ch_env(), timeout=900)
    assert res.returncode == 0, f"{' '.join(cmd)} exited {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"

    assert_same_run(outside / "runs" / "tiny", inside / "runs" / "tiny")


def assert_same_run(a: Path, b: Path) -> None:
    """The run folder ``b`` (made in a container) holds the files of ``a`` (made outside) with the same
    contents: HDF5 datasets and weights exactly, JSON and CSV without the fields that say when, where
    or how fast."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    compared = {".h5": 0, ".pt": 0, ".json": 0, ".csv": 0}
    for rel in files:
        if rel.suffix == ".h5":
            da, db = h5_contents(a / rel), h5_contents(b / rel)
            assert sorted(da) == sorted(db), rel
            for name in da:
                np.testing.assert_array_equal(da[name], db[name], err_msg=f"{rel}:{name} differs inside the container")
        elif rel.suffix == ".pt":
            import torch

            wa, wb = (torch.load(d / rel, map_location="cpu", weights_only=False) for d in (a, b))
            wa, wb = wa.get("model", wa), wb.get("model", wb)   # model.pt holds more than the weights
            assert list(wa) == list(wb), rel
            for key in wa:
                assert torch.equal(wa[key], wb[key]), f"{rel}: {key} differs inside the container"
        elif rel.suffix == ".json":
            assert drop_provenance(json.loads((a / rel).read_text())) == \
                drop_provenance(json.loads((b / rel).read_text())), f"{rel} differs inside the container"
        elif rel.suffix == ".csv":
            assert csv_data(a / rel) == csv_data(b / rel), f"{rel} differs inside the container"
        else:
            continue
        compared[rel.suffix] += 1
    assert compared[".h5"] >= 5 and compared[".pt"] >= 4 and compared[".json"] >= 5, compared


def test_large_mpi_messages_between_two_containers(image):
    """One ch-run per rank puts the ranks in different user namespaces, where Open MPI's CMA single
    copy is refused: with its default settings an 8 MB allreduce hung here. The image's Open MPI
    configuration turns it off, so nothing needs to be set on the host."""
    e = {k: v for k, v in ch_env().items() if not k.startswith("OMPI_MCA_btl")}
    code = "from mpi4py import MPI; import numpy as np; print(MPI.COMM_WORLD.allreduce(np.ones(4_000_000))[0])"
    proc = subprocess.Popen([mpirun(), "-n", "2", "ch-run", str(image.path), "--", "/opt/hpcmorph/.venv/bin/python",
                             "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"a 32 MB allreduce between two ch-run ranks hung\n{err[-3000:]}")
    assert proc.returncode == 0 and out.split() == ["2.0", "2.0"], out + err[-3000:]
    assert "CMA" not in err, err[-3000:]


def h5_contents(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file, in every group, read whole (attributes hold provenance: left out)."""
    found = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            found[name] = obj[...]

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return found


def timing(key: str) -> bool:
    """A field that says when, where, how fast or from which commit a result was made, not what it is."""
    return (key in {"provenance", "versions", "git_commit", "host", "started", "finished"}
            or key.startswith("version_") or "seconds" in key or "time" in key or key.endswith("_per_s"))


def drop_provenance(value):
    if isinstance(value, dict):
        return {k: drop_provenance(v) for k, v in value.items() if not timing(k)}
    if isinstance(value, list):
        return [drop_provenance(v) for v in value]
    return value


def csv_data(path: Path) -> list[list[str]]:
    rows = list(csv.reader(path.read_text().splitlines()))
    keep = [i for i, name in enumerate(rows[0]) if not timing(name)] if rows else []
    # A long table's record of a timing (comparison.csv's train_time_ratio row) goes too.
    return [[row[i] for i in keep if i < len(row)] for row in rows if not any(timing(cell) for cell in row[:2])]


def test_a_failing_post_line_fails_the_build_shows_it_and_leaves_no_image(tmp_path):
    """A def with the CPU image's header (so the debootstrap result cached by any earlier build is
    reused: a few seconds) whose %post fails on its second command."""
    need_root()
    header = CPU_DEF.read_text().split("%", 1)[0]
    bad = tmp_path / "bad.def"
    bad.write_text(header + "%post\n    echo first step\n    ls /no/such/file\n    echo never reached\n"
                   "%test\n    true\n")
    work = tmp_path / "work"
    work.mkdir()
    image = tmp_path / "bad.sqfs"
    res = build(bad, image, tmp_path, tmp_path / "build.log", HPCMORPH_BUILD_TMP=str(work))
    assert res.returncode == 1, res.stdout[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("build-image: %post failed") and last.endswith("+ ls /no/such/file"), last
    assert "first step" in res.stdout and "never reached" not in res.stdout.replace("echo never reached", "")
    assert not image.exists(), "an image was left under its final name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.def", "build.log", "work"]
    assert list(work.iterdir()) == [], "the build's root file system was left behind"


def test_a_def_the_script_cannot_build_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "docker.def"
    bad.write_text("Bootstrap: docker\nFrom: debian:12\n\n%post\n    true\n")
    res = subprocess.run(["bash", str(BUILD), str(bad), str(tmp_path / "x.sqfs")], capture_output=True, text=True,
                         env=env(), timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("hpcmorph: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "debootstrap" in res.stderr and not (tmp_path / "x.sqfs").exists()
