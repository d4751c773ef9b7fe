"""Tiny runs of every stage: resume after interruption, cache behaviour, determinism, refusals."""

import json

import numpy as np
import pytest
import torch

import dsrl_cli.stages.pretrain as pretrain_mod
from dsrl_cli.errors import BadInput
from dsrl_cli.stages.common import load_actor, load_sampler
from dsrl_cli.stages.evaluate import EvalConfig, run_eval
from dsrl_cli.stages.online import OnlineConfig, run_online
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from tests.helpers import TINY_PRETRAIN, tiny_store

TINY_ONLINE = dict(
    env_steps=240, num_envs=4, utd=2, batch_size=32, warmup_env_steps=40, actor_hidden=32, critic_hidden=32,
    critic_depth=2, eval_every=0, eval_episodes=4, checkpoint_every=80, log_every=40, device="cpu",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("stages") / "artifacts")


def test_pretrain_resumes_from_checkpoint(tmp_path, monkeypatch):
    store = tiny_store(tmp_path / "a")
    cfg = PretrainConfig(**(TINY_PRETRAIN | {"steps": 30, "checkpoint_every": 10, "seed": 7}))
    real_loss = pretrain_mod.shortcut_loss
    calls = {"n": 0}

    def failing_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(pretrain_mod, "shortcut_loss", failing_loss)
    with pytest.raises(KeyboardInterrupt):
        run_pretrain(cfg, store)
    [partial] = store.partial_runs()
    assert sorted(p.name for p in (partial / "checkpoints").iterdir())[-1] == "state_000000000020.pt"
    calls["n"] = -10**9  # no more failures
    resumed = run_pretrain(cfg, store)
    assert calls["n"] == -10**9 + 10  # only the 10 remaining steps ran
    # Bit-identical to an uninterrupted run with the same seed.
    monkeypatch.setattr(pretrain_mod, "shortcut_loss", real_loss)
    fresh = run_pretrain(cfg, store, force=True)
    assert resumed.key == fresh.key
    a = load_sampler(resumed.artifact, torch.device("cpu"))
    obs = torch.zeros(3, a.meta.obs_cond_dim)
    w = torch.randn(3, *a.w_shape, generator=torch.Generator().manual_seed(0))
    b = load_sampler(fresh.artifact, torch.device("cpu"))
    torch.testing.assert_close(a.decode_actions(obs, w), b.decode_actions(obs, w))


def test_online_result_does_not_depend_on_earlier_random_draws(store):
    cfg = OnlineConfig(**(TINY_ONLINE | {"env_steps": 80, "seed": 11}))
    torch.manual_seed(123)
    first = run_online(cfg, store, force=True)
    actor_a = load_actor(first.artifact, torch.device("cpu"))
    torch.randn(1000)  # what an earlier stage in the same process might draw
    second = run_online(cfg, store, force=True)
    actor_b = load_actor(second.artifact, torch.device("cpu"))
    for a, b in zip(actor_a.state_dict().values(), actor_b.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_online_runs_and_logs(store):
    result = run_online(OnlineConfig(**TINY_ONLINE), store)
    assert not result.cached and result.path.name == "stage2.ckpt"
    records = [json.loads(line) for line in (result.artifact.dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("event") is None]
    for key in ("alpha", "q_mean", "q_std", "td_error", "policy_entropy", "utd", "env_steps", "updates_per_s"):
        assert key in train[-1]
    assert result.summary["env_steps"] >= 240
    assert run_online(OnlineConfig(**TINY_ONLINE), store).cached
    actor = load_actor(result.artifact, torch.device("cpu"))
    assert actor.config["pred_horizon"] == 8


def test_online_resumes_where_it_stopped(store):
    cfg = OnlineConfig(**(TINY_ONLINE | {"seed": 3}))
    seen: list[int] = []

    def interrupt(env_steps: int) -> None:
        seen.append(env_steps)
        if env_steps >= 170:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_online(cfg, store, on_iteration=interrupt)
    partial = [p for p in store.partial_runs() if "online" in str(p)]
    assert partial
    steps_done = max(int(p.stem.split("_")[1]) for p in (partial[0] / "checkpoints").glob("state_*.pt"))
    assert 80 <= steps_done < 170
    seen.clear()
    result = run_online(cfg, store, on_iteration=seen.append)
    assert seen[0] > steps_done  # continued from the checkpoint, not from zero
    assert seen[0] <= steps_done + 4 * 8  # one macro step on each env past it
    assert result.summary["env_steps"] >= 240


def test_online_wall_time_spans_every_sitting(store, monkeypatch):
    """A resumed run reports the seconds of all its sittings, not only of the last (bench-rl's wall time)."""
    import dsrl_cli.stages.online as online_mod
    from dsrl_cli.store.checkpoint import load_torch

    class Clock:  # one second per reading: the reported time grows with the work done, deterministically
        t = 0.0

        def perf_counter(self) -> float:
            self.t += 1.0
            return self.t

    monkeypatch.setattr(online_mod, "time", Clock())
    cfg = OnlineConfig(**(TINY_ONLINE | {"seed": 21}))

    def interrupt(env_steps: int) -> None:
        if env_steps >= 230:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_online(cfg, store, on_iteration=interrupt)
    folder = store.root / "objects" / "online" / online_mod.artifact_key(cfg, store)
    last = sorted((folder / "checkpoints").glob("state_*.pt"))[-1]
    first_sitting = load_torch(last)["state"]["counters"]["seconds"]
    resumed = run_online(cfg, store)  # the second sitting is shorter than the first (80 of 240 env steps)
    assert resumed.summary["seconds"] > first_sitting > 0


def test_online_refuses_incompatible_init_qw(store, tmp_path):
    from dsrl_cli.models.latent_policy import LatentPolicy
    from dsrl_cli.models.latent_q_network import LatentQNetwork
    from dsrl_cli.stages.common import actor_checkpoint
    from dsrl_cli.store.checkpoint import save_torch

    # A fake online artifact whose critic expects another w size.
    run = store.begin("online", {"fake": 1}, {}, 1)
    policy = LatentPolicy(10, 2, 8, 4, hidden=8, depth=1)
    save_torch(run.dir / "stage2.ckpt", actor_checkpoint(policy, LatentQNetwork(10, 99, hidden=8, depth=1), {}))
    base = store.resolve("base.ckpt")
    bad = run.finish("stage2.ckpt", {}, base.meta)
    before = sorted(p.name for p in (store.root / "objects" / "online").iterdir())
    with pytest.raises(BadInput, match="init-qw"):
        run_online(OnlineConfig(**(TINY_ONLINE | {"init_qw": str(bad.main_path), "seed": 99})), store)
    assert sorted(p.name for p in (store.root / "objects" / "online").iterdir()) == before


def test_eval_is_deterministic_and_compares_on_same_seeds(store):
    cfg = EvalConfig(compare="prior", episodes=6, num_envs=4, device="cpu", seed=1)
    first = run_eval(cfg, store)
    again = run_eval(cfg, store, force=True)
    assert first.summary["results"] == again.summary["results"]
    assert run_eval(cfg, store).cached


def test_frozen_base_gets_no_gradient_through_sac_batch(store):
    from dsrl_cli.agents.dsrl_sac_agent import DSRLSACAgent, SACConfig
    from dsrl_cli.buffers.macro_replay_buffer import MacroBatch
    from dsrl_cli.models.latent_policy import LatentPolicy
    from dsrl_cli.models.latent_q_network import LatentQNetwork

    sampler = load_sampler(store.resolve("base.ckpt"), torch.device("cpu"))
    meta = sampler.meta
    policy = LatentPolicy(meta.obs_cond_dim, meta.act_dim, meta.pred_horizon, meta.act_horizon, hidden=16, depth=1)
    agent = DSRLSACAgent(policy, LatentQNetwork(meta.obs_cond_dim, 16, hidden=16, depth=1), SACConfig())
    obs = torch.randn(8, meta.obs_cond_dim)
    w, _ = policy.sample(obs)
    a_head = sampler.decode_actions(obs, w, head_only=True)
    batch = MacroBatch(obs, w, a_head, torch.rand(8), torch.full((8,), 0.96), torch.zeros(8), obs)
    agent.update(batch)
    params = list(sampler.policy.parameters()) + list(sampler.ema_policy.parameters())
    assert all(p.grad is None and not p.requires_grad for p in params)
    assert np.isfinite(agent.alpha.item())


def test_online_na_runs_and_saves_action_critic(store):
    from dsrl_cli.store.checkpoint import load_torch

    result = run_online(OnlineConfig(**(TINY_ONLINE | {"na": True, "seed": 5})), store)
    blob = load_torch(result.path)
    assert "action_critic_state" in blob["extra"]
    records = [json.loads(line) for line in (result.artifact.dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("event") is None and "qa_loss" in r]
    assert train and all(np.isfinite(r["distill_loss"]) for r in train)


def test_first_reaching_needs_two_evaluations_in_a_row():
    from dsrl_cli.stages.online import first_reaching

    def curve(*values):
        return [{"env_steps": (i + 1) * 100, "success": v} for i, v in enumerate(values)]

    assert first_reaching(curve(0.9, 0.1, 0.85, 0.9), 0.8) == 300  # a lone lucky evaluation does not count
    assert first_reaching(curve(0.1, 0.9, 0.95), 0.8) == 200
    assert first_reaching(curve(0.9), 0.8) is None
    assert first_reaching(curve(0.1, None), 0.8) is None


def test_eval_schedule_enters_the_key(store):
    # The summary's final success and curve come from these evaluations, with or without early stopping.
    base = dict(TINY_ONLINE, env_steps=80, warmup_env_steps=80, seed=11)
    first = run_online(OnlineConfig(**base), store)
    other = run_online(OnlineConfig(**(base | {"eval_episodes": 5})), store)
    assert not other.cached and other.key != first.key
    assert len(other.summary["curve"]) == 1 and first.summary["curve"] != other.summary["curve"]
    stopping = base | {"stop_at_success": 0.99, "eval_every": 40}
    a = run_online(OnlineConfig(**stopping), store)
    b = run_online(OnlineConfig(**(stopping | {"eval_every": 20})), store)
    assert not b.cached and a.key != b.key != first.key
