"""`dsrl pipeline`: every stage in order; each one is a cached, resumable artifact on its own."""

from __future__ import annotations

from dataclasses import dataclass

from dsrl_cli.config import cosmetic
from dsrl_cli.stages.collect import CollectConfig, run_collect
from dsrl_cli.stages.common import StageResult
from dsrl_cli.stages.evaluate import EvalConfig, run_eval
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console

# Tiny sizes for smoke tests: every stage runs, nothing is expected to learn.
QUICK = {
    "collect": {"episodes": 20},
    "pretrain": {"steps": 30, "batch_size": 64, "hidden": 32, "depth": 2},
    "eval": {"episodes": 6, "num_envs": 3},
}


@dataclass(frozen=True)
class PipelineConfig:
    task: str = "default"
    quick: bool = False
    eval_episodes: int | None = None
    seed: int = 0
    device: str = cosmetic("auto")


def run_pipeline(cfg: PipelineConfig, store: ArtifactStore, force: bool = False) -> StageResult:
    sizes = QUICK if cfg.quick else {}
    common = {"seed": cfg.seed, "device": cfg.device}

    def step(name: str, result: StageResult) -> StageResult:
        state = "cached" if result.cached else "done"
        console.print(f"[bold]{name}[/] {state}: {result.path}")
        return result

    dataset = step("collect", run_collect(
        CollectConfig(task=cfg.task, **common, **sizes.get("collect", {})), store, force))
    base = step("pretrain", run_pretrain(
        PretrainConfig(dataset=str(dataset.path), **common, **sizes.get("pretrain", {})), store, force))
    eval_sizes = dict(sizes.get("eval", {}))
    if cfg.eval_episodes is not None:
        eval_sizes["episodes"] = cfg.eval_episodes
    return step("eval", run_eval(
        EvalConfig(compare="prior", base=str(base.path), **common, **eval_sizes), store, force))
