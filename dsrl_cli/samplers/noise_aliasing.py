"""DSRL-NA noise aliasing: find `w` with `decode(obs_cond, w)_head ~= a_head`, plus an LMDB cache.

Two modes:
- `retrieve` (fast): M candidate noises per obs decoded in one batch, keep the nearest head;
- `invert` (accurate): Adam on `||decode(obs_cond, w)_head - a_head||^2` through the Euler steps, with
  several starts per row (the first optionally the retrieved `w`), keeping the best.

Reconstruction error everywhere is the mean squared error over the head (`Ha * A` numbers).

Purity: a cache entry is a function of (base fingerprint, mode, parameters, seed, device type, row) only,
never of which other rows were computed with it, in which batch, or before or after an interruption:
- each row draws its random numbers (retrieve's M candidates, invert's random starts) from its own
  generator, seeded from the run's seed and the row's digest (`row_seeds`), not from a shared stream;
- rows are computed in fixed-size blocks (`block_rows`: a power of two, the last block padded), so every
  decoder call has the same shape. CPU matrix products give a row bits that depend on the call's shape
  and on where the row falls at the edge of a thread's share (measured: a row decoded among fewer than
  16, or with 3 or 6 threads, can change in its last bits); with one shape and a power-of-two thread
  count (`alias_dataset` rounds the count down, e.g. 6 -> 4, while it computes) they do not depend on
  the neighbours.
Floating-point results still differ between devices (and may between torch builds), so the device type is
part of the namespace; `CACHE_FORMAT` is bumped whenever the computation of an entry changes.

Cache layout (LMDB, no pickle): namespace = first 16 hex chars of sha256 over the cache format, the
block size, the base policy's fingerprint, the mode, the sorted parameters, the seed and the device
type; entry key = namespace + sha1(obs_cond, a_head float32 bytes) (36 bytes); value = `w` float32
bytes + `err` float32 (fixed layout). Each namespace also has a small JSON record (key `b"#ns/" +
namespace`, sorted before all entries) with `w_shape`, mode, params and seed, for `stats` and diagnostics.
Writers are serialized by LMDB's own lock; every write is one short transaction per batch, opened only
after the batch is computed, so readers and other writers never wait on computation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import torch

from dsrl_cli.errors import BadInput, DsrlError

MODES = ("retrieve", "invert")
CACHE_FORMAT = 2  # 2: per-row generators, fixed blocks, seed and device in the namespace (1: one shared stream)
BLOCK = 4096  # decoder rows (rows x candidates or starts) per computation block
_NS_LEN = 16  # hex chars of the namespace (64 bits)
_DIGEST_LEN = 20  # sha1: entry key = namespace + digest
_META_PREFIX = b"#ns/"  # '#' sorts before hex digits, so the records form one prefix range
_READ_CHUNK = 65536  # rows per read transaction: keeps reader slots short-lived


# ---------------------------------------------------------------------------------------------------------
# alias computation


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    # Draw on the generator's own device (torch requires it), then move: same numbers on CPU and CUDA.
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def row_digests(obs_cond: Any, a_head: Any) -> list[bytes]:
    """sha1 of each row's `(obs_cond, a_head)` float32 bytes: the row's identity in the cache and its seeds."""
    obs, act = _f32(obs_cond), _f32(a_head)
    if len(obs) != len(act):
        raise BadInput(f"obs_cond has {len(obs)} rows but a_head has {len(act)}")
    obs, act = obs.reshape(len(obs), -1), act.reshape(len(act), -1)
    # The obs length goes into the hash so two splits of the same bytes cannot collide.
    tag = np.uint32(obs.shape[1]).tobytes()
    return [hashlib.sha1(tag + o.tobytes() + a.tobytes()).digest() for o, a in zip(obs, act, strict=True)]


def row_seeds(digests: Sequence[bytes], seed: int, stream: str) -> list[int]:
    """A 63-bit seed per row from the run's `seed`, the row's digest and what is drawn (`stream`), so a row's
    random numbers never depend on the other rows of its batch or on what was drawn before it."""
    head = stream.encode() + b"/" + int(seed).to_bytes(8, "little", signed=True)
    return [int.from_bytes(hashlib.sha256(head + d).digest()[:8], "little") >> 1 for d in digests]


def row_normals(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """`[len(seeds), *shape]` standard normals (CPU); row i from a generator seeded with `seeds[i]` alone."""
    out = torch.empty((len(seeds), *shape))
    gen = torch.Generator()
    for i, row_seed in enumerate(seeds):
        gen.manual_seed(row_seed)  # reseeding one generator costs far less than making one per row
        torch.randn(shape, generator=gen, out=out[i])
    return out


def block_rows(per_row: int, max_batch: int = BLOCK) -> int:
    """Rows per computation block: the largest power of two with `rows * per_row <= max_batch` (at least 1).

    A power of two keeps each thread's share of the block's decoder rows a whole number of rows (see the
    module docstring)."""
    rows = max(1, int(max_batch) // max(1, int(per_row)))
    return 1 << (rows.bit_length() - 1)


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """`x` with copies of its first row appended up to `rows` rows (their results are thrown away)."""
    if x.shape[0] >= rows:
        return x
    return torch.cat([x, x[:1].expand(rows - x.shape[0], *x.shape[1:])])


@contextlib.contextmanager
def _power_of_two_threads() -> Iterator[None]:
    """Lower torch's CPU thread count to a power of two for the duration (restored after): with a block of
    a power-of-two rows, every thread then gets whole rows and results do not depend on row positions."""
    before = torch.get_num_threads()
    wanted = 1 << (before.bit_length() - 1)
    if wanted != before:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != before:
            torch.set_num_threads(before)


def _prepare(sampler: Any, obs_cond: Any, a_head: Any) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    meta = sampler.meta
    device = torch.device(sampler.device)
    obs = torch.as_tensor(obs_cond, dtype=torch.float32, device=device)
    act = torch.as_tensor(a_head, dtype=torch.float32, device=device)
    horizon, act_dim = int(meta.pred_horizon), int(meta.act_dim)
    obs_dim = getattr(meta, "obs_cond_dim", None)
    if obs_dim is None:  # metas that only carry obs_dim and n_obs_steps
        obs_dim = int(meta.obs_dim) * int(meta.n_obs_steps)
    if obs.ndim != 2 or obs.shape[1] != int(obs_dim):
        raise BadInput(f"obs_cond has shape {tuple(obs.shape)}, the base policy expects [B, {obs_dim}]")
    expect = (obs.shape[0], int(meta.act_horizon), act_dim)
    if tuple(act.shape) != expect:
        raise BadInput(f"a_head has shape {tuple(act.shape)}, the base policy expects {list(expect)}")
    return obs, act, horizon, act_dim


def _head_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).flatten(1).mean(1)


@torch.no_grad()
def retrieve_alias(
    sampler: Any,
    obs_cond: torch.Tensor,
    a_head: torch.Tensor,
    m: int,
    generator: torch.Generator | None = None,
    max_batch: int = BLOCK,
    use_ema: bool = True,
    candidates: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best of `m` prior noises per row: returns `w [B,H,A]` and its head MSE `err [B]`.

    The noises are `candidates [B, m, H, A]` when given (`alias_dataset` passes per-row draws), else one
    draw of that shape from `generator`. Rows are decoded in blocks of `block_rows(m, max_batch)` rows, the
    last block padded, so every decoder call has the same shape.
    """
    if m < 1:
        raise BadInput(f"retrieve needs m >= 1 candidates, got {m}")
    obs, act, horizon, act_dim = _prepare(sampler, obs_cond, a_head)
    b = obs.shape[0]
    if candidates is None:
        candidates = _randn((b, m, horizon, act_dim), generator, obs.device)
    candidates = torch.as_tensor(candidates, dtype=torch.float32).to(obs.device)
    if tuple(candidates.shape) != (b, m, horizon, act_dim):
        raise BadInput(f"candidates have shape {tuple(candidates.shape)}, expected {[b, m, horizon, act_dim]}")
    rows = block_rows(m, max_batch)
    w_out = torch.empty((b, horizon, act_dim), device=obs.device)
    err_out = torch.empty(b, device=obs.device)
    for lo in range(0, b, rows):
        hi = min(b, lo + rows)
        n = hi - lo
        cand = _pad_rows(candidates[lo:hi], rows)
        obs_rep = _pad_rows(obs[lo:hi], rows).repeat_interleave(m, dim=0)
        head = sampler.decode_actions(obs_rep, cand.reshape(rows * m, horizon, act_dim), use_ema=use_ema,
                                      head_only=True)
        err = _head_mse(head, _pad_rows(act[lo:hi], rows).repeat_interleave(m, dim=0)).reshape(rows, m)[:n]
        best = err.argmin(dim=1)
        ar = torch.arange(n, device=obs.device)
        w_out[lo:hi] = cand[ar, best]
        err_out[lo:hi] = err[ar, best]
    return w_out, err_out


def invert_alias(
    sampler: Any,
    obs_cond: torch.Tensor,
    a_head: torch.Tensor,
    steps: int,
    lr: float,
    multi_start: int,
    init_w: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prior_weight: float = 0.0,
    max_batch: int = BLOCK,
    use_ema: bool = True,
    starts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Invert the frozen decoder by batched Adam over `w`, all starts of a block of rows at once.

    Start 0 of each row is `init_w` when given (e.g. the retrieved noise), the rest are N(0, I): `starts
    [B, multi_start, H, A]` when given (`alias_dataset` passes per-row draws), else drawn from `generator`.
    The objective per start is `mse_head + prior_weight * mean(w^2)`; a small `prior_weight` pulls `w`
    towards the prior's typical set so the latent critic sees in-distribution noise (0 = off).
    The best iterate seen per row (initial point included, by that objective) is returned, so starting
    from a retrieved `w` never ends worse than retrieval. `err` is the plain head MSE of the result.
    Gradients are taken with `torch.autograd.grad` w.r.t. `w` only: the base policy's parameters never
    receive `.grad`, even if a user's sampler forgot to freeze them. Rows go in blocks of
    `block_rows(multi_start, max_batch)` rows, the last one padded (every call has the same shape), and
    each start's update depends on that start alone (Adam is elementwise, the objective a sum over starts).
    """
    if multi_start < 1 or steps < 0 or lr <= 0 or prior_weight < 0:
        raise BadInput(
            f"invert needs multi_start >= 1, steps >= 0, lr > 0, prior_weight >= 0 "
            f"(got {multi_start}, {steps}, {lr}, {prior_weight})"
        )
    obs, act, horizon, act_dim = _prepare(sampler, obs_cond, a_head)
    b = obs.shape[0]
    if init_w is not None:
        init_w = torch.as_tensor(init_w, dtype=torch.float32, device=obs.device)
        if tuple(init_w.shape) != (b, horizon, act_dim):
            raise BadInput(f"init_w has shape {tuple(init_w.shape)}, expected {[b, horizon, act_dim]}")
    if starts is None:
        starts = _randn((b, multi_start, horizon, act_dim), generator, obs.device)
    starts = torch.as_tensor(starts, dtype=torch.float32).to(obs.device).clone()
    if tuple(starts.shape) != (b, multi_start, horizon, act_dim):
        raise BadInput(f"starts have shape {tuple(starts.shape)}, expected {[b, multi_start, horizon, act_dim]}")
    if init_w is not None:
        starts[:, 0] = init_w
    rows = block_rows(multi_start, max_batch)
    w_out = torch.empty((b, horizon, act_dim), device=obs.device)
    err_out = torch.empty(b, device=obs.device)
    for lo in range(0, b, rows):
        hi = min(b, lo + rows)
        w_blk, err_blk = _invert_rows(
            sampler, _pad_rows(obs[lo:hi], rows), _pad_rows(act[lo:hi], rows), _pad_rows(starts[lo:hi], rows),
            steps, lr, prior_weight, use_ema,
        )
        w_out[lo:hi], err_out[lo:hi] = w_blk[: hi - lo], err_blk[: hi - lo]
    return w_out, err_out


def _invert_rows(
    sampler: Any,
    obs: torch.Tensor,
    act: torch.Tensor,
    w0: torch.Tensor,
    steps: int,
    lr: float,
    prior_weight: float,
    use_ema: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    n, starts, horizon, act_dim = w0.shape
    w = w0.reshape(n * starts, horizon, act_dim).clone().requires_grad_(True)
    obs_rep = obs.repeat_interleave(starts, dim=0)
    act_rep = act.repeat_interleave(starts, dim=0)
    opt = torch.optim.Adam([w], lr=lr)
    best_obj = torch.full((n * starts,), float("inf"), device=obs.device)
    best_err = torch.zeros(n * starts, device=obs.device)
    best_w = w.detach().clone()
    with torch.enable_grad():  # callers may sit in no_grad (e.g. eval loops)
        for it in range(steps + 1):
            head = sampler.decode_actions(obs_rep, w, use_ema=use_ema, head_only=True)
            err = _head_mse(head, act_rep)
            obj = err + prior_weight * w.pow(2).flatten(1).mean(1) if prior_weight > 0 else err
            with torch.no_grad():  # remember each start's best iterate before stepping away from it
                better = obj < best_obj
                best_obj = torch.where(better, obj, best_obj)
                best_err = torch.where(better, err, best_err)
                best_w[better] = w[better]
            if it == steps:
                break
            # Sum over starts: each start's gradient is independent of the batch size.
            (grad,) = torch.autograd.grad(obj.sum(), [w])
            w.grad = grad
            opt.step()
    pick = best_obj.reshape(n, starts).argmin(dim=1)
    ar = torch.arange(n, device=obs.device)
    w_best = best_w.reshape(n, starts, horizon, act_dim)[ar, pick]
    err_best = best_err.reshape(n, starts)[ar, pick]
    return w_best.detach(), err_best.detach()


# ---------------------------------------------------------------------------------------------------------
# cache


def alias_namespace(fingerprint: str, mode: str, params: Mapping[str, Any], seed: int, device: str = "cpu",
                    block: int = BLOCK) -> str:
    """Namespace of one (cache format, base policy, mode, params, seed, device type, block size) combination."""
    try:
        blob = json.dumps({"format": CACHE_FORMAT, "block": int(block), "fingerprint": fingerprint, "mode": mode,
                           "params": dict(params), "seed": int(seed), "device": str(device)},
                          sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise BadInput(f"alias params must be plain JSON values: {exc}") from exc
    return hashlib.sha256(blob.encode()).hexdigest()[:_NS_LEN]


def _f32(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype="<f4")


def _entry_keys(namespace: str, obs_cond: Any, a_head: Any) -> list[bytes]:
    ns = namespace.encode()
    return [ns + digest for digest in row_digests(obs_cond, a_head)]


class AliasCache:
    """LMDB store of aliases. Safe for several processes at once; open one instance per process."""

    def __init__(self, path: str | Path, map_size: int = 1 << 28, readonly: bool = False) -> None:
        self.path = Path(path)
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not (self.path / "data.mdb").exists():
            raise BadInput(f"alias cache not found: {self.path}")
        try:
            self._env = lmdb.open(str(self.path), map_size=int(map_size), subdir=True, lock=True, max_dbs=0,
                                  readonly=readonly)
        except lmdb.Error as exc:
            raise BadInput(f"cannot open alias cache {self.path}: {exc}") from exc
        self._pid = os.getpid()
        self.readonly = readonly
        # Free reader slots left by killed processes so they cannot pin old pages forever.
        if not readonly:
            self._env.reader_check()

    # --- plumbing -------------------------------------------------------------------------------------

    def _check_pid(self) -> None:
        # An LMDB environment must not be used across fork(); fail loudly instead of corrupting locks.
        if os.getpid() != self._pid:
            raise DsrlError("an AliasCache was inherited through fork(); open a new AliasCache in the child")

    def _begin(self, write: bool) -> lmdb.Transaction:
        self._check_pid()
        while True:
            try:
                return self._env.begin(write=write)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size (0 = the size on disk) and retry.
                self._env.set_mapsize(0)

    def _write(self, fn: Callable[[lmdb.Transaction], None]) -> None:
        """Run `fn` in one write transaction; grow the map and retry when it is full."""
        while True:
            txn = self._begin(write=True)
            try:
                fn(txn)
                txn.commit()
                return
            except lmdb.MapFullError:
                txn.abort()  # no transaction may be open while resizing
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except BaseException:
                txn.abort()
                raise

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> AliasCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- api --------------------------------------------------------------------------------------------

    def namespace_meta(self, namespace: str) -> dict[str, Any] | None:
        txn = self._begin(write=False)
        try:
            raw = txn.get(_META_PREFIX + namespace.encode())
        finally:
            txn.abort()
        return None if raw is None else json.loads(bytes(raw).decode())

    def get_many(
        self, namespace: str, obs_cond: Any, a_head: Any, w_shape: tuple[int, ...] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Look rows up: `(found [N] bool, w [N, *w_shape] float32, err [N] float32)`.

        Rows not found hold zeros in `w` and NaN in `err`. `w_shape` defaults to the namespace's record;
        when neither is known (empty namespace) `w` has shape `[N, 0]`.
        """
        keys = _entry_keys(namespace, obs_cond, a_head)
        n = len(keys)
        if w_shape is None:
            meta = self.namespace_meta(namespace)
            w_shape = tuple(meta["w_shape"]) if meta else (0,)
        w_shape = tuple(int(s) for s in w_shape)
        size = int(np.prod(w_shape))
        found = np.zeros(n, bool)
        w = np.zeros((n, size), np.float32)
        err = np.full(n, np.nan, np.float32)
        for lo in range(0, n, _READ_CHUNK):
            txn = self._begin(write=False)
            try:
                for i in range(lo, min(n, lo + _READ_CHUNK)):
                    raw = txn.get(keys[i])
                    if raw is None:
                        continue
                    if len(raw) != 4 * (size + 1):
                        raise BadInput(
                            f"alias cache {self.path} holds entries of {len(raw) // 4 - 1} numbers, "
                            f"expected {size} (w shape {list(w_shape)})"
                        )
                    vals = np.frombuffer(raw, dtype="<f4")
                    w[i], err[i], found[i] = vals[:size], vals[size], True
            finally:
                txn.abort()
        return found, w.reshape(n, *w_shape), err

    def put_many(
        self,
        namespace: str,
        obs_cond: Any,
        a_head: Any,
        w: Any,
        err: Any,
        meta: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> int:
        """Store rows in one write transaction; returns how many were new.

        With `overwrite=False` the first writer of a key wins, so entries never change once readable
        and two processes racing on the same rows agree afterwards.
        """
        if self.readonly:
            raise DsrlError(f"alias cache {self.path} was opened read-only")
        keys = _entry_keys(namespace, obs_cond, a_head)
        w_arr, err_arr = _f32(w), _f32(err).reshape(-1)
        if len(w_arr) != len(keys) or len(err_arr) != len(keys):
            raise BadInput(f"put_many got {len(keys)} keys, {len(w_arr)} w rows and {len(err_arr)} errors")
        values = [
            wr.tobytes() + er.tobytes()
            for wr, er in zip(w_arr.reshape(len(keys), -1), err_arr.reshape(-1, 1), strict=True)
        ]
        record = dict(meta or {})
        record["w_shape"] = list(w_arr.shape[1:])
        meta_blob = json.dumps(record, sort_keys=True).encode()
        added = 0

        def fn(txn: lmdb.Transaction) -> None:
            nonlocal added
            added = 0  # a MapFull retry reruns the whole transaction
            txn.put(_META_PREFIX + namespace.encode(), meta_blob, overwrite=False)
            for k, v in zip(keys, values, strict=True):
                added += bool(txn.put(k, v, overwrite=overwrite))

        self._write(fn)
        return added

    def stats(self, namespace: str) -> dict[str, Any]:
        """Count and reconstruction-error summary of one namespace."""
        ns = namespace.encode()
        errs: list[float] = []
        txn = self._begin(write=False)
        try:
            cur = txn.cursor()
            if cur.set_range(ns):
                for key, val in cur:
                    if not key.startswith(ns):
                        break
                    if len(key) == len(ns) + _DIGEST_LEN:  # skip longer namespaces sharing the prefix
                        errs.append(float(np.frombuffer(val[-4:], dtype="<f4")[0]))
        finally:
            txn.abort()
        out: dict[str, Any] = {"namespace": namespace, "count": len(errs)}
        meta = self.namespace_meta(namespace)
        if meta:
            out["mode"], out["params"] = meta.get("mode"), meta.get("params")
        if errs:
            e = np.asarray(errs, np.float64)
            q = np.quantile(e, [0.1, 0.5, 0.9, 0.99])
            out.update(err_mean=float(e.mean()), err_min=float(e.min()), err_p10=float(q[0]),
                       err_p50=float(q[1]), err_p90=float(q[2]), err_p99=float(q[3]), err_max=float(e.max()))
        return out

    def namespaces(self) -> list[dict[str, Any]]:
        """Every namespace with its record (mode, params, w_shape), for `diagnose alias`."""
        out = []
        txn = self._begin(write=False)
        try:
            cur = txn.cursor()
            if cur.set_range(_META_PREFIX):
                for key, val in cur:
                    if not key.startswith(_META_PREFIX):
                        break
                    ns = bytes(key[len(_META_PREFIX) :]).decode()
                    out.append({"namespace": ns, **json.loads(bytes(val).decode())})
        finally:
            txn.abort()
        return out


# ---------------------------------------------------------------------------------------------------------
# dataset driver


def _check_params(mode: str, params: Mapping[str, Any]) -> None:
    if mode not in MODES:
        raise BadInput(f"unknown alias mode {mode!r}; use retrieve or invert")
    need = ["m"] if mode == "retrieve" else ["steps", "lr", "multi_start", "init"]
    if mode == "invert" and params.get("init") == "retrieve":
        need.append("m")
    missing = [k for k in need if k not in params]
    if missing:
        raise BadInput(f"alias mode {mode} needs parameters {missing}")
    if mode == "invert" and params["init"] not in ("random", "retrieve"):
        raise BadInput(f"invert init must be random or retrieve, got {params['init']!r}")


def retrieve_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The retrieve-mode params an invert run's `init=retrieve` step uses, so that it shares the cache
    namespace with `alias --mode retrieve --m M`."""
    out: dict[str, Any] = {"m": int(params["m"])}
    if "use_ema" in params:
        out["use_ema"] = bool(params["use_ema"])
    return out


def alias_dataset(
    sampler: Any,
    obs_cond: Any,
    a_head: Any,
    mode: str,
    params: Mapping[str, Any],
    cache: AliasCache,
    batch_size: int,
    progress_callback: Callable[[int, int], None] | None = None,
    seed: int = 0,
    fingerprint: str | None = None,
    block: int = BLOCK,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Aliases for every row, computing only what the cache lacks.

    Params: retrieve `{"m"}`; invert `{"steps", "lr", "multi_start", "init": "random"|"retrieve"}` plus
    `"m"` for `init=retrieve` and optional `"prior_weight"` (default 0); both accept `"use_ema"` (default
    True). Every row's alias is a function of the row, the params, `seed` and the base policy alone (see the
    module docstring), so the cache may serve it to any later run. Missing rows are computed about
    `batch_size` at a time (rounded up to whole blocks) and each batch is committed right away, so a killed
    run keeps its finished batches. `progress_callback(rows_done, rows_to_compute)` runs after each commit.
    `fingerprint` may pass `sampler.fingerprint()` precomputed (it hashes every weight). `block` (decoder
    rows per computation block, part of the namespace since the shape of a computation decides its bits)
    is for tests.
    Returns `(w [N,H,A], err [N], n_computed)` as float32 numpy.
    """
    _check_params(mode, params)
    if batch_size < 1:
        raise BadInput(f"alias batch size must be positive, got {batch_size}")
    obs_np, act_np = _f32(obs_cond), _f32(a_head)
    meta = sampler.meta
    w_shape = (int(meta.pred_horizon), int(meta.act_dim))
    device = torch.device(sampler.device).type
    fingerprint = sampler.fingerprint() if fingerprint is None else fingerprint
    namespace = alias_namespace(fingerprint, mode, params, seed, device, block)
    record = {"mode": mode, "params": dict(params), "fingerprint": fingerprint, "seed": int(seed), "device": device,
              "format": CACHE_FORMAT}
    found, w, err = cache.get_many(namespace, obs_np, act_np, w_shape=w_shape)
    missing = np.flatnonzero(~found)
    use_ema = bool(params.get("use_ema", True))
    per_row = int(params["m"]) if mode == "retrieve" else int(params["multi_start"])
    rows = block_rows(per_row, block)
    step = -(-batch_size // rows) * rows  # whole blocks per commit: no padding but at the very end
    for start in range(0, len(missing), step):
        idx = missing[start : start + step]
        obs_b, act_b = obs_np[idx], act_np[idx]
        digests = row_digests(obs_b, act_b)
        with _power_of_two_threads():
            if mode == "retrieve":
                m = int(params["m"])
                cand = row_normals(row_seeds(digests, seed, "retrieve"), (m, *w_shape))
                w_b, err_b = retrieve_alias(sampler, torch.from_numpy(obs_b), torch.from_numpy(act_b), m,
                                            max_batch=block, use_ema=use_ema, candidates=cand)
            else:
                init_w = None
                if params["init"] == "retrieve":
                    init_np, _, _ = alias_dataset(sampler, obs_b, act_b, "retrieve", retrieve_params(params),
                                                  cache, len(idx), seed=seed, fingerprint=fingerprint,
                                                  block=block)
                    init_w = torch.from_numpy(init_np)
                multi_start = int(params["multi_start"])
                starts = row_normals(row_seeds(digests, seed, "invert"), (multi_start, *w_shape))
                w_b, err_b = invert_alias(
                    sampler, torch.from_numpy(obs_b), torch.from_numpy(act_b), int(params["steps"]),
                    float(params["lr"]), multi_start, init_w=init_w,
                    prior_weight=float(params.get("prior_weight", 0.0)), max_batch=block, use_ema=use_ema,
                    starts=starts,
                )
        w_np, err_np = _f32(w_b), _f32(err_b)
        # Commit before reporting progress: whatever happens next, this batch is kept.
        cache.put_many(namespace, obs_b, act_b, w_np, err_np, meta=record)
        w[idx], err[idx] = w_np, err_np
        if progress_callback is not None:
            progress_callback(min(start + step, len(missing)), len(missing))
    return w, err, int(len(missing))
