"""Human-facing output goes to stderr so stdout stays machine-readable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console

console = Console(stderr=True, highlight=False)


class JsonlLogger:
    """Appends one JSON object per line; flushed per record so a killed run keeps its log."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=float) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def truncate_after(self, step_key: str, step: int) -> None:
        """Drop records past `step` (a resumed run rewrites them)."""
        if not self.path.exists():
            return
        kept = [r for r in read_jsonl(self.path) if int(r.get(step_key, 0)) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            records.append(json.loads(line))
    return records
