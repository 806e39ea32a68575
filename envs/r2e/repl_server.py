"""The persistent REPL that runs inside the sandbox (started by `envs.r2e.repl.Repl`; never imported by the trainer).

Protocol: one JSON object per line. In: {"code": str}. Out: {"stdout", "stderr", "locals", "final", "error"},
or, while a cell runs, {"llm_query": prompt}, answered by the trainer with {"response": str}. File descriptors
1 and 2 are pointed at capture files during a cell, so prints and subprocess output never garble the protocol.
Everything here, helpers included, is as untrusted as the cells it runs: it relies on no privilege. `sandbox.run`
starts it in bubblewrap (read-only root, no network, own PID namespace) as a uid of its own, never root, and
with a parent-death signal: it dies with the trainer, and the commands `bash()` starts die with it.
"""

import ctypes
import fnmatch
import json
import os
import re
import signal
import subprocess
import sys
import traceback

BASH_TIMEOUT = float(os.environ.get("REPL_BASH_TIMEOUT", "60"))
MAX_CHARS = int(os.environ.get("REPL_MAX_OUTPUT_CHARS", "8000"))
ROOT = os.getcwd()
_proto_out = os.fdopen(os.dup(1), "w", buffering=1)
_proto_in = sys.stdin
_state = {"final": None}


def _send(obj):
    _proto_out.write(json.dumps(obj) + "\n")
    _proto_out.flush()


def _cut(text):
    return text if len(text) <= MAX_CHARS else text[:MAX_CHARS] + f"\n[... cut: {len(text) - MAX_CHARS} more]"


def read_file(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def write_file(path, content):
    full = os.path.join(ROOT, path)
    os.makedirs(os.path.dirname(full) or ".", exist_ok=True)
    with open(full, "w") as f:
        f.write(content)
    return f"wrote {len(content)} characters to {path}"


def list_files(path=".", pattern="*"):
    found = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, path)):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "__pycache__"]
        found += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in filenames if fnmatch.fnmatch(n, pattern)]
    return sorted(found)


def search(pattern, path=".", file_pattern="*.py"):
    regex, hits = re.compile(pattern), []
    for rel in list_files(path, file_pattern):
        try:
            for number, line in enumerate(read_file(rel).splitlines(), 1):
                if regex.search(line):
                    hits.append(f"{rel}:{number}: {line.strip()}")
        except (UnicodeDecodeError, OSError):
            continue
    return hits[:200]


def _die_with(parent):
    """preexec_fn: a command dies with this REPL (bwrap's PID namespace does that too; the unsandboxed fallback
    has only this). PR_SET_PDEATHSIG = 1."""

    def apply():
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return apply


def bash(cmd, timeout=None):
    try:
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout or BASH_TIMEOUT,
                              cwd=ROOT, errors="replace", preexec_fn=_die_with(os.getpid()))
        return _cut(done.stdout + done.stderr + f"\n[exit code {done.returncode}]")
    except subprocess.TimeoutExpired:
        return f"[timed out after {timeout or BASH_TIMEOUT} s]"


def run_tests():
    return bash("bash run_tests.sh" if os.path.exists(os.path.join(ROOT, "run_tests.sh")) else "python -m pytest -q")


def llm_query(prompt):
    _send({"llm_query": str(prompt)})
    return json.loads(_proto_in.readline())["response"]


def FINAL(answer="done"):
    _state["final"] = str(answer)
    return _state["final"]


def finish():
    return FINAL("done")


HELPERS = {f.__name__: f for f in (read_file, write_file, list_files, search, bash, run_tests, llm_query, FINAL,
                                   finish)}


def _run_cell(code, namespace, cell):
    scratch = os.path.join(ROOT, ".tmp")  # inside the work dir: never shared with another rollout
    os.makedirs(scratch, exist_ok=True)
    out_path, err_path = os.path.join(scratch, f"cell{cell}.out"), os.path.join(scratch, f"cell{cell}.err")
    saved = os.dup(1), os.dup(2)
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    before = dict(namespace)
    error = None
    try:
        exec(compile(code, f"<cell {cell}>", "exec"), namespace)
    except BaseException:
        error = traceback.format_exc(limit=3)
        print(error, file=sys.stderr)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (out_fd, err_fd, *saved):
            os.close(fd)
    changed = {k: v for k, v in namespace.items()
               if not k.startswith("_") and k not in HELPERS and (k not in before or before[k] is not v)}
    local_reprs = {}
    for name, value in list(changed.items())[:50]:
        try:
            local_reprs[name] = repr(value)[:300]
        except Exception:
            local_reprs[name] = "<unrepresentable>"
    with open(out_path, errors="replace") as f:
        stdout = f.read()
    with open(err_path, errors="replace") as f:
        stderr = f.read()
    return {"stdout": _cut(stdout), "stderr": _cut(stderr), "locals": local_reprs, "final": _state["final"],
            "error": error.strip().splitlines()[-1] if error else None}


def main():
    namespace = {"__name__": "__repl__", **HELPERS}
    for cell, line in enumerate(_proto_in, 1):
        _send(_run_cell(json.loads(line)["code"], namespace, cell))


if __name__ == "__main__":
    main()
