"""Every command a user can type answers `--help` at once and offline, and refuses a bad flag in one line.

The commands are found, not listed: `train.py`, each bench script, each `python -m` module and package with a
`__main__` (new ones are covered as they appear). For each: `--help` exits 0 with its usage on stdout, in a
process that may not reach the network (an unreachable proxy) and without `LITELLM_LOCAL_MODEL_COST_MAP` in its
environment, so the setting our packages make at import (entry_point.py) is what keeps LiteLLM's price-map fetch
and its warning away; a flag that does not exist exits 2 with one line on stderr naming it (or the required flag
argparse misses first), no traceback, nothing on stdout. A process that closes its policy server while a batch is
decoding exits 0 (no native thread is left in torch at interpreter exit, which aborts it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT

# Started by our own code with the argv it writes (inside the sandbox, or by a test), never typed by a user.
INTERNAL = {
    "envs/gmsh/script_runner.py": "the gmsh service runs it in the sandbox",
    "envs/gmsh/mesh_verifier.py": "the gmsh service runs it in the sandbox",
    "envs/r2e/repl_server.py": "an r2e rollout's REPL, started in the sandbox",
    "envs/workflow/sandbox_main.py": "the workflow runner starts it in the sandbox",
}
SKIPPED_DIRS = {"tests", "logs", "samples", "node_modules", "__pycache__"}  # and hidden ones (.venv, .art)
# Commands whose flags belong to a subcommand: the bad flag goes after it.
SUBCOMMAND = {"sandbox": ["check"], "sandbox.check": ["check"], "rollouts.logs": ["validate"],
              "envs.gmsh": ["generate"], "envs.r2e": ["cache"], "envs.openspiel": ["demos"], "envs.planner": ["tasks"],
              "envs.workflow": ["tasks"]}
# `--help` imports no more than its parser needs; the bound is loose for a shared 2-core machine under load.
HELP_SECONDS = 30.0
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, a connection is refused at once


def _has_main(path: Path) -> bool:
    return path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


def commands() -> dict[str, list[str]]:
    """name -> argv prefix of every entry point in the repository."""
    found: dict[str, list[str]] = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        for path in (Path(folder) / f for f in sorted(files) if f.endswith(".py")):
            rel = path.relative_to(ROOT)
            if rel.as_posix() not in INTERNAL and _has_main(path):
                name, argv = _command(rel)
                found[name] = argv
    return found


def _command(rel: Path) -> tuple[str, list[str]]:
    """Scripts (train.py, bench/) run by path; the rest as modules, a package by its name."""
    if rel.parts[0] == "bench" or len(rel.parts) == 1:
        return rel.as_posix(), [sys.executable, str(ROOT / rel)]
    parts = rel.with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__main__" else parts)
    return module, [sys.executable, "-m", module]


COMMANDS = commands()


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[name] = UNREACHABLE
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env | {"PYTHONUNBUFFERED": "1"}


def run(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=offline_env())
    return done, time.monotonic() - started


def test_the_known_entry_points_are_found():
    for name in ("train.py", "bench/r2e.py", "bench/executor.py", "bench/serving.py", "rollouts.logs", "sandbox",
                 "envs.gmsh.service", "envs.r2e.test_service"):
        assert name in COMMANDS, name
    assert not set(INTERNAL) & set(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_exits_0_fast_and_offline(name: str):
    done, seconds = run([*COMMANDS[name], "--help"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
    assert "LiteLLM" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert seconds < HELP_SECONDS, f"{name} --help took {seconds:.1f} s"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_bad_flag_is_one_line_on_stderr_exit_2(name: str):
    """One line naming a flag: the bad one, or a required one the command misses (argparse reports that first)."""
    done, _ = run([*COMMANDS[name], *SUBCOMMAND.get(name, []), "--no-such-flag"])
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "error" in lines[0] and " --" in lines[0], done.stderr[-2000:]
    assert done.stdout == ""


def test_scale_sim_node_refuses_a_bad_flag_in_one_line():
    done, _ = run([*COMMANDS["bench/scale_sim.py"], "node", "--port", "1", "--no-such-flag"])
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --no-such-flag (see --help)"]


def test_importing_art_through_our_packages_stays_offline():
    """ART imports LiteLLM; any of our packages imported first sets LiteLLM's local price map (entry_point.py)."""
    done = subprocess.run([sys.executable, "-c", "import os, rollouts.gather; "
                           "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=offline_env())
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
    assert "LiteLLM" not in done.stderr, done.stderr[-2000:]


def test_a_users_own_litellm_setting_wins():
    done = subprocess.run([sys.executable, "-c", "import os, entry_point; "
                           "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=offline_env() | {"LITELLM_LOCAL_MODEL_COST_MAP": "False"})
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_bad_values_of_a_bench_script_are_one_line_naming_the_flag():
    done, _ = run([*COMMANDS["bench/r2e.py"], "--copy-runs", "0"])
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: argument --copy-runs: must be at least 1, not 0 (see --help)")


CLOSE_MID_DECODE = """
import time
import torch
from backends.openai_server import MicroBatcher
from backends.policy import SampleRequest

class SlowPolicy:  # one batch is seconds of torch work, as a long decode on the CPU is
    def sample(self, requests, on_done=None, adapter=True, poll=None):  # it never polls: nothing joins
        a, end = torch.randn(256, 256), time.monotonic() + 2.0
        while time.monotonic() < end:
            a = (a @ a).tanh()
        for i, _ in enumerate(requests):
            on_done(i, [])

batcher = MicroBatcher(SlowPolicy())
first = batcher.submit(SampleRequest([1], 1, 1.0, 1))
time.sleep(0.5)  # the first batch is decoding
queued = batcher.submit(SampleRequest([1], 1, 1.0, 1))
batcher.close()
print(first.done(), repr(queued.exception()), batcher._thread.is_alive())
"""


def test_closing_the_policy_server_mid_decode_waits_for_torch_and_exits_0():
    """The sampler thread leaves torch before the interpreter exits; what was queued behind fails, undecoded."""
    done = subprocess.run([sys.executable, "-c", CLOSE_MID_DECODE], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert "terminate called" not in done.stderr and done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "RuntimeError('the", "policy", "server", "is", "closing')", "False"]
