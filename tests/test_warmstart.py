"""Stage 1 warm start (`dsrl warmstart`) and `dsrl diagnose stage1` on tiny sizes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from dsrl_cli.cli.app import app
from dsrl_cli.errors import BadInput
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.stages.alias import AliasConfig, run_alias
from dsrl_cli.stages.common import load_action_critic, load_actor, load_critic_from, load_sampler
from dsrl_cli.stages.diagnose import diagnose_stage1
from dsrl_cli.stages.distill_qw import DistillConfig, run_distill_qw
from dsrl_cli.stages.online import OnlineConfig, run_online
from dsrl_cli.stages.train_qa import TrainQAConfig, run_train_qa
from dsrl_cli.stages.warmstart import (
    ActionScorer,
    LatentScorer,
    WarmstartConfig,
    advantage_weights,
    aw_mle_loss,
    candidate_log_prob,
    effective_sample_size,
    run_warmstart,
    sample_candidates,
)
from tests.helpers import tiny_store

CPU = torch.device("cpu")
TINY = dict(steps=30, batch_size=16, m_candidates=8, actor_hidden=32, critic_hidden=32, critic_depth=2,
            device="cpu", checkpoint_every=10, log_every=10)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """dataset, base, qa.ckpt, alias.pt and qw.ckpt at tiny sizes."""
    store = tiny_store(tmp_path_factory.mktemp("warmstart") / "artifacts")
    tiny = dict(steps=20, batch_size=32, hidden=32, depth=2, device="cpu")
    run_train_qa(TrainQAConfig(**tiny), store)
    run_alias(AliasConfig(mode="retrieve", m=8, batch_size=256, device="cpu"), store)
    run_distill_qw(DistillConfig(**tiny), store)
    return store


@pytest.fixture(scope="module")
def bare_store(tmp_path_factory):
    """Only dataset and base policy: no qa / qw / alias."""
    return tiny_store(tmp_path_factory.mktemp("bare") / "artifacts", episodes=10)


# ---- the weights on hand-made scores ----------------------------------------------------------------


def test_advantage_weights_hand_example():
    q = torch.tensor([[0.0, 1.0, 2.0]])
    w, b = advantage_weights(q, beta=1.0, tau_baseline=1.0, max_weight=100.0)
    b_expected = math.log((1 + math.e + math.e**2) / 3)  # tau log mean exp(q / tau)
    assert b.item() == pytest.approx(b_expected, rel=1e-6)
    torch.testing.assert_close(w, torch.exp(q - b_expected))
    # beta scales the advantage.
    w2, _ = advantage_weights(q, beta=2.0, tau_baseline=1.0, max_weight=100.0)
    torch.testing.assert_close(w2, torch.exp(2.0 * (q - b_expected)))
    # tau -> 0: the baseline is the best score, so every weight is <= 1 and the best one is 1.
    w_small, b_small = advantage_weights(q, beta=1.0, tau_baseline=1e-3, max_weight=100.0)
    assert b_small.item() == pytest.approx(2.0 - 1e-3 * math.log(3), abs=1e-5)
    assert w_small.max().item() == pytest.approx(math.exp(1e-3 * math.log(3)), rel=1e-4)
    # large tau: the baseline tends to the mean score.
    _, b_large = advantage_weights(q, beta=1.0, tau_baseline=1e4, max_weight=100.0)
    assert b_large.item() == pytest.approx(1.0, abs=1e-3)
    # clipping at max_weight.
    w_clip, b_clip = advantage_weights(q, beta=10.0, tau_baseline=100.0, max_weight=20.0)
    b100 = 100.0 * math.log((1 + math.exp(0.01) + math.exp(0.02)) / 3)
    assert b_clip.item() == pytest.approx(b100, rel=1e-5)
    assert w_clip[0, 2].item() == 20.0  # exp(10 * (2 - b)) ~ e^10, clipped
    assert w_clip[0, 0].item() == pytest.approx(math.exp(-10.0 * b100), rel=1e-3)
    # normalize=True: a per-row softmax, which ignores any baseline shift of the scores.
    w_soft, _ = advantage_weights(q, beta=1.0, tau_baseline=1.0, max_weight=20.0, normalize=True)
    torch.testing.assert_close(w_soft, torch.softmax(q, dim=1))
    w_soft_shift, _ = advantage_weights(q + 5.0, beta=1.0, tau_baseline=1.0, max_weight=20.0, normalize=True)
    torch.testing.assert_close(w_soft, w_soft_shift)
    # ...while the un-normalized weights depend on tau (the baseline is not inert).
    assert not torch.allclose(w, w_small)
    # effective sample size: uniform -> 1, one dominant candidate -> 1/M.
    assert effective_sample_size(torch.ones(1, 4)).item() == pytest.approx(1.0)
    assert effective_sample_size(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).item() == pytest.approx(0.25)


def test_candidates_split_clamped_and_log_prob_matches_policy():
    torch.manual_seed(0)
    policy = LatentPolicy(6, 2, 8, 4, steer_mode="act_horizon", noise_scale=1.5, hidden=16, depth=1)
    obs = torch.randn(5, 6)
    gen = torch.Generator().manual_seed(0)
    w = sample_candidates(policy, obs, m_prior=3, m_actor=2, clip=0.98, generator=gen)
    assert w.shape == (5, 5, 8, 2)
    assert w[:, :3, :4].abs().max() <= 0.98 * 1.5 + 1e-6  # prior candidates: steered part clamped inside
    assert w[:, 3:, :4].abs().max() <= 1.5  # actor candidates: inside the actor's own support
    logp = candidate_log_prob(policy, obs, w)
    assert torch.isfinite(logp).all()
    flat = policy.log_prob(obs.repeat_interleave(5, dim=0), w.reshape(25, 8, 2)).reshape(5, 5)
    torch.testing.assert_close(logp, flat, rtol=1e-5, atol=1e-4)


def test_aw_mle_moves_actor_towards_high_q_noise():
    torch.manual_seed(0)
    policy = LatentPolicy(3, 2, 4, 2, steer_mode="act_horizon", noise_scale=1.5, hidden=32, depth=2)
    target = torch.tensor([0.8, -0.6, 0.5, 0.9]).reshape(2, 2)

    def scorer(obs_cond, w):  # fake Q^W: high for steered noise near `target`
        return -(w[:, :2] - target).pow(2).sum(dim=(1, 2))

    cfg = WarmstartConfig(m_candidates=16, beta_latent=2.0, tau_baseline=1.0)
    obs = torch.randn(64, 3)

    def dist() -> float:
        with torch.no_grad():
            return float((policy.mean_action(obs)[:, :2] - target).norm(dim=(1, 2)).mean())

    before = dist()
    optim = torch.optim.Adam(policy.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(250):
        loss, _ = aw_mle_loss(policy, scorer, obs[torch.randint(0, 64, (32,), generator=gen)], cfg, gen)
        optim.zero_grad()
        loss.backward()
        optim.step()
    after = dist()
    assert after < 0.5 * before, (before, after)


def test_scorers_and_base_get_no_gradient_from_the_actor_loss(store):
    sampler = load_sampler(store.resolve("base.ckpt"), CPU)
    meta = sampler.meta
    qw = load_critic_from(store.resolve("qw.ckpt").main_path, CPU)
    qa = load_action_critic(store.resolve("qa.ckpt").main_path, CPU)
    policy = LatentPolicy(meta.obs_cond_dim, meta.act_dim, meta.pred_horizon, meta.act_horizon,
                          steer_mode="act_horizon", hidden=16, depth=1)
    obs = torch.randn(8, meta.obs_cond_dim)
    cfg = WarmstartConfig(m_candidates=4)
    for scorer in (LatentScorer(qw), ActionScorer(qa, sampler)):
        loss, _ = aw_mle_loss(policy, scorer, obs, cfg, torch.Generator().manual_seed(0))
        loss.backward()
    assert any(p.grad is not None for p in policy.parameters())
    for module in (qw, qa, sampler.policy, sampler.ema_policy):
        assert all(p.grad is None for p in module.parameters())


# ---- the stage ----------------------------------------------------------------------------------


def test_actor_defaults_match_online():
    online = {f.name: f.default for f in dataclasses.fields(OnlineConfig)}
    warm = {f.name: f.default for f in dataclasses.fields(WarmstartConfig)}
    for key in ("noise_scale", "steer_mode", "actor_hidden", "actor_depth"):
        assert warm[key] == online[key], key


def test_use_na_and_no_use_na_run_and_record_inputs(store):
    na = run_warmstart(WarmstartConfig(**TINY), store)
    assert not na.cached and na.path.name == "stage1.ckpt"
    assert (store.root / "stage1.ckpt").resolve() == na.path.resolve()
    inputs = na.artifact.manifest["inputs"]
    assert inputs["qw"] == store.resolve("qw.ckpt").key and inputs["qa"] is None and inputs["alias"] is None
    assert inputs["base"] == store.resolve("base.ckpt").key and inputs["dataset"] == store.resolve("dataset.h5").key
    assert na.summary["scorer"] == "Q^W"
    for key in ("q_prior_mean", "q_actor_mean", "q_actor_det_mean"):
        assert math.isfinite(na.summary[key])
    records = [json.loads(line) for line in (na.artifact.dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    for key in ("loss", "weight_mean", "ess", "q_prior_cand", "q_actor_cand"):
        assert key in records[-1]
    assert run_warmstart(WarmstartConfig(**TINY), store).cached

    plain = run_warmstart(WarmstartConfig(**(TINY | {"use_na": False})), store)
    assert plain.key != na.key and plain.summary["scorer"] == "Q^A"
    inputs = plain.artifact.manifest["inputs"]
    assert inputs["qa"] == store.resolve("qa.ckpt").key and inputs["qw"] is None
    # Without a Q^W the checkpoint holds no critic; with NA it carries the distilled one for --init-qw.
    assert load_critic_from(plain.path, CPU) is None
    assert load_critic_from(na.path, CPU) is not None


def test_offline_sac_runs(store):
    result = run_warmstart(WarmstartConfig(**(TINY | {"method": "offline-sac"})), store)
    assert result.summary["method"] == "offline-sac"
    assert result.artifact.manifest["inputs"]["alias"] == store.resolve("alias.pt").key
    last = result.summary["last"]
    for key in ("critic_loss", "actor_loss", "bc_nll", "alpha", "td_error", "alias_clamped_share"):
        assert math.isfinite(last[key]), key
    critic = load_critic_from(result.path, CPU)
    qw = load_critic_from(store.resolve("qw.ckpt").main_path, CPU)
    assert critic.config == qw.config  # initialised from qw.ckpt, then trained
    changed = any(not torch.equal(a, b) for a, b in zip(critic.parameters(), qw.parameters(), strict=True))
    assert changed
    # The aw-mle options do not enter the offline-sac key (and vice versa).
    again = run_warmstart(WarmstartConfig(**(TINY | {"method": "offline-sac", "beta_latent": 7.0,
                                                            "actor_std": 0.3})), store)
    assert again.cached and again.key == result.key


def test_stage1_ckpt_feeds_eval_and_online(store):
    result = run_warmstart(WarmstartConfig(**TINY), store)
    actor = load_actor(result.artifact, CPU)
    assert actor.config["steer_mode"] == "act_horizon" and actor.config["noise_scale"] == 1.5
    _, log_std = actor._dist_params(torch.randn(5, actor.obs_cond_dim))  # AW-MLE leaves the constant actor_std
    torch.testing.assert_close(log_std, torch.full_like(log_std, math.log(WarmstartConfig.actor_std)))
    assert load_critic_from(result.path, CPU) is not None
    tiny_online = dict(env_steps=48, num_envs=4, utd=1, batch_size=16, warmup_env_steps=0, critic_hidden=32,
                       critic_depth=2, eval_every=0, eval_episodes=2, device="cpu")
    online = run_online(OnlineConfig(**tiny_online, init_actor="stage1.ckpt", init_qw="stage1.ckpt"), store)
    assert online.artifact.manifest["inputs"]["init_actor"] == result.key
    out = invoke("eval", "--artifacts", store.root, "--compare", "prior,stage1", "--episodes", 2, "--num-envs", 2,
                 "--device", "cpu", "--json")
    assert out.exit_code == 0, out.stderr
    assert set(json.loads(out.stdout)["results"]) == {"prior", "stage1"}


def test_resume_after_interruption(store):
    cfg = WarmstartConfig(**(TINY | {"seed": 5, "steps": 30}))
    ran: list[int] = []

    def interrupt(step: int) -> None:
        ran.append(step)
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_warmstart(cfg, store, on_step=interrupt)
    [partial] = [p for p in store.partial_runs() if "warmstart" in str(p)]
    assert sorted(p.name for p in (partial / "checkpoints").iterdir())[-1] == "state_000000000020.pt"
    ran.clear()
    resumed = run_warmstart(cfg, store, on_step=ran.append)
    assert ran == list(range(21, 31))  # continued from the checkpoint
    fresh = run_warmstart(cfg, store, force=True)
    assert fresh.key == resumed.key
    obs = torch.randn(4, load_actor(fresh.artifact, CPU).obs_cond_dim)
    torch.testing.assert_close(load_actor(resumed.artifact, CPU).mean_action(obs, torch.Generator().manual_seed(0)),
                               load_actor(fresh.artifact, CPU).mean_action(obs, torch.Generator().manual_seed(0)))
    assert resumed.summary["q_actor_mean"] == fresh.summary["q_actor_mean"]


def test_missing_upstream_is_bad_input(bare_store):
    with pytest.raises(BadInput, match="distill-qw"):
        run_warmstart(WarmstartConfig(**TINY), bare_store)
    with pytest.raises(BadInput, match="train-qa"):
        run_warmstart(WarmstartConfig(**(TINY | {"use_na": False})), bare_store)
    assert not (bare_store.root / "objects" / "warmstart").exists()  # refused before any work


def test_upstream_of_another_base_is_refused(store):
    from dsrl_cli.models.latent_q_network import LatentQNetwork
    from dsrl_cli.stages.common import critic_checkpoint
    from dsrl_cli.store.checkpoint import save_torch

    base = store.resolve("base.ckpt")
    run = store.begin("distill-qw", {"fake": 1}, {"base": "0123456789abcdef"}, 1)
    sampler = load_sampler(base, CPU)
    q = LatentQNetwork(sampler.meta.obs_cond_dim, 16, hidden=8, depth=1)
    save_torch(run.dir / "qw.ckpt", critic_checkpoint(q, "latent", {}))
    fake = run.finish("qw.ckpt", {}, base.meta)
    try:
        with pytest.raises(BadInput, match="another base policy"):
            run_warmstart(WarmstartConfig(**(TINY | {"qw": str(fake.main_path)})), store)
    finally:
        # Leave qw.ckpt pointing at the real distilled critic for the other tests.
        real = [a for a in store.list() if a.stage == "distill-qw" and a.key != fake.key][-1]
        store.point_friendly_name(real)


def test_cli_bad_options_exit_2(store, bare_store):
    root = store.root
    for args in (("--m-candidates", 0), ("--method", "nope"), ("--beta-latent", -1),
                 ("--method", "aw-mle", "--offline-sac")):
        out = invoke("warmstart", "--artifacts", root, "--device", "cpu", *args)
        assert out.exit_code == 2, (args, out.stderr)
    out = invoke("warmstart", "--artifacts", bare_store.root, "--device", "cpu", "--use-na")
    assert out.exit_code == 2 and "distill-qw" in out.stderr


def test_cli_warmstart_json_and_diagnose(store):
    out = invoke("warmstart", "--artifacts", store.root, "--device", "cpu", "--steps", 20, "--m-candidates", 8,
                 "--set", "batch_size=16", "--set", "actor_hidden=32", "--json")
    assert out.exit_code == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["artifact"].endswith("stage1.ckpt") and "q_prior_mean" in payload

    report = diagnose_stage1(store.root, "stage1.ckpt", batch=64, device="cpu")
    assert report["q_w"] is not None and report["q_a"] is not None
    for part in ("q_w", "q_a"):
        for key in ("prior", "actor_sample", "actor_mean", "gain_sample"):
            assert math.isfinite(report[part][key])
    assert isinstance(report["verdict"], str)

    as_json = invoke("diagnose", "stage1", "--artifacts", store.root, "--batch", 64, "--device", "cpu", "--json")
    assert as_json.exit_code == 0, as_json.stderr
    assert json.loads(as_json.stdout)["verdict"] == report["verdict"]
    plain = invoke("diagnose", "stage1", "--artifacts", store.root, "--batch", 64, "--device", "cpu")
    assert plain.exit_code == 0 and plain.stdout.strip().splitlines()[-1] == report["verdict"]
    missing = invoke("diagnose", "stage1", "nope.ckpt", "--artifacts", store.root)
    assert missing.exit_code == 2


def test_normalized_softmax_weights_option_runs(store):
    result = run_warmstart(WarmstartConfig(**(TINY | {"normalize_weights": True, "steps": 10})), store)
    assert math.isfinite(result.summary["q_actor_mean"])
    assert result.summary["last"]["weight_mean"] == pytest.approx(1.0 / TINY["m_candidates"], rel=1e-4)
