"""The openspiel env's own flags (registered in `rollouts.registry.ENV_FLAGS`) and the options they make.

Light to import: every `train.py` run declares these flags, whatever its env, so pyspiel is loaded only by
`validate`, which the trainer calls for `--env openspiel` alone. `GameOptions` is the one typed view of the
values, used by the trainer, the export CLI and the bench alike, and its defaults are the flags' defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

REWARD_MODES = ("legal", "outcome")
GAME_MODES = ("move", "game")
POLICIES = ("random", "mcts")
DEMO_POLICIES = ("legal", "mcts")


@dataclass(frozen=True)
class GameOptions:
    game_cases: tuple[str, ...] = ()  # empty: the default case list (envs/openspiel/cases.py)
    game_types: tuple[str, ...] = ()  # empty: every case of the list
    num_tasks_per_case: int = 100
    val_tasks_per_case: int = 10
    max_random_steps: int = 6
    reward_mode: str = "legal"
    game_mode: str = "move"
    opponent: str = "random"
    own_policy: str = "random"  # our seat's moves in an outcome playout, after the model's move
    playouts: int = 4
    mcts_simulations: int = 64
    max_illegal_retries: int = 2
    playout_workers: int = 2  # 0: playouts run in a thread instead of a process pool
    demo_policy: str = "legal"
    num_demos: int = 0  # 0: one demonstration per train task

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> GameOptions:
        """The env's option dict (`registry.env_options`) -> options; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in options.items() if k in names and v is not None}
        for key in ("game_cases", "game_types"):
            if key in values:
                values[key] = tuple(split_cases(values[key]))
        return cls(**values)


def split_cases(values: str | list[str] | tuple[str, ...]) -> list[str]:
    """Load strings hold commas (`dots_and_boxes(num_rows=3,num_cols=3)`), so a list is split only on the commas
    outside parentheses; each item may itself be such a list. Whitespace is dropped, empty items too."""
    items = [values] if isinstance(values, str) else list(values)
    out: list[str] = []
    for item in items:
        depth, current = 0, ""
        for char in item:
            depth += {"(": 1, ")": -1}.get(char, 0)
            if char == "," and depth == 0:
                out.append(current)
                current = ""
            else:
                current += char
        out.append(current)
    return ["".join(c.split()) for c in out if c.strip()]


def add_flags(group: argparse._ArgumentGroup) -> None:
    d = GameOptions()
    a = group.add_argument
    a("--game-cases", nargs="+", action="extend", default=None, metavar="CASE",
      help="OpenSpiel load strings, e.g. 'hex(board_size=5)' 'go(board_size=9)' (space- or comma-separated; "
           "default: the built-in list, see README)")
    a("--game-types", nargs="+", action="extend", default=None, metavar="TYPE",
      help="which cases to use: a short name (hex) selects all its cases, a full load string that case; "
           "default: all")
    a("--num-tasks-per-case", type=int, default=d.num_tasks_per_case,
      help="train tasks per case; task i uses seed --seed + i")
    a("--val-tasks-per-case", type=int, default=d.val_tasks_per_case,
      help="held-out tasks per case (later seeds, states not among the train tasks)")
    a("--max-random-steps", type=int, default=d.max_random_steps,
      help="a task's state is 0..N seeded random moves from the root (terminal/chance states never shown)")
    a("--reward-mode", choices=REWARD_MODES, default=d.reward_mode,
      help="legal: 1 for a legal move, else 0; outcome: our mapped return after seeded playouts")
    a("--game-mode", choices=GAME_MODES, default=d.game_mode,
      help="move: one move per rollout; game: play the whole game, one model turn per move (reward: outcome)")
    a("--opponent", choices=POLICIES, default=d.opponent, help="who plays the other seats")
    a("--own-policy", choices=POLICIES, default=d.own_policy, help="who plays our seat during outcome playouts")
    a("--playouts", type=int, default=d.playouts, help="outcome mode: seeded playouts averaged per move")
    a("--mcts-simulations", type=int, default=d.mcts_simulations, help="simulations per MCTS move")
    a("--max-illegal-retries", type=int, default=d.max_illegal_retries,
      help="game mode: retries after an illegal answer before the game is forfeited")
    a("--playout-workers", type=int, default=d.playout_workers,
      help="processes for playouts and MCTS moves (0: a thread; either way off the event loop)")
    a("--demo-policy", choices=DEMO_POLICIES, default=d.demo_policy,
      help="SFT demonstrations: a seeded legal move, or the MCTS bot's move")
    a("--num-demos", type=int, default=d.num_demos,
      help="SFT demonstrations to write, in task order (0: one per train task; train.py uses 48 unless given)")


def validate(options: dict[str, Any]) -> None:
    """One line naming the flag for a bad value; every case string is loaded once here, before any work."""
    opts = GameOptions.from_options(options)
    for flag, value, low in (("--num-tasks-per-case", opts.num_tasks_per_case, 1),
                             ("--val-tasks-per-case", opts.val_tasks_per_case, 0),
                             ("--max-random-steps", opts.max_random_steps, 0), ("--playouts", opts.playouts, 1),
                             ("--mcts-simulations", opts.mcts_simulations, 1),
                             ("--max-illegal-retries", opts.max_illegal_retries, 0),
                             ("--playout-workers", opts.playout_workers, 0), ("--num-demos", opts.num_demos, 0)):
        if value < low:
            raise ValueError(f"{flag} must be at least {low}, got {value}")
    from envs.openspiel.cases import resolve_cases

    resolve_cases(opts)
