"""The images beyond the CPU SquashFS, built for real (marker ``images``, as root; `make test-images`,
not `make test`: each build takes minutes, docs/hpc.md):

* the GPU image from apptainer/hpcmorph.def (`make image-gpu`): Debian by debootstrap, CUDA and NCCL
  from torch's PyPI wheels, Horovod built with NCCL; its %test passes on this machine's CPU, and
  scripts/gpu-check.sh --image runs its checks and its collectives inside it under ch-run;
* the OCI archive of the CPU image (`make image-oci`): loaded with `podman load`, the tiny chain run
  in it with `podman run`, its outputs equal to the same run outside (the comparison of
  tests/test_container.py)."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import ROOT, cli, env
from test_container import TINY_RUN, Image, assert_same_run, build, ch_run, checkout, listing, need_root  # noqa: F401

pytestmark = [pytest.mark.images, pytest.mark.timeout(4800)]

BUILD_OCI = ROOT / "scripts" / "build-oci.sh"
GPU_CHECK = ROOT / "scripts" / "gpu-check.sh"
VENV_SITE = "opt/hpcmorph/.venv/lib/python3.11/site-packages"


@pytest.fixture(scope="session")
def gpu_image(checkout, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("gpu-image")
    path = out / "hpcmorph-gpu.sqfs"
    res = build(Path("apptainer/hpcmorph.def"), path, checkout, out / "build.log")
    assert res.returncode == 0, f"the GPU image build failed:\n{res.stdout[-6000:]}"
    yield Image(path, res.stdout)
    path.unlink()


def test_gpu_image_passes_its_test_with_cuda_nccl_and_horovod_with_nccl(gpu_image):
    assert "build-image: %test passed" in gpu_image.log
    # The %test's own line: torch's CUDA, the NCCL it loads, Horovod's build (nccl_built() answers
    # the NCCL version it was built with: 23007 for 2.30.7).
    line = next(x for x in gpu_image.log.splitlines() if x.startswith("cuda ")).split()
    assert line[:2] == ["cuda", "13.0"] and line[4:6] == ["horovod", "nccl_built"], line
    major, minor, _ = (int(v) for v in line[3].split("."))
    assert int(line[6]) == major * 10000 + minor * 100 + int(line[3].split(".")[2]), line
    paths = listing(gpu_image)
    assert any(p.startswith(f"{VENV_SITE}/nvidia/nccl/lib/libnccl.so") for p in paths)
    assert any(p.startswith(f"{VENV_SITE}/horovod/torch/mpi_lib_v2") for p in paths)
    # nvcc was the build's alone: not in the image.
    assert not any(p.endswith("/bin/nvcc") for p in paths), [p for p in paths if p.endswith("/bin/nvcc")]
    assert {"mnt/out", "mnt/driver", ".singularity.d/test"} <= set(paths)
    labels = json.loads(ch_run(gpu_image, "cat", "/.singularity.d/labels.json").stdout)
    assert labels["hpcmorph.flavour"] == "cuda-nccl"


@pytest.mark.skipif(not shutil.which("ch-run"), reason="needs ch-run (scripts/build-image.sh installs it)")
def test_gpu_check_runs_in_the_gpu_image_on_the_cpu(gpu_image, tmp_path):
    out = tmp_path / "out"
    res = subprocess.run(["bash", str(GPU_CHECK), "--image", str(gpu_image.path), "--cpu", "--out", str(out),
                          "--budget", "300"], cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "under " in res.stderr and "ch-run" in res.stderr
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["mode"] == "cpu" and report["passed"] is True, report["checks"]
    # The image's copy ran, with the image's python.
    assert report["steps"]["environment"]["python"] == "/opt/hpcmorph/.venv/bin/python"
    coll = json.loads((out / "collectives.json").read_text())
    assert coll["passed"] is True and coll["torch_distributed"]["backend"] == "gloo", coll
    assert coll["horovod"]["nccl_built"] is True and coll["horovod"]["mpi_built"] is True, coll


def podman_sandbox_flags() -> list[str]:
    """What `podman run` needs here and not on a laptop: this sandbox runs as root without
    CAP_SYS_RESOURCE, so podman's root defaults (nofile and nproc limits of 1048576) are refused;
    its cgroups are in hybrid mode, which Debian 12's crun refuses and runc runs in
    (docs/hpc.md)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return ["--runtime", "runc", "--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="session")
def oci_archive(checkout, tmp_path_factory):  # noqa: F811
    need_root()
    out = tmp_path_factory.mktemp("oci")
    archive = out / "hpcmorph-cpu-oci.tar"
    with open(out / "build.log", "w") as log:
        res = subprocess.run(["bash", str(BUILD_OCI), "apptainer/hpcmorph-cpu.def", str(archive)], cwd=checkout,
                             stdout=log, stderr=subprocess.STDOUT, env=env(), timeout=3600)
    text = (out / "build.log").read_text(errors="replace")
    assert res.returncode == 0, f"the OCI build failed:\n{text[-6000:]}"
    yield archive
    archive.unlink()


def podman(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"podman {' '.join(args[:3])} exited {res.returncode}\n{res.stderr[-4000:]}"
    return res


def test_oci_archive_loads_and_runs_the_tiny_chain_as_outside(oci_archive, tmp_path):
    # The archive, not the image the build left in this machine's storage: every tag of it removed
    # (a name alone is only untagged while another tag holds the image), then loaded.
    ids = set(podman("images", "--quiet", "--filter", "reference=localhost/hpcmorph-cpu").stdout.split())
    if ids:
        podman("rmi", "--force", *ids)
    assert subprocess.run(["podman", "image", "exists", "localhost/hpcmorph-cpu:latest"]).returncode == 1
    loaded = podman("load", "--input", str(oci_archive)).stdout
    assert "localhost/hpcmorph-cpu:latest" in loaded, loaded
    config = json.loads(podman("image", "inspect", "localhost/hpcmorph-cpu:latest").stdout)[0]["Config"]
    assert "OMP_NUM_THREADS=1" in config["Env"] and config["WorkingDir"] == "/mnt/out"
    assert config["Labels"]["hpcmorph.flavour"] == "cpu"

    outside, inside = tmp_path / "outside", tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    cli(TINY_RUN, outside, ranks=2, timeout=900)
    # One container, its own Open MPI starting both ranks, as on a laptop; the image's PATH and
    # root consent come from its configuration, nothing from this environment.
    podman("run", "--rm", *podman_sandbox_flags(), "--network", "none", "--shm-size", "1g",
           "-e", "OMPI_MCA_rmaps_base_oversubscribe=1", "-v", f"{inside}:/mnt/out",
           "localhost/hpcmorph-cpu:latest", "mpirun", "-n", "2", "hpcmorph", *TINY_RUN)
    assert_same_run(outside / "runs" / "tiny", inside / "runs" / "tiny")
