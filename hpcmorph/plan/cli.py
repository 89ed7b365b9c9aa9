"""``hpcmorph plan`` on the command line: its arguments, the table it prints, its errors."""

from __future__ import annotations

import argparse
import json
import math
import sys
import types

from ..config import PRESETS
from ..errors import UserError
from .figures import DEVICES, PlanError
from .model import Plan, limit_seconds, make, margin_text

def hms(seconds: float) -> str:
    s = int(math.ceil(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_plan(plan: Plan) -> str:
    lines = [f"hpcmorph plan: config {plan.config}; device {plan.device}"
             + (f" ({plan.gpus_per_rank} GPU per rank)" if plan.device == "cuda" else "")
             + f"; {plan.ranks_per_node} ranks per node; {plan.dataset.describe()}"]
    cal = plan.calibration
    lines.append(f"figures: calibrated on {cal.get('host')} ({cal.get('device_name')}) {cal.get('date')}"
                 if cal else "figures: none calibrated here: every throughput below is ASSUMED "
                 "(run `hpcmorph plan --calibrate` on the machine that will run the job)")
    lines.append("")
    lines.append(f"{'stage':<9} {'ranks':>5} {'device':<6} {'predicted':>10} {'expected':>10} {'limit':>9} "
                 f"{'nodes':>5} {'node-h':>8} {'GPU-h':>8}")
    for s in plan.stages:
        h = s.hours(plan.ranks_per_node)
        lines.append(f"{s.stage:<9} {s.ranks:>5} {s.device:<6} {hms(s.seconds):>10} {hms(s.expected_seconds):>10} "
                     f"{hms(limit_seconds(s)):>9} {h['nodes']:>5} {h['node_hours']:>8.3f} {h['gpu_hours']:>8.3f}")
    lines.append(f"{'total':<9} {'':>5} {'':<6} {hms(plan.seconds):>10} "
                 f"{hms(sum(s.expected_seconds for s in plan.stages)):>10}")
    lines.append(f"(predicted: at most; expected: with the attack's query curve where there is one; "
                 f"limit: what `hpcmorph submit` asks for, {margin_text()})")
    for s in plan.stages:
        lines.append("")
        lines.append(f"{s.stage}:")
        for t in s.terms:
            rate = f"  at {t.rate.describe()}" if t.rate else " [assumed]"
            exp = "" if t.expected_seconds is None else f" (expected {t.expected_seconds:,.1f} s)"
            lines.append(f"  {t.what}: {t.seconds:,.1f} s{exp}{rate}")
        if s.ranks > 1:
            lines.append(f"  parallel efficiency {s.efficiency:.2f} [assumed]")
        for note in s.notes:
            lines.append(f"  note: {note}")
    assumed = plan.assumed()
    lines.append("")
    lines.append("assumed figures: " + ("; ".join(assumed) if assumed else "none"))
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Count every stage's work for a config, the per-rank throughput it assumes (measured "
                     "here with --calibrate, or a stated table) and the predicted wall time and node/GPU-hours.")
    p.add_argument("--config", "-c", default="laptop", metavar="PRESET|YAML",
                   help=f"preset name ({', '.join(PRESETS)}) or YAML file (default: laptop)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field (repeatable)")
    p.add_argument("--ranks", default="1", metavar="N", help="MPI ranks of generate, train, attack, analyze "
                   "(report: 1); default 1")
    p.add_argument("--gpus-per-rank", default=None, metavar="G", help="GPUs per rank with --device cuda (default 1)")
    p.add_argument("--ranks-per-node", default=None, metavar="R",
                   help="ranks per node, for node-hours (default: the --site's nodes, else 4 with cuda, 32 with cpu)")
    p.add_argument("--site", default=None, metavar="NAME",
                   help="size nodes as this facility's (hpcmorph/sites.py: polaris, frontier, perlmutter): one "
                   "rank per GPU with cuda, one per usable core with cpu, as hpcmorph submit --site runs them")
    p.add_argument("--device", default=None, metavar="cpu|cuda",
                   help="device of train, attack and analyze (default: cuda where this machine has one, else cpu)")
    p.add_argument("--calibrate", action="store_true",
                   help="first measure the figures on this machine (a few seconds to a minute) and store them as "
                   "<run.root>/<run.name>/calibration-<device>.json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    # Every mistake on this command line is one line and exit 2, as a bad config is.
    p.error = types.MethodType(_argparse_error, p)


def _argparse_error(parser: argparse.ArgumentParser, message: str):
    print(f"hpcmorph: error: plan: {message}", file=sys.stderr)
    sys.exit(2)


def _positive(text: str | None, flag: str, default: int, zero_ok: bool = False) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise PlanError(f"{flag} {text!r}: expected a whole number") from None
    if value < (0 if zero_ok else 1):
        raise PlanError(f"{flag} {value}: expected {'0 or more' if zero_ok else 'at least 1'}")
    return value


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


def run(args: argparse.Namespace) -> int:
    from .. import config as config_mod

    try:
        ranks = _positive(args.ranks, "--ranks", 1)
        device = args.device or _default_device()
        if device not in DEVICES:
            raise PlanError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
        gpus = _positive(args.gpus_per_rank, "--gpus-per-rank", 1 if device == "cuda" else 0, zero_ok=True)
        default_rpn = 4 if device == "cuda" else 32
        if args.site:
            from .. import sites

            default_rpn = sites.ranks_per_node(sites.get(args.site), device == "cuda") or default_rpn
        rpn = _positive(args.ranks_per_node, "--ranks-per-node", default_rpn)
        cfg = config_mod.load(args.config, args.overrides)
        calibration = None
        if args.calibrate:
            from .. import calibrate

            calibration = calibrate.calibrate(cfg, device, ranks)
            calibration["path"] = str(calibrate.path_for(cfg, device))
            if not args.json:
                print(f"calibrated: {calibration['path']}", file=sys.stderr)
        plan = make(cfg, ranks, device, gpus, rpn, calibration)
    except UserError as err:
        print(f"hpcmorph: error: plan: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0
