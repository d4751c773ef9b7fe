"""Soak: `online` with 16 envs and a 1,000,000-transition replay buffer for a fixed time, resident memory
sampled every minute. A benchmark, not a test.

    python benchmarks/soak.py                       # 30 minutes, a sample every 60 s
    python benchmarks/soak.py --minutes 3 --every 1000   # a short check that still checkpoints

The run happens in a child process (a fresh store under a temporary folder: a small demonstration set and
a small base policy, then `online --num-envs 16 --set buffer_size=1000000` with a step budget it cannot
reach, stopped when the time is up). Its replay buffer's pages are touched right after allocation, so the
resident set includes the whole preallocated buffer from the first sample on: any growth after that is
memory the run keeps accumulating (a leak), not the buffer filling. The parent reads the child's VmRSS
from /proc every `--sample-every` seconds. Results: a table on stdout and `bench_out/soak.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench_out"
NUM_ENVS = 16
BUFFER = 1_000_000


def _rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def child(minutes: float, work: Path, every: int) -> None:
    """Runs in the child: prepare a store, then `online` until the time is up."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from dsrl_cli.buffers import macro_replay_buffer
    from dsrl_cli.stages.collect import CollectConfig, run_collect
    from dsrl_cli.stages.online import OnlineConfig, run_online
    from dsrl_cli.stages.pretrain import PretrainConfig, run_pretrain
    from dsrl_cli.store.store import ArtifactStore

    torch.set_num_threads(1)
    store = ArtifactStore(work / "artifacts")
    run_collect(CollectConfig(episodes=100), store)
    run_pretrain(PretrainConfig(steps=300, batch_size=128, hidden=128, device="cpu"), store)

    touched = {"bytes": 0}
    init = macro_replay_buffer.MacroReplayBuffer.__init__

    def touch(obj: Any) -> None:
        if isinstance(obj, np.ndarray):
            obj.fill(0)  # writing makes every page resident (np.zeros pages are mapped lazily)
            touched["bytes"] += obj.nbytes
        elif isinstance(obj, torch.Tensor):
            obj.zero_()
            touched["bytes"] += obj.numel() * obj.element_size()
        elif isinstance(obj, dict):
            for value in obj.values():
                touch(value)

    def preallocating_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        touch(vars(self))
        print(json.dumps({"event": "buffer", "bytes": touched["bytes"]}), flush=True)

    macro_replay_buffer.MacroReplayBuffer.__init__ = preallocating_init

    class TimeUp(Exception):
        pass

    deadline = time.monotonic() + minutes * 60
    last = {"env_steps": 0}

    def on_iteration(env_steps: int) -> None:
        last["env_steps"] = env_steps
        if time.monotonic() >= deadline:
            raise TimeUp

    cfg = OnlineConfig(num_envs=NUM_ENVS, buffer_size=BUFFER, env_steps=100_000_000, device="cpu",
                       checkpoint_every=every, eval_every=every)
    print(json.dumps({"event": "started"}), flush=True)
    with contextlib.suppress(TimeUp):
        run_online(cfg, store, on_iteration=on_iteration)
    print(json.dumps({"event": "done", "env_steps": last["env_steps"]}), flush=True)


def run_soak(minutes: float = 30.0, sample_every: float = 60.0, every: int = 5000,
             out: Path | None = OUT) -> dict[str, Any]:
    """Run the soak; returns its figures (also written to `out/soak.json` unless `out` is None)."""
    with tempfile.TemporaryDirectory(prefix="dsrl-soak-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, __file__, "--child", "--minutes", str(minutes), "--work", tmp,
                                 "--every", str(every)],
                                cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        events: dict[str, dict[str, Any]] = {}

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("{"):
                    record = json.loads(line)
                    events[record["event"]] = record | {"t": time.monotonic()}

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while "buffer" not in events and proc.poll() is None:
            time.sleep(0.2)
        samples: list[dict[str, float]] = []
        t0 = time.monotonic()
        while proc.poll() is None:
            rss = _rss_bytes(proc.pid)
            if rss is not None and "done" not in events:
                samples.append({"minute": round((time.monotonic() - t0) / 60, 2), "rss_mb": rss / 2**20})
            deadline = time.monotonic() + sample_every
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
        reader.join(timeout=5)
        if proc.returncode != 0 or not samples:
            raise RuntimeError(f"soak child failed (exit {proc.returncode})")
    rss = [s["rss_mb"] for s in samples]
    # The first minute includes warm-up (envs, the first updates and evaluation); growth after it is the leak test.
    settled = next((s["rss_mb"] for s in samples if s["minute"] >= 1.0), rss[-1])
    result = {
        "minutes": minutes, "sample_every_s": sample_every, "checkpoint_and_eval_every": every,
        "num_envs": NUM_ENVS, "buffer_size": BUFFER,
        "buffer_mb": events["buffer"]["bytes"] / 2**20, "env_steps": events.get("done", {}).get("env_steps"),
        "samples": samples, "rss_first_mb": rss[0], "rss_last_mb": rss[-1], "rss_max_mb": max(rss),
        "growth_mb": rss[-1] - rss[0], "max_growth_mb": max(rss) - rss[0],
        "rss_at_1min_mb": settled, "growth_after_1min_mb": rss[-1] - settled,
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "soak.json").write_text(json.dumps(result, indent=2))
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        ("run", f"online, {result['num_envs']} envs, replay {result['buffer_size']:,} transitions, "
                f"{result['minutes']:g} min, {result['env_steps']:,} env steps, a checkpoint and an evaluation "
                f"every {result['checkpoint_and_eval_every']:,} env steps"),
        ("preallocated replay (touched at start)", f"{result['buffer_mb']:.0f} MB"),
        ("resident memory, first / last / max sample", f"{result['rss_first_mb']:.0f} / {result['rss_last_mb']:.0f} / "
                                                       f"{result['rss_max_mb']:.0f} MB"),
        ("growth past the first sample, at the end / at most", f"{result['growth_mb']:+.1f} / "
                                                              f"{result['max_growth_mb']:+.1f} MB"),
        ("growth from minute 1 to the end", f"{result['growth_after_1min_mb']:+.1f} MB"),
        ("samples (minute: MB)", ", ".join(f"{s['minute']:g}: {s['rss_mb']:.0f}" for s in result["samples"])),
    ]
    return "\n".join(["| soak | figure |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-every", type=float, default=60.0, help="seconds between RSS samples")
    parser.add_argument("--every", type=int, default=5000,
                        help="env steps between checkpoints and evaluations (online's default 5000)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.minutes, args.work, args.every)
        return
    print(table(run_soak(args.minutes, args.sample_every, args.every)))


if __name__ == "__main__":
    main()
