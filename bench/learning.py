"""Does the model learn, and how fast? `uv run python bench/learning.py --env toy|gmsh|r2e|planner`.

Runs `train.py` itself in a fresh art path with the flags a README command uses, then reads ART's history:
- toy (random tiny model, GRPO only): mean train reward of steps 1-2 and of the last 3 steps;
- gmsh, r2e, planner (SmolLM2-135M-Instruct: SFT on the env's demonstrations, then GRPO): the held-out reward
  before training, after SFT and after RL (r2e: the held-out sample and the five demonstrated ones apart; planner:
  also its format-valid, correct and token-thrift rates, SmolLM2 with the adapter off as the frozen executor).
Prints the figures, the steps and the wall time (model conversion and set-up included) as FIGURE lines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.figures import figure  # noqa: E402
from entry_point import OneLineParser  # noqa: E402
from monitor.report import learning_summary  # noqa: E402

# The commands of the READMEs (gmsh: the README's first one, with nothing but the experiment name).
PRESETS: dict[str, list[str]] = {
    "toy": ["--env", "toy", "--base-model", "tiny-random", "--max-training-steps", "24", "--num-epochs", "1000",
            "--no-eval-before-after"],
    "gmsh": [],
    "r2e": ["--env", "r2e"],
    "planner": ["--env", "planner"],
}
# Held-out figures an env logs besides its reward (envs/planner/rollout.py planner_metrics), read at the same stages.
# (history key, name, goal of its rise from before training to the end or None)
STAGED: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "planner": (("val/planner/format_ok_rate", "format-valid plan rate", ">= 0.5"),
                ("val/planner/correct_rate", "correct rate", None),
                ("val/planner/token_thrift_mean", "token thrift", None)),
}


def run_train(art: str, name: str, flags: list[str]) -> tuple[list[dict], float, str]:
    """`train.py` with `flags` in art path `art` (logs and rollouts under it, W&B off): ART's history rows, the wall
    time and the printed lines; a failed run stops the bench with its stderr."""
    cmd = [sys.executable, str(ROOT / "train.py"), "--experiment-name", name, "--art-path", art,
           "--log-dir", f"{art}/logs", "--rollout-root", f"{art}/rollouts", "--wandb", "disabled", *flags]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TQDM_DISABLE="1", WANDB_MODE="disabled"))
    wall = time.perf_counter() - started
    if done.returncode == 2:  # a flag passed through to train.py that it refuses: its one line, its exit code
        print(done.stderr.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    if done.returncode != 0:
        sys.exit(f"train.py failed ({done.returncode}): {done.stderr[-2000:]}")
    history = Path(art) / "art-agent-trainer" / "models" / name / "history.jsonl"
    return [json.loads(line) for line in history.read_text().splitlines()], wall, done.stdout


def run(env: str, extra: list[str], tmp: str) -> tuple[list[dict], float, str]:
    return run_train(tmp, f"bench-{env}", [*PRESETS[env], *extra])


def toy_figures(rows: list[dict], wall: float) -> None:
    rewards = [r["train/reward"] for r in rows if "train/reward" in r]
    start, end = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    print(f"toy: {len(rewards)} steps, reward start {start:.3f} -> end {end:.3f}, wall {wall:.0f}s")
    figure("toy: mean reward of the last 3 steps / max", end, ">= 0.8")
    figure("toy: mean reward of steps 1-2", start)
    figure(f"toy: wall time for {len(rewards)} steps", wall, "<= 600", "s")


def held_out_figures(env: str, rows: list[dict], wall: float) -> None:
    summary = learning_summary(rows)
    for label, value in summary.items():
        print(f"{env}: held-out reward {label}: {value:.3f}")
        figure(f"{env}: held-out reward {label}", value)
    values = list(summary.values())
    if len(values) >= 2:
        figure(f"{env}: held-out reward rise (last - before)", values[-1] - values[0], ">= 0.2")
    for key, name, goal in STAGED.get(env, ()):
        # learning_summary reads val/reward_mean at each stage's step: give it this figure under that name.
        view = [{k: v for k, v in r.items() if k != "val/reward_mean"} | ({"val/reward_mean": r[key]} if key in r
                                                                            else {}) for r in rows]
        staged = learning_summary(view)
        for label, value in staged.items():
            print(f"{env}: held-out {name} {label}: {value:.3f}")
            figure(f"{env}: held-out {name} {label}", value)
        if goal and len(staged) >= 2:
            figure(f"{env}: held-out {name} rise (last - before)", list(staged.values())[-1] - list(staged.values())[0],
                   goal)
    for key in ("val/heldout_reward", "val/demonstrated_reward", "val/pass_rate"):
        series = [(r["step"], r[key]) for r in rows if key in r]
        if series:
            print(f"{env}: {key} by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in series))
            figure(f"{env}: {key} first -> last", series[-1][1] - series[0][1])
    train = [(r["step"], r["train/reward"]) for r in rows if "train/reward" in r]
    print(f"{env}: train reward by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in train))
    sft = [r["step"] for r in rows if "loss/train" in r]
    figure(f"{env}: steps (SFT epochs + RL steps)", float(len(sft) + len(train)))
    figure(f"{env}: wall time, set-up included", wall, "<= 1200" if env == "gmsh" else None, "s")


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", choices=sorted(PRESETS), default="toy")
    parser.add_argument("--art-path", default=None, help="reuse a folder (keeps the converted model); default: temp")
    args, extra = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows, wall, stdout = run(args.env, extra, args.art_path or tmp)
    print("\n".join(line for line in stdout.splitlines() if line.startswith(("eval", "sft", "step", "done"))))
    (toy_figures if args.env == "toy" else lambda r, w: held_out_figures(args.env, r, w))(rows, wall)


if __name__ == "__main__":
    main()
