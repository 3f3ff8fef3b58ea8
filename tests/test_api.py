"""The public API: importable from the package root, light to import, and its examples run."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
from pathlib import Path

import pytest

import medseg
import medseg.api
from medseg.inference import predictor

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = [medseg.api.train, medseg.api.predict, medseg.api.evaluate, medseg.api.check, predictor.Predictor]


def test_import_medseg_is_light() -> None:
    code = ("import sys, medseg; heavy = [m for m in ('torch', 'pytorch_lightning', 'monai', 'medseg.api') "
            "if m in sys.modules]; print(heavy); medseg.train; print('medseg.api' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()
    assert out == ["[]", "True", "False"]  # torch and Lightning load when a function runs


def test_root_names_are_the_library_functions() -> None:
    assert medseg.Predictor is predictor.Predictor
    assert (medseg.train, medseg.predict, medseg.evaluate, medseg.check) == (
        medseg.api.train, medseg.api.predict, medseg.api.evaluate, medseg.api.check)
    assert {"train", "predict", "evaluate", "check", "Predictor"} <= set(dir(medseg))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        medseg.trian  # noqa: B018


def test_overrides_as_mapping_or_list_and_bad_keys() -> None:
    from medseg.config import ConfigError

    a = medseg.api.load_pipeline({"model": {"channels": [4, 8]}}, {"trainer.max_epochs": 3, "data.patch_size": [16] * 3})
    b = medseg.api.load_pipeline({"model": {"channels": [4, 8]}}, ["trainer.max_epochs=3", "data.patch_size=[16,16,16]"])
    assert a == b and a.trainer.max_epochs == 3
    assert medseg.api.load_pipeline(a, {"trainer.max_epochs": 5}).trainer.max_epochs == 5
    with pytest.raises(ConfigError, match="max_epoch"):
        medseg.api.load_pipeline({}, {"trainer.max_epoch": 3})
    with pytest.raises(TypeError, match="key=value"):
        medseg.api.load_pipeline({}, "trainer.max_epochs=3")  # type: ignore[arg-type]


@pytest.mark.parametrize("obj", EXAMPLES, ids=lambda o: o.__qualname__)
def test_docstring_example_runs(obj: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    finder = doctest.DocTestFinder(recurse=False)
    [test] = finder.find(obj, globs={})
    assert len(test.examples) >= 5, "every public function documents a runnable example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, out=sys.stdout.write)
    assert runner.summarize(verbose=False).failed == 0
