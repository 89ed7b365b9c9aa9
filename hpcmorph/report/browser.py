"""Open a report in headless Chromium: check that every figure displays and the tables are there, then
take a screenshot.

Standard library only, so ``scripts/check-report.sh`` runs this file with any Python 3::

    python3 hpcmorph/report/browser.py REPORT_DIR [SCREENSHOT.png]

Two browser runs: ``--dump-dom`` after a virtual-time budget (so the page's load script has written
``data-figures-loaded`` and ``data-figures-total`` on ``<body>``), then ``--screenshot``. Chromium is
Debian's ``chromium`` (or ``$CHROMIUM``); as root it needs ``--no-sandbox``, and containers have a
small /dev/shm, hence ``--disable-dev-shm-usage``. Each run gets a throwaway profile directory so
that concurrent checks do not contend for one profile lock.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("hpcmorph")

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--mute-audio")
REQUIRED_IDS = ("table1", "table2")
WINDOW = (1280, 4000)  # screenshot size, CSS pixels: the top of the report (title, tables, Figure 2)
TIMEOUT_S = 180.0  # per browser run: a cold start on a busy 2-core machine takes seconds, not minutes


class CheckError(RuntimeError):
    """The page did not pass the check (message says what is wrong), or the browser failed."""


def find_chromium() -> str | None:
    """Path of a Chromium executable (``$CHROMIUM`` first), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).exists() else None)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def _browser(chromium: str, args: list[str], timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="hpcmorph-chromium-") as profile:
        cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CheckError(f"{chromium} did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-8:])
        raise CheckError(f"{chromium} exited {res.returncode}: {' '.join(cmd)}\n{tail}")
    return res.stdout


def _body_attr(dom: str, name: str) -> int | None:
    body = re.search(r"<body\b[^>]*>", dom)
    found = re.search(rf'\b{name}="(\d+)"', body.group(0)) if body else None
    return int(found.group(1)) if found else None


def verify_dom(dom: str) -> tuple[int, int]:
    """(figures loaded, total) from a dumped DOM; CheckError if not every figure loaded, there is none,
    or a required table is missing."""
    loaded, total = _body_attr(dom, "data-figures-loaded"), _body_attr(dom, "data-figures-total")
    if loaded is None or total is None:
        raise CheckError("the page's load script did not run: <body> has no data-figures-loaded/"
                         "data-figures-total attributes")
    if total == 0:
        raise CheckError("the page has no figures (data-figures-total=0)")
    if loaded != total:
        raise CheckError(f"only {loaded} of {total} figures loaded")
    missing = [i for i in REQUIRED_IDS if not re.search(rf'\bid="{i}"', dom)]
    if missing:
        raise CheckError(f"no element with id {', '.join(missing)} (the tables) in the page")
    return loaded, total


def check(report_dir: Path, screenshot: Path | None = None, chromium: str | None = None,
          timeout: float = TIMEOUT_S) -> tuple[int, int]:
    """Check ``report_dir/index.html`` in headless Chromium and, if asked, write ``screenshot`` (PNG).

    Returns (figures loaded, total). CheckError when the page fails; FileNotFoundError when there is no
    Chromium (callers decide whether that is fatal).
    """
    index = Path(report_dir).resolve() / "index.html"
    if not index.is_file():
        raise CheckError(f"{index}: no such file")
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH (Debian: apt-get install chromium; or set $CHROMIUM)")
    url = index.as_uri()
    dom = _browser(chromium, ["--virtual-time-budget=10000", "--dump-dom", url], timeout)
    counts = verify_dom(dom)
    if screenshot is not None:
        shot = Path(screenshot).resolve()
        shot.parent.mkdir(parents=True, exist_ok=True)
        tmp = shot.with_name(shot.stem + ".tmp.png")
        tmp.unlink(missing_ok=True)
        _browser(chromium, ["--virtual-time-budget=10000", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                            f"--screenshot={tmp}", url], timeout)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise CheckError(f"{chromium} wrote no screenshot to {tmp}")
        os.replace(tmp, shot)
    return counts


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or args[0] in ("-h", "--help"):
        print("usage: check-report.sh REPORT_DIR [SCREENSHOT.png]", file=sys.stderr)
        return 2
    shot = Path(args[1]) if len(args) == 2 else None
    try:
        loaded, total = check(Path(args[0]), shot)
    except FileNotFoundError as err:
        print(f"check-report: {err}", file=sys.stderr)
        return 3
    except CheckError as err:
        print(f"check-report: FAILED: {args[0]}: {err}", file=sys.stderr)
        return 1
    print(f"check-report: ok: {loaded} of {total} figures loaded, tables present"
          + (f"; screenshot {shot}" if shot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
