"""The report's tables: built once from the analysis numbers, rendered as Markdown, LaTeX, HTML and CSV.

A :class:`Table` holds formatted cells (``None`` where there is no number: a variant that was not
trained, a ratio that could not be computed) and, separately, the raw numbers as CSV records, so
every rendering shows the same text and the CSV keeps full precision. A missing number renders as
a dash in every format; it never raises.
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any
from collections.abc import Iterable, Mapping

from .. import paper
from ..train import variants


# hpcmorph.train.metrics.METRICS, in its order (tests check they agree): importing it here would load
# torch through the train package, seconds for a stage that only formats numbers.
METRICS = ("accuracy", "precision", "recall", "f1")
# The paper's two models: the tables beside the paper list them first.
PAPER_VARIANTS = ("regular", "mmd")
DOMAINS = (("y10", "Y10"), ("y1", "Y1"))
PAIRS = ("y10_y1", "y10_attacked")

# The paper's numbers (hpcmorph.paper); Table 2 is used when analysis.json carries no "paper" entry of its own.
PAPER_TABLE1 = paper.TABLE1
PAPER_TABLE2 = paper.TABLE2
PAPER_FLIPPED = paper.FLIPPED

DASH = {"markdown": "–", "html": "–", "latex": "--"}


@dataclass
class Table:
    """``header`` and ``rows`` of display text (``None``: no number); ``records``: the raw numbers."""

    id: str
    caption: str
    header: list[str]
    rows: list[list[str | None]]
    records: list[dict[str, Any]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ numbers

def finite(x: Any) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _decimals(x: float, digits: int) -> int:
    if x == 0:
        return digits - 1
    return max(0, digits - 1 - math.floor(math.log10(abs(x))))


def number(x: Any, digits: int = 3) -> str | None:
    """``digits`` significant digits without an exponent (20.2, 0.812, 136); None for no number."""
    x = finite(x)
    if x is None:
        return None
    if x != 0 and not 1e-3 <= abs(x) < 1e6:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{_decimals(x, digits)}f}"


def mean_std(mean: Any, std: Any, decimals: int | None = None, n: Any = None) -> str | None:
    """``mean ± std`` (std to the mean's decimals, as the paper writes 16.8 ± 5.0), ``(n=...)`` when
    given; None without a mean, the mean alone without a std."""
    m, s = finite(mean), finite(std)
    if m is None:
        return None
    d = _decimals(m, 3) if decimals is None else decimals
    if d > 6 or abs(m) >= 1e6:
        text = number(m) + ("" if s is None else f" ± {number(s)}")
    else:
        text = f"{m:.{d}f}" + ("" if s is None else f" ± {s:.{d}f}")
    return text + (f" (n={int(n)})" if finite(n) is not None else "")


def _get(tree: Any, *keys: str) -> Any:
    """``tree[k0][k1]...`` or None where any level is missing or not a mapping."""
    for key in keys:
        if not isinstance(tree, Mapping):
            return None
        tree = tree.get(key)
    return tree


def _pair(value: Any) -> tuple[Any, Any]:
    """A [mean, std] pair from analysis.json (or a bare mean)."""
    if isinstance(value, (list, tuple)):
        return (value[0] if value else None), (value[1] if len(value) > 1 else None)
    return value, None


_NOT_VARIANTS = ("paper", "ratio_mmd_over_regular", "ratios", "bootstrap")


def _variants(*tables: Mapping | None) -> list[str]:
    """regular, mmd, then any other variant, in first-seen order."""
    seen = list(PAPER_VARIANTS)
    for t in tables:
        if isinstance(t, Mapping):
            seen += [v for v, entry in t.items() if v not in seen and v not in _NOT_VARIANTS
                     and isinstance(entry, Mapping)]
    return seen


def variant_name(variant: str) -> str:
    """The display name of a training variant (:func:`hpcmorph.train.variants.title`)."""
    return variants.title(variant)


# ------------------------------------------------------------------------------------------- tables

@dataclass(frozen=True)
class Table1Row:
    """One record of Table 1's CSV/JSON: a model's metric on one domain, ours over seeds beside the
    paper's; None where there is no number."""

    variant: str
    domain: str                # y10 or y1
    metric: str                # accuracy, precision, recall or f1
    mean: float | None         # over the training seeds
    std: float | None
    seeds: int | None          # how many
    paper: float | None


def table1(ours: Mapping | None, paper: Mapping = PAPER_TABLE1) -> Table:
    """Table 1: per model and metric, ours (mean ± std over seeds) beside the paper's, on Y10 and Y1.

    ``ours`` is analysis.json's ``table1``: {variant: {"y10": {metric: [mean, std]}, "y1": ..., "seeds": [...]}}.
    """
    ours = ours if isinstance(ours, Mapping) else {}
    header = ["Model", "Metric"] + [f"{label} {who}" for _, label in DOMAINS for who in ("(ours)", "(paper)")]
    rows, records = [], []
    for variant in _variants(ours, paper):
        seeds = _get(ours, variant, "seeds")
        n_seeds = len(seeds) if isinstance(seeds, list) else None
        name = variant_name(variant) + (f" ({n_seeds} seed{'s' * (n_seeds != 1)})" if n_seeds else "")
        for metric in METRICS:
            row: list[str | None] = [name, metric]
            for domain, _ in DOMAINS:
                mean, std = _pair(_get(ours, variant, domain, metric))
                theirs = finite(_get(paper, variant, domain, metric))
                row += [mean_std(mean, std, 2), None if theirs is None else f"{theirs:.2f}"]
                records.append(asdict(Table1Row(variant, domain, metric, finite(mean), finite(std), n_seeds,
                                                theirs)))
            rows.append(row)
            name = ""
    return Table("table1", "Table 1: test-set accuracy and weighted precision, recall and F1 on Y10 and Y1 "
                 "images; ours as mean ± std over training seeds, beside the paper's.", header, rows, records)


def ci(lo: Any, hi: Any) -> str | None:
    """``[lo, hi]`` of an interval, each to 3 significant digits; None without both bounds."""
    a, b = number(lo), number(hi)
    return None if a is None or b is None else f"[{a}, {b}]"


def estimate(e: Any, std: bool = False) -> str | None:
    """An analysis.json estimate ({"value", "lo", "hi", "n", "std", ...}) as ``value [lo, hi]`` (with
    ``± std`` before the interval when ``std``); None without a value."""
    if not isinstance(e, Mapping) or finite(e.get("value")) is None:
        return None
    text = number(e.get("value"))
    if std and finite(e.get("std")) is not None:
        text += f" ± {number(e.get('std'))}"
    bounds = ci(e.get("lo"), e.get("hi"))
    return text + (f" {bounds}" if bounds else "")


def _n(n: Any) -> str | None:
    """An estimate's n: ``14``, or ``14 + 6`` for two samples."""
    if isinstance(n, (list, tuple)):
        return " + ".join(str(int(x)) for x in n if finite(x) is not None) or None
    return _int(n)


@dataclass(frozen=True)
class Table2Row:
    """One record of Table 2's CSV/JSON: a model's (or the ratio's) latent distance of one pair, raw
    or scale-free, beside the paper's; None where there is no number."""

    variant: str                    # regular, mmd, ... or ratio_mmd_over_regular
    pair: str                       # y10_y1 or y10_attacked
    mean: float | None = None       # the mean distance (latent units; scale-free: in latent scales)
    std: float | None = None        # population std over the images
    n: float | None = None          # flipped images
    paper_mean: float | None = None
    paper_std: float | None = None
    paper_n: float | None = None
    scale: str = "raw"              # raw or scale_free
    lo: float | None = None         # the bootstrap interval of the mean
    hi: float | None = None

    def record(self, value_range: str | None) -> dict[str, Any]:
        """The CSV/JSON record, with the attacks' value range."""
        return {**asdict(self), "range": value_range}


def range_id(value_range: str | None) -> str:
    """A table id's suffix for a value range name: ``r01`` for "[0, 1]", ``data`` for the data's."""
    if value_range in (None, "data"):
        return "data"
    return "r" + "".join(c for c in str(value_range) if c.isalnum() or c == ".").replace(".", "p")


def table2(ours: Mapping | None, pixels: int = 1, value_range: str | None = None, id: str = "table2") -> Table:
    """Table 2: latent-space distances Y10 -> Y1 and Y10 -> attacked, ours beside the paper's, and the
    domain-adaptation / regular ratio of the means (the paper: ~2.3 for attacked images). value_range:
    the value range of the attack whose flips it rests on (named in the caption: the paper's attacks
    set values in [0, 1]); id: the table's id (one per range).

    ``ours`` is analysis.json's ``table2``: {variant: {pair: {"mean", "std", "n"}, "mean_ci": {pair: [lo, hi]},
    "scale_free": {pair: estimate}}, "ratio_mmd_over_regular": {pair: x}, "ratios": {"raw"|"scale_free":
    {pair: estimate}}, "paper": {variant: {pair: {...}}}}. The intervals and the scale-free rows appear
    when the analysis has them (older analyses do not).
    """
    ours = ours if isinstance(ours, Mapping) else {}
    paper = ours.get("paper") if isinstance(ours.get("paper"), Mapping) else PAPER_TABLE2
    variants = _variants(ours, paper)
    attacked = "one-pixel" if pixels == 1 else f"{pixels}-pixel"
    labels = {"y10_y1": "Y10 – Y1", "y10_attacked": f"Y10 – {attacked} attacked"}
    header = ["Distance"] + [f"{variant_name(v)} {who}" for v in variants for who in ("(ours)", "(paper)")]
    header += ["DA / regular (ours)", "DA / regular (paper)"]
    rows, records = [], []
    for pair in PAIRS:
        row: list[str | None] = [labels[pair]]
        for v in variants:
            mine, theirs = _get(ours, v, pair) or {}, _get(paper, v, pair) or {}
            bounds = _get(ours, v, "mean_ci", pair)
            bounds = bounds if isinstance(bounds, list) and len(bounds) == 2 else [None, None]
            text = mean_std(mine.get("mean"), mine.get("std"))
            if text is not None and ci(*bounds):
                text += f" {ci(*bounds)}"
            if text is not None and finite(mine.get("n")) is not None:
                text += f" (n={int(mine['n'])})"
            row += [text, mean_std(theirs.get("mean"), theirs.get("std"), n=theirs.get("n"))]
            records.append(Table2Row(v, pair, finite(mine.get("mean")), finite(mine.get("std")),
                                     finite(mine.get("n")), finite(theirs.get("mean")), finite(theirs.get("std")),
                                     finite(theirs.get("n")), "raw", finite(bounds[0]), finite(bounds[1])))
        ratio = finite(_get(ours, "ratio_mmd_over_regular", pair))
        ratio_est = _get(ours, "ratios", "raw", pair)
        p_reg, p_mmd = finite(_get(paper, "regular", pair, "mean")), finite(_get(paper, "mmd", pair, "mean"))
        paper_ratio = finite(_get(paper, "ratio_mmd_over_regular", pair))
        if paper_ratio is None and p_reg and p_mmd is not None:
            paper_ratio = p_mmd / p_reg
        ratio_text = number(ratio)
        if ratio_text is not None and isinstance(ratio_est, Mapping) and ci(ratio_est.get("lo"), ratio_est.get("hi")):
            ratio_text += f" {ci(ratio_est.get('lo'), ratio_est.get('hi'))}"
        row += [ratio_text, number(paper_ratio)]
        records.append(Table2Row("ratio_mmd_over_regular", pair, ratio, paper_mean=paper_ratio,
                                 lo=finite(_get(ratio_est, "lo")), hi=finite(_get(ratio_est, "hi"))))
        rows.append(row)
    scale_free = any(isinstance(_get(ours, v, "scale_free"), Mapping) for v in variants)
    for pair in PAIRS if scale_free else ():
        row = [f"{labels[pair]}, scale-free"]
        for v in variants:
            e = _get(ours, v, "scale_free", pair)
            text = estimate(e, std=True)
            if text is not None and _n(_get(e, "n")):
                text += f" (n={_n(_get(e, 'n'))})"
            row += [text, None]
            records.append(Table2Row(v, pair, finite(_get(e, "value")), finite(_get(e, "std")), finite(_get(e, "n")),
                                     scale="scale_free", lo=finite(_get(e, "lo")), hi=finite(_get(e, "hi"))))
        r = _get(ours, "ratios", "scale_free", pair)
        row += [estimate(r), None]
        records.append(Table2Row("ratio_mmd_over_regular", pair, finite(_get(r, "value")), scale="scale_free",
                                 lo=finite(_get(r, "lo")), hi=finite(_get(r, "hi"))))
        rows.append(row)
    level = finite(_get(ours, "bootstrap", "level"))
    seeds = ours.get("seeds") if isinstance(ours.get("seeds"), list) else []
    pooled = (f" The flipped images of the models of seeds {', '.join(str(s) for s in seeds)} are pooled (n counts "
              "them all)." if len(seeds) > 1 else "")
    over = "seeds, then images within each seed" if len(seeds) > 1 else "the flipped images"
    intervals = (f" Brackets: {level:.0%} bootstrap intervals resampling {over} (the ratio's with each model's "
                 "images resampled independently)." if level else "")
    scale_text = (" Scale-free rows: each distance divided by the model's latent scale (the median distance between "
                  "two of its Y10 test latents), so that the two models can be compared; the paper has none."
                  if scale_free else "")
    where = ""
    if value_range is not None:
        where = (" Attack values in the data's range (the normalised pixels' own), not the paper's [0, 1]."
                 if value_range == "data" else f" Attack values in {value_range}"
                 + (", the paper's range." if value_range == "[0, 1]" else "; the paper's were in [0, 1]."))
    return Table(id, "Table 2: Euclidean distances in each model's latent space between a Y10 test image "
                 f"and its Y1 observation, and between it and its {attacked} attacked version, over the images "
                 "the attack flipped (mean ± std, n images), beside the paper's; and the ratio of the domain-"
                 "adapted model's mean to the regular one's." + where + pooled + intervals + scale_text, header, rows,
                 [r.record(value_range) for r in records])


def certification_table(cert: Mapping | None) -> Table:
    """The certified one-pixel vulnerability and the search's coverage (analysis.json ``certification``):
    per value range, model and seed, then the seeds pooled: images attacked, flipped by the search,
    flippable by one corner pixel (certified), the vulnerable fraction, the coverage, the images the
    search missed, and what the certifying scan cost."""
    header = ["Value range", "Model", "Seed", "Attacked", "Flipped by the search", "Flippable (certified)",
              "Vulnerable fraction", "Coverage", "Missed (galaxy rows)", "Scanned images", "Scan (s)"]
    rows, records = [], []
    ranges = (cert or {}).get("ranges") if isinstance(cert, Mapping) else None
    for rname, models in (ranges or {}).items():
        for model, entry in (models or {}).items():
            if not isinstance(entry, Mapping):
                continue
            for c in list(entry.get("per_seed") or []) + [dict(entry.get("pooled") or {}, seed="pooled")]:
                scan = c.get("scan") if isinstance(c.get("scan"), Mapping) else {}
                flippable = c.get("flippable")
                if c.get("undecided"):
                    flippable = f"{flippable} ({c.get('undecided')} undecided)"
                missed = c.get("missed_rows")
                cover = number(c.get("coverage"))
                if c.get("seed") == "pooled" and c.get("min_coverage") is not None:
                    cover = f"{cover} (lowest seed {number(c.get('min_coverage'))})"
                rows.append([rname, variant_name(model), str(c.get("seed")), _int(c.get("attacked")),
                             _int(c.get("flipped")), None if flippable is None else str(flippable),
                             number(c.get("vulnerable_fraction")), cover,
                             None if missed is None else (", ".join(map(str, missed)) or "none"),
                             _int(scan.get("images")), number(scan.get("seconds"))])
                records.append({"range": rname, "model": model, "seed": c.get("seed"),
                                **{k: c.get(k) for k in ("attacked", "flipped", "flippable", "safe", "undecided",
                                                         "vulnerable_fraction", "coverage", "min_coverage")},
                                "missed_rows": None if missed is None else " ".join(map(str, missed)),
                                **{f"scan_{k}": scan.get(k) for k in ("images", "candidates", "float32", "rescanned",
                                                                     "max_error", "max_tolerance", "seconds")}})
    method = (cert or {}).get("method") if isinstance(cert, Mapping) else None
    caption = (f"One-pixel vulnerability, certified: for every image the run's k = 1 attack ({method}) failed on, "
               "every pixel was set to every corner of the value box (each band at its lower or upper bound) and "
               "classified. Flippable: the search flipped it, or a corner pixel does; vulnerable fraction: flippable "
               "/ attacked (exact for corner pixels); coverage: flipped by the search / flippable. Missed: the "
               "galaxy rows one pixel flips but the search did not.")
    return Table("certification", caption, header, rows, records)


VERDICT_MARK = {"reproduced": "reproduced", "not reproduced": "NOT reproduced", "inconclusive": "inconclusive",
                "not measured": "not measured"}


def claims_table(rows: Any) -> Table:
    """The paper's claims, one row each (analysis.json ``claims``, ``hpcmorph.analyze.claims``): the
    claim, what measures it, the paper's value, ours with its interval and n, and the verdict."""
    header = ["#", "Claim", "Measured as", "Paper", "Ours", "Interval", "n", "Verdict", "Notes"]
    out, records = [], []
    level = None
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, Mapping):
            continue
        e = r.get("estimate") if isinstance(r.get("estimate"), Mapping) else {}
        level = level or finite(e.get("level"))
        unit = r.get("unit") or ""
        scope = ", ".join(str(x) for x in (r.get("variant"), r.get("range") and f"{r.get('range')} range")
                          if x)
        measure = str(r.get("measure") or "") + (f" ({scope})" if scope else "")
        value = number(e.get("value"))
        if value is not None and unit == "seeds" and finite(e.get("std")) is not None:
            value += f" ± {number(e.get('std'))}"
        n = _n(e.get("n"))
        parts = r.get("parts") if isinstance(r.get("parts"), Mapping) else {}
        detail = "; ".join(f"{k}: {estimate(p, std=(unit == 'seeds'))}" for k, p in parts.items()
                           if estimate(p) is not None)
        notes = " ".join(x for x in (str(r.get("note") or "").strip(), detail and f"({detail})") if x) or None
        out.append([str(r.get("id", "")), str(r.get("claim", "")), measure, r.get("paper_text"), value,
                    ci(e.get("lo"), e.get("hi")), None if n is None else f"{n} {unit}".strip(),
                    VERDICT_MARK.get(r.get("verdict"), str(r.get("verdict"))), notes])
        records.append({"id": r.get("id"), "claim": r.get("claim"), "variant": r.get("variant"),
                        "range": r.get("range"),
                        "measure": r.get("measure"), "paper_text": r.get("paper_text"),
                        "paper_value": finite(r.get("paper_value")), "no_effect": finite(r.get("no_effect")),
                        "value": finite(e.get("value")), "lo": finite(e.get("lo")), "hi": finite(e.get("hi")),
                        "std": finite(e.get("std")), "n": n, "unit": unit, "level": finite(e.get("level")),
                        "method": e.get("method"), "verdict": r.get("verdict"), "paper_in_ci": r.get("paper_in_ci"),
                        "note": r.get("note")})
    caption = ("The paper's claims, each measured on this run. Verdict: reproduced when the interval of the effect "
               "excludes no effect in the paper's direction; not reproduced when it does not and excludes the "
               "paper's value; inconclusive when it covers both (or there is no interval); not measured when the run "
               "has no evidence for it. Ours: mean (± std over seeds where measured over seeds) with "
               f"its {'' if level is None else f'{level:.0%} '}interval (t over seeds, or bootstrap over images).")
    return Table("claims", caption, header, out, records)


def attack_label(stem: str, s: Mapping) -> tuple[tuple, str]:
    """(sort key, row label) of the attack output ``stem`` with summary ``s``: the models' seed, the
    method, untargeted where it is, k and the value range, e.g. "seed 1, saliency, k=2, [0, 1]".
    Summaries written before the value range was recorded get it from the file name (``-r01``)."""
    seed, k = s.get("model_seed"), s.get("pixels")
    value_range = s.get("value_range") or ("[0, 1]" if stem.endswith("-r01") else "data")
    parts = [f"seed {'?' if seed is None else seed}", str(s.get("method") or "de")]
    if s.get("mode", "targeted") != "targeted":
        parts.append(str(s.get("mode")))
    parts += [f"k={'?' if k is None else k}", value_range]
    key = (finite(seed) if finite(seed) is not None else -1, str(s.get("method") or "de"), str(s.get("mode")),
           finite(k) if finite(k) is not None else -1, value_range != "data", value_range, stem)
    return key, ", ".join(parts)


def attack_table(summaries: Mapping[str, Mapping]) -> Table:
    """Per attack output (attack, attack-k2, ...) and model: images attacked and flipped, queries; a
    row per output and model, named by :func:`attack_label` and sorted by seed, method, k and range."""
    header = ["Attack", "Model", "Images attacked", "Images flipped", "Attacks", "Successful attacks",
              "Median queries to flip", "Mean queries to flip"]
    rows, records = [], []
    labelled = sorted((attack_label(stem, s), stem, s) for stem, s in summaries.items())
    for (_, label), stem, s in labelled:
        for variant, v in (s.get("variants") or {}).items():
            rate = finite(v.get("success_rate"))
            succ = v.get("successful_attacks")
            rows.append([label, variant_name(variant), _int(v.get("attacked")), _int(v.get("flipped")),
                         _int(v.get("attacks")),
                         None if succ is None else f"{succ}" + ("" if rate is None else f" ({rate:.0%})"),
                         number(v.get("median_queries_to_flip")), number(v.get("mean_queries_to_flip"))])
            records.append({"attack": stem, "label": label, "mode": s.get("mode"), "pixels": s.get("pixels"),
                            "variant": variant,
                            **{k: v.get(k) for k in ("attacked", "flipped", "attacks", "successful_attacks",
                                                     "success_rate", "median_queries_to_flip",
                                                     "mean_queries_to_flip", "queries_total")}})
    flipped, of = PAPER_FLIPPED
    return Table("attack", f"One-pixel attack summary per model (an image is flipped when any of its targeted "
                 f"attacks succeeds). The paper: {flipped} of {of} images flipped.", header, rows, records)


def _short(x: Any) -> str | None:
    """An axis value as written (1, 0.1, 10): k, exposure fractions, years."""
    return None if finite(x) is None else f"{finite(x):g}"


def _int(x: Any) -> str | None:
    return None if finite(x) is None else str(int(x))


def curve_table(id: str, caption: str, x_name: str, xs: Iterable, ys: Mapping[str, Iterable],
                extra: Mapping[str, Iterable] | None = None) -> Table:
    """A small x -> y per model table (accuracy vs exposure, success vs k); missing y as dashes."""
    xs = list(xs or [])
    extra = {k: list(v or []) for k, v in (extra or {}).items()}
    ys = {v: list(y or []) for v, y in (ys or {}).items()}
    header = [x_name, *extra, *(variant_name(v) for v in ys)]
    rows, records = [], []
    for i, x in enumerate(xs):
        values = {v: (y[i] if i < len(y) else None) for v, y in ys.items()}
        more = {k: (e[i] if i < len(e) else None) for k, e in extra.items()}
        rows.append([_short(x), *(_short(m) for m in more.values()), *(number(y) for y in values.values())])
        records.append({x_name: finite(x), **{k: finite(m) for k, m in more.items()},
                        **{v: finite(y) for v, y in values.items()}})
    return Table(id, caption, header, rows, records)


def text_table(id: str, caption: str, header: list[str], rows: Iterable[Iterable[Any]]) -> Table:
    """A table of values shown as they are (timings, class counts); None as a dash."""
    rows = [[None if c is None else str(c) for c in row] for row in rows]
    return Table(id, caption, list(header), rows, [dict(zip(header, r)) for r in rows])


# --------------------------------------------------------------------------------------- renderings

def markdown(t: Table) -> str:
    def cell(c: str | None) -> str:
        return DASH["markdown"] if c is None else c.replace("|", "\\|")

    lines = [f"{t.caption}", "", "| " + " | ".join(map(cell, t.header)) + " |",
             "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(map(cell, row)) + " |" for row in t.rows]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("–", "--")


def latex(t: Table) -> str:
    """A plain ``tabular`` (\\hline rules, no packages needed), the caption as a comment above it."""
    def cell(c: str | None) -> str:
        return DASH["latex"] if c is None else latex_escape(c)

    lines = [f"% {t.caption}", r"\begin{tabular}{l" + "c" * (len(t.header) - 1) + "}", r"\hline",
             " & ".join(map(cell, t.header)) + r" \\", r"\hline"]
    lines += [" & ".join(map(cell, row)) + r" \\" for row in t.rows]
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(t: Table) -> str:
    def cell(tag: str, c: str | None) -> str:
        return f"<{tag}>{DASH['html'] if c is None else html.escape(c)}</{tag}>"

    head = "".join(cell("th", c) for c in t.header)
    body = "\n".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in t.rows)
    return (f'<table id="{html.escape(t.id)}"><caption>{html.escape(t.caption)}</caption>\n'
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>")


def to_csv(t: Table) -> str:
    """The raw numbers (full precision; empty where there is none), one record a line."""
    fields = list(dict.fromkeys(k for r in t.records for k in r)) or t.header
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in t.records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def methods_table(methods: Mapping | None) -> Table:
    """The attack methods side by side (analysis.json ``methods``): per value range, model and method,
    images flipped, the oracle-flippable images (exhaustive corner search) and how many of those the
    method flipped, queries per successful attack, wall time."""
    header = ["Value range", "Model", "Method", "Images flipped / attacked", "Oracle-flippable found",
              "Median queries per flip", "Mean queries per flip", "Budget (queries)", "Wall time (s)"]
    rows, records = [], []
    ranges = (methods or {}).get("ranges") if isinstance(methods, Mapping) else None
    for rname, per in (ranges or {}).items():
        for model, by_method in ((per or {}).get("models") or {}).items():
            for method, m in (by_method or {}).items():
                if not isinstance(m, Mapping):
                    continue
                oracle = (None if m.get("oracle_flippable") is None else
                          f"{m.get('flipped_of_oracle')} / {m.get('oracle_flippable')}")
                rows.append([rname, variant_name(model), method, f"{m.get('flipped')} / {m.get('attacked')}", oracle,
                             number(m.get("median_queries_to_flip")), number(m.get("mean_queries_to_flip")),
                             _int(m.get("budget")), number(m.get("wall_seconds"))])
                records.append({"range": rname, "model": model, "method": method,
                                **{k: m.get(k) for k in ("attacked", "flipped", "oracle_flippable", "flipped_of_oracle",
                                                         "median_queries_to_flip", "mean_queries_to_flip", "budget",
                                                         "wall_seconds")}})
    caption = ("Attack methods at k = 1 on the same images, per value range: the data's (normalised pixels' own "
               "range) and [0, 1] (the paper's). The exhaustive corner search is the oracle: the images one pixel "
               "can flip at a corner value. Wall time: the whole attack output (every model in it), from its summary.")
    return Table("methods", caption, header, rows, records)


NOT_RUN = "not run"


def _spread_text(s: Any) -> str:
    """A comparison cell (:func:`hpcmorph.analyze.seeds.spread`): ``mean ± std`` over seeds (the mean
    alone for one seed); "not run" without one."""
    if not isinstance(s, Mapping) or finite(s.get("mean")) is None:
        return NOT_RUN
    return mean_std(s.get("mean"), s.get("std"), 3 if abs(s["mean"]) < 10 else None)


def comparison_table(comparison: Mapping | None) -> Table:
    """Every trained variant in one table (analysis.json ``comparison``): accuracy, calibration, one-pixel
    success per value range (the search's, and the certified or exhaustive fraction), success at k > 1
    and within query budgets, mean ± sample std over seeds; the latent distances, scale-free, pooled
    over the flipped images with their 95 % interval. "not run": the run has no such number (a variant
    not attacked, a k not swept, no certification, a budget above the attack's)."""
    c = comparison if isinstance(comparison, Mapping) else {}
    ranges, ks, budgets = list(c.get("ranges") or []), list(c.get("k") or []), list(c.get("budgets") or [])
    header = ["Model", "Seeds", "Y10 accuracy", "Y1 accuracy", "ECE Y10", "ECE Y1", "Brier Y10", "Brier Y1"]
    for name in ranges:
        header += [f"1 pixel, {name} range (search)", f"1 pixel, {name} range (exact)"]
    header += [f"k = {k}" for k in ks] + [f"within {q} queries" for q in budgets]
    header += ["Distance Y10–Y1 (scale-free)", "Distance Y10–attacked (scale-free)", "Training time (x regular)"]
    rows, records = [], []
    for v in c.get("variants") or []:
        r = (c.get("rows") or {}).get(v)
        if not isinstance(r, Mapping):
            continue
        cells: dict[str, Any] = {f"{m}_{d}": r.get(f"{m}_{d}") for m in ("accuracy", "ece", "brier")
                                 for d in ("y10", "y1")}
        for name in ranges:
            k1 = (r.get("one_pixel") or {}).get(name) or {}
            cells[f"one_pixel_{name}_search"] = k1.get("search")
            cells[f"one_pixel_{name}_exact"] = k1.get("exact")
        cells.update({f"k{k}": (r.get("success_k") or {}).get(str(k)) for k in ks})
        cells.update({f"within_{q}": (r.get("within_budget") or {}).get(str(q)) for q in budgets})
        text = [_spread_text(x) for x in cells.values()]
        for name in ranges:
            source = ((r.get("one_pixel") or {}).get(name) or {}).get("exact_source")
            i = list(cells).index(f"one_pixel_{name}_exact")
            if source:
                text[i] += f" ({source})"
        distances = [r.get(f"distance_{k}") for k in ("y10_y1", "y10_attacked")]
        none_flipped = "no flipped image" if r.get("attacked") else NOT_RUN
        text += [estimate(e) or none_flipped for e in distances]
        cost = finite(r.get("train_time_ratio"))
        text.append(NOT_RUN if cost is None else f"{cost:.2f}x")
        seeds = (r.get("ece_y10") or {}).get("n")
        trained = (r.get("accuracy_y10") or {}).get("n")
        seed_text = f"{_int(seeds) or 0}" + ("" if trained in (None, seeds) else f" ({trained} trained)")
        rows.append([variant_name(str(v)), seed_text, *text])
        for key, x in [*cells.items(), *zip(("distance_y10_y1", "distance_y10_attacked"), distances)]:
            x = x if isinstance(x, Mapping) else {}
            records.append({"variant": v, "column": key, "mean": x.get("mean", x.get("value")), "std": x.get("std"),
                            "n": x.get("n"), "lo": x.get("lo"), "hi": x.get("hi"),
                            "values": None if x.get("values") is None else " ".join(map(str, x["values"]))})
        speed = r.get("train_images_per_s") if isinstance(r.get("train_images_per_s"), Mapping) else {}
        records.append({"variant": v, "column": "train_time_ratio", "mean": r.get("train_time_ratio"), "std": None,
                        "n": speed.get("n"), "lo": None, "hi": None, "values": None})
    configured = c.get("configured") or {}
    caption = ("Every trained variant: mean ± sample std over training seeds (accuracies over every trained seed, "
               "from train_summary.json; the rest over the analysed seeds). ECE: top-label expected calibration "
               f"error over {c.get('calibration_bins')} equal-width confidence bins; Brier: multiclass, the mean "
               "over test images of the squared distance between the class probabilities and the one-hot true "
               f"class. 1 pixel: fraction of the attacked images flipped, by the run's own attack "
               f"({configured.get('method')}: search) and exactly (certified, or the exhaustive search); "
               "k = 2, 3: fraction flipped by the k-pixel attack; within q queries: fraction the run's own attack "
               "flipped within q model queries. Distances: mean scale-free latent distance over the flipped images "
               "of every analysed seed, 95 % bootstrap interval. Training time: regular training's images per "
               "second over the variant's (steps only, mean over seeds, the same run). \"not run\": the run "
               "has no such number.")
    return Table("comparison", caption, header, rows, records)


def effects_table(effects: Mapping | None, name: str = "effects") -> Table:
    """Each variant against a baseline (analysis.json ``effects``, or ``effects_mmd``): the paired differences
    of the one-pixel flip rate and of Y1 accuracy, with their 95 % intervals and what the interval says."""
    e = effects if isinstance(effects, Mapping) else {}
    base = variant_name(str(e.get("baseline", "regular")))
    header = ["Model", f"One-pixel flip rate minus {base}'s", "Robustness", f"Y1 accuracy minus {base}'s",
              "Y1 cost"]
    rows, records = [], []
    for v, r in (e.get("variants") or {}).items():
        if not isinstance(r, Mapping):
            continue
        rows.append([variant_name(str(v)), estimate(r.get("flip_rate")) or NOT_RUN, r.get("robustness") or NOT_RUN,
                     estimate(r.get("y1_accuracy")) or NOT_RUN, r.get("y1_cost") or NOT_RUN])
        for key in ("flip_rate", "y1_accuracy"):
            x = r.get(key) if isinstance(r.get(key), Mapping) else {}
            records.append({"variant": v, "difference": key, "value": x.get("value"), "lo": x.get("lo"),
                            "hi": x.get("hi"), "n": x.get("n"), "verdict": r.get("robustness" if key == "flip_rate"
                                                                                  else "y1_cost")})
    caption = (f"Each variant against {base}, image by image: the mean over images of the difference in whether "
               "one pixel flips the image (the images both models were attacked on, the run's own attack) and in "
               "whether its Y1 observation is classified right (the whole test split), pooled over the analysed "
               "seeds, with a 95 % bootstrap interval (seeds, then images). The verdict reads the interval: a "
               "difference whose interval excludes 0, else no clear difference.")
    return Table(name, caption, header, rows, records)
