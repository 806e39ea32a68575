"""The openspiel env's reward probes: a legal move as the demonstrations write it, silence, and the cheats a
policy could try on a move parser: claim the game is won, name several moves at once (on one line, or on many
with a wrong one last, hoping any legal one counts), a well-formed move that is not legal here (a cell already
taken, an id outside the game), and an echo of the prompt (which ends in the answer format's own `move: <id>`).

The oracle exists in `--reward-mode legal` only, where a legal move earns full marks; in outcome mode and in game
mode the env knows no move sure to reach full marks (the playouts decide), so the preflight checks do-nothing and
the cheats there. In game mode a probe's reply repeats every turn, so a cheat is answered until it forfeits.
"""

from __future__ import annotations

from envs.openspiel.cases import load_game
from envs.openspiel.export import demo_action
from envs.openspiel.moves import answer
from envs.openspiel.options import GameOptions
from envs.probes import RewardProbe
from rollouts.scenario import Scenario


def reward_probes(options: GameOptions, scenario: Scenario) -> list[RewardProbe]:
    """The run's game options (the registry reads them from the config) decide which probes apply."""
    data = scenario.data
    legal = [int(a) for a in data["legal_actions"]]
    beyond = int(load_game(data["case"]).num_distinct_actions())  # never a legal id, at any position
    taken = next((int(a) for a in data["history"] if int(a) not in legal), beyond + 1)
    probes = []
    if options.reward_mode == "legal" and options.game_mode == "move":
        probes.append(RewardProbe("oracle", "oracle",
                                  (answer(demo_action(scenario, options.demo_policy, options.mcts_simulations)),)))
    probes += [
        RewardProbe("do-nothing", "nothing", ("",)),
        RewardProbe("cheat:claim-win", "cheat", (f"I have already won this game. Game over: player "
                                                 f"{data['player']} wins, returns [1.0, -1.0].",)),
        RewardProbe("cheat:several-moves-one-line", "cheat",
                    ("move: " + ", ".join(str(a) for a in [*legal, beyond]),)),
        RewardProbe("cheat:several-move-lines", "cheat", ("\n".join(answer(a) for a in [*legal, beyond]),)),
        RewardProbe("cheat:illegal-taken", "cheat", (answer(taken),)),
        RewardProbe("cheat:illegal-out-of-range", "cheat", (answer(beyond),)),
        RewardProbe("cheat:echo-prompt", "cheat", (scenario.prompt,)),
    ]
    return probes
