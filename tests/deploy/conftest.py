"""A tiny trained phantom run shared by the deployment tests (trained once per session, ~20 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.cli import main

TINY = (
    "data:\n  patch_size: [16, 16, 16]\n  target_spacing: [4.0, 4.0, 4.0]\n"
    "model:\n  channels: [8, 16]\n"
    "trainer:\n  max_epochs: 4\n  steps_per_epoch: 8\n  val_every_n_epochs: 2\n  progress_bar: false\n"
)


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory of a UNet trained 32 steps on 6 phantoms, its manifest)."""
    root = tmp_path_factory.mktemp("deploy")
    assert main(["synth", "--output", str(root / "data"), "--cases", "6", "--seed", "1"]) == 0
    (root / "tiny.yaml").write_text(TINY)
    manifest = root / "data" / "dataset.json"
    assert main(["train", str(root / "tiny.yaml"), "--data", str(manifest), "--output", str(root / "run")]) == 0
    return root / "run", manifest


TINY_DYNUNET = (
    "data:\n  patch_size: [16, 16, 16]\n  target_spacing: [4.0, 4.0, 4.0]\n"
    "model:\n  name: dynunet\n  channels: [8, 16, 32]\n  strides: [2, 1]\n  deep_supervision: true\n"
    "trainer:\n  max_epochs: 2\n  steps_per_epoch: 4\n  val_every_n_epochs: 2\n  progress_bar: false\n"
)


@pytest.fixture(scope="session")
def phantom_dynunet_run(phantom_run: tuple[Path, Path]) -> tuple[Path, Path]:
    """(run directory of a deep-supervised DynUNet trained 8 steps on the phantoms, their manifest)."""
    _, manifest = phantom_run
    root = manifest.parent.parent
    (root / "tiny_dynunet.yaml").write_text(TINY_DYNUNET)
    run = root / "run_dynunet"
    assert main(["train", str(root / "tiny_dynunet.yaml"), "--data", str(manifest), "--output", str(run)]) == 0
    return run, manifest
