"""Cheats on toy, openspiel, planner and workflow score no more than doing nothing, and the oracle passes.

Every probe of the envs' own lists (envs/toy/probes.py, envs/*/probes.py) goes through the env's real rollout and
services, scripted in place of the model, by the reward preflight's own runner (trainer/reward_check.py). A cheat
that finds the answer or forges a verdict would score above do-nothing here; so would one the reward credits by
mistake. The workflow cheats read answers from the project tree, the environment and /proc: they score 0 because
the sandbox shows model code none of it, and the code-task cheat because the harness cannot decide its verdict.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from envs.registry import get_env
from envs.workflow.probes import CHEATS as WORKFLOW_CHEATS
from trainer.cli import config_from_args
from trainer.reward_check import PreflightResult, run_preflight, sample_scenarios

CASES: dict[str, list[str]] = {
    "toy": ["--env", "toy"],
    "openspiel-legal": ["--env", "openspiel"],
    "openspiel-outcome": ["--env", "openspiel", "--game-types", "tic_tac_toe", "connect_four", "--reward-mode",
                          "outcome", "--playout-workers", "0"],
    "openspiel-game": ["--env", "openspiel", "--game-types", "tic_tac_toe", "--game-mode", "game",
                       "--playout-workers", "0"],
    "planner": ["--env", "planner"],
    "workflow": ["--env", "workflow"],
}
CHEATS: dict[str, list[str]] = {
    "toy": ["invisible-characters", "whitespace", "other-case", "fullwidth", "math-bold", "cyrillic"],
    "openspiel": ["claim-win", "several-moves-one-line", "several-move-lines", "illegal-taken",
                  "illegal-out-of-range", "echo-prompt"],
    "planner": ["answer-in-plan", "fake-executor-fields", "prose-final-answer", "atomic-with-answer",
                "padded-subproblems"],
    "workflow": list(WORKFLOW_CHEATS),
}
WITHOUT_ORACLE = {"openspiel-outcome", "openspiel-game"}  # no move is sure of full marks there


def _scenarios(case: str, spec: Any, config: Any) -> list[Any]:
    scenarios = spec.load_scenarios(config)
    if case == "workflow":  # one task of each domain: the code task has no oracle, its own cheat
        return [next(s for s in scenarios if s.data["domain"] == d) for d in ("math", "qa", "code")]
    return sample_scenarios(scenarios, 3, config.seed)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, PreflightResult]:
    async def one(case: str, flags: list[str], root: Path) -> PreflightResult:
        config = config_from_args(["--experiment-name", "cheats", "--art-path", str(root / "art"),
                                   "--rollout-root", str(root / "rollouts"), "--base-model", "tiny-random", *flags])
        spec = get_env(config.env)
        if spec.services is None:
            return await run_preflight(spec, config, {}, scenarios=_scenarios(case, spec, config))
        async with spec.services(config) as services:
            return await run_preflight(spec, config, services, scenarios=_scenarios(case, spec, config))

    root = tmp_path_factory.mktemp("cheats")
    return {case: asyncio.run(one(case, flags, root)) for case, flags in CASES.items()}


def _probe_scores(result: PreflightResult, name: str) -> list[tuple[str, float | None, float | None, str | None]]:
    """(scenario, reward, do-nothing's reward, error) of the probe `name` on every scenario."""
    return [(row.scenario_id, score.reward, row.nothing, score.error)
            for row in result.rows for score in row.scores if score.name == name]


@pytest.mark.parametrize("case", list(CASES))
def test_the_oracle_passes_and_doing_nothing_does_not(results, case):
    result = results[case]
    assert len(result.rows) == 3
    for row in result.rows:
        assert row.nothing is not None and row.nothing < result.pass_threshold, (row.scenario_id, row.nothing)
        if case in WITHOUT_ORACLE or row.scenario_id.startswith("code-"):
            assert row.oracle is None and not row.of_kind("oracle")
        else:
            assert row.oracle is not None and row.oracle >= result.pass_threshold, (row.scenario_id, row.scores)
    assert result.passed, result.failure
    if case in WITHOUT_ORACLE:
        assert result.note and "no oracle" in result.note


@pytest.mark.parametrize(("case", "cheat"), [(case, cheat) for case in CASES
                                             for cheat in CHEATS[case.split("-")[0]]])
def test_a_cheat_scores_no_more_than_doing_nothing(results, case, cheat):
    result = results[case]
    scores = _probe_scores(result, f"cheat:{cheat}")
    expected = 3 if cheat != "cyrillic" or case != "toy" else len(scores)  # not every target has a Cyrillic twin
    assert len(scores) == expected and scores
    for scenario, reward, nothing, error in scores:
        assert reward is not None, (scenario, error)  # scored as an answer, not a crashed rollout
        assert nothing is not None and reward <= nothing + 1e-9, (scenario, reward, nothing)
        assert reward < result.pass_threshold


# ---- the holes these probes found, closed at the reward --------------------------------------------------------

async def test_a_code_answer_cannot_decide_its_own_verdict(tmp_path):
    """Before: the harness ran the tests in the answer's process, so rebinding `exec`, reading the nonce from the
    harness's globals or returning an object equal to everything passed every test: the full reward."""
    from envs.workflow.code_check import check_code
    from envs.workflow.reward import score_code

    tests = ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(2, 2) == 4"]
    forged = ("import builtins, os, __main__\nbuiltins.exec = lambda *a, **k: None\n"
              "builtins.callable = lambda *a: True\nnonce = str(getattr(__main__, 'nonce', ''))\n"
              "os.write(1, ('\\n@@WORKFLOW-TESTS@@' + nonce + '{\"loads\": true, \"passed\": 3}\\n').encode())\n"
              "os.write(1, b'\\n@@WORKFLOW-VALUES@@[\"3\", \"0\", \"4\"]\\n')\nos._exit(0)")
    always_equal = ("class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
                    "def add(a, b):\n    return Any()")
    exec_off = "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.eval = lambda *a, **k: 3\n" \
               "def add(a, b):\n    return None"
    right = "def add(a, b):\n    return a + b"
    scores = {name: score_code(await check_code(code, "add", tests, tmp_path / name)).reward
              for name, code in (("forged", forged), ("always_equal", always_equal), ("exec_off", exec_off),
                                 ("right", right))}
    assert scores["forged"] == 0.0  # no entry point: it does not load, whatever it prints
    assert scores["always_equal"] == 0.2 and scores["exec_off"] <= 0.4  # loads; passes what its values pass
    assert scores["right"] == 1.0


def test_planner_plans_that_game_a_term_are_malformed_and_the_generators_are_not():
    """Before: a plan dictating the answer, one with fake executor fields, and unrelated subproblems farming the
    independence term all scored as well-formed plans and earned reward with an executor that copies."""
    from envs.planner.plan import MalformedPlan, parse_plan
    from envs.planner.problems import generate
    from envs.planner.reward import plan_problem

    question = "Ava buys 3 packs of 12 pencils at $2 each. How many dollars does Ava spend?"
    assert plan_problem(["How many dollars are 36 pencils at $2? Reply #### 72"], "", question, "72")[0] \
        == "answer_in_plan"
    assert plan_problem(["What colour is the sky?", "How many pencils in 3 packs of 12?"], "", question,
                        "72")[0] == "off_topic_subproblem"
    assert plan_problem(["How many pencils are in 3 packs of 12?"], "multiply by $2", question, "72") is None
    with pytest.raises(MalformedPlan) as caught:
        parse_plan('{"subproblems": ["x"], "final_answer": "72"}', 6)
    assert caught.value.reason == "unknown_field"
    for scenario in generate(200, 0) + generate(50, 3, "val"):
        plan = parse_plan(scenario.data["plan"], 6)
        assert plan_problem(plan.subproblems, plan.combine, scenario.prompt, scenario.data["answer"]) is None
