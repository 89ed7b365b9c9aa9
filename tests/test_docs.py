"""The documentation: a short front door, pages that point only inside the repository, links that
resolve, and a layout that names every package and module (so it cannot silently leave one out)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import ROOT

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
PACKAGE = ROOT / "hpcmorph"
MAX_README_LINES = 200

# Pages that other branches add (the resource plan, the failure modes), linked before they land here.
# TODO(after merging them): empty this set, so that these links are checked like every other.
NOT_YET_MERGED: set[str] = set()

# [text](target) and ![alt](target), with an optional "title" after the target.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# <img src="..."> in case a page uses HTML for an image.
IMG = re.compile(r"<img\s[^>]*src=\"([^\"]+)\"", re.IGNORECASE)


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where bracket-paren pairs are not links."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return LINK.findall(text) + IMG.findall(text)


def _documents() -> list[Path]:
    return [README, *PAGES]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def test_readme_is_a_front_door():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n < MAX_README_LINES, f"README.md has {n} lines; keep it under {MAX_README_LINES} (the manual is docs/)"


@pytest.mark.parametrize("path", _documents(), ids=_ids(_documents()))
def test_nothing_points_outside_the_repository(path):
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{path.name} mentions ../shared, a path outside the repository"
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        assert not target.startswith("/"), f"{path.name}: absolute link {target!r}"
        local = target.split("#", 1)[0]
        if local:
            resolved = (path.parent / local).resolve()
            assert resolved == ROOT or ROOT in resolved.parents, \
                f"{path.name}: link {target!r} leaves the repository"


@pytest.mark.parametrize("path", _documents(), ids=_ids(_documents()))
def test_every_relative_link_names_a_file_that_exists(path):
    missing = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue
        local = target.split("#", 1)[0]
        if not local:  # an anchor on the same page
            continue
        resolved = (path.parent / local).resolve()
        if resolved.as_posix().removeprefix(ROOT.as_posix() + "/") in NOT_YET_MERGED:
            continue
        if not resolved.exists():
            missing.append(target)
    assert not missing, f"{path.name}: links to files that do not exist: {missing}"


def test_the_link_finder_sees_links_and_images_but_not_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("See [a](a.md) and ![b](img/b.png \"title\") and [c](https://x.org/c#d).\n"
                    "`[not](code.md)`\n```\n[neither](block.md)\n```\n<img src=\"e.png\">\n")
    assert links(page) == ["a.md", "img/b.png", "https://x.org/c#d", "e.png"]


def _layout() -> str:
    """The README's Layout section."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^## Layout\s*$(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, "README.md has no '## Layout' section"
    return match.group(1)


def _entries(layout: str) -> dict[str, str]:
    """Each entry of the layout (a line indented by at most two spaces) with its continuation lines."""
    entries: dict[str, str] = {}
    current = None
    for line in layout.splitlines():
        m = re.match(r"^ {0,2}(\S+)", line)
        if m:
            current = m.group(1)
            entries[current] = line
        elif current is not None:
            entries[current] += "\n" + line
    return entries


def _packages() -> list[Path]:
    return sorted(p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__" and not p.name.startswith("."))


def test_layout_names_every_package_directory():
    entries = _entries(_layout())
    missing = [f"{p.name}/" for p in _packages() if f"{p.name}/" not in entries]
    assert not missing, f"README.md's Layout leaves out hpcmorph/{', hpcmorph/'.join(missing)}"


def test_layout_names_every_module_in_its_package():
    entries = _entries(_layout())
    missing = [f"hpcmorph/{p.name}" for p in sorted(PACKAGE.glob("*.py")) if p.name not in entries.get("hpcmorph/", "")]
    for package in _packages():
        block = entries.get(f"{package.name}/", "")
        missing += [f"hpcmorph/{package.name}/{m.name}" for m in sorted(package.glob("*.py"))
                    if m.name != "__init__.py" and not re.search(rf"\b{re.escape(m.name)}\b", block)]
    assert not missing, f"README.md's Layout leaves out {missing}"


# A stated duration: "99 s", "1.5 min", "a few minutes", "under 2 minutes", "~25 minutes".
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s*(?:s|sec|seconds?|min|minutes?|h|hours?)\b|\ba few (?:seconds|minutes)\b"
                      r"|\bunder (?:a|an|\d+) (?:minute|minutes|hour|hours)\b")


def _sentences(text: str) -> list[str]:
    """``text`` as sentences of prose (a sentence often spans lines), and each line of code, of a
    table, a heading or a Makefile recipe or comment on its own."""
    units: list[str] = []
    prose: list[str] = []
    fenced = False

    def flush() -> None:
        if prose:
            units.extend(re.split(r"(?<=[.!?])\s+(?=[`A-Z*(\[])", " ".join(prose)))
            prose.clear()

    for line in text.splitlines():
        if line.startswith(("```", "~~~")):
            flush()
            fenced = not fenced
        elif fenced or not line.strip() or line.startswith(("|", "#", "\t")):
            flush()
            units.append(line)
        else:
            prose.append(line.strip())
    flush()
    return [u for u in units if u.strip()]


def _method_list(path: Path) -> list[str]:
    """The methods a page lists after "`attack.method` is one of", up to the ";" (or table cell end) that ends it."""
    found = re.search(r"`attack\.method` is one of (.*?)[;|]", re.sub(r"\s+", " ", path.read_text(encoding="utf-8")))
    assert found, f"{path.relative_to(ROOT)} lists no methods after '`attack.method` is one of'"
    return re.findall(r"`([^`]+)`", found.group(1))


@pytest.mark.parametrize("page", ["pipeline.md", "attack.md"])
def test_pages_list_the_attack_methods_there_are(page):
    from hpcmorph.attack.methods import METHODS

    assert _method_list(ROOT / "docs" / page) == list(METHODS), f"docs/{page}'s attack.method list"


def test_the_stage_table_names_every_attack_method():
    from hpcmorph.attack.methods import METHODS
    from hpcmorph.stages import stage

    text = stage("attack").description
    assert [m for m in METHODS if not re.search(rf"\b{re.escape(m)}\b", text)] == []
    assert "one per mode and k" not in text


def test_make_test_fast_states_its_time_in_one_place():
    stating = []
    for path in [README, ROOT / "Makefile", *PAGES]:
        for sentence in _sentences(path.read_text(encoding="utf-8")):
            if "test-fast" in sentence and DURATION.search(sentence):
                stating.append(f"{path.relative_to(ROOT)}: {sentence.strip()[:100]}")
    assert len(stating) == 1 and stating[0].startswith("docs/testing.md"), stating


def test_only_the_readme_quotes_how_long_make_run_takes():
    readme = re.sub(r"\s+", " ", README.read_text(encoding="utf-8"))
    took = re.search(r"`make run`.{0,200}? took (\d+ min \d+ s)", readme)
    assert took, "README.md no longer says how long `make run` took"
    for path in PAGES:
        text = path.read_text(encoding="utf-8")
        assert took.group(1) not in re.sub(r"\s+", " ", text), f"{path.relative_to(ROOT)} repeats the README's time"
        quoting = [s for s in _sentences(text) if "`make run`" in s and re.search(r"\b\d+(?:\.\d+)? ?min", s)]
        assert not quoting, f"{path.relative_to(ROOT)} quotes a `make run` time; refer to the README: {quoting}"
