"""benchmarks/speed.py: the FLOP count behind "fraction of the matmul limit" and the plain decode reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():  # noqa: ANN201 - a module
    spec = importlib.util.spec_from_file_location("bench_speed", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_flops_by_hand(speed) -> None:  # noqa: ANN001
    # hidden 4, depth 1, batch 256, 2 heads; critic head 71 -> 4 -> 1, actor 39 -> 4 -> 64 (mean and log-std).
    b = 256
    f_actor = 2 * b * (39 * 4 + 4 * 64)
    f_head = 2 * b * (71 * 4 + 4 * 1)
    critic_step = 2 * (f_head + f_head + f_head + 2 * b * 4 * 1)  # target fwd, fwd, weight grads, input grads
    actor_through_critic = 2 * (f_head + f_head)  # fwd, input grads down to w (layer 0 included)
    actor_step = f_actor + 2 * b * 4 * 64  # weight grads, input grads above layer 0
    expected = 2 * f_actor + critic_step + actor_through_critic + actor_step
    assert speed.update_flops(4, 1) == expected
    kinds = [k for k, *_ in speed.update_matmuls(4, 1)]
    assert kinds.count("wgrad") == 2 * 2 + 2 and kinds.count("fwd") == 2 * 3 * 2 + 2 * 2


def test_plain_decode_reference_computes_the_same_chunks(speed) -> None:  # noqa: ANN001
    for kind, steps in (("flow", 3), ("shortcut", 2)):
        sampler = speed.default_sampler(kind, steps)
        obs = torch.randn(5, sampler.meta.obs_cond_dim)
        w = torch.randn(5, *sampler.w_shape)
        torch.testing.assert_close(speed.plain_decode(sampler, obs, w, torch.no_grad),
                                   sampler.decode_actions(obs, w))
