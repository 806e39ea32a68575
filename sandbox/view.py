"""What model code sees: the sandbox's file system, built from an allowlist instead of from `/`.

Why: a read-only view of the whole host lets model code read the project (the bundled r2e samples' reference
fixes, the SFT demonstrations, `.env`), the art path, other runs' logs and any world-readable host folder: the
answers it is scored against and the operator's secrets alike. A policy under RL finds such holes. So bwrap starts
from an empty root and mounts exactly this (`mounts`), parents before children:

- the system runtime, read-only: /usr and the top-level /bin, /sbin, /lib, /lib32, /lib64, /libx32 that exist
  (as the symlinks they are on a merged-/usr host), so the dynamic linker, libc, sh, bash and coreutils work;
- a few /etc entries programs read at run time, each named with its reason in `ETC`; the rest of /etc stays out;
- the interpreter, read-only: sys.prefix (the venv: the packages model code and the runtime scripts import) and
  sys.base_prefix (the stdlib; pyenv's or uv's Python may live under /root, then root stages it, see
  `sandbox.launch`), with their real paths where they are reached through symlinks;
- the program's own runtime files: each absolute path in argv that is an existing regular file outside those roots
  (the REPL server, the gmsh script runner, the workflow main) is bound read-only at its own path, one by one, so
  the files beside it stay out and callers pass the same argv as before. The value of a `-c` is code, never a
  path: a command string (the r2e test command) cannot name a host file into the view;
- the work dir read-write, a private tmpfs on /tmp, a fresh /proc and a minimal /dev.

After that the root is remounted read-only (`--remount-ro /` in the launcher), so the mount-point directories
bwrap creates (/etc, /work/main, ...) cannot be written either. The unsandboxed opt-out fallback has no
allowlist at all: it sees the whole host, as the uid it runs as may.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_MINOR = f"python{sys.version_info.major}.{sys.version_info.minor}"
# Each entry is public configuration that some program in the sandbox reads; what is not here stays out of /etc.
ETC: dict[str, str] = {
    "ld.so.cache": "the dynamic linker's index: libraries outside the default dirs (e.g. CUDA's) are found by it",
    "ld.so.conf": "the linker's search dirs (dlopen falls back to them)",
    "ld.so.conf.d": "the linker's search dirs, per package",
    "nsswitch.conf": "how glibc looks up users, groups and hosts",
    "passwd": "uid and name lookups (id, whoami, getpass, pwd); the password hashes are in shadow, which stays out",
    "group": "gid and name lookups; the group passwords are in gshadow, which stays out",
    "hosts": "`localhost` resolves (there is no network, but test suites bind or resolve it)",
    "host.conf": "read by the resolver with hosts",
    "services": "socket.getservbyname and the like",
    "protocols": "socket.getprotobyname and the like",
    "localtime": "local time (a link into /usr/share/zoneinfo)",
    "timezone": "the zone's name, read by some date libraries",
    "alternatives": "Debian's /usr/bin tools (awk, editor, java, ...) are links through it",
    "ssl/certs": "public CA certificates (links into /usr/share/ca-certificates); ssl/private stays out",
    "ssl/openssl.cnf": "OpenSSL's config, read when Python's ssl module loads",
    "mime.types": "Python's mimetypes",
    "locale.alias": "glibc's locale names",
    "os-release": "platform.freedesktop_os_release (a link into /usr/lib)",
    "fonts": "fontconfig's config, for plotting libraries; fonts themselves are under /usr/share",
    "mtab": "a link to /proc/mounts, for df and psutil",
    "python3": "Debian's system Python reads its sitecustomize from here",
    _MINOR: "the same, per version",
}
# Never in the view, whatever ETC grows into: password hashes, privileges, keys, authentication config, files that
# may hold registry or git credentials (pip.conf, npmrc, gitconfig), the DNS server (there is no network anyway)
# and host fingerprints (machine-id, hostname).
SECRET_ETC = frozenset({"shadow", "shadow-", "gshadow", "gshadow-", "sudoers", "sudoers.d", "ssh", "ssl/private",
                        "pip.conf", "npmrc", "gitconfig", "resolv.conf", "machine-id", "hostname", "subuid",
                        "subgid", "security", "pam.d", "krb5.keytab", "docker"})
if SECRET_ETC & set(ETC):  # checked at import, also under python -O
    raise RuntimeError(f"secret-holding /etc entries in the sandbox's allowlist: {sorted(SECRET_ETC & set(ETC))}")


@dataclass(frozen=True)
class Mount:
    """One bwrap operation: `flag` (--ro-bind, --bind, --symlink, --tmpfs, --proc, --dev) at `target`; `source` is
    the host path of a bind or the text of a symlink."""

    flag: str
    target: str
    source: str | None = None

    def describe(self) -> str:
        if self.flag == "--symlink":
            return f"link   {self.target} -> {self.source}"
        kind = {"--ro-bind": "ro", "--bind": "rw"}.get(self.flag, self.flag.lstrip("-"))
        return f"{kind:<6} {self.target}" + (f" (from {self.source})" if self.source not in (None, self.target) else "")


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _outermost(paths: list[Path]) -> list[Path]:
    """The paths that are not inside another of them, sorted, without duplicates."""
    unique = sorted(set(paths))
    return [p for p in unique if not _within(p, [q for q in unique if q != p])]


def interpreter_roots() -> list[Path]:
    """The interpreter's prefixes, as given and as real paths (a prefix reached through a symlink must resolve
    inside the sandbox too), plus wherever the real executable lives if that is outside them."""
    given = [Path(p) for p in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix)]
    roots = given + [Path(os.path.realpath(p)) for p in given]
    executable = Path(os.path.realpath(sys.executable))
    if not _within(executable, roots):
        roots.append(executable.parents[1] if executable.parent.name == "bin" else executable.parent)
    return [p for p in _outermost(roots) if p.is_dir() and not _within(p, [Path(s) for s in SYSTEM])]


def argv_files(argv: list[str], allowed: list[Path]) -> list[Path]:
    """The absolute paths in argv that name an existing regular file outside `allowed` (the program's own runtime
    files). The argument after `-c` is code: skipped, so a model-influenced command string binds nothing."""
    files: list[Path] = []
    code_next = False
    for arg in argv:
        if code_next or arg == "-c" or not os.path.isabs(arg):
            code_next = arg == "-c" and not code_next
            continue
        path = Path(os.path.normpath(arg))
        real = Path(os.path.realpath(path))
        if path.is_file() and not (_within(path, allowed) and _within(real, allowed)):
            files.append(path)
    return sorted(set(files))


def _system_and_etc() -> list[Mount]:
    mounts = []
    for name in [*SYSTEM, *(f"/etc/{entry}" for entry in ETC)]:
        path = Path(name)
        if path.is_symlink():
            mounts.append(Mount("--symlink", name, os.readlink(path)))
        elif path.exists():
            mounts.append(Mount("--ro-bind", name, name))
    return mounts


def mounts(argv: list[str], workdir: Path) -> list[Mount]:
    """Everything bwrap mounts for `argv` run in `workdir`, in an order where each parent comes before what is
    mounted inside it (a work dir under /tmp goes on the private /tmp, one under /dev/shm on the fresh /dev)."""
    ops = [Mount("--dev", "/dev"), Mount("--proc", "/proc"), Mount("--tmpfs", "/tmp"), *_system_and_etc()]
    roots = interpreter_roots()
    ops += [Mount("--ro-bind", str(p), str(p)) for p in roots]
    allowed = [Path(s) for s in SYSTEM] + roots + [workdir]
    ops += [Mount("--ro-bind", str(p), str(p)) for p in argv_files(argv, allowed)]
    ops.append(Mount("--bind", str(workdir), str(workdir)))
    return sorted(ops, key=lambda m: len(Path(m.target).parts))  # stable: the order above within a depth


def describe(argv: list[str] | None = None, workdir: Path = Path("/WORKDIR")) -> list[str]:
    """One line per mount, for `python -m sandbox check`."""
    ops = mounts(argv or [sys.executable], workdir)
    return [m.describe() for m in ops]
