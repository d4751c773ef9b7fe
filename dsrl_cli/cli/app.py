"""The `dsrl` command line. Each command maps its options onto a frozen config and calls a stage function."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dsrl_cli.cli.common import (
    DEFAULT_ARTIFACTS,
    AliasOpt,
    ArtifactsOpt,
    BaseOpt,
    ConfigOpt,
    DatasetOpt,
    DeviceOpt,
    ForceOpt,
    JsonOpt,
    QaOpt,
    QwOpt,
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
    obs_keys: Annotated[str | None, typer.Option(
        "--obs-keys", help="Import: order of a robomimic obs group's keys, a,b,c (overrides the task's).")] = None,
    ignore_env_args: Annotated[bool | None, typer.Option(
        "--ignore-env-args", help="Import: accept a file whose env_args name another env.")] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Record scripted demonstrations (or import robomimic / D4RL HDF5) -> artifacts/dataset.h5."""
    from dsrl_cli.stages.collect import CollectConfig, run_collect

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"task": task, "episodes": episodes, "noise": noise,
             "import_path": str(import_path) if import_path else None, "obs_keys": obs_keys,
             "ignore_env_args": ignore_env_args}
    run_and_emit(c, lambda store: run_collect(c.build(CollectConfig, given, "collect"), store, c.force))


@app.command()
def pretrain(
    kind: Annotated[str | None, typer.Option("--kind", help="flow or shortcut (default: the task's).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Gradient steps.")] = None,
    dataset: DatasetOpt = None,
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
    compare: Annotated[
        str, typer.Option("--compare", help="Comma list: prior, prior-mean, stage1, stage2 or paths.")
    ] = "prior",
    episodes: Annotated[int | None, typer.Option("--episodes", help="Episodes per policy.")] = None,
    noise: Annotated[
        str | None, typer.Option("--noise", help="Latent actors: sampled (w ~ pi, default) or mean.")
    ] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Parallel environments.")] = None,
    base: BaseOpt = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Compare policies on the same seeded episodes, one noise mode: success (Wilson 95%) and return (± 95% CI)."""
    from dsrl_cli.stages.evaluate import EvalConfig, run_eval

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"compare": compare, "episodes": episodes, "num_envs": num_envs, "base": base, "noise": noise}
    run_and_emit(c, lambda store: run_eval(c.build(EvalConfig, given, "eval"), store, c.force))


@app.command()
def online(
    utd: Annotated[int | None, typer.Option("--utd", help="SAC updates per collected batch.")] = None,
    env_steps: Annotated[int | None, typer.Option("--env-steps", help="Environment step budget.")] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Parallel environments.")] = None,
    init_actor: Annotated[str | None, typer.Option("--init-actor", help="Start from this actor (stage1).")] = None,
    init_qw: Annotated[str | None, typer.Option("--init-qw", help="Start Q^W from this critic.")] = None,
    na: Annotated[bool | None, typer.Option("--na/--no-na", help="DSRL-NA: learn Q^A, distill Q^W.")] = None,
    init_qa: Annotated[str | None, typer.Option("--init-qa", help="With --na: start Q^A from qa.ckpt.")] = None,
    base: BaseOpt = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Stage 2: SAC on the latent noise with UTD updates -> artifacts/stage2.ckpt."""
    from dsrl_cli.stages.online import OnlineConfig, run_online

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"utd": utd, "env_steps": env_steps, "num_envs": num_envs, "init_actor": init_actor,
             "init_qw": init_qw, "base": base, "na": na, "init_qa": init_qa}
    run_and_emit(c, lambda store: run_online(c.build(OnlineConfig, given, "online"), store, c.force))


@app.command("train-qa")
def train_qa(
    steps: Annotated[int | None, typer.Option("--steps", help="Gradient steps.")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Action at s': dataset (next chunk, SARSA) or prior.")
    ] = None,
    dataset: DatasetOpt = None,
    base: BaseOpt = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Stage 1: TD-learn the action critic Q^A(s, a_head) on dataset chunks -> artifacts/qa.ckpt."""
    from dsrl_cli.stages.train_qa import TrainQAConfig, run_train_qa

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"steps": steps, "target": target, "dataset": dataset, "base": base}
    run_and_emit(c, lambda store: run_train_qa(c.build(TrainQAConfig, given, "train-qa"), store, c.force))


@app.command("alias")
def alias(
    mode: Annotated[str | None, typer.Option("--mode", help="retrieve (fast) or invert (accurate).")] = None,
    m: Annotated[int | None, typer.Option("--m", help="Retrieve: candidate noises per pair.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Invert: gradient steps.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Invert: Adam learning rate.")] = None,
    multi_start: Annotated[int | None, typer.Option("--multi-start", help="Invert: starts per pair.")] = None,
    init: Annotated[str | None, typer.Option("--init", help="Invert: first start retrieve or random.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Pairs computed per batch.")] = None,
    max_pairs: Annotated[int | None, typer.Option("--max-pairs", help="Only the first N dataset pairs.")] = None,
    dataset: DatasetOpt = None,
    base: BaseOpt = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Stage 1 (DSRL-NA): alias dataset actions to noise -> artifacts/alias.pt (cache: artifacts/alias.lmdb)."""
    from dsrl_cli.stages.alias import AliasConfig, run_alias

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"mode": mode, "m": m, "steps": steps, "lr": lr, "multi_start": multi_start, "init": init,
             "batch_size": batch_size, "max_pairs": max_pairs, "dataset": dataset, "base": base}
    run_and_emit(c, lambda store: run_alias(c.build(AliasConfig, given, "alias"), store, c.force))


@app.command("distill-qw")
def distill_qw(
    source: Annotated[str | None, typer.Option("--source", help="alias, prior or both.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Gradient steps.")] = None,
    prior_fraction: Annotated[
        float | None, typer.Option("--prior-fraction", help="Share of prior samples per batch (both).")
    ] = None,
    qa: QaOpt = None,
    alias_ref: AliasOpt = None,
    dataset: DatasetOpt = None,
    base: BaseOpt = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Stage 1 (DSRL-NA): distill Q^A into the latent critic Q^W(s, w) -> artifacts/qw.ckpt."""
    from dsrl_cli.stages.distill_qw import DistillConfig, run_distill_qw

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"source": source, "steps": steps, "prior_fraction": prior_fraction, "qa": qa, "alias": alias_ref,
             "dataset": dataset, "base": base}
    run_and_emit(c, lambda store: run_distill_qw(c.build(DistillConfig, given, "distill-qw"), store, c.force))


@app.command()
def warmstart(
    method: Annotated[str | None, typer.Option("--method", help="aw-mle (default) or offline-sac.")] = None,
    steps: Annotated[int | None, typer.Option("--steps", help="Gradient steps.")] = None,
    use_na: Annotated[
        bool | None, typer.Option("--use-na/--no-use-na", help="Score noise with Q^W (qw.ckpt) or Q^A(decode).")
    ] = None,
    aw_mle: Annotated[
        bool | None, typer.Option("--aw-mle/--offline-sac", help="Shorthand for --method aw-mle / offline-sac.")
    ] = None,
    m_candidates: Annotated[int | None, typer.Option("--m-candidates", help="AW-MLE: noises per obs.")] = None,
    beta_latent: Annotated[float | None, typer.Option("--beta-latent", help="AW-MLE: weight sharpness.")] = None,
    tau_baseline: Annotated[
        float | None, typer.Option("--tau-baseline", help="AW-MLE: baseline soft-max temperature.")
    ] = None,
    qw: QwOpt = None,
    qa: QaOpt = None,
    alias_ref: AliasOpt = None,
    dataset: DatasetOpt = None,
    base: BaseOpt = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Stage 1: warm-start the latent actor offline from Q^W (AW-MLE or offline SAC) -> artifacts/stage1.ckpt."""
    from dsrl_cli.errors import BadInput
    from dsrl_cli.stages.warmstart import WarmstartConfig, run_warmstart

    c = common(artifacts, seed, device, config, set_, force, json_out)
    shorthand = None if aw_mle is None else ("aw-mle" if aw_mle else "offline-sac")
    given = {"method": method or shorthand, "steps": steps, "use_na": use_na, "m_candidates": m_candidates,
             "beta_latent": beta_latent, "tau_baseline": tau_baseline, "qw": qw, "qa": qa, "alias": alias_ref,
             "dataset": dataset, "base": base}

    def body(store):
        if method is not None and shorthand is not None and method != shorthand:
            raise BadInput(f"--method {method} contradicts --{'aw-mle' if aw_mle else 'offline-sac'}")
        return run_warmstart(c.build(WarmstartConfig, given, "warmstart"), store, c.force)

    run_and_emit(c, body)


diagnose_app = typer.Typer(help="Health checks with plots and plain-language warnings.", no_args_is_help=True)
app.add_typer(diagnose_app, name="diagnose")


@diagnose_app.command("stage2")
def diagnose_stage2(
    run: Annotated[str, typer.Argument(help="Online artifact (default stage2.ckpt).")] = "stage2.ckpt",
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, json_out: JsonOpt = False,
) -> None:
    """Plot an online run's health curves and evaluations; warn when one misbehaves or evaluation falls."""
    from dsrl_cli.stages.diagnose import diagnose_stage2 as body

    guarded(lambda: _emit_report(body(artifacts, run), json_out))


@diagnose_app.command("stage1")
def diagnose_stage1(
    ref: Annotated[str, typer.Argument(help="Warmstart artifact (default stage1.ckpt).")] = "stage1.ckpt",
    batch: Annotated[int, typer.Option("--batch", help="Fixed dataset observations to score.")] = 1024,
    device: DeviceOpt = None, artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, json_out: JsonOpt = False,
) -> None:
    """Compare E[Q(s, w)] for w ~ prior vs w ~ stage 1 actor on fixed dataset observations (Q^W and Q^A)."""
    from dsrl_cli.stages.diagnose import diagnose_stage1 as body

    def run_body() -> None:
        if batch < 1:
            from dsrl_cli.errors import BadInput

            raise BadInput(f"--batch must be positive, got {batch}")
        _emit_report(body(artifacts, ref, batch, device or "auto"), json_out)

    guarded(run_body)


@diagnose_app.command("alias")
def diagnose_alias(
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, json_out: JsonOpt = False,
) -> None:
    """Histogram the alias reconstruction error per mode (retrieve vs invert) -> plots/alias_errors.png."""
    from dsrl_cli.stages.diagnose import diagnose_alias as body

    guarded(lambda: _emit_report(body(artifacts), json_out))


def _emit_report(report: dict, json_out: bool) -> None:
    if json_out:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        sys.stdout.write(f"{report.get('plot') or report['verdict']}\n")


@app.command()
def pipeline(
    task: Annotated[
        str | None, typer.Option("--task", help="Task name or YAML path (default: default, or --dataset's).")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="HDF5 file to import, or a collect artifact (path or key).")
    ] = None,
    base_policy: Annotated[
        str | None, typer.Option("--base-policy", help="Bring your own policy: module:factory (no pretraining).")
    ] = None,
    obs_keys: Annotated[str | None, typer.Option("--obs-keys", help="Import: as collect --obs-keys.")] = None,
    ignore_env_args: Annotated[
        bool | None, typer.Option("--ignore-env-args", help="Import: as collect --ignore-env-args.")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes, for smoke tests.")] = False,
    stage1: Annotated[
        bool | None, typer.Option("--stage1/--no-stage1", help="Run the offline Stage 1 (DSRL-NA warm start).")
    ] = None,
    online_env_steps: Annotated[int | None, typer.Option("--online-env-steps", help="Stage 2 env steps.")] = None,
    utd: Annotated[int | None, typer.Option("--utd", help="Stage 2 updates per collected batch.")] = None,
    episodes: Annotated[int | None, typer.Option("--eval-episodes", help="Evaluation episodes.")] = None,
    artifacts: ArtifactsOpt = DEFAULT_ARTIFACTS, seed: SeedOpt = None, device: DeviceOpt = None,
    config: ConfigOpt = None, set_: SetOpt = None, force: ForceOpt = False, json_out: JsonOpt = False,
) -> None:
    """Run every stage in order on one task (each stage is cached and resumable on its own)."""
    from dsrl_cli.stages.pipeline import PipelineConfig, run_pipeline

    c = common(artifacts, seed, device, config, set_, force, json_out)
    given = {"task": task, "dataset": dataset, "base_policy": base_policy, "obs_keys": obs_keys,
             "ignore_env_args": ignore_env_args, "quick": quick,
             "eval_episodes": episodes, "stage1": stage1,
             "online_env_steps": online_env_steps, "utd": utd}
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
