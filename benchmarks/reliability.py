"""The README's reliability table, every figure measured by this command:

    python benchmarks/reliability.py                          # 20 random kills per stage, 30-minute soak
    python benchmarks/reliability.py --kills 20 --soak-minutes 3

It runs the tables of `tests/test_reliability.py` (the same cases and checks as the tests): every bad input
(exit 2, one stderr line, no traceback, the store byte-identical), every long stage killed at each chosen
point (torn checkpoint, after a checkpoint, renaming the main file, writing the manifest, re-pointing the
friendly name) and then rerun, `--kills` SIGKILLs at random moments per stage in subprocesses, the
concurrency cases, and the soak (`benchmarks/soak.py`; `--soak-minutes 0` skips it). Prints a markdown
table on stdout (the stages' progress goes to stderr) and writes `bench_out/reliability.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.soak import run_soak  # noqa: E402
from dsrl_cli.store import lock as key_lock  # noqa: E402
from dsrl_cli.store.store import ArtifactStore  # noqa: E402
from tests.test_cache_keys import stored_content  # noqa: E402
from tests.test_reliability import (  # noqa: E402
    BAD_INPUTS,
    CONCURRENCY_CASES,
    FAULT_STAGES,
    KILL_POINTS,
    build_upstream,
    check_bad_input,
    kill_and_rerun,
    make_outside,
    quick_pipeline,
    random_kills,
)

OUT = ROOT / "bench_out"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description="reliability figures for the README")
    parser.add_argument("--kills", type=int, default=20, help="random SIGKILLs per stage (0: skip)")
    parser.add_argument("--soak-minutes", type=float, default=30.0, help="soak duration (0: skip)")
    parser.add_argument("--sample-every", type=float, default=60.0, help="soak: seconds between RSS samples")
    parser.add_argument("--every", type=int, default=5000, help="soak: env steps between checkpoints and evals")
    args = parser.parse_args()
    report: dict[str, Any] = {"command": " ".join(["python benchmarks/reliability.py", *sys.argv[1:]])}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dsrl-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        finished = quick_pipeline(tmp / "finished" / "artifacts")
        outside = make_outside(_mkdir(tmp / "outside"))
        refused, failures = 0, []
        for i, case in enumerate(BAD_INPUTS):
            problem = check_bad_input(case, finished, outside, _mkdir(tmp / f"bad{i}"))
            refused += problem is None
            if problem:
                failures.append(f"{case.name}: {problem}")
        report["bad_inputs"] = {"tried": len(BAD_INPUTS), "refused": refused, "failures": failures}

        upstream = build_upstream(tmp / "upstream" / "artifacts").root
        references = {}
        for name, spec in FAULT_STAGES.items():
            root = _copy(upstream, tmp / f"ref-{name}")
            result = spec.run(spec.config, ArtifactStore(root))
            references[name] = {"key": result.key, "stored": stored_content(result.artifact)}
        kills: dict[str, dict[str, Any]] = {}
        for name in FAULT_STAGES:
            chosen, problems = 0, []
            for point in KILL_POINTS:
                root = _copy(upstream, tmp / f"kill-{name}-{point}")
                try:
                    problem = kill_and_rerun(name, point, root, references[name])
                finally:
                    key_lock.release_all()
                chosen += problem is None
                if problem:
                    problems.append(f"{point}: {problem}")
            landed, random_problems, swept = 0, [], 0
            if args.kills > 0:
                landed, random_problems, swept = random_kills(name, upstream, _mkdir(tmp / f"random-{name}"),
                                                              references[name], args.kills)
            kills[name] = {"chosen_points": len(KILL_POINTS), "chosen_survived": chosen, "random_kills": landed,
                           "random_failed_trials": len(random_problems), "random_swept_trials": swept,
                           "problems": problems + random_problems}
        report["kills"] = kills

        concurrency = {}
        for label, check in CONCURRENCY_CASES.items():
            concurrency[label] = check(upstream, _mkdir(tmp / f"conc-{len(concurrency)}"))
        report["concurrency"] = concurrency
    report["soak"] = run_soak(args.soak_minutes, args.sample_every, args.every) if args.soak_minutes > 0 else None
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reliability.json").write_text(json.dumps(report, indent=2))
    print(table(report))


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def table(report: dict[str, Any]) -> str:
    bad = report["bad_inputs"]
    rows = [("bad inputs refused (exit 2, one line, no traceback, store unchanged)",
             f"{bad['refused']} of {bad['tried']}")]
    for name, k in report["kills"].items():
        random_part = (f"; {k['random_kills']} random SIGKILLs, {k['random_failed_trials']} failed trials "
                       f"({k['random_swept_trials']} left a lock file or resume states, swept by the next writer)"
                       if k["random_kills"] else "")
        rows.append((f"kills survived: {name}", f"{k['chosen_survived']} of {k['chosen_points']} chosen points"
                                                f"{random_part}"))
    for label, problem in report["concurrency"].items():
        rows.append((f"concurrency: {label}", "holds" if problem is None else f"FAILS: {problem}"))
    soak = report["soak"]
    if soak is not None:
        rows.append((f"soak: online, {soak['num_envs']} envs, replay {soak['buffer_size']:,}, "
                     f"{soak['minutes']:g} min ({soak['env_steps']:,} env steps, checkpoint + eval every "
                     f"{soak['checkpoint_and_eval_every']:,})",
                     f"resident {soak['rss_first_mb']:.0f} -> {soak['rss_last_mb']:.0f} MB (max "
                     f"{soak['rss_max_mb']:.0f}; replay {soak['buffer_mb']:.0f} MB preallocated); "
                     f"{soak['growth_after_1min_mb']:+.1f} MB from minute 1 to the end"))
    lines = ["| case | result |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
    problems = bad["failures"] + [p for k in report["kills"].values() for p in k["problems"]]
    if problems:
        lines += ["", "problems:"] + [f"- {p}" for p in problems]
    lines += ["", f"({report['command']}, {report['seconds']:.0f} s)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
