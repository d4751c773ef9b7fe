"""The cache-key rule: changing any config field either changes the artifact key or leaves every stored
byte identical (the main file, the manifest's summary and meta, log.jsonl; minus `store.RUN_FACTS`).

The walk goes over `dataclasses.fields` of every stage's config, so a field added later is covered: the
test fails until the field has an entry in `ALTERNATIVES`. For each field it takes the first valid other
value; when the key (from the stage's own `key_parts`, computed without running it) is unchanged, it runs
the tiny stage both ways and compares what was stored. A changed key is the safe side and is not run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from dsrl_cli.envs.tasks import TASKS_DIR
from dsrl_cli.errors import BadInput
from dsrl_cli.stages import alias, collect, distill_qw, evaluate, online, pretrain, train_qa, warmstart
from dsrl_cli.stages.alias import AliasConfig
from dsrl_cli.stages.collect import CollectConfig
from dsrl_cli.stages.distill_qw import DistillConfig
from dsrl_cli.stages.evaluate import EvalConfig
from dsrl_cli.stages.online import OnlineConfig
from dsrl_cli.stages.pretrain import PretrainConfig
from dsrl_cli.stages.train_qa import TrainQAConfig
from dsrl_cli.stages.warmstart import WarmstartConfig
from dsrl_cli.store.checkpoint import load_torch
from dsrl_cli.store.store import Artifact, ArtifactStore, without_run_facts
from dsrl_cli.utils.console import read_jsonl
from tests.helpers import TINY_PRETRAIN, tiny_store

USER_POLICY = "dsrl_cli.samplers.example_user_policy:make_policy"


@dataclass(frozen=True)
class Ref:
    """The path of an artifact of the test's world (see `world`)."""

    name: str


@dataclass(frozen=True)
class KeyOf:
    """The same artifact as `Ref(name)`, named by its key instead of its path."""

    name: str


@dataclass(frozen=True)
class Alt:
    """Other values for a field, tried in order: the first that differs from the baseline and is valid
    (the stage's `key_parts` accepts it) is used. `given` is set in both runs: a context where they are valid."""

    values: tuple[Any, ...]
    given: Mapping[str, Any] = field(default_factory=dict)


def alt(*values: Any, given: Mapping[str, Any] | None = None) -> Alt:
    return Alt(values, dict(given or {}))


COMMON = {"seed": alt(1, 0), "device": alt("auto", "cpu")}
STEPS = {"checkpoint_every": alt(7, 11), "log_every": alt(5, 3)}

# One entry per config field of every stage. A new field fails the walk until it is listed here.
ALTERNATIVES: dict[type, dict[str, Alt]] = {
    CollectConfig: {
        "task": alt(str(TASKS_DIR / "default.yaml")), "episodes": alt(7), "noise": alt(0.5),
        "import_path": alt(Ref("dataset")), "obs_keys": alt(("pos", "goal")), "ignore_env_args": alt(True),
        **COMMON,
    },
    PretrainConfig: {
        "dataset": alt(Ref("dataset2")), "kind": alt("shortcut", "flow"), "steps": alt(30, 20),
        "batch_size": alt(32, 16), "lr": alt(1e-3), "hidden": alt(16), "depth": alt(1),
        "ema_decay": alt(0.9), "num_inference_steps": alt(2), "base_policy": alt(USER_POLICY, None),
        **COMMON, **STEPS,
    },
    TrainQAConfig: {
        "dataset": alt(Ref("dataset2")), "base": alt(Ref("base2")), "steps": alt(15), "target": alt("prior"),
        "batch_size": alt(16), "lr": alt(1e-3), "hidden": alt(16), "depth": alt(1), "tau": alt(0.05),
        "layer_norm": alt(False), **COMMON, **STEPS,
    },
    AliasConfig: {
        "dataset": alt(Ref("dataset2")), "base": alt(Ref("base2")), "mode": alt("invert", "retrieve"),
        "m": alt(4, 6), "steps": alt(3, 2), "lr": alt(0.1), "multi_start": alt(1, 3), "init": alt("random"),
        "batch_size": alt(100, 50), "max_pairs": alt(50), **COMMON,
    },
    DistillConfig: {
        "qa": alt(Ref("qa2")), "alias": alt(Ref("alias2")), "base": alt(Ref("base2"), KeyOf("base")),
        "dataset": alt(Ref("dataset2")), "source": alt("prior"), "steps": alt(15), "batch_size": alt(16),
        "lr": alt(1e-3), "hidden": alt(16), "depth": alt(1), "layer_norm": alt(False),
        "prior_fraction": alt(0.25), **COMMON, **STEPS,
    },
    WarmstartConfig: {
        "base": alt(Ref("base2"), KeyOf("base")), "dataset": alt(Ref("dataset2"), KeyOf("dataset")),
        "qa": alt(Ref("qa2")), "qw": alt(Ref("qw2")), "alias": alt(Ref("alias2")),
        "method": alt("offline-sac", "aw-mle"), "use_na": alt(False), "steps": alt(15), "batch_size": alt(8),
        "m_candidates": alt(4), "prior_candidate_fraction": alt(0.25), "candidate_clip": alt(0.5),
        "beta_latent": alt(1.0), "tau_baseline": alt(0.5), "max_weight": alt(5.0), "normalize_weights": alt(True),
        "actor_std": alt(None), "actor_lr": alt(1e-3), "bc_weight": alt(0.5), "critic_lr": alt(1e-3),
        "alpha_lr": alt(1e-3), "tau": alt(0.05), "init_alpha": alt(0.1), "target_entropy": alt(-2.0),
        "critic_hidden": alt(16), "critic_depth": alt(1), "layer_norm": alt(False), "noise_scale": alt(1.0),
        "steer_mode": alt("full"), "actor_hidden": alt(16), "actor_depth": alt(1), **COMMON, **STEPS,
    },
    OnlineConfig: {
        "base": alt(Ref("base2")), "init_actor": alt(Ref("stage1")), "init_qw": alt(Ref("qw")), "na": alt(True),
        "init_qa": alt(Ref("qa"), given={"na": True}), "na_prior_fraction": alt(0.25), "utd": alt(1),
        "env_steps": alt(60), "num_envs": alt(2), "warmup_env_steps": alt(20), "batch_size": alt(16),
        "tau": alt(0.05), "actor_lr": alt(1e-3), "critic_lr": alt(1e-3), "alpha_lr": alt(1e-3),
        "init_alpha": alt(0.1), "target_entropy": alt(-2.0), "noise_scale": alt(1.0), "steer_mode": alt("full"),
        "actor_hidden": alt(16), "actor_depth": alt(1), "critic_hidden": alt(16), "critic_depth": alt(1),
        "layer_norm": alt(False), "num_q": alt(3), "target_subset": alt(1), "buffer_size": alt(1000),
        "stop_at_success": alt(0.9), "eval_every": alt(20), "eval_episodes": alt(2), "eval_noise": alt("mean"),
        **COMMON,
        "checkpoint_every": alt(20, 30), "log_every": alt(10, 30),
    },
    EvalConfig: {
        "compare": alt(lambda w: f"prior,{w['stage1'][0]}"), "episodes": alt(5), "num_envs": alt(4),
        "base": alt(Ref("base2")), "noise": alt("mean"), **COMMON,
    },
}

TINY_QA = dict(steps=20, batch_size=32, hidden=32, depth=2, device="cpu", checkpoint_every=10, log_every=10)
TINY_DISTILL = dict(steps=20, batch_size=32, hidden=32, depth=2, device="cpu", checkpoint_every=10, log_every=10)
TINY_WARMSTART = dict(steps=20, batch_size=16, m_candidates=8, actor_hidden=32, critic_hidden=32, critic_depth=2,
                      device="cpu", checkpoint_every=10, log_every=10)
TINY_ONLINE = dict(env_steps=80, num_envs=4, utd=2, batch_size=32, warmup_env_steps=40, actor_hidden=32,
                   critic_hidden=32, critic_depth=2, eval_every=40, eval_episodes=3, checkpoint_every=40,
                   log_every=20, device="cpu")
ALL_REFS = {"base": Ref("base"), "dataset": Ref("dataset")}


@dataclass(frozen=True)
class Scenario:
    name: str
    cls: type
    module: ModuleType
    runner: Callable[..., Any]
    base: Mapping[str, Any]


SCENARIOS = [
    Scenario("collect", CollectConfig, collect, collect.run_collect, {"episodes": 6, "device": "cpu"}),
    Scenario("pretrain", PretrainConfig, pretrain, pretrain.run_pretrain,
             TINY_PRETRAIN | {"dataset": Ref("dataset"), "checkpoint_every": 20, "log_every": 10}),
    Scenario("pretrain --base-policy", PretrainConfig, pretrain, pretrain.run_pretrain,
             {"dataset": Ref("dataset"), "base_policy": USER_POLICY, "device": "cpu"}),
    Scenario("train-qa", TrainQAConfig, train_qa, train_qa.run_train_qa, TINY_QA | ALL_REFS),
    Scenario("alias retrieve", AliasConfig, alias, alias.run_alias,
             {"mode": "retrieve", "m": 8, "batch_size": 256, "device": "cpu"} | ALL_REFS),
    Scenario("alias invert", AliasConfig, alias, alias.run_alias,
             {"mode": "invert", "m": 8, "steps": 3, "multi_start": 2, "init": "retrieve", "batch_size": 32,
              "max_pairs": 100, "device": "cpu"} | ALL_REFS),
    Scenario("distill-qw", DistillConfig, distill_qw, distill_qw.run_distill_qw,
             TINY_DISTILL | ALL_REFS | {"qa": Ref("qa"), "alias": Ref("alias")}),
    Scenario("warmstart aw-mle", WarmstartConfig, warmstart, warmstart.run_warmstart,
             TINY_WARMSTART | ALL_REFS | {"qa": Ref("qa"), "qw": Ref("qw"), "alias": Ref("alias")}),
    Scenario("warmstart offline-sac", WarmstartConfig, warmstart, warmstart.run_warmstart,
             TINY_WARMSTART | ALL_REFS | {"qa": Ref("qa"), "qw": Ref("qw"), "alias": Ref("alias"),
                                          "method": "offline-sac"}),
    Scenario("online", OnlineConfig, online, online.run_online, TINY_ONLINE | {"base": Ref("base")}),
    Scenario("eval", EvalConfig, evaluate, evaluate.run_eval,
             {"compare": "prior", "episodes": 4, "num_envs": 2, "device": "cpu", "base": Ref("base")}),
]


# ---------------------------------------------------------------------------------------------------------
# what an artifact stores, and the first place two of them differ


def _h5_content(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with h5py.File(path, "r") as f:
        def visit(name: str, obj: Any) -> None:
            attrs = {k: np.asarray(v) for k, v in obj.attrs.items()}
            out[name] = (np.asarray(obj[()]) if isinstance(obj, h5py.Dataset) else None, attrs)
        out["/"] = (None, {k: np.asarray(v) for k, v in f.attrs.items()})
        f.visititems(visit)
    return out


def stored_content(artifact: Artifact) -> dict[str, Any]:
    main = artifact.main_path
    if main.suffix == ".h5":
        data: Any = _h5_content(main)
    elif main.suffix == ".json":
        data = without_run_facts(json.loads(main.read_text()))
    else:
        data = load_torch(main)
    log = artifact.dir / "log.jsonl"
    return {"files": sorted(p.name for p in artifact.dir.iterdir()), "main": data,
            "summary": without_run_facts(artifact.summary), "meta": artifact.meta,
            "log": without_run_facts(read_jsonl(log)) if log.exists() else None}


def _raw(x: torch.Tensor | np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        return str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes()
    a = np.ascontiguousarray(x)
    return str(a.dtype), a.shape, a.tobytes() if a.dtype != object else repr(a.tolist()).encode()


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, (torch.Tensor, np.ndarray)) or isinstance(b, (torch.Tensor, np.ndarray)):
        same = type(a) is type(b) and _raw(a) == _raw(b)
        return None if same else path
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path} (keys {sorted(set(a) ^ set(b))})"
        for k in a:
            found = first_difference(a[k], b[k], f"{path}/{k}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path} (length {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if (type(a) is type(b) and a == b) else f"{path} ({a!r} vs {b!r})"


# ---------------------------------------------------------------------------------------------------------
# the walk


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[ArtifactStore, dict[str, tuple[str, str]]]:
    """A tiny store with every upstream artifact a stage can take, twice (seed 0 and seed 1): name ->
    (path, key). Configs name their inputs explicitly, so friendly names do not matter."""
    from dsrl_cli.stages.alias import run_alias
    from dsrl_cli.stages.collect import run_collect
    from dsrl_cli.stages.distill_qw import run_distill_qw
    from dsrl_cli.stages.pretrain import run_pretrain
    from dsrl_cli.stages.train_qa import run_train_qa
    from dsrl_cli.stages.warmstart import run_warmstart

    store = tiny_store(tmp_path_factory.mktemp("keys") / "artifacts")
    out: dict[str, tuple[str, str]] = {}
    for name, friendly in (("dataset", "dataset.h5"), ("base", "base.ckpt")):
        artifact = store.resolve(friendly)
        out[name] = (str(artifact.main_path), artifact.key)

    def add(name: str, result: Any) -> None:
        out[name] = (str(result.path), result.key)

    refs = {"dataset": out["dataset"][0], "base": out["base"][0]}
    add("dataset2", run_collect(CollectConfig(episodes=10, seed=1), store))
    add("base2", run_pretrain(PretrainConfig(**(TINY_PRETRAIN | {"dataset": refs["dataset"], "seed": 1})), store))
    for suffix, seed in (("", 0), ("2", 1)):
        add(f"qa{suffix}", run_train_qa(TrainQAConfig(**(TINY_QA | refs), seed=seed), store))
        add(f"alias{suffix}", run_alias(AliasConfig(mode="retrieve", m=8, device="cpu", seed=seed, **refs), store))
        add(f"qw{suffix}", run_distill_qw(DistillConfig(**(TINY_DISTILL | refs), qa=out[f"qa{suffix}"][0],
                                                        alias=out[f"alias{suffix}"][0], seed=seed), store))
    add("stage1", run_warmstart(WarmstartConfig(**(TINY_WARMSTART | refs), qw=out["qw"][0]), store))
    return store, out


def _resolve(value: Any, refs: dict[str, tuple[str, str]]) -> Any:
    if isinstance(value, Ref):
        return refs[value.name][0]
    if isinstance(value, KeyOf):
        return refs[value.name][1]
    if callable(value):
        return value(refs)
    return value


def _run(scenario: Scenario, kwargs: dict[str, Any], store: ArtifactStore) -> dict[str, Any]:
    if scenario.module is alias:
        shutil.rmtree(alias.cache_path(store), ignore_errors=True)  # every alias run computes all its rows
    cfg = scenario.cls(**kwargs)
    result = scenario.runner(cfg, store, force=True)
    # The stage's key is the one `artifact_key` computes without running it: the walk tests the real path.
    assert result.key == scenario.module.artifact_key(cfg, store)
    return stored_content(result.artifact)


def walk(scenario: Scenario, store: ArtifactStore, refs: dict[str, tuple[str, str]]) -> dict[str, str]:
    """field -> "key" (the key changed) or "same bytes" (same key, identical stored content)."""
    cls, module = scenario.cls, scenario.module
    table = ALTERNATIVES[cls]
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in table]
    assert not missing, f"{cls.__name__} fields with no entry in ALTERNATIVES (tests/test_cache_keys.py): {missing}"
    base = {k: _resolve(v, refs) for k, v in scenario.base.items()}
    contents: dict[str, dict[str, Any]] = {}

    def content(kwargs: dict[str, Any]) -> dict[str, Any]:
        tag = repr(sorted(kwargs.items()))
        if tag not in contents:
            contents[tag] = _run(scenario, kwargs, store)
        return contents[tag]

    outcome: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        entry = table[f.name]
        baseline = base | {k: _resolve(v, refs) for k, v in entry.given.items()}
        current = getattr(cls(**baseline), f.name)
        variant = None
        for value in (_resolve(v, refs) for v in entry.values):
            if value == current:
                continue
            try:
                variant_key = module.artifact_key(cls(**(baseline | {f.name: value})), store)
            except BadInput:
                continue  # not valid in this scenario: try the next alternative
            variant = baseline | {f.name: value}
            break
        assert variant is not None, f"{scenario.name}: no valid alternative value for {f.name} in ALTERNATIVES"
        if variant_key != module.artifact_key(cls(**baseline), store):
            outcome[f.name] = "key"
            continue
        diff = first_difference(content(baseline), content(variant))
        assert diff is None, (f"{scenario.name}: changing {f.name} from {current!r} to {variant[f.name]!r} keeps "
                              f"the key but changes what is stored at {diff}")
        outcome[f.name] = "same bytes"
    return outcome


def test_every_config_field_changes_the_key_or_nothing_stored(world):
    store, refs = world
    report = {s.name: walk(s, store, refs) for s in SCENARIOS}
    # Every stage's config class is walked at least once.
    assert {s.cls for s in SCENARIOS} == set(ALTERNATIVES)
    # The fields the issue found lying are now in the key.
    assert report["warmstart offline-sac"]["candidate_clip"] == "key"
    for name in ("eval_every", "eval_episodes", "log_every"):
        assert report["online"][name] == "key"
    # And the ones meant to be cosmetic are really so (they ran and stored identical bytes).
    assert report["online"]["checkpoint_every"] == "same bytes"
    assert report["alias invert"]["batch_size"] == "same bytes"
