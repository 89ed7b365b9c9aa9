"""Stage 5 driver: every stage's numbers and figures in ``<run.root>/<run.name>/report/``.

Rank 0 does the work (it is reading and copying a few files); the other ranks wait at a barrier.
The report is built in ``report.tmp-<pid>/`` and then swapped in for ``report/``, so a report that
failed half-way never sits under the final name and the previous one survives it. What it writes:

- ``index.html``: self-contained (inline CSS, figures as data URIs): the claims table (when the
  analysis has one), every variant compared (accuracy, calibration, robustness), Tables 1 and 2
  beside the paper's, the attack summary, Figure 2, exposure and k curves, distances, generate's
  figures, training curves, attack figures, stage timings, the config and provenance;
- ``table1.md|tex|csv``, ``table2.md|tex|csv``, ``claims.md|csv`` (with a claims table),
  ``comparison.md|csv`` (every variant in one table, with an analysis that has it), ``effects.md|csv``
  (each variant against regular training: robustness bought, Y1 accuracy paid), ``effects_mmd.md|csv`` (each
  other variant against the paper's MMD model),
  ``attack.csv``, ``exposure.csv``, ``success_vs_k.csv``, ``timings.csv``, ``methods.csv`` (the
  last four when the run has them);
- ``numbers.json``: every number shown, strict JSON, with the report's ``digest``;
- ``figures/``: every figure as PNG, and PDF where the stage wrote one;
- ``screenshot.png`` with ``report.screenshot``: headless Chromium's view, after it checked that
  every figure loaded (``browser.check``).

The report is current when ``numbers.json`` holds the digest of analysis.json's digest and the
``report`` settings; then the stage does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .. import layout, store
from ..config import Config
from ..errors import StageError
from ..layout import RunLayout
from ..lock import locked
from ..mpi import Context, log
from . import browser, page, tables
from .inputs import Inputs, analysis_path, config_text, gather, load_analysis

STAGE = "report"
OUTPUT_NAME = layout.REPORT
# analysis.json's paired comparisons, one table each: against regular training, against the MMD model.
EFFECTS = ("effects", "effects_mmd")


def output_dir(cfg: Config) -> Path:
    return RunLayout.of(cfg).report


def digest(cfg: Config, analysis: dict) -> str:
    """What the report depends on: the analysis (by its own digest) and the report settings."""
    parts = {"analysis": analysis.get("digest"), "report": cfg["report"]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def current_digest(cfg: Config, out: Path) -> str | None:
    """The digest of the report in ``out``, or None when there is none or its analysis.json was written
    after it: an analysis made again (analyze --force) keeps its digest but may hold other numbers."""
    try:
        numbers = out / "numbers.json"
        if analysis_path(cfg).stat().st_mtime_ns >= numbers.stat().st_mtime_ns:
            return None
        return store.read_json(numbers).get("digest")
    except (OSError, store.StoreError):
        return None


def title(cfg: Config) -> str:
    return cfg.report.title or f"hpcmorph report: {cfg.run.name}"


# ------------------------------------------------------------------------------------------ writing

def _write(path: Path, text: str) -> None:
    # Inside the temporary folder: the folder swap, not each file, is what makes the report atomic.
    path.write_text(text, encoding="utf-8")


def build_tables(inp: Inputs) -> dict[str, tables.Table]:
    """Every table of the report, keyed by the stem of its CSV."""
    a = inp.analysis
    attack = a.get("attack") if isinstance(a.get("attack"), dict) else {}
    pixels = int(attack.get("pixels") or 1)
    configured = ((a.get("methods") or {}).get("configured") or {}).get("range") if isinstance(
        a.get("methods"), dict) else None
    out = {"table1": tables.table1(a.get("table1")),
           "table2": tables.table2(a.get("table2"), pixels, configured),
           "attack": tables.attack_table(inp.attacks)}
    # Table 2 once more for each other value range of the run's own attack (analyze.compare_ranges).
    for name, t in (a.get("table2_by_range") or {}).items() if isinstance(a.get("table2_by_range"), dict) else ():
        if name != configured:
            stem = f"table2_{tables.range_id(name)}"
            out[stem] = tables.table2(t, 1, name, id=stem)
    cert = tables.certification_table(a.get("certification"))
    if cert.rows:
        out["certification"] = cert
    # The claims table exists only in analyses that measured the claims: an older one shows none.
    claims = a.get("claims")
    if isinstance(claims, list) and claims:
        out["claims"] = tables.claims_table(claims)
    methods = tables.methods_table(a.get("methods"))
    if methods.rows:
        out["methods"] = methods
    comparison = tables.comparison_table(a.get("comparison"))
    if comparison.rows:
        out["comparison"] = comparison
    for name in EFFECTS:
        effects = tables.effects_table(a.get(name), name)
        if effects.rows:
            out[name] = effects
    exp = a.get("exposure")
    if isinstance(exp, dict):
        out["exposure"] = tables.curve_table(
            "exposure", "Test accuracy against exposure, as a fraction of the ten-year (Y10) depth and in years "
            "(0.1 is Y1, 1.0 is Y10).", "fraction", exp.get("fractions"), exp.get("accuracy") or {},
            {"years": exp.get("years")})
    svk = a.get("success_vs_k")
    if isinstance(svk, dict):
        missing = svk.get("missing_k") or []
        out["success_vs_k"] = tables.curve_table(
            "success_vs_k", "Fraction of the attacked images flipped against the number of pixels changed k"
            + (f" (no attack output for k = {', '.join(map(str, missing))})" if missing else "") + ".",
            "k", svk.get("k"), svk.get("flipped_fraction") or {})
    if inp.timings:
        out["timings"] = tables.text_table(
            "timings", "Wall time of each stage `hpcmorph run` ran (timings.json; a rerun that skipped a stage "
            "records the seconds it took to find its output current).", ["stage", "seconds", "ranks", "finished"],
            ([t.get("stage"), t.get("seconds"), t.get("ranks"), t.get("finished")] for t in inp.timings))
    return out


def _other_tables2(tabs: dict) -> list[str]:
    """The stems of Table 2 in other value ranges (``table2_r01``, ...)."""
    return [stem for stem in tabs if stem.startswith("table2_")]


def _attack_used(a: dict) -> str:
    """Which attack Table 2 and Figure 2 rest on (analysis.json ``methods.configured``)."""
    used = (a.get("methods") or {}).get("configured") if isinstance(a.get("methods"), dict) else None
    if not isinstance(used, dict):
        return ""
    rng = "the data's value range" if used.get("range") == "data" else f"values in {used.get('range')}"
    return page.paragraph(f"From the flips of the configured attack: method {used.get('method')}, {rng}, "
                          f"k = {used.get('pixels')} (the paper: differential evolution, values in [0, 1]).", "meta")


def _triplet_html(triplet: Any) -> str:
    """The (Y10, Y1, attacked) image drawn in Figure 2, and what each model made of it."""
    if not isinstance(triplet, dict):
        return ""
    rows = []
    for variant, v in (triplet.get("variants") or {}).items():
        if isinstance(v, dict):
            rows.append([tables.variant_name(variant), v.get("target_name", v.get("target")),
                         v.get("pred_y1_name", v.get("pred_y1")),
                         tables.number(v.get("distance_y1")), tables.number(v.get("distance_attacked"))])
    caption = (f"The galaxy in Figure 2: galaxies.h5 row {triplet.get('index')}, true class "
               f"{triplet.get('label_name', triplet.get('label'))}.")
    return tables.to_html(tables.text_table("triplet", caption, ["Model", "Attack target", "Prediction on Y1",
                                                                  "Latent distance to Y1",
                                                                  "Latent distance to attacked"], rows))


def _training_html(train: dict | None) -> str:
    runs = train.get("runs") if isinstance(train, dict) else None
    if not isinstance(runs, list) or not runs:
        return ""
    rows = [[tables.variant_name(str(r.get("variant"))), r.get("seed"), r.get("best_epoch"), r.get("epochs_run"),
             tables.number(r.get("best_val_loss")), tables.number((r.get("y10") or {}).get("accuracy")),
             tables.number((r.get("y1") or {}).get("accuracy")), r.get("ranks"), r.get("backend")]
            for r in runs if isinstance(r, dict)]
    return tables.to_html(tables.text_table(
        "training_runs", "Training runs (train_summary.json): best epoch by validation loss, test accuracy.",
        ["Model", "Seed", "Best epoch", "Epochs run", "Best val. loss", "Y10 accuracy", "Y1 accuracy", "Ranks",
         "Backend"], rows))


def copy_figures(inp: Inputs, folder: Path) -> dict[str, tuple[str, str | None]]:
    """Copy every figure (PNG, and its PDF) into ``folder``; {key: (png, pdf or None)}, relative paths."""
    folder.mkdir()
    copied: dict[str, tuple[str, str | None]] = {}
    for fig in inp.figures:
        key = fig.key
        while key in copied:  # keys are unique by construction; never overwrite a copied figure
            key += "_"
        shutil.copyfile(fig.png, folder / f"{key}.png")
        pdf = None
        if fig.pdf is not None:
            shutil.copyfile(fig.pdf, folder / f"{key}.pdf")
            pdf = f"{folder.name}/{key}.pdf"
        copied[fig.key] = (f"{folder.name}/{key}.png", pdf)
    return copied


def render(cfg: Config, inp: Inputs, tabs: dict[str, tables.Table], copied: dict, key: str,
           versions: dict[str, str]) -> str:
    """The HTML page."""
    a = inp.analysis

    # figure2.png already holds the church windows and isomaps: their own files are linked, not shown again.
    panels = {"church_windows", "isomaps"} if any(f.key == "figure2" for f in inp.figures) else set()

    def figures(section: str) -> str:
        return "\n".join(page.figure_html(f, *copied[f.key]) for f in inp.figures
                         if f.section == section and f.key not in panels)

    def panel_links() -> str:
        items = []
        for f in inp.figures:
            if f.key in panels:
                links = [f'<a href="{page.esc(path)}">{kind}</a>'
                         for kind, path in zip(("PNG", "PDF"), copied[f.key]) if path]
                items.append(f'{page.esc(f.key.replace("_", " "))} ({" · ".join(links)})')
        return f'<p class="meta">Also as separate files: {", ".join(items)}.</p>' if items else ""

    def downloads(*stems: str) -> str:
        links = [f'<a href="{s}">{s}</a>' for s in stems]
        return f'<p class="meta">Also as {", ".join(links)}.</p>'

    S = page.Section
    sections = [S("claims", "The paper's claims", tables.to_html(tabs["claims"]) + downloads("claims.md", "claims.csv"))
                ] if "claims" in tabs else []
    sections += [
        S("comparison", "Every variant compared: accuracy, calibration, robustness", figures("comparison") + (
            tables.to_html(tabs["comparison"]) + downloads("comparison.md", "comparison.csv")
            + "".join(tables.to_html(tabs[name]) + downloads(f"{name}.md", f"{name}.csv")
                      for name in EFFECTS if name in tabs)
            if "comparison" in tabs
            else page.paragraph("The analysis has no comparison of variants (made before it existed).",
                                "missing"))),
        S("table1", "Table 1: classification", tables.to_html(tabs["table1"])
          + downloads("table1.md", "table1.tex", "table1.csv")),
        S("table2", "Table 2: latent distances", tables.to_html(tabs["table2"]) + _attack_used(a)
          + downloads("table2.md", "table2.tex", "table2.csv")
          + "".join(tables.to_html(tabs[stem]) + downloads(f"{stem}.md", f"{stem}.tex", f"{stem}.csv")
                    for stem in _other_tables2(tabs))),
        S("attack", "One-pixel attacks", (tables.to_html(tabs["attack"]) if tabs["attack"].rows else
                                          page.paragraph("No attack summary found.", "missing"))
          + downloads("attack.csv")),
        S("certification", "One pixel, certified: vulnerability and the search's coverage",
          tables.to_html(tabs["certification"]) + downloads("certification.csv") if "certification" in tabs else
          page.paragraph("The run's k = 1 attacks were not certified (attack.certify).", "missing")),
        S("methods", "Attack methods and value ranges", figures("methods") + (
            tables.to_html(tabs["methods"]) + downloads("methods.csv") if "methods" in tabs else
            page.paragraph("No k = 1 attack outputs to compare (analyze.compare_methods, compare_ranges).",
                           "missing"))),
        S("figure2", "Figure 2: church windows and isomaps",
          figures("figure2") + panel_links() + _triplet_html(a.get("triplet")) + _attack_used(a)),
        S("exposure", "Accuracy against exposure", figures("exposure") + (
            tables.to_html(tabs["exposure"]) + downloads("exposure.csv") if "exposure" in tabs else
            page.paragraph("The analysis has no exposure curve.", "missing"))),
        S("success_vs_k", "Attack success against k", figures("success_vs_k") + (
            tables.to_html(tabs["success_vs_k"]) + downloads("success_vs_k.csv") if "success_vs_k" in tabs else
            page.paragraph("The analysis has no success-against-k numbers.", "missing"))),
        S("distances", "Latent distances", figures("distances") + figures("analysis")),
        S("data", "Data (generate)", figures("data") + (tables.to_html(tables.text_table(
            "class_counts", "Images per split and class (generate_class_counts.csv; rows include the augmented "
            "mergers).", inp.class_counts[0], inp.class_counts[1:])) if inp.class_counts else "")),
        S("training", "Training", _training_html(inp.train) + figures("training")),
        S("attack_figures", "Attack figures", figures("attack_figures")),
        S("timings", "Stage timings", tables.to_html(tabs["timings"]) + downloads("timings.csv") if "timings" in tabs
          else page.paragraph("No timings.json (written by `hpcmorph run`).", "missing")),
    ]
    for s in sections:
        if not s.body.strip():
            s.body = page.paragraph("Not available for this run.", "missing")
    if inp.missing_figures:
        note = "Figures named by analysis.json but not found: " + ", ".join(inp.missing_figures)
        next(s for s in sections if s.id == "figure2").body += page.paragraph(note, "missing")
    provenance = "\n".join(page.details(f"Provenance: {stage}", page.key_values(f"provenance_{stage}", "", attrs))
                           for stage, attrs in {**inp.provenance, "report": versions}.items())
    sections.append(S("config", "Configuration and provenance",
                      page.details("Configuration (YAML) that made these numbers", page.preformatted(
                          config_text(cfg, a))) + "\n" + provenance))
    meta = [f"run {cfg.run.name}", f"analysis digest {a.get('digest')}", f"report digest {key}",
            f"written {versions.get('finished', '')}", "numbers.json holds every number shown"]
    return page.document(title(cfg), meta, sections)


def numbers(cfg: Config, inp: Inputs, tabs: dict[str, tables.Table], copied: dict, key: str) -> dict:
    a = inp.analysis
    return store.strict({
        "run": cfg.run.name, "title": title(cfg), "digest": key, "analysis_digest": a.get("digest"),
        "table1": {"ours": a.get("table1"), "paper": tables.PAPER_TABLE1},
        "table2": {**(a.get("table2") or {}), "paper": (a.get("table2") or {}).get("paper", tables.PAPER_TABLE2)},
        "table2_by_range": a.get("table2_by_range"), "certification": a.get("certification"),
        "claims": a.get("claims"), "calibration": a.get("calibration"), "comparison": a.get("comparison"),
        **{name: a.get(name) for name in EFFECTS},
        "paper_flipped": list(tables.PAPER_FLIPPED),
        "attack": inp.attacks, "methods": a.get("methods"), "exposure": a.get("exposure"),
        "success_vs_k": a.get("success_vs_k"),
        "triplet": a.get("triplet"), "class_counts": inp.class_counts,
        "training_runs": [{k: r.get(k) for k in ("variant", "seed", "best_epoch", "epochs_run", "best_val_loss",
                                                  "y10", "y1", "ranks", "backend", "train_images_per_s")}
                          for r in ((inp.train or {}).get("runs") or []) if isinstance(r, dict)],
        "timings": inp.timings,
        "figures": {k: {"png": png, "pdf": pdf} for k, (png, pdf) in copied.items()},
    })


def build(cfg: Config, inp: Inputs, folder: Path, key: str) -> None:
    """Write the whole report into the (new, empty) ``folder``."""
    tabs = build_tables(inp)
    for stem in ("table1", "table2", *_other_tables2(tabs)):
        _write(folder / f"{stem}.md", tables.markdown(tabs[stem]))
        _write(folder / f"{stem}.tex", tables.latex(tabs[stem]))
    for stem in ("claims", "comparison", *EFFECTS):
        if stem in tabs:
            _write(folder / f"{stem}.md", tables.markdown(tabs[stem]))
    for stem, t in tabs.items():
        _write(folder / f"{stem}.csv", tables.to_csv(t))
    copied = copy_figures(inp, folder / "figures")
    versions = {"stage": STAGE, "git_commit": store.git_commit(), "finished": store.now(),
                **{f"version_{k}": v for k, v in store.versions().items()}}
    _write(folder / "index.html", render(cfg, inp, tabs, copied, key, versions))
    # Last: numbers.json carries the digest that marks a report complete.
    _write(folder / "numbers.json", json.dumps(numbers(cfg, inp, tabs, copied, key), indent=2, allow_nan=False))


def publish(tmp: Path, out: Path) -> None:
    """Put the finished ``tmp`` folder in place of ``out``. Two renames: for a moment there is no
    ``out``, but never a half-written one; the old report is removed only after the new one is in."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def screenshot(tmp: Path, out: Path) -> None:
    """Check the page in headless Chromium and keep its screenshot; a missing Chromium only warns."""
    try:
        loaded, total = browser.check(tmp, tmp / "screenshot.png")
    except FileNotFoundError as err:
        log.warning("report: report.screenshot is set but %s; no screenshot taken", err)
        return
    except browser.CheckError as err:
        failed = out.with_name(f"{out.name}.failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(tmp, failed)
        raise StageError(f"report: the browser check failed ({err}); the page is kept in {failed}, the previous "
                         f"report (if any) in {out}") from None
    log.info("report: Chromium shows %d of %d figures; screenshot %s", loaded, total, out / "screenshot.png")


# ---------------------------------------------------------------------------------------------- run

@locked(output_dir)
def run(cfg: Config, ctx: Context, force: bool = False) -> Path:
    """Write the report of ``cfg``'s run (rank 0); returns the report folder. ``force`` rebuilds a
    report that is up to date."""
    out = output_dir(cfg)
    # Every rank reads analysis.json: a missing one is then the same user error on every rank.
    analysis = load_analysis(cfg)
    key = digest(cfg, analysis)
    if ctx.is_root:
        if current_digest(cfg, out) == key and not force:
            log.info("report: up to date (%s, digest %s)", out, key)
        else:
            _write_report(cfg, analysis, out, key)
    ctx.barrier()
    return out


def _write_report(cfg: Config, analysis: dict, out: Path, key: str) -> None:
    for stale in out.parent.glob(f"{out.name}.tmp-*"):  # left by a killed report
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        inp = gather(cfg, analysis)
        build(cfg, inp, tmp, key)
        if cfg.report.screenshot:
            screenshot(tmp, out)
        publish(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("report: wrote %s (%d figures): open %s", out, len(inp.figures), out / "index.html")
