"""What every command shares: common options, config resolution, output contract, error handling.

stdout carries only the result (the artifact path as the last line, or one JSON object with --json);
everything for humans goes to stderr. Known failures are one line on stderr with exit 2 (bad input)
or 1 (runtime); `DSRL_DEBUG=1` shows the full traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.text import Text

from dsrl_cli.config import build_config, load_yaml, parse_set_overrides
from dsrl_cli.errors import BadInput, DsrlError, storage_error_line
from dsrl_cli.stages.common import StageResult
from dsrl_cli.store import lock as key_lock
from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console

T = TypeVar("T")

ArtifactsOpt = Annotated[
    Path,
    typer.Option("--artifacts", envvar="DSRL_ARTIFACTS", help="Artifact store folder.", show_default=True),
]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default 0).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file with this stage's options.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override an option: key=value (repeatable).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute even when a cached artifact exists.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
# Upstream artifacts a stage reads: a key, a path, or (None) the store's default file for that stage.
BaseOpt = Annotated[str | None, typer.Option("--base", help="Base policy artifact (default base.ckpt).")]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", help="Dataset artifact (default dataset.h5).")]
AliasOpt = Annotated[str | None, typer.Option("--alias", help="Alias artifact (default alias.pt).")]
QaOpt = Annotated[str | None, typer.Option("--qa", help="Action critic artifact (default qa.ckpt).")]
QwOpt = Annotated[str | None, typer.Option("--qw", help="Latent critic artifact (default qw.ckpt).")]

DEFAULT_ARTIFACTS = Path("artifacts")


@dataclass(frozen=True)
class Common:
    artifacts: Path
    seed: int | None
    device: str | None
    config: Path | None
    sets: tuple[str, ...]
    force: bool
    json: bool

    def layers(self, given: Mapping[str, Any], section: str) -> list[dict[str, Any]]:
        """Config layers in precedence order: YAML file, explicit CLI options, --set."""
        file_layer = load_yaml(self.config) if self.config else {}
        if section in file_layer and isinstance(file_layer[section], dict):
            file_layer = dict(file_layer[section])
        cli_layer = {k: v for k, v in given.items() if v is not None}
        if self.seed is not None:
            cli_layer["seed"] = self.seed
        if self.device is not None:
            cli_layer["device"] = self.device
        return [file_layer, cli_layer, parse_set_overrides(self.sets)]

    def build(self, cls: type[T], given: Mapping[str, Any], section: str) -> T:
        return build_config(cls, *self.layers(given, section), section=section)


def common(
    artifacts: Path, seed: int | None, device: str | None, config: Path | None,
    sets: list[str] | None, force: bool, json_out: bool,
) -> Common:
    return Common(artifacts, seed, device, config, tuple(sets or ()), force, json_out)


def emit(result: StageResult, json_out: bool) -> None:
    if json_out:
        payload = {
            "artifact": str(result.path) if result.path else None,
            "key": result.key,
            "cached": result.cached,
            **result.summary,
        }
        sys.stdout.write(json.dumps(payload, default=_json_default) + "\n")
    else:
        if result.path is not None:
            sys.stdout.write(f"{result.path}\n")
    sys.stdout.flush()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    try:
        return float(obj)
    except (TypeError, ValueError):
        return str(obj)


def guarded(fn: Callable[[], None], store_root: Path | None = None) -> None:
    """Run a command body, mapping known failures to one stderr line and an exit code.

    A full disk, a read-only store or missing permissions are one line naming the path (exit 1); the store
    root stands in when the failing call named no file (a failed write() names none).
    """
    debug = os.environ.get("DSRL_DEBUG", "") not in ("", "0")
    try:
        fn()
    except typer.Exit:
        raise
    except DsrlError as exc:
        if debug:
            traceback.print_exc()
        _error_line(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:
        line = storage_error_line(exc, store_root)
        if line is None:
            _unknown(exc, debug)
        if debug:
            traceback.print_exc()
        _error_line(line)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]; rerun the same command to resume from the last checkpoint")
        raise typer.Exit(130) from None
    except Exception as exc:  # unknown failure: one line unless debugging
        line = storage_error_line(exc, store_root) if store_root is not None else None
        if line is None:
            _unknown(exc, debug)
        if debug:
            traceback.print_exc()
        _error_line(line)
        raise typer.Exit(1) from None


def _error_line(message: str) -> None:
    """`error: MESSAGE` on one stderr line; the message is plain text (brackets in it are not rich markup)."""
    console.print(Text.assemble(("error:", "bold red"), " ", message.replace("\n", " ")), soft_wrap=True)


def _unknown(exc: BaseException, debug: bool) -> NoReturn:
    if debug:
        traceback.print_exc()
    else:
        first = str(exc).splitlines()[0] if str(exc) else ""
        _error_line(f"{type(exc).__name__}: {first} (set DSRL_DEBUG=1 for the traceback)")
    raise typer.Exit(1) from None


def run_and_emit(c: Common, body: Callable[[ArtifactStore], StageResult]) -> None:
    def _inner() -> None:
        try:
            store = ArtifactStore(c.artifacts)
            result = body(store)
        finally:
            key_lock.release_all()  # a run that failed before publishing lets the next writer of its key in
        emit(result, c.json)

    guarded(_inner, c.artifacts)


__all__ = [
    "ArtifactsOpt", "BadInput", "Common", "ConfigOpt", "DEFAULT_ARTIFACTS", "DeviceOpt", "ForceOpt",
    "JsonOpt", "SeedOpt", "SetOpt", "common", "emit", "guarded", "run_and_emit",
]
