"""Episodes on disk: our HDF5 files (robomimic layout) and imports of robomimic / D4RL files.

Written layout (robomimic convention, so robomimic tools can open it):

    data/                      attrs: total, env_args (JSON), dsrl (JSON meta)
      demo_{i}/                attrs: num_samples, success (omitted when unknown)
        obs [T,d] next_obs [T,d] actions [T,A] rewards [T] dones [T]
    stats/                     obs_mean, obs_std, act_min, act_max (the dataset's Normalizer)

`dones[t] = 1` only at a true terminal (last step of an episode that terminated); a time-limit
truncation is not terminal. Imports without `next_obs` / `next_observations` take the next step's
observation; the final step of a non-terminal episode then has no known successor. It is kept (its
action is good behaviour-cloning data) with `Episode.last_next_obs_known = False` (demo attribute
`last_next_obs_known` in our files; its `next_obs` row is a placeholder copy of `obs`), and TD learners
drop the chunks that would bootstrap from it (`ChunkData.td_valid`). Import meta counts such steps in
`unknown_successor_steps`.

`obs` may be a group of named arrays (the real robomimic layout, e.g. `robot0_eef_pos`, `object`):
it is concatenated in exactly the order of `obs_keys` (a `[T]` key becomes one column; keys not listed
are ignored, as robomimic's own `obs_keys` selects). A keyed group without `obs_keys` is refused, since
h5py lists keys alphabetically, not in the env's order. A flat `[T, d]` array already fixes its order,
so `obs_keys` is not applied to it (`meta["obs_format"] == "array"` says so).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dsrl_cli.data.normalization import Normalizer
from dsrl_cli.errors import BadInput

# robomimic's EnvType.GYM_TYPE: lets robomimic's env utilities recognise our files as gym envs.
ROBOMIMIC_GYM_TYPE = 2
_DEMO_RE = re.compile(r"^demo_(\d+)$")


@dataclass
class Episode:
    obs: np.ndarray  # [T, d]
    actions: np.ndarray  # [T, A]
    rewards: np.ndarray  # [T]
    next_obs: np.ndarray  # [T, d]
    terminated: bool  # the last step is a true terminal (not a time-limit truncation)
    success: bool | None = None
    # False: next_obs[-1] is a placeholder, the successor of a truncated episode's last step is unknown
    # (nothing may bootstrap from it). Irrelevant when `terminated` (a terminal never bootstraps).
    last_next_obs_known: bool = True

    def __post_init__(self) -> None:
        self.obs = np.asarray(self.obs, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        self.next_obs = np.asarray(self.next_obs, dtype=np.float32)
        self.terminated = bool(self.terminated)
        self.success = None if self.success is None else bool(self.success)
        self.last_next_obs_known = bool(self.last_next_obs_known)

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    @property
    def unknown_successor(self) -> bool:
        """The last step would need a successor (not terminal) that the data does not have."""
        return not self.terminated and not self.last_next_obs_known


# ---------------------------------------------------------------------------- validation
def _check_episode(ep: Episode, where: str) -> None:
    """Shapes, lengths and finiteness of one episode; `where` names the file and the episode."""
    for name, arr, ndim, layout in (
        ("obs", ep.obs, 2, "[T, obs_dim]"),
        ("next_obs", ep.next_obs, 2, "[T, obs_dim]"),
        ("actions", ep.actions, 2, "[T, act_dim]"),
        ("rewards", ep.rewards, 1, "[T]"),
    ):
        if arr.ndim != ndim:
            raise BadInput(f"{where}: {name} must be {ndim}-D {layout} but has shape {arr.shape}.")
    T = ep.obs.shape[0]
    if T == 0:
        raise BadInput(f"{where}: the episode has no steps.")
    for name, arr in (("next_obs", ep.next_obs), ("actions", ep.actions), ("rewards", ep.rewards)):
        if arr.shape[0] != T:
            raise BadInput(f"{where}: {name} has {arr.shape[0]} steps but obs has {T}.")
    if ep.next_obs.shape[1] != ep.obs.shape[1]:
        raise BadInput(
            f"{where}: next_obs has dimension {ep.next_obs.shape[1]} but obs has {ep.obs.shape[1]}."
        )
    arrays = (("obs", ep.obs), ("next_obs", ep.next_obs), ("actions", ep.actions), ("rewards", ep.rewards))
    for name, arr in arrays:
        if not np.all(np.isfinite(arr)):
            raise BadInput(f"{where}: {name} contains NaN or inf values.")


def _check_episodes(episodes: Sequence[Episode], source: str) -> None:
    if len(episodes) == 0:
        raise BadInput(f"{source} contains no episodes.")
    for i, ep in enumerate(episodes):
        _check_episode(ep, f"{source} episode {i}")
    d, a = episodes[0].obs.shape[1], episodes[0].actions.shape[1]
    for i, ep in enumerate(episodes):
        if ep.obs.shape[1] != d or ep.actions.shape[1] != a:
            raise BadInput(
                f"{source} episode {i} has obs_dim {ep.obs.shape[1]} and act_dim {ep.actions.shape[1]} "
                f"but episode 0 has obs_dim {d} and act_dim {a}."
            )


# ---------------------------------------------------------------------------- writing
def _json_default(value: Any) -> Any:
    # Meta often carries numpy scalars or paths from configs; store them as plain JSON.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _env_args(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "env_name": meta.get("env_id", meta.get("env_name", meta.get("task", ""))),
        "type": ROBOMIMIC_GYM_TYPE,
        "env_kwargs": meta.get("env_kwargs", {}),
    }


def write_dataset(
    path: str | Path,
    episodes: Sequence[Episode],
    meta: dict[str, Any],
    normalizer: Normalizer | None = None,
) -> Path:
    """Write episodes atomically (temp file in the same folder, then `os.replace`); returns the path."""
    path = Path(path)
    episodes = list(episodes)
    _check_episodes(episodes, f"dataset to write to {path}")
    if normalizer is None:
        normalizer = Normalizer.fit(episodes)
    try:
        meta_json = json.dumps(meta, default=_json_default, sort_keys=True)
        env_args_json = json.dumps(_env_args(meta), default=_json_default, sort_keys=True)
    except TypeError as exc:
        raise BadInput(f"dataset meta for {path} is not JSON serializable: {exc}.") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            total = 0
            for i, ep in enumerate(episodes):
                T = len(ep)
                g = data.create_group(f"demo_{i}")
                dones = np.zeros(T, dtype=np.float32)
                if ep.terminated:
                    dones[-1] = 1.0
                g.create_dataset("obs", data=ep.obs)
                g.create_dataset("next_obs", data=ep.next_obs)
                g.create_dataset("actions", data=ep.actions)
                g.create_dataset("rewards", data=ep.rewards)
                g.create_dataset("dones", data=dones)
                g.attrs["num_samples"] = T
                g.attrs["last_next_obs_known"] = bool(ep.last_next_obs_known)
                if ep.success is not None:
                    g.attrs["success"] = bool(ep.success)
                total += T
            data.attrs["total"] = total
            data.attrs["env_args"] = env_args_json
            data.attrs["dsrl"] = meta_json
            stats = f.create_group("stats")
            for name, arr in normalizer.to_dict().items():
                stats.create_dataset(name, data=np.asarray(arr, dtype=np.float32))
        os.replace(tmp, path)
    finally:
        # Leave no half-written file behind when anything above failed.
        if tmp.exists():
            tmp.unlink()
    return path


# ---------------------------------------------------------------------------- reading helpers
def _open_hdf5(path: Path) -> h5py.File:
    if not path.exists():
        raise BadInput(f"dataset file not found: {path}.")
    if not path.is_file():
        raise BadInput(f"dataset path {path} is not a file.")
    try:
        is_h5 = h5py.is_hdf5(str(path))
    except OSError:
        is_h5 = False
    if not is_h5:
        raise BadInput(f"dataset file {path} is not an HDF5 file.")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise BadInput(f"dataset file {path} cannot be opened as HDF5: {str(exc).splitlines()[0]}.") from exc


def _read_array(group: h5py.Group, key: str, where: str) -> np.ndarray:
    if key not in group:
        raise BadInput(f"{where} is missing the key {key!r}.")
    item = group[key]
    if not isinstance(item, h5py.Dataset):
        raise BadInput(f"{where}: {key!r} must be an array but is a group.")
    arr = np.asarray(item[()])
    if arr.dtype.kind not in "biuf":
        raise BadInput(f"{where}: {key!r} must be numeric but has dtype {arr.dtype}.")
    return arr


def _read_obs(group: h5py.Group, key: str, where: str, obs_keys: Sequence[str] | None) -> np.ndarray:
    """A flat [T, d] array as it is, or a group of named arrays concatenated in `obs_keys` order."""
    if key not in group:
        raise BadInput(f"{where} is missing the key {key!r}.")
    item = group[key]
    if isinstance(item, h5py.Dataset):
        return _read_array(group, key, where).astype(np.float32)
    found = sorted(item.keys())
    if not found:
        raise BadInput(f"{where}: the observation group {key!r} has no keys.")
    if not obs_keys:
        raise BadInput(
            f"{where}: {key} is a group of named keys ({', '.join(found)}) whose order the file does not "
            "give; list them in the env's observation order with obs_keys: in the task file or "
            "`dsrl collect --obs-keys a,b,c`."
        )
    missing = [name for name in obs_keys if name not in item]
    if missing:
        raise BadInput(
            f"{where}: observation key(s) {', '.join(missing)} of obs_keys are not in {key}; "
            f"the file has {', '.join(found)}."
        )
    parts = []
    for name in obs_keys:
        arr = _read_array(item, name, f"{where}/{key}")
        if arr.ndim == 1:
            arr = arr[:, None]  # a scalar feature per step
        if arr.ndim != 2:
            raise BadInput(
                f"{where}: observation key {key}/{name} must be [T] or [T, dim] but has shape {arr.shape} "
                "(image observations are not supported)."
            )
        parts.append(arr.astype(np.float32))
    lengths = {p.shape[0] for p in parts}
    if len(lengths) != 1:
        raise BadInput(
            f"{where}: the keys of observation group {key!r} have different lengths {sorted(lengths)}."
        )
    return np.concatenate(parts, axis=1)


def _obs_format(group: h5py.Group, key: str) -> str | None:
    item = group.get(key)
    if item is None:
        return None
    return "keys" if isinstance(item, h5py.Group) else "array"


def _parse_json_attr(attrs: h5py.AttributeManager, key: str, where: str) -> dict[str, Any] | None:
    if key not in attrs:
        return None
    raw = attrs[key]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    try:
        value = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise BadInput(f"{where}: attribute {key!r} is not valid JSON ({exc.msg}).") from exc
    if not isinstance(value, dict):
        raise BadInput(f"{where}: attribute {key!r} must be a JSON object.")
    return value


def _demo_names(data: h5py.Group) -> list[str]:
    # Numeric order (demo_2 before demo_10), as robomimic files are written.
    names = [(int(m.group(1)), k) for k in data if (m := _DEMO_RE.match(k))]
    return [k for _, k in sorted(names)]


def _is_robomimic(f: h5py.File) -> bool:
    return isinstance(f.get("data"), h5py.Group) and len(_demo_names(f["data"])) > 0


def _is_d4rl(f: h5py.File) -> bool:
    return "observations" in f and isinstance(f["observations"], h5py.Dataset)


def _flag_array(arr: np.ndarray, name: str, where: str, n: int) -> np.ndarray:
    arr = arr.reshape(-1) if arr.ndim == 2 and arr.shape[1] == 1 else arr
    if arr.ndim != 1 or arr.shape[0] != n:
        raise BadInput(f"{where}: {name} must have shape ({n},) but has shape {arr.shape}.")
    if not np.all(np.isfinite(arr.astype(np.float64))):
        raise BadInput(f"{where}: {name} contains NaN or inf values.")
    return arr.astype(bool)


def _rewards_1d(arr: np.ndarray, where: str) -> np.ndarray:
    # D4RL and some robomimic exports store rewards as [T, 1]; accept that, reject anything else.
    if arr.ndim == 2 and arr.shape[1] == 1:
        return arr[:, 0]
    if arr.ndim != 1:
        raise BadInput(f"{where}: rewards must be 1-D [T] but has shape {arr.shape}.")
    return arr


# ---------------------------------------------------------------------------- robomimic
def _read_robomimic(f: h5py.File, source: str, obs_keys: Sequence[str] | None) -> tuple[list[Episode], str]:
    """Episodes of `data/demo_*` and the obs format ("keys" or "array", the same in every demo)."""
    data = f["data"]
    episodes: list[Episode] = []
    formats: dict[str, str] = {}
    for name in _demo_names(data):
        g = data[name]
        where = f"{source}: data/{name}"
        if not isinstance(g, h5py.Group):
            raise BadInput(f"{where} must be a group.")
        fmt = _obs_format(g, "obs")
        if fmt is not None:
            formats.setdefault(fmt, name)
            if len(formats) > 1:
                raise BadInput(
                    f"{source}: obs is a group of keys in data/{formats['keys']} but a flat array in "
                    f"data/{formats['array']}; one file must use one layout."
                )
        obs = _read_obs(g, "obs", where, obs_keys)
        actions = _read_array(g, "actions", where).astype(np.float32)
        rewards = _rewards_1d(_read_array(g, "rewards", where), where).astype(np.float32)
        if obs.ndim != 2:
            raise BadInput(f"{where}: obs must be 2-D [T, obs_dim] but has shape {obs.shape}.")
        T = obs.shape[0]
        if T == 0:
            raise BadInput(f"{where}: the episode has no steps.")
        for key, arr in (("actions", actions), ("rewards", rewards)):
            if arr.shape[0] != T:
                raise BadInput(f"{where}: {key} has {arr.shape[0]} steps but obs has {T}.")
        dones = _flag_array(_read_array(g, "dones", where), "dones", where, T)
        terminated = bool(dones[-1])
        success_attr = g.attrs.get("success")
        success = None if success_attr is None else bool(success_attr)
        if "next_obs" in g:
            if _obs_format(g, "next_obs") != fmt:
                raise BadInput(f"{where}: next_obs and obs must both be arrays or both groups of keys.")
            next_obs = _read_obs(g, "next_obs", where, obs_keys)
            # Our own files mark a truncated episode's placeholder successor; other files have real ones.
            known = bool(g.attrs.get("last_next_obs_known", True))
        else:
            # The successor of step t is obs[t+1]; the last step's is unknown unless it was terminal
            # (then it is never used): a placeholder copy of obs[-1] fills the row.
            next_obs = np.concatenate([obs[1:], obs[-1:]], axis=0)
            known = terminated
        ep = Episode(obs, actions, rewards, next_obs, terminated, success, known)
        _check_episode(ep, where)
        episodes.append(ep)
    return episodes, next(iter(formats), "array")


# ---------------------------------------------------------------------------- D4RL
def _read_d4rl(f: h5py.File, source: str) -> list[Episode]:
    obs = _read_array(f, "observations", source).astype(np.float32)
    actions = _read_array(f, "actions", source).astype(np.float32)
    rewards = _rewards_1d(_read_array(f, "rewards", source), source).astype(np.float32)
    if obs.ndim != 2:
        raise BadInput(f"{source}: observations must be 2-D [N, obs_dim] but has shape {obs.shape}.")
    if actions.ndim != 2:
        raise BadInput(f"{source}: actions must be 2-D [N, act_dim] but has shape {actions.shape}.")
    N = obs.shape[0]
    if N == 0:
        raise BadInput(f"{source} contains no steps.")
    for name, arr in (("actions", actions), ("rewards", rewards)):
        if arr.shape[0] != N:
            raise BadInput(f"{source}: {name} has {arr.shape[0]} steps but observations has {N}.")
    terminals = _flag_array(_read_array(f, "terminals", source), "terminals", source, N)
    timeouts = _flag_array(_read_array(f, "timeouts", source), "timeouts", source, N)
    next_all: np.ndarray | None = None
    if "next_observations" in f:
        next_all = _read_array(f, "next_observations", source).astype(np.float32)
        if next_all.shape != obs.shape:
            raise BadInput(
                f"{source}: next_observations has shape {next_all.shape} but observations has {obs.shape}."
            )
    ends = np.flatnonzero(terminals | timeouts)
    starts = np.concatenate([[0], ends[:-1] + 1]) if len(ends) else ends
    bounds = [(int(s), int(e) + 1) for s, e in zip(starts, ends, strict=True)]
    last = int(ends[-1]) + 1 if len(ends) else 0
    if last < N:
        bounds.append((last, N))  # trailing unfinished segment: kept as a truncated episode
    episodes: list[Episode] = []
    for i, (s, e) in enumerate(bounds):
        # A step flagged both terminal and timeout is a true terminal: the env ended it.
        terminated = bool(terminals[e - 1])
        o, a, r = obs[s:e], actions[s:e], rewards[s:e]
        if next_all is not None:
            no, known = next_all[s:e], True
        else:
            # observations[e] belongs to the next episode, so the last step's successor is unknown
            # (a terminal's is never used): repeat the last obs there as a placeholder.
            no, known = np.concatenate([o[1:], o[-1:]], axis=0), terminated
        ep = Episode(o, a, r, no, terminated, None, known)
        _check_episode(ep, f"{source} episode {i} (steps {s}..{e - 1})")
        episodes.append(ep)
    return episodes


# ---------------------------------------------------------------------------- public readers
def read_dataset(path: str | Path) -> tuple[list[Episode], dict[str, Any]]:
    """Read a file written by `write_dataset`; meta is the stored `dsrl` attribute ({} when absent)."""
    path = Path(path)
    with _open_hdf5(path) as f:
        if not _is_robomimic(f):
            raise BadInput(f"dataset file {path} has no data/demo_* groups (not a dsrl/robomimic dataset).")
        episodes, _ = _read_robomimic(f, str(path), None)
        meta = _parse_json_attr(f["data"].attrs, "dsrl", str(path)) or {}
    _check_episodes(episodes, str(path))
    return episodes, meta


def read_normalizer(path: str | Path) -> Normalizer | None:
    """The `stats` group of a dataset file as a Normalizer, or None when the file has none."""
    path = Path(path)
    with _open_hdf5(path) as f:
        stats = f.get("stats")
        if not isinstance(stats, h5py.Group):
            return None
        return Normalizer.from_dict({k: _read_array(stats, k, f"{path}: stats") for k in stats})


def import_dataset(
    path: str | Path, obs_keys: Sequence[str] | None = None
) -> tuple[list[Episode], dict[str, Any]]:
    """Import a robomimic (`data/demo_*`) or D4RL (top-level `observations`, ...) HDF5 file.

    `obs_keys` orders (and selects) the keys of a robomimic obs group; see the module docstring.
    Meta: `source_format` (robomimic / d4rl), `source_path`, `obs_format` (keys / array), `obs_keys`
    (the keys used, or None for a flat array), `unknown_successor_steps` (truncated episodes' last steps
    without a known next observation), `env_args` (robomimic's JSON attribute, or None), plus the
    file's own `dsrl` meta when present.
    """
    path = Path(path)
    source = str(path)
    obs_keys = list(obs_keys) if obs_keys else None
    with _open_hdf5(path) as f:
        meta: dict[str, Any] = {}
        env_args = None
        if _is_robomimic(f):
            fmt = "robomimic"
            episodes, obs_format = _read_robomimic(f, source, obs_keys)
            attrs = f["data"].attrs
            meta.update(_parse_json_attr(attrs, "dsrl", source) or {})
            env_args = _parse_json_attr(attrs, "env_args", source)
        elif _is_d4rl(f):
            fmt = "d4rl"
            episodes, obs_format = _read_d4rl(f, source), "array"
        else:
            raise BadInput(
                f"dataset file {path} is neither robomimic (data/demo_* groups) nor D4RL "
                "(top-level observations, actions, rewards, terminals, timeouts)."
            )
    _check_episodes(episodes, source)
    meta.update({
        "source_format": fmt, "source_path": source, "obs_format": obs_format,
        "obs_keys": obs_keys if obs_format == "keys" else None, "env_args": env_args,
        "unknown_successor_steps": sum(ep.unknown_successor for ep in episodes),
    })
    return episodes, meta


def dataset_summary(episodes: Sequence[Episode]) -> dict[str, Any]:
    if len(episodes) == 0:
        raise BadInput("cannot summarize an empty list of episodes.")
    known = [ep.success for ep in episodes if ep.success is not None]
    returns = [float(np.sum(ep.rewards, dtype=np.float64)) for ep in episodes]
    return {
        "episodes": len(episodes),
        "steps": int(sum(len(ep) for ep in episodes)),
        "obs_dim": int(episodes[0].obs.shape[1]),
        "act_dim": int(episodes[0].actions.shape[1]),
        "success_rate": float(np.mean(known)) if known else None,
        "mean_return": float(np.mean(returns)),
        "unknown_successor_steps": sum(ep.unknown_successor for ep in episodes),
    }
