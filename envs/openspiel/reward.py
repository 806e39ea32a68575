"""Rewards for the `openspiel` env: pure functions of what they are given (and of a seed), in [0, 1].

- legal: 1 for a legal move, 0 otherwise.
- outcome: apply the move, play the game out to the end (the other seats by the opponent policy, ours by our
  own), and map our return from [min_utility, max_utility] to [0, 1]; averaged over seeded playouts. An illegal
  or unparsable answer scores 0, the same as a certain loss.

`play_out` is the unit of work the env's process pool runs (a top-level function of plain arguments, so it
pickles); MCTS is OpenSpiel's own `MCTSBot` with random-rollout evaluation.
"""

from __future__ import annotations

import functools
import random
import statistics
from dataclasses import dataclass
from typing import Any


@functools.lru_cache(maxsize=64)
def _game(case: str) -> Any:
    import pyspiel

    return pyspiel.load_game(case)


def warm_up() -> None:
    """Imports and loads what a playout needs, so a pool worker's first real job is not also its start-up."""
    from open_spiel.python.algorithms import mcts  # noqa: F401

    _game("tic_tac_toe")


def mapped_return(case: str, returns: list[float], seat: int) -> float:
    """Our return as a share of the game's utility range: a win 1, a loss 0, a draw of a zero-sum game 0.5."""
    game = _game(case)
    low, high = game.min_utility(), game.max_utility()
    return min(1.0, max(0.0, (returns[seat] - low) / (high - low))) if high > low else 0.5


def choose(case: str, state: Any, policy: str, seed: int, simulations: int) -> int:
    """One move for the player to move: uniform random or MCTS, seeded. Chance nodes sample by their odds."""
    rng = random.Random(seed)
    if state.is_chance_node():
        outcomes, probs = zip(*state.chance_outcomes(), strict=True)
        return int(rng.choices(outcomes, probs)[0])
    if policy == "random":
        return int(rng.choice(state.legal_actions()))
    import numpy as np
    from open_spiel.python.algorithms import mcts

    generator = np.random.RandomState(seed % 2**32)
    bot = mcts.MCTSBot(_game(case), uct_c=2.0, max_simulations=simulations,
                       evaluator=mcts.RandomRolloutEvaluator(n_rollouts=1, random_state=generator),
                       solve=True, random_state=generator)
    return int(bot.step(state))


@dataclass(frozen=True)
class Playout:
    """One playout from the state after `history` (the model's move applied), for the player at `seat`."""

    case: str
    history: tuple[int, ...]
    seat: int
    opponent: str = "random"
    own_policy: str = "random"
    seed: int = 0
    mcts_simulations: int = 64


def play_out(p: Playout) -> float:
    """Plays to the end and returns our mapped return. Deterministic for a seed."""
    state = _game(p.case).new_initial_state()
    for action in p.history:
        state.apply_action(action)
    move = 0
    while not state.is_terminal():
        policy = p.own_policy if state.current_player() == p.seat else p.opponent
        state.apply_action(choose(p.case, state, policy, p.seed * 100_003 + move, p.mcts_simulations))
        move += 1
    return mapped_return(p.case, state.returns(), p.seat)


def next_move(case: str, history: tuple[int, ...], policy: str, seed: int, simulations: int) -> int:
    """The move of the player to move after `history` (an opponent turn of a whole game, run in the pool)."""
    state = _game(case).new_initial_state()
    for action in history:
        state.apply_action(action)
    return choose(case, state, policy, seed, simulations)


def legal_reward(status: str) -> tuple[float, dict[str, float]]:
    """`status` is the parser's: "legal", "illegal" or "unparsable"."""
    legal = float(status == "legal")
    return legal, {"legal": legal, "parsed": float(status != "unparsable")}


def outcome_reward(status: str, playout_values: list[float]) -> tuple[float, dict[str, float]]:
    """The mean of the playouts' mapped returns for a legal move; 0 for anything else."""
    _, breakdown = legal_reward(status)
    if status != "legal" or not playout_values:
        return 0.0, breakdown | {"outcome": 0.0, "playouts": 0.0}
    mean = statistics.fmean(playout_values)
    return mean, breakdown | {"outcome": mean, "playouts": float(len(playout_values)),
                              "playout_wins": sum(v >= 1.0 for v in playout_values) / len(playout_values)}


def game_reward(value: float | None, forfeit: bool) -> tuple[float, dict[str, float]]:
    """A whole game: `value` is our mapped return at the end (or the playouts' mean when the turn budget ran
    out first); a forfeit (too many illegal answers in a row) scores 0, as a loss does."""
    if forfeit or value is None:
        return 0.0, {"outcome": 0.0, "won": 0.0, "drawn": 0.0, "lost": 1.0, "forfeit": float(forfeit)}
    return value, {"outcome": value, "won": float(value >= 1.0), "drawn": float(0.0 < value < 1.0),
                   "lost": float(value <= 0.0), "forfeit": 0.0}
