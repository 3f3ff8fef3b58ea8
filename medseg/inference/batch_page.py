"""``OUTPUT/index.html``: the whole batch on one page, so a person finds the few bad cases fast.

One row per case of the batch: its preview (``previews/<case>.png``, linked relatively and
lazily loaded, so a page of thousands of cases stays small; click for full size), status,
seconds, QA flags (:mod:`medseg.inference.qa`), the error if any, and links to its masks.
Cases that need a look (failed, or flagged) come first; a checkbox hides the others. The
page fetches nothing outside the output folder (a Content-Security-Policy says so): zip the
folder or open it from disk. Inline script records on ``<body data-images-loaded="k/n">``
how many previews the browser decoded (the test reads it from headless Chromium).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from medseg.utils import atomic_write_text

FILE_NAME = "index.html"

_CSP = ("default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'")
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #1d1d1f; }
h1 { font-size: 1.5em; } table { border-collapse: collapse; font-size: .9em; }
th, td { border: 1px solid #d0d0d0; padding: .3em .5em; vertical-align: top; text-align: left; }
th { background: #f2f4f7; position: sticky; top: 0; } td.num { text-align: right; }
tr.failed td.status { color: #b00020; font-weight: bold; } tr.flagged td.status { color: #a05a00; }
td.preview img { width: 480px; max-width: 40vw; background: #000; }
ul.flags { margin: 0; padding-left: 1.1em; } .note { background: #fff8e1; border: 1px solid #e0c060;
padding: .4em .8em; } .meta { color: #555; } .err { color: #b00020; max-width: 28em; }
"""
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
function onlyLook(box) {
  var rows = document.querySelectorAll('tbody tr.ok');
  for (var i = 0; i < rows.length; i++) { rows[i].style.display = box.checked ? 'none' : ''; }
}
"""


def _href(output: Path, name: str) -> str | None:
    return quote(name) if (output / name).is_file() else None


def render_page(output: Path | str, cases: Sequence[str], results: Mapping[str, Any],
                flags: Mapping[str, Sequence[Mapping[str, str]]], note: str = "") -> str:
    """The page's HTML. ``results``: case -> object with status, seconds, error (missing: not run)."""
    output = Path(output)
    esc = html.escape
    rows = []
    counts = {"ok": 0, "skipped": 0, "failed": 0, "not run": 0}
    n_flagged = 0
    for order, case in enumerate(cases):
        r = results.get(case)
        status = r.status if r is not None else "not run"
        counts[status] = counts.get(status, 0) + 1
        case_flags = flags.get(case, [])
        n_flagged += bool(case_flags)
        kind = "failed" if status in ("failed", "not run") else "flagged" if case_flags else "ok"
        preview = _href(output, f"previews/{case}.png")
        img = (f'<a href="{preview}"><img loading="lazy" src="{preview}" alt="{esc(case)} preview"></a>'
               if preview else "–")
        masks = [f'<a href="{h}">{esc(n)}</a>' for n in (f"{case}.nii.gz", f"{case}.dcm")
                 if (h := _href(output, n))]
        flag_items = "".join(
            f"<li><b>{esc(f['flag'])}</b> {esc(f['structure'])}: {esc(f['detail'])}</li>" for f in case_flags)
        rows.append((kind != "ok", order, (
            f'<tr class="{kind}"><td>{esc(case)}</td><td class="status">{esc(status)}</td>'
            f'<td class="num">{"" if r is None else f"{float(r.seconds):.1f}"}</td>'
            f'<td class="preview">{img}</td>'
            f'<td>{"<ul class=flags>" + flag_items + "</ul>" if flag_items else ""}'
            f'{"<div class=err>" + esc(r.error) + "</div>" if r is not None and r.error else ""}</td>'
            f'<td>{"<br>".join(masks) or "–"}</td></tr>')))
    rows.sort(key=lambda t: (not t[0], t[1]))  # cases that need a look first, then batch order
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    links = " · ".join(f'<a href="{h}">{n}</a>' for n in ("predict_log.csv", "statistics.csv", "qa.csv")
                       if (h := _href(output, n)))
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>medseg batch</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>medseg batch</h1>",
        f'<p class="meta">{len(cases)} cases: {esc(summary)}; {n_flagged} with QA flags. {links}</p>',
    ]
    if note:
        parts.append(f'<p class="note">{esc(note)}</p>')
    parts += [
        '<label><input type="checkbox" onchange="onlyLook(this)"> show only cases that need a look '
        "(failed or flagged)</label>",
        "<table><thead><tr><th>case</th><th>status</th><th>seconds</th><th>preview</th>"
        "<th>QA flags / error</th><th>masks</th></tr></thead><tbody>",
        *(row for _, _, row in rows),
        "</tbody></table>", f"<script>{_SCRIPT}</script>", "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_page(output: Path | str, cases: Sequence[str], results: Mapping[str, Any], extras: Any) -> Path:
    """Write ``OUTPUT/index.html`` (atomic) from the per-case QA files and the batch results."""
    from medseg.inference import qa

    output = Path(output)
    flags = {case: qa.read_case(output, case) for case in cases}
    target = output / FILE_NAME
    atomic_write_text(target, render_page(output, cases, results, flags, getattr(extras, "training_note", "")))
    return target
