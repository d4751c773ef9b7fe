"""The paper's SB3 recipe as a baseline (benchmarks/sb3_recipe.py) and `make bench-rl`'s report
(benchmarks/bench_rl.py). Skipped without stable-baselines3 (the `bench` extra)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from benchmarks import bench_rl  # noqa: E402
from benchmarks.sb3_recipe import (  # noqa: E402
    STAGE,
    NoiseActionEnv,
    RecipeConfig,
    evaluate_actor,
    key_parts,
    load_recipe_actor,
    run_recipe,
)
from dsrl_cli.envs.fork_reach import ForkReachEnv  # noqa: E402
from dsrl_cli.envs.tasks import load_task, make_env  # noqa: E402
from dsrl_cli.stages.common import load_sampler, task_spec_of  # noqa: E402
from dsrl_cli.stages.evaluate import format_success  # noqa: E402
from dsrl_cli.store.checkpoint import load_torch  # noqa: E402
from dsrl_cli.utils.stats import wilson_ci95  # noqa: E402
from tests.helpers import tiny_store  # noqa: E402

CPU = torch.device("cpu")
TINY = dict(env_steps=300, num_envs=2, gradient_steps=2, batch_size=32, hidden=16, depth=1, warmup_env_steps=60,
            eval_every=50, eval_episodes=4, final_eval_episodes=4, final_eval_envs=2, checkpoint_every=60)
SHAPED_ID = "dsrl-test/ShapedForkReach-v0"


class ShapedForkReach(ForkReachEnv):
    """ForkReach paying 0.25 + 0.01 * t at step t, so a chunk's reward sum is visible (and not discounted)."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action: np.ndarray):
        obs, reward, terminated, truncated, info = super().step(action)
        self._t += 1
        return obs, reward + 0.25 + 0.01 * self._t, terminated, truncated, info


if SHAPED_ID not in gymnasium.registry:
    gymnasium.register(SHAPED_ID, entry_point=ShapedForkReach)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("sb3") / "artifacts")


def test_noise_action_env_decodes_the_steered_head_and_sums_the_chunk_reward(store):
    base = store.resolve("base.ckpt")
    sampler = load_sampler(base, CPU)
    meta = sampler.meta
    task = replace(task_spec_of(base), env_id=SHAPED_ID)
    env = NoiseActionEnv(task, sampler, noise_scale=1.5, seed=3)
    assert env.observation_space.shape == (meta.obs_cond_dim,)
    assert env.action_space.shape == (meta.act_horizon * meta.act_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1.5)
    np.testing.assert_array_equal(env.action_space.high, 1.5)

    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    decode = sampler.decode_actions

    def spy(obs_cond: torch.Tensor, w: torch.Tensor, **kw: Any) -> torch.Tensor:
        out = decode(obs_cond, w, **kw)
        calls.append((w.clone(), out.clone()))
        return out

    sampler.decode_actions = spy  # type: ignore[method-assign]
    obs, _ = env.reset()
    action = np.linspace(-1.4, 1.4, meta.act_horizon * meta.act_dim).astype(np.float32)
    next_obs, reward, terminated, truncated, info = env.step(action)

    [(w, a_head)] = calls
    assert w.shape == (1, meta.pred_horizon, meta.act_dim)
    torch.testing.assert_close(w[0, : meta.act_horizon].flatten(), torch.from_numpy(action))  # the action is w's head
    tail = w[0, meta.act_horizon:]
    assert tail.abs().sum() > 0 and tail.std() > 0.3  # the unsteered tail is N(0, I) noise, not zeros

    # The same decoded chunk on a separate env from the same episode seed: rewards summed, no discount.
    raw = make_env(task)
    first, _ = raw.reset(seed=env.episode_seed)
    seen, total, k = [first], 0.0, 0
    for a in sampler.env_actions(a_head)[0]:
        o, r, term, trunc, _ = raw.step(a)
        seen.append(o)
        total += r
        k += 1
        if term or trunc:
            break
    assert reward == pytest.approx(total, abs=1e-6)
    assert reward > 1.0  # four steps of at least 0.25 each, undiscounted
    assert info["env_steps"] == k
    hist = np.stack(seen[-meta.n_obs_steps:])[None]
    np.testing.assert_allclose(next_obs, sampler.obs_cond_from_history(hist)[0].numpy(), rtol=0, atol=0)
    assert obs.shape == next_obs.shape and obs.dtype == np.float32
    sampler.decode_actions = decode  # type: ignore[method-assign]


def test_recipe_run_is_cached_and_resumes_bit_identically(store):
    cfg = RecipeConfig(**TINY)
    fresh = run_recipe(cfg, store)
    assert not fresh.cached and fresh.summary["env_steps"] >= 300
    assert [p["env_steps"] for p in fresh.summary["curve"]][:2] == [56, 104]  # the online eval schedule
    assert run_recipe(cfg, store).cached

    def kill(env_steps: int) -> None:
        if env_steps >= 200:
            raise KeyboardInterrupt  # like a killed process, after the checkpoint at >= 180 env steps

    with pytest.raises(KeyboardInterrupt):
        run_recipe(cfg, store, force=True, on_iteration=kill)
    [partial] = [p for p in store.partial_runs() if p.parent.name == STAGE]
    saved = max(int(p.stem.split("_")[1]) for p in (partial / "checkpoints").glob("state_*.pt"))
    assert 180 <= saved < 200
    seen: list[int] = []
    resumed = run_recipe(cfg, store, on_iteration=seen.append)
    assert saved < seen[0] <= saved + 2 * 4  # continued from the checkpoint, not from zero
    # Bit-identical to the uninterrupted run: every periodic eval, the final eval and every weight.
    assert resumed.summary["curve"] == fresh.summary["curve"]
    assert resumed.summary["final_eval"] == fresh.summary["final_eval"]
    assert resumed.summary["updates"] == fresh.summary["updates"]
    a, b = load_torch(fresh.path)["policy_state"], load_torch(resumed.path)["policy_state"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_recipe_final_eval_is_our_protocol_on_the_saved_actor(store):
    cfg = RecipeConfig(**(TINY | {"seed": 4, "eval_every": 0}))
    result = run_recipe(cfg, store)
    assert len(result.summary["curve"]) == 1  # eval_every 0: the final periodic evaluation only
    base = store.resolve("base.ckpt")
    sampler = load_sampler(base, CPU)
    actor = load_recipe_actor(result.artifact)
    # The authors' LayerNorm after each hidden linear layer of the actor and of both critics.
    assert [type(m).__name__ for m in actor.latent_pi] == ["Linear", "LayerNorm", "Tanh"]
    critic_keys = [k for k in load_torch(result.path)["policy_state"] if k.startswith("critic.qf")]
    assert {"critic.qf0.1.weight", "critic.qf1.1.weight", "critic.qf0.3.weight"} <= set(critic_keys)
    stats = evaluate_actor(actor, cfg, task_spec_of(base), sampler, cfg.final_eval_episodes, cfg.final_eval_envs,
                           "eval")
    assert result.summary["final_eval"] == {"noise": "sampled"} | stats.as_dict()


# Another valid value per field; a field added later fails the walk until it is listed here.
OTHER_VALUES: dict[str, Any] = {
    "base": "base.ckpt", "env_steps": 301, "num_envs": 3, "gradient_steps": 3, "batch_size": 33,
    "learning_rate": 1e-3, "tau": 0.01, "gamma": 0.95, "init_alpha": 0.01, "target_entropy_scale": -0.5,
    "noise_scale": 1.0, "hidden": 8, "depth": 2, "activation": "relu", "layer_norm": False, "warmup_env_steps": 0,
    "buffer_size": 100,
    "seed": 1, "device": "auto", "eval_every": 0, "eval_episodes": 5, "eval_noise": "mean",
    "final_eval_episodes": 5, "final_eval_envs": 3, "checkpoint_every": 7,
}
COSMETIC = {"device", "checkpoint_every"}


def test_recipe_key_hashes_every_result_changing_field(store):
    cfg = RecipeConfig(**TINY)
    key = key_parts(cfg, store).key(STAGE, 1)
    for f in dataclasses.fields(RecipeConfig):
        assert f.name in OTHER_VALUES, f"new RecipeConfig field {f.name}: list another value in OTHER_VALUES"
        other = replace(cfg, **{f.name: OTHER_VALUES[f.name]})
        other_key = key_parts(other, store).key(STAGE, 1)
        if f.name in COSMETIC:
            assert other_key == key, f.name
        elif f.name == "base":  # the same artifact by another name: the input key, not the name, counts
            assert other_key == key
        else:
            assert other_key != key, f.name


# ---- bench-rl's report on a fake result set ----

def _curve(successes: list[float], every: int = 1000) -> list[dict[str, Any]]:
    return [{"env_steps": every * (i + 1) + 7, "success": s} for i, s in enumerate(successes)]


def _record(seed: int, prior_k: int, curves: dict[str, list[float]]) -> dict[str, Any]:
    finals = {"prior": prior_k, "prior-mean": 45, "stage1": 55, "stage2-stage1": 95, "stage2-scratch": 90,
              "sb3-default": 20, "sb3-tuned": 88}
    rows = {row: {"successes": k, "episodes": 100, "return": k / 100,
                  "curve": _curve(curves[row]) if row in curves else None,
                  "seconds": 100.0 + seed if row in curves else (40.0 if row == "stage1" else None)}
            for row, k in finals.items()}
    return {"task": "fake", "seed": seed, "rows": rows}


def test_bench_report_table_and_plot(tmp_path: Path):
    records = [
        _record(0, 30, {"stage2-stage1": [0.5, 0.7, 0.8, 0.9], "stage2-scratch": [0.1, 0.7, 0.2, 0.7],
                        "sb3-default": [0.0, 0.1, 0.2, 0.1], "sb3-tuned": [0.2, 0.4, 0.7, 0.8]}),
        _record(1, 34, {"stage2-stage1": [0.7, 0.9, 0.9, 1.0], "stage2-scratch": [0.2, 0.3, 0.7, 0.8],
                        "sb3-default": [0.0, 0.0, 0.0, 0.3], "sb3-tuned": [0.1, 0.6, 0.5, 0.9]}),
    ]
    assert bench_rl.target_success(records) == pytest.approx(0.32 + 0.30)
    summary = bench_rl.summarize(records)
    # Two evaluations in a row at or above 62%: the first of them counts; a dip restarts the count.
    assert summary["stage2-stage1"]["steps_to_target"] == [2007, 1007]
    assert summary["stage2-scratch"]["steps_to_target"] == [None, 3007]
    assert summary["sb3-default"]["steps_to_target"] == [None, None]
    assert summary["prior"]["steps_to_target"] is None  # no curve
    assert summary["stage2-stage1"]["success"] == pytest.approx(0.95)
    assert summary["stage2-stage1"]["seconds"] == pytest.approx(100.5)

    cfg = bench_rl.BenchConfig(tasks=("fake",), seeds=2, env_steps=4000, eval_every=1000, eval_episodes=50,
                               out=tmp_path / "out", figures=tmp_path / "figures", label="t")
    text = bench_rl.report(records, cfg)
    assert text == (tmp_path / "out" / "bench_rl_t.md").read_text()
    assert json.loads((tmp_path / "out" / "bench_rl_t.json").read_text()) == records
    assert "Target: 62%" in text
    pooled = format_success(64 / 200, *wilson_ci95(64, 200))
    assert f"| prior (sampled) | {pooled} | 30% / 34% | — | — |" in text
    assert "| stage2 from scratch | " in text and "| not reached / 3,007 | 100 |" in text
    assert "| stage1 | " in text and "| — | 40 |" in text
    png = tmp_path / "figures" / "bench_rl_fake_t.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_options():
    cfg = bench_rl.parse_args(["--tasks", "default, metaworld-reach", "--seeds", "2", "--env-steps", "500"])
    assert cfg.tasks == ("default", "metaworld-reach") and cfg.seeds == 2 and cfg.env_steps == 500
    assert bench_rl.parse_args([]).tasks == bench_rl.SUITE_TASKS
    with pytest.raises(SystemExit):
        bench_rl.parse_args(["--env-steps", "0"])
    for name in bench_rl.parse_args([]).tasks:  # the default task list names tasks that exist
        load_task(name)


def test_bench_runs_every_row_in_parallel_and_resumes_from_the_store(tmp_path: Path, capfd):
    cfg = bench_rl.BenchConfig(tasks=("default",), seeds=2, env_steps=120, eval_every=60, eval_episodes=3,
                               final_episodes=4, jobs=2, quick=True, artifacts=tmp_path / "a",
                               out=tmp_path / "out", figures=tmp_path / "fig")
    records = bench_rl.run_bench(cfg)  # two worker processes, one cell each
    assert [(r["task"], r["seed"]) for r in records] == [("default", 0), ("default", 1)]
    for record in records:
        assert list(record["rows"]) == list(bench_rl.ROWS)
        for row, cell in record["rows"].items():
            assert cell["episodes"] == 4 and 0 <= cell["successes"] <= 4, row
            learning = row.startswith(("stage2", "sb3"))
            assert (cell["curve"] is not None) == learning, row
            if learning:
                assert [p["env_steps"] // 60 for p in cell["curve"]][:2] == [1, 2]  # one eval schedule for all
    capfd.readouterr()  # the worker processes print to the inherited stdout
    again = bench_rl.run_bench(replace(cfg, jobs=1))  # a second sitting: everything comes from the store
    assert again == records
    out = capfd.readouterr().out
    # the bases first, then per cell: its base again and 9 artifacts (Stage 1's 4, 2 online, 2 SB3, eval)
    assert " done in " not in out and out.count(" cached: ") == 2 + 2 * (2 + 9)
    bench_rl.report(records, cfg)
    assert (tmp_path / "fig" / "bench_rl_default.png").is_file()
