"""Frozen base policy: flow / shortcut decoding, the sampler contract, checkpoints and the user route."""

from __future__ import annotations

import dataclasses
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dsrl_cli.errors import BadInput
from dsrl_cli.models.flow_policy import FlowPolicy, ema_update, flow_matching_loss, shortcut_loss
from dsrl_cli.models.mlp import mlp
from dsrl_cli.samplers.base_policy_sampler import (
    BasePolicyMeta,
    BasePolicySampler,
    load_base_policy,
    load_user_base_policy,
    save_base_policy,
)
from dsrl_cli.store.checkpoint import save_torch

OBS_DIM, ACT_DIM, N_OBS, H, HA = 3, 2, 2, 6, 3


class _StandInNormalizer:
    """Used only while `dsrl_cli.data.normalization` is missing (it is written in parallel)."""

    def __init__(self, obs_mean: Any, obs_std: Any, act_min: Any, act_max: Any) -> None:
        self.obs_mean = np.asarray(obs_mean, np.float32)
        self.obs_std = np.asarray(obs_std, np.float32)
        self.act_min = np.asarray(act_min, np.float32)
        self.act_max = np.asarray(act_max, np.float32)

    def normalize_obs(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.obs_mean) / self.obs_std).astype(np.float32)

    def unnormalize_action(self, a: np.ndarray) -> np.ndarray:
        a = np.clip(a, -1.0, 1.0)
        return ((a + 1) * 0.5 * (self.act_max - self.act_min) + self.act_min).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("obs_mean", "obs_std", "act_min", "act_max")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _StandInNormalizer:
        return cls(**d)


@pytest.fixture(autouse=True)
def normalizer_cls(monkeypatch: pytest.MonkeyPatch) -> type:
    try:
        from dsrl_cli.data.normalization import Normalizer

        return Normalizer
    except Exception:  # not written yet (or mid-edit): install the stand-in under the real name
        fake = types.ModuleType("dsrl_cli.data.normalization")
        fake.Normalizer = _StandInNormalizer  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "dsrl_cli.data.normalization", fake)
        return _StandInNormalizer


def _normalizer(cls: type) -> Any:
    return cls(
        obs_mean=np.arange(OBS_DIM, dtype=np.float32),
        obs_std=np.full(OBS_DIM, 2.0, np.float32),
        act_min=np.array([-2.0, 0.0], np.float32),
        act_max=np.array([2.0, 1.0], np.float32),
    )


def _sampler(normalizer_cls: type, shortcut: bool = False, with_ema: bool = True) -> BasePolicySampler:
    torch.manual_seed(0)
    kind = "shortcut" if shortcut else "flow"
    meta = BasePolicyMeta(OBS_DIM, ACT_DIM, N_OBS, H, HA, num_inference_steps=4, kind=kind)
    policy = FlowPolicy(meta.obs_cond_dim, ACT_DIM, H, hidden=32, depth=2, shortcut=shortcut)
    ema = None
    if with_ema:
        ema = FlowPolicy.from_config(policy.config)
        ema.load_state_dict(policy.state_dict())
        with torch.no_grad():  # make EMA differ, so use_ema is observable
            for p in ema.parameters():
                p.add_(0.01)
    return BasePolicySampler(policy, ema, _normalizer(normalizer_cls), meta)


def _inputs(batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, N_OBS * OBS_DIM, generator=g), torch.randn(batch, H, ACT_DIM, generator=g)


def test_mlp_shapes() -> None:
    net = mlp(4, 3, hidden=8, depth=2, layer_norm=True)
    assert net(torch.zeros(5, 4)).shape == (5, 3)
    assert sum(isinstance(m, nn.LayerNorm) for m in net) == 2
    assert len(mlp(4, 3, hidden=8, depth=0)) == 1


@pytest.mark.parametrize("shortcut", [False, True])
def test_decode_deterministic_and_batch_independent(normalizer_cls: type, shortcut: bool) -> None:
    s = _sampler(normalizer_cls, shortcut=shortcut)
    obs, w = _inputs(8)
    a1 = s.decode_actions(obs, w)
    a2 = s.decode_actions(obs.clone(), w.clone())
    assert a1.shape == (8, H, ACT_DIM) and torch.equal(a1, a2)
    torch.testing.assert_close(s.decode_actions(obs[2:5], w[2:5]), a1[2:5], atol=1e-5, rtol=1e-5)
    # EMA is the default; the raw policy differs.
    assert not torch.allclose(s.decode_actions(obs, w, use_ema=False), a1)


def test_gradients_reach_w_only(normalizer_cls: type) -> None:
    s = _sampler(normalizer_cls, shortcut=True)
    obs, w = _inputs(4)
    obs.requires_grad_(True)
    w.requires_grad_(True)
    a = s.decode_actions(obs, w, head_only=True)
    a.pow(2).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0
    assert obs.grad is None
    for module in (s.policy, s.ema_policy):
        assert module is not None and not module.training
        for p in module.parameters():
            assert p.grad is None and not p.requires_grad
    # Even inside an outer no_grad block, a w that requires grad gets a graph.
    w2 = w.detach().clone().requires_grad_(True)
    with torch.no_grad():
        out = s.decode_actions(obs.detach(), w2)
    assert out.requires_grad
    # Rollout fast path: no graph at all.
    assert not s.decode_actions(obs.detach(), w.detach()).requires_grad


def test_head_only_slices(normalizer_cls: type) -> None:
    s = _sampler(normalizer_cls)
    obs, w = _inputs(3)
    head = s.decode_actions(obs, w, head_only=True)
    assert head.shape == (3, HA, ACT_DIM)
    assert torch.equal(head, s.decode_actions(obs, w)[:, :HA])


def test_shape_validation(normalizer_cls: type) -> None:
    s = _sampler(normalizer_cls)
    obs, w = _inputs(3)
    bad = [
        (obs[:, :-1], w),  # obs_cond width
        (obs, w[:, :-1]),  # horizon
        (obs, w[..., :1]),  # act dim
        (obs, w[:2]),  # batch mismatch
        (obs, w.reshape(3, -1)),  # flat w
        (obs.numpy(), w),  # not a tensor
    ]
    for o, ww in bad:
        with pytest.raises(BadInput):
            s.decode_actions(o, ww)  # type: ignore[arg-type]
    with pytest.raises(BadInput):
        s.obs_cond_from_history(np.zeros((3, N_OBS + 1, OBS_DIM), np.float32))
    with pytest.raises(BadInput):
        s.env_actions(torch.zeros(3, HA, ACT_DIM + 1))
    with pytest.raises(BadInput):
        BasePolicyMeta(OBS_DIM, ACT_DIM, N_OBS, H, H + 1, 4, "flow")
    with pytest.raises(BadInput):
        BasePolicyMeta(OBS_DIM, ACT_DIM, N_OBS, H, HA, 4, "diffusion")
    with pytest.raises(BadInput):
        BasePolicyMeta.from_dict({"obs_dim": 3})
    wrong_meta = BasePolicyMeta(OBS_DIM, ACT_DIM, N_OBS, H + 1, HA, 4, "flow")
    with pytest.raises(BadInput):
        BasePolicySampler(s.policy, None, s.normalizer, wrong_meta)


def test_obs_and_action_conversions(normalizer_cls: type) -> None:
    s = _sampler(normalizer_cls)
    hist = np.random.default_rng(0).normal(size=(2, N_OBS, OBS_DIM)).astype(np.float32)
    cond = s.obs_cond_from_history(hist)
    assert cond.dtype == torch.float32 and cond.device == s.device
    expected = ((hist - np.arange(OBS_DIM)) / 2.0).reshape(2, -1)
    np.testing.assert_allclose(cond.numpy(), expected, atol=1e-6)
    raw = s.env_actions(torch.tensor([[[-5.0, 0.0], [1.0, 5.0]]]))
    assert raw.dtype == np.float32
    np.testing.assert_allclose(raw, [[[-2.0, 0.5], [2.0, 1.0]]], atol=1e-6)


def test_prior_noise(normalizer_cls: type) -> None:
    s = _sampler(normalizer_cls)
    w1 = s.sample_prior_noise(5, torch.Generator().manual_seed(3))
    w2 = s.sample_prior_noise(5, torch.Generator().manual_seed(3))
    assert w1.shape == (5, H, ACT_DIM) and torch.equal(w1, w2)


def test_save_load_round_trip(normalizer_cls: type, tmp_path: Path) -> None:
    s = _sampler(normalizer_cls, shortcut=True)
    path = tmp_path / "base.pt"
    save_base_policy(path, s, extra={"task": "toy", "epochs": 3})
    loaded = load_base_policy(path, "cpu")
    assert loaded.meta == s.meta and loaded.extra == {"task": "toy", "epochs": 3}
    obs, w = _inputs(4)
    for use_ema in (True, False):
        assert torch.equal(loaded.decode_actions(obs, w, use_ema), s.decode_actions(obs, w, use_ema))
    assert loaded.fingerprint() == s.fingerprint()
    assert all(not p.requires_grad for p in loaded.policy.parameters())
    with torch.no_grad():
        next(iter(loaded.policy.parameters())).add_(1e-3)
    assert loaded.fingerprint() != s.fingerprint()


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    save_torch(other, {"format": "something-else", "state": torch.zeros(2)})
    with pytest.raises(BadInput, match="not a dsrl base-policy checkpoint"):
        load_base_policy(other, "cpu")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BadInput):
        load_base_policy(text, "cpu")
    with pytest.raises(BadInput):
        load_base_policy(tmp_path / "missing.pt", "cpu")


def test_user_factory_route(normalizer_cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    if normalizer_cls is not _StandInNormalizer:  # the example needs the real Normalizer
        s = load_user_base_policy("dsrl_cli.samplers.example_user_policy:make_policy", "cpu", seed=1)
        assert s.meta.kind == "user" and s.meta.obs_cond_dim == 10
        obs, w = torch.zeros(2, 10), s.sample_prior_noise(2)
        assert s.decode_actions(obs, w, head_only=True).shape == (2, 4, 2)
        assert all(not p.requires_grad for p in s.policy.parameters())

    # A foreign module: meta and normalizer given as plain dicts.
    class Mine(nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(scale))
            self.meta = {
                "obs_dim": OBS_DIM,
                "act_dim": ACT_DIM,
                "n_obs_steps": N_OBS,
                "pred_horizon": H,
                "act_horizon": HA,
                "num_inference_steps": 1,
                "kind": "flow",
            }
            self.normalizer = _normalizer(normalizer_cls).to_dict()

        def decode(self, obs_cond: torch.Tensor, w: torch.Tensor, num_steps: int) -> torch.Tensor:
            return torch.tanh(self.scale * w)

    mod = types.ModuleType("fake_user_policies")
    mod.make = lambda scale=1.0: Mine(scale)  # type: ignore[attr-defined]
    mod.broken = lambda: "not a policy"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_user_policies", mod)
    s = load_user_base_policy("fake_user_policies:make", "cpu", scale=0.5)
    assert s.meta.kind == "user" and not s.policy.scale.requires_grad
    obs, w = _inputs(2)
    torch.testing.assert_close(s.decode_actions(obs, w), torch.tanh(0.5 * w))

    for spec, kwargs in [
        ("no_colon", {}),
        ("definitely_not_a_module_xyz:make", {}),
        ("fake_user_policies:missing", {}),
        ("fake_user_policies:make", {"unknown": 1}),
        ("fake_user_policies:broken", {}),
    ]:
        with pytest.raises(BadInput):
            load_user_base_policy(spec, "cpu", **kwargs)


def _bimodal(n: int) -> torch.Tensor:
    side = torch.where(torch.rand(n) < 0.5, -0.8, 0.8)
    return (side + 0.05 * torch.randn(n))[:, None, None]


def _near_modes(a: torch.Tensor) -> float:
    return ((a.abs() - 0.8).abs() < 0.2).float().mean().item()


def test_flow_and_shortcut_learn_bimodal_toy() -> None:
    torch.manual_seed(0)
    cond = torch.zeros(256, 1)
    flow = FlowPolicy(1, 1, 1, hidden=64, depth=2)
    short = FlowPolicy(1, 1, 1, hidden=64, depth=2, shortcut=True)
    target = FlowPolicy.from_config(short.config)
    target.load_state_dict(short.state_dict())
    opt_f = torch.optim.Adam(flow.parameters(), lr=3e-3)
    opt_s = torch.optim.Adam(short.parameters(), lr=3e-3)
    flow_losses: list[float] = []
    short_losses: list[float] = []
    for _ in range(800):
        loss = flow_matching_loss(flow, cond, _bimodal(256))
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()
        flow_losses.append(loss.item())
        out = shortcut_loss(short, cond, _bimodal(256), target, max_log2_steps=4)
        assert set(out) == {"loss", "flow_loss", "consistency_loss"}
        opt_s.zero_grad()
        out["loss"].backward()
        opt_s.step()
        ema_update(target, short, decay=0.9)
        short_losses.append(out["loss"].item())
    assert np.mean(flow_losses[-50:]) < 0.8 * np.mean(flow_losses[:20])
    assert np.mean(short_losses[-50:]) < 0.8 * np.mean(short_losses[:20])

    w = torch.randn(2000, 1, 1)
    c = torch.zeros(2000, 1)
    with torch.no_grad():
        for steps in (1, 2):
            a = short.decode(c, w, steps)
            assert _near_modes(a) > 0.7, steps
            assert 0.3 < (a > 0).float().mean().item() < 0.7, steps  # both modes, not one
        # Plain flow in one Euler step collapses to the mean: that is what the shortcut buys.
        assert _near_modes(flow.decode(c, w, 1)) < 0.3
        assert _near_modes(flow.decode(c, w, 16)) > 0.7


def test_meta_dict_round_trip() -> None:
    meta = BasePolicyMeta(5, 2, 2, 8, 4, 4, "shortcut")
    assert BasePolicyMeta.from_dict(meta.to_dict()) == meta
    assert meta.obs_cond_dim == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.kind = "flow"  # type: ignore[misc]
