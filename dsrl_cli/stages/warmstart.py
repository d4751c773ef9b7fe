"""`dsrl warmstart`: Stage 1, an offline warm start of the latent actor `pi(w|s)` from a critic.

The scorer of a noise `w` at a dataset observation `s` is, with `--use-na` (default), the distilled
`Q^W(s, w)` of `qw.ckpt` (minimum over its heads); with `--no-use-na` it is `Q^A(s, decode(s, w)_head)`
of `qa.ckpt` through the frozen base policy (spec section 6 step 2). Neither the scorer nor the base
policy ever receives a gradient: candidates are scored under `no_grad` and the weights are detached.

AW-MLE (`--method aw-mle`, default). Per observation, `M = --m-candidates` noises: a fraction
`prior_candidate_fraction` from the prior N(0, I) (their steered part clamped to
`+-candidate_clip * noise_scale`, inside the actor's open support, so `log pi` stays finite and moderate)
and the rest from the current actor. With scores `Q_i`:

    b(s)    = tau_baseline * log(mean_i exp(Q_i / tau_baseline))     (soft maximum of the scores)
    omega_i = min(exp(beta_latent * (Q_i - b(s))), max_weight)       (detached)
    L       = -mean_{s,i} omega_i * log pi(w_i | s)

DESIGN.md writes the weights as `softmax(beta (Q - baseline))`. A softmax normalized per observation is
invariant to any per-observation baseline (it cancels between numerator and denominator), so with that
form `--tau-baseline` would have no effect at all. We therefore use the un-normalized advantage-weighted
form above, where both matter: `beta_latent` sets how sharply better noises are preferred and
`tau_baseline` where the advantage is zero (tau -> 0: the best candidate, weights <= 1; large tau: the
mean score, weights above and below 1), with `max_weight` bounding single outliers. `--set
normalize_weights=true` gives the plain per-observation softmax `omega = softmax(beta * Q)` with
`L = -mean_s sum_i omega_i log pi(w_i|s)` (baseline and max_weight unused).

Offline SAC (`--method offline-sac`). SAC (`DSRLSACAgent`'s losses) on offline latent transitions
`(obs_cond, w_alias, R, discount, done, next_obs_cond)`: the alias artifact's rows are the dataset chunks
in order, so R / discount / done / next_obs_cond come from rebuilding the chunks and matching rows by index
(the alias `obs_cond` must equal the chunks'). The critic starts from `qw.ckpt` when NA is used. Aliases
of N(0, I)-like noise often lie outside the actor's support `(-noise_scale, noise_scale)`: their steered
part is clamped into it for the buffer, and the actor loss gets a behaviour-cloning term
`bc_weight * -log pi(w_alias | s)` that keeps the actor near the data noise, where the critic was trained,
instead of chasing the critic's extrapolation on out-of-distribution `w`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from dsrl_cli.agents.dsrl_sac_agent import DSRLSACAgent, SACConfig
from dsrl_cli.buffers.macro_replay_buffer import MacroBatch
from dsrl_cli.config import check_values, cosmetic, hashed_config, require_positive
from dsrl_cli.data.chunks import ChunkData
from dsrl_cli.errors import BadInput
from dsrl_cli.models.latent_policy import LatentPolicy
from dsrl_cli.models.latent_q_network import LatentQNetwork
from dsrl_cli.stages.common import (
    KeyParts,
    StageResult,
    actor_checkpoint,
    cached_result,
    check_same_task,
    load_action_critic,
    load_critic_from,
    load_sampler,
    seeded_generator,
)
from dsrl_cli.stages.train_qa import dataset_chunks, resolve_dataset_and_base
from dsrl_cli.store.checkpoint import load_torch, save_torch
from dsrl_cli.store.store import Artifact, ArtifactStore
from dsrl_cli.utils.console import JsonlLogger, console
from dsrl_cli.utils.device import resolve_device
from dsrl_cli.utils.seeding import capture_rng_states, restore_rng_states, seed_everything

STAGE = "warmstart"
SCHEMA = 4  # 2: offline SAC hashes candidate_clip, both methods log_every (1 let them change results
# unhashed); 3: the summary's mean-noise score draws the unsteered tail from N(0, I) (2: zeros); 4: AW-MLE
# statistics that do not apply are left out of log.jsonl and the summary (3: NaN)
MAIN_FILE = "stage1.ckpt"
ALIAS_FORMAT = "dsrl-alias-v1"
METHODS = ("aw-mle", "offline-sac")
FIXED_BATCH = 1024  # dataset observations the summary and `diagnose stage1` score on
FIXED_SEED = 20_240_601  # picks that batch and its noises, the same for every run

# Fields that only one method reads: left out of the other method's artifact key. (candidate_clip is read by
# both: AW-MLE clamps its prior candidates with it, offline SAC the aliases it trains on.)
_AW_ONLY = ("m_candidates", "prior_candidate_fraction", "beta_latent", "tau_baseline", "max_weight",
            "normalize_weights", "actor_std")
_SAC_ONLY = ("bc_weight", "critic_lr", "alpha_lr", "tau", "init_alpha", "target_entropy", "critic_hidden",
             "critic_depth", "layer_norm")


@dataclass(frozen=True)
class WarmstartConfig:
    base: str | None = None
    dataset: str | None = None  # default: the store's dataset.h5
    qa: str | None = None
    qw: str | None = None
    alias: str | None = None
    method: Literal["aw-mle", "offline-sac"] = "aw-mle"
    use_na: bool = True  # scorer Q^W(s, w) from qw.ckpt; false: Q^A(s, decode(s, w)_head) from qa.ckpt
    steps: int = 1000
    batch_size: int = 128  # observations per step; AW-MLE scores batch_size * m_candidates noises (the cost)
    # ---- AW-MLE ----
    m_candidates: int = 32
    prior_candidate_fraction: float = 0.5  # share of the M candidates drawn from N(0, I); the rest from pi
    candidate_clip: float = 0.98  # prior candidates' steered part clamped to +-candidate_clip * noise_scale
    # 5 rather than DESIGN's 0.3-1.0: scores here are success values in [0, 1], so at beta 1 every weight is
    # within ~25% of the others (ESS 0.96) and the actor stays a blurred prior whose mean lands off Q^W's
    # optimum; SAC then drags it there and Stage 2 starts with a collapse (docs/BENCHMARKS.md, Stage 1).
    beta_latent: float = 5.0
    # Baseline b(s) = tau * log mean exp(Q / tau): a soft maximum of the candidates' scores. It matters because
    # the weights are un-normalized, omega = min(exp(beta (Q - b)), max_weight): a per-observation softmax
    # would cancel any baseline (see the module docstring). normalize_weights=true gives that plain softmax.
    tau_baseline: float = 1.0
    max_weight: float = 20.0
    normalize_weights: bool = False
    # AW-MLE fits the std to the spread of the weighted candidates, about the prior's width, so its samples
    # are little better than the prior's. The saved actor gets this constant pre-tanh std instead (None: keep
    # the fit), so Stage 2's first rollouts follow Stage 1's mean. Offline SAC learns its own std.
    actor_std: float | None = 0.15
    actor_lr: float = 3e-4
    # ---- offline SAC ----
    bc_weight: float = 0.1  # behaviour cloning on the (clamped) aliases: keeps the actor near data noise
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    tau: float = 0.005
    init_alpha: float = 0.01
    target_entropy: float | None = None
    critic_hidden: int = 256  # fresh critic (no qw); like OnlineConfig's
    critic_depth: int = 3
    layer_norm: bool = True
    # ---- the actor: the same defaults as OnlineConfig so Stage 2 continues from it ----
    noise_scale: float = 1.5
    steer_mode: Literal["full", "act_horizon"] = "act_horizon"
    actor_hidden: int = 256
    actor_depth: int = 2
    seed: int = 0
    device: str = cosmetic("auto")
    checkpoint_every: int = cosmetic(500)
    log_every: int = 100


def validate(cfg: WarmstartConfig) -> None:
    check_values(cfg)
    if cfg.method not in METHODS:
        raise BadInput(f"--method must be one of {', '.join(METHODS)}, got {cfg.method!r}")
    require_positive(steps=cfg.steps, batch_size=cfg.batch_size, m_candidates=cfg.m_candidates,
                     tau_baseline=cfg.tau_baseline, max_weight=cfg.max_weight, actor_lr=cfg.actor_lr,
                     critic_lr=cfg.critic_lr, alpha_lr=cfg.alpha_lr, init_alpha=cfg.init_alpha,
                     noise_scale=cfg.noise_scale, actor_hidden=cfg.actor_hidden, actor_depth=cfg.actor_depth,
                     critic_hidden=cfg.critic_hidden, critic_depth=cfg.critic_depth,
                     checkpoint_every=cfg.checkpoint_every, log_every=cfg.log_every)
    if cfg.actor_std is not None and not 0.01 <= cfg.actor_std <= 5.0:
        raise BadInput(f"actor_std must be in [0.01, 5] or none, got {cfg.actor_std}")
    if cfg.beta_latent < 0:
        raise BadInput(f"--beta-latent must be >= 0, got {cfg.beta_latent}")
    if not 0.0 <= cfg.prior_candidate_fraction <= 1.0:
        raise BadInput(f"prior_candidate_fraction must be in [0, 1], got {cfg.prior_candidate_fraction}")
    if not 0.0 < cfg.candidate_clip < 1.0:
        raise BadInput(f"candidate_clip must be in (0, 1), got {cfg.candidate_clip}")
    if cfg.bc_weight < 0:
        raise BadInput(f"bc_weight must be >= 0, got {cfg.bc_weight}")
    if not 0.0 < cfg.tau <= 1.0:
        raise BadInput(f"tau must be in (0, 1], got {cfg.tau}")


# ---------------------------------------------------------------------------------------------------------
# scorers: (obs_cond [B, D], w [B, H, A]) -> score [B], never differentiated


class LatentScorer:
    """`min_i Q^W_i(s, w)` of a distilled latent critic."""

    name = "Q^W"

    def __init__(self, q: LatentQNetwork) -> None:
        self.q = q

    @torch.no_grad()
    def __call__(self, obs_cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.q(obs_cond, w.reshape(w.shape[0], -1)).min(dim=0).values


class ActionScorer:
    """`min_i Q^A_i(s, decode(s, w)_head)` through the frozen base policy."""

    name = "Q^A"

    def __init__(self, qa: torch.nn.Module, sampler: Any, chunk: int = 16_384) -> None:
        self.qa = qa
        self.sampler = sampler
        self.chunk = chunk

    @torch.no_grad()
    def __call__(self, obs_cond: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, w.shape[0], self.chunk):
            obs, wi = obs_cond[i:i + self.chunk], w[i:i + self.chunk].detach()
            a_head = self.sampler.decode_actions(obs, wi, head_only=True)
            out.append(self.qa(obs, a_head).min(dim=0).values)
        return torch.cat(out)


Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# AW-MLE pieces (public so they can be tested on hand-made inputs)


def advantage_weights(q: torch.Tensor, beta: float, tau_baseline: float, max_weight: float,
                      normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores `q [B, M]` -> (weights `[B, M]`, baseline `[B]`), no gradient.

    Default: `b = tau * log(mean_i exp(q_i / tau))`, `omega = min(exp(beta (q - b)), max_weight)`.
    `normalize=True`: `omega = softmax(beta * q)` per row (the baseline is returned but cancels).
    """
    q = q.detach()
    m = q.shape[1]
    baseline = tau_baseline * (torch.logsumexp(q / tau_baseline, dim=1) - math.log(m))
    if normalize:
        return torch.softmax(beta * q, dim=1), baseline
    weights = torch.exp(beta * (q - baseline[:, None])).clamp(max=max_weight)
    return weights, baseline


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    """Per row `(sum w)^2 / sum w^2` as a fraction of the row length: 1 = uniform, 1/M = one candidate."""
    return weights.sum(1).pow(2) / weights.pow(2).sum(1).clamp_min(1e-30) / weights.shape[1]


def clamp_steered(w: torch.Tensor, steered_horizon: int, bound: float) -> torch.Tensor:
    """Clamp the steered part `w[..., :steered_horizon, :]` into `[-bound, bound]`; the tail is kept."""
    head = w[..., :steered_horizon, :].clamp(-bound, bound)
    return torch.cat([head, w[..., steered_horizon:, :]], dim=-2)


def sample_candidates(policy: LatentPolicy, obs_cond: torch.Tensor, m_prior: int, m_actor: int,
                      clip: float, generator: torch.Generator) -> torch.Tensor:
    """`[B, m_prior + m_actor, H, A]`: clamped prior noises first, then the actor's samples."""
    b = obs_cond.shape[0]
    h, a = policy.w_shape
    parts = []
    if m_prior > 0:
        prior = torch.randn((b, m_prior, h, a), generator=generator, device=generator.device)
        parts.append(clamp_steered(prior.to(obs_cond.device), policy.steered_horizon, clip * policy.noise_scale))
    if m_actor > 0:
        w, _ = policy.sample(obs_cond.repeat_interleave(m_actor, dim=0), generator=generator)
        parts.append(w.reshape(b, m_actor, h, a))
    return torch.cat(parts, dim=1)


def candidate_log_prob(policy: LatentPolicy, obs_cond: torch.Tensor, w: torch.Tensor,
                       eps: float = 1e-6) -> torch.Tensor:
    """`log pi(w_i | s)` for candidates `w [B, M, H, A]` -> `[B, M]`, running the actor net once per obs.

    Same density as `LatentPolicy.log_prob` (steered part only, clamped just inside the open support).
    """
    b, m = w.shape[:2]
    mu, log_std = policy._dist_params(obs_cond)  # [B, S]
    steered = w[:, :, : policy.steered_horizon].reshape(b, m, policy.steered_dim)
    y = (steered / policy.noise_scale).clamp(-1.0 + eps, 1.0 - eps)
    return policy._log_prob_u(torch.atanh(y), mu[:, None], log_std[:, None])


def split_candidates(m: int, prior_fraction: float) -> tuple[int, int]:
    m_prior = min(m, max(0, int(math.floor(m * prior_fraction + 0.5))))
    return m_prior, m - m_prior


def aw_mle_loss(policy: LatentPolicy, scorer: Scorer, obs_cond: torch.Tensor, cfg: WarmstartConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    m_prior, m_actor = split_candidates(cfg.m_candidates, cfg.prior_candidate_fraction)
    w = sample_candidates(policy, obs_cond, m_prior, m_actor, cfg.candidate_clip, generator)
    b, m = w.shape[:2]
    with torch.no_grad():
        q = scorer(obs_cond.repeat_interleave(m, dim=0), w.reshape(b * m, *w.shape[2:])).reshape(b, m)
    weights, baseline = advantage_weights(q, cfg.beta_latent, cfg.tau_baseline, cfg.max_weight,
                                          cfg.normalize_weights)
    logp = candidate_log_prob(policy, obs_cond, w)
    # Softmax weights sum to 1 per observation (sum over candidates); AW weights average over them.
    loss = -(weights * logp).sum(1).mean() if cfg.normalize_weights else -(weights * logp).mean()
    # A statistic that does not apply (no clipping with softmax weights, no candidates of a kind) is left out
    # rather than NaN: a published summary holds no NaN (the store refuses it as a diverged run).
    stats = {
        "loss": loss.detach(),
        "weight_mean": weights.mean(),
        "weight_max": weights.max(),
        "ess": effective_sample_size(weights).mean(),
        "baseline_mean": baseline.mean(),
        "logp_mean": logp.detach().mean(),
    }
    if not cfg.normalize_weights:
        stats["weight_clipped"] = (weights >= cfg.max_weight).float().mean()
    if m_prior:
        stats["q_prior_cand"] = q[:, :m_prior].mean()
    if m_actor:
        stats["q_actor_cand"] = q[:, m_prior:].mean()
    return loss, stats


@torch.no_grad()
def policy_scores(scorer: Scorer, policy: LatentPolicy, obs_cond: torch.Tensor, seed: int = FIXED_SEED,
                  chunk: int = 4096) -> dict[str, float]:
    """Mean score on `obs_cond` of prior noise, the actor's samples and its mean noise (fixed seed)."""
    gen = seeded_generator(seed, obs_cond.device)
    h, a = policy.w_shape
    sums = {"prior": 0.0, "actor_sample": 0.0, "actor_mean": 0.0}
    wins = 0.0
    for i in range(0, obs_cond.shape[0], chunk):
        obs = obs_cond[i:i + chunk]
        q_prior = scorer(obs, torch.randn((obs.shape[0], h, a), generator=gen, device=gen.device).to(obs.device))
        q_sample = scorer(obs, policy.sample(obs, generator=gen)[0])
        q_mean = scorer(obs, policy.mean_action(obs, generator=gen))
        sums["prior"] += float(q_prior.sum())
        sums["actor_sample"] += float(q_sample.sum())
        sums["actor_mean"] += float(q_mean.sum())
        wins += float((q_sample > q_prior).float().sum())
    n = max(obs_cond.shape[0], 1)
    out = {k: v / n for k, v in sums.items()}
    out["gain_sample"] = out["actor_sample"] - out["prior"]
    out["gain_mean"] = out["actor_mean"] - out["prior"]
    out["sample_beats_prior"] = wins / n  # share of observations where the actor's sample outscores the prior's
    return out


def fixed_obs_batch(obs_cond: torch.Tensor, size: int = FIXED_BATCH) -> torch.Tensor:
    """The same `size` dataset observations for every run (seeded, without replacement)."""
    gen = torch.Generator().manual_seed(FIXED_SEED)
    idx = torch.randperm(obs_cond.shape[0], generator=gen)[:size]
    return obs_cond[idx.to(obs_cond.device)]


# ---------------------------------------------------------------------------------------------------------
# upstream artifacts


def _require(store: ArtifactStore, ref: str | None, stage: str, hint: str) -> Artifact:
    if ref is not None and ref.lower() == "none":
        raise BadInput(f"this warm start needs a {stage} artifact; {hint}")
    return store.resolve_default(ref, stage, hint)


def check_upstream(base: Artifact, upstream: Artifact) -> None:
    check_same_task(base, upstream)
    made_with = upstream.input_key("base")
    if made_with not in (None, base.key):
        raise BadInput(f"{upstream.stage} artifact {upstream.key} was made with another base policy ({made_with}, "
                       f"not {base.key}); rerun `dsrl {upstream.stage}` on this base policy")


def load_qw(artifact: Artifact, obs_cond_dim: int, w_dim: int, device: torch.device) -> LatentQNetwork:
    q = load_critic_from(artifact.main_path, device)
    if q is None:
        raise BadInput(f"{artifact.stage} artifact {artifact.key} holds no latent critic Q^W")
    if (q.config["obs_cond_dim"], q.config["w_dim"]) != (obs_cond_dim, w_dim):
        raise BadInput(f"Q^W in {artifact.key} expects (obs_cond_dim, w_dim) = "
                       f"{(q.config['obs_cond_dim'], q.config['w_dim'])}, "
                       f"the base policy gives {(obs_cond_dim, w_dim)}")
    return q.eval()


def load_qa(artifact: Artifact, meta: Any, device: torch.device) -> torch.nn.Module:
    qa = load_action_critic(artifact.main_path, device)
    want = {"obs_cond_dim": meta.obs_cond_dim, "act_horizon": meta.act_horizon, "act_dim": meta.act_dim}
    bad = {k: (qa.config.get(k), v) for k, v in want.items() if qa.config.get(k) != v}
    if bad:
        raise BadInput(f"Q^A in {artifact.key} disagrees with the base policy on (critic, base) sizes: {bad}")
    return qa.eval()


def load_alias_rows(artifact: Artifact, chunks: ChunkData, meta: Any) -> tuple[np.ndarray, np.ndarray]:
    """(chunk row index [N], w_alias [N, H, A]) of an alias artifact, checked against the rebuilt chunks."""
    blob = load_torch(artifact.main_path)
    if not isinstance(blob, dict) or blob.get("format") != ALIAS_FORMAT:
        raise BadInput(f"{artifact.main_path} is not a dsrl alias file (format {ALIAS_FORMAT})")
    try:
        w = blob["w"].detach().cpu().float().numpy()
        obs = blob["obs_cond"].detach().cpu().float().numpy()
    except (KeyError, AttributeError) as exc:
        raise BadInput(f"alias file {artifact.main_path} lacks tensor {exc}") from None
    n = w.shape[0]
    if w.shape[1:] != (meta.pred_horizon, meta.act_dim) or obs.shape != (n, meta.obs_cond_dim):
        raise BadInput(f"alias artifact {artifact.key} has w {w.shape} and obs_cond {obs.shape}; the base policy "
                       f"needs [N, {meta.pred_horizon}, {meta.act_dim}] and [N, {meta.obs_cond_dim}]")
    index = blob.get("index")  # optional explicit chunk rows; default: the first N chunks (`--max-pairs N`)
    if index is not None:
        index = np.asarray(index.cpu().numpy() if isinstance(index, torch.Tensor) else index, dtype=np.int64)
    elif n <= len(chunks):
        index = np.arange(n)
    else:
        raise BadInput(f"alias artifact {artifact.key} has {n} rows but the dataset has only {len(chunks)} chunks; "
                       "rerun `dsrl alias` on this dataset")
    if n == 0:
        raise BadInput(f"alias artifact {artifact.key} holds no pairs")
    if index.shape != (n,) or index.min() < 0 or index.max() >= len(chunks):
        raise BadInput(f"alias artifact {artifact.key} has a bad row index")
    if not np.allclose(obs, chunks.obs_cond[index], atol=1e-5, rtol=1e-5):
        raise BadInput(f"alias artifact {artifact.key} does not match this dataset's chunks (obs_cond differs); "
                       "rerun `dsrl alias` on this dataset")
    return index, w


# ---------------------------------------------------------------------------------------------------------
# the stage


def _key_config(cfg: WarmstartConfig) -> dict[str, Any]:
    drop = _SAC_ONLY if cfg.method == "aw-mle" else _AW_ONLY
    hashed = {k: v for k, v in hashed_config(cfg).items() if k not in drop}
    return hashed | {"base": None, "dataset": None, "qa": None, "qw": None, "alias": None}


def key_parts(cfg: WarmstartConfig, store: ArtifactStore) -> KeyParts:
    """Resolves and cross-checks the upstream artifacts this method and scorer read (and only those)."""
    validate(cfg)
    dataset, base = resolve_dataset_and_base(store, cfg.dataset, cfg.base)
    qw_art = qa_art = alias_art = None
    if cfg.use_na:
        qw_art = _require(store, cfg.qw, "distill-qw", "run `dsrl distill-qw` first or pass --no-use-na")
    else:
        qa_art = _require(store, cfg.qa, "train-qa", "run `dsrl train-qa` first or pass --use-na")
        if cfg.qw is not None:  # an explicit Q^W still initialises the offline-SAC critic / rides along
            qw_art = _require(store, cfg.qw, "distill-qw", "")
    if cfg.method == "offline-sac":
        alias_art = _require(store, cfg.alias, "alias", "run `dsrl alias` first or use --method aw-mle")
    for upstream in (qw_art, qa_art, alias_art):
        if upstream is not None:
            check_upstream(base, upstream)
    if alias_art is not None and alias_art.input_key("dataset") not in (None, dataset.key):
        raise BadInput(f"alias artifact {alias_art.key} was made from dataset {alias_art.input_key('dataset')}, "
                       f"not {dataset.key}; pass --dataset with that one or rerun `dsrl alias`")
    upstream = {"base": base, "dataset": dataset, "qa": qa_art, "qw": qw_art, "alias": alias_art}
    inputs = {name: (a.key if a is not None else None) for name, a in upstream.items()}
    return KeyParts(_key_config(cfg), inputs, upstream)


def artifact_key(cfg: WarmstartConfig, store: ArtifactStore) -> str:
    return key_parts(cfg, store).key(STAGE, SCHEMA)


def run_warmstart(
    cfg: WarmstartConfig,
    store: ArtifactStore,
    force: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> StageResult:
    parts = key_parts(cfg, store)
    base, dataset, qa_art, qw_art, alias_art = (parts.upstream[k] for k in ("base", "dataset", "qa", "qw", "alias"))
    device = resolve_device(cfg.device)
    sampler = load_sampler(base, device)
    meta = sampler.meta
    w_dim = meta.pred_horizon * meta.act_dim
    qw = load_qw(qw_art, meta.obs_cond_dim, w_dim, device) if qw_art is not None else None
    qa = load_qa(qa_art, meta, device) if qa_art is not None else None
    scorer: Scorer = LatentScorer(qw) if cfg.use_na else ActionScorer(qa, sampler)

    chunks = dataset_chunks(dataset, sampler)  # normalized with the base policy's normalizer, shape-checked
    alias_rows = load_alias_rows(alias_art, chunks, meta) if alias_art is not None else None

    run = parts.begin(store, STAGE, SCHEMA, force)
    if run.cached:
        return cached_result(run)

    seed_everything(cfg.seed)
    policy = LatentPolicy(meta.obs_cond_dim, meta.act_dim, meta.pred_horizon, meta.act_horizon,
                          steer_mode=cfg.steer_mode, noise_scale=cfg.noise_scale, hidden=cfg.actor_hidden,
                          depth=cfg.actor_depth).to(device)
    obs_all = torch.as_tensor(chunks.obs_cond, device=device)
    gen = seeded_generator(cfg.seed + 1, device)
    logger = JsonlLogger(run.dir / "log.jsonl")
    t0 = time.perf_counter()

    if cfg.method == "aw-mle":
        trainer: _Trainer = _AwMle(cfg, policy, scorer, obs_all, gen)
    else:
        if qw is not None:
            critic = copy.deepcopy(qw).train()
            critic.hard_update()  # targets start equal to the distilled critic
        else:
            critic = LatentQNetwork(meta.obs_cond_dim, w_dim, hidden=cfg.critic_hidden, depth=cfg.critic_depth,
                                    layer_norm=cfg.layer_norm).to(device)
        assert alias_rows is not None
        trainer = _OfflineSac(cfg, policy, critic, scorer, chunks, alias_rows, gen, device)

    state, start = run.load_state()
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        gen.set_state(state["generator"])
        restore_rng_states(state["rng"])
        console.print(f"resuming warmstart {run.key} from step {start}")
    logger.truncate_after("step", start)

    last: dict[str, float] = {}
    step = start
    for step in range(start + 1, cfg.steps + 1):
        stats = trainer.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            last = {k: float(v) for k, v in stats.items()}
            logger.log({"step": step, **last, "seconds": round(time.perf_counter() - t0, 2)})
            console.print(f"warmstart {cfg.method} step {step}/{cfg.steps}  " + _status(last))
        if step % cfg.checkpoint_every == 0 and step < cfg.steps:
            run.save_state({"trainer": trainer.state_dict(), "generator": gen.get_state(),
                            "rng": capture_rng_states()}, step)
        if on_step is not None:
            on_step(step)

    if cfg.method == "aw-mle" and cfg.actor_std is not None:
        policy.set_constant_std(cfg.actor_std)
    policy.eval()
    fixed = fixed_obs_batch(obs_all)
    scores = policy_scores(scorer, policy, fixed)
    saved_critic = trainer.critic if cfg.method == "offline-sac" else qw
    save_torch(run.dir / MAIN_FILE, actor_checkpoint(policy, saved_critic, {
        "base": base.key, "method": cfg.method, "scorer": scorer.name,
        **({"log_alpha": trainer.agent.log_alpha.detach().cpu()} if cfg.method == "offline-sac" else {}),
    }))
    summary = {
        "method": cfg.method, "use_na": cfg.use_na, "scorer": scorer.name, "steps": cfg.steps,
        "q_prior_mean": scores["prior"], "q_actor_mean": scores["actor_sample"],
        "q_actor_det_mean": scores["actor_mean"], "q_gain": scores["gain_sample"],
        "sample_beats_prior": scores["sample_beats_prior"], "fixed_batch": int(fixed.shape[0]),
        "train_observations": int(obs_all.shape[0]), "last": last,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    console.print(f"{scorer.name} on {fixed.shape[0]} dataset observations: prior {scores['prior']:.4f}, "
                  f"stage 1 sampled {scores['actor_sample']:.4f}, stage 1 mean {scores['actor_mean']:.4f}")
    artifact = run.finish(MAIN_FILE, summary, base.meta)
    return StageResult.from_artifact(artifact, cached=False)


class _Trainer:
    critic: Any = None
    agent: Any = None

    def step(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class _AwMle(_Trainer):
    def __init__(self, cfg: WarmstartConfig, policy: LatentPolicy, scorer: Scorer, obs_all: torch.Tensor,
                 gen: torch.Generator) -> None:
        self.cfg, self.policy, self.scorer, self.obs_all, self.gen = cfg, policy, scorer, obs_all, gen
        self.optim = torch.optim.Adam(policy.parameters(), lr=cfg.actor_lr)

    def step(self) -> dict[str, torch.Tensor]:
        self.policy.train()
        idx = torch.randint(0, self.obs_all.shape[0], (self.cfg.batch_size,), generator=self.gen,
                            device=self.gen.device).to(self.obs_all.device)
        loss, stats = aw_mle_loss(self.policy, self.scorer, self.obs_all[idx], self.cfg, self.gen)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return stats

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optim": self.optim.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optim.load_state_dict(state["optim"])


class _OfflineSac(_Trainer):
    def __init__(self, cfg: WarmstartConfig, policy: LatentPolicy, critic: LatentQNetwork, scorer: Scorer,
                 chunks: ChunkData, alias_rows: tuple[np.ndarray, np.ndarray], gen: torch.Generator,
                 device: torch.device) -> None:
        self.cfg, self.policy, self.critic, self.scorer, self.gen = cfg, policy, critic, scorer, gen
        sac = SACConfig(batch_size=cfg.batch_size, tau=cfg.tau, actor_lr=cfg.actor_lr, critic_lr=cfg.critic_lr,
                        alpha_lr=cfg.alpha_lr, init_alpha=cfg.init_alpha, target_entropy=cfg.target_entropy)
        self.agent = DSRLSACAgent(policy, critic, sac, device)
        index, w_alias = alias_rows
        # TD needs a known successor: rows ending at a truncated episode's unknown next obs are left out.
        valid = chunks.td_valid[index]
        if not valid.any():
            raise BadInput("no aliased dataset chunk has a known successor observation; offline SAC cannot "
                           "bootstrap (use --method aw-mle)")
        index, w_alias = index[valid], w_alias[valid]
        w = clamp_steered(torch.as_tensor(w_alias, device=device), policy.steered_horizon,
                          cfg.candidate_clip * cfg.noise_scale)
        self.data = MacroBatch(*(torch.as_tensor(x, device=device) for x in (
            chunks.obs_cond[index], w, chunks.a_head[index], chunks.reward[index], chunks.discount[index],
            chunks.done[index], chunks.next_obs_cond[index])))
        self.n = len(index)
        self.clamped_share = float((w != torch.as_tensor(w_alias, device=device)).any(-1).any(-1).float().mean())

    def step(self) -> dict[str, torch.Tensor]:
        agent, policy = self.agent, self.policy
        policy.train()
        idx = torch.randint(0, self.n, (self.cfg.batch_size,), generator=self.gen,
                            device=self.gen.device).to(self.data.obs_cond.device)
        batch = MacroBatch(*(x[idx] for x in self.data))
        alpha_used = agent.alpha
        critic = agent.critic_loss(batch)
        agent.critic_optim.zero_grad(set_to_none=True)
        critic["loss"].backward()
        agent.critic_optim.step()

        actor = agent.actor_loss(batch)
        bc = -policy.log_prob(batch.obs_cond, batch.w).mean()
        agent.actor_optim.zero_grad(set_to_none=True)
        (actor["loss"] + self.cfg.bc_weight * bc).backward()
        agent.actor_optim.step()
        alpha_loss = agent.alpha_loss(actor["logp"])["loss"]
        agent.alpha_optim.zero_grad(set_to_none=True)
        alpha_loss.backward()
        agent.alpha_optim.step()
        agent.q.soft_update(self.cfg.tau)
        agent.num_updates += 1

        q, y = critic["q"], critic["y"]
        with torch.no_grad():
            obs = batch.obs_cond
            prior = torch.randn((obs.shape[0], *policy.w_shape), generator=self.gen,
                                device=self.gen.device).to(obs.device)
            q_prior = self.scorer(obs, prior).mean()
            q_actor = self.scorer(obs, policy.sample(obs, generator=self.gen)[0]).mean()
        return {"critic_loss": critic["loss"].detach(), "actor_loss": actor["loss"].detach(), "bc_nll": bc.detach(),
                "alpha": alpha_used, "q_mean": q.mean(), "td_error": (q - y).abs().mean(),
                "policy_entropy": -actor["logp"].mean(), "q_prior_cand": q_prior, "q_actor_cand": q_actor,
                "alias_clamped_share": torch.tensor(self.clamped_share)}

    def state_dict(self) -> dict[str, Any]:
        return {"agent": self.agent.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])


def _status(record: dict[str, float]) -> str:
    keys = ("loss", "critic_loss", "bc_nll", "ess", "weight_mean", "q_prior_cand", "q_actor_cand")
    return "  ".join(f"{k} {record[k]:.4g}" for k in keys if k in record and math.isfinite(record[k]))
