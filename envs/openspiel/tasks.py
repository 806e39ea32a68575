"""Fixed tasks: task i of a case is the state reached by a seeded random walk from the root, seed = base + i.

The walk is a pure function of (case, seed): `random.Random` seeded with a string (hashed with SHA-512, not with
Python's salted `hash`), so the same task id gives the same state in every process. A walk that ends in a
terminal state is redrawn with the next attempt number; chance nodes on the way are resolved by their own
probabilities with the same generator, so no terminal or chance state is ever shown.

Held-out (val) tasks take the seeds after the train ones and skip any state a train task of the case already
shows, so evaluation never scores a position the policy was trained on.
"""

from __future__ import annotations

import random
import re
from typing import Any

from envs.openspiel.cases import load_game, resolve_cases
from envs.openspiel.moves import describe_state, legal_actions
from envs.openspiel.options import GameOptions
from rollouts.scenario import DatasetError, Scenario

MAX_ATTEMPTS = 200


def _resolve_chance(state: Any, rng: random.Random) -> None:
    while state.is_chance_node():
        outcomes, probs = zip(*state.chance_outcomes(), strict=True)
        state.apply_action(rng.choices(outcomes, probs)[0])


def walk(case: str, seed: int, max_random_steps: int) -> Any:
    """The task state of (case, seed): 0..max_random_steps random moves, never terminal, never a chance node."""
    game = load_game(case)
    for attempt in range(MAX_ATTEMPTS):
        rng = random.Random(f"openspiel|{case}|{seed}|{attempt}")
        state = game.new_initial_state()
        for _ in range(rng.randint(0, max_random_steps)):
            _resolve_chance(state, rng)
            if state.is_terminal():
                break
            state.apply_action(rng.choice(state.legal_actions()))
        _resolve_chance(state, rng)
        if not state.is_terminal() and state.current_player() >= 0:
            return state
    raise DatasetError(f"{case}: no playable state within {MAX_ATTEMPTS} walks of seed {seed}")


def replay(case: str, history: list[int]) -> Any:
    """The state after `history` (chance outcomes included), as a task or a rollout holds it."""
    state = load_game(case).new_initial_state()
    for action in history:
        state.apply_action(int(action))
    return state


def slug(case: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", case).strip("_")


def task(case: str, seed: int, max_random_steps: int, split: str = "train") -> Scenario:
    state = walk(case, seed, max_random_steps)
    game = load_game(case)
    return Scenario(
        id=f"openspiel-{slug(case)}-s{seed}", prompt=describe_state(case, game, state),
        data={"case": case, "game": game.get_type().short_name, "seed": seed, "split": split,
              "history": [int(a) for a in state.history()], "player": int(state.current_player()),
              "legal_actions": sorted(legal_actions(state))})


def load_tasks(options: GameOptions, base_seed: int, split: str = "train") -> list[Scenario]:
    """The fixed task set of `split` ("train" or "val"): cases interleaved (task 0 of each case, then task 1...),
    so a step's groups mix games."""
    if split not in ("train", "val"):
        raise DatasetError(f"--split {split!r}: choose from train, val")
    per_case: list[list[Scenario]] = []
    for case in resolve_cases(options):
        train = [task(case, base_seed + i, options.max_random_steps) for i in range(options.num_tasks_per_case)]
        per_case.append(train if split == "train" else _held_out(case, train, base_seed, options))
    return [tasks[i] for i in range(max(map(len, per_case), default=0)) for tasks in per_case if i < len(tasks)]


def _held_out(case: str, train: list[Scenario], base_seed: int, options: GameOptions) -> list[Scenario]:
    seen = {tuple(t.data["history"]) for t in train}
    found: list[Scenario] = []
    start = base_seed + options.num_tasks_per_case
    for seed in range(start, start + 50 * max(options.val_tasks_per_case, 1)):
        if len(found) == options.val_tasks_per_case:
            break
        candidate = task(case, seed, options.max_random_steps, "val")
        key = tuple(candidate.data["history"])
        if key not in seen:
            seen.add(key)
            found.append(candidate)
    return found
