"""Trainer memory after 1,000 rollouts vs after 100: `uv run python bench/memory.py [--steps 100]`.

Runs `train.py` itself (toy env, random tiny model, CPU backend: every step samples, scores, trains, logs and writes a
checkpoint) and reads the resident memory of its process from outside, with psutil, each time a step's summary line
appears. Prints RSS after 100 and after 1,000 rollouts and their ratio (goal: flat within 10%, i.e. <= 1.10).
A leak in anything that lives for the whole run (history, the trajectory bookkeeping, the logs writer, the sampler)
shows here as a ratio that keeps rising with --steps.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """The trainer and everything it started (the CPU backend serves from a thread, services are children)."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # a rollout's child may end between listing and reading
            total += child.memory_info().rss
    return total / 2**20


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=at_least(1), default=100)
    parser.add_argument("--groups-per-step", type=at_least(1), default=2)
    parser.add_argument("--rollouts-per-group", type=at_least(2), default=5)
    args = parser.parse_args()
    per_step = args.groups_per_step * args.rollouts_per_group
    early = max(1, 100 // per_step)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "train.py"), "--experiment-name", "memory", "--art-path", tmp,
               "--rollout-root", f"{tmp}/rollouts", "--log-dir", f"{tmp}/logs", "--env", "toy",
               "--groups-per-step", str(args.groups_per_step), "--rollouts-per-group", str(args.rollouts_per_group),
               "--dataset-size", "64", "--num-epochs", "1000", "--max-training-steps", str(args.steps),
               "--base-model", "tiny-random"]
        env = dict(os.environ, WANDB_MODE="disabled", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        series: dict[int, float] = {}
        for line in proc.stdout:
            if line.startswith("step "):
                step = int(line.split(":")[0].split()[1])
                series[step] = rss_mb(proc.pid)
        proc.wait()
    if proc.returncode != 0 or args.steps not in series or early not in series:
        sys.exit(f"error: train.py exited with {proc.returncode} after {len(series)} steps")
    marks = sorted({early, *range(0, args.steps + 1, max(1, args.steps // 10))} - {0} | {args.steps})
    print("rollouts  rss_mb")
    for step in marks:
        print(f"{step * per_step:8d}  {series[step]:7.1f}")
    first, last = series[early], series[args.steps]
    print(f"RSS after {early * per_step} rollouts {first:.1f} MB, "
          f"after {args.steps * per_step} rollouts {last:.1f} MB: ratio {last / first:.3f} (goal <= 1.10)")
    figure(f"trainer RSS after {args.steps * per_step} / after {early * per_step} rollouts", last / first, "<= 1.1")
    figure(f"trainer RSS after {args.steps * per_step} rollouts", last, None, "MB")


if __name__ == "__main__":
    main()
