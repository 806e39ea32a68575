"""Fixed tasks: task i of a case is the state reached by a seeded random walk from the root, seed = base + i.

The walk is a pure function of (case, seed): `random.Random` seeded with a string (hashed with SHA-512, not with
Python's salted `hash`), so the same task id gives the same state in every process. A walk that ends in a
terminal state is redrawn with the next attempt number; chance nodes on the way are resolved by their own
probabilities with the same generator, so no terminal or chance state is ever shown.

Held-out (val) tasks take the seeds after the train ones and skip any state a train task of the case already
shows, so evaluation never scores a position the policy was trained on.

`verl_tasks` reads the tasks back from verl's layout (envs/openspiel/export.py writes it): the state is replayed
from `extra_info`'s case and history, so the prompt and legal moves are always the game's own.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from envs.openspiel.cases import CaseError, check_case, load_game, resolve_cases
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
    return _scenario(case, walk(case, seed, max_random_steps), f"openspiel-{slug(case)}-s{seed}", seed, split)


def _scenario(case: str, state: Any, task_id: str, seed: int, split: str) -> Scenario:
    game = load_game(case)
    return Scenario(
        id=task_id, prompt=describe_state(case, game, state),
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


def scenarios_for(cfg: Any, split: str = "train") -> list[Scenario]:
    """A run's tasks (`split` train or val) from its config: a verl --dataset's (its val file beside it for val,
    else itself), or the fixed set of the game flags and seed; light: the spec and `tasks` call it without art."""
    from envs.options import options_for

    if cfg.dataset:
        from envs.verl_layout import val_file

        scenarios = verl_tasks(Path(cfg.dataset) if split == "train" else val_file(Path(cfg.dataset)))
    else:
        scenarios = load_tasks(options_for(cfg, GameOptions), cfg.seed, split)
    return scenarios[: cfg.dataset_size] if cfg.dataset_size and split == "train" else scenarios


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


def verl_tasks(path: Path) -> list[Scenario]:
    """A verl file's tasks, each replayed and checked (the case loads, the history is legal and ends where
    `extra_info.player` is to move) before any work; one line naming the row and field otherwise."""
    from envs.verl_layout import read

    scenarios = []
    for row in read(path):
        case = row.text("case")
        if case is None:
            raise row.fail("extra_info.case", "is missing (an OpenSpiel load string, e.g. tic_tac_toe)")
        try:
            check_case(case, "case")
        except CaseError as exc:
            raise row.fail("extra_info.case", f"cannot be loaded: {exc}") from None
        history, player = row.extra_info.get("history"), row.extra_info.get("player")
        if not isinstance(history, list) or not all(isinstance(a, int) and not isinstance(a, bool) for a in history):
            raise row.fail("extra_info.history", "must be a list of action ids")
        state = load_game(case).new_initial_state()
        for number, action in enumerate(history):  # checked here: not every game refuses an illegal action
            legal = [o for o, _ in state.chance_outcomes()] if state.is_chance_node() else state.legal_actions()
            if state.is_terminal() or action not in legal:
                raise row.fail(f"extra_info.history[{number}]", f"is {action}, not a legal action there in {case}")
            state.apply_action(action)
        if state.is_terminal() or state.is_chance_node() or state.current_player() < 0:
            raise row.fail("extra_info.history", "ends where no player is to move (terminal or chance)")
        if player is not None and player != state.current_player():
            raise row.fail("extra_info.player", f"is {player}, but player {state.current_player()} is to move")
        seed = row.extra_info.get("seed", row.index)
        if not isinstance(seed, int):
            raise row.fail("extra_info.seed", "must be an integer")
        split = row.text("split") or "train"
        scenarios.append(_scenario(case, state, row.task_id(f"openspiel-{slug(case)}"), seed, split))
    return scenarios
