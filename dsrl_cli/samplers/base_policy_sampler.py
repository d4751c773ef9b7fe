"""The frozen base policy seen by everything downstream: decode latent noise `w` into an action chunk.

Nothing downstream depends on how the policy was trained: our own `FlowPolicy` checkpoints
(`save_base_policy` / `load_base_policy`) and a user's own module (`load_user_base_policy("module:factory")`)
both end up as a `BasePolicySampler`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dsrl_cli.errors import BadInput
from dsrl_cli.models.flow_policy import FlowPolicy
from dsrl_cli.store.checkpoint import load_torch, save_torch

if TYPE_CHECKING:
    from dsrl_cli.data.normalization import Normalizer

FORMAT = "dsrl-base-policy-v1"
KINDS = ("flow", "shortcut", "user")


@dataclass(frozen=True)
class BasePolicyMeta:
    obs_dim: int
    act_dim: int
    n_obs_steps: int
    pred_horizon: int
    act_horizon: int
    num_inference_steps: int
    kind: str

    def __post_init__(self) -> None:
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "kind"}
        bad = [name for name, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise BadInput(f"base-policy meta needs positive integers for {', '.join(bad)}, got {sizes}")
        if self.act_horizon > self.pred_horizon:
            raise BadInput(
                f"act_horizon ({self.act_horizon}) must not exceed pred_horizon ({self.pred_horizon})"
            )
        if self.kind not in KINDS:
            raise BadInput(f"base-policy kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def obs_cond_dim(self) -> int:
        return self.n_obs_steps * self.obs_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BasePolicyMeta:
        if not isinstance(data, dict):
            raise BadInput(f"base-policy meta must be a dict, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise BadInput(f"base-policy meta is missing {', '.join(missing)}")
        try:
            values = {n: (str(data[n]) if n == "kind" else int(data[n])) for n in names}
        except (TypeError, ValueError) as exc:
            raise BadInput(f"base-policy meta has a non-integer size: {exc}") from exc
        return cls(**values)


class BasePolicySampler:
    """Frozen decoder `w -> a_seq`. The modules passed in are frozen in place (no copies are made):
    every parameter gets `requires_grad=False` and the modules are put in eval mode."""

    def __init__(
        self,
        policy: nn.Module,
        ema_policy: nn.Module | None,
        normalizer: Normalizer,
        meta: BasePolicyMeta,
        extra: dict[str, Any] | None = None,
    ) -> None:
        if not callable(getattr(policy, "decode", None)):
            raise BadInput("the base policy must have a decode(obs_cond, w, num_steps) method")
        for name in ("normalize_obs", "unnormalize_action"):
            if not callable(getattr(normalizer, name, None)):
                raise BadInput(f"the base policy's normalizer has no {name} method")
        for name, want in (("obs_dim", meta.obs_dim), ("act_dim", meta.act_dim)):
            have = getattr(normalizer, name, None)
            if isinstance(have, int) and have != want:
                raise BadInput(f"the normalizer's {name} is {have} but the base-policy meta says {want}")
        for module in (policy, ema_policy):
            if module is None:
                continue
            _check_flow_config(module, meta)
            module.requires_grad_(False)
            module.eval()
        self.policy = policy
        self.ema_policy = ema_policy
        self.normalizer = normalizer
        self.meta = meta
        self.extra: dict[str, Any] = dict(extra or {})
        first = next(iter(policy.parameters()), None)
        self._device = first.device if first is not None else torch.device("cpu")

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: str | torch.device) -> BasePolicySampler:
        self._device = torch.device(device)
        self.policy.to(self._device)
        if self.ema_policy is not None:
            self.ema_policy.to(self._device)
        return self

    @property
    def w_shape(self) -> tuple[int, int]:
        return (self.meta.pred_horizon, self.meta.act_dim)

    def decode_actions(
        self,
        obs_cond: torch.Tensor,
        w: torch.Tensor,
        use_ema: bool = True,
        head_only: bool = False,
    ) -> torch.Tensor:
        """`obs_cond [B, n*d], w [B, H, A] -> a_seq [B, H, A]` (or `[B, Ha, A]` with `head_only`), normalized.

        Deterministic. Without `w.requires_grad` it runs under `no_grad` (rollouts); otherwise it builds
        the graph so that gradients reach `w` (inversion) and nothing else.
        """
        self._check_inputs(obs_cond, w)
        net = self.ema_policy if use_ema and self.ema_policy is not None else self.policy
        obs_cond = obs_cond.detach().to(self._device, torch.float32)
        w = w.to(self._device, torch.float32)
        grad = torch.enable_grad() if w.requires_grad else torch.no_grad()
        with grad:
            a_seq = net.decode(obs_cond, w, self.meta.num_inference_steps)
        expected = (w.shape[0], self.meta.pred_horizon, self.meta.act_dim)
        if not isinstance(a_seq, torch.Tensor) or tuple(a_seq.shape) != expected:
            got = tuple(a_seq.shape) if isinstance(a_seq, torch.Tensor) else type(a_seq).__name__
            raise BadInput(f"the base policy's decode returned {got}, expected a tensor of shape {expected}")
        return a_seq[:, : self.meta.act_horizon] if head_only else a_seq

    def _check_inputs(self, obs_cond: torch.Tensor, w: torch.Tensor) -> None:
        if not isinstance(obs_cond, torch.Tensor) or not isinstance(w, torch.Tensor):
            raise BadInput("decode_actions expects torch tensors for obs_cond and w")
        m = self.meta
        if obs_cond.ndim != 2 or obs_cond.shape[1] != m.obs_cond_dim:
            raise BadInput(f"obs_cond must have shape [B, {m.obs_cond_dim}], got {tuple(obs_cond.shape)}")
        if w.ndim != 3 or tuple(w.shape[1:]) != self.w_shape or w.shape[0] != obs_cond.shape[0]:
            raise BadInput(
                f"w must have shape [{obs_cond.shape[0]}, {m.pred_horizon}, {m.act_dim}] to match obs_cond, "
                f"got {tuple(w.shape)}"
            )

    def obs_cond_from_history(self, obs_hist: np.ndarray) -> torch.Tensor:
        """Raw observation histories `[B, n, d]` -> normalized, flattened `obs_cond [B, n*d]` on `device`."""
        obs_hist = np.asarray(obs_hist, dtype=np.float32)
        m = self.meta
        if obs_hist.ndim != 3 or obs_hist.shape[1:] != (m.n_obs_steps, m.obs_dim):
            raise BadInput(
                f"observation history must have shape [B, {m.n_obs_steps}, {m.obs_dim}], got {obs_hist.shape}"
            )
        normed = np.asarray(self.normalizer.normalize_obs(obs_hist), dtype=np.float32)
        flat = normed.reshape(obs_hist.shape[0], m.obs_cond_dim)
        return torch.as_tensor(flat, device=self._device)

    def env_actions(self, a: torch.Tensor) -> np.ndarray:
        """Normalized actions `[B, k, A]` -> raw env units (numpy float32), clipped to the dataset's range."""
        if a.ndim != 3 or a.shape[-1] != self.meta.act_dim:
            raise BadInput(f"actions must have shape [B, k, {self.meta.act_dim}], got {tuple(a.shape)}")
        normed = np.clip(a.detach().to("cpu", torch.float32).numpy(), -1.0, 1.0)
        return np.asarray(self.normalizer.unnormalize_action(normed), dtype=np.float32)

    def sample_prior_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`w ~ N(0, I)` of shape `[batch, H, A]` on `device` (drawn on the generator's device if given)."""
        shape = (batch, *self.w_shape)
        if generator is None:
            return torch.randn(shape, device=self._device)
        return torch.randn(shape, generator=generator, device=generator.device).to(self._device)

    def fingerprint(self) -> str:
        """sha256 over meta, normalizer and every parameter/buffer byte; a cache key for decoded chunks."""
        h = hashlib.sha256()
        h.update(json.dumps(self.meta.to_dict(), sort_keys=True).encode())
        to_dict = getattr(self.normalizer, "to_dict", None)
        if callable(to_dict):
            h.update(json.dumps(to_dict(), sort_keys=True, default=str).encode())
        for tag, module in (("policy", self.policy), ("ema", self.ema_policy)):
            h.update(tag.encode())
            if module is None:
                continue
            for name, tensor in sorted(module.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()


def _check_flow_config(module: nn.Module, meta: BasePolicyMeta) -> None:
    """Catch a checkpoint/meta mismatch at construction rather than as a cryptic matmul error later."""
    if not isinstance(module, FlowPolicy):
        return
    cfg = module.config
    want = {"obs_cond_dim": meta.obs_cond_dim, "act_dim": meta.act_dim, "pred_horizon": meta.pred_horizon}
    bad = {k: (cfg[k], v) for k, v in want.items() if cfg[k] != v}
    if bad:
        raise BadInput(f"base policy network and meta disagree on (network, meta) sizes: {bad}")
    if meta.kind in ("flow", "shortcut") and (meta.kind == "shortcut") != cfg["shortcut"]:
        raise BadInput(
            f"base-policy meta says kind={meta.kind!r} but the network has shortcut={cfg['shortcut']}"
        )


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def save_base_policy(path: Path, sampler: BasePolicySampler, extra: dict[str, Any] | None = None) -> None:
    """Write plain data only (tensors, numbers, strings, lists, dicts) so `weights_only` loading works."""
    if not isinstance(sampler.policy, FlowPolicy):
        raise BadInput("only FlowPolicy base policies can be saved; a user policy is loaded from its factory")
    ema = sampler.ema_policy
    if ema is not None and not isinstance(ema, FlowPolicy):
        raise BadInput("the EMA base policy must be a FlowPolicy to be saved")
    payload = {
        "format": FORMAT,
        "meta": sampler.meta.to_dict(),
        "policy_config": dict(sampler.policy.config),
        "policy_state": _cpu_state(sampler.policy),
        "ema_state": _cpu_state(ema) if ema is not None else None,
        "normalizer": sampler.normalizer.to_dict(),
        "extra": dict(extra if extra is not None else sampler.extra),
    }
    save_torch(Path(path), payload)


def load_base_policy(path: Path, device: str | torch.device = "cpu") -> BasePolicySampler:
    from dsrl_cli.data.normalization import Normalizer  # late import: keeps this module light to import

    path = Path(path)
    payload = load_torch(path, map_location="cpu")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise BadInput(
            f"{path} is not a dsrl base-policy checkpoint (expected format {FORMAT}, found {found!r})"
        )
    try:
        meta = BasePolicyMeta.from_dict(payload["meta"])
        policy = FlowPolicy.from_config(payload["policy_config"])
        policy.load_state_dict(payload["policy_state"])
        ema = None
        if payload.get("ema_state") is not None:
            ema = FlowPolicy.from_config(payload["policy_config"])
            ema.load_state_dict(payload["ema_state"])
        normalizer = Normalizer.from_dict(payload["normalizer"])
    except BadInput:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise BadInput(f"base-policy checkpoint {path} is corrupt: {type(exc).__name__}: {exc}") from exc
    sampler = BasePolicySampler(policy, ema, normalizer, meta, extra=payload.get("extra") or {})
    return sampler.to(device)


def load_user_base_policy(spec: str, device: str | torch.device = "cpu", **kwargs: Any) -> BasePolicySampler:
    """Import `module:factory` and call `factory(**kwargs)`.

    The factory returns either a `BasePolicySampler`, or an `nn.Module` with `decode(obs_cond, w, num_steps)`
    (normalized `[B, n*d]`, `[B, H, A]` -> `[B, H, A]`, deterministic, differentiable in `w`) and attributes
    `meta` (`BasePolicyMeta` or its dict) and `normalizer` (a `Normalizer` or its dict). See
    `dsrl_cli/samplers/example_user_policy.py`.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or ":" in attr:
        raise BadInput(f"base policy spec must look like 'package.module:factory', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's module, not ours
        raise BadInput(
            f"cannot import base-policy module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise BadInput(f"module {module_name!r} has no callable {attr!r}")
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise BadInput(
            f"base-policy factory {spec} does not accept arguments {sorted(kwargs)}: {exc}"
        ) from exc
    except ValueError:  # no introspectable signature (builtins): just call it
        pass
    made = factory(**kwargs)
    if isinstance(made, BasePolicySampler):
        return made.to(device)
    if not isinstance(made, nn.Module) or not callable(getattr(made, "decode", None)):
        raise BadInput(
            f"base-policy factory {spec} must return a BasePolicySampler or an nn.Module with "
            f"decode(obs_cond, w, num_steps), meta and normalizer; got {type(made).__name__}"
        )
    meta = getattr(made, "meta", None)
    normalizer = getattr(made, "normalizer", None)
    if meta is None or normalizer is None:
        raise BadInput(f"the module returned by {spec} needs `meta` and `normalizer` attributes")
    if isinstance(meta, dict):
        meta = BasePolicyMeta.from_dict({**meta, "kind": "user"})
    elif isinstance(meta, BasePolicyMeta):
        meta = dataclasses.replace(meta, kind="user")
    else:
        raise BadInput(f"`meta` of {spec} must be a BasePolicyMeta or a dict, got {type(meta).__name__}")
    if isinstance(normalizer, dict):
        from dsrl_cli.data.normalization import Normalizer

        normalizer = Normalizer.from_dict(normalizer)
    return BasePolicySampler(made, None, normalizer, meta).to(device)
