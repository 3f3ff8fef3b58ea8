"""Window grid and block plans: MONAI's window positions, exact tiling, the byte budget, the cost."""

from __future__ import annotations

import itertools

import pytest
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from medseg.inference.blocks import evaluated, intersects, plan_blocks, window_grid


@pytest.mark.parametrize(
    ("shape", "roi", "overlap"),
    [((37, 29, 23), (16, 16, 16), 0.5), ((64, 64, 64), (32, 32, 32), 0.25), ((100, 40, 9), (40, 56, 40), 0.5),
     ((16, 16, 16), (16, 16, 16), 0.5), ((50, 33, 21), (20, 10, 7), 0.6)],
)
def test_window_grid_is_monais(shape: tuple[int, ...], roi: tuple[int, ...], overlap: float) -> None:
    grid = window_grid(shape, roi, overlap)
    padded = grid.padded_shape
    assert all(p == max(n, r) for p, n, r in zip(padded, shape, roi, strict=True))
    interval = _get_scan_interval(padded, roi, 3, (overlap,) * 3)
    expected = [tuple(s.start for s in win) for win in dense_patch_slices(padded, roi, interval)]
    before = [b for b, _ in grid.pad]
    got = [tuple(s + b for s, b in zip(w, before, strict=True)) for w in grid.windows()]
    assert got == expected  # same windows, same order (the order fixes the float sums)


def test_mirrored_windows_are_the_flipped_images_windows() -> None:
    grid = window_grid((37, 12, 23), (16, 16, 16), 0.5)  # axis 1 padded by 4 (2 before, 2 after)
    flipped = list(grid.windows(flip=(0, 1)))
    plain = list(grid.windows())
    for (x, y, z), (fx, fy, fz) in zip(plain, flipped, strict=True):
        assert fz == z  # unflipped axis
        assert fx == 37 - 16 - x  # mirrored start
        assert fy == y == -2  # the single padded window covers the axis symmetrically


def test_odd_padding_mirrors_with_the_flip() -> None:
    grid = window_grid((10, 16, 16), (16, 16, 16), 0.5)  # 6 voxels of padding on axis 0 -> 3/3
    assert grid.pad[0] == (3, 3)
    grid = window_grid((9, 16, 16), (16, 16, 16), 0.5)  # 7 -> 3 before, 4 after
    assert next(grid.windows())[0] == -3
    assert next(grid.windows(flip=(0,)))[0] == -4  # MONAI pads the flipped image 3/4: mirrored, 4/3


@pytest.mark.parametrize("budget_voxels", [10**9, 40_000, 9_000, 1])
def test_blocks_tile_the_grid_within_budget(budget_voxels: int) -> None:
    shape = (70, 45, 33)
    grid = window_grid(shape, (16, 16, 16), 0.5)
    plan = plan_blocks(shape, [grid], 4, budget_voxels * 4)
    seen = set()
    for box in plan.blocks:
        cells = set(itertools.product(*(range(lo, hi) for lo, hi in box)))
        assert not cells & seen  # no voxel in two blocks
        seen |= cells
        size = 1
        for lo, hi in evaluated(box, shape):
            size *= hi - lo
        if budget_voxels >= 9_000:
            assert size <= budget_voxels
    assert len(seen) == 70 * 45 * 33
    if budget_voxels == 10**9:
        assert plan.blocks == (((0, 70), (0, 45), (0, 33)),) and plan.overhead == 1.0
    else:
        assert len(plan.blocks) > 1 and plan.overhead > 1.0
    # the evaluation count is what the blocks really run: windows overlapping each evaluated box
    count = sum(sum(1 for s in grid.windows() if intersects(s, grid.roi, evaluated(b, shape))) for b in plan.blocks)
    assert plan.evaluations == count


def test_plan_prefers_fewer_evaluations_over_more_blocks() -> None:
    shape = (200, 40, 40)
    grid = window_grid(shape, (40, 40, 40), 0.5)
    plan = plan_blocks(shape, [grid], 1, 100 * 40 * 40)  # room for about 100 slices
    assert all(box[1] == (0, 40) and box[2] == (0, 40) for box in plan.blocks)  # cut only the long axis
    assert plan.evaluations < 2 * plan.whole_volume_evaluations


def test_plan_needs_a_grid() -> None:
    with pytest.raises(ValueError, match="at least one window grid"):
        plan_blocks((8, 8, 8), [], 4, 100)
