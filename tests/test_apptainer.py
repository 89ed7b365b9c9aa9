"""Static checks of the Apptainer definitions: no Apptainer can be installed here, so the recipes are
kept honest by parsing them and checking that what they run exists and is valid shell."""

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


def test_both_flavours_exist():
    assert {p.name for p in DEFS} == {"hpcmorph.def", "hpcmorph-cpu.def"}


@pytest.mark.slow
@pytest.mark.parametrize("path", DEFS, ids=lambda p: p.name)
def test_header_and_sections(path):
    header, sections = parse(path)
    assert header.get("Bootstrap") == "docker" and header.get("From")
    assert set(sections) <= KNOWN_SECTIONS, set(sections) - KNOWN_SECTIONS
    assert {"labels", "help", "post", "runscript", "test", "environment", "files"} <= set(sections)
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
    # %files copies the repository to where %post runs the script from.
    assert sections["files"].split()[:2] == [".", "/opt/hpcmorph"] and "cd /opt/hpcmorph" in post
    for target in re.findall(r"\bmake (\w[\w-]*)", post):
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), f"no Makefile target {target}"
    assert "hpcmorph" in sections["runscript"] and "hpcmorph info" in sections["test"]


def test_gpu_image_builds_horovod_with_nccl():
    _, sections = parse(ROOT / "apptainer" / "hpcmorph.def")
    assert "HOROVOD_GPU_OPERATIONS=NCCL make horovod" in sections["post"]
    assert "nccl_built" in sections["test"]
