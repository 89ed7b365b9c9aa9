"""index.html: one self-contained page (inline CSS, figures as base64 PNG data URIs, no network).

Built from string templates; every piece of run-provided text goes through ``html.escape``. A small
inline script counts, once the page has loaded, the images that decoded and writes the count and the
total into ``data-figures-loaded`` / ``data-figures-total`` on ``<body>``: a headless browser's
``--dump-dom`` then shows whether every figure displays (``browser.check``).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from collections.abc import Iterable

from . import tables
from .inputs import Figure

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 4em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
nav a { margin-right: 1em; white-space: nowrap; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
caption { caption-side: top; text-align: left; color: #444; padding-bottom: 0.4em; max-width: 60em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
thead th { background: #f3f3f3; }
#claims td, #claims th { text-align: left; vertical-align: top; }
figure { display: inline-block; vertical-align: top; margin: 0.5em 1em 1em 0; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; max-width: 40em; }
.missing { color: #a33; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
details { margin: 0.8em 0; } summary { cursor: pointer; font-weight: bold; }
"""

# Runs once the page (every image included) has loaded: the browser check reads the attributes.
LOAD_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = document.images, loaded = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) loaded++;
  }
  document.body.setAttribute("data-figures-loaded", String(loaded));
  document.body.setAttribute("data-figures-total", String(imgs.length));
});
"""


@dataclass
class Section:
    id: str
    title: str
    body: str


def esc(text: object) -> str:
    return html.escape(str(text))


def figure_html(fig: Figure, copied: str, pdf: str | None) -> str:
    """``<figure>`` with the PNG inline (a data URI) and links to the copies in figures/."""
    data = base64.b64encode(fig.png.read_bytes()).decode("ascii")
    links = f'<a href="{esc(copied)}">PNG</a>' + (f' · <a href="{esc(pdf)}">PDF</a>' if pdf else "")
    return (f'<figure id="fig-{esc(fig.key)}"><img alt="{esc(fig.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(fig.caption)} ({links})</figcaption></figure>")


def paragraph(text: str, cls: str | None = None) -> str:
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>\n{body}\n</details>"


def preformatted(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def key_values(id: str, caption: str, items: dict) -> str:
    return tables.to_html(tables.text_table(id, caption, ["Key", "Value"], items.items()))


def document(title: str, meta: Iterable[str], sections: list[Section]) -> str:
    """The whole page: title, a line of metadata, a table of contents and the sections in order."""
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(f'<section id="{esc(s.id)}-section">\n<h2 id="{esc(s.id)}-title">{esc(s.title)}</h2>\n{s.body}\n'
                     "</section>" for s in sections)
    meta_html = " · ".join(esc(m) for m in meta)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{esc(title)}</h1>
<p class="meta">{meta_html}</p>
<nav>{nav}</nav>
{body}
<script>{LOAD_SCRIPT}</script>
</body>
</html>
"""
