"""Alias throughput: rows/s of `alias_dataset` on random rows with a tiny base policy and a fresh LMDB cache.

    OMP_NUM_THREADS=1 python benchmarks/alias_throughput.py --rows 20000 --mode retrieve --m 64

Random `(obs_cond, a_head)` rows of the default task's shapes and an untrained flow policy (hidden 32,
depth 2, 4 Euler steps): a measure of the aliasing machinery (candidate draws, decode, cache writes),
not of alias quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsrl_cli.data.normalization import Normalizer  # noqa: E402
from dsrl_cli.models.flow_policy import FlowPolicy  # noqa: E402
from dsrl_cli.samplers.base_policy_sampler import BasePolicyMeta, BasePolicySampler  # noqa: E402
from dsrl_cli.samplers.noise_aliasing import AliasCache, alias_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--mode", choices=("retrieve", "invert"), default="retrieve")
    parser.add_argument("--m", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--multi-start", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    meta = BasePolicyMeta(obs_dim=5, act_dim=2, n_obs_steps=2, pred_horizon=8, act_horizon=4,
                          num_inference_steps=4, kind="flow")
    policy = FlowPolicy(10, 2, 8, hidden=args.hidden, depth=2)
    normalizer = Normalizer(np.zeros(5, np.float32), np.ones(5, np.float32), -np.ones(2, np.float32),
                            np.ones(2, np.float32))
    sampler = BasePolicySampler(policy, None, normalizer, meta)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((args.rows, 10)).astype(np.float32)
    head = rng.uniform(-1, 1, (args.rows, 4, 2)).astype(np.float32)
    params = ({"m": args.m} if args.mode == "retrieve" else
              {"steps": args.steps, "lr": 0.05, "multi_start": args.multi_start, "init": "random"})
    kwargs = {"seed": 0} if "seed" in alias_dataset.__code__.co_varnames else {
        "generator": torch.Generator().manual_seed(0)}
    with tempfile.TemporaryDirectory() as tmp, AliasCache(Path(tmp) / "alias.lmdb") as cache:
        t0, c0 = time.perf_counter(), time.process_time()
        _, err, computed = alias_dataset(sampler, obs, head, args.mode, params, cache, args.batch_size, **kwargs)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    # CPU seconds as well: on a shared machine they vary less than wall-clock ones.
    print(f"{args.mode} {params} rows {computed} in {seconds:.2f} s: {computed / seconds:,.0f} rows/s, "
          f"{computed / cpu:,.0f} rows per CPU-second (threads {torch.get_num_threads()}, "
          f"median err {float(np.median(err)):.4f})")


if __name__ == "__main__":
    main()
