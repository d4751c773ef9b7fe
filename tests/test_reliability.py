"""Reliability: bad inputs refused before anything is written, NaN never published, kills resumed, one
writer per key, full disks and read-only stores.

The case tables (`BAD_INPUTS`, `FAULT_STAGES` x `KILL_POINTS`) and their checkers are plain functions so
`benchmarks/reliability.py` runs the same tables for the README's reliability figures.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from dsrl_cli.cli.app import app
from dsrl_cli.errors import DsrlError, storage_error_line
from dsrl_cli.samplers.noise_aliasing import AliasCache
from dsrl_cli.stages.alias import AliasConfig, run_alias
from dsrl_cli.stages.common import StageResult
from dsrl_cli.stages.distill_qw import DistillConfig, run_distill_qw
from dsrl_cli.stages.online import OnlineConfig, run_online
from dsrl_cli.stages.pretrain import PretrainConfig, artifact_key, run_pretrain
from dsrl_cli.stages.train_qa import TrainQAConfig, run_train_qa
from dsrl_cli.stages.warmstart import WarmstartConfig, run_warmstart
from dsrl_cli.store import lock as key_lock
from dsrl_cli.store import store as store_mod
from dsrl_cli.store.store import FRIENDLY_NAMES, MANIFEST, ArtifactStore, StageRun, find_nonfinite
from dsrl_cli.utils.console import read_jsonl
from tests.helpers import TINY_PRETRAIN, tiny_store
from tests.test_cache_keys import first_difference, stored_content

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args: Any, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


# ---------------------------------------------------------------------------------------------------------
# a finished store


def quick_pipeline(root: Path) -> Path:
    result = invoke("pipeline", "--quick", "--artifacts", root, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return root


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return quick_pipeline(tmp_path_factory.mktemp("finished") / "artifacts")


def snapshot(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path under `root` with what it is: folder, symlink target, or file content hash."""
    out: dict[str, tuple[str, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def snapshot_diff(before: dict[str, tuple[str, ...]], after: dict[str, tuple[str, ...]]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# ---------------------------------------------------------------------------------------------------------
# bad inputs: exit 2, one stderr line, no traceback, nothing in the store changed


@dataclass(frozen=True)
class BadCase:
    name: str
    # `{root}`, `{tmp}`, `{file}`, `{dir}`, `{online_dir}` (an artifact folder)... are filled in (see
    # `make_outside`); --artifacts {root} is added unless given
    args: tuple[str, ...]
    expect: str  # a fragment the one line must contain (what makes it clear)
    setup: Callable[[Path], None] | None = None  # mutates a copy of the finished store first

    @property
    def own_artifacts(self) -> bool:
        return "--artifacts" in self.args


def _set_main(stage: str, content: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / FRIENDLY_NAMES[stage]).resolve().write_bytes(content)
    return setup


def _set_manifest(stage: str, content: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        ((root / FRIENDLY_NAMES[stage]).resolve().parent / MANIFEST).write_text(content)
    return setup


def _drop_main(stage: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / FRIENDLY_NAMES[stage]).resolve().unlink()
    return setup


def _lmdb_file(root: Path) -> None:
    shutil.rmtree(root / "alias.lmdb")
    (root / "alias.lmdb").write_text("not a folder")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _evil_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"format": "dsrl-latent-actor-v1", "x": _Evil()}, buf)
    return buf.getvalue()


def C(name: str, *args: str, expect: str, setup: Callable[[Path], None] | None = None) -> BadCase:
    return BadCase(name, tuple(args), expect, setup)


BAD_INPUTS: list[BadCase] = [
    # collect
    C("collect unknown task", "collect", "--task", "no-such-task", expect="no-such-task"),
    C("collect episodes 0", "collect", "--episodes", "0", expect="--episodes must be positive"),
    C("collect episodes -3", "collect", "--episodes", "-3", expect="--episodes must be positive"),
    C("collect noise -1", "collect", "--noise", "-1", expect="--noise must be >= 0"),
    C("collect noise nan", "collect", "--noise", "nan", expect="noise must be a finite number"),
    C("collect seed -1", "collect", "--seed", "-1", expect="--seed must be"),
    C("collect seed 1e20", "collect", "--seed", "99999999999999999999", expect="--seed must be in"),
    C("collect unknown option", "collect", "--set", "bogus=1", expect="unknown option 'bogus'"),
    C("collect int option not a number", "collect", "--set", "episodes=many", expect="must be an integer"),
    C("collect int option 2.5", "collect", "--set", "episodes=2.5", expect="must be an integer"),
    C("collect --set without =", "collect", "--set", "episodes", expect="key=value"),
    C("collect import missing file", "collect", "--import", "{tmp}/none.h5", expect="none.h5"),
    C("collect import text file", "collect", "--import", "{text_h5}", expect="bad.h5"),
    C("collect import a folder", "collect", "--import", "{dir}", expect="not a file"),
    C("collect config missing", "collect", "--config", "{tmp}/none.yaml", expect="config file not found"),
    C("collect config not a mapping", "collect", "--config", "{yaml_list}", expect="must hold a mapping"),
    C("collect config invalid YAML", "collect", "--config", "{yaml_bad}", expect="not valid YAML"),
    # pretrain
    C("pretrain kind diffusion", "pretrain", "--kind", "diffusion", expect="must be one of flow, shortcut"),
    C("pretrain steps 0", "pretrain", "--steps", "0", expect="--steps must be positive"),
    C("pretrain lr nan", "pretrain", "--set", "lr=nan", expect="lr must be a finite number"),
    C("pretrain lr inf", "pretrain", "--steps", "302", "--set", "lr=.inf", expect="lr must be a finite number"),
    C("pretrain lr -1", "pretrain", "--set", "lr=-1", expect="--lr must be positive"),
    C("pretrain checkpoint_every 0", "pretrain", "--set", "checkpoint_every=0", expect="--checkpoint-every"),
    C("pretrain log_every 0", "pretrain", "--set", "log_every=0", expect="--log-every must be positive"),
    C("pretrain ema_decay 1", "pretrain", "--set", "ema_decay=1.0", expect="ema_decay must be in"),
    C("pretrain hidden 0", "pretrain", "--set", "hidden=0", expect="--hidden must be positive"),
    C("pretrain seed -1", "pretrain", "--seed", "-1", expect="--seed must be"),
    C("pretrain dataset missing", "pretrain", "--dataset", "nothing-here", expect="nothing-here"),
    C("pretrain dataset a plain file", "pretrain", "--dataset", "{file}", expect="is a file but not part of an"),
    C("pretrain dataset a plain folder", "pretrain", "--dataset", "{dir}", expect="is a folder but not an artifact"),
    C("pretrain dataset of another stage", "pretrain", "--dataset", "base.ckpt", expect="expected a collect"),
    C("pretrain base-policy no module", "pretrain", "--base-policy", "no_such_module:f", expect="no_such_module"),
    # train-qa
    C("train-qa target future", "train-qa", "--target", "future", expect="must be one of dataset, prior"),
    C("train-qa tau 0", "train-qa", "--set", "tau=0", expect="tau must be in"),
    C("train-qa tau nan", "train-qa", "--set", "tau=nan", expect="tau must be a finite number"),
    C("train-qa batch_size 0", "train-qa", "--set", "batch_size=0", expect="--batch-size must be positive"),
    C("train-qa base of another stage", "train-qa", "--base", "dataset.h5", expect="expected a pretrain"),
    # alias
    C("alias mode guess", "alias", "--mode", "guess", expect="must be one of retrieve, invert"),
    C("alias m 0", "alias", "--m", "0", expect="--m must be positive"),
    C("alias lr nan", "alias", "--lr", "nan", expect="lr must be a finite number"),
    C("alias multi-start -1", "alias", "--multi-start", "-1", expect="--multi-start must be positive"),
    C("alias max-pairs 0", "alias", "--max-pairs", "0", expect="--max-pairs must be positive"),
    C("alias cache is a file", "alias", "--m", "4", expect="alias cache must be a folder", setup=_lmdb_file),
    # distill-qw
    C("distill prior-fraction 1.5", "distill-qw", "--prior-fraction", "1.5", expect="--prior-fraction must be in"),
    C("distill prior-fraction nan", "distill-qw", "--prior-fraction", "nan", expect="finite number"),
    C("distill source everything", "distill-qw", "--source", "everything", expect="alias, prior, both"),
    C("distill qa a plain folder", "distill-qw", "--qa", "{dir}", expect="is a folder but not an artifact"),
    # warmstart
    C("warmstart beta-latent nan", "warmstart", "--beta-latent", "nan", expect="beta_latent must be a finite"),
    C("warmstart beta-latent -1", "warmstart", "--beta-latent", "-1", expect="--beta-latent must be >= 0"),
    C("warmstart method ppo", "warmstart", "--method", "ppo", expect="aw-mle, offline-sac"),
    C("warmstart contradicting method", "warmstart", "--method", "aw-mle", "--offline-sac", expect="contradicts"),
    C("warmstart actor_std 100", "warmstart", "--set", "actor_std=100", expect="actor_std must be in"),
    C("warmstart candidate_clip 1", "warmstart", "--set", "candidate_clip=1.0", expect="candidate_clip must be"),
    C("warmstart m-candidates 0", "warmstart", "--m-candidates", "0", expect="--m-candidates must be positive"),
    C("warmstart tau_baseline inf", "warmstart", "--tau-baseline", "inf", expect="tau_baseline must be a finite"),
    C("warmstart target_entropy nan", "warmstart", "--set", "target_entropy=nan", expect="target_entropy"),
    # online
    C("online utd 0", "online", "--utd", "0", expect="--utd must be positive"),
    C("online env-steps -5", "online", "--env-steps", "-5", expect="--env-steps must be positive"),
    C("online num-envs 0", "online", "--num-envs", "0", expect="--num-envs must be positive"),
    C("online init_alpha inf", "online", "--set", "init_alpha=.inf", expect="init_alpha must be a finite"),
    C("online alpha_lr 0", "online", "--set", "alpha_lr=0", expect="--alpha-lr must be positive"),
    C("online noise_scale nan", "online", "--set", "noise_scale=nan", expect="noise_scale must be a finite"),
    C("online checkpoint_every 0", "online", "--set", "checkpoint_every=0", expect="--checkpoint-every"),
    C("online critic_hidden 0", "online", "--set", "critic_hidden=0", expect="--critic-hidden must be positive"),
    C("online eval_every -1", "online", "--set", "eval_every=-1", expect="eval_every must be >= 0"),
    C("online stop_at_success 1.5", "online", "--set", "stop_at_success=1.5", expect="stop_at_success must be"),
    C("online target_subset 3 of 2 heads", "online", "--set", "target_subset=3", expect="target_subset"),
    C("online init-qa without na", "online", "--init-qa", "qa.ckpt", expect="--init-qa only makes sense"),
    C("online init-actor of another stage", "online", "--init-actor", "base.ckpt", expect="pretrain artifact"),
    C("online init-actor refused pickle", "online", "--init-actor", "stage1.ckpt", expect="refused to load",
      setup=_set_main("warmstart", _evil_bytes())),
    # eval
    C("eval policy twice", "eval", "--compare", "prior,prior", expect="lists a policy twice"),
    C("eval episodes 0", "eval", "--episodes", "0", expect="--episodes must be positive"),
    C("eval num-envs 0", "eval", "--num-envs", "0", expect="--num-envs must be positive"),
    C("eval noise loud", "eval", "--noise", "loud", expect="sampled, mean"),
    C("eval a plain file", "eval", "--compare", "{file}", expect="is a file but not part of an artifact"),
    C("eval a plain folder", "eval", "--compare", "{dir}", expect="is a folder but not an artifact"),
    C("eval an artifact of another stage", "eval", "--compare", "base.ckpt", expect="pretrain artifact"),
    C("eval refused pickle", "eval", "--compare", "stage2", expect="refused to load",
      setup=_set_main("online", _evil_bytes())),
    C("eval truncated checkpoint", "eval", "--compare", "stage2", expect="not a torch file, or a truncated one",
      setup=_set_main("online", b"PK\x03\x04 torn")),
    C("eval manifest {}", "eval", "--compare", "stage2", expect="damaged (no key)",
      setup=_set_manifest("online", "{}")),
    C("eval manifest garbage", "eval", "--compare", "stage2", expect="damaged (JSONDecodeError)",
      setup=_set_manifest("online", "garbage{")),
    C("eval manifest a list", "eval", "--compare", "stage2", expect="damaged (a JSON list",
      setup=_set_manifest("online", "[1, 2]")),
    C("eval main file missing", "eval", "--compare", "{online_dir}", expect="main file stage2.ckpt is missing",
      setup=_drop_main("online")),
    C("eval friendly name dangling", "eval", "--compare", "stage2", expect="stage2.ckpt not found",
      setup=_drop_main("online")),
    C("rerun over a damaged manifest", "pretrain", "--steps", "30", "--set", "batch_size=64", "--set", "hidden=32",
      "--set", "depth=2", expect="rerun its stage with --force", setup=_set_manifest("pretrain", "{}")),
    # artifacts, diagnose, pipeline, the store itself
    C("artifacts show missing", "artifacts", "show", "nothing-here", expect="nothing-here"),
    C("artifacts show a plain file", "artifacts", "show", "{file}", expect="is a file but not part of an"),
    C("store is a file", "collect", "--episodes", "3", "--artifacts", "{file}", expect="is not a folder"),
    C("store under a file", "collect", "--episodes", "3", "--artifacts", "{file}/sub", expect="is a file)"),
    C("ls on a file", "artifacts", "ls", "--artifacts", "{file}", expect="is not a folder"),
    C("diagnose stage1 batch 0", "diagnose", "stage1", "--batch", "0", expect="--batch must be positive"),
    C("pipeline online-env-steps 0", "pipeline", "--quick", "--online-env-steps", "0",
      expect="--online-env-steps must be positive"),
    C("pipeline unknown task", "pipeline", "--quick", "--task", "nope", expect="nope"),
]


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict[str, str]:
    return make_outside(tmp_path_factory.mktemp("outside"))


def make_outside(tmp: Path) -> dict[str, str]:
    """Files and folders outside the store that bad inputs point at."""
    (tmp / "plain.txt").write_text("just a file")
    (tmp / "folder").mkdir()
    (tmp / "bad.h5").write_text("not hdf5")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "bad.yaml").write_text("a: [1, 2\n")
    return {"tmp": str(tmp), "file": str(tmp / "plain.txt"), "dir": str(tmp / "folder"),
            "text_h5": str(tmp / "bad.h5"), "yaml_list": str(tmp / "list.yaml"), "yaml_bad": str(tmp / "bad.yaml")}


def check_bad_input(case: BadCase, root: Path, outside: dict[str, str], scratch: Path) -> str | None:
    """None when `case` is refused as it should be, else what went wrong."""
    if case.setup is not None:
        copy = scratch / "artifacts"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root, copy, symlinks=True)
        root = copy
    fill = {**outside, "root": str(root)}
    for stage, name in FRIENDLY_NAMES.items():
        if (root / name).exists():
            fill[f"{stage}_dir"] = str((root / name).resolve().parent)
    if case.setup is not None:
        case.setup(root)
    args = [a.format(**fill) for a in case.args]
    if not case.own_artifacts:
        args += ["--artifacts", str(root)]
    before = snapshot(root)
    result = invoke(*args)
    lines = result.stderr.strip().splitlines()
    changed = snapshot_diff(before, snapshot(root))
    if result.exit_code != 2:
        return f"exit {result.exit_code}: {result.stderr.strip()[-300:]}"
    if "Traceback" in result.stderr or "Traceback" in result.stdout:
        return "traceback printed"
    if len(lines) != 1:
        return f"{len(lines)} stderr lines: {lines[:4]}"
    if result.stdout:
        return f"stdout not empty: {result.stdout[:200]!r}"
    if case.expect not in lines[0]:
        return f"message lacks {case.expect!r}: {lines[0]}"
    if changed:
        return f"store changed: {changed[:5]}"
    return None


def test_bad_input_table_is_big_enough():
    assert len(BAD_INPUTS) >= 40
    assert len({c.name for c in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_input_refused_before_any_write(case, finished, outside, tmp_path):
    problem = check_bad_input(case, finished, outside, tmp_path)
    assert problem is None, problem


# ---------------------------------------------------------------------------------------------------------
# NaN / inf never becomes the default


def test_diverged_pretrain_is_not_published(finished, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(finished, root, symlinks=True)
    good = os.readlink(root / "base.ckpt")
    # A finite but absurd learning rate: the weights blow up to NaN during training.
    result = invoke("pretrain", "--steps", "30", "--set", "lr=1e30", "--set", "batch_size=64", "--set", "hidden=32",
                    "--set", "depth=2", "--artifacts", root)
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "produced NaN or inf" in lines[-1] and "not published, base.ckpt is unchanged" in lines[-1]
    assert "Traceback" not in result.stderr
    assert os.readlink(root / "base.ckpt") == good  # the friendly name still names the good artifact
    [partial] = ArtifactStore(root).partial_runs()
    assert not (partial / MANIFEST).exists()
    assert not list((root / "objects" / "pretrain").glob("*.lock"))


def test_finish_refuses_nan_weights_and_metrics(store_root):
    store = ArtifactStore(store_root)
    run = store.begin("online", {"a": 1}, {}, 1)
    torch.save({"actor_state": {"w": torch.tensor([1.0, float("nan")])}}, run.dir / "stage2.ckpt")
    with pytest.raises(DsrlError, match=r"NaN or inf \(actor_state.w\)"):
        run.finish("stage2.ckpt", {"final_return": 1.0}, {})
    run = store.begin("online", {"a": 1}, {}, 1)  # the same key: the failed run released its lock
    torch.save({"actor_state": {"w": torch.ones(2)}}, run.dir / "stage2.ckpt")
    with pytest.raises(DsrlError, match=r"summary.curve\[1\].return"):
        run.finish("stage2.ckpt", {"curve": [{"return": 0.5}, {"return": float("inf")}]}, {})
    assert not (run.dir / MANIFEST).exists() and not (store_root / "stage2.ckpt").exists()
    run = store.begin("online", {"a": 1}, {}, 1)
    run.finish("stage2.ckpt", {"curve": [{"return": 0.5}], "success": None}, {})  # None (n/a) is fine
    assert (store_root / "stage2.ckpt").exists()
    assert find_nonfinite({"a": [1, 2.0, None, "x", torch.zeros(2, dtype=torch.int64)]}) is None


# ---------------------------------------------------------------------------------------------------------
# kills: each long stage, at chosen points, then a rerun that resumes and gives the same result


class Killed(BaseException):
    """A simulated kill: not an Exception, so no handler in the code under test swallows it."""


TINY_QA = dict(steps=20, batch_size=32, hidden=16, depth=1, device="cpu", checkpoint_every=5, log_every=5)


@dataclass(frozen=True)
class FaultStage:
    run: Callable[..., StageResult]
    config: Any
    resumes_identically: bool = True  # online loses its in-flight episodes on resume (documented)


FAULT_STAGES: dict[str, FaultStage] = {
    "pretrain": FaultStage(run_pretrain, PretrainConfig(**(TINY_PRETRAIN | dict(
        steps=20, hidden=16, checkpoint_every=5, log_every=5, seed=5)))),
    "train-qa": FaultStage(run_train_qa, TrainQAConfig(**TINY_QA, seed=5)),
    "alias": FaultStage(run_alias, AliasConfig(mode="retrieve", m=32, batch_size=128, max_pairs=256, device="cpu")),
    "distill-qw": FaultStage(run_distill_qw, DistillConfig(**TINY_QA, seed=5)),
    "warmstart": FaultStage(run_warmstart, WarmstartConfig(
        steps=20, batch_size=16, m_candidates=4, actor_hidden=16, device="cpu", checkpoint_every=5, log_every=5)),
    "online": FaultStage(run_online, OnlineConfig(
        env_steps=48, num_envs=2, utd=1, batch_size=16, warmup_env_steps=16, actor_hidden=16, critic_hidden=16,
        critic_depth=1, eval_every=0, eval_episodes=2, checkpoint_every=16, log_every=8, device="cpu"),
        resumes_identically=False),
}
# where the kill lands: a torn first checkpoint (an alias batch mid-commit), right after the first checkpoint
# (batch) is safe, while renaming the main file into place, while writing the manifest, after the manifest
# while removing the resume states, and while re-pointing the friendly name
KILL_POINTS = ("torn-checkpoint", "after-checkpoint", "main-file", "manifest", "resume-cleanup", "friendly-name")
STEP_KEYS = {"online": "env_steps"}


def build_upstream(root: Path) -> ArtifactStore:
    """collect, pretrain, train-qa, alias and distill-qw: every input a fault stage reads."""
    store = tiny_store(root)
    run_train_qa(TrainQAConfig(**TINY_QA), store)
    run_alias(AliasConfig(m=4, device="cpu"), store)
    run_distill_qw(DistillConfig(**TINY_QA), store)
    return store


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    return build_upstream(tmp_path_factory.mktemp("upstream") / "artifacts").root


@pytest.fixture(scope="module")
def references(upstream, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """What an uninterrupted run of each fault stage stores."""
    out = {}
    for name, spec in FAULT_STAGES.items():
        root = tmp_path_factory.mktemp(f"ref-{name}") / "artifacts"
        shutil.copytree(upstream, root, symlinks=True)
        result = spec.run(spec.config, ArtifactStore(root))
        out[name] = {"key": result.key, "stored": stored_content(result.artifact)}
    return out


def install_kill(mp: pytest.MonkeyPatch, stage: str, point: str, root: Path) -> None:
    main = FRIENDLY_NAMES[stage] if stage != "alias" else "alias.pt"
    real_replace = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        dst_path = Path(dst)
        if point == "main-file" and dst_path.name == main:
            (dst_path.parent / f".{main}.tmp-999999").write_bytes(b"half written")  # what a killed writer leaves
            raise Killed
        if point == "manifest" and dst_path.name == MANIFEST:
            raise Killed
        if point == "friendly-name" and dst_path == root / FRIENDLY_NAMES[stage]:
            raise Killed
        real_replace(src, dst, *args, **kwargs)

    mp.setattr(os, "replace", replace)
    if point == "resume-cleanup":
        def rmtree(path: Any, *args: Any, **kwargs: Any) -> None:
            if Path(path).name == "checkpoints":
                raise Killed
            shutil.rmtree(path, *args, **kwargs)

        mp.setattr(store_mod.shutil, "rmtree", rmtree)
    if point not in ("torn-checkpoint", "after-checkpoint"):
        return
    if stage == "alias":
        real_put = AliasCache.put_many

        def put_many(self: AliasCache, *args: Any, **kwargs: Any) -> int:
            if point == "torn-checkpoint":
                raise Killed  # before the batch's transaction commits
            real_put(self, *args, **kwargs)
            raise Killed

        mp.setattr(AliasCache, "put_many", put_many)
        return
    real_save = StageRun.save_state

    def save_state(self: StageRun, state: dict[str, Any], step: int, keep: int = 2) -> Path:
        if point == "torn-checkpoint":
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            (self.checkpoint_dir / f"state_{step:012d}.pt").write_bytes(b"PK\x03\x04 torn")
            (self.checkpoint_dir / f".state_{step:012d}.pt.tmp-999999").write_bytes(b"half written")
            raise Killed
        real_save(self, state, step, keep)
        raise Killed

    mp.setattr(StageRun, "save_state", save_state)


def run_recording(stage: str, root: Path) -> tuple[StageResult, list[int]]:
    """Run a fault stage; also returns the step each `load_state` resumed from."""
    spec = FAULT_STAGES[stage]
    resumed_at: list[int] = []
    real_load = StageRun.load_state

    def load_state(self: StageRun) -> tuple[dict[str, Any] | None, int]:
        state, step = real_load(self)
        resumed_at.append(step)
        return state, step

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StageRun, "load_state", load_state)
        result = spec.run(spec.config, ArtifactStore(root))
    return result, resumed_at


def check_finished(stage: str, result: StageResult, root: Path, reference: dict[str, Any]) -> str | None:
    """What is wrong with a rerun's result (None: published cleanly, the same as the uninterrupted run)."""
    art = result.artifact
    if result.key != reference["key"]:
        return f"key {result.key} != {reference['key']}"
    if (root / FRIENDLY_NAMES[stage]).resolve() != art.main_path.resolve():
        return "friendly name does not point at the result"
    leftovers = [p.name for p in art.dir.iterdir() if p.name.startswith(".") or p.name == "checkpoints"]
    leftovers += [p.name for p in art.dir.parent.glob("*.lock")] + [p.name for p in root.glob(".*.link-*")]
    if leftovers:
        return f"leftovers: {leftovers}"
    log = art.dir / "log.jsonl"
    if log.exists():
        steps = [r[STEP_KEYS.get(stage, "step")] for r in read_jsonl(log) if r.get("event") is None]
        if steps != sorted(set(steps)):
            return f"log rows repeated or out of order: {steps}"
    if FAULT_STAGES[stage].resumes_identically:
        diff = first_difference(stored_content(art), reference["stored"])
        return f"differs from the uninterrupted run at {diff}" if diff else None
    bad = find_nonfinite(stored_content(art)["main"])
    if bad:
        return f"non-finite {bad}"
    if result.summary["env_steps"] < FAULT_STAGES[stage].config.env_steps:
        return "stopped short of its env-step budget"
    return None


def kill_and_rerun(stage: str, point: str, root: Path, reference: dict[str, Any]) -> str | None:
    """Kill `stage` at `point` in a copy of the upstream store at `root`, rerun it, check (None: survived)."""
    with pytest.MonkeyPatch.context() as mp:
        install_kill(mp, stage, point, root)
        try:
            FAULT_STAGES[stage].run(FAULT_STAGES[stage].config, ArtifactStore(root))
        except Killed:
            pass
        else:
            return "the kill point was never reached"
    result, resumed_at = run_recording(stage, root)
    if point == "resume-cleanup":
        # Published before the kill: a cache hit, which writes nothing; the next writer of the stage sweeps.
        left = (result.artifact.dir / "checkpoints").exists()
        if not result.cached or left != (stage != "alias"):
            return f"cached {result.cached}, resume states left {left}"
        swept = ArtifactStore(root).sweep_stage(stage)
        if left and not swept:
            return "the sweep left the resume states"
    problem = check_finished(stage, result, root, reference)
    if problem:
        return problem
    if point in ("resume-cleanup", "friendly-name"):
        return None if result.cached else "the published result was recomputed"
    if result.cached:
        return "a killed run was published"
    if stage == "alias":
        computed, pairs = result.summary["computed"], result.summary["pairs"]
        want = {"torn-checkpoint": computed == pairs, "after-checkpoint": 0 < computed < pairs}.get(
            point, computed == 0)
        return None if want else f"rerun computed {computed} of {pairs} rows after a kill at {point}"
    step = resumed_at[0] if resumed_at else None
    if point == "torn-checkpoint":
        return None if step == 0 else f"resumed from {step} after the only checkpoint was torn"
    # after-checkpoint / main-file / manifest: the resume states must still be there
    return None if step and step > 0 else f"restarted from {step} instead of resuming from a checkpoint"


@pytest.mark.parametrize("point", KILL_POINTS)
@pytest.mark.parametrize("stage", list(FAULT_STAGES))
def test_killed_stage_resumes_to_the_same_result(stage, point, upstream, references, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(upstream, root, symlinks=True)
    try:
        problem = kill_and_rerun(stage, point, root, references[stage])
    finally:
        key_lock.release_all()
    assert problem is None, problem


# ---- random SIGKILLs in subprocesses (slow) -----------------------------------------------------------------

CHILD = """
import json, sys
from dsrl_cli.store.store import ArtifactStore
from tests.test_reliability import FAULT_STAGES
stage, root = sys.argv[1], sys.argv[2]
spec = FAULT_STAGES[stage]
print("ready", flush=True)
result = spec.run(spec.config, ArtifactStore(root))
print(json.dumps({"key": result.key, "cached": result.cached}), flush=True)
"""


def _run_child(stage: str, root: Path, kill_after: float | None) -> tuple[bool, float]:
    """(killed while working, seconds from ready to exit or kill)."""
    proc = _python(CHILD, stage, str(root), stderr=subprocess.DEVNULL)  # nobody reads its progress
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.wait()
        raise RuntimeError(f"{stage} child failed to start")
    t0 = time.perf_counter()
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True, time.perf_counter() - t0
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} child exited {proc.returncode}")
    return False, time.perf_counter() - t0


def random_kills(stage: str, upstream: Path, scratch: Path, reference: dict[str, Any], kills: int,
                 seed: int = 0, per_trial: int = 4) -> tuple[int, list[str], int]:
    """SIGKILL `stage` at random moments, `per_trial` times per fresh store, then finish and check.

    Returns (kills landed on a working process, problems found, trials whose leftovers of a kill while
    publishing, a lock file or resume states, the next writer's sweep removed)."""
    rng = random.Random(seed)
    root = scratch / "timing"
    shutil.copytree(upstream, root, symlinks=True)
    _, work = _run_child(stage, root, None)
    landed, problems, trial, swept = 0, [], 0, 0
    while landed < kills:
        root = scratch / f"trial{trial}"
        shutil.copytree(upstream, root, symlinks=True)
        for _ in range(per_trial):
            killed, _ = _run_child(stage, root, rng.uniform(0.0, 1.2 * work))
            landed += killed
        _run_child(stage, root, None)  # finish
        result, _ = run_recording(stage, root)  # a cache hit now: read what was published
        swept += bool(ArtifactStore(root).sweep_stage(stage))  # what the next writer of the stage does
        problem = check_finished(stage, result, root, reference) or (None if result.cached else "not published")
        if problem:
            problems.append(f"trial {trial}: {problem}")
        shutil.rmtree(root)
        trial += 1
    return landed, problems, swept


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(FAULT_STAGES))
def test_random_sigkills(stage, upstream, references, tmp_path):
    landed, problems, _ = random_kills(stage, upstream, tmp_path, references[stage], kills=20)
    assert landed >= 20 and not problems, problems


# ---------------------------------------------------------------------------------------------------------
# one writer per key


def check_same_key_threads(upstream: Path, scratch: Path) -> str | None:
    """Two writers of one pretrain key at once (threads: flock locks are per open file, as between processes)."""
    root = scratch / "threads"
    shutil.copytree(upstream, root, symlinks=True)
    cfg = PretrainConfig(**(TINY_PRETRAIN | {"steps": 60, "log_every": 10, "seed": 9}))
    key = artifact_key(cfg, ArtifactStore(root))
    folder, lock_file = root / "objects" / "pretrain" / key, root / "objects" / "pretrain" / f"{key}.lock"
    results: dict[str, StageResult] = {}

    def run(name: str) -> None:
        results[name] = run_pretrain(cfg, ArtifactStore(root))

    first = threading.Thread(target=run, args=("first",))
    first.start()
    deadline = time.monotonic() + 60
    while not folder.exists() and time.monotonic() < deadline:  # the first writer has begun
        time.sleep(0.001)
    second = threading.Thread(target=run, args=("second",))
    second.start()
    first.join()
    second.join()
    if len(results) != 2:
        return "a writer failed"
    if results["first"].cached or not results["second"].cached:
        return f"computed {'twice' if not results['second'].cached else 'never'}"
    steps = [r["step"] for r in read_jsonl(results["first"].artifact.dir / "log.jsonl")]
    if steps != [10, 20, 30, 40, 50, 60]:
        return f"log rows {steps}"
    return "lock file left behind" if lock_file.exists() else None


def check_forced_waiter(scratch: Path) -> str | None:
    """A `--force` writer that waited for the key reuses what finished meanwhile; without a wait it recomputes."""
    store = ArtifactStore(scratch / "forced")
    holder = store.begin("pretrain", {"a": 1}, {}, 1)
    got: dict[str, StageRun] = {}
    waiter = threading.Thread(target=lambda: got.setdefault("run", store.begin("pretrain", {"a": 1}, {}, 1,
                                                                               force=True)))
    waiter.start()
    time.sleep(0.2)
    blocked = waiter.is_alive()
    (holder.dir / "base.ckpt").write_text("x")
    holder.finish("base.ckpt", {}, {})
    waiter.join(timeout=30)
    try:
        if not blocked:
            return "the waiter did not wait for the key's lock"
        if "run" not in got or not got["run"].cached or got["run"].key != holder.key:
            return "the waiter recomputed what finished while it waited"
        return None if not store.begin("pretrain", {"a": 1}, {}, 1, force=True).cached else "--force reused"
    finally:
        key_lock.release_all()


PROCESS_CHILD = """
import json, sys
from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
from dsrl_cli.store.store import ArtifactStore
r = run_pretrain(PretrainConfig(steps=200, batch_size=64, hidden=32, depth=2, log_every=20, device="cpu", seed=4),
                 ArtifactStore(sys.argv[1]))
print(json.dumps({"cached": r.cached, "path": str(r.path)}))
"""


def _python(code: str, *args: str, stderr: int = subprocess.PIPE) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=stderr)


def _results(procs: list[subprocess.Popen]) -> list[dict[str, Any]] | str:
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            return f"a process failed: {err.strip()[-300:]}"
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def check_same_key_processes(upstream: Path, scratch: Path) -> str | None:
    """The same command started twice at once (two processes): computed once, the log written once."""
    root = scratch / "processes"
    shutil.copytree(upstream, root, symlinks=True)
    outs = _results([_python(PROCESS_CHILD, str(root)) for _ in range(2)])
    if isinstance(outs, str):
        return outs
    if sorted(o["cached"] for o in outs) != [False, True]:
        return f"cached flags {[o['cached'] for o in outs]}"
    steps = [r["step"] for r in read_jsonl(Path(outs[0]["path"]).parent / "log.jsonl")]
    return None if steps == list(range(20, 201, 20)) else f"log rows {steps}"


ALIAS_CHILD = """
import json, sys, time
from pathlib import Path
from dsrl_cli.samplers.noise_aliasing import AliasCache
from dsrl_cli.stages.alias import AliasConfig, run_alias
from dsrl_cli.store.store import ArtifactStore
root, max_pairs, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
real_get_many = AliasCache.get_many

def get_many(self, *args, **kwargs):
    # A rendezvous where the run reads the cache: without a lock both runs get here together (and both
    # find nothing); with one, the second never gets here before the first is done, and the first goes on.
    Path(f"{go}.{max_pairs}").touch()
    t0 = time.monotonic()
    while len(list(go.parent.glob(go.name + ".*"))) < 2 and time.monotonic() - t0 < 1.5:
        time.sleep(0.005)
    return real_get_many(self, *args, **kwargs)

AliasCache.get_many = get_many
store = ArtifactStore(root)
while not go.exists():
    time.sleep(0.005)
r = run_alias(AliasConfig(mode="retrieve", m=64, batch_size=64, max_pairs=max_pairs, device="cpu"), store)
print(json.dumps({"computed": r.summary["computed"], "pairs": r.summary["pairs"], "path": str(r.path)}))
"""


def check_concurrent_alias(upstream: Path, scratch: Path) -> str | None:
    """Two alias runs over overlapping rows of one LMDB cache at once (two processes, different keys)."""
    from dsrl_cli.stages.alias import load_alias_file

    root = scratch / "alias"
    shutil.copytree(upstream, root, symlinks=True)
    go = scratch / "go"
    procs = [_python(ALIAS_CHILD, str(root), str(n), str(go)) for n in (128, 256)]
    go.touch()  # the children wait for it once imported
    outs = _results(procs)
    if isinstance(outs, str):
        return outs
    if [o["pairs"] for o in outs] != [128, 256]:
        return f"pairs {[o['pairs'] for o in outs]}"
    computed = sum(o["computed"] for o in outs)
    if computed != 256:
        return f"{computed} rows computed for 256 distinct rows"
    small, large = (load_alias_file(Path(o["path"])) for o in outs)
    same = all(torch.equal(small[k], large[k][:128]) for k in ("w", "err", "obs_cond"))
    return None if same else "the shared rows differ"


CONCURRENCY_CASES: dict[str, Callable[[Path, Path], str | None]] = {
    "same key, two threads: computed once, log written once": check_same_key_threads,
    "same key, two processes (the same command twice)": check_same_key_processes,
    "--force waiting on a running writer reuses its result": lambda upstream, scratch: check_forced_waiter(scratch),
    "two alias runs on one LMDB cache: each row computed once, same bytes": check_concurrent_alias,
}


def test_second_writer_waits_then_reuses(upstream, tmp_path, capsys):
    assert check_same_key_threads(upstream, tmp_path) is None
    assert "waiting for another process computing pretrain" in capsys.readouterr().err


def test_forced_waiter_reuses_what_finished_while_it_waited(tmp_path):
    assert check_forced_waiter(tmp_path) is None


@pytest.mark.slow
def test_same_command_twice_in_two_processes(upstream, tmp_path):
    assert check_same_key_processes(upstream, tmp_path) is None


def test_concurrent_alias_runs_compute_each_row_once(upstream, tmp_path):
    problem = check_concurrent_alias(upstream, tmp_path)
    assert problem is None, problem


# ---------------------------------------------------------------------------------------------------------
# full disks


class _FullFile:
    """A writable file that fills the disk after `room` bytes (then every write raises ENOSPC)."""

    def __init__(self, fh: Any, room: int) -> None:
        self._fh, self._room = fh, room

    def write(self, data: Any) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def fill_disk_for(mp: pytest.MonkeyPatch, module: Any, when: Callable[[str], bool], room: int = 1000) -> None:
    """`open` in `module` gives files that run out of space when `when(path)`."""
    def full_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        return _FullFile(fh, room) if "w" in mode and when(str(path)) else fh

    mp.setattr(module, "open", full_open, raising=False)


def _temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name]


def test_full_disk_during_a_checkpoint(upstream, tmp_path, monkeypatch):
    from dsrl_cli.store import checkpoint

    root = tmp_path / "artifacts"
    shutil.copytree(upstream, root, symlinks=True)
    args = ("pretrain", "--steps", "30", "--set", "checkpoint_every=10", "--set", "hidden=16", "--set", "batch_size=32",
            "--device", "cpu", "--artifacts", root)
    with monkeypatch.context() as mp:
        fill_disk_for(mp, checkpoint, lambda p: "state_000000000020" in p)
        result = invoke(*args)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: no space left on device at ") and "state_000000000020.pt" in line
    assert "Traceback" not in result.stderr
    assert _temp_files(root) == []  # the half-written checkpoint does not keep the disk full
    again = invoke(*args, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["cached"] is False
    assert "resuming pretrain" in again.stderr and "from step 10" in again.stderr


def test_full_disk_during_the_manifest(upstream, tmp_path, monkeypatch):
    from dsrl_cli.store import store as store_mod

    root = tmp_path / "artifacts"
    shutil.copytree(upstream, root, symlinks=True)
    good = os.readlink(root / "base.ckpt")
    args = ("pretrain", "--steps", "20", "--set", "checkpoint_every=10", "--set", "hidden=16", "--set", "batch_size=32",
            "--device", "cpu", "--artifacts", root)
    with monkeypatch.context() as mp:
        fill_disk_for(mp, store_mod, lambda p: MANIFEST in p, room=10)
        result = invoke(*args)
    assert result.exit_code == 1
    assert "no space left on device at " in result.stderr and MANIFEST in result.stderr
    assert _temp_files(root) == [] and os.readlink(root / "base.ckpt") == good
    [partial] = ArtifactStore(root).partial_runs()
    assert list((partial / "checkpoints").glob("state_*.pt"))  # kept: the rerun resumes, not restarts
    assert invoke(*args).exit_code == 0


def test_wrapped_storage_errors_say_no_space(tmp_path, monkeypatch):
    from dsrl_cli import errors

    # h5py and lmdb wrap ENOSPC in their own errors; a full disk under the store is recognised.
    monkeypatch.setattr(errors, "disk_full", lambda path, below=0: True)
    line = storage_error_line(RuntimeError("mdb_txn_commit: Input/output error"), tmp_path)
    assert line is not None and line.startswith(f"no space left on device at {tmp_path}")
    eio = storage_error_line(OSError(errno.EROFS, "Read-only file system", "/x/y"))
    assert eio == "read-only file system at /x/y"
    monkeypatch.setattr(errors, "disk_full", lambda path, below=0: False)
    assert storage_error_line(RuntimeError("something else"), tmp_path) is None


# ---------------------------------------------------------------------------------------------------------
# read-only stores (tests run as root here, where chmod does not stop writes: every write call is audited)


@dataclass
class WriteAudit:
    """Every attempt to write, rename, link or remove under `root` raises EROFS and is recorded."""

    root: Path
    attempts: list[str] = field(default_factory=list)

    def refuse(self, what: str, path: Any) -> None:
        if str(Path(os.fsdecode(path)).absolute()).startswith(str(self.root)):
            self.attempts.append(f"{what} {path}")
            raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))


@pytest.fixture
def read_only(monkeypatch) -> Iterator[Callable[[Path], WriteAudit]]:
    def install(root: Path) -> WriteAudit:
        audit = WriteAudit(root.absolute())
        real_open, real_os_open = builtins.open, os.open

        def guarded_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                audit.refuse("open", file)
            return real_open(file, mode, *args, **kwargs)

        def guarded_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC):
                audit.refuse("os.open", path)
            return real_os_open(path, flags, *args, **kwargs)

        def two(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
                audit.refuse(name, dst)
                return real(src, dst, *args, **kwargs)
            return call

        def one(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def call(path: Any, *args: Any, **kwargs: Any) -> Any:
                audit.refuse(name, path)
                return real(path, *args, **kwargs)
            return call

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        for name in ("replace", "rename", "symlink", "link"):
            monkeypatch.setattr(os, name, two(f"os.{name}", getattr(os, name)))
        for name in ("mkdir", "unlink", "remove", "rmdir"):
            monkeypatch.setattr(os, name, one(f"os.{name}", getattr(os, name)))
        monkeypatch.setattr(shutil, "rmtree", one("shutil.rmtree", shutil.rmtree))
        return audit

    yield install


def test_cache_hits_and_eval_on_a_read_only_store(finished, tmp_path, read_only):
    root = tmp_path / "artifacts"
    shutil.copytree(finished, root, symlinks=True)
    # Another pretrain artifact, the friendly name left on the pipeline's: a cache hit of the other one
    # below cannot re-point base.ckpt on a read-only store, and need not.
    target = os.readlink(root / "base.ckpt")
    other = ("pretrain", "--steps", "7", "--set", "batch_size=16", "--set", "hidden=8", "--device", "cpu",
             "--artifacts", root)
    assert invoke(*other).exit_code == 0
    (root / "base.ckpt").unlink()
    (root / "base.ckpt").symlink_to(target)
    before = snapshot(root)
    audit = read_only(root)
    hit = invoke("pipeline", "--quick", "--artifacts", root, "--device", "cpu", "--json")
    assert hit.exit_code == 0, hit.stderr
    assert json.loads(hit.stdout)["cached"] is True
    assert audit.attempts == []  # a pure read: not even the friendly names were touched
    evaluated = invoke("eval", "--compare", "prior,prior-mean,stage1,stage2", "--set", "episodes=6", "--set",
                       "num_envs=3", "--device", "cpu", "--artifacts", root)
    assert evaluated.exit_code == 0 and evaluated.stdout.strip().endswith("eval.json")
    assert audit.attempts == []
    again = invoke(*other, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["cached"] is True
    assert "could not point" in again.stderr and "read-only file system" in again.stderr
    # A new evaluation is computed and printed, not stored; new training says why it cannot start.
    fresh = invoke("eval", "--compare", "prior", "--set", "episodes=2", "--set", "num_envs=2", "--device", "cpu",
                   "--artifacts", root, "--json")
    assert fresh.exit_code == 0 and json.loads(fresh.stdout)["artifact"] is None
    assert "is read-only" in fresh.stderr
    train = invoke("pretrain", "--steps", "9", "--artifacts", root)
    assert train.exit_code == 1
    assert train.stderr.strip().splitlines()[-1].startswith("error: read-only file system at ")
    assert snapshot(root) == before


# ---------------------------------------------------------------------------------------------------------
# listing and messages


def test_ls_flags_damaged_manifests(finished, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(finished, root, symlinks=True)
    _set_manifest("online", "garbage{")(root)
    listing = invoke("artifacts", "ls", "--artifacts", root, "--json")
    assert listing.exit_code == 0
    data = json.loads(listing.stdout)
    assert "online" not in {a["stage"] for a in data["artifacts"]}
    [damaged] = data["damaged"]
    assert damaged["path"].endswith((root / "stage2.ckpt").resolve().parent.name) and "damaged" in damaged["error"]
    text = invoke("artifacts", "ls", "--artifacts", root)
    assert text.exit_code == 0 and "damaged (JSONDecodeError)" in text.stderr


def test_failed_run_after_begin_leaves_no_folder(finished, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(finished, root, symlinks=True)
    _set_main("online", _evil_bytes())(root)
    before = snapshot(root)
    # eval finds the refused pickle only after it began its run: the empty run folder goes away again.
    result = invoke("eval", "--compare", "stage2", "--episodes", "5", "--artifacts", root)
    assert result.exit_code == 2 and "refused to load" in result.stderr
    assert snapshot(root) == before
    assert key_lock.held_paths() == []
