"""medseg prune: a narrower ordinary run that keeps the trained filters, and early refusals."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from medseg.cli import main
from medseg.config import from_dict
from medseg.deploy.calibration import calibration_windows
from medseg.deploy.prune import count_parameters, pruned_widths
from medseg.models.checkpoint import load_network
from medseg.models.registry import build_network


def _probabilities(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = net(x)
    return torch.softmax(out[0] if isinstance(out, list | tuple) else out, dim=1)


def test_pruned_weights_stay_closer_to_the_original_than_random(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, manifest = phantom_run
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(run), "--data", str(manifest), "--output", str(out), "--ratio", "0.5",
                 "--finetune-minutes", "0"]) == 0
    original, cfg, plan = load_network(run / "checkpoints" / "best.ckpt")
    pruned, cfg2, plan2 = load_network(out / "checkpoints" / "best.ckpt")  # an ordinary checkpoint
    assert cfg.model.channels == [8, 16] and cfg2.model.channels == [4, 8] and asdict(plan2) == asdict(plan)
    report = json.loads((out / "prune_report.json").read_text(encoding="utf-8"))
    assert report["parameters"] == count_parameters(original) and report["pruned_parameters"] == count_parameters(pruned)
    assert count_parameters(pruned) < 0.5 * count_parameters(original)
    x = torch.from_numpy(calibration_windows(manifest, cfg, plan, cases=4, per_case=4, seed=3))
    reference = _probabilities(original, x)
    kept = (reference - _probabilities(pruned, x)).abs().mean().item()
    for seed in range(3):
        torch.manual_seed(seed)
        random = build_network(cfg2.model, 1, plan.num_classes).eval()
        assert count_parameters(random) == count_parameters(pruned)
        assert kept < (reference - _probabilities(random, x)).abs().mean().item()
    assert main(["predict", "--model", str(out), "--input", str(manifest.parent / "imagesTs"), "--output",
                 str(tmp_path / "pred")]) == 0
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2


def test_prune_fine_tunes_into_a_run_that_exports_int8(phantom_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, manifest = phantom_run
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(run), "--data", str(manifest), "--output", str(out), "--ratio", "0.5",
                 "--finetune-minutes", "1"]) == 0
    init = json.loads((out / "init_from_report.json").read_text(encoding="utf-8"))
    assert init["loaded"] and not init["skipped"] and not init["reinitialised"]  # every pruned tensor carried over
    _, cfg2, _ = load_network(out / "checkpoints" / "best.ckpt")
    assert cfg2.model.channels == [4, 8] and cfg2.trainer.max_time_minutes == 1
    _, cfg, _ = load_network(run / "checkpoints" / "best.ckpt")
    assert cfg2.optim.lr == cfg.optim.lr  # fine-tuning at the run's learning rate unless --finetune-lr
    assert json.loads((out / "prune_report.json").read_text(encoding="utf-8"))["finetune_lr"] == cfg2.optim.lr
    assert main(["export", "--model", str(out), "--output", str(tmp_path / "e"), "--quantize", "int8",
                 "--calibration", str(manifest), "--calibration-cases", "2"]) == 0
    assert main(["predict", "--model", str(tmp_path / "e"), "--input", str(manifest.parent / "imagesTs"), "--output",
                 str(tmp_path / "pred")]) == 0


def test_prune_a_deep_supervised_dynunet_run_into_one_that_predicts_and_exports(
        phantom_dynunet_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, manifest = phantom_dynunet_run
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(run), "--data", str(manifest), "--output", str(out), "--ratio", "0.5",
                 "--finetune-minutes", "0"]) == 0
    original, cfg, plan = load_network(run / "checkpoints" / "best.ckpt")
    pruned, cfg2, _ = load_network(out / "checkpoints" / "best.ckpt")  # rebuilt from config + state dict
    assert cfg.model.channels == [8, 16, 32] and cfg2.model.channels == [4, 8, 16] and cfg2.model.deep_supervision
    state, state2 = original.state_dict(), pruned.state_dict()
    assert set(state) == set(state2)
    for name, tensor in state.items():  # every width halved; the class axis of the heads and the image axis kept
        halved = [d if d in (1, plan.num_classes) else d // 2 for d in tensor.shape[:2]]
        assert list(state2[name].shape[:2]) == halved, name
    x = torch.from_numpy(calibration_windows(manifest, cfg, plan, cases=4, per_case=4, seed=3))
    reference = _probabilities(original, x)
    kept = (reference - _probabilities(pruned, x)).abs().mean().item()
    assert kept > 0  # half the channels are gone: not the same function ...
    for seed in range(3):  # ... but far closer to it than a network of the pruned widths without the kept filters
        torch.manual_seed(seed)
        random = build_network(cfg2.model, 1, plan.num_classes).eval()
        assert kept < (reference - _probabilities(random, x)).abs().mean().item()
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(out), "--input", str(manifest.parent / "imagesTs"), "--output", str(pred)]) == 0
    assert len(list(pred.glob("*.nii.gz"))) == 2
    assert main(["export", "--model", str(out), "--output", str(tmp_path / "e"), "--quantize", "int8",
                 "--calibration", str(manifest), "--calibration-cases", "2"]) == 0
    assert main(["predict", "--model", str(tmp_path / "e"), "--input", str(manifest.parent / "imagesTs"), "--output",
                 str(tmp_path / "pred8")]) == 0
    assert len(list((tmp_path / "pred8").glob("*.nii.gz"))) == 2


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-0.2"])
def test_prune_refuses_a_ratio_outside_0_1(tmp_path: Path, ratio: str, capsys: pytest.CaptureFixture[str]) -> None:
    # neither the run nor the data exist: the ratio is refused first
    rc = main(["prune", "--model", str(tmp_path / "run"), "--data", str(tmp_path / "d.json"), "--output",
               str(tmp_path / "out"), "--ratio", ratio])
    assert rc == 2 and "strictly between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prune_refuses_other_requests_before_compute(phantom_run: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run, manifest = phantom_run
    args = ["prune", "--model", str(run), "--output", str(tmp_path / "out"), "--ratio", "0.5"]
    assert main([*args, "--data", str(tmp_path / "none.json")]) == 2
    assert "fine-tuning needs the training manifest" in capsys.readouterr().err
    assert main([*args, "--data", str(manifest), "--finetune-minutes", "-1"]) == 2
    assert "expected minutes >= 0" in capsys.readouterr().err
    assert main([*args, "--data", str(manifest), "--finetune-lr", "0"]) == 2
    assert "--finetune-lr 0.0: expected a positive learning rate" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["prune", "--model", str(run), "--data", str(manifest), "--output", str(run), "--ratio", "0.5"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_prune_refuses_a_family_it_cannot_rebuild(tmp_path: Path) -> None:
    from medseg.data.preprocess import PreprocessingPlan
    from medseg.deploy.prune import prune_network

    cfg = from_dict({"model": {"name": "segresnet", "channels": [8, 16]}, "data": {"patch_size": [16, 16, 16]}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", labels={"background": 0, "a": 1})
    with pytest.raises(ValueError, match=r"model.name segresnet: medseg prune supports \['unet', 'residual_unet', 'dynunet'\]"):
        prune_network(build_network(cfg.model, 1, 2), cfg, plan, 0.5)


def test_pruned_widths() -> None:
    assert pruned_widths([16, 32, 64, 128], 0.25) == [4, 8, 16, 32]
    assert pruned_widths([4, 8], 0.1) == [1, 1]
    with pytest.raises(ValueError, match=r"--ratio 1\.0"):
        pruned_widths([4], 1.0)
