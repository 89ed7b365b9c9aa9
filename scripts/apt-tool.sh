#!/usr/bin/env bash
# scripts/apt-tool.sh COMMAND PACKAGE...: install Debian's PACKAGEs if COMMAND is not on PATH.
# Idempotent and quiet: with COMMAND on PATH it returns at once and prints nothing. Without root or
# apt it says so and returns 0: what needs COMMAND then skips (the report's browser tests, make
# lint's shell check), except in CI (CI=true), where those fail, as they should.
#   scripts/apt-tool.sh chromium chromium fonts-liberation   # the report's headless browser
#   scripts/apt-tool.sh shellcheck shellcheck                # make lint
set -euo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 COMMAND PACKAGE..." >&2; exit 2; }
cmd=$1
shift
command -v "$cmd" >/dev/null 2>&1 && exit 0
say() { printf 'apt-tool: %s\n' "$*"; }
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1 || [[ -n "${HPCMORPH_NO_APT:-}" ]]; then
    say "no $cmd, and no root apt-get to install it ($*); what needs it will be skipped"
    exit 0
fi
say "installing $* with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$@" >/dev/null
command -v "$cmd" >/dev/null 2>&1 || { say "apt-get installed no $cmd binary" >&2; exit 1; }
say "$("$cmd" --version 2>/dev/null | head -1)"
