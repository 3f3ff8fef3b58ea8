"""medseg distill: a student run learns from teachers; the loss and the early refusals."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch

from medseg.cli import main
from medseg.config import from_dict
from medseg.data.manifest import load_manifest
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


def test_distill_step_covers_the_unlabelled_patches(tmp_path: Path) -> None:
    cfg = from_dict({"model": {"channels": [4, 8]}, "data": {"patch_size": [16, 16, 16]}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1})
    torch.manual_seed(0)
    student, teacher = DistillModule(**module_hparams(cfg, plan)), DistillModule(**module_hparams(cfg, plan))
    student.set_teachers([(teacher.net, cfg, plan)], ["t"], temperature=2.0, weight=1.0)
    student.log = lambda *a, **k: None  # type: ignore[method-assign]  (no trainer attached)
    image, u_image = torch.randn(2, 1, 16, 16, 16), 3 * torch.randn(2, 1, 1, 16, 16, 16)
    batch = {"image": image, "label": torch.zeros(2, 1, 16, 16, 16, dtype=torch.long)}
    labelled_only = student.training_step(batch, 0)
    both = student.training_step({**batch, "u_image": u_image}, 0)
    x = torch.cat([image, u_image.flatten(0, 1)])
    with torch.no_grad():
        expected = kd_loss(student.net(x), torch.softmax(teacher.net(x) / 2.0, dim=1), 2.0)
    assert both.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(both.item() - labelled_only.item()) > 1e-4
    # the label term stays on the labelled patches: with weight 0 the unlabelled ones change nothing
    student.kd_weight = 0.0
    assert student.training_step({**batch, "u_image": u_image}, 0).item() == pytest.approx(
        student.training_step(batch, 0).item(), rel=1e-5)


def _with_unlabelled_test_images(manifest: Path, tmp_path: Path) -> Path:
    """The phantom manifest with its test cases as Decathlon's unlabelled test images (plain paths)."""
    data = json.loads(manifest.read_text(encoding="utf-8"))
    for entry in data["training"]:
        for key in ("image", "label"):
            entry[key] = str(manifest.parent / entry[key])
    data["test"] = [str(manifest.parent / t["image"]) for t in data["test"]]
    out = tmp_path / "with_unlabelled.json"
    out.write_text(json.dumps(data))
    return out


def test_distill_trains_an_ordinary_student_run(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, manifest = phantom_run
    (tmp_path / "student.yaml").write_text(STUDENT)
    out = tmp_path / "student"
    unlabelled_manifest = _with_unlabelled_test_images(manifest, tmp_path)
    test_names = {c.name for c in load_manifest(unlabelled_manifest).all_cases if c.label is None}
    assert len(test_names) == 2
    extra = tmp_path / "more_images"
    extra.mkdir()
    shutil.copy(next((manifest.parent / "imagesTs").glob("*.nii.gz")), extra / "extra_001.nii.gz")
    assert main(["distill", str(tmp_path / "student.yaml"), "--teacher", str(run), "--teacher", str(run),
                 "--data", str(unlabelled_manifest), "--output", str(out), "--unlabelled", str(extra)]) == 0
    split = json.loads((out / "split.json").read_text(encoding="utf-8"))
    assert set(split["unlabelled"]) == test_names | {"extra_001"}  # the manifest's test images and the folder's
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


def test_distill_labelled_only_and_bad_unlabelled_sources(phantom_run: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run, manifest = phantom_run
    (tmp_path / "student.yaml").write_text(STUDENT.replace("max_epochs: 2", "max_epochs: 1").replace(
        "val_every_n_epochs: 2", "val_every_n_epochs: 1"))
    data = _with_unlabelled_test_images(manifest, tmp_path)
    base = ["distill", str(tmp_path / "student.yaml"), "--teacher", str(run), "--data", str(data)]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--output", str(tmp_path / "a"), "--unlabelled", str(empty)]) == 2
    assert "no NIfTI images" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main([*base, "--output", str(tmp_path / "a"), "--unlabelled", str(empty), "--labelled-only"]) == 2
    assert "choose one" in capsys.readouterr().err
    assert main([*base, "--output", str(tmp_path / "b"), "--labelled-only"]) == 0  # not even the manifest's 2
    assert json.loads((tmp_path / "b" / "split.json").read_text(encoding="utf-8"))["unlabelled"] == []
