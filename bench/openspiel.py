"""OpenSpiel env throughput and learning: `uv run python bench/openspiel.py [--playouts 64] [--learning]`.

- Tasks built per second: the fixed task sets of tic_tac_toe alone and of every default case (seeded random walks,
  prompt text, legal actions).
- Outcome playouts per second, three ways: inline on the event loop (what the pool avoids), in one thread (the
  `--playout-workers 0` fallback) and in the process pool (`--playout-workers 2`), on connect_four against the
  MCTS opponent; with the event loop's worst lag meanwhile, which is what a rollout waiting for its model reply
  feels. Rates are taken once the pool is started, as it is before a run's first step; its start-up is printed.
- `--learning`: envs/openspiel/README.md's command (`train.py --env openspiel --game-types tic_tac_toe`, legal mode,
  SmolLM2-135M-Instruct, the env's defaults: SFT on 48 demonstrations, then GRPO) in a fresh art path, and the
  held-out legal-move rate before training, after SFT and after RL; then whole games against the random
  opponent (`--eval-only --game-mode game`) by the base model and by the trained one: the win rate of each.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.figures import figure  # noqa: E402
from bench.learning import run_train  # noqa: E402
from entry_point import OneLineParser, at_least  # noqa: E402
from envs.openspiel.options import GameOptions  # noqa: E402
from envs.openspiel.playouts import PlayoutPool  # noqa: E402
from envs.openspiel.reward import Playout, play_out, warm_up  # noqa: E402
from envs.openspiel.tasks import load_tasks  # noqa: E402

CASE, HISTORY = "connect_four", [3, 3]
ROOT = Path(__file__).resolve().parents[1]
# 32 held-out tasks instead of 10: a legal-move rate in steps of 1/32.
LEARNING = ["--env", "openspiel", "--game-types", "tic_tac_toe", "--val-tasks-per-case", "32", "--wandb", "disabled"]
# Whole games from 8 held-out states 0..2 random moves in, 4 games each (the opponent is seeded by the position, our
# model samples at temperature 1).
GAMES = ["--eval-only", "--game-mode", "game", "--max-random-steps", "2", "--val-tasks-per-case", "8",
         "--eval-rollouts", "4", "--sft-demos", "off", "--allow-config-change"]


def tasks_per_second(options: GameOptions) -> tuple[float, int]:
    started = time.perf_counter()
    count = len(load_tasks(options, 0, "train"))
    return count / (time.perf_counter() - started), count


async def _with_lag(work) -> tuple[float, float]:
    """(seconds the work took, the event loop's worst lag meanwhile, sampled every 5 ms)."""
    worst, done = 0.0, asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            worst = max(worst, time.perf_counter() - before - 0.005)

    tick = asyncio.create_task(ticker())
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    done.set()
    await tick
    return elapsed, worst


def playouts_per_second(count: int, workers: int | None, simulations: int) -> tuple[float, float, float]:
    """workers None: inline on the loop; 0: one thread; N: a process pool of N. Returns (playouts/s, worst lag,
    seconds to start the pool), the rate and lag measured once the pool is started, as it is in a run."""
    options = GameOptions(playouts=count, opponent="mcts", mcts_simulations=simulations)

    async def run() -> tuple[float, float, float]:
        if workers is None:
            warm_up()

            async def inline() -> None:
                for k in range(count):
                    play_out(Playout(CASE, tuple(HISTORY), 0, "mcts", "random", k, simulations))
                    await asyncio.sleep(0)
            return (*await _with_lag(inline), 0.0)
        pool = PlayoutPool(workers)
        try:
            started = time.perf_counter()
            await pool.start()
            startup = time.perf_counter() - started

            async def pooled() -> None:
                await pool.playouts(CASE, HISTORY, 0, options, 0)
            return (*await _with_lag(pooled), startup)
        finally:
            pool.close()

    elapsed, lag, startup = asyncio.run(run())
    return count / elapsed, lag, startup


def train(art: str, name: str, *flags: str) -> tuple[list[dict], float, str]:
    return run_train(art, name, [*LEARNING, *flags])


def learning_figures() -> None:
    from monitor.report import learning_summary

    with tempfile.TemporaryDirectory() as art, tempfile.TemporaryDirectory() as fresh:
        rows, wall, stdout = train(art, "bench-openspiel")
        print("\n".join(line for line in stdout.splitlines() if line.startswith(("eval", "sft", "step", "done"))))
        for label, value in learning_summary(rows).items():  # legal mode: the reward is the legal-move rate
            print(f"tic_tac_toe: held-out legal-move rate {label}: {value:.3f}")
            figure(f"tic_tac_toe legal-move rate (held-out) {label}", value,
                   ">= 0.9" if label.startswith("after RL") else None)
        train_rates = [(r["step"], r["train/openspiel/legal_rate"]) for r in rows if "train/openspiel/legal_rate" in r]
        print("train legal-move rate by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in train_rates))
        figure("tic_tac_toe learning run wall time (model conversion, demos, 3 evaluations included)", wall,
               "<= 900", "s")
        for label, art_path, name in (("base model", fresh, "bench-openspiel-base"),
                                      ("after SFT + RL", art, "bench-openspiel")):
            rows, wall, _ = train(art_path, name, *GAMES)
            last = [r for r in rows if "val/openspiel/win_rate" in r][-1]
            print(f"whole games vs random, {label}: win rate {last['val/openspiel/win_rate']:.3f}, legal-answer "
                  f"rate {last['val/openspiel/legal_rate']:.3f}, forfeit rate {last['val/openspiel/forfeit_rate']:.3f}"
                  f", mean outcome {last['val/openspiel/outcome_mean']:.3f} ({wall:.0f} s)")
            figure(f"tic_tac_toe whole games vs random: win rate, {label}", last["val/openspiel/win_rate"])


def main() -> None:
    parser = OneLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--playouts", type=at_least(1), default=64)
    parser.add_argument("--simulations", type=at_least(1), default=16, help="MCTS simulations per opponent move")
    parser.add_argument("--learning", action="store_true",
                        help="also the learning row (SmolLM2 SFT and RL on the CPU: slow)")
    args = parser.parse_args()
    for label, options in (("tic_tac_toe", GameOptions(game_types=("tic_tac_toe",), num_tasks_per_case=500)),
                           ("all default cases", GameOptions(num_tasks_per_case=20))):
        rate, count = tasks_per_second(options)
        print(f"tasks built: {label}: {count} tasks, {rate:.0f}/s")
        figure(f"tasks built per second ({label})", rate, unit="tasks/s")
    rates = {}
    for label, workers in (("inline on the event loop", None), ("one thread", 0), ("process pool of 2", 2)):
        rate, lag, startup = playouts_per_second(args.playouts, workers, args.simulations)
        rates[label] = rate
        print(f"outcome playouts, {CASE} vs MCTS({args.simulations}), {label}: {rate:.1f}/s, "
              f"worst event-loop lag {lag * 1000:.0f} ms" + (f", pool start {startup:.2f} s" if workers else ""))
        figure(f"outcome playouts per second, {label}", rate, unit="playouts/s")
        figure(f"event-loop worst lag, {label}", lag * 1000, "< 50" if workers == 2 else None, "ms")
    # No goal: on few cores shared with the trainer the pool's worth is the event loop's lag, not throughput.
    figure("process pool / inline playout throughput", rates["process pool of 2"] / rates["inline on the event loop"])
    if args.learning:
        learning_figures()


if __name__ == "__main__":
    main()
