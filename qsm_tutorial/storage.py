"""Run directories: file names, atomic writes, the CSV log, checkpoints, and the errors a user can fix.

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
- ``checkpoint.pt``: the latest checkpoint (networks, optimisers, replay buffer, RNG states);
- ``tensorboard/`` (with ``--tensorboard``): event files holding the scalars of ``metrics.csv``.

Every file is replaced atomically (a hidden temp file, then ``os.replace``) or grows by one whole
CSV row at a time, so a kill at any moment leaves readable files; bad input is refused before
anything is written. This module knows files, not training: it imports neither the loop nor the CLI.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import sys
import time
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Collection, Iterator

import numpy as np
import torch

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
TIMING_FILE = "timing.csv"
CHECKPOINT_FILE = "checkpoint.pt"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_FORMAT = "qsm_tutorial checkpoint v1"
TEMP_SUFFIX = ".tmp"  # temp files are hidden: ".<name>.<random>.tmp"
LOCK_FILE = ".lock"  # exists only while a process writes the run: names it
STATUS_FILE = "status.json"  # written with each checkpoint: where the run stands, read without loading it

# metrics.csv starts with these columns; the agent's update metrics follow, in the order of its
# first update's dict.
METRIC_COLUMNS = [
    "step", "event", "episode", "episode_return", "episode_length", "updates",
    "eval_return", "eval_return_std", "eval_return_min", "eval_return_max", "eval_length",
]  # fmt: skip
TIMING_COLUMNS = ["step", "elapsed_s", "steps_per_s"]


class TrainError(Exception):
    """A problem the user can fix; the CLI prints it as one line."""


class RunDirError(TrainError):
    """The run directory cannot be used as asked (another run's, nothing to resume, ...)."""


class CheckpointError(TrainError):
    """A checkpoint that is missing, corrupt, or not one this run can continue from."""


class FileSystemError(TrainError, OSError):
    """A file of the run could not be written or read (full disk, read-only, permissions, ...):
    one line that says what failed, on which path, and what to do. Files written before stay intact."""


_FS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space, then run the command again (with --resume if the run dir has a "
                  "checkpoint.pt; the last one is intact)",
    errno.EDQUOT: "the disk quota is used up: free space, then run the command again (with --resume if the run dir "
                  "has a checkpoint.pt; the last one is intact)",
    errno.EROFS: "the file system is read-only: choose a --run-dir on a writable one",
    errno.EACCES: "permission denied: choose a --run-dir you can write to, or fix its permissions",
    errno.EPERM: "permission denied: choose a --run-dir you can write to, or fix its permissions",
    errno.ENOENT: "a folder on that path is missing (removed while the run was writing?): choose another --run-dir",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another --run-dir",
    errno.EEXIST: "a part of that path is a file, not a folder: choose another --run-dir",
}  # fmt: skip


def file_system_error(e: OSError, path: str | os.PathLike | None = None, what: str = "write") -> FileSystemError:
    """``e`` as one line: ``cannot <what> <path>: <reason>; <what to do>``."""
    path = e.filename if e.filename is not None else path
    reason = e.strerror or str(e) or type(e).__name__
    advice = _FS_ADVICE.get(e.errno, "check the path and the disk, then run the command again")
    where = f"cannot {what} {path}" if path is not None else "a file operation failed"
    return FileSystemError(f"{where}: {reason}; {advice}")


@contextlib.contextmanager
def file_errors(path: str | os.PathLike, what: str = "write") -> Iterator[None]:
    """Inside the block an ``OSError`` becomes a one-line :class:`FileSystemError` naming ``path``."""
    try:
        yield
    except FileSystemError:
        raise
    except OSError as e:
        raise file_system_error(e, path, what) from e


# ----------------------------------------------------------------------------------------------
# Files that are never half-written
# ----------------------------------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a hidden temp file in the same folder, fsync, then ``os.replace``:
    readers see the old file or the new one, never a part of either."""
    # open(..., "xb") rather than mkstemp: the file gets the usual permissions (umask), not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
    try:
        with file_errors(path), open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with file_errors(path):
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_write`'s temp files (left behind by a kill)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


# ----------------------------------------------------------------------------------------------
# CSV: written one whole row at a time, read back with the last line ignored if a kill cut it
# ----------------------------------------------------------------------------------------------
def format_cell(value: Any) -> str:
    """A CSV cell: '' for missing, exact ``repr`` for floats (the same bytes for the same number)."""
    if value is None:
        return ""
    if isinstance(value, (int, np.integer, str)):
        return str(value)
    return repr(float(value))


def parse_cell(text: str | None) -> int | float | str | None:
    """A CSV cell as written by the training loop: int, float (``repr``), a word, or None if empty."""
    if text is None or text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv(path: str | Path, warn: Callable[[str], None] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` of a metrics/timing CSV; each row holds only its non-empty cells. A last
    line cut short (no newline, or fewer cells than the header: a kill, a power cut or a full disk
    during a write) is not a row and is left out, with a warning (``warn(message)``, by default
    ``warnings.warn``). Any other malformed line is a :class:`RunDirError` naming the file and line."""
    path = Path(path)
    with file_errors(path, "read"):
        text = path.read_text()
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), [])
    cut = bool(lines) and (not text.endswith("\n") or len(next(csv.reader(lines[-1:]))) != len(header))
    if cut and len(lines) > 1:
        (warn or (lambda m: warnings.warn(m, stacklevel=3)))(
            f"{path}: its last line was cut short (a kill, power cut or full disk during a write) and is left out: {lines[-1][:60]!r}"
        )
        lines = lines[:-1]
    reader = csv.reader(lines)
    columns = next(reader, [])
    rows = []
    for number, cells in enumerate(reader, start=2):
        if not cells:
            continue
        row = {k: v for k, v in ((k, parse_cell(t)) for k, t in zip(columns, cells)) if v is not None}
        if len(cells) != len(columns) or ("step" in columns and not isinstance(row.get("step"), int)):
            raise RunDirError(f"{path} is damaged at line {number} ({len(cells)} cells, a step of {row.get('step')!r}); "
                              "restore the file, or start over with --force")  # fmt: skip
        rows.append(row)
    return columns, rows


class CsvLog:
    """Rows kept in memory and in a CSV file that only ever holds whole rows.

    A row is appended with one write; a row with a column the header lacks rewrites the file
    atomically with the wider header (once per run: the agent's metric names are known at its
    first update). With ``path=None`` the rows stay in memory.
    """

    def __init__(self, path: Path | None, columns: list[str]):
        self.path, self.columns, self.rows = path, list(columns), []
        self._read = False

    def read_back(self, resume_step: int) -> None:
        """Read (writing nothing) the rows up to ``resume_step`` that :meth:`start` will keep; a cut
        last line, or a missing file, is one line on stderr."""
        self._read = True
        if self.path is None:
            return
        if not self.path.exists():
            if resume_step > 0:
                print(f"warning: {self.path} is missing: the rows up to step {resume_step} are lost; "
                      "the resumed run writes the rows after it", file=sys.stderr)  # fmt: skip
            return
        columns, rows = read_csv(self.path, warn=lambda message: print(f"warning: {message}", file=sys.stderr))
        self.columns += [c for c in columns if c not in self.columns]
        self.rows[:] = [r for r in rows if r["step"] <= resume_step]

    def start(self, resume_step: int | None) -> None:
        """Begin the file: empty, or (resuming) with the existing rows up to ``resume_step``."""
        if self.path is None:
            return
        if resume_step is not None and not self._read:
            self.read_back(resume_step)
        self._rewrite()

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.path is None:
            return
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with file_errors(self.path), open(self.path, "a") as f:
                f.write(self._line(row))

    def _line(self, row: dict[str, Any]) -> str:
        return ",".join(format_cell(row.get(c)) for c in self.columns) + "\n"

    def _rewrite(self) -> None:
        text = ",".join(self.columns) + "\n" + "".join(self._line(r) for r in self.rows)
        atomic_write(self.path, lambda f: f.write(text.encode()))


class TensorBoardLog:
    """The scalars of metrics.csv rows as TensorBoard events (tag ``<event>/<column>``, at the
    row's env step), in ``<run_dir>/tensorboard/``. Resuming purges the events after the checkpoint."""

    def __init__(self, folder: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # checked by require_tensorboard

        self.writer = SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1)

    def append(self, row: dict[str, Any]) -> None:
        event = row.get("event", "metrics")
        for key, value in row.items():
            if key not in ("step", "event") and isinstance(value, (int, float, np.number)):
                self.writer.add_scalar(f"{event}/{key}", float(value), global_step=int(row["step"]))

    def close(self) -> None:
        self.writer.close()


def require_tensorboard() -> None:
    """A one-line :class:`TrainError` when the optional TensorBoard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise TrainError("--tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'") from None


# ----------------------------------------------------------------------------------------------
# Checkpoints: tensors and primitives only, read back with torch.load(weights_only=True)
# ----------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`qsm_tutorial.train`, on CPU; a clear :class:`CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:  # torch.load does not check the zip's CRCs: damaged bytes would load as garbage weights
        damaged = zipfile.ZipFile(path).testzip()
    except (zipfile.BadZipFile, OSError, EOFError):
        damaged = None  # not a zip at all: torch.load below says so
    if damaged:
        raise CheckpointError(f"{path} is damaged (checksum mismatch in {damaged}); restore it, or start over with --force")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; all mean the same here
        raise CheckpointError(
            f"cannot read {path} ({type(e).__name__}): it is corrupt or not a checkpoint; "
            "start over with --force or restore the file"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a qsm_tutorial checkpoint; start over with --force")
    return state


def saved_fields(section: dict[str, Any], config_cls) -> dict[str, Any]:
    """The fields of a ``config.json`` section (``loop``, ``agent``) that dataclass ``config_cls``
    still has, lists turned back into tuples: a field since removed from the package is dropped."""
    known = {f.name for f in dataclasses.fields(config_cls)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items() if k in known}


class RunDir:
    """A run's folder: checks what it may hold before anything is written, then the files."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config = self.path / CONFIG_FILE
        self.checkpoint = self.path / CHECKPOINT_FILE
        self.metrics = self.path / METRICS_FILE
        self.timing = self.path / TIMING_FILE
        self.tensorboard = self.path / TENSORBOARD_DIR
        self.status = self.path / STATUS_FILE

    def lock(self) -> "RunDirLock":
        """An exclusive lock on this folder for as long as a process writes it (``with`` or
        ``release``): a second writer is refused in one line that names the first."""
        return RunDirLock(self.path)

    def writer(self) -> str | None:
        """Who writes this folder now (its lock's text: pid, host, command), or None when no live
        process holds the lock; takes nothing."""
        try:
            with open(self.path / LOCK_FILE) as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return f.read().strip() or "another process"
        except OSError:  # no lock file: nobody writes
            return None
        return None

    def saved_config(self) -> dict | None:
        """The ``config.json`` of the run already here, or None if there is none."""
        if not self.config.exists():
            return None
        try:
            saved = json.loads(self.config.read_text())
            _ = saved["algo"], saved["env_id"], saved["seed"], saved["loop"], saved["agent"]
            return saved
        except (ValueError, KeyError, TypeError):
            raise RunDirError(
                f"{self.config} is not a qsm_tutorial run config; choose another --run-dir or pass --force"
            ) from None

    def prepare(self, record: dict, resume: bool, force: bool, asked: Collection[str] | None = None) -> dict | None:
        """Check that this folder may take the run ``record`` as asked; return the checkpoint to
        resume from (or None for a new run). Writes nothing. On resume, only the fields in ``asked``
        (those the caller set; None: all) can be a changed config: another field differs only when
        this package reads the saved value back otherwise (``compile: false`` as ``"off"``), and
        one the saved config lacks was added since; the run takes its default."""
        saved = None
        try:
            saved = self.saved_config()
        except RunDirError:
            if not force:
                raise
        identity = ("algo", "env_id", "seed")
        other_run = saved is not None and any(saved[k] != record[k] for k in identity)
        if other_run and not force:
            raise RunDirError(
                f"{self.path} belongs to another run ({saved['algo']} on {saved['env_id']}, seed {saved['seed']}); "
                "choose another --run-dir, or pass --force to replace it"
            )
        if saved is None and not force and self.path.is_dir():
            foreign = sorted(p.name for p in self.path.iterdir() if p.name != LOCK_FILE and not is_temp_file(p.name))
            if foreign:  # someone's folder, not a run's: writing metrics.csv there could overwrite their file
                raise RunDirError(
                    f"{self.path} holds files ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) but no run "
                    f"(no {CONFIG_FILE}); choose another --run-dir, or pass --force to write the run there"
                )
        if not resume:
            # Without a checkpoint there is nothing to lose: a run killed before its first one restarts.
            if not force and self.checkpoint.exists():
                raise RunDirError(
                    f"{self.path} already holds this run; pass --resume to continue it or --force to start it over"
                )
            return None
        if not self.checkpoint.exists():
            raise RunDirError(f"nothing to resume in {self.path}: it has no {CHECKPOINT_FILE}; run without --resume")
        if saved is not None and not force:
            changed = [f"{part}.{k}" for part in ("loop", "agent") for k in record[part]
                       if k in saved[part] and saved[part][k] != record[part][k] and (asked is None or k in asked)]  # fmt: skip
            if changed:
                raise RunDirError(
                    f"resuming {self.path} with a changed config ({', '.join(changed)}) is refused; "
                    "drop those options or pass --force"
                )
        checkpoint = load_checkpoint(self.checkpoint)
        step = checkpoint.get("step", 0)
        if isinstance(step, int) and step > record["total_steps"]:  # training cannot be undone: refuse, rewrite nothing
            raise RunDirError(
                f"{self.path} is at step {step:,} already, past a budget of {record['total_steps']:,} steps; "
                f"pass --total-steps {step} or more to continue it"
            )
        if checkpoint.get("algo") != record["algo"]:
            raise CheckpointError(f"{self.checkpoint} holds a {checkpoint.get('algo')} agent, not {record['algo']}")
        for key in ("env_id", "seed"):  # same network sizes would load silently: refuse another run's checkpoint
            if checkpoint.get(key, record[key]) != record[key]:
                raise CheckpointError(f"{self.checkpoint} was written by a run with {key} {checkpoint[key]!r}, not "
                                      f"{record[key]!r}; restore this run's checkpoint, or start over with --force")  # fmt: skip
        return checkpoint

    def begin(self, record: dict, resumed: bool) -> None:
        """Write the config; a new run first removes the files of the run it replaces."""
        with file_errors(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
            for p in self.path.iterdir():
                if is_temp_file(p.name) or (not resumed and p in (self.checkpoint, self.status)):
                    p.unlink()
            if not resumed and self.tensorboard.is_dir():
                shutil.rmtree(self.tensorboard)
        atomic_write(self.config, lambda f: f.write(json.dumps(record, indent=2).encode()))

    def save_checkpoint(self, state: dict) -> None:
        """The checkpoint, then ``status.json`` saying which step it holds and whether that is the
        run's end (a kill between the two leaves a status one checkpoint behind: resume still works)."""
        atomic_write(self.checkpoint, lambda f: torch.save(state, f))
        status = {"step": state["step"], "total_steps": state["total_steps"], "complete": state["step"] >= state["total_steps"]}
        atomic_write(self.status, lambda f: f.write(json.dumps(status).encode()))

    def holds_complete(self, algo: str, env_id: str, seed: int, total_steps: int | None) -> bool:
        """Whether this folder holds this very run (algo, env, seed, and budget unless None) and it
        is complete, read from ``status.json`` and ``config.json`` without loading the checkpoint."""
        status = self.read_status()
        try:
            saved = self.saved_config() if status and status["complete"] else None
        except RunDirError:
            return False
        return saved is not None and (saved["algo"], saved["env_id"], saved["seed"]) == (algo, env_id, seed) and (
            total_steps is None or status["total_steps"] == total_steps)

    def read_status(self) -> dict | None:
        """``{"step", "total_steps", "complete"}`` of the last checkpoint, or None when the folder
        has no readable ``status.json`` (a new run, or one written before status files existed)."""
        try:
            status = json.loads(self.status.read_text())
            return status if {"step", "total_steps", "complete"} <= status.keys() else None
        except (OSError, ValueError, AttributeError):
            return None


class RunDirLock:
    """``flock`` on ``<run dir>/.lock``, which says who holds it (pid, host, command, start) and is
    removed on release; the kernel frees the lock of a killed process, so a stale file is harmless.
    The folder is made if it does not exist (and removed again on release if still empty)."""

    def __init__(self, path: Path):
        if path.exists() and not path.is_dir():
            raise RunDirError(f"{path} is a file, not a folder; choose another --run-dir")
        self.made = not path.exists()
        with file_errors(path, "create" if self.made else "write into"):
            path.mkdir(parents=True, exist_ok=True)
            self.path, self.file = path / LOCK_FILE, open(path / LOCK_FILE, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise RunDirError(f"{path} is being written by {holder}; wait for it to end, or choose another --run-dir") from None
        self.file.seek(0)
        self.file.truncate()
        command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:200]
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} ({command})")
        self.file.flush()

    def release(self) -> None:
        if self.file.closed:
            return
        try:  # (the folder may be gone, or read-only: releasing never hides the error that ended the run)
            self.path.unlink(missing_ok=True)  # before the flock is freed: no other writer can lock this file
        except OSError:
            pass
        self.file.close()  # (closing frees the flock)
        try:
            if self.made and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "RunDirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
