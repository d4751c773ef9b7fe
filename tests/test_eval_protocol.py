"""One evaluation protocol for every row (issue 9): noise modes, the prior-mean row, Wilson intervals,
disjoint episode seeds, and tasks without a success signal (online, eval, diagnose)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import dsrl_cli.stages.online as online_mod
from dsrl_cli.cli.app import app
from dsrl_cli.envs.fork_reach import ForkReachEnv
from dsrl_cli.errors import BadInput
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.stages.collect import CollectConfig, run_collect
from dsrl_cli.stages.common import actor_checkpoint, load_sampler
from dsrl_cli.stages.diagnose import diagnose_stage2, stage2_warnings
from dsrl_cli.stages.evaluate import EvalConfig, run_eval
from dsrl_cli.stages.online import OnlineConfig, run_online
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from dsrl_cli.store.checkpoint import save_torch
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.seeding import MAX_EPISODES, SEED_PURPOSES, check_episode_counts, episode_seed, episode_seeds
from dsrl_cli.utils.stats import wilson_ci95
from tests.helpers import TINY_PRETRAIN, tiny_store

TINY_ONLINE = dict(
    env_steps=160, num_envs=4, utd=1, batch_size=32, warmup_env_steps=40, actor_hidden=16, critic_hidden=16,
    critic_depth=1, eval_every=0, eval_episodes=4, checkpoint_every=80, log_every=40, device="cpu",
)
STATS = ("episodes", "successes", "success_mean", "success_low", "success_high", "return_mean", "return_ci95",
         "length_mean", "env_steps")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("evalproto") / "artifacts")


@pytest.fixture(scope="module")
def returns_store(tmp_path_factory):
    """ForkReach declared without a success signal: a returns-only task."""
    root = tmp_path_factory.mktemp("returns_only")
    spec = yaml.safe_load((Path(__file__).parents[1] / "configs" / "tasks" / "default.yaml").read_text())
    spec |= {"name": "returns-only", "success_key": None}
    task_file = root / "returns_only.yaml"
    task_file.write_text(yaml.safe_dump(spec))
    store = ArtifactStore(root / "artifacts")
    run_collect(CollectConfig(task=str(task_file), episodes=20), store)
    run_pretrain(PretrainConfig(**TINY_PRETRAIN), store)
    return store


def _actor_artifact(store: ArtifactStore, policy: LatentPolicy, tag: str):
    """A warmstart artifact holding `policy` (as `dsrl warmstart` would write it)."""
    base = store.resolve("base.ckpt")
    run = store.begin("warmstart", {"test_actor": tag}, {"base": base.key}, 1)
    save_torch(run.dir / "stage1.ckpt", actor_checkpoint(policy, None, {"base": base.key}))
    return run.finish("stage1.ckpt", {}, base.meta)


def _zero_mean_actor(store: ArtifactStore) -> LatentPolicy:
    meta = load_sampler(store.resolve("base.ckpt"), torch.device("cpu")).meta
    torch.manual_seed(0)
    policy = LatentPolicy(meta.obs_cond_dim, meta.act_dim, meta.pred_horizon, meta.act_horizon,
                          steer_mode="act_horizon", hidden=16, depth=1)
    with torch.no_grad():  # mean rows of the output layer -> mu = 0 for every observation
        policy.net[-1].weight[:policy.steered_dim] = 0.0
        policy.net[-1].bias[:policy.steered_dim] = 0.0
    return policy


def _log(artifact) -> list[dict]:
    return [json.loads(line) for line in (artifact.dir / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- intervals


def test_wilson_interval_never_collapses_and_matches_known_values():
    low, high = wilson_ci95(0, 50)
    assert low == 0.0 and high == pytest.approx(0.0713, abs=1e-4)
    low, high = wilson_ci95(50, 50)
    assert high == 1.0 and low == pytest.approx(0.9287, abs=1e-4)
    low, high = wilson_ci95(29, 50)  # 58%
    assert (low, high) == (pytest.approx(0.4423, abs=1e-4), pytest.approx(0.7062, abs=1e-4))
    for n in (1, 7, 100):
        for k in range(n + 1):
            lo, hi = wilson_ci95(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0 and hi - lo > 0.0


def test_eval_stores_wilson_intervals_and_the_mode_per_row(store):
    result = run_eval(EvalConfig(compare="prior,prior-mean", episodes=6, num_envs=4, device="cpu"), store)
    doc = json.loads(result.path.read_text())
    assert doc["noise"] == "sampled"
    for name, noise in (("prior", "N(0,I)"), ("prior-mean", "w_head=0")):
        row = doc["results"][name]
        assert row["noise"] == noise and "success_ci95" not in row
        assert (row["success_low"], row["success_high"]) == wilson_ci95(row["successes"], 6)
        assert row["success_mean"] == row["successes"] / 6


# ---------------------------------------------------------------- noise modes and rows


def test_prior_mean_row_is_the_mean_mode_of_a_zero_mean_actor(store):
    """prior-mean = w_head 0 with an N(0, I) tail: exactly what a zero-mean act_horizon actor does in mean mode."""
    artifact = _actor_artifact(store, _zero_mean_actor(store), "zero-mean")
    rows = {}
    for noise in ("mean", "sampled"):
        cfg = EvalConfig(compare=f"prior,prior-mean,{artifact.main_path}", episodes=8, num_envs=4, device="cpu",
                         noise=noise)
        rows[noise] = run_eval(cfg, store).summary["results"]
    mean_rows = rows["mean"]
    actor = mean_rows[str(artifact.main_path)]
    assert actor["noise"] == "mean"
    assert {k: actor[k] for k in STATS} == {k: mean_rows["prior-mean"][k] for k in STATS}
    # The built-in rows do not depend on the mode; the actor's row does (its samples are not its mean).
    for name in ("prior", "prior-mean"):
        assert rows["sampled"][name] == mean_rows[name]
    assert rows["sampled"][str(artifact.main_path)]["noise"] == "sampled"


def test_eval_cli_noise_option_and_table(store):
    runner = CliRunner()
    ok = runner.invoke(app, ["eval", "--artifacts", str(store.root), "--compare", "prior,prior-mean", "--episodes",
                             "4", "--num-envs", "2", "--noise", "mean", "--device", "cpu", "--json"])
    assert ok.exit_code == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["noise"] == "mean" and out["results"]["prior-mean"]["noise"] == "w_head=0"
    assert "w_head=0" in ok.stderr and "N(0,I)" in ok.stderr and "% [" in ok.stderr and "% ±" not in ok.stderr
    bad = runner.invoke(app, ["eval", "--artifacts", str(store.root), "--noise", "mode"])
    assert bad.exit_code == 2 and "noise" in bad.stderr


# ---------------------------------------------------------------- seeds


def test_episode_seed_spaces_are_disjoint_by_construction():
    seen: dict[int, tuple] = {}
    for purpose in SEED_PURPOSES:
        for seed in (0, 1, 2, 999):
            for index in (0, 1, 2, 49, 99, MAX_EPISODES - 1):
                value = episode_seed(purpose, seed, index)
                assert value not in seen, (purpose, seed, index, seen.get(value))
                seen[value] = (purpose, seed, index)
    assert episode_seeds("eval", 3, 5, 2) == [episode_seed("eval", 3, 5), episode_seed("eval", 3, 6)]
    with pytest.raises(BadInput):
        episode_seed("eval", 0, MAX_EPISODES)
    with pytest.raises(BadInput, match="seed"):
        check_episode_counts(-1, episodes=10)
    with pytest.raises(BadInput, match="episodes"):
        check_episode_counts(0, episodes=MAX_EPISODES + 1)


def test_overflowing_episode_counts_are_refused_before_any_work(store):
    before = sorted(p.name for p in store.root.rglob("*"))
    with pytest.raises(BadInput, match="--episodes"):
        run_eval(EvalConfig(episodes=MAX_EPISODES + 1, device="cpu"), store)
    with pytest.raises(BadInput, match="--eval-episodes"):
        run_online(OnlineConfig(**(TINY_ONLINE | {"eval_episodes": MAX_EPISODES + 1})), store)
    with pytest.raises(BadInput, match="--episodes"):
        run_collect(CollectConfig(episodes=MAX_EPISODES + 1), store)
    with pytest.raises(BadInput, match="seed"):
        run_eval(EvalConfig(seed=-1, device="cpu"), store)
    assert sorted(p.name for p in store.root.rglob("*")) == before


def test_collect_training_periodic_and_final_eval_episodes_never_share_a_seed(tmp_path, monkeypatch):
    """Record every explicit env reset seed by phase; the final `dsrl eval` episodes are seen nowhere else."""
    seen: dict[str, set[int]] = defaultdict(set)
    phase = {"name": "collect"}
    real_reset = ForkReachEnv.reset

    def recording_reset(self, *, seed=None, options=None):
        if seed is not None:
            seen[phase["name"]].add(int(seed))
        return real_reset(self, seed=seed, options=options)

    monkeypatch.setattr(ForkReachEnv, "reset", recording_reset)
    real_eval = online_mod.evaluate_noise_policy

    def periodic_eval(*args, **kwargs):
        phase["name"] = "periodic"
        try:
            return real_eval(*args, **kwargs)
        finally:
            phase["name"] = "train"

    monkeypatch.setattr(online_mod, "evaluate_noise_policy", periodic_eval)
    store = tiny_store(tmp_path / "artifacts")
    phase["name"] = "train"
    run_online(OnlineConfig(**(TINY_ONLINE | {"eval_every": 40, "stop_at_success": 1.0})), store)
    phase["name"] = "eval"
    run_eval(EvalConfig(compare="prior,prior-mean", episodes=6, num_envs=4, device="cpu"), store)

    assert set(seen) == {"collect", "train", "periodic", "eval"}
    phases = sorted(seen)
    for i, a in enumerate(phases):
        for b in phases[i + 1:]:
            assert not seen[a] & seen[b], (a, b, sorted(seen[a] & seen[b]))
    # The padded last batch (6 episodes on 4 envs) reuses its own seeds: exactly the 6 evaluation episodes.
    assert seen["eval"] == set(episode_seeds("eval", 0, 0, 6))
    assert seen["periodic"] == set(episode_seeds("periodic_eval", 0, 0, 4))


# ---------------------------------------------------------------- online: eval mode, log, key


def test_online_periodic_eval_uses_eval_noise_and_logs_intervals(store, monkeypatch, capsys):
    modes: list[str] = []
    real = online_mod.actor_noise_fn

    def recording(actor, noise, seed):
        modes.append(noise)
        return real(actor, noise, seed)

    monkeypatch.setattr(online_mod, "actor_noise_fn", recording)
    cfg = OnlineConfig(**(TINY_ONLINE | {"eval_every": 80, "eval_noise": "mean", "seed": 4}))
    result = run_online(cfg, store)
    assert modes and set(modes) == {"mean"}
    evals = [r for r in _log(result.artifact) if r.get("event") == "eval"]
    assert evals and all(r["episodes"] == 4 and r["success_low"] <= r["success"] <= r["success_high"]
                         for r in evals)
    assert result.summary["curve"][-1]["return_ci95"] is not None
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("eval at")]
    assert lines and all("success" in line and "% [" in line and "(4 episodes)" in line for line in lines)
    other = run_online(OnlineConfig(**(TINY_ONLINE | {"eval_every": 80, "seed": 4})), store)
    assert other.key != result.key  # the mode changes the stored curve, so it is part of the key


# ---------------------------------------------------------------- tasks without success


def test_online_without_success_logs_null_and_prints_returns(returns_store, capsys):
    result = run_online(OnlineConfig(**(TINY_ONLINE | {"eval_every": 80})), returns_store)
    records = _log(result.artifact)
    train = [r for r in records if r.get("event") is None and r.get("episode_return") is not None]
    assert train and all(r["episode_success"] is None for r in train)
    evals = [r for r in records if r.get("event") == "eval"]
    assert evals and all(r["success"] is None and math.isfinite(r["return"]) for r in evals)
    s = result.summary
    assert s["final_success"] is None and s["env_steps_to_80"] is None and s["env_steps_to_90"] is None
    assert math.isfinite(s["final_return"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("eval at")]
    assert lines and all("return" in line and "success" not in line for line in lines)


def test_progress_line_shows_return_when_there_is_no_success():
    status = online_mod._status({"episode_success": None, "episode_return": 0.75, "alpha": 0.01})
    assert "return 0.75" in status and "success" not in status
    assert "success 50%" in online_mod._status({"episode_success": 0.5, "episode_return": 0.5})


def test_stop_at_success_without_a_success_signal_is_refused_before_any_work(returns_store):
    before = sorted(p.name for p in returns_store.root.rglob("*"))
    with pytest.raises(BadInput, match="success"):
        run_online(OnlineConfig(**(TINY_ONLINE | {"stop_at_success": 0.5, "seed": 8})), returns_store)
    assert sorted(p.name for p in returns_store.root.rglob("*")) == before


def test_eval_without_success_shows_na_and_returns(returns_store, capsys):
    result = run_eval(EvalConfig(compare="prior,prior-mean", episodes=4, num_envs=2, device="cpu"), returns_store)
    for row in result.summary["results"].values():
        assert row["success_mean"] is None and row["success_low"] is None and row["successes"] is None
        assert math.isfinite(row["return_mean"])
    assert "n/a" in capsys.readouterr().err


def test_diagnose_stage2_plots_returns_and_success_only_when_present(store, returns_store, monkeypatch):
    import dsrl_cli.stages.diagnose as diagnose_mod

    panels: dict[str, list[str]] = {}
    real = diagnose_mod.plot_curves

    def recording(p, path, title):
        panels[str(path)] = [name for name, _, _ in p]
        return real(p, path, title)

    monkeypatch.setattr(diagnose_mod, "plot_curves", recording)
    cfg = OnlineConfig(**(TINY_ONLINE | {"eval_every": 80, "seed": 6}))
    for s, expect_success in ((returns_store, False), (store, True)):
        run = run_online(cfg, s)
        report = diagnose_stage2(s.root, str(run.path))
        names = panels[report["plot"]]
        assert "eval return" in names and "episode return (training)" in names
        assert ("eval success" in names) is expect_success
        assert Path(report["plot"]).is_file()


# ---------------------------------------------------------------- diagnose: evaluation falling


def _healthy_training(n: int = 8) -> list[dict]:
    return [{"env_steps": 1000 * (i + 1), "td_error": 1.0 / (i + 1), "q_mean": 0.3, "alpha": 0.01,
             "policy_entropy": 2.0, "episode_return": 0.5, "episode_success": 0.5} for i in range(n)]


def _evals(values: list[float], episodes: int | None = None, key: str = "success", ci: float | None = None):
    out = []
    for i, v in enumerate(values):
        point = {"event": "eval", "env_steps": 2500 * (i + 1), key: v}
        if episodes is not None:
            point["episodes"] = episodes
        if ci is not None:
            point["return_ci95"] = ci
        out.append(point)
    return out


def test_diagnose_warns_when_eval_success_falls_from_its_start():
    # The run the issue found called "healthy": success 54% -> 28% (log without episode counts, as before).
    warnings = stage2_warnings(_healthy_training() + _evals([0.54, 0.40, 0.28]), 0.99, 8)
    assert any("evaluation success fell from 54%" in w and "28%" in w for w in warnings), warnings
    # With the episode counts logged, they are stated.
    warnings = stage2_warnings(_healthy_training() + _evals([0.54, 0.28], episodes=50), 0.99, 8)
    assert any("27/50" in w and "14/50" in w for w in warnings), warnings
    # Within the noise (4 points, overlapping intervals): no evaluation warning.
    assert stage2_warnings(_healthy_training() + _evals([0.54, 0.50], episodes=50), 0.99, 8) == []


def test_diagnose_warns_when_eval_return_falls_beyond_the_ci():
    falling = _evals([10.0, 8.0, 6.0], key="return", ci=1.0)
    warnings = stage2_warnings(_healthy_training() + falling, 0.99, 8)
    assert any("evaluation return fell from 10" in w for w in warnings), warnings
    within = _evals([10.0, 8.0], key="return", ci=3.0)
    assert stage2_warnings(_healthy_training() + within, 0.99, 8) == []
