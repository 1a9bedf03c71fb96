"""Saved runs, read back: one run's config and metrics, several seeds grouped into a band for plots.

    runs = load_runs("runs/InvertedPendulum-v5/*/seed*")
    for algo, group in group_runs(runs).items():
        band = seed_band(group)                 # eval return aligned on the eval steps
        plt.plot(band.steps, band.mean, label=algo)
        plt.fill_between(band.steps, band.low, band.high, alpha=0.2)

A run directory (written by :func:`qsm_tutorial.train`) holds:

- ``config.json``: algo, env_id, seed, total_steps, the loop and algorithm fields, the evaluation
  protocol, versions;
- ``metrics.csv``: one row per event, ``event`` = ``episode`` (a training episode ended: its return
  and length), ``train`` (mean update metrics since the last such row) or ``eval`` (an evaluation:
  mean, std, min, max return and mean length); an empty cell is a metric that event does not have.
  It holds no wall-clock numbers, so the same seed on the same machine writes the same bytes;
- ``timing.csv``: wall-clock per ``train`` row: ``elapsed_s`` since the (re)start of the process,
  ``steps_per_s`` env steps per second since the previous row, evaluation time left out (the
  first row's window also holds the warm-up steps);
- ``checkpoint.pt``: the latest checkpoint (networks, optimisers, replay buffer, RNG states).
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TIMING_FILE = "timing.csv"
CHECKPOINT_FILE = "checkpoint.pt"


def parse_cell(text: str) -> int | float | str | None:
    """A CSV cell as written by the training loop: int, float (``repr``), a word, or None if empty."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` of a metrics/timing CSV; each row holds only its non-empty cells."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = [{k: v for k, v in ((k, parse_cell(t)) for k, t in row.items()) if v is not None} for row in reader]
        return list(reader.fieldnames or []), rows


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
    """Read one run directory (``config.json``, ``metrics.csv`` and, if present, ``timing.csv``)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    columns, rows = read_csv(run_dir / METRICS_FILE)
    timing: dict[str, np.ndarray] = {}
    if (run_dir / TIMING_FILE).exists():
        timing_columns, timing_rows = read_csv(run_dir / TIMING_FILE)
        timing = columns_of(timing_rows, timing_columns)
    return RunResult(run_dir, config, columns_of(rows, columns), timing)


def load_runs(pattern_or_dirs: str | Path | Iterable[str | Path]) -> list[RunResult]:
    """Every run matching a glob pattern (``"runs/InvertedPendulum-v5/*/seed*"``) or in a list of
    directories; directories without a ``config.json`` are skipped. Sorted by (env, algo, seed)."""
    if isinstance(pattern_or_dirs, (str, Path)):
        dirs = [Path(p) for p in glob.glob(str(pattern_or_dirs))]
    else:
        dirs = [Path(p) for p in pattern_or_dirs]
    runs = [load_run(d) for d in dirs if (d / CONFIG_FILE).exists()]
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


def load_agent(run_dir: str | Path):
    """The agent of a saved run, restored from its latest checkpoint (on the device its config
    names: ``auto`` is CUDA when present)."""
    from . import algos
    from .train import load_checkpoint

    config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    agent_cls, config_cls = algos.get(config["algo"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["agent"].items()}
    agent = agent_cls(config["obs_dim"], config["act_dim"], config_cls(**fields))
    agent.load_state_dict(load_checkpoint(Path(run_dir) / CHECKPOINT_FILE)["agent"])
    return agent
