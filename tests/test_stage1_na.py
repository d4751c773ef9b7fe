"""Stage 1 with DSRL-NA on tiny sizes: train-qa, alias (retrieve / invert, LMDB resume), distill-qw, diagnose."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dsrl_cli.cli.app import app
from dsrl_cli.models.action_q_network import ActionQNetwork
from dsrl_cli.models.latent_q_network import LatentQNetwork
from dsrl_cli.samplers.noise_aliasing import AliasCache, alias_dataset
from dsrl_cli.stages.alias import AliasConfig, load_alias_file, run_alias
from dsrl_cli.stages.common import load_action_critic, load_critic_from, load_sampler
from dsrl_cli.stages.distill_qw import DistillConfig, distill_loss, run_distill_qw
from dsrl_cli.stages.train_qa import TrainQAConfig, dataset_chunks, run_train_qa
from dsrl_cli.store.store import ArtifactStore
from tests.helpers import tiny_store

CPU = torch.device("cpu")
TINY_QA = dict(steps=30, batch_size=32, hidden=32, depth=2, device="cpu", checkpoint_every=10, log_every=10)
TINY_DISTILL = dict(steps=30, batch_size=32, hidden=32, depth=2, device="cpu", log_every=10)
RETRIEVE = dict(mode="retrieve", m=16, batch_size=128, device="cpu")
INVERT = dict(mode="invert", m=16, steps=15, lr=0.05, multi_start=2, init="retrieve", batch_size=128, device="cpu")
runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("stage1") / "artifacts")


@pytest.fixture(scope="module")
def stage1(store):
    """qa.ckpt, alias.pt (retrieve then invert, the friendly name ends on invert) and qw.ckpt."""
    qa = run_train_qa(TrainQAConfig(**TINY_QA), store)
    retrieve = run_alias(AliasConfig(**RETRIEVE), store)
    invert = run_alias(AliasConfig(**INVERT), store)
    assert (store.root / "alias.pt").resolve() == invert.path.resolve()
    qw = run_distill_qw(DistillConfig(**TINY_DISTILL), store)  # found through the friendly names
    # later tests repoint the friendly names, so reruns name their inputs explicitly
    refs = {"qa": str(qa.path), "alias": str(invert.path)}
    return {"qa": qa, "retrieve": retrieve, "invert": invert, "qw": qw, "refs": refs}


def test_train_qa_runs_and_rerun_is_cached(store, stage1):
    qa = stage1["qa"]
    assert not qa.cached and qa.path.name == "qa.ckpt"
    assert (store.root / "qa.ckpt").resolve() == qa.path.resolve()
    for key in ("td_error", "q_mean", "steps"):
        assert np.isfinite(qa.summary[key])
    assert run_train_qa(TrainQAConfig(**TINY_QA), store).cached
    critic = load_action_critic(qa.path, CPU)
    meta = load_sampler(store.resolve("base.ckpt"), CPU).meta
    assert (critic.act_horizon, critic.act_dim, critic.obs_cond_dim) == (meta.act_horizon, meta.act_dim,
                                                                         meta.obs_cond_dim)
    assert qa.artifact.manifest["inputs"]["base"] == store.resolve("base.ckpt").key


def test_train_qa_prior_target(store):
    result = run_train_qa(TrainQAConfig(**(TINY_QA | {"target": "prior", "steps": 10})), store)
    assert not result.cached and result.summary["target"] == "prior" and np.isfinite(result.summary["td_error"])


def test_train_qa_resumes_bit_identically(store):
    cfg = TrainQAConfig(**(TINY_QA | {"seed": 5}))
    ran: list[int] = []

    def interrupt(step: int) -> None:
        if step == 25:
            raise KeyboardInterrupt
        ran.append(step)

    with pytest.raises(KeyboardInterrupt):
        run_train_qa(cfg, store, on_step=interrupt)
    ran.clear()
    resumed = run_train_qa(cfg, store, on_step=ran.append)
    assert ran == list(range(20, 30))  # restarted from the step-20 checkpoint
    fresh = run_train_qa(cfg, store, force=True)
    a, b = load_action_critic(resumed.path, CPU), load_action_critic(fresh.path, CPU)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


def test_alias_retrieve_and_invert(store, stage1):
    retrieve, invert = stage1["retrieve"], stage1["invert"]
    n = retrieve.summary["pairs"]
    for result, mode in ((retrieve, "retrieve"), (invert, "invert")):
        assert result.path.name == "alias.pt" and result.summary["mode"] == mode
        blob = load_alias_file(result.path)
        assert blob["format"] == "dsrl-alias-v1" and blob["mode"] == mode
        assert blob["w"].shape == (n, 8, 2) and blob["w"].dtype == torch.float32
        assert blob["err"].shape == (n,) and blob["a_head"].shape == (n, 4, 2) and blob["obs_cond"].shape[0] == n
    assert retrieve.summary["computed"] == n
    # invert's retrieve init reused the retrieve run's cache rows; its own rows were all computed
    assert invert.summary["computed"] == n
    assert invert.summary["err_median"] < retrieve.summary["err_median"]
    assert (store.root / "alias.lmdb").is_dir() and not (store.root / "alias.lmdb").is_symlink()
    # same key: an artifact cache hit; --force: a new artifact made entirely from the LMDB cache
    assert run_alias(AliasConfig(**RETRIEVE), store).cached
    forced = run_alias(AliasConfig(**RETRIEVE), store, force=True)
    assert not forced.cached and forced.summary["computed"] == 0 and forced.summary["from_cache"] == n
    torch.testing.assert_close(load_alias_file(forced.path)["w"], load_alias_file(retrieve.path)["w"])
    # the reconstruction error recorded is the decoder's actual error for the stored w
    blob = load_alias_file(invert.path)
    sampler = load_sampler(store.resolve("base.ckpt"), CPU)
    head = sampler.decode_actions(blob["obs_cond"][:20], blob["w"][:20], head_only=True)
    torch.testing.assert_close((head - blob["a_head"][:20]).pow(2).flatten(1).mean(1), blob["err"][:20],
                               atol=1e-5, rtol=1e-4)


def test_alias_killed_halfway_reruns_only_missing_rows(store):
    # its own LMDB namespace; 64 candidates make blocks of 64 rows, so batches of 64 rows are committed
    cfg = AliasConfig(mode="retrieve", m=64, batch_size=64, device="cpu")

    def kill_after_two(done: int, total: int) -> None:
        if done >= 128:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_alias(cfg, store, on_batch=kill_after_two)
    partial = [p for p in store.partial_runs() if p.parent.name == "alias"]
    assert len(partial) == 1
    result = run_alias(cfg, store)
    assert result.key == partial[0].name and not result.cached
    assert result.summary["computed"] == result.summary["pairs"] - 128
    assert result.summary["from_cache"] == 128
    assert np.isfinite(load_alias_file(result.path)["err"].numpy()).all()


def test_distill_qw_runs_cached_and_loads_for_init_qw(store, stage1):
    qw = stage1["qw"]
    assert not qw.cached and qw.path.name == "qw.ckpt"
    for key in ("final_loss", "holdout_prior_mae"):
        assert np.isfinite(qw.summary[key])
    assert run_distill_qw(DistillConfig(**TINY_DISTILL, **stage1["refs"]), store).cached
    critic = load_critic_from(qw.path, CPU)
    meta = load_sampler(store.resolve("base.ckpt"), CPU).meta
    assert isinstance(critic, LatentQNetwork)
    assert critic.w_dim == meta.pred_horizon * meta.act_dim and critic.obs_cond_dim == meta.obs_cond_dim
    for online_p, target_p in zip(critic.online_params(), critic.target_params(), strict=True):
        torch.testing.assert_close(online_p, target_p)  # targets hard-copied after training
    # exactly what `dsrl online --init-qw qw.ckpt` does with it
    from dsrl_cli.stages.online import OnlineConfig, build_models

    sampler = load_sampler(store.resolve("base.ckpt"), CPU)
    _, q = build_models(OnlineConfig(device="cpu"), sampler, CPU, None, qw.artifact)
    assert isinstance(q, LatentQNetwork)


def test_distill_qw_resumes_bit_identically(store, stage1):
    cfg = DistillConfig(**(TINY_DISTILL | stage1["refs"] | {"seed": 4, "checkpoint_every": 10}))
    ran: list[int] = []

    def interrupt(step: int) -> None:
        if step == 15:
            raise KeyboardInterrupt
        ran.append(step)

    with pytest.raises(KeyboardInterrupt):
        run_distill_qw(cfg, store, on_step=interrupt)
    ran.clear()
    resumed = run_distill_qw(cfg, store, on_step=ran.append)
    assert ran == list(range(10, 30))
    fresh = run_distill_qw(cfg, store, force=True)
    assert resumed.summary["holdout_prior_mae"] == fresh.summary["holdout_prior_mae"]
    a, b = load_critic_from(resumed.path, CPU), load_critic_from(fresh.path, CPU)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


@pytest.mark.parametrize("source", ["alias", "prior"])
def test_distill_single_sources(store, stage1, source):
    result = run_distill_qw(DistillConfig(**(TINY_DISTILL | stage1["refs"] | {"source": source, "steps": 10})), store)
    assert not result.cached and result.summary["source"] == source
    assert result.artifact.manifest["inputs"]["alias"] == (None if source == "prior" else stage1["invert"].key)


def test_distill_target_is_detached(store):
    sampler = load_sampler(store.resolve("base.ckpt"), CPU)
    meta = sampler.meta
    qa = ActionQNetwork(meta.obs_cond_dim, meta.act_horizon, meta.act_dim, hidden=16, depth=1)  # trainable
    qw = LatentQNetwork(meta.obs_cond_dim, meta.pred_horizon * meta.act_dim, hidden=16, depth=1)
    obs = torch.randn(6, meta.obs_cond_dim)
    alias_part = (obs, torch.randn(6, meta.pred_horizon, meta.act_dim), torch.rand(6, meta.act_horizon, meta.act_dim))
    out = distill_loss(qw, qa, sampler, alias_part, obs, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert all(p.grad is None for p in qa.parameters())
    assert all(p.grad is not None for p in qw.parameters())
    assert all(p.grad is None for p in sampler.policy.parameters())


def test_diagnose_alias(store, stage1):
    from dsrl_cli.stages.diagnose import diagnose_alias

    report = diagnose_alias(store.root)
    assert set(report["modes"]) == {"retrieve", "invert"}
    assert report["modes"]["invert"]["median"] < report["modes"]["retrieve"]["median"]
    assert report["plot"].endswith("alias_errors.png")
    result = runner.invoke(app, ["diagnose", "alias", "--artifacts", str(store.root), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["modes"]["retrieve"]["n"] == stage1["retrieve"].summary["pairs"]


def test_cli_json_smoke(store, stage1):
    root = str(store.root)
    tiny = ["--set", "hidden=16", "--set", "depth=1", "--set", "batch_size=16", "--seed", "3"]
    commands = [
        ["train-qa", "--steps", "5", "--target", "prior", *tiny],
        ["alias", "--mode", "invert", "--steps", "3", "--multi-start", "1", "--init", "random", "--max-pairs", "50",
         "--seed", "3"],
        ["distill-qw", "--source", "both", "--steps", "5", *tiny],
    ]
    expect = ["qa.ckpt", "alias.pt", "qw.ckpt"]
    for args, name in zip(commands, expect, strict=True):
        result = runner.invoke(app, [*args, "--artifacts", root, "--device", "cpu", "--json"])
        assert result.exit_code == 0, (args, result.stderr)
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1
        payload = json.loads(lines[0])
        assert payload["artifact"].endswith(name) and payload["cached"] is False and payload["key"]
    again = runner.invoke(app, [*commands[1], "--artifacts", root, "--device", "cpu"])
    assert again.exit_code == 0 and again.stdout.strip().splitlines()[-1].endswith("alias.pt")


@pytest.mark.parametrize(
    "args",
    [
        ("alias", "--m", "0"),
        ("alias", "--mode", "nope"),
        ("alias", "--steps", "-1"),
        ("distill-qw", "--source", "nope"),
        ("distill-qw", "--set", "prior_fraction=1.5"),
        ("train-qa", "--target", "nope"),
        ("train-qa", "--steps", "0"),
    ],
)
def test_bad_options_exit_2(store, args):
    result = runner.invoke(app, [*args, "--artifacts", str(store.root)])
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["train-qa", "alias", "distill-qw"])
def test_missing_inputs_exit_2(tmp_path, command):
    result = runner.invoke(app, [command, "--artifacts", str(tmp_path / "empty")])
    assert result.exit_code == 2
    assert "dsrl" in result.stderr  # the hint names the command to run first
    assert not ArtifactStore(tmp_path / "empty").partial_runs()


def test_alias_seed_gets_its_own_aliases(store, stage1):
    retrieve = stage1["retrieve"]
    other = run_alias(AliasConfig(**RETRIEVE, seed=1), store)
    assert other.key != retrieve.key
    assert other.summary["computed"] == other.summary["pairs"]  # nothing reused from seed 0's namespace
    w0, w1 = load_alias_file(retrieve.path)["w"], load_alias_file(other.path)["w"]
    assert (w0 != w1).flatten(1).any(1).float().mean() > 0.9


def test_alias_invert_resumed_equals_uninterrupted_and_batch_size_is_cosmetic(tmp_path):
    # 32 starts per row make blocks of 128 rows, so batch_size 128 commits the 281 pairs in 3 batches.
    cfg = AliasConfig(mode="invert", m=8, steps=3, multi_start=32, init="retrieve", batch_size=128, device="cpu")
    killed = tiny_store(tmp_path / "a")

    def kill_after_one(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_alias(cfg, killed, on_batch=kill_after_one)
    resumed = run_alias(cfg, killed)
    assert resumed.summary["from_cache"] == 128
    fresh = run_alias(AliasConfig(**(cfg.__dict__ | {"batch_size": 1000})), tiny_store(tmp_path / "b"))
    assert fresh.key == resumed.key and fresh.summary["computed"] == fresh.summary["pairs"]
    a, b = load_alias_file(resumed.path), load_alias_file(fresh.path)
    for name in ("w", "err", "obs_cond", "a_head"):
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("mode, params", [("retrieve", {"m": 16}),
                                          ("invert", {"steps": 3, "lr": 0.05, "multi_start": 1, "init": "random"}),
                                          ("invert", {"steps": 3, "lr": 0.05, "multi_start": 4, "init": "random"})])
def test_alias_rows_of_the_real_decoder_ignore_their_batch(store, tmp_path, mode, params):
    """A row computed among 2 others, among 99 others, or inside a shuffled superset gives the same bits:
    CPU matrix products alone would not (fixed-size blocks make them)."""
    sampler = load_sampler(store.resolve("base.ckpt"), CPU)
    chunks = dataset_chunks(store.resolve("dataset.h5"), sampler)
    obs, head = chunks.obs_cond[:200], chunks.a_head[:200]
    order = np.random.default_rng(1).permutation(200)
    runs = {}
    for name, rows in (("three", np.arange(60, 63)), ("hundred", np.arange(10, 110)), ("all", order)):
        with AliasCache(tmp_path / name) as cache:
            runs[name] = alias_dataset(sampler, obs[rows], head[rows], mode, params, cache, 100, seed=0)[:2]
    where = np.argsort(order)
    for name, rows in (("three", np.arange(60, 63)), ("hundred", np.arange(10, 110))):
        for got, want in zip(runs[name], runs["all"], strict=True):
            np.testing.assert_array_equal(got, want[where[rows]])
