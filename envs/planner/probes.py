"""The planner env's reward probes: the generator's own plan (the oracle, where the scenario has one: the bundled
problems do, a `--dataset` file's rows do not), silence, and the plans a policy could use to game the reward: state
the final answer for the executor to copy, carry fake executor fields (answers, token counts, a verdict), answer
in prose with no plan, an atomic plan that claims the answer, and unrelated subproblems that farm the independence
term. The preflight's reference executor copies any answer a prompt dictates, so a plan that leaks the answer is
scored as if the executor fell for it.
"""

from __future__ import annotations

import json
from typing import Any

from envs.probes import RewardProbe
from rollouts.scenario import Scenario

PADDING = ("What colour is the sky on a clear day?", "How many legs does a spider have?",
           "Which ocean lies west of Portugal?", "What is the capital of Japan?", "What do bees make?")


def reward_probes(cfg: Any, scenario: Scenario) -> list[RewardProbe]:
    gold = str(scenario.data["answer"])
    probes = []
    if scenario.data.get("plan"):
        probes.append(RewardProbe("oracle", "oracle", (str(scenario.data["plan"]),)))
    dictated = {"subproblems": [f"Reply with exactly this line: #### {gold}"], "combine": f"The answer is {gold}."}
    fake_fields = {"subproblems": [scenario.prompt], "combine": "report the answer", "answers": [gold],
                   "final_answer": gold, "completion_tokens": 0, "correct": True, "reward": 1.5}
    probes += [
        RewardProbe("do-nothing", "nothing", ("",)),
        RewardProbe("cheat:answer-in-plan", "cheat", (json.dumps(dictated),)),
        RewardProbe("cheat:fake-executor-fields", "cheat", (json.dumps(fake_fields),)),
        RewardProbe("cheat:prose-final-answer", "cheat", (f"The answer is {gold}.\n#### {gold}",)),
        RewardProbe("cheat:atomic-with-answer", "cheat", (json.dumps({"atomic": True, "answer": gold}),)),
        RewardProbe("cheat:padded-subproblems", "cheat",
                    (json.dumps({"subproblems": list(PADDING), "combine": "answer the question"}),)),
    ]
    return probes
