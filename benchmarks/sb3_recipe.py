"""The DSRL paper's own recipe as a benchmark-only baseline: Stable-Baselines3 SAC acting on the steered noise.

What the authors run (their `train_dsrl.py` / `env_utils.py`, read, not copied): SB3's stock `SAC` on a
vectorized env whose action is the base policy's input noise, bounded to [-1.5, 1.5]; the wrapper decodes it
with the frozen policy and executes the chunk, summing the chunk's rewards undiscounted; 4 envs, 20
gradient steps per vector step, batch 256, lr 3e-4, tau 0.005, automatic entropy with target 0, SB3's initial
alpha 1.0; a warm-up of the base policy's own (clipped) noise fills the replay buffer first.

Here the same recipe acts on OUR base policy artifact (`load_sampler`) and is scored by OUR evaluation
function (`evaluate_noise_policy`, the periodic-eval schedule and seed spaces of `dsrl online`), so its rows
compare with `dsrl online`'s row for row. Choices where the issue is silent, with the reason:

- gamma 0.99 per macro step: SB3 discounts once per transition, and one transition is one chunk, so the
  authors' `discount: 0.99` is a per-chunk discount (per env step 0.99 ** (1 / act_horizon)); `dsrl online`
  discounts 0.99 per env step (0.99 ** 4 = 0.961 per chunk of 4).
- only the executed head's noise `w[:act_horizon]` is the action; the tail comes from N(0, I) (our default
  `steer_mode`), drawn inside the wrapper from a per-env seeded generator.
- time limits are truncations, not terminal (SB3's `TimeLimit.truncated` handling, our macro-step rule); the
  authors' chunk wrapper marks them terminal, which only makes the baseline weaker.
- 3 x 256 tanh MLPs for actor and critics with LayerNorm after every hidden linear layer, as the authors'
  config (`use_layer_norm: True`, `activation_fn: Tanh`); stock SB3 has no LayerNorm option, so
  `LayerNormSACPolicy` inserts it (their fork does the same through `post_linear_modules`). Without it the
  critic overestimates at 20 updates per vector step: on the default task the tuned run's Q passed 1.3 (the
  sparse success reward bounds it by 1) and its success fell from 60% to 10% within 10,000 env steps.
- the warm-up is `warmup_env_steps` env steps of prior noise, as `dsrl online`'s (1,000), clipped to the
  bound as the authors do, no gradient steps before it ends (as `dsrl online`).

Resumable through the artifact store (stage `sb3-recipe`): periodic states hold the SB3 policy, its three
optimizers, the entropy coefficient, the replay buffer, the RNG states and the curve, as plain tensors loaded
with `weights_only=True` (SB3's own `save`/`load_replay_buffer` unpickle, which DESIGN.md section 9 rules
out). Each env records its current episode's reset seed and executed actions, and a resumed run replays
them, so a run killed and resumed ends bit-identical to an uninterrupted one (tests/test_sb3_recipe.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from dsrl_cli.config import cosmetic, hashed_config, require_positive
from dsrl_cli.envs.macro import MacroVecEnv
from dsrl_cli.envs.tasks import TaskSpec
from dsrl_cli.errors import BadInput
from dsrl_cli.models.latent_policy import with_prior_tail
from dsrl_cli.stages.common import KeyParts, StageResult, cached_result, load_sampler, task_spec_of
from dsrl_cli.stages.evaluate import EvalStats, NoiseFn, NoiseMode, evaluate_noise_policy
from dsrl_cli.stages.online import first_reaching
from dsrl_cli.store.checkpoint import load_torch, save_torch
from dsrl_cli.store.store import Artifact, ArtifactStore
from dsrl_cli.utils.console import JsonlLogger, console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.seeding import (
    MAX_EPISODES,
    capture_rng_states,
    check_episode_counts,
    episode_seed,
    restore_rng_states,
    seed_everything,
)

STAGE = "sb3-recipe"
SCHEMA = 1
MAIN_FILE = "recipe.pt"
FORMAT = "dsrl-sb3-recipe-v1"
NOT_INSTALLED = "stable-baselines3 is not installed: pip install 'dsrl[bench]' (or `make bench-rl`)"
ACTIVATIONS = ("tanh", "relu")


@dataclass(frozen=True)
class RecipeConfig:
    base: str | None = None  # pretrain artifact; default: the store's base.ckpt
    env_steps: int = 30_000
    num_envs: int = 4
    gradient_steps: int = 20  # per vector step (one macro step on every env)
    batch_size: int = 256
    learning_rate: float = 3e-4
    tau: float = 0.005
    gamma: float = 0.99  # per macro step (see the module docstring)
    init_alpha: float = 1.0  # SB3's `ent_coef="auto"` starts at 1.0
    target_entropy_scale: float = 0.0  # target entropy = scale * steered dim (the recipe: 0)
    noise_scale: float = 1.5
    hidden: int = 256
    depth: int = 3
    activation: Literal["tanh", "relu"] = "tanh"
    layer_norm: bool = True
    warmup_env_steps: int = 1_000
    buffer_size: int = 1_000_000
    seed: int = 0
    device: str = cosmetic("cpu")
    eval_every: int = 5_000  # env steps between periodic evaluations, as `dsrl online` (0: only at the end)
    eval_episodes: int = 50
    eval_noise: NoiseMode = "sampled"
    final_eval_episodes: int = 100  # `dsrl eval`'s episodes (their own seed space), after training
    final_eval_envs: int = 50  # as EvalConfig.num_envs: the batch layout decides the tail-noise draws
    checkpoint_every: int = cosmetic(5_000)


# The two rows of the benchmark: the recipe as published, and with our initial alpha / target entropy.
VARIANTS: dict[str, dict[str, float]] = {
    "default": {},
    "tuned": {"init_alpha": 0.01, "target_entropy_scale": -0.5},
}


def import_sac() -> Any:
    try:
        from stable_baselines3 import SAC
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] == "stable_baselines3":
            raise BadInput(NOT_INSTALLED) from None
        raise
    return SAC


def validate(cfg: RecipeConfig) -> None:
    require_positive(env_steps=cfg.env_steps, num_envs=cfg.num_envs, gradient_steps=cfg.gradient_steps,
                     batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, init_alpha=cfg.init_alpha,
                     noise_scale=cfg.noise_scale, hidden=cfg.hidden, depth=cfg.depth, buffer_size=cfg.buffer_size,
                     eval_episodes=cfg.eval_episodes, final_eval_episodes=cfg.final_eval_episodes,
                     final_eval_envs=cfg.final_eval_envs, checkpoint_every=cfg.checkpoint_every)
    check_episode_counts(cfg.seed, eval_episodes=cfg.eval_episodes, final_eval_episodes=cfg.final_eval_episodes)
    if cfg.warmup_env_steps < 0 or cfg.eval_every < 0:
        raise BadInput("warmup_env_steps and eval_every must be >= 0")
    if not 0.0 < cfg.tau <= 1.0 or not 0.0 < cfg.gamma <= 1.0:
        raise BadInput(f"tau and gamma must be in (0, 1], got {cfg.tau} and {cfg.gamma}")
    if cfg.activation not in ACTIVATIONS:
        raise BadInput(f"activation must be one of {', '.join(ACTIVATIONS)}, got {cfg.activation!r}")


def key_parts(cfg: RecipeConfig, store: ArtifactStore) -> KeyParts:
    validate(cfg)
    base = store.resolve_default(cfg.base, "pretrain", "run `dsrl pretrain` first or pass base=PATH")
    return KeyParts(hashed_config(cfg) | {"base": None}, {"base": base.key}, {"base": base})


class NoiseActionEnv(gymnasium.Env):
    """One env of the recipe: observation `obs_cond`, action the steered head noise `w[:act_horizon]` (flat).

    A step assembles `w` (the action, then an N(0, I) tail from this env's own generator), decodes it with the
    base policy, executes the decoded head and returns the chunk's rewards summed undiscounted. Episode `n`
    of env `index` starts from `episode_seed("train", seed, n * stride + index)`, so a recorded episode (its
    seed and executed chunks) can be replayed exactly, which is how a resumed run gets its envs back.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, task: TaskSpec, sampler: Any, noise_scale: float, seed: int, index: int = 0,
                 stride: int = 1) -> None:
        meta = sampler.meta
        self.sampler = sampler
        self.noise_scale = float(noise_scale)
        self._head_shape = (meta.act_horizon, meta.act_dim)
        self._pred_horizon = meta.pred_horizon
        self.observation_space = spaces.Box(-np.inf, np.inf, (meta.obs_cond_dim,), np.float32)
        self.action_space = spaces.Box(-self.noise_scale, self.noise_scale, (meta.act_horizon * meta.act_dim,),
                                       np.float32)
        self._venv = MacroVecEnv(task, 1, seed=0, gamma=1.0)  # gamma 1: the chunk reward is the plain sum
        self._seed, self._index, self._stride = seed, index, stride
        self._tail_gen = torch.Generator(device=sampler.device)
        self._tail_gen.manual_seed(seed * 4096 + index)
        self.episodes = 0  # episodes started
        self.env_steps = 0  # env steps executed
        self.episode_seed: int | None = None
        self._chunks: list[np.ndarray] = []  # raw env actions executed in the current episode
        self._hist: np.ndarray | None = None
        self._replay: tuple[int, list[np.ndarray]] | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if self._replay is not None:
            seed, chunks = self._replay
            self._replay = None
        else:
            chunks = []
            if seed is None:
                index = self.episodes * self._stride + self._index
                seed = episode_seed("train", self._seed, index % MAX_EPISODES)
            self.episodes += 1
        hist = self._venv.reset(seeds=[int(seed)])
        for chunk in chunks:  # deterministic env: the same seed and actions give the same state
            hist = self._venv.step(chunk[None]).next_obs_hist
        self.episode_seed, self._chunks, self._hist = int(seed), list(chunks), hist
        return self._obs(hist), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._hist is None:
            raise RuntimeError("NoiseActionEnv.step() before reset()")
        head = np.clip(np.asarray(action, dtype=np.float32), -self.noise_scale, self.noise_scale)
        sampler = self.sampler
        with torch.no_grad():
            w_head = torch.as_tensor(head.reshape(1, *self._head_shape), device=sampler.device)
            w = with_prior_tail(w_head, self._pred_horizon, self._tail_gen)
            a_head = sampler.decode_actions(sampler.obs_cond_from_history(self._hist), w, head_only=True)
        raw = sampler.env_actions(a_head)
        step = self._venv.step(raw)
        k = int(step.steps[0])
        self.env_steps += k
        terminated, truncated = bool(step.terminated[0]), bool(step.truncated[0])
        self._hist = step.next_obs_hist
        self._chunks = [] if terminated or truncated else [*self._chunks, raw[0].copy()]
        info: dict[str, Any] = {"env_steps": k, "success": bool(step.success[0])}
        if terminated or truncated:
            info |= {"episode_return": float(step.episode_return[0]),
                     "episode_success": bool(step.episode_success[0])}
        return self._obs(self._hist), float(step.reward[0]), terminated, truncated, info

    def _obs(self, hist: np.ndarray) -> np.ndarray:
        return self.sampler.obs_cond_from_history(hist)[0].cpu().numpy()

    def state_dict(self) -> dict[str, Any]:
        chunks = np.stack(self._chunks) if self._chunks else np.zeros((0, *self._head_shape), np.float32)
        return {"episodes": self.episodes, "env_steps": self.env_steps, "episode_seed": self.episode_seed,
                "chunks": torch.from_numpy(chunks), "tail_gen": self._tail_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes effect at the next `reset()`, which replays the recorded episode instead of starting one."""
        self.episodes, self.env_steps = int(state["episodes"]), int(state["env_steps"])
        self._tail_gen.set_state(state["tail_gen"])
        if state["episode_seed"] is not None:
            self._replay = (int(state["episode_seed"]), list(state["chunks"].numpy()))

    def close(self) -> None:
        self._venv.close()


def _with_layer_norm(net: torch.nn.Sequential, has_output_layer: bool) -> torch.nn.Sequential:
    """`net` with a LayerNorm after every hidden Linear (before its activation), the output layer left alone."""
    layers: list[torch.nn.Module] = []
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    for module in net:
        layers.append(module)
        if isinstance(module, torch.nn.Linear) and not (has_output_layer and module is linears[-1]):
            layers.append(torch.nn.LayerNorm(module.out_features))
    return torch.nn.Sequential(*layers)


def policy_class(layer_norm: bool) -> Any:
    """SB3's SAC policy, or the same with the authors' LayerNorm in the actor's and critics' hidden layers."""
    from stable_baselines3.sac.policies import SACPolicy

    if not layer_norm:
        return SACPolicy

    class LayerNormSACPolicy(SACPolicy):
        # SACPolicy._build calls these before it makes the optimizers, so they see the LayerNorm parameters.
        def make_actor(self, features_extractor: Any = None) -> Any:
            actor = super().make_actor(features_extractor)
            actor.latent_pi = _with_layer_norm(actor.latent_pi, has_output_layer=False)
            return actor.to(self.device)

        def make_critic(self, features_extractor: Any = None) -> Any:
            critic = super().make_critic(features_extractor)
            for idx, net in enumerate(critic.q_networks):
                critic.q_networks[idx] = _with_layer_norm(net, has_output_layer=True)
                critic.add_module(f"qf{idx}", critic.q_networks[idx])
            return critic.to(self.device)

    return LayerNormSACPolicy


def build_model(cfg: RecipeConfig, venv: Any, steered_dim: int, device: torch.device) -> Any:
    from stable_baselines3.common.logger import Logger

    SAC = import_sac()
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.activation]
    # Macro transitions stored: at most one per env step, plus one vector step's worth of slack.
    capacity = min(cfg.buffer_size, cfg.env_steps + cfg.warmup_env_steps + 2 * cfg.num_envs)
    model = SAC(policy_class(cfg.layer_norm), venv, learning_rate=cfg.learning_rate, buffer_size=capacity,
                learning_starts=0, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma, train_freq=1,
                gradient_steps=cfg.gradient_steps, ent_coef=f"auto_{cfg.init_alpha}",
                target_entropy=float(cfg.target_entropy_scale * steered_dim),
                policy_kwargs={"net_arch": [cfg.hidden] * cfg.depth, "activation_fn": activation},
                device=device, verbose=0)
    # An in-memory logger from the start (SB3 makes its own only inside `learn`, after the warm-up): the
    # periodic evaluations read the last losses and entropy coefficient from it; it writes nothing.
    model.set_logger(Logger(None, []))
    return model


_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def model_state(model: Any) -> dict[str, Any]:
    """Everything SB3's SAC needs to continue bit-identically, as tensors and plain numbers."""
    rb = model.replay_buffer
    n = rb.buffer_size if rb.full else rb.pos
    return {
        "policy": model.policy.state_dict(),
        "actor_opt": model.actor.optimizer.state_dict(),
        "critic_opt": model.critic.optimizer.state_dict(),
        "log_ent_coef": model.log_ent_coef.detach().cpu().clone(),
        "ent_opt": model.ent_coef_optimizer.state_dict(),
        "counters": {"num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
                     "episode_num": int(model._episode_num)},
        "buffer": {name: torch.from_numpy(getattr(rb, name)[:n].copy()) for name in _BUFFER_FIELDS},
        "buffer_pos": int(rb.pos), "buffer_full": bool(rb.full),
    }


def load_model_state(model: Any, state: dict[str, Any]) -> None:
    model.policy.load_state_dict(state["policy"])
    model.actor.optimizer.load_state_dict(state["actor_opt"])
    model.critic.optimizer.load_state_dict(state["critic_opt"])
    with torch.no_grad():
        model.log_ent_coef.copy_(state["log_ent_coef"])  # in place: the optimizer holds this tensor
    model.ent_coef_optimizer.load_state_dict(state["ent_opt"])
    model.num_timesteps = state["counters"]["num_timesteps"]
    model._n_updates = state["counters"]["n_updates"]
    model._episode_num = state["counters"]["episode_num"]
    rb = model.replay_buffer
    for name in _BUFFER_FIELDS:
        data = state["buffer"][name].numpy()
        getattr(rb, name)[: len(data)] = data
    rb.pos, rb.full = state["buffer_pos"], state["buffer_full"]


def recipe_noise_fn(actor: torch.nn.Module, noise_scale: float, head_shape: tuple[int, int], pred_horizon: int,
                    noise: NoiseMode, seed: int) -> NoiseFn:
    """The SB3 actor as a noise function for `evaluate_noise_policy`: `sampled` (SB3's stochastic action) or
    `mean` (its deterministic one), scaled to the noise bound; the tail from N(0, I) on a seeded generator,
    as `actor_noise_fn` does for our actors."""
    gen = torch.Generator(device=next(actor.parameters()).device)
    gen.manual_seed(seed)

    def fn(obs_cond: torch.Tensor) -> torch.Tensor:
        action = actor(obs_cond, deterministic=noise == "mean")  # tanh-squashed, in [-1, 1]
        return with_prior_tail(noise_scale * action.reshape(-1, *head_shape), pred_horizon, gen)

    return fn


def evaluate_actor(actor: torch.nn.Module, cfg: RecipeConfig, task: TaskSpec, sampler: Any, episodes: int,
                   num_envs: int, purpose: Literal["periodic_eval", "eval"]) -> EvalStats:
    """OUR evaluation of the SB3 actor. SB3 samples from torch's global RNG, so the evaluation runs on a
    forked, freshly seeded copy of it: every evaluation of one actor is the same, and training's stream is
    left exactly where it was."""
    meta = sampler.meta
    fn = recipe_noise_fn(actor, cfg.noise_scale, (meta.act_horizon, meta.act_dim), meta.pred_horizon,
                         cfg.eval_noise, cfg.seed)
    device = next(actor.parameters()).device
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]), torch.no_grad():
        torch.manual_seed(cfg.seed)
        return evaluate_noise_policy(task, sampler, fn, episodes, cfg.seed, num_envs, purpose=purpose)


def run_recipe(cfg: RecipeConfig, store: ArtifactStore, force: bool = False,
               on_iteration: Callable[[int], None] | None = None) -> StageResult:
    """Train (or resume, or reuse) one recipe run; the summary holds the curve and the final evaluation."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    parts = key_parts(cfg, store)
    base = parts.upstream["base"]
    import_sac()  # a missing extra fails before a run folder is made
    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    task = task_spec_of(base)
    device = resolve_device(cfg.device)
    sampler = load_sampler(base, device)
    meta = sampler.meta
    seed_everything(cfg.seed)
    envs = [NoiseActionEnv(task, sampler, cfg.noise_scale, cfg.seed, i, cfg.num_envs) for i in range(cfg.num_envs)]
    venv = DummyVecEnv([lambda env=env: env for env in envs])
    model = build_model(cfg, venv, meta.act_horizon * meta.act_dim, device)
    rollout_gen = torch.Generator(device=device)
    rollout_gen.manual_seed(cfg.seed + 1)
    counters: dict[str, Any] = {"vector_steps": 0, "resumes": 0, "seconds": 0.0}
    curve: list[dict[str, Any]] = []

    state, _ = run.load_state()
    if state is not None:
        load_model_state(model, state["model"])
        for env, env_state in zip(envs, state["envs"], strict=True):
            env.load_state_dict(env_state)
        rollout_gen.set_state(state["rollout_gen"])
        counters = dict(state["counters"])
        counters["resumes"] += 1
        curve = list(state["curve"])
    model._last_obs = venv.reset()  # fresh episodes, or the recorded ones replayed
    if state is not None:
        restore_rng_states(state["rng"])
        console.print(f"resuming {STAGE} {run.key} at env step {_env_steps(envs)}")
    logger = JsonlLogger(run.dir / "log.jsonl")
    logger.truncate_after("env_steps", _env_steps(envs))

    def evaluate(purpose: Literal["periodic_eval", "eval"], episodes: int, num_envs: int) -> EvalStats:
        return evaluate_actor(model.policy.actor, cfg, task, sampler, episodes, num_envs, purpose)

    def periodic_eval() -> dict[str, Any]:
        stats = evaluate("periodic_eval", cfg.eval_episodes, min(cfg.eval_episodes, 50))
        point = {"env_steps": _env_steps(envs), "episodes": stats.episodes, "success": stats.success_mean,
                 "success_low": stats.success_low, "success_high": stats.success_high,
                 "return": stats.return_mean, "return_ci95": stats.return_ci95}
        curve.append(point)
        values = model.logger.name_to_value
        logger.log({"event": "eval", **point, "updates": int(model._n_updates),
                    **{k.split("/")[-1]: float(v) for k, v in values.items() if k.startswith("train/")}})
        return point

    steps = _env_steps(envs)
    next_eval = (steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every > 0 else None
    next_ckpt = (steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every
    t_start = time.perf_counter()
    seconds_before = float(counters["seconds"])
    try:
        while steps < cfg.env_steps:
            if steps < cfg.warmup_env_steps:
                # The base policy's own noise, clipped to the bound and stored as SB3 stores actions ([-1, 1]).
                w = sampler.sample_prior_noise(cfg.num_envs, generator=rollout_gen)[:, : meta.act_horizon]
                action = w.reshape(cfg.num_envs, -1).clamp(-cfg.noise_scale, cfg.noise_scale).cpu().numpy()
                new_obs, rewards, dones, infos = venv.step(action)
                model._store_transition(model.replay_buffer, action / cfg.noise_scale, new_obs, rewards, dones,
                                        infos)
            else:
                # One vector step and `gradient_steps` updates: SB3's own loop, one iteration per call.
                model.learn(total_timesteps=cfg.num_envs, reset_num_timesteps=False, log_interval=None)
            counters["vector_steps"] += 1
            steps = _env_steps(envs)
            if on_iteration is not None:
                on_iteration(steps)
            if next_eval is not None and steps >= next_eval:
                next_eval += cfg.eval_every
                point = periodic_eval()
                console.print(f"{STAGE} eval at {point['env_steps']} env steps: success {point['success']}")
            if steps >= next_ckpt and steps < cfg.env_steps:
                next_ckpt += cfg.checkpoint_every
                counters["seconds"] = seconds_before + time.perf_counter() - t_start
                run.save_state({"model": model_state(model), "envs": [env.state_dict() for env in envs],
                                "rollout_gen": rollout_gen.get_state(), "rng": capture_rng_states(),
                                "counters": counters, "curve": curve}, steps)
        final = curve[-1] if curve and curve[-1]["env_steps"] == steps else periodic_eval()
        test = evaluate("eval", cfg.final_eval_episodes, cfg.final_eval_envs)
    finally:
        venv.close()

    save_torch(run.dir / MAIN_FILE, {
        "format": FORMAT, "policy_state": model.policy.state_dict(), "hidden": cfg.hidden, "depth": cfg.depth,
        "activation": cfg.activation, "layer_norm": cfg.layer_norm, "noise_scale": cfg.noise_scale,
        "obs_cond_dim": meta.obs_cond_dim, "act_horizon": meta.act_horizon, "act_dim": meta.act_dim, "base": base.key})
    summary = {
        "env_steps": steps, "updates": int(model._n_updates), "episodes": sum(env.episodes for env in envs),
        "final_success": final["success"], "final_return": final["return"],
        "env_steps_to_80": first_reaching(curve, 0.8), "env_steps_to_90": first_reaching(curve, 0.9),
        "curve": curve, "final_eval": {"noise": cfg.eval_noise} | test.as_dict(),
        "seconds": round(seconds_before + time.perf_counter() - t_start, 2),
    }
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)


def _env_steps(envs: list[NoiseActionEnv]) -> int:
    return sum(env.env_steps for env in envs)


def load_recipe_actor(artifact: Artifact, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The trained SB3 actor of a recipe artifact, rebuilt from plain weights (no unpickling)."""
    blob = load_torch(artifact.main_path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise BadInput(f"{artifact.main_path} is not an SB3 recipe checkpoint")
    bound = blob["noise_scale"]
    dim = blob["act_horizon"] * blob["act_dim"]
    policy = policy_class(blob["layer_norm"])(spaces.Box(-np.inf, np.inf, (blob["obs_cond_dim"],), np.float32),
                       spaces.Box(-bound, bound, (dim,), np.float32), lambda _: 0.0,
                       net_arch=[blob["hidden"]] * blob["depth"],
                       activation_fn={"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[blob["activation"]])
    policy.load_state_dict(blob["policy_state"])
    return policy.actor.to(device).eval()
