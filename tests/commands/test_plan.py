"""``medseg plan``: a proposed pipeline that loads, written atomically or printed; bad manifests exit 2."""

from __future__ import annotations

import yaml

from medseg.cli import main
from medseg.config import from_dict
from tests.data.test_planner import write_ct_dataset


def test_plan_cli_writes_a_valid_pipeline(tmp_path, capsys):
    manifest = write_ct_dataset(tmp_path / "d", [(1.0, 1.0, 3.0)] * 2)
    out = tmp_path / "p.yaml"
    assert main(["plan", str(manifest), "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    text = out.read_text(encoding="utf-8")
    cfg = from_dict(yaml.safe_load(text))
    assert cfg.data.normalization == "ct" and cfg.data.target_spacing == [1.0, 1.0, 3.0]
    assert text.startswith(f"# proposed by `medseg plan {manifest}` from 2 cases: median spacing [1.0, 1.0, 3.0] mm")

    assert main(["plan", str(manifest)]) == 0  # no --output: the same text on stdout
    assert capsys.readouterr().out.strip() == text.strip()


def test_unreadable_manifest_exits_2(tmp_path, capsys):
    bad = tmp_path / "dataset.json"
    bad.write_text("{not json")
    assert main(["plan", str(bad), "--output", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medseg plan:") and "not valid JSON" in err
    assert not (tmp_path / "p.yaml").exists()
