"""Taking the tasks elsewhere and teaching the format: the verl-layout parquet, and SFT demonstrations.

The parquet has verl's columns (envs/verl_layout.py): `prompt` (the chat messages a rollout sends), `data_source`,
`ability`, `reward_model` ({style: rule, ground_truth: JSON of the reward mode and the legal action ids and
strings}) and `extra_info` (env, case, task id, index, seed, split, history, player), so a verl reward function can
rebuild the state with `pyspiel.load_game(case)` and the history; `--dataset` reads it back
(envs/openspiel/tasks.py `verl_tasks`). A demonstration is exactly a move-mode rollout's conversation with a
well-formed answer: a seeded legal move, or OpenSpiel's MCTS bot's move (`--demo-policy`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.openspiel.moves import SYSTEM_PROMPT, answer
from envs.openspiel.options import GameOptions
from envs.openspiel.tasks import load_tasks, replay
from rollouts.scenario import DatasetError, Scenario

SPLITS = ("train", "val", "all")


def scenarios_of(options: GameOptions, seed: int, split: str) -> list[Scenario]:
    if split not in SPLITS:
        raise DatasetError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    if split == "all":
        return load_tasks(options, seed, "train") + load_tasks(options, seed, "val")
    return load_tasks(options, seed, split)


def messages(scenario: Scenario) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": scenario.prompt}]


def verl_row(scenario: Scenario, index: int, reward_mode: str) -> dict[str, Any]:
    from envs.verl_layout import row

    data = scenario.data
    state = replay(data["case"], data["history"])
    legal = {str(a): state.action_to_string(data["player"], a) for a in data["legal_actions"]}
    return row(f"openspiel/{data['game']}", messages(scenario), "game",
               json.dumps({"reward_mode": reward_mode, "legal_actions": legal}),
               {"env": "openspiel", "case": data["case"], "task_id": scenario.id, "index": index,
                "seed": int(data["seed"]), "split": data["split"], "history": list(data["history"]),
                "player": int(data["player"])})


def verl_rows(items: list[tuple[Scenario, str]], out: Path, cfg: Any) -> list[dict[str, Any]]:
    """`python -m envs.openspiel tasks`: the rows, the ground truth under the run's `--reward-mode`."""
    from envs.options import options_for

    reward_mode = options_for(cfg, GameOptions).reward_mode
    return [verl_row(s, index, reward_mode) for index, (s, _) in enumerate(items)]


def demo_action(scenario: Scenario, policy: str, simulations: int) -> int:
    """The demonstrated move: a legal one drawn with the task's seed, or the MCTS bot's."""
    from envs.openspiel.reward import choose

    data = scenario.data
    state = replay(data["case"], data["history"])
    return choose(data["case"], state, "random" if policy == "legal" else "mcts", int(data["seed"]), simulations)


def conversation(scenario: Scenario, action: int) -> dict[str, Any]:
    return {"messages": [*messages(scenario), {"role": "assistant", "content": answer(action)}],
            "metadata": {"env": "openspiel", "scenario_id": scenario.id, "split": scenario.data["split"]}}


def write_demos(out: Path, options: GameOptions, seed: int, split: str = "train",
                scenarios: list[Scenario] | None = None) -> list[dict[str, Any]]:
    """Demonstrations of the `split` tasks, or of `scenarios` (a --dataset's), `--num-demos` of them in task
    order (0: all), as OpenAI-messages JSONL, the format `--sft-data` and art.utils.sft read."""
    if out.suffix != ".jsonl":
        raise DatasetError(f"--out {out}: must end with .jsonl (the format art.utils.sft reads)")
    if scenarios is None:
        scenarios = scenarios_of(options, seed, split)
    if options.num_demos:
        scenarios = scenarios[: options.num_demos]
    demos = [conversation(s, demo_action(s, options.demo_policy, options.mcts_simulations)) for s in scenarios]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")  # no half-written file if this fails
    tmp.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in demos))
    tmp.replace(out)
    return demos
