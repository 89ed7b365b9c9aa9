#!/usr/bin/env bash
# Open a report in headless Chromium: check that every figure loaded (the page's load script writes
# data-figures-loaded / data-figures-total on <body>, read back with --dump-dom) and that Tables 1
# and 2 are there, then take a screenshot (1280x4000 CSS pixels) if a PNG path is given.
#
#   scripts/check-report.sh runs/laptop/report [screenshot.png]
#
# Exit: 0 ok; 1 the page failed the check (the message says how); 2 usage; 3 no Chromium
# (`make chromium`, i.e. scripts/apt-tool.sh, installs Debian's). $CHROMIUM picks another browser binary.
# The work is done by hpcmorph/report/browser.py (standard library only: any python3 runs it), the
# same code the report stage runs with report.screenshot=true.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x "$here/.venv/bin/python" ]]; then py=$here/.venv/bin/python
else py=python3
fi
exec "$py" "$here/hpcmorph/report/browser.py" "$@"
