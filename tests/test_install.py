"""A non-editable install (a built wheel) runs medseg commands and finds the demo pipeline from
any working directory, without the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)


def test_wheel_install_runs_from_anywhere(tmp_path):
    wheels, site, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PIP_NO_INDEX": "1", "OMP_NUM_THREADS": "1"}
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                  "-w", str(wheels)], cwd=tmp_path, env=env)
    assert built.returncode == 0, built.stderr[-2000:]
    [wheel] = wheels.glob("medseg-*.whl")
    done = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # the installed copy first on the path (the editable finder comes after every path entry)
    env["PYTHONPATH"] = str(site)
    where = _run([sys.executable, "-c", "import medseg, medseg.demo as d; print(medseg.__file__); "
                  "print(d.default_pipeline())"], cwd=work, env=env)
    module_file, pipeline = where.stdout.split()
    assert module_file.startswith(str(site)) and pipeline.startswith(str(site)) and Path(pipeline).is_file()
    steps = [
        ["synth", "--output", "data", "--cases", "3"],
        ["check", "data/dataset.json"],
        ["train", pipeline, "--data", "data/dataset.json", "--output", "run", "--quiet",
         *[a for s in ("trainer.max_epochs=1", "trainer.steps_per_epoch=2", "trainer.val_every_n_epochs=1",
                       "data.target_spacing=[4.0,4.0,4.0]", "data.patch_size=[16,16,16]", "model.channels=[4,8]",
                       "trainer.accelerator=cpu") for a in ("--set", s)]],
        ["predict", "--model", "run", "--input", "data/imagesTs", "--output", "pred", "--quiet"],
    ]
    for step in steps:
        out = _run([sys.executable, "-m", "medseg", *step], cwd=work, env=env)
        assert out.returncode == 0, f"{step[0]}: {out.stderr[-2000:]}"
    assert list((work / "pred").glob("*.nii.gz"))
