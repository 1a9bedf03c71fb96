"""Saved runs, read back: one run's config and metrics, several seeds grouped into a band for plots.

    runs = load_runs("runs/InvertedPendulum-v5/*/seed*")
    for algo, group in group_runs(runs).items():
        band = seed_band(group)                 # eval return aligned on the eval steps
        plt.plot(band.steps, band.mean, label=algo)
        plt.fill_between(band.steps, band.low, band.high, alpha=0.2)

The files of a run directory are described in :mod:`qsm_tutorial.storage`; this module reads
them through it and never imports the training loop.
"""

from __future__ import annotations

import glob
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from . import algos
from .storage import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    TIMING_FILE,
    RunDirError,
    atomic_write,
    load_checkpoint,
    parse_cell,
    read_csv,
    saved_fields,
)

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "METRICS_FILE", "TIMING_FILE", "Band", "RunResult", "columns_of",
    "curves_from_csv", "curves_from_runs", "group_runs", "agent_from_record", "load_agent", "load_run", "load_runs", "parse_cell",
    "read_csv", "seed_band", "available_pretrained", "export_pretrained", "load_pretrained",
]  # fmt: skip


def columns_of(rows: list[dict[str, Any]], columns: list[str]) -> dict[str, np.ndarray]:
    """Rows as one array per column: numbers as float (NaN where empty), ``step`` as int, words as str."""
    out: dict[str, np.ndarray] = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        if c == "step":
            out[c] = np.array(values, dtype=np.int64)
        elif any(isinstance(v, str) for v in values):
            out[c] = np.array(["" if v is None else v for v in values], dtype=str)
        else:
            out[c] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    return out


@dataclass
class RunResult:
    """One saved run: its config and its metrics (one array per CSV column, one entry per row)."""

    run_dir: Path
    config: dict
    metrics: dict[str, np.ndarray]
    timing: dict[str, np.ndarray]

    @property
    def algo(self) -> str:
        return self.config["algo"]

    @property
    def env_id(self) -> str:
        return self.config["env_id"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    def events(self, event: str) -> dict[str, np.ndarray]:
        """The columns restricted to rows of one ``event`` (``episode``, ``train`` or ``eval``)."""
        keep = self.metrics["event"] == event if "event" in self.metrics else np.zeros(0, bool)
        return {k: v[keep] for k, v in self.metrics.items()}

    def curve(self, key: str = "eval_return") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of the rows that have ``key``."""
        steps, values = self.metrics["step"], self.metrics[key]
        have = ~np.isnan(values)
        return steps[have], values[have]


def load_run(run_dir: str | Path) -> RunResult:
    """Read one run directory (``config.json``, ``metrics.csv`` and, if present, ``timing.csv``);
    a folder that is not a readable run raises :class:`~qsm_tutorial.storage.RunDirError` naming
    the file. A cut last CSV line is left out with a warning."""
    run_dir = Path(run_dir)
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}") from None
    except ValueError as e:  # (json's JSONDecodeError, UnicodeDecodeError)
        raise RunDirError(f"{run_dir / CONFIG_FILE} is not valid JSON ({e}); restore it") from None
    if not isinstance(config, dict) or not {"algo", "env_id", "seed"} <= config.keys():
        raise RunDirError(f"{run_dir / CONFIG_FILE} is not a qsm_tutorial run config (no algo, env_id and seed)")
    if not (run_dir / METRICS_FILE).exists():
        raise RunDirError(f"{run_dir} has {CONFIG_FILE} but no {METRICS_FILE} (a run that died before its first row?)")
    columns, rows = read_csv(run_dir / METRICS_FILE)
    timing: dict[str, np.ndarray] = {}
    if (run_dir / TIMING_FILE).exists():
        timing_columns, timing_rows = read_csv(run_dir / TIMING_FILE)
        timing = columns_of(timing_rows, timing_columns)
    return RunResult(run_dir, config, columns_of(rows, columns), timing)


def load_runs(pattern_or_dirs: str | Path | Iterable[str | Path]) -> list[RunResult]:
    """Every run matching a glob pattern (``"runs/InvertedPendulum-v5/*/seed*"``) or in a list of
    directories; directories without a ``config.json`` are skipped, and those that are not complete,
    readable runs (a foreign or broken ``config.json``, no ``metrics.csv``, a damaged line) too, with
    a warning that names each and why. Sorted by (env, algo, seed)."""
    if isinstance(pattern_or_dirs, (str, Path)):
        dirs = [Path(p) for p in glob.glob(str(pattern_or_dirs))]
    else:
        dirs = [Path(p) for p in pattern_or_dirs]
    runs = []
    for d in dirs:
        if not (d / CONFIG_FILE).exists():
            continue
        try:  # (no metrics.csv: a run that died before its first row, or a copy in progress)
            runs.append(load_run(d))
        except (RunDirError, OSError) as e:
            warnings.warn(f"skipping {d}: {e}", stacklevel=2)
    return sorted(runs, key=lambda r: (r.env_id, r.algo, r.seed))


def group_runs(runs: Iterable[RunResult], by: str = "algo") -> dict[Any, list[RunResult]]:
    """Runs grouped by a config key (``algo``, ``env_id``, ...), in first-seen order."""
    groups: dict[Any, list[RunResult]] = {}
    for r in runs:
        groups.setdefault(r.config[by], []).append(r)
    return groups


@dataclass
class Band:
    """A metric across seeds at the steps every seed has: mean, std, and min/max as the band."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_runs: int


def seed_band(runs: list[RunResult], key: str = "eval_return") -> Band:
    """``key`` of several runs (seeds) aligned on the steps all of them logged it (evaluation
    steps for ``eval_return``): per step the mean, the std and the min/max over runs."""
    if not runs:
        raise ValueError("seed_band needs at least one run")
    curves = [dict(zip(*map(np.ndarray.tolist, r.curve(key)))) for r in runs]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    values = np.array([[c[s] for s in steps] for c in curves], dtype=np.float64).reshape(len(runs), len(steps))
    return Band(np.array(steps, dtype=np.int64), values.mean(0), values.std(0), values.min(0), values.max(0), len(runs))


def curves_from_csv(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{ALGO: (steps [T], values [n_seeds, T])}`` from a ``learning_<env>.csv`` of
    ``benchmarks/learning.py`` (columns algo, seed, step, eval_return; NaN where a seed lacks a step),
    ready for ``viz.plot_learning_curves``; ``{}`` for a file without those columns."""
    columns, rows = read_csv(path)
    if not {"algo", "seed", "step", "eval_return"} <= set(columns):
        return {}
    c = columns_of(rows, ["algo", "seed", "step", "eval_return"])
    out = {}
    for algo in dict.fromkeys(c["algo"]):
        mine = c["algo"] == algo
        steps = np.unique(c["step"][mine])
        seeds = list(dict.fromkeys(c["seed"][mine]))
        values = np.full((len(seeds), len(steps)), np.nan)
        for k, seed in enumerate(seeds):
            rows_k = mine & (c["seed"] == seed)
            values[k, np.searchsorted(steps, c["step"][rows_k])] = c["eval_return"][rows_k]
        out[str(algo).upper()] = (steps, values)
    return out


def curves_from_runs(runs: Iterable[RunResult]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The same from run directories (``load_runs``): per algorithm, every seed's evaluation returns
    at the steps all seeds evaluated."""
    out = {}
    for algo, group in group_runs(runs, by="algo").items():
        band = seed_band(group)
        values = np.stack([np.interp(band.steps, *r.curve("eval_return")) for r in group])
        out[str(algo).upper()] = (band.steps, values)
    return out


def agent_from_record(record: dict[str, Any], device: str | None = None):
    """A fresh agent as a saved record describes it (``config.json`` or a manifest: ``algo``,
    ``obs_dim``, ``act_dim``, ``agent``), on ``device`` (default: the record's). Not compiled: an
    agent read back is for acting and analysis, and needs no C++ compiler."""
    agent_cls, config_cls = algos.get(record["algo"])
    fields = saved_fields(record["agent"], config_cls)
    if "compile" in fields:
        fields["compile"] = "off"
    if device is not None:
        fields["device"] = device
    return agent_cls(record["obs_dim"], record["act_dim"], config_cls(**fields))


def load_agent(run_dir: str | Path):
    """The agent of a saved run, restored from its latest checkpoint (on the device its config
    names: ``auto`` is CUDA when present)."""
    agent = agent_from_record(json.loads((Path(run_dir) / CONFIG_FILE).read_text()))
    agent.load_state_dict(load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)["agent"])
    return agent


# ----------------------------------------------------------------------------------------------
# Trained policies shipped with the package: qsm_tutorial/pretrained/<env>/<label>/
# ----------------------------------------------------------------------------------------------
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
POLICY_FILE, MANIFEST_FILE = "policy.pt", "manifest.json"


def acting_modules(agent) -> list[str]:
    """The networks an agent needs to act: the policy, and QSM's critics when it picks the best of
    several samples (``action_candidates`` > 1). Training-only state is left out."""
    needs_critic = getattr(agent.config, "action_candidates", 1) > 1
    return ["actor", "critic"] if needs_critic else ["actor"]


def export_pretrained(run_dir: str | Path, name: str, command: str, commit: str, root: str | Path = PRETRAINED_DIR) -> Path:
    """Write a run's final policy as ``<root>/<name>/policy.pt`` (weights only: loads with
    ``torch.load(weights_only=True)``) beside a ``manifest.json`` (algo, env, config, command,
    commit, steps, the last evaluation). Returns the folder."""
    run = load_run(run_dir)
    agent = load_agent(run_dir)
    modules = acting_modules(agent)
    out = Path(root) / name
    out.mkdir(parents=True, exist_ok=True)
    weights = {m: {k: v.detach().cpu().clone() for k, v in getattr(agent, m).state_dict().items()} for m in modules}
    atomic_write(out / POLICY_FILE, lambda f: torch.save(weights, f))
    evals = run.events("eval")
    manifest = {
        "name": name, "algo": run.algo, "env_id": run.env_id, "seed": run.seed, "modules": modules,
        "obs_dim": run.config["obs_dim"], "act_dim": run.config["act_dim"], "agent": run.config["agent"],
        "steps": int(evals["step"][-1]), "eval_return": float(evals["eval_return"][-1]),
        "eval_episodes": run.config["loop"]["eval_episodes"], "eval_protocol": run.config["protocol"]["evaluation"],
        "command": command, "commit": commit,
    }  # fmt: skip
    atomic_write(out / MANIFEST_FILE, lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    return out


def available_pretrained(root: str | Path = PRETRAINED_DIR) -> list[str]:
    """The names of the shipped policies, such as ``dmc/cartpole-swingup/qsm``."""
    root = Path(root)
    return sorted(str(p.parent.relative_to(root)) for p in root.glob(f"**/{MANIFEST_FILE}"))


def load_pretrained(name: str, root: str | Path = PRETRAINED_DIR, device: str = "cpu"):
    """A shipped policy as a ready agent (``agent.act(obs, deterministic=True)``), and its manifest
    as ``agent.manifest``. ``"dmc/cartpole-swingup/qsm"`` is its ``seed0``. Only the acting networks
    are loaded: the agent is not for training on."""
    folder = Path(root) / name
    if not (folder / MANIFEST_FILE).is_file() and (folder / "seed0" / MANIFEST_FILE).is_file():
        folder = folder / "seed0"
    if not (folder / MANIFEST_FILE).is_file():
        raise KeyError(f"no pretrained policy {name!r}; available: {', '.join(available_pretrained(root)) or 'none'}")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    agent = agent_from_record(manifest, device)
    weights = torch.load(folder / POLICY_FILE, map_location=device, weights_only=True)
    for module in manifest["modules"]:
        getattr(agent, module).load_state_dict(weights[module])
    agent.manifest = manifest
    return agent
