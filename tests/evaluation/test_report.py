"""The HTML report is self-contained and renders in headless Chromium with its figures;
the Markdown report holds the tables."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from medseg.evaluation.report import fmt, render_html, render_markdown

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_fmt() -> None:
    assert fmt(None) == "–" and fmt(float("nan")) == "–" and fmt(3) == "3" and fmt(0.12345) == "0.123"


def test_html_is_self_contained(evaluated: tuple[Path, dict]) -> None:
    out, _ = evaluated
    text = (out / "report.html").read_text(encoding="utf-8")
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text)
    assert "url(" not in text and "@import" not in text
    assert text.count('src="data:image/png;base64,') == text.count("<img")


def test_html_escapes_names(evaluated: tuple[Path, dict]) -> None:
    _, summary = evaluated
    hostile = dict(summary, problems=["<script>alert(1)</script>"])
    text = render_html(hostile, {}, {"<b>case</b>": []})
    assert "<script>alert(1)</script>" not in text and "&lt;b&gt;case&lt;/b&gt;" in text


def test_markdown(evaluated: tuple[Path, dict]) -> None:
    out, summary = evaluated
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text == render_markdown(summary)
    assert "| structure | n | present | both empty | missed | false positive |" in text
    assert re.search(r"^\| lesion \| 6 \| 5 \| 0 \| 1 \| 0 \|", text, re.M)  # case 1 missed its lesion
    assert "### Subgroup site = A (2 cases)" in text and "## Worst cases" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_renders_in_headless_chromium(evaluated: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = evaluated
    report = out / "report.html"
    html = report.read_text(encoding="utf-8")
    n_images = html.count("<img")
    n_plots, n_overlays = html.count('class="plot"'), html.count('class="overlay"')
    assert n_plots == 5 and n_overlays >= 2  # 4 box plots + the pooled confusion heat map
    assert html.count('id="confusion-heatmap"') == 1
    common = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", report.as_uri()], capture_output=True, encoding="utf-8", errors="replace",
                         timeout=90, check=True).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded is not None, "the page's load script did not run"
    assert loaded.groups() == (str(n_images), str(n_images))  # every figure decoded
    assert "Summary per structure" in dom and "Worst cases" in dom
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri()],
                   capture_output=True, timeout=90, check=True)
    pixels = imread(str(shot))
    assert pixels.shape[:2] == (2000, 1280) and float(np.std(pixels[..., :3])) > 0.05

