"""The analysis's inputs, checked at the boundary: the attack outputs, Table 1 from train.

A missing or stale input is a :class:`~hpcmorph.errors.StageError` naming the file and the command
that makes it (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import store
from ..attack.stage import config_for_k
from ..attack.stage import digest as attack_digest
from ..attack.stage import output_path as attack_path
from ..config import Config
from ..errors import StageError

ATTACK_SCALARS = ("variant", "index", "label", "target", "success", "queries")


def attack_state(cfg: Config, k: int) -> tuple[Path, bool]:
    """(path of the k-pixel attack, whether it is a complete output of this config)."""
    ck = config_for_k(cfg, k)
    path = attack_path(ck)
    return path, path.exists() and store.output_digest(path) == attack_digest(ck)


def attack_ks(cfg: Config) -> list[int]:
    return sorted(set(cfg.analyze.k_sweep) | {cfg.attack.pixels})


def attack_command(k: int) -> str:
    return "hpcmorph attack --config ..." + ("" if k == 1 else f" --set attack.pixels={k}")


def require_attack(cfg: Config) -> Path:
    """The k = attack.pixels attack output, complete and made by this config; StageError otherwise."""
    k = cfg.attack.pixels
    path, current = attack_state(cfg, k)
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        hint = " (a .tmp file exists: the attack did not finish; rerun it)" if tmp.exists() else ""
        raise StageError(f"{path}: no such file; run `{attack_command(k)}` with this config first "
                         f"(analyze reads the k={k} attack, attack.pixels){hint}")
    if not current:
        raise StageError(f"{path} was made with other settings (digest {store.output_digest(path)}, this config "
                         f"{attack_digest(cfg)}); run `{attack_command(k)}` with this config first")
    return path


def read_table1(cfg: Config) -> dict:
    """Table 1 over seeds from ``train_summary.json`` ({variant: {"y10"|"y1": {metric: [mean, std]}, "seeds"}})."""
    from ..train.stage import digest as train_digest

    path = Path(cfg.run.root) / cfg.run.name / "train_summary.json"
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: no such file; run `hpcmorph train` with this config first") from None
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not a readable train summary ({err})") from None
    if found.get("digest") != train_digest(cfg) or "table1" not in found:
        raise StageError(f"{path} is from other train settings (digest {found.get('digest')}, this config "
                         f"{train_digest(cfg)}); run `hpcmorph train` with this config first")
    return found["table1"]


def read_attack(path: Path, variants: list[str]) -> tuple[dict[str, np.ndarray], dict]:
    """(scalar columns with ``prob_after``, summary) of the attack output; its variants must be ours."""
    with store.open_checked(path, "attack") as f:
        cols = {name: f[name][...] for name in (*ATTACK_SCALARS, "prob_after")}
        found = str(f.attrs["variant_names"]).split(",")
        summary = json.loads(f.attrs["summary"])
    if found != variants:
        raise StageError(f"{path}: attacked models {found}, but attack.variants is {variants}")
    summary_file = path.with_name(f"{path.stem}_summary.json")
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, ValueError):
        pass  # the attribute holds the same numbers
    return cols, summary

