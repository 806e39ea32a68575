"""Resume: one run per experiment, the data cursor, and rolling back what this run wrote past its committed step.

`state.json` (written last in each step, atomically) is the only commit point. On start, whatever a killed run
left beyond the committed step (a newer checkpoint, history rows, trajectory files, step logs) is removed, so each
step is trained, logged and counted exactly once, and the data cursor carries on.

Only this experiment's own leftovers are removed. The state holds a run id (written before the first step); the
experiment's log folder names its owner in `.owner.json`. Files that no state of this run accounts for (a model
folder with checkpoints but no state, step logs of a run with another art path or on another machine sharing the
log dir) are never deleted: the run stops with one line saying what clashes, and keeps them.

`ExperimentLock`: an exclusive `flock` on `<model dir>/.run.lock` while a run lives. The kernel drops it when the
process dies, kill -9 included, so a stale lock never blocks a resume; a second live run of the same experiment
stops at once with one line naming the holder's pid, before it reads or writes anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import shutil
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import ConfigError, ExperimentConfig
from trainer.paths import LOCK_FILE, busy_message

OWNER_FILE = ".owner.json"
RUN_ID = "run_id"


@dataclass
class Cursor:
    """Where in the scenario order the next step starts; epochs reshuffle with a seed of their own."""

    epoch: int = 0
    position: int = 0

    def take(self, scenarios: list[Any], count: int, seed: int) -> tuple[list[Any], Cursor]:
        if self.position + count > len(scenarios):  # a short tail would make an uneven step: next epoch
            return Cursor(self.epoch + 1, 0).take(scenarios, count, seed)
        order = list(range(len(scenarios)))
        random.Random(f"{seed}:epoch:{self.epoch}").shuffle(order)
        chosen = [scenarios[i] for i in order[self.position : self.position + count]]
        return chosen, Cursor(self.epoch, self.position + count)

    def describe(self) -> str:
        return f"epoch {self.epoch}, position {self.position}"

    @classmethod
    def restore(cls, saved: dict[str, Any]) -> Cursor:
        """state.json's "cursor" -> the cursor. A cursor of another kind (a mixed run's, resumed as one env with
        --allow-config-change) has no position in this env's order: the run goes on from the start of its epoch."""
        if set(saved) <= {"epoch", "position"}:
            return cls(**saved)
        return cls(int(saved.get("epoch", 0)), 0)


def load_cursor(env: Any, state: dict[str, Any]) -> Any:
    """The committed data cursor: the env's own kind where it brings one (a mixed run), else a `Cursor`."""
    saved = state.get("cursor", {})
    return env.make_cursor(saved) if getattr(env, "make_cursor", None) else Cursor.restore(saved)


def rollback_uncommitted(model_dir: Path, committed_step: int) -> list[str]:
    """Remove what a killed run wrote past the committed step; returns what was removed, for the log."""
    removed: list[str] = []
    checkpoints = model_dir / "checkpoints"
    if checkpoints.is_dir():
        committed, renamed = checkpoints / f"{committed_step:04d}", checkpoints / f"{committed_step + 1:04d}"
        if not committed.exists() and renamed.is_dir():  # a step with nothing to train renamed it (backends/cpu.py)
            os.rename(renamed, committed)
            removed.append(f"{renamed} (renamed back to {committed.name})")
        for entry in checkpoints.iterdir():
            if entry.name.startswith(".tmp-") or (entry.name.isdigit() and int(entry.name) > committed_step):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(str(entry))
    history = model_dir / "history.jsonl"
    if history.exists():
        kept, dropped = [], 0
        for line in history.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                dropped += 1
                continue
            if int(row.get("step", 0)) <= committed_step:
                kept.append(line)
            else:
                dropped += 1
        if dropped:
            tmp = history.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, history)
            removed.append(f"{history} ({dropped} rows)")
    for parquet in (model_dir / "trajectories").glob("*/*.parquet"):
        if parquet.stem.isdigit() and int(parquet.stem) > committed_step:
            parquet.unlink()
            removed.append(str(parquet))
    return removed


def check_resume(config: ExperimentConfig, state: dict[str, Any]) -> None:
    previous = state.get("config_hash")
    if previous and previous != config.config_hash() and not config.allow_config_change:
        changed = state.get("config", {})
        diffs = [k for k, v in config.hashed_fields().items() if k in changed and changed[k] != v]
        detail = f" (changed: {', '.join(diffs)})" if diffs else ""
        raise ConfigError(
            f"--allow-config-change: this run's config hash {config.config_hash()} differs from the saved "
            f"{previous}{detail}; use a new --experiment-name, or pass --allow-config-change to resume anyway"
        )




# ---- one run per experiment -------------------------------------------------------------------------------------


@dataclass
class ExperimentLock:
    """The exclusive lock of one experiment (one model folder), held from start-up until the run ends."""

    path: Path
    fd: int
    created: list[Path] = field(default_factory=list)  # folders this acquisition made, deepest first

    @classmethod
    def acquire(cls, model_dir: Path, experiment: str) -> ExperimentLock:
        created = [p for p in (model_dir, *model_dir.parents) if not p.exists()]
        model_dir.mkdir(parents=True, exist_ok=True)
        path = model_dir / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise ConfigError(busy_message(experiment, holder, path)) from None
            try:  # a run that gave up at start removes its lock file: locked after that, this inode is orphaned
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd, created)

    def release(self) -> None:
        """Unlock. A run that stopped before writing anything (bad input found after the lock was taken) also
        removes the lock file and the folders it made, so a refused run leaves no trace."""
        with contextlib.suppress(OSError):
            if [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
                self.path.unlink()
                for folder in self.created:
                    folder.rmdir()  # stops (OSError) at the first folder something else was written into
        os.close(self.fd)


# ---- whose files are these --------------------------------------------------------------------------------------


def _past(model_dir: Path, committed: int) -> list[str]:
    """What lies in the model folder past the committed step (a checkpoint, history rows, trajectories)."""
    found = [str(p) for p in (model_dir / "checkpoints").glob("[0-9]*") if p.name.isdigit() and int(p.name) > committed]
    history = model_dir / "history.jsonl"
    if history.exists():
        for line in history.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError, TypeError, ValueError, AttributeError):
                if int(json.loads(line).get("step", 0)) > committed:
                    found.append(f"{history} (rows past step {committed})")
                    break
    found += [str(p) for p in (model_dir / "trajectories").glob("*/*.parquet")
              if p.stem.isdigit() and int(p.stem) > committed]
    return found


def _read_owner(log_root: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads((log_root / OWNER_FILE).read_text())
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable: someone's, not provably ours


def check_outputs(config: ExperimentConfig, model_dir: Path, state: dict[str, Any]) -> bool:
    """Whether the log folder is this run's already; ConfigError (one line, nothing deleted) when files that no
    state of this run accounts for would clash with what it is about to write. Reads only: called early, again
    by `claim_outputs`."""
    committed = int(state.get("step", 0))
    run_id = state.get(RUN_ID)
    legacy = run_id is None and bool(state)  # a state from before run ids: this experiment's own
    if run_id is None and not legacy and (leftovers := _past(model_dir, committed)):
        more = f" and {len(leftovers) - 1} more" if leftovers[1:] else ""
        raise ConfigError(
            f"--art-path: {model_dir} holds {leftovers[0]}{more} past step {committed}, which no state of this "
            "experiment accounts for; kept. Restore its state.json, move them away, or use another --experiment-name")
    log_root = Path(config.log_dir) / config.experiment_name
    owner = _read_owner(log_root)
    steps = sorted(p.name for p in log_root.glob("step_*")) if log_root.is_dir() else []
    ours = owner is not None and owner.get(RUN_ID) == (run_id or "")
    if not ours and steps and not (legacy and owner is None):
        who = (f"run {owner.get(RUN_ID, '?')} of {owner.get('model_dir', '?')} on {owner.get('host', '?')}"
               if owner else "another run (no owner file)")
        raise ConfigError(
            f"--log-dir: {log_root} holds step logs ({steps[0]}..{steps[-1]}) of {who}; kept. Use another "
            "--log-dir or --experiment-name")
    return ours


def claim_outputs(config: ExperimentConfig, model_dir: Path, state: dict[str, Any],
                  save_run_id: Callable[[str], Any]) -> tuple[str, list[str]]:
    """Take ownership of this experiment's outputs and roll back what this run wrote past its committed step.

    Returns (run id, what was removed). ConfigError as `check_outputs`. `save_run_id` persists a new run id in the
    state (before the log folder names it as its owner, so a kill in between never leaves an owner no state knows).
    """
    ours = check_outputs(config, model_dir, state)
    committed = int(state.get("step", 0))
    run_id = state.get(RUN_ID)
    if run_id is None:
        run_id = uuid.uuid4().hex[:12]
        save_run_id(run_id)
    removed = rollback_uncommitted(model_dir, committed)
    log_root = Path(config.log_dir) / config.experiment_name
    log_root.mkdir(parents=True, exist_ok=True)
    if not ours:
        tmp = log_root / f"{OWNER_FILE}.tmp"
        tmp.write_text(json.dumps({RUN_ID: run_id, "model_dir": str(model_dir.resolve()),
                                   "host": socket.gethostname()}))
        os.replace(tmp, log_root / OWNER_FILE)
    for entry in log_root.glob("step_*"):  # step logs are ours now: those past the commit are being redone
        number = entry.name.removeprefix("step_")
        if number.isdigit() and int(number) > committed:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return run_id, removed
