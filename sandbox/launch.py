"""How one sandboxed process is started and ended (the mechanism behind `sandbox.run`; see its docstring for why).

bwrap's root is the allowlist of `sandbox.view`, nothing else of the host. Under root: a leased uid
(`Identity`, an flock per slot so two live runs never share one), the work dir chowned to it, and every
allowlisted path that uid cannot reach (a Python or venv under /root, a work dir or runtime file under a closed
dir) bind-mounted for it by root in a private mount namespace before the uid is dropped (the stage); bwrap then
runs unprivileged in its own user namespace. The unsandboxed opt-out has no allowlist, only the uid. At the end
every process of that uid is killed (kill(-1) sent as the uid), and a pids cgroup where writable caps and kills
the tree too. `Launch.prepare` builds the argv, the environment and the child's set-up; `cleanup` undoes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import resource
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sandbox import view as sandbox_view

PROJECT = Path(__file__).resolve().parents[1]
UID_BASE, UID_SLOTS = 1_900_000_000, 4096  # far above real users and the usual /etc/subuid ranges
RUN = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
LEASES, STAGE = RUN / "art-sandbox-uids", RUN / "art-sandbox-stage"
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE, PR_SET_NO_NEW_PRIVS = 0x20000, 4096, 1 << 14, 1 << 18, 38
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a child (a preexec function): get `sig` when the parent dies, kill -9 included, so no process the
    trainer started outlives it. The kernel clears this on a uid change, so call it after dropping privileges.
    If the parent died before this ran, the signal would never come: exit at once instead.

    Linux sends it when the *thread* that forked the child exits: start long-lived children from a thread that
    lives as long as they should (the event loop's, or a pool worker that outlives the call).

    ART's `art.utils.managed_process.set_parent_death_signal` does the same, but stays unused here for two reasons:
    importing it runs `art/__init__` (torch, transformers, litellm, a `.env` read) in every service process, which
    never imports ART otherwise (bench/import_cost.py prints the cost); and it loads libc (`ctypes.CDLL`, a
    dlopen) in the child, between fork and exec of a threaded parent, where dlopen is not async-signal-safe, while
    this module loads libc once at import and the child only makes the prctl call."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0))
    if os.getppid() != parent_pid:
        os._exit(1)


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn for subprocess: the child is killed when the process that starts it dies."""
    parent = os.getpid()
    return lambda: set_parent_death_signal(parent)


class SandboxUnavailable(RuntimeError):
    """No sandbox can hold model code here and nobody opted out; the message is one line."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 30.0
    cpu_s: int = 30
    memory_mb: int = 2048
    max_processes: int = 64
    max_file_mb: int = 256
    max_output_chars: int = 20_000


PIDS_CGROUP_ROOT = Path("/sys/fs/cgroup/pids")
CGROUP_PREFIX = "art-sandbox-"
_swept_in: int | None = None  # the pid of the process that swept: a forked child sweeps again


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_cgroups(root: Path = PIDS_CGROUP_ROOT) -> list[Path]:
    """Remove the empty `art-sandbox-<pid>-<hex>` cgroups whose creating process is dead (a service killed -9
    mid-run leaves them). A live pid's cgroup is never touched, and rmdir refuses a cgroup that still holds a
    process, so nothing running is disturbed."""
    removed = []
    for entry in root.glob(f"{CGROUP_PREFIX}*-*") if root.is_dir() else []:
        pid = entry.name[len(CGROUP_PREFIX):].split("-")[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            entry.rmdir()
            removed.append(entry)
    return removed


class PidsCgroup:
    """A pids cgroup capping how many processes a sandboxed tree may hold at once: the fork-bomb stop.

    Where the pids controller is writable (root, cgroup v1 here) each sandbox gets its own cgroup, and removing it
    kills all that is left in it; elsewhere this is a no-op and RLIMIT_NPROC (per leased uid) is what there is.
    The first one a process creates sweeps the empty ones of dead processes first (`remove_dead_cgroups`).
    """

    def __init__(self, max_processes: int):
        self.path: Path | None = None
        if PIDS_CGROUP_ROOT.is_dir() and os.access(PIDS_CGROUP_ROOT, os.W_OK):
            global _swept_in
            if _swept_in != os.getpid():  # once per process, at its first sandbox: what dead ones left
                _swept_in = os.getpid()
                remove_dead_cgroups()
            path = PIDS_CGROUP_ROOT / f"{CGROUP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(max_processes))
                self.path = path
            except OSError:
                self.path = None

    def join(self) -> None:
        """Called in the child before exec: it and all it spawns count against the cap."""
        if self.path is not None:
            (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        if self.path is None:
            return
        for _ in range(50):  # the killed tree takes a moment to leave
            try:
                self.path.rmdir()
                return
            except OSError:
                for pid in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                time.sleep(0.02)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Identity:
    """A uid (and gid) leased for one sandboxed run: an flock on LEASES/<slot>, held until release()."""

    def __init__(self, uid: int, fd: int):
        self.uid, self.fd = uid, fd

    @classmethod
    def lease(cls) -> Identity:
        LEASES.mkdir(mode=0o700, exist_ok=True)
        info = LEASES.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o077:
            raise SandboxUnavailable(f"{LEASES} must be a directory owned by root with mode 0700")
        # From a random slot on, not the lowest free one: a uid just released may still own the zombies of its
        # killed sandbox until the host's init gets round to reaping them, and they count against RLIMIT_NPROC,
        # so reusing it at once could have the next sandbox's first fork refused.
        first = secrets.randbelow(UID_SLOTS)  # not `random`: the trainer seeds that
        for slot in ((first + i) % UID_SLOTS for i in range(UID_SLOTS)):
            fd = os.open(LEASES / str(slot), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(UID_BASE + slot, fd)
        raise SandboxUnavailable(f"all {UID_SLOTS} sandbox uids are in use")

    def sweep(self) -> None:
        """Kill every process of this uid: kill(-1) sent as the uid itself reaches all of them and nothing else."""
        if self.uid < UID_BASE:
            raise ValueError(f"refusing to sweep uid {self.uid}: not a leased sandbox uid")
        # The shell checks its own uid first: kill(-1) from anyone else would hit far more than the sandbox.
        script = f'[ "$(id -u)" = {self.uid} ] && kill -9 -1 2>/dev/null; exit 0'
        for _ in range(2):  # the second pass catches a child forked while the first one ran
            subprocess.run(["/bin/sh", "-c", script], user=self.uid, group=self.uid,
                           extra_groups=[], env={}, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=10, check=False)

    def release(self) -> None:
        os.close(self.fd)


def _chown_tree(root: Path, uid: int) -> None:
    os.chown(root, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            if stat.S_ISDIR(info.st_mode) or info.st_nlink == 1:  # a hard link may be a file outside: leave it
                os.chown(path, uid, uid, follow_symlinks=False)


def _closed_ancestor(path: Path, deepest: bool = False) -> Path | None:
    """The top-most (or deepest) ancestor of `path` (below /) that other users cannot search, if any."""
    closed = [p for p in path.parents if p != Path("/") and not p.stat().st_mode & stat.S_IXOTH]
    return (closed[0] if deepest else closed[-1]) if closed else None


def _bwrap_prefix(binary: str, workdir: Path, drop: bool,
                  argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """bwrap's arguments for `argv` (the allowlisted view of `sandbox.view`), and the (source, staging path)
    pairs root bind-mounts first for a dropped uid: every bind whose source that uid cannot reach (a Python or a
    work dir under a dir closed to others) goes through the stage, whatever part of the allowlist it is."""
    staged: list[tuple[str, str]] = []
    if drop and (closed := _closed_ancestor(Path(binary), deepest=True)) is not None:
        # A venv under /root: the uid could not exec its bwrap. Staged from the dir below the last closed one, so
        # the binary's $ORIGIN-relative libraries come along.
        top = Path(binary).relative_to(closed).parts[0]
        staged.append((str(closed / top), str(STAGE / "bin")))
        binary = str(STAGE / "bin" / Path(binary).relative_to(closed / top))
    args = [binary]
    for mount in sandbox_view.mounts(argv, workdir):
        if mount.flag in ("--ro-bind", "--bind"):
            source = str(mount.source)
            if drop and _closed_ancestor(Path(source)) is not None:  # staged by root, see _preexec
                staged.append((source, str(STAGE / str(len(staged)))))
                source = staged[-1][1]
            args += [mount.flag, source, mount.target]
        elif mount.flag == "--symlink":
            args += [mount.flag, str(mount.source), mount.target]
        else:
            args += [mount.flag, mount.target]
    # The root bwrap builds is a tmpfs: read-only once filled, so only the work dir and /tmp can be written.
    return args + ["--remount-ro", "/", "--unshare-all", "--die-with-parent", "--new-session",
                   "--chdir", str(workdir), "--"], staged


def _check(result: int) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _user_process_count() -> int:
    import psutil

    uid = os.getuid()
    return sum(1 for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == uid)


def _preexec(limits: SandboxLimits, cgroup: PidsCgroup | None, identity: Identity | None,
             staged: list[tuple[str, str]], unsandboxed: bool) -> Callable[[], None]:
    # RLIMIT_NPROC counts every process (and thread) of the uid: a leased uid has none yet, ours has some.
    nproc = limits.max_processes + 4 if identity else _user_process_count() + limits.max_processes
    parent = os.getpid()

    def apply() -> None:
        try:
            setup()
        except BaseException as exc:  # never exec half set up; say why on the child's stderr (the probe shows it)
            os.write(2, f"sandbox setup failed: {type(exc).__name__}: {exc}\n".encode())
            os._exit(126)

    def setup() -> None:
        if cgroup is not None:
            cgroup.join()
        if staged:  # a private mount namespace where root makes the unreachable sources reachable
            _check(_libc.unshare(CLONE_NEWNS))
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None))
            _check(_libc.mount(b"tmpfs", str(STAGE).encode(), b"tmpfs", 0, b"mode=0755,size=64k"))
            for source, target in staged:
                if os.path.isdir(source):
                    os.mkdir(target)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o755))
                _check(_libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if identity is not None:
            os.setgroups([])
            os.setresgid(identity.uid, identity.uid, identity.uid)
            os.setresuid(identity.uid, identity.uid, identity.uid)
        if unsandboxed:  # no setuid binary may lift it back (bwrap does this itself)
            _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
        # Last, after the uid drop that would clear it: the sandbox dies with whoever started it (bwrap also has
        # --die-with-parent; the unsandboxed fallback has only this).
        set_parent_death_signal(parent)

    return apply


def clean_env(workdir: Path) -> dict[str, str]:
    # The project's interpreter first, so `python` and `pytest` in model-written commands are ours.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])
    return {"PATH": path, "HOME": str(workdir), "LANG": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox",
            "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class Launch:
    """Everything one sandboxed start needs, and what to undo after it."""

    argv: list[str]
    env: dict[str, str]
    preexec: Callable[[], None]
    cgroup: PidsCgroup | None
    identity: Identity | None
    done: bool = field(default=False)

    @classmethod
    def prepare(cls, argv: list[str], workdir: Path, limits: SandboxLimits, binary: str | None,
                cgroup: PidsCgroup | None = None) -> Launch:
        drop = os.geteuid() == 0
        if drop and binary is None and (closed := _closed_ancestor(workdir)) is not None:
            raise SandboxUnavailable(f"the unsandboxed fallback runs model code as an unprivileged uid, which "
                                     f"cannot reach the work dir {workdir} ({closed} is closed to other users)")
        identity = Identity.lease() if drop else None
        try:
            staged: list[tuple[str, str]] = []
            if identity is not None:
                _chown_tree(workdir, identity.uid)
            if binary is not None:
                prefix, staged = _bwrap_prefix(binary, workdir, drop, argv)
                argv = prefix + argv
            if staged:
                STAGE.mkdir(mode=0o755, exist_ok=True)
            preexec = _preexec(limits, cgroup, identity, staged, unsandboxed=binary is None)
        except BaseException:
            if identity is not None:
                identity.release()
            raise
        return cls(argv, clean_env(workdir), preexec, cgroup, identity)

    def cleanup(self) -> None:
        """After the process group is killed: kill what is left of the uid and the cgroup, then free the uid."""
        if self.done:
            return
        self.done = True
        try:
            if self.identity is not None:
                self.identity.sweep()
        finally:
            if self.cgroup is not None:
                self.cgroup.remove()
            if self.identity is not None:
                self.identity.release()
