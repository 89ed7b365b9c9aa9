#!/usr/bin/env bash
# Install Debian's chromium (headless browser for scripts/check-report.sh and report.screenshot) if
# there is none. Idempotent and quiet: with chromium on PATH it returns at once and prints nothing.
# Without root or apt it says so and returns 0: the browser tests then skip, except in CI (CI=true),
# where they fail, as they should.
set -euo pipefail

command -v chromium >/dev/null 2>&1 && exit 0
say() { printf 'setup-chromium: %s\n' "$*"; }
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1 || [[ -n "${HPCMORPH_NO_APT:-}" ]]; then
    say "no chromium, and no root apt-get to install it; the report's browser check will be skipped"
    exit 0
fi
say "installing chromium with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# fonts-liberation (a recommend of chromium-common): metric-compatible Arial/Helvetica for the page text.
apt-get install -y -qq --no-install-recommends chromium fonts-liberation >/dev/null
command -v chromium >/dev/null 2>&1 || { say "apt-get installed no chromium binary" >&2; exit 1; }
say "$(chromium --version 2>/dev/null | head -1)"
