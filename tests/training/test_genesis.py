"""Models Genesis corruptions: each one does what it says, per sample, reproducibly, on the
batch's device; the whole-patch loss (a genesis pretraining run: tests/training/test_pretrain.py)."""

from __future__ import annotations

import pytest
import torch

from medseg.config import from_dict
from medseg.data.preprocess import PreprocessingPlan
from medseg.training import genesis
from medseg.training.genesis import bezier_curve, genesis_corrupt, interpolate, local_shuffle
from medseg.training.module import module_hparams
from medseg.training.pretrain import PretrainModule


def test_local_shuffle_permutes_within_each_cell_only():
    patch = torch.arange(2 * 7 * 8 * 6, dtype=torch.float32).reshape(2, 7, 8, 6)
    block, offset = (2, 4, 3), (1, 0, 0)  # 3 x 2 x 2 cells from x = 1; x = 0 stays outside the grid
    keys = torch.rand(12, 24, generator=torch.Generator().manual_seed(0))
    out = local_shuffle(patch, block, offset, keys)
    assert torch.equal(out[:, 0], patch[:, 0])  # outside the grid: untouched
    assert not torch.equal(out, patch)
    for cx in range(3):
        for cy in range(2):
            for cz in range(2):
                cell = (slice(None), slice(1 + 2 * cx, 3 + 2 * cx), slice(4 * cy, 4 * cy + 4), slice(3 * cz, 3 * cz + 3))
                before, after = patch[cell].reshape(2, -1), out[cell].reshape(2, -1)
                assert torch.equal(before.sort(1).values, after.sort(1).values)  # the same voxels, moved
                # the same permutation in both channels: channel 1 is channel 0 plus a constant
                assert torch.equal(after[1] - after[0], before[1] - before[0])


def test_bezier_curve_is_a_monotone_map_of_the_unit_interval():
    control = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    for decreasing in (False, True):
        x, y = bezier_curve(control, decreasing)
        assert float(x[0]) == pytest.approx(0.0) and float(x[-1]) == pytest.approx(1.0)
        assert bool((x[1:] >= x[:-1]).all())
        steps = y[1:] - y[:-1]
        assert bool((steps <= 0).all()) if decreasing else bool((steps >= 0).all())
        mapped = interpolate(torch.tensor([0.0, 1.0]), x, y)
        assert mapped.tolist() == pytest.approx([1.0, 0.0] if decreasing else [0.0, 1.0], abs=1e-6)
    # the identity curve (control points on the diagonal) maps every intensity to itself
    x, y = bezier_curve(torch.tensor([[1 / 3, 1 / 3], [2 / 3, 2 / 3]]), decreasing=False)
    u = torch.linspace(0, 1, 17)
    assert torch.allclose(interpolate(u, x, y), u, atol=1e-5)


def _forced(monkeypatch: pytest.MonkeyPatch, local: float, nonlinear: float, paint: float, outpaint: float) -> None:
    monkeypatch.setattr(genesis, "LOCAL_RATE", local)
    monkeypatch.setattr(genesis, "NONLINEAR_RATE", nonlinear)
    monkeypatch.setattr(genesis, "PAINT_RATE", paint)
    monkeypatch.setattr(genesis, "OUTPAINT_RATE", outpaint)


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randn(2, 1, 20, 24, 16, generator=g) * 3.0 + 5.0


def test_each_corruption_alone(monkeypatch):
    image = _image()
    _forced(monkeypatch, local=1.0, nonlinear=0.0, paint=0.0, outpaint=0.0)
    shuffled = genesis_corrupt(image, torch.Generator().manual_seed(1))
    assert not torch.equal(shuffled, image)
    for b in range(2):  # a permutation of each sample's own voxels
        assert torch.equal(shuffled[b].flatten().sort().values, image[b].flatten().sort().values)
    _forced(monkeypatch, local=0.0, nonlinear=1.0, paint=0.0, outpaint=0.0)
    curved = genesis_corrupt(image, torch.Generator().manual_seed(1))
    for b in range(2):  # a monotone map of the intensities within the sample's own range
        lo, hi = float(image[b].min()), float(image[b].max())
        assert float(curved[b].min()) >= lo - 1e-4 and float(curved[b].max()) <= hi + 1e-4
        order = image[b].flatten().argsort()
        steps = curved[b].flatten()[order].diff()
        assert bool((steps >= -1e-4).all()) or bool((steps <= 1e-4).all())
        assert not torch.allclose(curved[b], image[b])
    _forced(monkeypatch, local=0.0, nonlinear=0.0, paint=1.0, outpaint=0.0)
    inpainted = genesis_corrupt(image, torch.Generator().manual_seed(1))
    changed = inpainted != image
    for b in range(2):
        kept = int((~changed[b]).sum())
        assert int(changed[b].sum()) > 0 and kept > changed[b].numel() // 2  # a few boxes, most of it kept
        lo, hi = float(image[b].min()), float(image[b].max())
        assert float(inpainted[b][changed[b]].min()) >= lo and float(inpainted[b][changed[b]].max()) <= hi
    _forced(monkeypatch, local=0.0, nonlinear=0.0, paint=1.0, outpaint=1.0)
    outpainted = genesis_corrupt(image, torch.Generator().manual_seed(1))
    for b in range(2):
        kept = outpainted[b] == image[b]
        assert 0 < int(kept.sum()) < kept.numel()
        # what is kept is a union of central boxes: the border voxels are noise
        assert not bool(kept[:, 0].any()) and not bool(kept[:, -1].any())


def test_corruption_is_per_sample_reproducible_and_leaves_the_input_alone():
    image = _image()
    before = image.clone()
    a = genesis_corrupt(image, torch.Generator().manual_seed(7))
    b = genesis_corrupt(image, torch.Generator().manual_seed(7))
    c = genesis_corrupt(image, torch.Generator().manual_seed(8))
    assert torch.equal(image, before)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == image.shape and a.dtype == image.dtype
    same = genesis_corrupt(image[:1].expand(2, -1, -1, -1, -1).contiguous(), torch.Generator().manual_seed(7))
    assert not torch.equal(same[0], same[1])  # each sample its own corruption
    flat = genesis_corrupt(torch.randn(3, 2, 16, 12))  # 2D patches, two channels, the global RNG
    assert flat.shape == (3, 2, 16, 12)


def test_corruption_stays_on_the_batch_device(monkeypatch):
    """Without a generator every random tensor is drawn on the image's device, named
    explicitly (a CUDA batch gets CUDA noise, no hidden CPU tensor); only the scalars that
    steer the control flow are drawn on the CPU."""
    draws: list[tuple[tuple[int, ...], object]] = []
    real = torch.rand

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        draws.append((tuple(out.shape), kwargs.get("device")))
        return out

    monkeypatch.setattr(torch, "rand", spy)
    _forced(monkeypatch, local=1.0, nonlinear=1.0, paint=1.0, outpaint=0.5)
    image = _image()
    genesis_corrupt(image)
    tensors = [device for shape, device in draws if shape != ()]
    assert len(tensors) >= 4  # shuffle keys and paint noise of both samples
    assert all(device == image.device for device in tensors)


def _pretrain_module(method: str) -> PretrainModule:
    cfg = from_dict({"model": {"channels": [4, 8]}, "data": {"patch_size": [16, 16, 16]},
                     "pretrain": {"method": method}})
    plan = PreprocessingPlan([1.0, 1.0, 1.0], "zscore", channel_names=["t1"], labels={"background": 0})
    return PretrainModule(**module_hparams(cfg, plan))


def test_genesis_loss_is_the_error_over_the_whole_patch(monkeypatch):
    module = _pretrain_module("genesis")
    image = _image()[:, :, :16, :16, :16]
    restored = image.clone()
    restored[:, :, :8] += 2.0  # off by 2 on half of every patch, exact on the rest
    monkeypatch.setattr(module, "_restore", lambda corrupted: restored)
    calls = []
    monkeypatch.setattr("medseg.training.pretrain.genesis_corrupt", lambda x, g=None: calls.append(g) or x)
    assert float(module._loss(image)) == pytest.approx(2.0)  # mean of 4 over half the voxels
    generator = torch.Generator()
    module._loss(image, generator)
    assert calls == [None, generator]  # training draws freely, validation from its fixed generator
    masked = _pretrain_module("masked")
    monkeypatch.setattr(masked, "_restore", lambda corrupted: restored)
    assert float(masked._loss(image)) != pytest.approx(2.0)  # the masked loss counts hidden voxels only
