"""medseg distill: a student run learns from teachers; the loss and the early refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from medseg.cli import main
from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.deploy.distill import DistillModule, kd_loss
from medseg.models.checkpoint import load_network
from medseg.training.module import module_hparams

STUDENT = (
    "data:\n  patch_size: [16, 16, 16]\n  target_spacing: [4.0, 4.0, 4.0]\n"
    "model:\n  channels: [4, 8]\n"
    "trainer:\n  max_epochs: 2\n  steps_per_epoch: 4\n  val_every_n_epochs: 2\n  progress_bar: false\n"
)


def test_kd_loss_is_zero_for_the_teacher_itself_and_grows_with_disagreement() -> None:
    logits = torch.randn(2, 3, 4, 4, 4)
    probs = torch.softmax(logits / 2.0, dim=1)
    assert kd_loss(logits, probs, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    near, far = kd_loss(logits + 0.1 * torch.randn_like(logits), probs, 2.0), kd_loss(-logits, probs, 2.0)
    assert 0 < near.item() < far.item()


def test_distill_module_pulls_towards_the_teachers(tmp_path: Path) -> None:
    cfg = from_dict({"model": {"channels": [4, 8]}, "data": {"patch_size": [16, 16, 16]}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1})
    torch.manual_seed(0)
    student = DistillModule(**module_hparams(cfg, plan))
    twin = copy.deepcopy(student.net)
    student.set_teachers([(twin, cfg, plan)], ["twin"], temperature=2.0, weight=1.0)
    batch = {"image": torch.randn(2, 1, 16, 16, 16), "label": torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)}
    student.log = lambda *a, **k: None  # type: ignore[method-assign]  (no trainer attached)
    assert student.training_step(batch, 0).item() == pytest.approx(0.0, abs=1e-5)  # a student equal to its teacher
    torch.manual_seed(1)
    other = DistillModule(**module_hparams(cfg, plan))
    student.set_teachers([(other.net, cfg, plan)], ["other"], temperature=2.0, weight=1.0)
    assert student.training_step(batch, 0).item() > 1e-3
    assert not any(k.startswith("_teachers") for k in student.state_dict())  # teachers stay out of the checkpoint


def test_distill_trains_an_ordinary_student_run(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, manifest = phantom_run
    (tmp_path / "student.yaml").write_text(STUDENT)
    out = tmp_path / "student"
    assert main(["distill", str(tmp_path / "student.yaml"), "--teacher", str(run), "--teacher", str(run),
                 "--data", str(manifest), "--output", str(out)]) == 0
    student, cfg, plan = load_network(out / "checkpoints" / "best.ckpt")
    teacher, _, _ = load_network(run / "checkpoints" / "best.ckpt")
    assert cfg.model.channels == [4, 8] and plan.num_classes == 4
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 2
    assert main(["predict", "--model", str(out), "--input", str(manifest.parent / "imagesTs"), "--output",
                 str(tmp_path / "pred")]) == 0


def test_distill_refuses_teachers_with_other_labels(phantom_run: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run, manifest = phantom_run
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["labels"] = {"0": "background", "1": "organ", "2": "lesion"}
    for entry in data["training"]:
        for key in ("image", "label"):
            entry[key] = str(manifest.parent / entry[key])
    data["test"] = []
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    (tmp_path / "student.yaml").write_text(STUDENT)
    out = tmp_path / "student"
    assert main(["distill", str(tmp_path / "student.yaml"), "--teacher", str(run), "--data", str(other),
                 "--output", str(out)]) == 2
    assert "the student's data has" in capsys.readouterr().err
    assert not out.exists()
    assert main(["distill", str(tmp_path / "student.yaml"), "--teacher", str(run), "--data", str(manifest),
                 "--output", str(out), "--temperature", "0"]) == 2
    assert "expected a positive temperature" in capsys.readouterr().err
    assert not out.exists()
