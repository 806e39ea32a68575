"""The openspiel env's options: one frozen dataclass whose fields are its train.py flags (envs/options.py makes
them), the one typed view of them used by the trainer, the export CLI and the bench alike.

Light to import: pyspiel is loaded by `validate` alone (every case string is loaded once, before any work).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from envs.openspiel.cases import resolve_cases, split_cases

REWARD_MODES = ("legal", "outcome")
GAME_MODES = ("move", "game")
POLICIES = ("random", "mcts")
DEMO_POLICIES = ("legal", "mcts")
VAL_TASKS_PER_CASE = 20  # a one-game run (the README's tic_tac_toe) evaluates on 20 held-out states
# Runs made while the default was 10 hashed 10; the new default hashes as that, so they resume after the upgrade
# (the held-out size measures a run, it does not change what the run learns).
HASHED_DEFAULTS = {"val_tasks_per_case": (VAL_TASKS_PER_CASE, 10)}

__all__ = ["DEMO_POLICIES", "GAME_MODES", "POLICIES", "REWARD_MODES", "GameOptions", "split_cases"]


@dataclass(frozen=True)
class GameOptions:
    """OpenSpiel games, one move or a whole game per rollout."""

    # None (not given): the default case list / every case of it. Kept as given (a value may hold several
    # comma-separated cases): `resolve_cases` splits them, and a run's config hash keeps what was typed.
    game_cases: tuple[str, ...] | None = field(default=None, metadata={
        "nargs": "+", "metavar": "CASE",
        "help": "OpenSpiel load strings, e.g. 'hex(board_size=5)' 'go(board_size=9)' (space- or comma-separated; "
                "default: the built-in list, see envs/openspiel/README.md)"})
    game_types: tuple[str, ...] | None = field(default=None, metadata={
        "nargs": "+", "metavar": "TYPE",
        "help": "which cases to use: a short name (hex) selects all its cases, a full load string that case; "
                "default: all"})
    num_tasks_per_case: int = field(default=100, metadata={
        "help": "train tasks per case; task i uses seed --seed + i"})
    val_tasks_per_case: int = field(default=VAL_TASKS_PER_CASE, metadata={
        "help": "held-out tasks per case (later seeds, states not among the train tasks)"})
    max_random_steps: int = field(default=6, metadata={
        "help": "a task's state is 0..N seeded random moves from the root (terminal/chance states never shown)"})
    reward_mode: str = field(default="legal", metadata={
        "choices": REWARD_MODES,
        "help": "legal: 1 for a legal move, else 0; outcome: our mapped return after seeded playouts"})
    game_mode: str = field(default="move", metadata={
        "choices": GAME_MODES,
        "help": "move: one move per rollout; game: play the whole game, one model turn per move (reward: outcome)"})
    opponent: str = field(default="random", metadata={"choices": POLICIES, "help": "who plays the other seats"})
    own_policy: str = field(default="random", metadata={  # our seat's moves in an outcome playout
        "choices": POLICIES, "help": "who plays our seat during outcome playouts"})
    playouts: int = field(default=4, metadata={"help": "outcome mode: seeded playouts averaged per move"})
    mcts_simulations: int = field(default=64, metadata={"help": "simulations per MCTS move"})
    max_illegal_retries: int = field(default=2, metadata={
        "help": "game mode: retries after an illegal answer before the game is forfeited"})
    playout_workers: int = field(default=2, metadata={
        "help": "processes for playouts and MCTS moves (0: a thread; either way off the event loop)"})
    demo_policy: str = field(default="legal", metadata={
        "choices": DEMO_POLICIES, "help": "SFT demonstrations: a seeded legal move, or the MCTS bot's move"})
    num_demos: int = field(default=0, metadata={  # train.py's default is the spec's (envs/openspiel/spec.py)
        "help": "SFT demonstrations to write, in task order (0: one per train task)"})

    def validate(self) -> None:
        """One line naming the flag for a bad value; every case string is loaded once here, before any work."""
        for flag, value, low in (("--num-tasks-per-case", self.num_tasks_per_case, 1),
                                 ("--val-tasks-per-case", self.val_tasks_per_case, 0),
                                 ("--max-random-steps", self.max_random_steps, 0), ("--playouts", self.playouts, 1),
                                 ("--mcts-simulations", self.mcts_simulations, 1),
                                 ("--max-illegal-retries", self.max_illegal_retries, 0),
                                 ("--playout-workers", self.playout_workers, 0), ("--num-demos", self.num_demos, 0)):
            if value < low:
                raise ValueError(f"{flag} must be at least {low}, got {value}")
        resolve_cases(self)

    def hash_view(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The options as a run's config hash sees them (envs/options.py's rule: every field under env_options,
        none of them `hash: top/skip`), a field of HASHED_DEFAULTS at its new default as its old one."""
        own = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, (default, hashed) in HASHED_DEFAULTS.items():
            own[name] = hashed if own[name] == default else own[name]
        return {}, {name: list(v) if isinstance(v, tuple) else v for name, v in own.items()}
