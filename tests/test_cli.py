"""CLI contract: stdout carries only the result, stderr the humans' part, exit codes 0/1/2."""

import json
import os

import pytest
from typer.testing import CliRunner

from dsrl_cli.cli.app import app

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def quick_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "artifacts"
    result = invoke("pipeline", "--quick", "--artifacts", root, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.stderr
    return root, json.loads(result.stdout)


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("collect", "pretrain", "online", "eval", "pipeline", "artifacts", "diagnose"):
        assert command in result.stdout


def test_pipeline_json_is_one_object_and_rerun_is_cached(quick_store):
    root, first = quick_store
    assert first["cached"] is False and first["artifact"].endswith("eval.json")
    assert "prior" in first["results"]
    again = invoke("pipeline", "--quick", "--artifacts", root, "--device", "cpu", "--json")
    assert again.exit_code == 0
    lines = again.stdout.strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["cached"] is True


def test_last_stdout_line_is_artifact_path(quick_store):
    root, _ = quick_store
    result = invoke("collect", "--artifacts", root, "--episodes", 20)
    assert result.exit_code == 0
    path = result.stdout.strip().splitlines()[-1]
    assert path.endswith("dataset.h5") and os.path.exists(path)
    assert os.path.realpath(root / "dataset.h5") == os.path.realpath(path)


def test_artifacts_ls_and_show(quick_store):
    root, _ = quick_store
    listing = invoke("artifacts", "ls", "--artifacts", root, "--json")
    assert listing.exit_code == 0
    stages = {row["stage"] for row in json.loads(listing.stdout)["artifacts"]}
    assert {"collect", "pretrain", "eval"} <= stages
    shown = invoke("artifacts", "show", "base.ckpt", "--artifacts", root)
    assert shown.exit_code == 0 and json.loads(shown.stdout)["stage"] == "pretrain"


@pytest.mark.parametrize(
    "args",
    [
        ("collect", "--task", "no-such-task"),
        ("collect", "--episodes", "0"),
        ("collect", "--set", "bogus=1"),
        ("collect", "--set", "episodes=many"),
        ("pretrain", "--kind", "diffusion"),
        ("online", "--utd", "0"),
        ("online", "--env-steps", "-5"),
        ("online", "--num-envs", "0"),
        ("online", "--set", "target_subset=3"),
        ("eval", "--compare", "prior,prior"),
        ("eval", "--episodes", "0"),
        ("artifacts", "show", "nothing-here"),
    ],
)
def test_bad_input_exits_2_with_one_line(quick_store, args):
    root, _ = quick_store
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    result = invoke(*args, "--artifacts", root)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written


def test_missing_upstream_is_bad_input(tmp_path):
    result = invoke("pretrain", "--artifacts", tmp_path / "empty")
    assert result.exit_code == 2
    assert "dsrl collect" in result.stderr


def test_bad_import_file_never_overwrites(quick_store, tmp_path):
    root, _ = quick_store
    target = os.path.realpath(root / "dataset.h5")
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    result = invoke("collect", "--import", bad, "--artifacts", root)
    assert result.exit_code == 2 and "bad.h5" in result.stderr
    assert os.path.realpath(root / "dataset.h5") == target


def test_debug_env_shows_traceback(tmp_path):
    result = invoke("pretrain", "--artifacts", tmp_path / "empty", env={"DSRL_DEBUG": "1"})
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
