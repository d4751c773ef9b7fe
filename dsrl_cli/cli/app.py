"""The `dsrl` command line. Each command maps its options onto a frozen config and calls a stage function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsrl_cli.cli.common import (
    DEFAULT_ARTIFACTS,
    ArtifactsOpt,
    ConfigOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    SeedOpt,
    SetOpt,
    common,
    guarded,
    run_and_emit,
)

app = typer.Typer(
    name="dsrl",
    help="Off-policy DSRL: improve a frozen flow policy by SAC over its input noise (with DSRL-NA).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
artifacts_app = typer.Typer(help="List and inspect artifacts in the store.", no_args_is_help=True)
app.add_typer(artifacts_app, name="artifacts")


@app.command()
def collect(
    task: Annotated[str, typer.Option("--task", help="Task name (configs/tasks) or YAML path.")] = "default",
    episodes: Annotated[int | None, typer.Option("--episodes", help="Demonstrations to record.")] = None,
    noise: Annotated[float | None, typer.Option("--noise", help="Demonstrator noise (0 = expert).")] = None,
    import_path: Annotated[Path | None, typer.Option("--import", help="Import an HDF5 dataset instead.")] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Record scripted demonstrations (or import robomimic / D4RL HDF5) -> artifacts/dataset.h5."""
    from dsrl_cli.stages.collect import CollectConfig, run_collect

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"task": task, "episodes": episodes, "noise": noise,
             "import_path": str(import_path) if import_path else None}
    run_and_emit(c, lambda store: run_collect(c.build(CollectConfig, given, "collect"), store, c.force))


@app.command()
def pretrain(
    kind: Annotated[str | None, typer.Option("--kind", help="flow or shortcut (default: the task's).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Gradient steps.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Dataset artifact (default dataset.h5).")] = None,
    base_policy: Annotated[
        str | None, typer.Option("--base-policy", help="Bring your own policy: module:factory.")
    ] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Behaviour-clone the frozen base policy (flow or shortcut-flow) -> artifacts/base.ckpt."""
    from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"kind": kind, "steps": steps, "dataset": dataset, "base_policy": base_policy}
    run_and_emit(c, lambda store: run_pretrain(c.build(PretrainConfig, given, "pretrain"), store, c.force))


@app.command("eval")
def eval_(
    compare: Annotated[str, typer.Option("--compare", help="Comma list: prior, stage1, stage2 or paths.")] = "prior",
    episodes: Annotated[int | None, typer.Option("--episodes", help="Episodes per policy.")] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Parallel environments.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base policy artifact (default base.ckpt).")] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Compare policies on the same seeded episodes: success and return, mean ± 95% CI."""
    from dsrl_cli.stages.evaluate import EvalConfig, run_eval

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"compare": compare, "episodes": episodes, "num_envs": num_envs, "base": base}
    run_and_emit(c, lambda store: run_eval(c.build(EvalConfig, given, "eval"), store, c.force))


@app.command()
def online(
    utd: Annotated[int | None, typer.Option("--utd", help="SAC updates per collected batch.")] = None,
    env_steps: Annotated[int | None, typer.Option("--env-steps", help="Environment step budget.")] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Parallel environments.")] = None,
    init_actor: Annotated[str | None, typer.Option("--init-actor", help="Start from this actor (stage1).")] = None,
    init_qw: Annotated[str | None, typer.Option("--init-qw", help="Start Q^W from this critic.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Base policy artifact (default base.ckpt).")] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Stage 2: SAC on the latent noise with UTD updates -> artifacts/stage2.ckpt."""
    from dsrl_cli.stages.online import OnlineConfig, run_online

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"utd": utd, "env_steps": env_steps, "num_envs": num_envs, "init_actor": init_actor,
             "init_qw": init_qw, "base": base}
    run_and_emit(c, lambda store: run_online(c.build(OnlineConfig, given, "online"), store, c.force))


diagnose_app = typer.Typer(help="Health checks with plots and plain-language warnings.", no_args_is_help=True)
app.add_typer(diagnose_app, name="diagnose")


@diagnose_app.command("stage2")
def diagnose_stage2(
    run: Annotated[str, typer.Argument(help="Online artifact (default stage2.ckpt).")] = "stage2.ckpt",
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, json_out: JsonOpt = False,
) -> None:
    """Plot td_error, q_mean, alpha and policy_entropy of an online run and warn when one misbehaves."""
    from dsrl_cli.stages.diagnose import diagnose_stage2 as body

    guarded(lambda: _emit_report(body(artifacts, run), json_out))


def _emit_report(report: dict, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(f"{report['plot']}\n")


@app.command()
def pipeline(
    task: Annotated[str, typer.Option("--task", help="Task name or YAML path.")] = "default",
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes, for smoke tests.")] = False,
    episodes: Annotated[int | None, typer.Option("--eval-episodes", help="Evaluation episodes.")] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Run every stage in order on one task (each stage is cached and resumable on its own)."""
    from dsrl_cli.stages.pipeline import PipelineConfig, run_pipeline

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"task": task, "quick": quick, "eval_episodes": episodes}
    run_and_emit(c, lambda store: run_pipeline(c.build(PipelineConfig, given, "pipeline"), store, c.force))


@artifacts_app.command("ls")
def artifacts_ls(
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, json_out: JsonOpt = False,
) -> None:
    """List complete artifacts (newest last) and partial runs."""
    from dsrl_cli.stages.inspect import list_artifacts

    guarded(lambda: list_artifacts(artifacts, json_out))


@artifacts_app.command("show")
def artifacts_show(
    ref: Annotated[str, typer.Argument(help="Friendly name, path or key.")],
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS,
) -> None:
    """Print an artifact's manifest as JSON."""
    from dsrl_cli.store.store import ArtifactStore

    def body() -> None:
        artifact = ArtifactStore(artifacts).resolve(ref)
        sys.stdout.write(json.dumps(artifact.manifest | {"path": str(artifact.main_path)}, indent=2) + "\n")

    guarded(body)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
