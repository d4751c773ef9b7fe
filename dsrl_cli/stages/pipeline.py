"""`dsrl pipeline`: every stage in order; each one is a cached, resumable artifact on its own.

collect -> pretrain -> [train-qa -> alias -> distill-qw -> warmstart] -> online -> eval

The bracketed Stage 1 (offline warm start with DSRL-NA) is skipped with `--no-stage1`; Stage 2 then
starts from scratch. Artifacts are passed between stages by path, exactly as a shell script would.

The data comes from `--dataset` (an HDF5 file to import, or an existing collect artifact), else from the
task's `dataset: {file: ...}`, else from the task's scripted demonstrator. `--base-policy module:factory`
registers the user's own policy in place of pretraining one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsrl_cli.config import check_values, cosmetic, require_positive
from dsrl_cli.envs.tasks import load_task
from dsrl_cli.errors import BadInput
from dsrl_cli.stages.alias import AliasConfig, run_alias
from dsrl_cli.stages.collect import CollectConfig, run_collect
from dsrl_cli.stages.common import StageResult, task_of
from dsrl_cli.stages.distill_qw import DistillConfig, run_distill_qw
from dsrl_cli.stages.evaluate import EvalConfig, run_eval
from dsrl_cli.stages.online import OnlineConfig, run_online
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from dsrl_cli.stages.train_qa import TrainQAConfig, run_train_qa
from dsrl_cli.stages.warmstart import WarmstartConfig, run_warmstart
from dsrl_cli.store.store import MANIFEST, ArtifactStore
from dsrl_cli.utils.console import console

# Tiny sizes for smoke tests: every stage runs, nothing is expected to learn.
QUICK: dict[str, dict[str, Any]] = {
    "collect": {"episodes": 20},
    "pretrain": {"steps": 30, "batch_size": 64, "hidden": 32, "depth": 2},
    "train-qa": {"steps": 20, "batch_size": 64, "hidden": 32, "depth": 1},
    "alias": {"m": 8, "batch_size": 256},
    "distill-qw": {"steps": 20, "batch_size": 64, "hidden": 32, "depth": 1},
    "warmstart": {"steps": 20, "batch_size": 32, "m_candidates": 4, "actor_hidden": 32},
    "online": {"env_steps": 200, "num_envs": 4, "utd": 2, "batch_size": 32, "warmup_env_steps": 40,
               "actor_hidden": 32, "critic_hidden": 32, "critic_depth": 1, "eval_every": 0, "eval_episodes": 4},
    "eval": {"episodes": 6, "num_envs": 3},
}


@dataclass(frozen=True)
class PipelineConfig:
    task: str | None = None  # default: the --dataset artifact's task, else "default"
    dataset: str | None = None  # an HDF5 file to import, or a collect artifact (path, key, dataset.h5)
    base_policy: str | None = None  # "module:factory": the user's own base policy instead of pretraining
    obs_keys: tuple[str, ...] | None = None  # imports: as `collect --obs-keys`
    ignore_env_args: bool = cosmetic(False)  # imports: as `collect --ignore-env-args`
    quick: bool = False
    stage1: bool = True
    online_env_steps: int = 15_000
    utd: int = 20
    eval_episodes: int | None = None
    seed: int = 0
    device: str = cosmetic("auto")


def run_pipeline(cfg: PipelineConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    check_values(cfg)
    require_positive(online_env_steps=cfg.online_env_steps, utd=cfg.utd, eval_episodes=cfg.eval_episodes)
    sizes = QUICK if cfg.quick else {}
    common = {"seed": cfg.seed, "device": cfg.device}

    def step(name: str, result: StageResult) -> str:
        state = "cached" if result.cached else "done"
        console.print(f"[bold]{name}[/] {state}: {result.path}")
        return str(result.path)

    def sized(stage: str, **kw: Any) -> dict[str, Any]:
        return common | kw | sizes.get(stage, {})

    dataset = step("collect", _dataset(cfg, store, force, sized("collect")))
    base = step("pretrain", run_pretrain(
        PretrainConfig(**sized("pretrain", dataset=dataset, base_policy=cfg.base_policy)), store, force))
    compare = ["prior", "prior-mean"]  # prior-mean (w_head = 0): the baseline steering must beat
    online_init: dict[str, Any] = {}
    if cfg.stage1:
        qa = step("train-qa", run_train_qa(TrainQAConfig(**sized("train-qa", dataset=dataset, base=base)),
                                           store, force))
        alias = step("alias", run_alias(AliasConfig(**sized("alias", dataset=dataset, base=base)), store, force))
        qw = step("distill-qw", run_distill_qw(
            DistillConfig(**sized("distill-qw", qa=qa, alias=alias, base=base, dataset=dataset)), store, force))
        stage1 = step("warmstart", run_warmstart(
            WarmstartConfig(**sized("warmstart", base=base, dataset=dataset, qa=qa, qw=qw)), store, force))
        compare.append("stage1")  # friendly names: each stage just pointed them at its artifact
        online_init = {"init_actor": stage1, "init_qw": qw}
    online_sizes = {"env_steps": cfg.online_env_steps, "utd": cfg.utd} | sizes.get("online", {})
    stage2 = step("online", run_online(OnlineConfig(**(common | online_sizes | online_init), base=base),
                                       store, force))
    console.print(f"stage 2 artifact: {stage2}")
    compare.append("stage2")
    eval_sizes = dict(sizes.get("eval", {}))
    if cfg.eval_episodes is not None:
        eval_sizes["episodes"] = cfg.eval_episodes
    names = ",".join(compare)
    result = run_eval(EvalConfig(compare=names, base=base, **common, **eval_sizes), store, force)
    step("eval", result)
    return result


_SAME_TASK = ("name", "env_id", "n_obs_steps", "pred_horizon", "act_horizon")


def _dataset(cfg: PipelineConfig, store: ArtifactStore, force: bool, sizes: dict[str, Any]) -> StageResult:
    """The collect artifact the pipeline runs on: given, imported, or recorded by the demonstrator."""
    sizes = sizes | {"obs_keys": cfg.obs_keys, "ignore_env_args": cfg.ignore_env_args}
    if cfg.dataset:
        path = Path(cfg.dataset)
        if path.is_file() and not (path.resolve().parent / MANIFEST).is_file():
            # A plain file (not inside an artifact folder): import it for the task.
            return run_collect(CollectConfig(task=cfg.task or "default", import_path=str(path), **sizes), store,
                               force)
        artifact = store.resolve(cfg.dataset, stage="collect",
                                 hint="--dataset takes an HDF5 file to import or a collect artifact")
        if cfg.task is not None:
            want, have = load_task(cfg.task).to_dict(), task_of(artifact)
            diff = [k for k in _SAME_TASK if want.get(k) != have.get(k)]
            if diff:
                raise BadInput(f"--dataset {cfg.dataset} was made for task {have.get('name')!r}, not --task "
                               f"{cfg.task} (they differ in {', '.join(diff)})")
        return StageResult.from_artifact(artifact, cached=True)
    task = load_task(cfg.task or "default")
    if task.demonstrator is None and not task.dataset.get("file"):
        raise BadInput(f"task {task.name} has no scripted demonstrator and no dataset file: pass --dataset FILE.h5 "
                       "(or a collect artifact), or name the file in the task as dataset: {file: FILE.h5}")
    return run_collect(CollectConfig(task=cfg.task or "default", **sizes), store, force)
