"""Resume: one run per experiment, the data cursor, and rolling back what this run wrote past its committed step.

`state.json` (written last in each step, atomically) is the only commit point. On start, whatever a killed run
left beyond the committed step (a newer checkpoint, history rows, trajectory files, step logs) is removed, so each
step is trained, logged and counted exactly once, and the data cursor carries on.

Only this experiment's own leftovers are removed. The state holds a run id (written before the first step); the
experiment's log folder names its owner in `.owner.json`. Files that no state of this run accounts for (a model
folder with checkpoints but no state, step logs of a run with another art path or on another machine sharing the
log dir) are never deleted: the run stops with one line saying what clashes, and keeps them.

A damaged checkpoint (a file cut short by a full disk, a copy or a crash of the storage) is found before anything
loads it (`recover_checkpoints`): the run falls back to the newest good checkpoint and the state committed with it
(kept in the checkpoint, backends/trainer_model.py), so the later steps are redone exactly once; with none to fall
back to it stops with one line and changes nothing. Every file written here is written atomically.

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
from typing import TYPE_CHECKING, Any

from backends.atomic import TMP_MARK, atomic_write_json, atomic_write_text, disk_full_guard
from rollouts.eval_record import RUN_ID  # state.json's key; the report reads it too
from trainer.checks import LOCK_FILE, busy_message
from trainer.config import ConfigError, ExperimentConfig

if TYPE_CHECKING:
    from envs.spec import EnvSpec

OWNER_FILE = ".owner.json"


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


def load_cursor(env: EnvSpec, state: dict[str, Any]) -> Any:
    """The committed data cursor: the env's own kind where it brings one (a mixed run), else a `Cursor`."""
    saved = state.get("cursor", {})
    return env.make_cursor(saved) if env.make_cursor is not None else Cursor.restore(saved)


def rollback_uncommitted(model_dir: Path, committed_step: int) -> list[str]:
    """Remove what a killed run wrote past the committed step; returns what was removed, for the log."""
    removed: list[str] = []
    checkpoints = model_dir / "checkpoints"
    if checkpoints.is_dir():
        removed += _undo_skip_rename(checkpoints, committed_step)
        for entry in checkpoints.iterdir():
            if TMP_MARK in entry.name or (entry.name.isdigit() and int(entry.name) > committed_step):
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
            atomic_write_text(history, "".join(line + "\n" for line in kept))
            removed.append(f"{history} ({dropped} rows)")
    for leftover in model_dir.glob(f"{TMP_MARK}*"):  # a state.json or model.json cut by a kill, never renamed
        leftover.unlink(missing_ok=True)
        removed.append(str(leftover))
    for parquet in (model_dir / "trajectories").glob("*/*.parquet"):
        if parquet.stem.isdigit() and int(parquet.stem) > committed_step:
            parquet.unlink()
            removed.append(str(parquet))
    return removed


def _undo_skip_rename(checkpoints: Path, committed_step: int) -> list[str]:
    """A step with nothing to train renames the latest checkpoint to the next step (backends/cpu.py): a kill
    before that step's commit leaves the committed checkpoint under the next number. Put it back."""
    committed, renamed = checkpoints / f"{committed_step:04d}", checkpoints / f"{committed_step + 1:04d}"
    if not committed.exists() and renamed.is_dir():
        os.rename(renamed, committed)
        return [f"{renamed} (renamed back to {committed.name})"]
    return []


# ---- damaged checkpoints ----------------------------------------------------------------------------------------

PROGRESS_FREE_KEYS = (RUN_ID, "config_hash", "config")  # what a state at step 0 keeps: who the run is, not where


def _numbered(checkpoints: Path) -> list[int]:
    if not checkpoints.is_dir():
        return []
    return sorted((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True)


def _saved_state(checkpoint: Path, step: int) -> dict[str, Any] | None:
    """The state committed with this checkpoint (None: not kept, unreadable, or another step's)."""
    from backends.trainer_model import STATE_SNAPSHOT

    try:
        saved = json.loads((checkpoint / STATE_SNAPSHOT).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return saved if isinstance(saved, dict) and saved.get("step") == step else None


def recover_checkpoints(model_dir: Path, state: dict[str, Any], write_state: Callable[[dict[str, Any]], Any],
                        local: bool = True) -> dict[str, Any]:
    """Check the committed checkpoint (and, if it is damaged, older ones) before anything loads it.

    Returns the state to resume from: `state` itself when the committed checkpoint is good; else the state kept
    in the newest good checkpoint, written as the new `state.json` (the later checkpoints, history rows,
    trajectories and step logs are then rolled back by `claim_outputs` as uncommitted, and those steps are redone
    once). A damaged initial checkpoint (state at step 0) is removed: the backend makes it again from the seed,
    so nothing is lost. With no good checkpoint to fall back to, `CheckpointError`, one line, nothing changed:
    falling back to the base model would silently discard every trained step and delete their history, which
    only a person should decide (by moving the model folder away). `local`: the checkpoints live in this model
    folder (CPU and LocalBackend); a remote engine's are not checked here.
    """
    from backends.policy import CheckpointError, checkpoint_problem

    committed = int(state.get("step", 0))
    checkpoints = model_dir / "checkpoints"
    if not local or (committed == 0 and not _numbered(checkpoints)):
        return state
    _undo_skip_rename(checkpoints, committed)
    bad: list[str] = []
    for step in [committed, *(s for s in _numbered(checkpoints) if s < committed)]:
        folder = checkpoints / f"{step:04d}"
        problem = checkpoint_problem(folder)
        saved = state if step == committed else _saved_state(folder, step)
        if saved is None and step == 0:
            saved = {k: state[k] for k in PROGRESS_FREE_KEYS if k in state} | {"step": 0}
        if problem is None and saved is not None:
            break
        bad.append(f"{folder} is unusable: {problem or 'the state committed with it was not kept'}")
    else:
        if committed == 0:
            shutil.rmtree(checkpoints / f"{committed:04d}", ignore_errors=True)
            print(f"resume: checkpoint {bad[0]}; removed, the initial adapter is made again", flush=True)
            return state
        raise CheckpointError(
            f"resume: checkpoint {bad[0]}; no earlier good checkpoint is kept ({len(bad)} checked), so nothing "
            "was changed: restore the checkpoint from a copy, or move "
            f"{model_dir} away (or use a new --experiment-name) to start over")
    if not bad:
        return state
    restored = {**saved, **({RUN_ID: state[RUN_ID]} if RUN_ID in state else {})}
    write_state(restored)
    more = f" (and {len(bad) - 1} older)" if len(bad) > 1 else ""
    redone = f"step {committed} is" if step + 1 == committed else f"steps {step + 1}..{committed} are"
    print(f"resume: checkpoint {bad[0]}{more}; falling back to step {step}, the newest good "
          f"checkpoint: {redone} redone", flush=True)
    return restored


def committed_step(config: ExperimentConfig) -> int:
    """The step in the experiment's state.json (0 when none or unreadable): where a rerun resumes."""
    path = Path(config.art_path) / config.project / "models" / str(config.model_name) / "state.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8")).get("step", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0


FULL_BELOW_BYTES = 1 << 20  # a file system with less free space than this counts as the full one


def _free_bytes(folder: str) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def disk_full_line(exc: BaseException, config: ExperimentConfig) -> str | None:
    """The one line that ends a run stopped by a full disk or quota (None: `exc` is another failure). Whatever
    the write was, nothing past the committed step counts, so the rerun redoes the step that was cut."""
    from backends.atomic import DiskFull, is_disk_full

    if not is_disk_full(exc):
        return None
    if isinstance(exc, DiskFull):
        what = str(exc)
    else:  # a write not routed through backends/atomic.py: the system's own error, with its file where it has one
        reason = getattr(exc, "strerror", None) or "No space left on device"
        if filename := getattr(exc, "filename", None):
            what = f"disk full ({reason}) writing {filename}"
        else:  # no file named (os.write): the run's folders that sit on a full file system
            folders = list(dict.fromkeys([config.art_path, config.log_dir, config.rollout_root]))
            full = [f for f in folders if _free_bytes(f) < FULL_BELOW_BYTES] or folders[:1]
            what = f"disk full ({reason}) writing under {', '.join(full)}"
    return (f"error: {what}: free space and rerun the same command; the run resumes after step "
            f"{committed_step(config)}")


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
        with disk_full_guard(path):
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
        atomic_write_json(log_root / OWNER_FILE, {RUN_ID: run_id, "model_dir": str(model_dir.resolve()),
                                                  "host": socket.gethostname()}, indent=None)
    for leftover in log_root.glob(f"{TMP_MARK}*"):  # an owner file cut by a kill, never renamed
        leftover.unlink(missing_ok=True)
    for entry in log_root.glob("step_*"):  # step logs are ours now: those past the commit are being redone
        number = entry.name.removeprefix("step_")
        if number.isdigit() and int(number) > committed:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(str(entry))
    return run_id, removed
