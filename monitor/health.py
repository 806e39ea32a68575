"""`HealthMonitor`: a daemon thread that watches what long agentic runs leak, and never stops training.

Sandboxed code can leave processes behind, fill the disk under the rollout root, or leave work dirs when a
rollout dies hard. Each check logs a warning and updates figures that the loop adds to the step's metrics.

`RunDir`: each run keeps its rollout work dirs in a folder of its own under the rollout root (`run-<pid>-<hex>`),
which holds an exclusive `flock` on its `.owner.lock` for as long as the run lives. The kernel drops that lock
when the process dies, kill -9 included, so whether a folder's run is alive is a question with an exact answer
(no pid reuse, no clock): `remove_dead_runs` deletes the folders of dead runs, at start-up and at every health
check, and never touches a folder whose run still holds its lock (another live run on the same machine). The
lock helpers live in `services.owned_dir`, shared with the services' scratch folders (kept inside the run's folder).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from services.owned_dir import OWNER_LOCK, OwnedDir, held_by_live_owner, owner_alive, remove_dead

log = logging.getLogger("health")


@dataclass(frozen=True)
class HealthLimits:
    interval_s: float = 30.0
    max_child_processes: int = 64
    max_tmp_usage_gb: float = 10.0
    stale_after_s: float = 3600.0


RUN_PREFIX, CLAIMING_PREFIX = "run-", ".claiming-run-"


@dataclass
class RunDir(OwnedDir):
    """This run's folder under the rollout root, locked while the run lives; `release()` removes it."""

    @classmethod
    def claim(cls, rollout_root: str | os.PathLike[str], prefix: str = RUN_PREFIX) -> RunDir:
        return cls(**vars(OwnedDir.claim(rollout_root, prefix)))


run_is_alive = owner_alive


def remove_dead_runs(rollout_root: str | os.PathLike[str]) -> list[Path]:
    """Remove the run folders under `rollout_root` whose run is dead; live runs' folders are left alone."""
    return remove_dead(rollout_root, RUN_PREFIX)


class HealthMonitor:
    def __init__(self, rollout_root: str | os.PathLike[str], limits: HealthLimits | None = None,
                 own: str | os.PathLike[str] | None = None):
        self.rollout_root = Path(rollout_root)
        self.own = Path(own) if own is not None else None  # this run's RunDir: its stale work dirs go too
        self.limits = limits or HealthLimits()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._figures: dict[str, float] = {}
        self._warnings = 0
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)

    def start(self) -> HealthMonitor:
        self.rollout_root.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def __enter__(self) -> HealthMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def figures(self) -> dict[str, float]:
        """The latest figures, named for the step metrics (`health/...`)."""
        with self._lock:
            return {f"health/{k}": v for k, v in self._figures.items()} | {"health/warnings": float(self._warnings)}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except Exception:  # a broken check must not take the trainer down
                log.exception("health check failed")
            self._stop.wait(self.limits.interval_s)

    def check(self) -> dict[str, float]:
        children = len(psutil.Process().children(recursive=True))
        tmp_gb = _dir_size(self.rollout_root) / 1e9
        disk = shutil.disk_usage(self.rollout_root)
        removed = self._remove_stale_dirs()
        figures = {
            "trainer_rss_mb": psutil.Process().memory_info().rss / 2**20,  # a leak shows as a rising line in W&B
            "child_processes": float(children),
            "rollout_root_gb": tmp_gb,
            "disk_free_gb": disk.free / 1e9,
            "stale_dirs_removed": float(removed),
        }
        warnings = 0
        if children > self.limits.max_child_processes:
            warnings += 1
            log.warning("%d child processes (limit %d)", children, self.limits.max_child_processes)
        if tmp_gb > self.limits.max_tmp_usage_gb:
            warnings += 1
            log.warning("rollout root %s holds %.2f GB (limit %.2f)", self.rollout_root, tmp_gb,
                        self.limits.max_tmp_usage_gb)
        if removed:
            warnings += 1
            log.warning("removed %d rollout dirs of dead runs or older than %.0f s under %s", removed,
                        self.limits.stale_after_s, self.rollout_root)
        with self._lock:
            self._figures = figures
            self._warnings += warnings
        return figures

    def _remove_stale_dirs(self) -> int:
        """Dead runs' folders at once; of the rest, only work dirs older than the limit that belong to no run
        folder (left by older versions) or to this run's own folder (a rollout that died hard)."""
        removed = len(remove_dead_runs(self.rollout_root))
        cutoff = time.time() - self.limits.stale_after_s
        loose = [e for e in self.rollout_root.iterdir() if not e.name.startswith(RUN_PREFIX)] \
            if self.rollout_root.is_dir() else []
        mine = [e for e in self.own.iterdir() if e.name != OWNER_LOCK] if self.own and self.own.is_dir() else []
        for entry in loose + mine:
            try:
                if entry.is_dir() and not entry.is_symlink() and entry.stat().st_mtime < cutoff \
                        and not held_by_live_owner(entry):  # a live service's scratch folder, idle a while
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:  # a rollout removed its own dir meanwhile
                continue
        return removed


def _dir_size(root: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root, onerror=lambda _e: None):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total
