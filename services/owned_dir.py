"""Folders owned by a live process, and the sweep that removes those whose owner died, kill -9 included.

A process claims `<root>/<prefix><pid>-<hex>/` and holds an exclusive `flock` on its `.owner.lock` for as long as
it lives. The kernel drops that lock when the process dies however it dies, so whether a folder's owner is alive
is a question with an exact answer (no pid reuse, no clock). The trainer's run folders (`monitor.health.RunDir`)
and the services' scratch folders (`ScratchDir`: the per-request temp dirs of the test and gmsh services) use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

OWNER_LOCK = ".owner.lock"


@dataclass
class OwnedDir:
    """A folder locked by this process; `release()` removes it."""

    path: Path
    fd: int

    @classmethod
    def claim(cls, root: str | os.PathLike[str], prefix: str) -> OwnedDir:
        base = Path(root)
        base.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        # Built under a name sweepers ignore and renamed once locked: a sweeper never sees an unlocked folder.
        claiming = base / f".claiming-{prefix}{name}"
        claiming.mkdir()
        fd = os.open(claiming / OWNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        path = base / f"{prefix}{name}"
        claiming.rename(path)
        return cls(path, fd)

    def release(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self.fd)


def _lock_state(folder: Path) -> bool | None:
    """True while the folder's owner holds its lock, False once it died, None when there is no lock file."""
    try:
        fd = os.open(folder / OWNER_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def owner_alive(folder: Path) -> bool:
    """True while the owner of `folder` holds its lock (or the folder holds no lock file: not ours to judge)."""
    return _lock_state(folder) is not False


def held_by_live_owner(folder: Path) -> bool:
    """True only for a folder whose owner is alive and holds its lock: an age-based sweep must leave it alone."""
    return _lock_state(folder) is True


def remove_dead(root: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove the `prefix*` folders under `root` whose owner is dead; live owners' folders are left alone."""
    base, removed = Path(root), []
    for entry in base.glob(f"{prefix}*") if base.is_dir() else []:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if entry.is_dir() and not entry.is_symlink() and not owner_alive(entry):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


class ScratchDir:
    """A service's scratch folder: its per-request temp dirs live here, so a service killed mid-request leaves one
    folder that the next start of any service of the same kind removes (and, under a run's folder, the trainer's
    sweep of dead runs too). Removed at clean exit."""

    def __init__(self, root: str | os.PathLike[str] | None, prefix: str):
        self.root = Path(root) if root is not None else Path(tempfile.gettempdir())
        self.prefix = prefix
        if removed := remove_dead(self.root, prefix):
            print(f"removed {len(removed)} scratch dir(s) of dead services under {self.root}", file=sys.stderr)
        self.owned = OwnedDir.claim(self.root, prefix)
        self.owned.path.chmod(0o711)  # a sandbox's dropped uid must reach the work dirs below (searchable only)

    @property
    def path(self) -> Path:
        return self.owned.path

    def mkdtemp(self, prefix: str) -> Path:
        self.path.mkdir(mode=0o711, exist_ok=True)  # removed by hand meanwhile: requests still work
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.path))

    def release(self) -> None:
        self.owned.release()


def exit_cleanly_on_sigterm() -> None:
    """uvicorn re-raises the SIGTERM it caught once it has shut down; under the default handler that ends the
    process before any `finally` runs (a stopped service would leave its scratch folder). This handler turns it
    into SystemExit, so cleanup runs and the exit code is still 128 + SIGTERM."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
