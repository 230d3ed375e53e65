"""Self-contained HTML pages: inline CSS, figures and thumbnails embedded as base64 PNG, no scripts, no CDN.

A report is a list of sections, each a title and an HTML body built with the small helpers here
(:func:`table`, :func:`figure`, :func:`thumbnails`, :func:`findings_list`, ...). Every piece of text
that comes from data (file names, labels, messages) goes through :func:`esc`.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: severity of a finding -> (badge text, CSS class), in the order they are listed
SEVERITIES = {"error": ("error", "sev-error"), "warning": ("warning", "sev-warning"),
              "info": ("info", "sev-info"), "ok": ("ok", "sev-ok")}

CSS = """
:root { --ink:#1d2330; --muted:#5d6678; --line:#e3e6ee; --bg:#f6f7fb; --card:#fff; --accent:#3559d6;
        --ok:#1f8a4c; --info:#2d6cdf; --warn:#b76e00; --err:#c62828; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header { background:linear-gradient(120deg,#1f2d5c,#3559d6); color:#fff; padding:28px 40px 22px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; letter-spacing:.2px; }
header .sub { margin:0; opacity:.85; font-size:14px; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin-top:18px; }
.card { background:rgba(255,255,255,.13); border:1px solid rgba(255,255,255,.25); border-radius:10px;
        padding:10px 16px; min-width:130px; }
.card .v { font-size:21px; font-weight:650; font-variant-numeric:tabular-nums; }
.card .l { font-size:12px; opacity:.85; text-transform:uppercase; letter-spacing:.6px; }
nav { position:sticky; top:0; z-index:2; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 40px; font-size:14px; }
nav a { color:var(--accent); text-decoration:none; margin-right:18px; }
main { max-width:1180px; margin:0 auto; padding:10px 40px 40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:8px 26px 20px;
          margin:22px 0; box-shadow:0 1px 2px rgba(20,30,60,.04); }
h2 { font-size:20px; margin:16px 0 6px; }
h3 { font-size:16px; margin:20px 0 6px; color:#2a3350; }
p { margin:6px 0 10px; }
.muted { color:var(--muted); }
code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; font-size:13px; }
table { border-collapse:collapse; margin:8px 0 14px; font-size:14px; }
th, td { padding:5px 12px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:#f0f2f8; font-weight:600; color:#33405e; white-space:nowrap; }
td:first-child { white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.wrap { word-break:break-all; }
tr:last-child td { border-bottom:none; }
figure { margin:10px 0 16px; }
figure img { max-width:100%; height:auto; }
figcaption { font-size:13px; color:var(--muted); margin-top:2px; }
.figrow { display:flex; flex-wrap:wrap; gap:18px; align-items:flex-start; }
.figrow figure { flex:1 1 420px; }
.figrow > div { flex:1 1 380px; }
.figrow figure.wide { flex:1.6 1 560px; }
.thumbs { display:grid; grid-template-columns:repeat(auto-fill,minmax(104px,1fr)); gap:10px; margin:10px 0 16px; }
.thumb { border:1px solid var(--line); border-radius:8px; padding:6px; text-align:center; background:#fbfbfd; }
.thumb img { width:84px; height:auto; image-rendering:pixelated; display:block; margin:0 auto 4px;
             border-radius:3px; }
.thumb .cap { font-size:12px; line-height:1.3; }
.thumb .cap b { color:var(--err); }
ul.findings { list-style:none; padding:0; margin:8px 0 14px; }
ul.findings li { padding:7px 10px; border-left:4px solid var(--line); margin:6px 0; background:#fafbfe;
                 border-radius:0 6px 6px 0; }
ul.findings li.sev-error { border-color:var(--err); }
ul.findings li.sev-warning { border-color:var(--warn); }
ul.findings li.sev-info { border-color:var(--info); }
ul.findings li.sev-ok { border-color:var(--ok); }
.badge { display:inline-block; min-width:64px; text-align:center; font-size:11px; font-weight:700;
         text-transform:uppercase; letter-spacing:.5px; border-radius:10px; padding:1px 8px; margin-right:8px;
         color:#fff; }
.badge.sev-error { background:var(--err); } .badge.sev-warning { background:var(--warn); }
.badge.sev-info { background:var(--info); } .badge.sev-ok { background:var(--ok); }
.where { font-weight:600; margin-right:8px; color:#2a3350; }
.where::after { content:":"; }
.kv td:first-child { color:var(--muted); white-space:nowrap; }
footer { text-align:center; color:var(--muted); font-size:12px; padding:0 0 30px; }
"""


def esc(text) -> str:
    """HTML-escape any value's ``str``."""
    return html.escape(str(text), quote=True)


def figure_data_uri(fig, dpi: int = 110) -> str:
    """Render a matplotlib figure to a ``data:image/png;base64`` URI and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return png_bytes_uri(buffer.getvalue())


def png_bytes_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_data_uri(image: np.ndarray, scale: int = 3) -> str:
    """A small uint8 image, grey (H, W) or RGB (H, W, 3), as a PNG data URI, enlarged ``scale`` times
    with nearest-neighbour sampling (so the pixels stay sharp)."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    if scale != 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False)
    return png_bytes_uri(buffer.getvalue())


def figure(uri: str, caption: str = "", alt: str = "", wide: bool = False) -> str:
    """An embedded image with a caption (``caption`` is HTML; escape data in it); ``wide`` takes more of a row."""
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    css = ' class="wide"' if wide else ""
    return f'<figure{css}><img src="{uri}" alt="{esc(alt or "figure")}">{cap}</figure>'


def figure_row(*figures_html: str) -> str:
    """Figures side by side (wrapping on narrow screens)."""
    return '<div class="figrow">' + "".join(figures_html) + "</div>"


def table(headers: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = (),
          wrap: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped unless wrapped in :class:`Raw`. ``numeric`` columns are right-aligned
    and numbers in them formatted with thousands separators; ``wrap`` columns break long words."""
    def cell(i: int, value, tag: str) -> str:
        classes = (["num"] if i in numeric else []) + (["wrap"] if i in wrap and tag == "td" else [])
        attr = f' class="{" ".join(classes)}"' if classes else ""
        if isinstance(value, Raw):
            text = value.html
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            text = f"{int(value):,d}"
        else:
            text = esc(value)
        return f"<{tag}{attr}>{text}</{tag}>"

    head = "<tr>" + "".join(cell(i, h, "th") for i, h in enumerate(headers)) + "</tr>"
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of names and values (values may be :class:`Raw`)."""
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v.html if isinstance(v, Raw) else esc(v)}</td></tr>"
                   for k, v in pairs)
    return f'<table class="kv">{rows}</table>'


@dataclass(frozen=True)
class Raw:
    """HTML that :func:`table` and :func:`key_values` insert as is (already escaped by the caller)."""

    html: str


def thumbnails(items: Iterable[tuple[str, str]]) -> str:
    """A grid of small images, each ``(data_uri, caption_html)``."""
    cells = "".join(f'<div class="thumb"><img src="{uri}" alt="thumbnail"><div class="cap">{caption}</div></div>'
                    for uri, caption in items)
    return f'<div class="thumbs">{cells}</div>' if cells else '<p class="muted">none</p>'


def findings_list(findings: Iterable[dict]) -> str:
    """Findings (dicts with ``severity`` and ``message``) as a list with coloured badges, worst first."""
    order = list(SEVERITIES)
    items = []
    for finding in sorted(findings, key=lambda f: order.index(f["severity"])):
        text, css = SEVERITIES[finding["severity"]]
        where = f'<span class="where">{esc(finding["split"])}</span>' if finding.get("split") else ""
        items.append(f'<li class="{css}"><span class="badge {css}">{text}</span>{where}{esc(finding["message"])}</li>')
    return '<ul class="findings">' + "".join(items) + "</ul>"


def cards(items: Iterable[tuple[str, str]]) -> str:
    """Headline numbers for the page header: ``(value, label)`` pairs."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{esc(v)}</div><div class="l">{esc(label)}</div></div>'
        for v, label in items) + "</div>"


def page(title: str, subtitle: str, header_cards: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document. ``sections``: ``(anchor, title, body_html)``; a navigation bar links them."""
    from .. import __version__

    nav = "".join(f'<a href="#{esc(anchor)}">{esc(title)}</a>' for anchor, title, _ in sections)
    body = "".join(f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{content}</section>'
                   for anchor, title, content in sections)
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p class=\"sub\">{subtitle}</p>{header_cards}</header>"
            f"<nav>{nav}</nav><main>{body}</main>"
            f"<footer>written by scratchpilot {esc(__version__)} on {esc(stamp)} · self-contained page, "
            f"no external resources</footer></body></html>\n")
