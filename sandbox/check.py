"""`python -m sandbox check [--allow-unsandboxed]`: which sandbox model code gets here, and what it holds.

Nothing is taken on trust: a POSIX shell script runs inside the real sandbox (the same `run_sandboxed` model code
goes through) and tries each escape; the checker watches from outside. First the allowlist (`sandbox.view`:
every mount that makes up what model code sees), then one line per property, then exit code 0 if all hold, 1
otherwise (also when no sandbox can run and there is no opt-out: then it prints the refusal). Two properties check
the allowlist from inside: the top of `/` holds nothing else, and the project dir shows no more than the venv.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from entry_point import OneLineParser
from sandbox.run import (
    ENV_ALLOW,
    PROJECT,
    SandboxLimits,
    SandboxUnavailable,
    check_sandbox,
    kill_group,
    run_sandboxed,
)
from sandbox.view import SYSTEM, describe, interpreter_roots

MEMORY_MB = 256
# $1 port of a listener outside, $2 pid of a process outside, $3 $4 halves of its marker, $5 the project's Python,
# $6 the memory cap in MB, $7 the project's dir.
SCRIPT = r"""
echo top=$(ls -A / | tr '\n' ' ')
echo project_list=$(ls -A "$7" 2>/dev/null | tr '\n' ' ')
if (: > /etc/.art-sandbox-check) 2>/dev/null; then rm -f /etc/.art-sandbox-check; echo etc_writable=1
else echo etc_writable=0; fi
echo root_list=$(ls -A /root 2>/dev/null | tr '\n' ' ')
echo shadow_bytes=$(cat /etc/shadow 2>/dev/null | wc -c)
if bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; then echo connected=1; else echo connected=0; fi
seen=0
for f in /proc/[0-9]*/cmdline; do
  if tr '\0' ' ' < "$f" 2>/dev/null | grep -q -- "$3-$4"; then seen=1; fi
done
echo sentinel_seen=$seen
kill -KILL "$2" 2>/dev/null; echo kill_rc=$?
echo secret=${ART_SANDBOX_CHECK_SECRET:-absent}
echo ulimit_v=$(ulimit -v)
echo uid=$(id -u)
"$5" -I -S -c "bytearray($(( 2 * $6 )) << 20)" 2>alloc.err; echo alloc_rc=$?
echo alloc_err=$(tail -n 1 alloc.err | tr -d '\n')
"""


@dataclass
class Line:
    holds: bool
    text: str


async def probe(memory_mb: int = MEMORY_MB) -> list[Line]:
    """Run the escape attempts inside the sandbox; what held, one Line each."""
    secret = secrets.token_hex(8)
    os.environ["ART_SANDBOX_CHECK_SECRET"] = secret  # in the checker's env: a leak would show it
    marker = ("art-sandbox-sentinel", secrets.token_hex(4))
    sentinel = subprocess.Popen(["/bin/sh", "-c", "sleep 120; :", "-".join(marker)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    workdir = Path(tempfile.mkdtemp(prefix="art-sandbox-check-"))
    try:
        port = listener.getsockname()[1]
        argv = ["/bin/sh", "-c", SCRIPT, "sh", str(port), str(sentinel.pid), *marker, sys.executable, str(memory_mb),
                str(PROJECT)]
        result = await run_sandboxed(argv, workdir, SandboxLimits(wall_s=60, memory_mb=memory_mb))
        seen = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        survived = sentinel.poll() is None
    finally:
        kill_group(sentinel.pid)  # the shell and its sleep
        sentinel.wait()
        listener.close()
        os.environ.pop("ART_SANDBOX_CHECK_SECRET", None)
        shutil.rmtree(workdir, ignore_errors=True)
    if not seen:
        return [Line(False, f"the probe script did not run: exit {result.exit_code}, {result.stderr.strip()[-300:]}")]
    uid, alloc = seen.get("uid", "?"), seen.get("alloc_err", "")
    # The project's interpreter may live under /root: the sandbox shows exactly that much of it.
    needed = [Path(p) for p in (sys.prefix, sys.base_prefix, PROJECT)]
    allowed = {p.relative_to("/root").parts[0] for p in needed if Path("/root") in p.parents}
    listed = set(seen.get("root_list", "").split())
    extra = sorted(listed - allowed)
    python_ran = "MemoryError" in alloc
    top = set(seen.get("top", "").split())
    expected_top = {*(Path(p).name for p in SYSTEM), "etc", "tmp", "proc", "dev",
                    *(p.parts[1] for p in (*interpreter_roots(), workdir))}
    in_project = {p.relative_to(PROJECT).parts[0] for p in interpreter_roots() if PROJECT in p.parents}
    project_seen = set(seen.get("project_list", "").split())
    return [
        Line(bool(top) and top <= expected_top, f"only the allowlist at /: {' '.join(sorted(top))}"
             + (f" (not allowlisted: {' '.join(sorted(top - expected_top))})" if top - expected_top else "")),
        Line(project_seen <= in_project, f"the project is out of view: {PROJECT} shows "
             f"{' '.join(sorted(project_seen)) or 'nothing'}"
             f"{' (the interpreter)' if project_seen and project_seen <= in_project else ''}"),
        Line(seen.get("etc_writable") == "0", "read-only root: /etc is not writable"),
        Line(not extra and seen.get("shadow_bytes") == "0",
             f"/root and /etc/shadow hidden (visible in /root: {extra or 'nothing'}"
             f"{' besides the interpreter' if listed & allowed else ''}; {seen.get('shadow_bytes')} bytes of shadow "
             "readable)"),
        Line(seen.get("connected") == "0", f"no network: connecting to a listener outside on 127.0.0.1:{port} fails"),
        Line(seen.get("sentinel_seen") == "0", "own PID namespace: the checker's processes are not visible"),
        Line(survived and seen.get("kill_rc") != "0", "cannot kill processes outside: the checker's sentinel "
             "survived SIGKILL" if survived else "cannot kill processes outside: the sentinel was killed"),
        Line(seen.get("secret") == "absent", "environment scrubbed: a secret set in the checker is absent"),
        Line(seen.get("ulimit_v") == str(memory_mb * 1024) and (python_ran or seen.get("alloc_rc") != "0"),
             f"memory cap: RLIMIT_AS {seen.get('ulimit_v')} kB; allocating {2 * memory_mb} MB: {alloc or 'no error'}"),
        Line(python_ran, f"the project's Python runs in the sandbox ({sys.executable})"),
        Line(uid not in {"0", "?"}, f"not root: model code runs as uid {uid}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m sandbox", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["check"])
    parser.add_argument("--allow-unsandboxed", action="store_true",
                        help=f"check the weak fallback where no bwrap runs (same as {ENV_ALLOW}=1)")
    args = parser.parse_args(argv)
    if args.allow_unsandboxed:
        os.environ[ENV_ALLOW] = "1"
    sandboxed = False
    try:
        status = check_sandbox(args.allow_unsandboxed)
        print(f"{status.describe()}; probe {status.probe_s:.2f} s")
        sandboxed = status.mode == "bubblewrap"
    except SandboxUnavailable as exc:
        print(f"refused: {exc}")
        if not os.environ.get(ENV_ALLOW):
            return 1
        print("probing the fallback anyway:")  # opted out, but Python cannot run: show what else holds
    if sandboxed:
        print("allowlist, in mount order: all that model code sees (for `python SCRIPT` in WORKDIR; a runtime file "
              "named in argv is added read-only at its own path)")
        for line in describe():
            print(f"  {line}")
    else:
        print("allowlist: none, the unsandboxed fallback sees the whole host as far as its uid may")
    lines = asyncio.run(probe())
    for line in lines:
        print(f"{'holds   ' if line.holds else 'NOT HELD'}  {line.text}")
    failed = sum(not line.holds for line in lines)
    print(f"all {len(lines)} hold" if not failed else f"{failed} of {len(lines)} do not hold")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
