"""`dsrl artifacts ls`: what the store holds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.table import Table
from rich.text import Text

from dsrl_cli.store.store import ArtifactStore
from dsrl_cli.utils.console import console


def list_artifacts(root: Path, json_out: bool) -> None:
    store = ArtifactStore(root)
    artifacts, damaged = store.scan()
    friendly = store.friendly_targets()
    newest = {key: name for name, key in friendly.items()}
    partial = store.partial_runs()
    if json_out:
        rows = [{"stage": a.stage, "key": a.key, "path": str(a.main_path), "created": a.manifest.get("created"),
                 "friendly": newest.get(a.key)} for a in artifacts]
        sys.stdout.write(json.dumps({"artifacts": rows, "partial": [str(p) for p in partial],
                                     "damaged": [{"path": str(p), "error": why} for p, why in damaged]}) + "\n")
        return
    table = Table(title=f"artifacts in {root}")
    for col in ("stage", "key", "created", "friendly name", "seconds"):
        table.add_column(col)
    for a in artifacts:
        table.add_row(a.stage, a.key, a.manifest.get("created", ""), newest.get(a.key, ""),
                      str(a.manifest.get("seconds", "")))
    console.print(table)
    for p in partial:
        console.print(f"[yellow]partial run[/] {p} (rerun its command to resume)")
    for _, why in damaged:  # flagged, never silently dropped: its folder still takes space and a key
        console.print(Text(why, style="bold red"), soft_wrap=True)
    for a in artifacts:
        sys.stdout.write(f"{a.main_path}\n")
