"""The MLP builder's Mish: the exact function to float32 rounding, its gradient, and no overflow."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dsrl_cli.models.mlp import Mish, mish, mlp


def _exact(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x * torch.tanh(F.softplus(x))


def test_mish_matches_the_exact_function_across_the_range() -> None:
    x = torch.cat([torch.linspace(-100.0, 100.0, 20_001), torch.randn(10_000) * 3,
                   torch.tensor([0.0, -0.0, 19.99, 20.0, 20.01, 1e4, -1e4, 1e-30, -1e-30])])
    got = mish(x)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # Within float32 rounding of the float64 function, as close as torch's own kernel gets.
    exact = _exact(x)
    tol = 4 * torch.finfo(torch.float32).eps * exact.abs() + 1e-30
    assert ((got.double() - exact).abs() <= tol).all()
    torch.testing.assert_close(got, F.mish(x))


def test_mish_gradient_matches_torch_and_gradcheck() -> None:
    x = (torch.randn(2_000) * 4).requires_grad_(True)
    (g_ours,) = torch.autograd.grad(mish(x).sum(), x)
    (g_torch,) = torch.autograd.grad(F.mish(x).sum(), x)
    torch.testing.assert_close(g_ours, g_torch)
    x64 = (torch.randn(64, dtype=torch.float64) * 5).requires_grad_(True)
    assert torch.autograd.gradcheck(mish, (x64,))
    big = torch.tensor([-1e4, 30.0, 1e4], requires_grad=True)  # saturated ends: slope 0 and 1, no NaN
    (g_big,) = torch.autograd.grad(mish(big).sum(), big)
    torch.testing.assert_close(g_big, torch.tensor([0.0, 1.0, 1.0]))


def test_mish_second_derivative_is_refused_not_wrong() -> None:
    x = torch.randn(10, requires_grad=True)
    (g,) = torch.autograd.grad(mish(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), x)


def test_mish_without_graph_equals_with_graph_and_leaves_input_alone() -> None:
    x = torch.randn(300, 7)
    before = x.clone()
    with torch.no_grad():
        plain = mish(x)
    traced = mish(x.clone().requires_grad_(True))
    torch.testing.assert_close(plain, traced.detach(), rtol=0, atol=0)
    torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_mlp_uses_the_fast_mish_and_keeps_nn_mish_state_dict() -> None:
    net = mlp(3, 2, 8, 2)
    assert sum(isinstance(m, Mish) for m in net) == 2
    ref = mlp(3, 2, 8, 2, activation=nn.Mish)
    assert net.state_dict().keys() == ref.state_dict().keys()  # old checkpoints load unchanged
    ref.load_state_dict(net.state_dict())
    x = torch.randn(5, 3)
    torch.testing.assert_close(net(x), ref(x))
