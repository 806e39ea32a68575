"""Does the toy task get learned, and how fast? `uv run python bench/learning.py [--steps 24]`.

Runs the real loop (`train.run`) on the CPU backend with the embedded model in a fresh art path, then prints
the mean reward of the first two and last three steps, the best step, and the wall time.
Goal: end >= 0.8 of the maximum reward (1.0) within 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

import train  # noqa: E402
from bench.figures import figure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = train.config_from_args([
            "--experiment-name", "bench-learning", "--env", "toy", "--art-path", tmp,
            "--rollout-root", f"{tmp}/rollouts",
            "--max-training-steps", str(args.steps), "--num-epochs", "1000", "--seed", str(args.seed),
            "--wandb", "disabled",
        ])
        started = time.perf_counter()
        asyncio.run(train.run(config))
        wall = time.perf_counter() - started
        history = Path(tmp) / config.project / "models" / config.model_name / "history.jsonl"
        rewards = [json.loads(line)["train/reward"] for line in history.read_text().splitlines()]
    start, end = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    first_08 = next((i + 1 for i, r in enumerate(rewards) if r >= 0.8), None)
    print(f"steps {len(rewards)}, wall {wall:.1f}s (model build and load included)")
    print(f"mean reward: start (steps 1-2) {start:.3f}, end (last 3 steps) {end:.3f}, max possible 1.0")
    print(f"end / max = {end:.3f} (goal >= 0.8); first step with reward >= 0.8: {first_08}")
    figure("toy: mean reward of the last 3 steps / max", end, ">= 0.8")
    figure("toy: mean reward of steps 1-2", start)
    figure(f"toy: wall time for {len(rewards)} steps", wall, "<= 600", "s")


if __name__ == "__main__":
    main()
