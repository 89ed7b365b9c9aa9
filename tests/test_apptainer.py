"""Static checks of the Apptainer definitions: Apptainer cannot be installed here, so the recipes are
kept honest by parsing them and checking that what they run exists and is valid shell. Every def is
also built for real by scripts/build-image.sh: the CPU def by tests/test_container.py, the GPU def by
tests/test_images.py (marker images), the MPICH def by tests/test_mpich_image.py. The GPU def shares
the CPU def's install steps, checked here, and adds Horovod with NCCL."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFS = sorted((ROOT / "apptainer").glob("*.def"))
KNOWN_SECTIONS = {"labels", "help", "files", "post", "environment", "runscript", "test", "setup", "startscript"}
SHELL_SECTIONS = {"post", "environment", "runscript", "test", "setup", "startscript"}


def parse(path: Path) -> tuple[dict, dict]:
    header, sections, current = {}, {}, None
    for line in path.read_text().splitlines():
        m = re.match(r"^%(\w+)\s*$", line)
        if m:
            current = m.group(1)
            sections[current] = []
        elif current is None:
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition(":")
                header[key.strip()] = value.strip()
        else:
            sections[current].append(line)
    return header, {k: "\n".join(v) for k, v in sections.items()}


def test_every_flavour_exists():
    # CPU and GPU (Open MPI, generic clusters), MPICH ABI (the facilities' hybrid model: tests/test_mpich_image.py).
    assert {p.name for p in DEFS} == {"hpcmorph.def", "hpcmorph-cpu.def", "hpcmorph-mpich.def"}


def test_headers_say_what_each_image_is_built_from():
    cpu, _ = parse(ROOT / "apptainer" / "hpcmorph-cpu.def")
    assert cpu == {"Bootstrap": "debootstrap", "OSVersion": "bookworm", "MirrorURL": "http://deb.debian.org/debian"}
    # No registry: the GPU image bootstraps the same Debian, CUDA and NCCL come as torch's PyPI wheels.
    gpu, _ = parse(ROOT / "apptainer" / "hpcmorph.def")
    assert gpu == cpu


@pytest.mark.slow
@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_header_and_sections(path):
    header, sections = parse(path)
    assert set(sections) <= KNOWN_SECTIONS, set(sections) - KNOWN_SECTIONS
    assert {"labels", "help", "setup", "post", "runscript", "test", "environment"} <= set(sections)
    for name in SHELL_SECTIONS & set(sections):
        res = subprocess.run(["bash", "-n"], input=sections[name], capture_output=True, text=True)
        assert res.returncode == 0, f"%{name} of {path.name}: {res.stderr}"


@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_post_runs_the_project_install_script(path):
    _, sections = parse(path)
    post = sections["post"]
    calls = re.findall(r"bash (scripts/\S+)", post)
    assert "scripts/setup.sh" in calls
    for script in calls:
        assert (ROOT / script).is_file(), script
    # %setup puts the tracked files (never the working directory's .venv/, runs/, .cache/) where
    # %post runs the script from; nothing else copies files in.
    assert "files" not in sections
    assert "git -c safe.directory='*' -C \"$top\" ls-files -z" in sections["setup"]
    assert "/opt/hpcmorph" in sections["setup"] and "cd /opt/hpcmorph" in post
    for target in re.findall(r"\bmake (\w[\w-]*)", post):
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), f"no Makefile target {target}"
    assert "hpcmorph" in sections["runscript"] and "hpcmorph info" in sections["test"]


def test_gpu_image_builds_horovod_with_nccl():
    _, sections = parse(ROOT / "apptainer" / "hpcmorph.def")
    assert "HOROVOD_GPU_OPERATIONS=NCCL make horovod" in sections["post"]
    assert "nccl_built" in sections["test"]


def steps(script: str) -> list[str]:
    """A shell section's commands: comments and blank lines dropped, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", script)
    return [" ".join(line.split()) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


# What only the GPU image does: Horovod with NCCL (its CUDA collectives), a bind target for the driver.
CUDA_ONLY = re.compile(r"^(HOROVOD_GPU_OPERATIONS=NCCL make horovod |mkdir -p /mnt/driver$)")


def test_both_defs_share_every_install_step_but_the_cuda_ones():
    _, cpu = parse(ROOT / "apptainer" / "hpcmorph-cpu.def")
    _, gpu = parse(ROOT / "apptainer" / "hpcmorph.def")
    gpu_only = [s for s in steps(gpu["post"]) if CUDA_ONLY.search(s)]
    assert gpu_only == ["HOROVOD_GPU_OPERATIONS=NCCL make horovod VENV=/opt/hpcmorph/.venv", "mkdir -p /mnt/driver"]
    assert steps(cpu["post"]) == [s for s in steps(gpu["post"]) if not CUDA_ONLY.search(s)]
    for name in ("setup", "environment", "runscript"):
        assert steps(cpu[name]) == steps(gpu[name]), f"%{name} differs between the defs"
    # The GPU %test runs the CPU one, then checks NCCL.
    assert steps(gpu["test"])[:2] == steps(cpu["test"])[:2]
