"""What a platform module costs to import, against ART's helpers: `uv run python bench/import_cost.py [--repeats 3]`.

Our services (the gmsh and r2e test services), the `score` commands and the sandbox start in processes that never
import ART, torch or transformers. ART has helpers for two things they do (`art.utils.network.find_free_tcp_port`,
`art.utils.managed_process.set_parent_death_signal`), but importing any `art.*` module first runs `art/__init__`,
which loads torch, transformers and litellm. This bench imports each module in a fresh interpreter (`--repeats`
times, the median kept) and prints the seconds, the modules loaded and whether torch came with them: the reason
services/process.py and sandbox/launch.py keep their own few lines instead (their docstrings point here).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

OURS = ("sandbox.launch", "services.process", "envs.gmsh.service", "envs.r2e.test_service")
ARTS = ("art.utils.network", "art.utils.managed_process")
PROBE = """
import importlib, json, sys, time
started = time.perf_counter()
importlib.import_module(sys.argv[1])
print(json.dumps({"s": time.perf_counter() - started, "modules": len(sys.modules), "torch": "torch" in sys.modules}))
"""


def import_once(module: str) -> dict:
    # No network look-up of litellm's price list: its time depends on the network, not on the import.
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True")
    done = subprocess.run([sys.executable, "-c", PROBE, module], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"import {module} failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=at_least(1), default=3, help="fresh interpreters per module (default 3)")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    seconds = {}
    for module in (*OURS, *ARTS):
        runs = [import_once(module) for _ in range(args.repeats)]
        seconds[module] = statistics.median(r["s"] for r in runs)
        last = runs[-1]
        print(f"import {module}: {seconds[module]:.3f} s, {last['modules']} modules, "
              f"torch {'loaded' if last['torch'] else 'not loaded'}", flush=True)
        figure(f"import {module}", seconds[module], unit="s")
    slowest_ours = max(seconds[m] for m in OURS)
    cheapest_art = min(seconds[m] for m in ARTS)
    print(f"cheapest ART helper import / slowest of ours: {cheapest_art / slowest_ours:.1f}")
    figure("cheapest ART helper import / slowest platform import", cheapest_art / slowest_ours)


if __name__ == "__main__":
    main()
