"""The evaluation report: a self-contained HTML page and a Markdown summary.

The HTML embeds its figures as base64 PNG and its style inline, and forbids every external
fetch with a Content-Security-Policy, so it opens offline and can be mailed as one file.
A few lines of inline script record, on ``<body data-images-loaded>``, how many of the
images the browser decoded (the report's test reads it from headless Chromium).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medseg.evaluation.policy import EMPTY_RULES

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #1d1d1f; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .5em; text-align: right; }
td { white-space: nowrap; } .scroll { overflow-x: auto; }
th { background: #f2f4f7; } td.name, th.name { text-align: left; }
.problems { background: #fff4f4; border: 1px solid #e8a0a0; padding: .5em 1em; }
.meta { color: #555; font-size: .9em; } img { max-width: 100%; }
figure { margin: 1em 0; } figcaption { font-size: .85em; color: #555; }
"""
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
"""
_POOLED_NOTE = ("One confusion matrix summed over every evaluated case (each voxel counts once, so "
                "large cases weigh more than in the per-case means); rows are reference classes. "
                "Definitions: FCN (Long et al. 2015), see CONVENTIONS.md.")
RULE_LABELS = {"present": "present", "both_empty": "both empty", "missed": "missed",
               "false_positive": "false positive"}


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table: ``digits`` significant decimals, '–' for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def _mean_std(stats: Mapping[str, Any], digits: int = 3) -> str:
    if not stats.get("n"):
        return "–"
    return f"{fmt(stats['mean'], digits)} ± {fmt(stats['std'], digits)}"


def _median_iqr(stats: Mapping[str, Any], digits: int = 3) -> str:
    if not stats.get("n"):
        return "–"
    return f"{fmt(stats['median'], digits)} [{fmt(stats['q1'], digits)}, {fmt(stats['q3'], digits)}]"


def _ci(stats: Mapping[str, Any], digits: int = 3) -> str:
    if not stats.get("n"):
        return "–"
    return f"[{fmt(stats['ci95_low'], digits)}, {fmt(stats['ci95_high'], digits)}]"


def _rules(entry: Mapping[str, Any]) -> list[str]:
    return [str(entry["empty_rules"][r]) for r in EMPTY_RULES]


def _absent_everywhere(entry: Mapping[str, Any]) -> bool:
    return bool(entry["n_cases"]) and entry["empty_rules"]["both_empty"] == entry["n_cases"]


def absent_note(structures: Mapping[str, Any]) -> str:
    """A sentence naming the structures absent from every reference and prediction ('' if none);
    the tables leave them out (summary.json keeps them)."""
    names = [n for n, e in structures.items() if _absent_everywhere(e)]
    if not names:
        return ""
    return (f"{len(names)} structures are absent from every reference and prediction (rule both empty "
            f"in all cases) and are left out of the table: {', '.join(names)}.")


def structure_table_rows(structures: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-structure summary table (shared by HTML and Markdown)."""
    header = ["structure", "n", *(RULE_LABELS[r] for r in EMPTY_RULES), "Dice mean ± sd",
              "Dice median [IQR]", "Dice 95% CI", "IoU mean", "HD95 mean ± sd (mm)",
              "HD95 median (mm)", "ASSD mean (mm)", "NSD mean ± sd", "NSD 95% CI",
              "boundary F1 mean ± sd", "boundary IoU mean ± sd",
              "ref vol. mean (mL)", "rel. vol. diff. mean"]
    rows = []
    for name, m in structures.items():
        if _absent_everywhere(m):
            continue
        rows.append([
            name, str(m["n_cases"]), *_rules(m), _mean_std(m["dice"]), _median_iqr(m["dice"]),
            _ci(m["dice"]), fmt(m["iou"]["mean"]), _mean_std(m["hd95"], 2), fmt(m["hd95"]["median"], 2),
            fmt(m["assd"]["mean"], 2), _mean_std(m["nsd"]), _ci(m["nsd"]),
            _mean_std(m["boundary_f1"]), _mean_std(m["boundary_iou"]), fmt(m["vol_ref_ml"]["mean"], 1),
            fmt(m["rel_vol_diff"]["mean"]),
        ])
    return header, rows


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], name_cols: int = 1) -> str:
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="name"' if i < name_cols else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def case_metric_rows(case_metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = ["metric", "n", "mean ± sd", "median [IQR]", "95% CI"]
    rows = [[m, str(s["n"]), _mean_std(s), _median_iqr(s), _ci(s)] for m, s in case_metrics.items()]
    return header, rows


def pooled_rows(pooled: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The cohort-level scores of the pooled confusion matrix, and each class's pooled IoU."""
    header = ["metric", "value"]
    rows = [["cases pooled", str(pooled["n_cases"])],
            ["pixel accuracy", fmt(pooled["pixel_accuracy"], 4)],
            ["mean IoU (classes present, background included)", fmt(pooled["mean_iou"], 4)],
            ["frequency-weighted IoU", fmt(pooled["fw_iou"], 4)]]
    rows += [[f"IoU {name}", fmt(v, 4)] for name, v in zip(pooled["classes"], pooled["iou"], strict=False)]
    return header, rows


def worst_case_rows(worst: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["case", "mean Dice", "pixel accuracy", "worst structures (Dice)"]
    rows = []
    for w in worst:
        parts = ", ".join(f"{s['structure']} ({fmt(s['dice'])})" for s in w["worst_structures"])
        rows.append([w["case"], fmt(w["mean_dice"]), fmt(w["pixel_accuracy"], 4), parts or "–"])
    return header, rows


def _settings_lines(summary: Mapping[str, Any]) -> list[str]:
    s, inputs, cases = summary["settings"], summary["inputs"], summary["cases"]
    policy = s["empty_policy"]
    return [
        f"Predictions: {inputs['pred']}",
        f"Reference: {inputs['ref']}" + (f" (labels: {inputs['labels']})" if inputs.get("labels") else ""),
        f"Cases evaluated: {cases['evaluated']} (failed {len(cases['failed'])}, predictions without "
        f"reference {len(cases['unmatched_pred'])}, references without prediction {len(cases['missing_pred'])})",
        *(f"Not evaluated: the manifest's {split} split ({n} cases), which has no prediction"
          for split, n in cases.get("unpredicted_splits", {}).items()),
        f"NSD / boundary tolerance (mm): {s['nsd_tolerance_mm']}",
        f"Empty-structure policy: {policy['name']}: {policy['description']}",
        f"Confidence intervals: percentile bootstrap of the mean over cases, {s['bootstrap']} resamples",
        "Surface distances: DeepMind surface-distance surfel definition (see CONVENTIONS.md)",
        f"medseg {summary['medseg_version']}, {summary['created']}",
    ]


def _group_sections(summary: Mapping[str, Any], heading: str) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    for column, groups in summary.get("groups", {}).items():
        for value, group in groups.items():
            header, rows = structure_table_rows(group["structures"])
            out.append((f"{heading} {column} = {value} ({group['n_cases']} cases)", header, rows))
    return out


def render_html(
    summary: Mapping[str, Any],
    plots: Mapping[str, str],
    overlays: Mapping[str, Sequence[tuple[str, str]]],
) -> str:
    """The full report. ``plots``: metric -> base64 PNG; ``overlays``: case -> [(caption, PNG)]."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>medseg evaluation report</title>", f"<style>{_CSS}</style></head><body>",
        "<h1>Segmentation evaluation</h1>", '<ul class="meta">',
        *(f"<li>{e(line)}</li>" for line in _settings_lines(summary)), "</ul>",
    ]
    if summary["problems"]:
        parts += ['<h2 id="problems">Problems</h2><div class="problems"><ul>',
                  *(f"<li>{e(p)}</li>" for p in summary["problems"]), "</ul></div>"]
    header, rows = structure_table_rows(summary["structures"])
    parts += ['<h2 id="summary">Summary per structure</h2>',
              "<p>Means leave out NaN values; the empty-rule columns count the cases under each "
              "rule of the empty-structure policy.</p>", _html_table(header, rows)]
    if note := absent_note(summary["structures"]):
        parts.append(f"<p>{e(note)}</p>")
    header, rows = case_metric_rows(summary["case_metrics"])
    parts += ["<h2 id=\"cases\">Per-case metrics</h2>", _html_table(header, rows)]
    if "pooled" in summary:
        header, rows = pooled_rows(summary["pooled"])
        parts += ['<h2 id="pooled">Pooled over all cases</h2>', f"<p>{e(_POOLED_NOTE)}</p>", _html_table(header, rows)]
        if heatmap := plots.get("confusion"):
            parts.append('<figure><img class="plot" id="confusion-heatmap" alt="pooled confusion matrix" '
                         f'src="data:image/png;base64,{heatmap}"></figure>')
    plots = {k: v for k, v in plots.items() if k != "confusion"}
    for title, header, rows in _group_sections(summary, "Subgroup"):
        parts += [f"<h3>{e(title)}</h3>", _html_table(header, rows)]
    if plots:
        parts.append('<h2 id="plots">Distributions</h2>')
        for metric, png in plots.items():
            parts.append(f'<figure><img class="plot" alt="{e(metric)} per structure" '
                         f'src="data:image/png;base64,{png}"></figure>')
    header, rows = worst_case_rows(summary["worst_cases"])
    parts += ['<h2 id="worst">Worst cases</h2>', _html_table(header, rows)]
    for case, figures in overlays.items():
        parts.append(f"<h3>{e(case)}</h3>")
        for caption, png in figures:
            parts.append(f'<figure><img class="overlay" alt="{e(caption)}" src="data:image/png;base64,{png}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def render_markdown(summary: Mapping[str, Any]) -> str:
    """The report as Markdown tables (no images), for papers and pull requests."""
    lines = ["# Segmentation evaluation", "", *(f"- {line}" for line in _settings_lines(summary)), ""]
    if summary["problems"]:
        lines += ["## Problems", "", *(f"- {p}" for p in summary["problems"]), ""]
    header, rows = structure_table_rows(summary["structures"])
    lines += ["## Summary per structure", "", _md_table(header, rows), ""]
    if note := absent_note(summary["structures"]):
        lines += [note, ""]
    header, rows = case_metric_rows(summary["case_metrics"])
    lines += ["## Per-case metrics", "", _md_table(header, rows), ""]
    if "pooled" in summary:
        header, rows = pooled_rows(summary["pooled"])
        lines += ["## Pooled over all cases", "", _POOLED_NOTE, "", _md_table(header, rows), ""]
    for title, header, rows in _group_sections(summary, "Subgroup"):
        lines += [f"### {title}", "", _md_table(header, rows), ""]
    header, rows = worst_case_rows(summary["worst_cases"])
    lines += ["## Worst cases", "", _md_table(header, rows), ""]
    return "\n".join(lines)
