"""The permutohedral lattice against a brute-force Gaussian filter."""

from __future__ import annotations

import pytest
import torch

from medseg.inference.permutohedral import Lattice


@pytest.mark.parametrize(("d", "min_corr"), [(3, 0.98), (5, 0.93)])
def test_normalised_filter_matches_brute_force_gaussian(d: int, min_corr: float) -> None:
    """Normalised output ``sum_j w_ij v_j / sum_j w_ij`` with ``w = exp(-|f_i - f_j|^2 / 2)``
    against the exact O(N^2) sum (the lattice is an approximation: Adams et al. 2010 report
    a close but not exact match)."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.rand(1500, d, generator=gen) * 6
    values = torch.rand(1500, 1, generator=gen)
    lattice = Lattice(feats)
    est = lattice.filter(values) / lattice.filter(torch.ones(1500, 1))
    w = torch.exp(-torch.cdist(feats, feats) ** 2 / 2)
    exact = (w @ values) / w.sum(1, keepdim=True)
    corr = torch.corrcoef(torch.stack([est[:, 0], exact[:, 0]]))[0, 1]
    assert corr > min_corr
    # the filter smooths: its output varies far less than the raw values
    assert est.std() < 0.5 * values.std()


def test_far_apart_points_do_not_mix() -> None:
    feats = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [50.0, 0, 0], [50.1, 0, 0]])
    values = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
    lattice = Lattice(feats)
    out = lattice.filter(values) / lattice.filter(torch.ones(4, 1))
    assert out[:2].min() > 0.99 and out[2:].max() < 0.01


def test_hash_path_for_wide_coordinate_ranges() -> None:
    """Features spread so wide that mixed-radix codes do not fit in 62 bits use the hash."""
    gen = torch.Generator().manual_seed(1)
    feats = torch.rand(400, 7, generator=gen) * 1e5
    feats[:200] = feats[0] + torch.rand(200, 7, generator=gen) * 0.1  # one tight cluster
    values = torch.cat([torch.ones(200, 1), torch.zeros(200, 1)])
    lattice = Lattice(feats)
    out = lattice.filter(values) / lattice.filter(torch.ones(400, 1))
    assert out[:200].min() > 0.99  # the cluster averages its own ones
