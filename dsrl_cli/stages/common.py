"""Pieces every stage function shares: the result type and loading/checking upstream artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsrl_cli.errors import BadInput
from dsrl_cli.store.store import Artifact, ArtifactStore, StageRun, stage_key


@dataclass
class StageResult:
    path: Path | None
    key: str | None
    cached: bool
    summary: dict[str, Any] = field(default_factory=dict)
    artifact: Artifact | None = None

    @classmethod
    def from_artifact(cls, artifact: Artifact, cached: bool) -> StageResult:
        return cls(artifact.main_path, artifact.key, cached, dict(artifact.summary), artifact)


@dataclass(frozen=True)
class KeyParts:
    """What a stage's artifact key hashes: its resolved config minus cosmetic fields (`hashed`) and the keys
    of its input artifacts (`inputs`). Every stage computes them in one function, `key_parts(cfg, store)`,
    which its `run_*` calls too, so the key can be known without running the stage (tests/test_cache_keys.py).
    `upstream` carries what was resolved or loaded on the way (artifacts, a task), so nothing is done twice."""

    hashed: dict[str, Any]
    inputs: dict[str, str | None]
    upstream: dict[str, Any] = field(default_factory=dict)

    def key(self, stage: str, schema: int) -> str:
        return stage_key(stage, self.hashed, self.inputs, schema)

    def begin(self, store: ArtifactStore, stage: str, schema: int, force: bool) -> StageRun:
        return store.begin(stage, self.hashed, self.inputs, schema, force)


def cached_result(run: StageRun) -> StageResult:
    assert run.artifact is not None
    return StageResult.from_artifact(run.artifact, cached=True)


def task_of(artifact: Artifact) -> dict[str, Any]:
    spec = artifact.meta.get("task_spec")
    if not isinstance(spec, dict):
        raise BadInput(f"artifact {artifact.key} ({artifact.stage}) records no task; recreate it with this version")
    return spec


def check_same_task(a: Artifact, b: Artifact) -> None:
    """Refuse to combine artifacts made for different tasks or shapes."""
    ta, tb = task_of(a), task_of(b)
    for field_name in ("name", "env_id", "n_obs_steps", "pred_horizon", "act_horizon"):
        if ta.get(field_name) != tb.get(field_name):
            raise BadInput(
                f"{a.stage} artifact {a.key} and {b.stage} artifact {b.key} disagree on {field_name} "
                f"({ta.get(field_name)!r} vs {tb.get(field_name)!r}); they belong to different tasks"
            )
    for dim in ("obs_dim", "act_dim"):
        if dim in a.meta and dim in b.meta and a.meta[dim] != b.meta[dim]:
            raise BadInput(f"{a.stage} artifact {a.key} and {b.stage} artifact {b.key} disagree on {dim}")


def load_sampler(artifact: Artifact, device: torch.device):  # -> BasePolicySampler
    from dsrl_cli.samplers.base_policy_sampler import load_base_policy, load_user_base_policy

    kind = artifact.meta.get("kind")
    if kind == "user":
        sampler = load_user_base_policy(artifact.meta["factory"], device, **artifact.meta.get("factory_kwargs", {}))
        if sampler.fingerprint() != artifact.meta.get("fingerprint"):
            raise BadInput(
                f"the user base policy {artifact.meta['factory']} changed since artifact {artifact.key} was made; "
                "rerun `dsrl pretrain --base-policy ...`"
            )
        return sampler
    return load_base_policy(artifact.main_path, device)


def seeded_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def resolve_inputs(store: ArtifactStore, refs: dict[str, tuple[str | None, str, str]]) -> dict[str, Artifact]:
    """refs: name -> (explicit reference or None, stage, hint when missing)."""
    return {name: store.resolve_default(ref, stage, hint) for name, (ref, stage, hint) in refs.items()}


def task_spec_of(artifact: Artifact):  # -> TaskSpec
    from dsrl_cli.envs.tasks import TaskSpec

    return TaskSpec(**task_of(artifact))


ACTOR_FORMAT = "dsrl-latent-actor-v1"


def actor_checkpoint(policy: torch.nn.Module, critic: torch.nn.Module | None, extra: dict[str, Any]) -> dict[str, Any]:
    """What stage1.ckpt / stage2.ckpt hold: rebuildable configs and weights, nothing executable."""
    blob: dict[str, Any] = {"format": ACTOR_FORMAT, "actor_config": dict(policy.config),
                            "actor_state": policy.state_dict(), "extra": extra}
    if critic is not None:
        blob["critic_config"] = dict(critic.config)
        blob["critic_state"] = critic.state_dict()
    return blob


def _actor_blob(path: Path) -> dict[str, Any]:
    from dsrl_cli.store.checkpoint import load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != ACTOR_FORMAT:
        raise BadInput(f"{path} is not a dsrl latent-actor checkpoint")
    return blob


def load_actor(artifact_or_path: Artifact | Path, device: torch.device):  # -> LatentPolicy
    from dsrl_cli.models.latent_policy import LatentPolicy

    path = artifact_or_path.main_path if isinstance(artifact_or_path, Artifact) else Path(artifact_or_path)
    blob = _actor_blob(path)
    policy = LatentPolicy(**blob["actor_config"])
    policy.load_state_dict(blob["actor_state"])
    return policy.to(device).eval()


CRITIC_FORMAT = "dsrl-critic-v1"


def critic_checkpoint(critic: torch.nn.Module, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
    """qa.ckpt (kind "action", an ActionQNetwork) or qw.ckpt (kind "latent", a LatentQNetwork)."""
    return {"format": CRITIC_FORMAT, "kind": kind, "critic_config": dict(critic.config),
            "critic_state": critic.state_dict(), "extra": extra}


def load_critic_from(path: Path, device: torch.device):  # -> LatentQNetwork | None
    """The latent critic Q^W inside a qw.ckpt, stage1.ckpt or stage2.ckpt (None when there is none)."""
    from dsrl_cli.models.latent_q_network import LatentQNetwork
    from dsrl_cli.store.checkpoint import load_torch

    blob = load_torch(path)
    if isinstance(blob, dict) and blob.get("format") == CRITIC_FORMAT:
        if blob.get("kind") != "latent":
            return None
    else:
        blob = _actor_blob(path)
    if "critic_config" not in blob:
        return None
    critic = LatentQNetwork(**blob["critic_config"])
    critic.load_state_dict(blob["critic_state"])
    return critic.to(device)


def load_action_critic(path: Path, device: torch.device):  # -> ActionQNetwork
    from dsrl_cli.models.action_q_network import ActionQNetwork
    from dsrl_cli.store.checkpoint import load_torch

    blob = load_torch(path)
    if not isinstance(blob, dict) or blob.get("format") != CRITIC_FORMAT or blob.get("kind") != "action":
        raise BadInput(f"{path} is not an action-critic (Q^A) checkpoint")
    critic = ActionQNetwork(**blob["critic_config"])
    critic.load_state_dict(blob["critic_state"])
    return critic.to(device)
