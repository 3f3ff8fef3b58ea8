"""``medseg synth``: a Decathlon-layout dataset, reproducible from its seed; bad counts refused."""

from __future__ import annotations

import json

from medseg.cli import main
from medseg.data.io import read_label
from medseg.data.manifest import load_manifest


def test_writes_a_loadable_dataset_reproducible_from_the_seed(tmp_path, capsys):
    assert main(["synth", "--output", str(tmp_path / "a"), "--cases", "2", "--seed", "5"]) == 0
    assert "wrote 2 phantom cases and" in capsys.readouterr().out
    manifest = load_manifest(tmp_path / "a" / "dataset.json")
    assert len(manifest.training) == 1 and len(manifest.test) == 1
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())["medseg_synth"]
    assert meta["seed"] == 5 and meta["cases"] == 2
    label = manifest.training[0].label
    assert label is not None and set(map(int, read_label(label).array.ravel().tolist())) <= {0, 1, 2, 3}

    assert main(["synth", "--output", str(tmp_path / "b"), "--cases", "2", "--seed", "5"]) == 0
    again = load_manifest(tmp_path / "b" / "dataset.json").training[0].label
    assert again is not None and (read_label(again).array == read_label(label).array).all()


def test_zero_cases_exit_2_on_stderr(tmp_path, capsys):
    assert main(["synth", "--output", str(tmp_path / "z"), "--cases", "0"]) == 2
    captured = capsys.readouterr()
    assert "--cases 0 must be >= 1" in captured.err and captured.out == ""
    assert not (tmp_path / "z").exists()
