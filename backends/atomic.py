"""Atomic writes, and a full disk told apart from other failures.

Why: `state.json` is the resume point, a checkpoint folder is the policy, a step log is what a person reads; a kill
or a full disk in the middle of writing one must leave the old version or nothing, never half a file. So every
file is written under a temporary name in the same folder (a rename across file systems is no rename), flushed
and fsynced, then renamed over the final name, and the folder is fsynced so the rename itself survives a power cut.
A checkpoint folder is written whole into `<step>.tmp-<pid>` and renamed the same way (ART and the trainer count
only all-digit folder names, so a temporary one is never taken for a step).

A write that fails because the disk (or the quota) is full raises `DiskFull` naming the path, so the entry point
can end the run with one line instead of a traceback from deep inside torch, safetensors or pyarrow, whose errors
name neither the file nor, always, the errno.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How libraries that wrap the OSError spell it: Rust's io::Error (safetensors), C++ streams (torch), pyarrow.
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122", "storagefull",
                   "quotaexceeded")
TMP_MARK = ".tmp-"  # in every temporary name this module makes; resume removes what a killed run left


class DiskFull(RuntimeError):
    """A write failed for lack of space (ENOSPC) or quota (EDQUOT); `path` is what was being written."""

    def __init__(self, path: str | os.PathLike[str], reason: str = "No space left on device"):
        super().__init__(f"disk full ({reason}) writing {path}")
        self.path = str(path)
        self.reason = reason


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a full disk or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return True
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(current).lower() for text in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _reason(exc: BaseException) -> str:
    """The system's words for the fault (e.g. 'No space left on device')."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return os.strerror(current.errno)
        current = current.__cause__ or current.__context__
    return "No space left on device"


@contextlib.contextmanager
def disk_full_guard(path: str | os.PathLike[str]) -> Iterator[None]:
    """Re-raise a full-disk failure of the block as `DiskFull(path)`; anything else passes through unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFull(path, _reason(exc)) from exc
        raise


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (a folder about to be renamed into place), deepest first."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], mode: int = 0o644) -> None:
    """`write(f)` into a temporary file beside `path`, fsync, rename over `path`, fsync the folder."""
    final = Path(path)
    tmp = final.with_name(f"{TMP_MARK}{os.getpid()}-{secrets.token_hex(3)}-{final.name}.part")
    with disk_full_guard(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def atomic_write_jsonl(path: str | os.PathLike[str], rows: list[Any], **dumps: Any) -> None:
    atomic_write_text(path, "".join(json.dumps(row, **dumps) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty `<final>.tmp-<pid>` folder to fill; on success it is fsynced and renamed to `final` (an
    older `final` is moved aside first and removed after). On failure nothing is left but the old `final`."""
    tmp = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")
    aside = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}-old")
    with disk_full_guard(final):
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            fsync_tree(tmp)
            if final.exists():
                os.rename(final, aside)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            if aside.exists() and not final.exists():  # the rename into place failed: the old one stays
                os.rename(aside, final)
            shutil.rmtree(aside, ignore_errors=True)
