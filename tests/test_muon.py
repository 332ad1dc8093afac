"""Muon against a slow reference: Newton-Schulz vs the exact polar factor from an SVD."""
from __future__ import annotations

import pytest
import torch

from trainer.optim import Muon, lr_scale, muon_momentum, newton_schulz


def polar_reference(g: torch.Tensor) -> torch.Tensor:
    """U V^T of g = U S V^T, the exact orthogonalization Muon approximates."""
    u, _, vh = torch.linalg.svd(g.double(), full_matrices=False)
    return (u @ vh).float()


@pytest.mark.parametrize("shape", [(64, 64), (48, 128), (128, 48)])
def test_newton_schulz_close_to_polar(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    ns, ref = newton_schulz(g, steps=5), polar_reference(g)
    assert ns.shape == g.shape
    # NS5 with the quintic coefficients maps every singular value of g that is not tiny
    # (> 5% of the largest; a random square matrix has a few that are) into ~[0.7, 1.2].
    sv_g = torch.linalg.svdvals(g.double())
    sv = torch.linalg.svdvals(ns.double())[sv_g > 0.05 * sv_g.max()]
    print(f"NS singular values in [{sv.min():.3f}, {sv.max():.3f}]")
    assert 0.6 < sv.min() and sv.max() < 1.25
    # Same singular vectors: the error is only in the singular values' spread.
    cos = (ns * ref).sum() / (ns.norm() * ref.norm())
    print(f"cos(NS, polar) = {cos:.4f}, maxdiff {float((ns - ref).abs().max()):.3e}")
    assert cos > 0.95


def test_more_steps_converge_further():
    g = torch.randn(32, 32, generator=torch.Generator().manual_seed(1))
    ref = polar_reference(g)
    errs = [float((newton_schulz(g, steps=k) - ref).norm()) for k in (1, 3, 5)]
    assert errs[0] > errs[1] > errs[2]


def test_muon_step_matches_manual_update():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 32))
    p0 = p.detach().clone()
    grad = torch.randn(16, 32)
    p.grad = grad.clone()
    opt = Muon([p], lr=0.1, momentum=0.9, weight_decay=0.5, nesterov=True)
    opt.step()
    g = grad + 0.9 * grad  # nesterov on a fresh buffer: g + m * buf, buf = g
    expected = p0 * (1 - 0.1 * 0.5) - 0.1 * newton_schulz(g)
    assert p.shape == (16, 32)
    assert torch.allclose(p.detach(), expected, atol=1e-6)


def test_schedules():
    assert lr_scale(0.0, 0.1, 0.5) == 0.0 and lr_scale(0.05, 0.1, 0.5) == pytest.approx(0.5)
    assert lr_scale(0.3, 0.1, 0.5) == 1.0 and lr_scale(0.75, 0.1, 0.5) == pytest.approx(0.5)
    assert lr_scale(1.0, 0.1, 0.5) == 0.0
    assert muon_momentum(0, 0.92, 0.99, 1500) == pytest.approx(0.92)
    assert muon_momentum(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert muon_momentum(5000, 0.92, 0.99, 1500) == pytest.approx(0.99)
