"""`make bench`: speed of the hot paths, each against a reference measured in the same run (one table).

    python benchmarks/speed.py                         # everything (a few minutes; first run also trains
                                                       # the default and Meta-World base policies)
    python benchmarks/speed.py --only update,decode    # some sections: update, online, decode, alias, replay
    python benchmarks/speed.py --baseline-tree DIR     # online rows also for another checkout (e.g. the
                                                       # code before a change), interleaved with this one

Every figure runs at one thread (`torch.set_num_threads(1)`) and in interleaved rounds (ours, reference,
ours, reference, ...) inside one process, and the table shows the median over rounds: on a busy machine
absolute rates wander, ratios measured this way do not. Results: `bench_out/results.json`.

Rows:
- update: latent SAC update (critic + actor + alpha + targets), batch 256, obs 39, w 8x4 = 32 steered dims,
  2 critics, no LayerNorm, actor and critics both `depth x hidden`, against Stable-Baselines3's `SAC.train`
  on the same shapes (its default ReLU). FLOPs per update are counted from the layer shapes (the matmuls
  the algorithm needs: critic forward/backward, target forward, actor forward/backward through the
  critic); the matmul limit is the time of exactly those matmuls run as bare `torch.mm` calls.
- online: `online` env steps/s after warm-up, with the share of time in env stepping, decoding, updates.
- decode: `BasePolicySampler.decode_actions` against a bare Euler loop over the same network.
- alias: retrieve / invert rows/s against the rate the decoder alone allows for the same work.
- replay: resident memory of a 1,000,000-transition buffer (filled, sampled, checkpointed) against the
  transitions' raw float32 bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# A --baseline-tree child imports `dsrl_cli` from that tree instead of this one.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("DSRL_BENCH_TREE", str(ROOT)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = ROOT / "bench_out"
SECTIONS = ("update", "online", "decode", "alias", "replay")
# The comparison shapes of issue 11: a Meta-World-sized observation and noise.
OBS, HORIZON, ACT, ACT_HORIZON, BATCH = 39, 8, 4, 4, 256


def row(figure: str, ours: float, reference: float | None, unit: str, ref_name: str, **extra: Any) -> dict:
    ratio = ours / reference if reference else None
    return {"figure": figure, "ours": ours, "reference": reference, "ratio": ratio, "unit": unit,
            "reference_name": ref_name, **extra}


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median over `rounds` of each function's rate, calling them in turn within every round."""
    for fn in fns.values():  # warm-up (allocations, first-call overheads)
        fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            rates[name].append(fn())
    return {name: statistics.median(v) for name, v in rates.items()}


def per_second(fn: Callable[[], Any], calls: int, per_call: float = 1.0) -> Callable[[], float]:
    def timed() -> float:
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return calls * per_call / (time.perf_counter() - start)

    return timed


# ---------------------------------------------------------------------------------------------------------
# latent SAC update vs Stable-Baselines3


def linear_dims(d_in: int, hidden: int, depth: int, d_out: int) -> list[tuple[int, int]]:
    dims = [d_in] + [hidden] * depth + [d_out]
    return list(zip(dims[:-1], dims[1:], strict=True))


def update_matmuls(hidden: int, depth: int, num_q: int = 2, batch: int = BATCH) -> list[tuple[str, int, int, int]]:
    """The matmuls of one SAC update as (kind, rows, inner, cols); kind is fwd, wgrad or igrad.

    critic: forward + weight grads + input grads (not into the data at layer 0); target: forward;
    actor: forward on s and on s' (no grad), weight grads, input grads (not at layer 0); actor through the
    critic: forward + input grads down to w (layer 0 included), no critic weight grads.
    """
    steered = HORIZON * ACT
    head = linear_dims(OBS + steered, hidden, depth, 1)
    actor = linear_dims(OBS, hidden, depth, 2 * steered)

    def fwd(layers: list[tuple[int, int]]) -> list[tuple[str, int, int, int]]:
        return [("fwd", batch, i, o) for i, o in layers]

    def wgrad(layers: list[tuple[int, int]]) -> list[tuple[str, int, int, int]]:
        return [("wgrad", i, batch, o) for i, o in layers]

    def igrad(layers: list[tuple[int, int]], into_input: bool) -> list[tuple[str, int, int, int]]:
        return [("igrad", batch, o, i) for n, (i, o) in enumerate(layers) if n > 0 or into_input]

    out = fwd(actor)                                              # w' ~ pi(s'), no grad
    out += (fwd(head) + fwd(head) + wgrad(head) + igrad(head, False)) * num_q  # target Q(s', w'); critic step
    out += fwd(actor)                                             # w ~ pi(s), with grad
    out += (fwd(head) + igrad(head, True)) * num_q                # Q(s, w) through the frozen critic, to w
    out += wgrad(actor) + igrad(actor, False)                     # actor step
    return out


def update_flops(hidden: int, depth: int) -> float:
    return float(sum(2 * m * k * n for _, m, k, n in update_matmuls(hidden, depth)))


def matmul_limit_fn(hidden: int, depth: int) -> Callable[[], None]:
    """One update's matmuls as bare `torch.mm(out=...)` with the backward pass's transposes."""
    ops = []
    for kind, m, k, n in update_matmuls(hidden, depth):
        if kind == "wgrad":  # h^T @ grad_out
            a, b = torch.randn(k, m).t(), torch.randn(k, n)
        elif kind == "igrad":  # grad_out @ W^T
            a, b = torch.randn(m, k), torch.randn(n, k).t()
        else:
            a, b = torch.randn(m, k), torch.randn(k, n)
        ops.append((a, b, torch.empty(m, n)))

    def run() -> None:
        for a, b, out in ops:
            torch.mm(a, b, out=out)

    return run


def our_agent(hidden: int, depth: int, activation: str, rng: np.random.Generator) -> Callable[[int], None]:
    from torch import nn

    from dsrl_cli.agents.dsrl_sac_agent import DSRLSACAgent, SACConfig
    from dsrl_cli.buffers.macro_replay_buffer import MacroReplayBuffer
    from dsrl_cli.models.latent_policy import LatentPolicy
    from dsrl_cli.models.latent_q_network import LatentQNetwork

    torch.manual_seed(0)
    policy = LatentPolicy(OBS, ACT, HORIZON, ACT_HORIZON, steer_mode="full", hidden=hidden, depth=depth)
    if activation == "relu":  # the actor's MLP: swap its activation modules for the same-network comparison
        for i, layer in enumerate(policy.net):
            if not isinstance(layer, nn.Linear | nn.LayerNorm):
                policy.net[i] = nn.ReLU()
    q = LatentQNetwork(OBS, HORIZON * ACT, hidden=hidden, depth=depth, layer_norm=False, activation=activation)
    agent = DSRLSACAgent(policy, q, SACConfig(batch_size=BATCH))
    n = 10_000
    buffer = MacroReplayBuffer(n, OBS, (HORIZON, ACT), (ACT_HORIZON, ACT))
    buffer.add_batch(rng.normal(size=(n, OBS)), rng.uniform(-1.5, 1.5, (n, HORIZON, ACT)),
                     rng.normal(size=(n, ACT_HORIZON, ACT)), rng.random(n), np.full(n, 0.96), np.zeros(n),
                     rng.normal(size=(n, OBS)))
    return lambda k: agent.update_many(buffer, k, rng)


def sb3_agent(hidden: int, depth: int, rng: np.random.Generator) -> Callable[[int], None]:
    import gymnasium as gym
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    class Shapes(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (HORIZON * ACT,), np.float32)

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
            return np.zeros(OBS, np.float32), {}

        def step(self, action: np.ndarray) -> tuple:
            return np.zeros(OBS, np.float32), 0.0, False, False, {}

    n = 10_000
    model = SAC("MlpPolicy", Shapes(), buffer_size=n, batch_size=BATCH, learning_starts=0, seed=0, device="cpu",
                policy_kwargs={"net_arch": [hidden] * depth})
    model.set_logger(Logger(None, []))
    buf = model.replay_buffer
    buf.observations[:] = rng.normal(size=buf.observations.shape)
    buf.next_observations[:] = rng.normal(size=buf.next_observations.shape)
    buf.actions[:] = rng.uniform(-1, 1, buf.actions.shape)
    buf.rewards[:] = rng.random(buf.rewards.shape)
    buf.full = True
    return lambda k: model.train(k, BATCH)


def bench_update(rounds: int, quick: bool) -> list[dict]:
    try:
        import stable_baselines3
    except ImportError:
        print("update: stable-baselines3 is not installed (pip install -e '.[bench]'); skipping", flush=True)
        return []
    rows = []
    for hidden, depth, calls in ((256, 2, 10 if quick else 20), (1024, 3, 1 if quick else 2)):
        rng = np.random.default_rng(0)
        ours, ours_relu, sb3 = (our_agent(hidden, depth, "mish", rng), our_agent(hidden, depth, "relu", rng),
                                sb3_agent(hidden, depth, rng))
        limit = matmul_limit_fn(hidden, depth)
        torch.set_num_threads(1)  # after SB3's constructor, in case it changed it
        flops = update_flops(hidden, depth)
        rates = interleaved({
            "ours": per_second(lambda f=ours, c=calls: f(c), 1, calls),
            "ours_relu": per_second(lambda f=ours_relu, c=calls: f(c), 1, calls),
            "sb3": per_second(lambda f=sb3, c=calls: f(c), 1, calls),
            "limit": per_second(limit, calls),
        }, rounds)
        shape = f"{depth}x{hidden}"
        limit_gflops = rates["limit"] * flops / 1e9
        extra = {"gflop_per_update": flops / 1e9, "matmul_limit_gflops": limit_gflops,
                 "sb3_version": stable_baselines3.__version__}
        for name, label in (("ours", "Mish (default)"), ("ours_relu", "ReLU")):
            rows.append(row(f"SAC update {shape}, ours {label} vs SB3 (ReLU)", rates[name], rates["sb3"],
                            "updates/s", "SB3 SAC.train", fraction_of_limit=rates[name] / rates["limit"],
                            sb3_fraction_of_limit=rates["sb3"] / rates["limit"], **extra))
        rows.append(row(f"SAC update {shape}, ours Mish vs matmul limit", rates["ours"], rates["limit"],
                        "updates/s", f"matmuls only ({limit_gflops:.0f} GFLOP/s)", **extra))
        print(f"update {shape} done", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------
# online env steps/s


@contextlib.contextmanager
def online_timers() -> Iterator[dict[str, float]]:
    """Time env stepping, decoding and updates inside `run_online` by wrapping the classes' methods.

    The window starts at the first update (after warm-up) and ends at the last env step or update; the
    final evaluation is left out (its own env steps and decodes are not counted).
    """
    from dsrl_cli.agents.dsrl_sac_agent import DSRLSACAgent
    from dsrl_cli.envs.macro import MacroVecEnv
    from dsrl_cli.samplers.base_policy_sampler import BasePolicySampler
    from dsrl_cli.stages import online

    t = {"env": 0.0, "decode": 0.0, "update": 0.0, "env_steps": 0.0, "update_calls": 0.0, "start": 0.0, "end": 0.0}
    state = {"eval": False}
    originals = (MacroVecEnv.step, BasePolicySampler.decode_actions, DSRLSACAgent.update_many,
                 online.evaluate_noise_policy)

    def counted(key: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if state["eval"] or (key != "update" and not t["start"]):
                return fn(*args, **kwargs)
            start = time.perf_counter()
            if key == "update" and not t["start"]:
                t["start"] = start
            out = fn(*args, **kwargs)
            t["end"] = time.perf_counter()
            t[key] += t["end"] - start
            if key == "env":
                t["env_steps"] += float(out.steps.sum())
            t[f"{key}_calls"] = t.get(f"{key}_calls", 0.0) + 1
            return out

        return wrapper

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        state["eval"] = True
        try:
            return originals[3](*args, **kwargs)
        finally:
            state["eval"] = False

    MacroVecEnv.step = counted("env", originals[0])
    BasePolicySampler.decode_actions = counted("decode", originals[1])
    DSRLSACAgent.update_many = counted("update", originals[2])
    online.evaluate_noise_policy = evaluate
    try:
        yield t
    finally:
        MacroVecEnv.step, BasePolicySampler.decode_actions, DSRLSACAgent.update_many = originals[:3]
        online.evaluate_noise_policy = originals[3]


def online_child(task: str, utd: int, env_steps: int, artifacts: Path) -> dict[str, float]:
    """One `run_online` in this process (the tree on sys.path); returns steps/s and time shares."""
    from dsrl_cli.stages.collect import CollectConfig, run_collect
    from dsrl_cli.stages.online import OnlineConfig, run_online
    from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
    from dsrl_cli.store.store import ArtifactStore

    torch.set_num_threads(1)
    store = ArtifactStore(artifacts)
    run_collect(CollectConfig(task=task), store)
    run_pretrain(PretrainConfig(device="cpu"), store)
    cfg = OnlineConfig(utd=utd, env_steps=env_steps, warmup_env_steps=1_000, seed=0, device="cpu", eval_every=0,
                       eval_episodes=2, checkpoint_every=10**9, log_every=10**9)
    with online_timers() as t:
        run_online(cfg, store, force=True)
    window = t["end"] - t["start"]
    return {"env_steps_per_s": t["env_steps"] / window, "env_share": t["env"] / window,
            "decode_share": t["decode"] / window, "update_share": t["update"] / window,
            "updates_per_s": utd * t["update_calls"] / max(t["update"], 1e-9)}


def run_child(tree: Path, task: str, utd: int, env_steps: int, artifacts: Path) -> dict[str, float]:
    env = dict(os.environ, DSRL_BENCH_TREE=str(tree), OMP_NUM_THREADS="1", PYTHONPATH=str(tree))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--online-child", json.dumps([task, utd, env_steps]),
           "--artifacts", str(artifacts)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"online child ({tree}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def metaworld_available() -> bool:
    try:
        import metaworld  # noqa: F401
    except Exception:
        return False
    return True


def bench_online(rounds: int, quick: bool, baseline: Path | None) -> list[dict]:
    runs = [("default", 1, 4_000 if quick else 8_000), ("default", 20, 2_000 if quick else 4_000)]
    if metaworld_available():
        runs.append(("metaworld-reach", 20, 1_600 if quick else 3_000))
    else:
        print("online: metaworld does not import; skipping the Meta-World row", flush=True)
    rows = []
    for task, utd, env_steps in runs:
        artifacts = OUT / ("artifacts" if task == "default" else f"artifacts-{task}")
        trees = {"ours": ROOT} | ({"baseline": baseline} if baseline else {})
        results: dict[str, list[dict]] = {name: [] for name in trees}
        for _ in range(max(1, rounds // 2)):
            for name, tree in trees.items():
                results[name].append(run_child(tree, task, utd, 1_000 + env_steps, artifacts))
        med = {name: {k: statistics.median(r[k] for r in res) for k in res[0]} for name, res in results.items()}
        ours = med["ours"]
        ref = med.get("baseline", {}).get("env_steps_per_s")
        rows.append(row(f"online {task}, UTD {utd}, 8 envs (after warm-up)", ours["env_steps_per_s"], ref,
                        "env steps/s", f"--baseline-tree {baseline}" if baseline else "",
                        shares={k: round(ours[k], 3) for k in ("env_share", "decode_share", "update_share")},
                        baseline_shares=({k: round(med["baseline"][k], 3)
                                          for k in ("env_share", "decode_share", "update_share")}
                                         if baseline else None)))
        print(f"online {task} UTD {utd} done", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------
# decode


def default_sampler(kind: str, steps: int) -> Any:
    """The default task's base-policy network (random weights: decode speed does not depend on them)."""
    from dsrl_cli.data.normalization import Normalizer
    from dsrl_cli.envs.tasks import load_task
    from dsrl_cli.models.flow_policy import FlowPolicy
    from dsrl_cli.samplers.base_policy_sampler import BasePolicyMeta, BasePolicySampler

    task = load_task("default")
    obs_dim, act_dim = 5, 2
    torch.manual_seed(0)
    policy = FlowPolicy(obs_dim * task.n_obs_steps, act_dim, task.pred_horizon, hidden=task.base["hidden"],
                        depth=task.base["depth"], shortcut=kind == "shortcut")
    normalizer = Normalizer(np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32),
                            -np.ones(act_dim, np.float32), np.ones(act_dim, np.float32))
    meta = BasePolicyMeta(obs_dim, act_dim, task.n_obs_steps, task.pred_horizon, task.act_horizon, steps, kind)
    return BasePolicySampler(policy, None, normalizer, meta)


def plain_decode(sampler: Any, obs: torch.Tensor, w: torch.Tensor, mode: Any) -> torch.Tensor:
    """A bare Euler loop over the same velocity MLP: time features precomputed, no checks."""
    from dsrl_cli.models.flow_policy import sinusoidal_features

    policy, steps = sampler.policy, sampler.meta.num_inference_steps
    b, dt = w.shape[0], 1.0 / steps
    with mode():
        extra = [sinusoidal_features(torch.full((b,), dt), policy.time_dim)] if policy.shortcut else []
        x = w.reshape(b, -1)
        for i in range(steps):
            t = sinusoidal_features(torch.full((b,), i * dt), policy.time_dim)
            x = x + dt * policy.net(torch.cat([x, obs, t, *extra], dim=-1))
    return x.reshape(w.shape)


def bench_decode(rounds: int, quick: bool) -> list[dict]:
    rows = []
    for kind, steps in (("flow", 10), ("shortcut", 1), ("shortcut", 2), ("shortcut", 4)):
        sampler = default_sampler(kind, steps)
        for batch in (1, 64, 1024):
            obs = torch.randn(batch, sampler.meta.obs_cond_dim)
            w = torch.randn(batch, *sampler.w_shape)
            calls = max(2, (200 if quick else 400) // batch * (10 // steps) + 2)
            rates = interleaved({
                "ours": per_second(lambda s=sampler, o=obs, n=w: s.decode_actions(o, n), calls, batch),
                "no_grad": per_second(lambda s=sampler, o=obs, n=w: plain_decode(s, o, n, torch.no_grad), calls,
                                      batch),
                "inference": per_second(lambda s=sampler, o=obs, n=w: plain_decode(s, o, n, torch.inference_mode),
                                        calls, batch),
            }, rounds)
            best = max(rates["no_grad"], rates["inference"])
            rows.append(row(f"decode {kind} {steps} step(s), batch {batch}", rates["ours"], best, "chunks/s",
                            "plain Euler loop, best of no_grad / inference_mode"))
    return rows


# ---------------------------------------------------------------------------------------------------------
# alias


def bench_alias(rounds: int, quick: bool) -> list[dict]:
    from dsrl_cli.samplers.noise_aliasing import invert_alias, retrieve_alias

    sampler = default_sampler("shortcut", 4)
    rows_n, m, steps, starts = (64, 64, 10, 4) if quick else (128, 64, 30, 4)
    obs = torch.randn(rows_n, sampler.meta.obs_cond_dim)
    act = torch.randn(rows_n, sampler.meta.act_horizon, sampler.meta.act_dim).clamp(-1, 1)
    obs_m, w_m = obs.repeat_interleave(m, 0), torch.randn(rows_n * m, *sampler.w_shape)
    obs_s = obs.repeat_interleave(starts, 0)
    w_s = torch.randn(rows_n * starts, *sampler.w_shape)

    def decode_grad() -> None:  # what one invert iteration needs from the decoder: forward + grad w.r.t. w
        w = w_s.clone().requires_grad_(True)
        head = sampler.decode_actions(obs_s, w, head_only=True)
        torch.autograd.grad(head.pow(2).sum(), [w])

    gen = torch.Generator().manual_seed(0)
    rates = interleaved({
        "retrieve": per_second(lambda: retrieve_alias(sampler, obs, act, m, gen), 1, rows_n),
        "retrieve_decode": per_second(lambda: sampler.decode_actions(obs_m, w_m, head_only=True), 1, rows_n),
        "invert": per_second(lambda: invert_alias(sampler, obs, act, steps, 0.05, starts, generator=gen), 1, rows_n),
        # invert runs steps + 1 decodes and steps backward passes; bound it by steps + 1 forward+backward.
        "invert_decode": per_second(decode_grad, 1, rows_n / (steps + 1)),
    }, rounds)
    return [
        row(f"alias retrieve M={m}", rates["retrieve"], rates["retrieve_decode"], "rows/s",
            f"decode-bound ({rows_n * m} decodes per call)"),
        row(f"alias invert {steps} steps x {starts} starts", rates["invert"], rates["invert_decode"], "rows/s",
            "decode-bound (forward + grad per step)"),
    ]


# ---------------------------------------------------------------------------------------------------------
# replay memory


def replay_child(task: str, n: int) -> dict[str, float]:
    """Fill, sample and checkpoint an n-transition buffer in a fresh process; resident memory in bytes."""
    from dsrl_cli.buffers.macro_replay_buffer import MacroReplayBuffer
    from dsrl_cli.envs.tasks import load_task

    spec = load_task(task)
    obs = {"default": 5, "metaworld-reach": 39}[task] * spec.n_obs_steps
    act = {"default": 2, "metaworld-reach": 4}[task]
    w_shape, head = (spec.pred_horizon, act), (spec.act_horizon, act)
    raw = 4 * (2 * obs + int(np.prod(w_shape)) + int(np.prod(head)) + 3)  # obs, w, head, R, discount, done, obs'

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rng = np.random.default_rng(0)
    chunk = 10_000
    block = [rng.normal(size=(chunk, obs)), rng.normal(size=(chunk, *w_shape)), rng.normal(size=(chunk, *head)),
             rng.random(chunk), np.full(chunk, 0.96), np.zeros(chunk), rng.normal(size=(chunk, obs))]
    block = [a.astype(np.float32) for a in block]
    gc.collect()
    base = rss()  # the interpreter, torch and the source block: not the buffer's
    peak = base
    buf = MacroReplayBuffer(n, obs, w_shape, head)
    for _ in range(n // chunk):
        buf.add_batch(*block)
        peak = max(peak, rss())
    for _ in range(5):
        buf.sample(20 * 256, rng)
    filled = max(peak, rss()) - base
    path = OUT / "replay_state.pt"
    state = buf.state_dict()
    peak_ckpt = rss()
    torch.save(state, path)
    peak_ckpt = max(peak_ckpt, rss()) - base
    path.unlink()
    stored = sum(a.nbytes for a in buf._data.values()) / buf.capacity
    return {"raw_bytes_per_transition": raw, "stored_bytes_per_transition": stored, "resident_filled": filled,
            "resident_with_checkpoint": peak_ckpt, "raw_total": raw * n}


def bench_replay(n: int) -> list[dict]:
    rows = []
    for task in ("default", "metaworld-reach"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--replay-child", json.dumps([task, n])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row(f"replay {task}: bytes per stored transition", r["stored_bytes_per_transition"],
                        r["raw_bytes_per_transition"], "bytes", "raw float32 bytes of one transition"))
        rows.append(row(f"replay {task}: resident memory, {n:,} transitions filled + sampled",
                        r["resident_filled"] / 2**20, r["raw_total"] / 2**20, "MiB", "raw bytes"))
        rows.append(row(f"replay {task}: resident memory peak incl. checkpoint (state_dict + torch.save)",
                        r["resident_with_checkpoint"] / 2**20, r["raw_total"] / 2**20, "MiB", "raw bytes"))
    return rows


# ---------------------------------------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.3g}"


def print_table(rows: list[dict]) -> None:
    print(f"\n{'figure':76s} {'ours':>11s} {'reference':>11s} {'ratio':>6s}  unit / reference / notes")
    for r in rows:
        notes = [r["unit"], r["reference_name"]]
        if "fraction_of_limit" in r:
            notes.append(f"ours {100 * r['fraction_of_limit']:.0f}% / SB3 {100 * r['sb3_fraction_of_limit']:.0f}% "
                         f"of matmul limit ({r['gflop_per_update']:.2f} GFLOP/update)")
        if r.get("shares"):
            notes.append("time: " + ", ".join(f"{k.split('_')[0]} {100 * v:.0f}%" for k, v in r["shares"].items()))
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(f"{r['figure']:76s} {fmt(r['ours']):>11s} {fmt(r['reference']):>11s} {ratio:>6s}  "
              + " | ".join(n for n in notes if n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer calls per round (smoke run)")
    parser.add_argument("--baseline-tree", type=Path, default=None,
                        help="another checkout whose online rows are measured as the reference")
    parser.add_argument("--replay-transitions", type=int, default=1_000_000)
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--online-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--replay-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    if args.online_child:
        task, utd, env_steps = json.loads(args.online_child)
        print(json.dumps(online_child(task, utd, env_steps, args.artifacts)))
        return
    if args.replay_child:
        task, n = json.loads(args.replay_child)
        print(json.dumps(replay_child(task, n)))
        return
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")
    rows: list[dict] = []
    if "update" in only:
        rows += bench_update(args.rounds, args.quick)
    if "online" in only:
        rows += bench_online(args.rounds, args.quick, args.baseline_tree)
    if "decode" in only:
        rows += bench_decode(args.rounds, args.quick)
    if "alias" in only:
        rows += bench_alias(args.rounds, args.quick)
    if "replay" in only:
        rows += bench_replay(args.replay_transitions)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "rounds": args.rounds,
            "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "ru_maxrss_kib": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss}
    (OUT / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print_table(rows)
    print(f"\nwritten: {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
