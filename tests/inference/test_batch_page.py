"""The batch page: one row per case (needing a look first), previews linked relatively and
decoded in headless Chromium, QA flags and mask links; names escaped."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from medseg.inference.batch import CaseResult, predict_batch
from medseg.inference.batch_extras import BatchExtras
from medseg.inference.batch_page import render_page
from medseg.inference.inputs import find_cases
from tests.inference.inference_helpers import save_nifti, threshold_predictor

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("page")
    shape = (24, 20, 16)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    for name, centre in (("a", (12, 10, 8)), ("edge", (2, 10, 8))):
        dist = np.linalg.norm(idx - np.array(centre), axis=-1)
        save_nifti(root / "in" / f"{name}.nii.gz", np.where(dist <= 5, 200.0 - dist, 0.0).astype(np.float32),
                   np.diag([1.0, 1.0, 1.5, 1.0]))
    (root / "in" / "broken.nii.gz").write_bytes(b"not a nifti")
    predictor = threshold_predictor([1.0, 1.0, 1.5], 100.0, crop=False)
    extras = BatchExtras(dict(predictor.labels), statistics=True, preview=True,
                         training_note="no label_statistics.json beside the model(s)")
    results = predict_batch(predictor, find_cases(root / "in", ["image"]), root / "out", progress=False,
                            extras=extras)
    assert [r.status for r in results] == ["ok", "failed", "ok"], results
    return root / "out"


def test_page_lists_every_case_with_its_outputs(batch: Path) -> None:
    text = (batch / "index.html").read_text(encoding="utf-8")
    assert (batch / "previews" / "a.png").is_file() and (batch / "previews" / "edge.png").is_file()
    cases = re.findall(r'<tr class="(\w+)"><td>([^<]+)</td>', text)
    # The failed case and the flagged one (its ball reaches the field of view's edge) come first.
    assert cases == [("failed", "broken"), ("flagged", "edge"), ("ok", "a")]
    assert 'src="previews/edge.png"' in text and 'href="a.nii.gz"' in text
    assert "touches_edge" in text and "no label_statistics.json" in text
    assert 'href="statistics.csv"' in text and 'href="qa.csv"' in text
    # Nothing outside the output folder is fetched.
    assert "default-src 'none'" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:|/)""", text)
    qa_rows = (batch / "qa.csv").read_text().splitlines()
    assert qa_rows[0] == "case,flag,structure,detail"
    assert qa_rows[1].startswith(",note,,no label_statistics.json")
    assert [r.split(",")[:3] for r in qa_rows[2:]] == [["edge", "touches_edge", "object"]]
    assert "L (x=0)" in qa_rows[2]  # x index 0 of a +x (RAS) axis is the patient's left


def test_page_escapes_names(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    text = render_page(tmp_path, [hostile], {hostile: CaseResult(hostile, "failed", 1.0, "<b>bad</b>")}, {})
    assert "<script>alert(1)</script>" not in text and "&lt;b&gt;bad&lt;/b&gt;" in text


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (make test installs it)")
def test_page_renders_in_headless_chromium(batch: Path, tmp_path: Path) -> None:
    page = batch / "index.html"
    common = [str(CHROMIUM), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,2400"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, encoding="utf-8",
                         errors="replace", timeout=90, check=True).stdout
    loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
    assert loaded is not None, "the page's load script did not run"
    assert loaded.groups() == ("2", "2")  # both previews decoded from previews/*.png
    shot = tmp_path / "page.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=90, check=True)
    pixels = imread(str(shot))
    assert pixels.shape[:2] == (2400, 1400) and float(np.std(pixels[..., :3])) > 0.05
