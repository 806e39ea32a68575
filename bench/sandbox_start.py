"""Sandbox start-up cost: `uv run python bench/sandbox_start.py [-n 20]`.

A trivial `python -c pass` runs through `run_sandboxed` n times with the allowlisted root (`sandbox.view`,
what model code gets) and n times with the root it replaced (`--ro-bind / /` with /tmp, /root, /home and the
shadow files hidden), interleaved so both see the same machine load. The old prefix exists only here, to measure
against: it is rebuilt below and swapped in for the measured runs. The same again for a whole workflow sandbox
(`run_workflow` with a trivial solve), the unit the issue timed. Prints the mean, median and min seconds per
sandbox of each and the ratio allowlist / old.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402
from envs.workflow.runner import WorkflowLimits, run_workflow  # noqa: E402
from sandbox import launch as sandbox_launch  # noqa: E402
from sandbox.launch import PROJECT, STAGE, _closed_ancestor  # noqa: E402
from sandbox.run import SandboxLimits, check_sandbox, run_sandboxed  # noqa: E402

NEW_PREFIX = sandbox_launch._bwrap_prefix


def old_prefix(binary: str, workdir: Path, drop: bool, argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The prefix before the allowlist: all of `/` read-only, a few dirs and files hidden (argv is not used)."""
    staged: list[tuple[str, str]] = []
    if drop and (closed := _closed_ancestor(Path(binary), deepest=True)) is not None:
        top = Path(binary).relative_to(closed).parts[0]
        staged.append((str(closed / top), str(STAGE / "bin")))
        binary = str(STAGE / "bin" / Path(binary).relative_to(closed / top))
    args = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    needed = sorted({Path(sys.prefix), Path(sys.base_prefix), PROJECT})
    private = [Path("/tmp"), *(Path(d) for d in ("/root", "/home") if Path(d).is_dir())]
    if drop:
        for target in (*needed, workdir):
            closed = _closed_ancestor(target)
            if closed is not None and not any(p == closed or p in closed.parents for p in private):
                private.append(closed)
    for path in private:
        args += ["--tmpfs", str(path)]
    args += [a for f in ("/etc/shadow", "/etc/gshadow") if Path(f).exists() for a in ("--ro-bind", "/dev/null", f)]
    binds = [(p, "--ro-bind") for p in needed if any(q in p.parents for q in private)] + [(workdir, "--bind")]
    for path, flag in binds:
        source = str(path)
        if drop and _closed_ancestor(path) is not None:
            source = str(STAGE / str(len(staged)))
            staged.append((str(path), source))
        args += [flag, source, str(path)]
    if staged:
        args += ["--tmpfs", str(STAGE)]
    return args + ["--unshare-all", "--die-with-parent", "--new-session", "--chdir", str(workdir), "--"], staged


async def python_pass(workdir: Path) -> float:
    started = time.perf_counter()
    result = await run_sandboxed([sys.executable, "-c", "pass"], workdir, SandboxLimits(wall_s=30))
    elapsed = time.perf_counter() - started
    if result.exit_code != 0:
        raise SystemExit(f"the sandboxed `python -c pass` failed: exit {result.exit_code}: {result.stderr[-300:]}")
    return elapsed


async def workflow(workdir: Path) -> float:
    """A whole workflow sandbox (sandbox_main.py, its protocol, a trivial solve): what the issue's figure timed."""
    started = time.perf_counter()
    code = "def solve(problem, domain):\n    return '42'\n"  # calls no operator: no executor is needed
    run = await run_workflow(code, "q", "math", workdir, None, WorkflowLimits(time_limit_s=30))  # type: ignore[arg-type]
    if run.answer != "42":
        raise SystemExit(f"the workflow failed: {run.error}")
    return time.perf_counter() - started


async def measure(n: int, job: Callable[[Path], Awaitable[float]]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"allowlist": [], "old": []}
    prefixes = {"allowlist": NEW_PREFIX, "old": old_prefix}
    workdir = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        for prefix in prefixes.values():  # one warm-up each: page cache, the probe, the uid lease dir
            sandbox_launch._bwrap_prefix = prefix
            await job(workdir)
        for i in range(2 * n):
            name = ("allowlist", "old")[i % 2]
            sandbox_launch._bwrap_prefix = prefixes[name]
            times[name].append(await job(workdir))
    finally:
        sandbox_launch._bwrap_prefix = NEW_PREFIX
        shutil.rmtree(workdir, ignore_errors=True)
    return times


def report(title: str, times: dict[str, list[float]]) -> float:
    print(title)
    for name, values in times.items():
        print(f"  {name:>9}: mean {statistics.mean(values):.3f} s, median {statistics.median(values):.3f} s, "
              f"min {min(values):.3f} s per sandbox (n={len(values)})")
    ratio = statistics.median(times["allowlist"]) / statistics.median(times["old"])
    print(f"  ratio allowlist / old (medians): {ratio:.2f}")
    return ratio


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=at_least(1), default=20, help="sandboxes of each kind (default 20)")
    args = parser.parse_args()
    print(check_sandbox().describe())
    times = asyncio.run(measure(args.n, python_pass))
    ratio = report("`python -c pass` through run_sandboxed:", times)
    flows = asyncio.run(measure(args.n, workflow))
    flow_ratio = report("a trivial workflow through run_workflow:", flows)
    figure("sandbox start-up, allowlisted root", statistics.median(times["allowlist"]), unit="s")
    figure("sandbox start-up ratio allowlist / old root", ratio, "<= 1.5")
    figure("workflow sandbox, allowlisted root", statistics.median(flows["allowlist"]), unit="s")
    figure("workflow sandbox ratio allowlist / old root", flow_ratio, "<= 1.5")


if __name__ == "__main__":
    main()
