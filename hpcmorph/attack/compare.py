"""The k = 1 attacks that compare methods and value ranges on the same images.

A run's attacks (:func:`.stage.configs`) are one per k of ``analyze.k_sweep``, plus, at k = 1, one per
method of ``analyze.compare_methods`` and, with ``analyze.compare_ranges``, each of those in the other
value range. Each is the run's config with only ``attack.method``, ``attack.pixel_range`` and
``attack.pixels`` changed, so each writes its own file (:func:`.stage.output_stem`) and all attack the
same images (the choice depends on neither). ``attack.certify`` stays on only for the run's own
method (in both ranges): the comparisons are of the searches, not of certification.
"""

from __future__ import annotations

from ..config import Config

#: The two value ranges a run compares: the data's (``attack.pixel_range`` null) and the authors' [0, 1].
RANGES = (None, [0.0, 1.0])


def variant(cfg: Config, method: str, pixel_range) -> Config:
    """``cfg``'s k = 1 attack by ``method`` in ``pixel_range`` (``cfg`` itself when nothing changes).
    ``attack.certify`` certifies the run's own method: the other methods are compared uncertified."""
    a = cfg.attack
    if (a.method, a.pixel_range, a.pixels) == (method, pixel_range, 1):
        return cfg
    return cfg.updated({"attack.method": method, "attack.pixel_range": pixel_range, "attack.pixels": 1,
                        "attack.certify": a.certify and method == a.method})


def other_range(pixel_range):
    """[0, 1] for the data's range, the data's (None) for any set range."""
    return [0.0, 1.0] if pixel_range is None else None


def extra_configs(cfg: Config, with_methods: bool = True) -> list[Config]:
    """The k = 1 comparison attacks ``analyze.compare_methods`` (unless ``with_methods`` is false) and
    ``analyze.compare_ranges`` ask for."""
    compared = (cfg.analyze.compare_methods or []) if with_methods else []
    methods = list(dict.fromkeys([cfg.attack.method, *compared]))
    ranges = [cfg.attack.pixel_range] + ([other_range(cfg.attack.pixel_range)] if cfg.analyze.compare_ranges else [])
    return [variant(cfg, m, r) for r in ranges for m in methods]


def all_k1_configs(cfg: Config) -> list[Config]:
    """Every k = 1 attack of this config's images that analyze can compare: each method, both ranges
    (and the configured range when it is neither)."""
    from .methods import METHODS

    ranges = list(RANGES) + ([cfg.attack.pixel_range] if cfg.attack.pixel_range not in RANGES else [])
    return [variant(cfg, m, r) for r in ranges for m in METHODS]
